"""Static and stubbed checks of the Slicer extension: CMake, .s4ext, .ui and module files, widget plumbing.

Nothing here needs the Slicer application: module files are executed in a subprocess with minimal
stand-ins for ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.i18n``
while ``qt``, ``ctk`` (and, until a Logic is created, ``torch``) are made unimportable.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "VesselRecon"
LIB = SRC / "VesselReconLib"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from VesselReconLib import slicer_widget, slicerdeps  # noqa: E402
from VesselReconLib.errors import CheckpointError, InputError  # noqa: E402
from VesselReconLib.progress import Reporter  # noqa: E402

MODULES = {  # module -> (core package, paper title in the acknowledgement)
    "OCTADepth": ("octadepth", "3D vessel reconstruction in OCT-angiography via depth map estimation"),
    "Angio3D": ("angio3d", "3DAngioNet: 3D coronary vessel mesh reconstruction from two-view X-ray angiography"),
    "COIPS": ("coips", "A deep learning-based quality assessment and segmentation system with a large-scale "
                       "benchmark dataset for OCTA images"),
    "VCNet": ("vcnet", "VC-Net: Deep Volume-Composition Networks for Segmentation and Visualization of Highly "
                       "Sparse and Noisy Image Data"),
    "VesselSDF": ("vesselsdf", "VesselSDF: Distance Field Priors for Vascular Network Reconstruction"),
}
COMMON_UI = {"applyButton": "QPushButton", "cancelButton": "QPushButton", "progressBar": "QProgressBar",
             "statusLabel": "QLabel", "loadSampleButton": "QPushButton", "resultsTableView": "qMRMLTableView",
             "modelComboBox": "QComboBox", "checkpointPathLineEdit": "ctkPathLineEdit",
             "deviceComboBox": "QComboBox", "evaluateButton": "QPushButton",
             "evaluationTableView": "qMRMLTableView", "evaluationCollapsibleButton": "ctkCollapsibleButton"}
GUI_MANAGED_FIELDS = {"model"}  # kept in sync by code, since the model list is filled at run time
CUSTOM_PREFIXES = ("ctk", "qMRML", "qSlicer")


def module_file(name: str) -> Path:
    return SRC / name / f"{name}.py"


def ui_file(name: str) -> Path:
    return SRC / name / "Resources" / "UI" / f"{name}.ui"


# ---------------------------------------------------------------- parsing helpers


def cmake_text(path: Path) -> str:
    return re.sub(r"#[^\n]*", "", path.read_text())


def cmake_calls(text: str, command: str) -> list[str]:
    """Argument strings of every ``command(...)`` call (case-insensitive)."""
    pattern = rf'\b{command}\s*\(((?:"[^"]*"|[^)"])*)\)'
    return [m.group(1) for m in re.finditer(pattern, text, re.IGNORECASE)]


def cmake_set(text: str, variable: str) -> list[str]:
    for args in cmake_calls(text, "set"):
        tokens = re.findall(r'"[^"]*"|\S+', args)
        if tokens and tokens[0] == variable:
            return [t.strip('"') for t in tokens[1:]]
    raise AssertionError(f"set({variable} ...) not found")


def s4ext() -> dict[str, str]:
    values = {}
    for line in (ROOT / "VesselRecon.s4ext").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            values[key] = value.strip()
    return values


def widgets(path: Path) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(path).getroot().iter("widget")}


def prop(widget: ET.Element, name: str):
    """The value of a widget property in a .ui file (text, number, bool, list), or None."""
    for p in widget.findall("property"):
        if p.get("name") == name:
            child = p[0]
            if child.tag == "stringlist":
                return [s.text or "" for s in child]
            if child.tag == "bool":
                return child.text == "true"
            if child.tag in ("number", "double"):
                return float(child.text)
            return child.text or ""
    return None


def combo_items(widget: ET.Element) -> list[str]:
    return [prop(item, "text") for item in widget.findall("item")]


def bound_widgets(path: Path) -> dict[str, ET.Element]:
    """SlicerParameterName -> widget."""
    out = {}
    for w in widgets(path).values():
        name = prop(w, "SlicerParameterName")
        if name is not None:
            assert name not in out, f"{path.name}: {name} bound twice"
            out[name] = w
    return out


def module_ast(name: str) -> ast.Module:
    return ast.parse(module_file(name).read_text())


def module_constant(name: str, constant: str):
    for node in module_ast(name).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == constant for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name}.py does not define {constant}")


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def parameter_fields(name: str) -> dict[str, dict]:
    """Fields of the module's ``@parameterNodeWrapper`` class: kind, node types, range, choices, default."""
    for node in module_ast(name).body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            assert node.name == f"{name}ParameterNode"
            return {item.target.id: _field_info(item) for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{name}.py has no @parameterNodeWrapper class")


def _field_info(item: ast.AnnAssign) -> dict:
    info = {"default": _literal(item.value) if item.value is not None else None, "range": None, "choices": None}
    annotation = item.annotation
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        base, *extras = annotation.slice.elts
        for extra in extras:
            args = [_literal(a) for a in extra.args]
            if extra.func.id == "WithinRange":
                info["range"] = tuple(args)
            elif extra.func.id == "Choice":
                info["choices"] = args[0]
        annotation = base
    names = [n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)]
    nodes = [n for n in names if n.startswith("vtkMRML")]
    info["nodes"] = nodes
    info["kind"] = "node" if nodes else {"Path": "path"}.get(names[0], names[0])
    return info


WIDGET_FOR_KIND = {  # what slicer.parameterNodeWrapper's GUI connectors accept (exact classes)
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "str": {"QLineEdit", "QTextEdit"},
}


def widget_code_names(text: str) -> set[str]:
    return set(re.findall(r"\bself\.ui\.(\w+)", text))


# ---------------------------------------------------------------- CMake and extension metadata


def test_top_level_cmake_is_a_slicer_extension():
    text = cmake_text(ROOT / "CMakeLists.txt")
    for needle in ("cmake_minimum_required", "project(VesselRecon)", "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                   "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in text, needle
    assert cmake_set(text, "EXTENSION_DEPENDS") == ["PyTorch"]
    assert cmake_set(text, "EXTENSION_CATEGORY") == ["Segmentation"]
    assert cmake_set(text, "EXTENSION_HOMEPAGE") == ["https://github.com/vesselrecon/SlicerVesselRecon"]
    assert text.index("find_package(Slicer") < text.index("add_subdirectory") < text.index("Slicer_EXTENSION_CPACK")


def test_every_module_folder_is_added():
    listed = {a.strip() for a in cmake_calls(cmake_text(ROOT / "CMakeLists.txt"), "add_subdirectory")}
    expected = {f"VesselRecon/{m}" for m in MODULES} | {"VesselRecon/VesselReconLib"}
    on_disk = {f"VesselRecon/{p.parent.name}" for p in SRC.glob("*/CMakeLists.txt")}
    assert listed == expected
    assert on_disk <= listed, f"folders with a CMakeLists.txt that are not built: {on_disk - listed}"


def test_s4ext_matches_cmake_metadata():
    text, meta = cmake_text(ROOT / "CMakeLists.txt"), s4ext()
    for key in ("homepage", "category", "contributors", "description", "iconurl", "screenshoturls", "status"):
        assert meta[key] == " ".join(cmake_set(text, f"EXTENSION_{key.upper()}")), key
    assert meta["depends"] == " ".join(cmake_set(text, "EXTENSION_DEPENDS")) == "PyTorch"
    assert meta["scm"] == "git" and meta["scmurl"].startswith(meta["homepage"])
    assert meta["build_subdirectory"] == "." and meta["enabled"] == "1"
    assert meta["homepage"] == "https://github.com/vesselrecon/SlicerVesselRecon"
    raw = "https://raw.githubusercontent.com/vesselrecon/SlicerVesselRecon/main/"
    assert meta["iconurl"].startswith(raw) and (ROOT / meta["iconurl"][len(raw):]).is_file()
    assert all(url.startswith(raw) for url in meta["screenshoturls"].split())


def test_icons_are_128_pixel_pngs():
    from PIL import Image

    for path in [ROOT / "Resources/Icons/VesselRecon.png"] + [SRC / m / f"Resources/Icons/{m}.png" for m in MODULES]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128), path


@pytest.mark.parametrize("name", MODULES)
def test_module_cmake_lists_its_files(name):
    folder = SRC / name
    text = cmake_text(folder / "CMakeLists.txt")
    assert cmake_set(text, "MODULE_NAME") == [name]
    scripts = [s.replace("${MODULE_NAME}", name) for s in cmake_set(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", name) for s in cmake_set(text, "MODULE_PYTHON_RESOURCES")]
    assert scripts == [f"{name}.py"]
    assert sorted(resources) == sorted([f"Resources/Icons/{name}.png", f"Resources/UI/{name}.ui"])
    on_disk = {p.relative_to(folder).as_posix() for p in (folder / "Resources").rglob("*") if p.is_file()}
    assert on_disk == set(resources), "every resource file must be listed in the module CMake"
    assert all((folder / f).is_file() for f in scripts + resources)
    build = " ".join(cmake_calls(text, "slicerMacroBuildScriptedModule")).split()
    assert build == ["NAME", "${MODULE_NAME}", "SCRIPTS", "${MODULE_PYTHON_SCRIPTS}",
                     "RESOURCES", "${MODULE_PYTHON_RESOURCES}", "WITH_GENERIC_TESTS"]
    testing = text[text.index("if(BUILD_TESTING)"):text.index("endif()")]
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing
    for sub in cmake_calls(testing, "add_subdirectory"):
        assert (folder / sub.strip() / "CMakeLists.txt").is_file()


STUB_SLICER_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.9/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "${MY_NAME}: missing ${f}")
    endif()
  endforeach()
  file(APPEND ${CMAKE_BINARY_DIR}/modules.txt "${MY_NAME}|${MY_WITH_GENERIC_TESTS}|${MY_SCRIPTS}|${MY_RESOURCES}\\n")
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/tests.txt "py_${MY_TESTNAME_PREFIX}${MY_SCRIPT}\\n")
endfunction()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_configures_and_installs_with_a_stub_slicer(tmp_path):
    stub = tmp_path / "slicer"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG)
    (stub / "UseSlicer.cmake").write_text("")
    (stub / "Empty.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    sources = {p.relative_to(LIB).as_posix() for p in LIB.rglob("*.py") if "__pycache__" not in p.parts}
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "1"}
    run = lambda *args: subprocess.run(["cmake", *args], capture_output=True, text=True, env=env)  # noqa: E731
    configure = run("-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={stub}")
    assert configure.returncode == 0, configure.stdout + configure.stderr
    modules = [line.split("|") for line in (build / "modules.txt").read_text().splitlines()]
    assert {m[0] for m in modules} == set(MODULES)
    assert all(m[1] == "TRUE" for m in modules), "WITH_GENERIC_TESTS"
    tests = set((build / "tests.txt").read_text().split())
    assert tests == {f"py_{p}{m}.py" for m in MODULES for p in ("", "nomainwindow_")}
    copied = run("--build", str(build), "--target", "CopyVesselReconLibFiles")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    installed = run("--install", str(build), "--prefix", str(prefix))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    for tree in (build, prefix):
        package = tree / "lib/Slicer-5.9/qt-scripted-modules/VesselReconLib"
        files = {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()}
        assert {"__init__.py", "slicer_widget.py", "slicerdeps.py", "logic_base.py"} <= files, tree
        assert not any("__pycache__" in f or f.endswith("CMakeLists.txt") for f in files)
        assert sources <= files, sorted(sources - files)


# ---------------------------------------------------------------- .ui files


@pytest.mark.parametrize("name", MODULES)
def test_ui_structure(name):
    path = ui_file(name)
    root = ET.parse(path).getroot()
    assert root.findtext("class") == name
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", name)
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectName"
    found = widgets(path)
    for widget_name, cls in COMMON_UI.items():
        assert widget_name in found and found[widget_name].get("class") == cls, widget_name
    evaluation = {w.get("name") for w in found["evaluationCollapsibleButton"].iter("widget")}
    assert {"evaluateButton", "evaluationTableView"} <= evaluation
    in_evaluation = {prop(w, "SlicerParameterName"): w for w in found["evaluationCollapsibleButton"].iter("widget")}
    evaluate = module_constant(name, "EVALUATE_ARGS")
    for field, keyword in evaluate.items():
        if keyword in ("reference", "table"):
            assert in_evaluation[field].get("class") == "qMRMLNodeComboBox", field
    bound = bound_widgets(path)
    for field in module_constant(name, "REQUIRED_INPUTS"):
        assert bound[field].get("class") == "qMRMLNodeComboBox", field
    used = {w.get("class") for w in root.iter("widget")}
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {c for c in used if c.startswith(CUSTOM_PREFIXES)} <= declared
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                       and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)" and c.findtext("sender") == name}
    mrml = {n for n, w in found.items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    assert mrml <= scene_receivers, f"MRML widgets without a scene: {mrml - scene_receivers}"


def test_coips_has_single_and_batch_tabs():
    found = widgets(ui_file("COIPS"))
    tabs = [w for w in found.values() if w.get("class") == "QTabWidget"]
    assert len(tabs) == 1
    pages = {p.find("attribute/string").text: p for p in tabs[0].findall("widget")}
    assert set(pages) == {"Single image", "Batch"}
    batch = {w.get("name"): w for w in pages["Batch"].iter("widget")}
    assert "batchRunButton" in batch
    paths = {prop(w, "SlicerParameterName") for w in batch.values() if w.get("class") == "ctkPathLineEdit"}
    assert paths == {"batchInputFolder", "batchOutputFolder"}
    single = {prop(w, "SlicerParameterName") for w in pages["Single image"].iter("widget")}
    assert "inputVolume" in single


def test_angio3d_has_two_views_with_frames_points_and_geometry():
    found, bound = widgets(ui_file("Angio3D")), bound_widgets(ui_file("Angio3D"))
    for view in "AB":
        assert found[f"frameSlider{view}"].get("class") == "QSlider"
        assert prop(found[f"useFrame{view}Button"], "text") == "Use this frame"
        assert prop(bound[f"view{view}"], "nodeTypes") == ["vtkMRMLScalarVolumeNode"]
        assert prop(bound[f"points{view}"], "nodeTypes") == ["vtkMRMLMarkupsFiducialNode"]
        for field in ("frame", "primaryAngle", "secondaryAngle", "sid", "sod", "pixelSpacing"):
            assert f"{field}{view}" in bound


@pytest.mark.parametrize("name", MODULES)
def test_ui_parameter_names_match_the_parameter_node(name):
    fields, bound = parameter_fields(name), bound_widgets(ui_file(name))
    assert set(bound) <= set(fields), f"unknown SlicerParameterName: {set(bound) - set(fields)}"
    assert set(fields) - set(bound) == GUI_MANAGED_FIELDS, "every other field needs a widget"
    for field, widget in bound.items():
        info, cls = fields[field], widget.get("class")
        assert prop(widget, "toolTip"), f"{field} has no tooltip"
        if info["choices"] is not None:
            assert cls == "QComboBox" and combo_items(widget) == [str(c) for c in info["choices"]], field
            assert info["default"] in info["choices"], field
            continue
        assert cls in WIDGET_FOR_KIND[info["kind"]], f"{field}: {cls} cannot show a {info['kind']}"
        if info["kind"] == "node":
            assert sorted(prop(widget, "nodeTypes")) == sorted(info["nodes"]), field
        if info["range"] is not None:
            assert (prop(widget, "minimum"), prop(widget, "maximum")) == pytest.approx(info["range"]), field
        if info["kind"] in ("int", "float"):
            assert prop(widget, "value") == pytest.approx(info["default"]), field
        if info["kind"] == "bool":
            assert bool(prop(widget, "checked")) == info["default"], field


@pytest.mark.parametrize("name", MODULES)
def test_widget_code_only_uses_existing_ui_names(name):
    names = set(widgets(ui_file(name)))
    used = widget_code_names(module_file(name).read_text()) | widget_code_names((LIB / "slicer_widget.py").read_text())
    assert used, "no self.ui.<name> found: the check would be vacuous"
    assert used <= names, f"{name}.ui lacks {sorted(used - names)}"
    assert f'self.resourcePath("UI/{name}.ui")' in module_file(name).read_text()


@pytest.mark.parametrize("name", MODULES)
def test_logic_argument_maps_use_parameter_fields(name):
    fields = parameter_fields(name)
    process, evaluate = module_constant(name, "PROCESS_ARGS"), module_constant(name, "EVALUATE_ARGS")
    required = module_constant(name, "REQUIRED_INPUTS")
    batch = module_constant(name, "BATCH_ARGS") if name == "COIPS" else {}
    for mapping in (process, evaluate, batch):
        assert set(mapping) <= set(fields)
        assert len(set(mapping.values())) == len(mapping), "two fields map to one keyword"
    assert set(required) <= set(process) and required
    assert {"prediction", "reference", "table"} <= set(evaluate.values())
    assert fields[next(f for f, k in evaluate.items() if k == "table")]["nodes"] == ["vtkMRMLTableNode"]
    # every setting the user can change reaches the Logic
    plumbing = {"model", "checkpointPath", "device"}
    assert set(fields) - plumbing - set(process) - set(evaluate) - set(batch) == set()
    choices = fields["device"]["choices"]
    assert tuple(choices) == slicer_widget.DEVICE_CHOICES


def test_device_choices_match_the_core_library():
    from VesselReconLib.device import DEVICE_CHOICES

    assert slicer_widget.DEVICE_CHOICES == DEVICE_CHOICES


# ---------------------------------------------------------------- Qt-free core library


QT_IMPORT = re.compile(r"^\s*(import qt|from qt|import ctk|from ctk)\b", re.MULTILINE)


def _module_level_violations(path: Path) -> list[str]:
    """qt/ctk imports anywhere, and slicer.app used outside function bodies."""
    text = path.read_text()
    problems = [f"{path.name}: {m.group(0).strip()}" for m in QT_IMPORT.finditer(text)]

    def visit(node, in_function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function = True
        if (not in_function and isinstance(node, ast.Attribute) and node.attr == "app"
                and isinstance(node.value, ast.Name) and node.value.id == "slicer"):
            problems.append(f"{path.name}:{node.lineno}: slicer.app at module level")
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(ast.parse(text), False)
    return problems


def test_core_library_is_qt_free():
    files = [p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts]
    assert LIB / "slicer_widget.py" in files and LIB / "slicerdeps.py" in files
    assert [v for p in files for v in _module_level_violations(p)] == []


# ---------------------------------------------------------------- module files under stand-ins


STUB_RUNNER = r'''
import importlib.abc, importlib.util, inspect, json, sys, types, unittest

BLOCKED = {"qt", "ctk", "torch", "PythonQt"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not available here")
        return None

sys.meta_path.insert(0, Blocker())
sys.path.insert(0, SRC)
import slicer  # slicer-core: MRML classes and slicer.util, no application

slm = types.ModuleType("slicer.ScriptedLoadableModule")
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__[:-len("Logic")]
    def getParameterNode(self):
        return "raw parameter node"
class ScriptedLoadableModuleTest(unittest.TestCase):
    pass
for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest):
    setattr(slm, cls.__name__, cls)
slm.__all__ = [c for c in vars(slm) if c.startswith("Scripted")]

pnw = types.ModuleType("slicer.parameterNodeWrapper")
def parameterNodeWrapper(cls):
    def __init__(self, node):
        self.node = node
    cls.__init__ = __init__
    return cls
class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum
class Choice:
    def __init__(self, choices):
        self.choices = choices
pnw.parameterNodeWrapper, pnw.WithinRange, pnw.Choice = parameterNodeWrapper, WithinRange, Choice

i18n = types.ModuleType("slicer.i18n")
i18n.tr = lambda text: text
i18n.translate = lambda context, text: text

class App:
    connections = []
    def connect(self, signal, slot):
        self.connections.append((signal, slot))

sys.modules.update({"slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": pnw,
                    "slicer.i18n": i18n})
slicer.app = App()

report = {}
for name, method in MODULES.items():
    spec = importlib.util.spec_from_file_location(name, f"{SRC}/{name}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    classes = {k: v for k, v in vars(module).items() if isinstance(v, type) and v.__module__ == name}
    parent = types.SimpleNamespace()
    module_class = getattr(module, name)
    module_class(parent)
    widget_class = getattr(module, name + "Widget")
    widget = widget_class()
    report[name] = {
        "classes": sorted(classes),
        "title": parent.title, "categories": parent.categories, "contributors": parent.contributors,
        "help": parent.helpText, "acknowledgement": parent.acknowledgementText,
        "startup": [s for s, slot in App.connections if slot is module.registerSampleData],
        "widget_mro": [c.__name__ for c in widget_class.__mro__],
        "widget_state": [widget.logic, widget._parameterNode, widget._parameterNodeGuiTag],
        "test_base": [c.__name__ for c in getattr(module, name + "Test").__mro__],
        "torch_imported": "torch" in sys.modules,
    }

BLOCKED.discard("torch")  # creating a Logic imports the core, which may load torch
from VesselReconLib.errors import InputError
for name, method in MODULES.items():
    module = sys.modules[name]
    logic_class = getattr(module, name + "Logic")
    logic = logic_class()
    entry = report[name]
    entry["logic_is_slicer_logic"] = isinstance(logic, logic_class) and isinstance(logic, ScriptedLoadableModuleLogic)
    entry["logic_module_name"] = logic.moduleName
    entry["parameter_node"] = type(logic.getParameterNode()).__name__
    entry["core_missing"] = getattr(logic, "core_missing", None)
    if entry["core_missing"]:
        try:
            logic.process()
            entry["missing_core_error"] = None
        except InputError as exc:
            entry["missing_core_error"] = str(exc)
    else:
        core = importlib.import_module(f"VesselReconLib.{method}.logic")
        entry["core_class_ok"] = isinstance(logic, getattr(core, name + "Logic"))
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def stubbed():
    """Run every module file under stand-ins in one subprocess and return what it reports."""
    methods = {name: method for name, (method, _) in MODULES.items()}
    script = f"SRC = {str(SRC)!r}\nMODULES = {methods!r}\n" + STUB_RUNNER
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", MODULES)
def test_module_file_runs_without_qt_ctk_or_torch(stubbed, name):
    report = stubbed[name]
    expected = {name, f"{name}ParameterNode", f"{name}Widget", f"{name}Logic", f"{name}Test"}
    assert expected <= set(report["classes"])
    assert not report["torch_imported"], "importing the module file must not load torch"
    assert report["title"] == name
    assert report["categories"] == [slicer_widget.CATEGORY]
    assert report["contributors"] == slicer_widget.CONTRIBUTORS
    assert len(report["help"]) > 200
    assert " ".join(MODULES[name][1].split()) in " ".join(re.sub(r"<[^>]+>", "", report["acknowledgement"]).split())
    assert report["startup"] == ["startupCompleted()"]
    mro = report["widget_mro"]
    assert mro[:4] == [f"{name}Widget", "ModuleWidgetMixin", "ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert report["widget_state"] == [None, None, None]
    assert "ScriptedLoadableModuleTest" in report["test_base"]


@pytest.mark.parametrize("name", MODULES)
def test_module_logic_binds_the_core_lazily(stubbed, name):
    report = stubbed[name]
    assert report["logic_is_slicer_logic"] and report["logic_module_name"] == name
    assert report["parameter_node"] == f"{name}ParameterNode"
    if report["core_missing"]:
        assert report["missing_core_error"] == report["core_missing"]
        assert f"{MODULES[name][0]} processing code could not be loaded" in report["missing_core_error"]
    else:
        assert report["core_class_ok"]


@pytest.mark.parametrize("name", MODULES)
def test_core_logic_accepts_the_widget_keywords(name):
    """Once the core logic exists, its entry points must take what the widget passes."""
    method = MODULES[name][0]
    try:
        core_module = __import__(f"VesselReconLib.{method}.logic", fromlist=["*"])
    except ModuleNotFoundError as exc:
        if exc.name in (f"VesselReconLib.{method}", f"VesselReconLib.{method}.logic"):
            pytest.skip(f"VesselReconLib.{method}.logic is not written yet")
        raise
    core = getattr(core_module, f"{name}Logic")
    calls = [("process", module_constant(name, "PROCESS_ARGS"), ("model", "device", "progress", "cancel")),
             ("evaluate", module_constant(name, "EVALUATE_ARGS"), ())]
    if name == "COIPS":
        calls.append(("process_batch", module_constant(name, "BATCH_ARGS"), ("model", "device", "progress", "cancel")))
    for method_name, mapping, extra in calls:
        keywords = {k: None for k in [*mapping.values(), *extra]}
        accepted = slicer_widget.accepted_kwargs(getattr(core, method_name), keywords)
        assert set(accepted) == set(keywords), f"{name}Logic.{method_name} lacks {sorted(set(keywords) - set(accepted))}"
    assert callable(getattr(core, "load_sample"))


# ---------------------------------------------------------------- widget plumbing (pure Python)


class FakeWidget:
    """Records attribute writes and the thread they came from."""

    def __init__(self, **values):
        object.__setattr__(self, "writes", [])
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, key, value):
        self.writes.append((key, value, threading.current_thread()))
        object.__setattr__(self, key, value)


def fake_ui():
    return types.SimpleNamespace(applyButton=FakeWidget(enabled=True), evaluateButton=FakeWidget(enabled=True),
                                 loadSampleButton=FakeWidget(enabled=True), cancelButton=FakeWidget(enabled=False),
                                 progressBar=FakeWidget(value=0), statusLabel=FakeWidget(text=""))


def test_task_runner_reports_progress_on_the_gui_thread_only():
    ui, states, idle = fake_ui(), [], []
    runner = slicer_widget.TaskRunner(ui, lambda: states.append((ui.applyButton.enabled, ui.cancelButton.enabled)),
                                      on_idle=lambda: idle.append(True))

    def compute():
        for i in range(5):
            runner.progress(i / 4, f"step {i}")
            threading.Event().wait(0.02)
        return 42

    result = runner.run(lambda progress, cancel, background: background(compute) + 1, "Work")
    assert result == 43 and idle == [True]
    assert states and all(s == (False, True) for s in states), "Apply off and Cancel on while running"
    assert ui.applyButton.enabled and not ui.cancelButton.enabled
    assert ui.progressBar.value == 100 and ui.statusLabel.text == "Work finished."
    assert {t for _, _, t in ui.progressBar.writes + ui.statusLabel.writes} == {threading.main_thread()}
    assert any(v == "step 4" for k, v, _ in ui.statusLabel.writes)


def test_task_runner_cancel_and_errors():
    ui, shown = fake_ui(), []
    runner = slicer_widget.TaskRunner(ui, lambda: runner.cancel(), error_display=shown.append)

    def slow(progress, cancel):
        report = Reporter(progress, cancel)  # what core code uses: raises Cancelled when asked
        while True:
            report(0.5, "working")
            threading.Event().wait(0.01)

    assert runner.run_compute(slow, title="Long") is None
    assert ui.statusLabel.text == "Long cancelled." and shown == []

    def bad_input(progress, cancel, background):
        raise CheckpointError("The checkpoint does not match the OCTADepth network.")

    assert runner.run(bad_input) is None
    assert shown == ["The checkpoint does not match the OCTADepth network."]

    def crash(progress, cancel, background):
        raise RuntimeError("boom")

    assert runner.run(crash, "Processing") is None
    assert shown[-1].startswith("Processing failed: boom") and "Traceback" not in shown[-1]
    assert ui.applyButton.enabled and not ui.cancelButton.enabled


def test_run_with_progress_applies_on_the_main_thread():
    ui = fake_ui()
    seen = []
    result = slicer_widget.run_with_progress(ui, lambda progress, cancel: threading.current_thread(),
                                             lambda worker: seen.append((worker, threading.current_thread())) or 7)
    assert result == 7
    worker, main = seen[0]
    assert worker is not threading.main_thread() and main is threading.main_thread()


def test_call_logic_drops_unknown_keywords(caplog):
    def process(input_volume, threshold=0.5, progress=None):
        return input_volume, threshold

    kwargs = {"input_volume": 1, "threshold": 0.7, "unknown_setting": 3, "progress": None, "background": None}
    with caplog.at_level("WARNING"):
        assert slicer_widget.call_logic(process, kwargs) == (1, 0.7)
    assert "unknown_setting" in caplog.text and "background" not in caplog.text
    assert slicer_widget.call_logic(lambda **kw: sorted(kw), kwargs) == sorted(kwargs)


def test_model_choice(tmp_path):
    param = types.SimpleNamespace(model="lite", checkpointPath=Path(""), device="cpu", inputVolume="node")
    assert slicer_widget.logic_kwargs(param, {"inputVolume": "input_volume"}) == {
        "input_volume": "node", "model": "lite", "device": "cpu"}
    param.model = slicer_widget.CHECKPOINT_ITEM
    with pytest.raises(InputError, match="Choose a checkpoint"):
        slicer_widget.model_spec(param)
    param.checkpointPath = tmp_path / "missing.safetensors"
    with pytest.raises(InputError, match="does not exist"):
        slicer_widget.model_spec(param)
    (tmp_path / "mine.safetensors").write_bytes(b"")
    param.checkpointPath = tmp_path / "mine.safetensors"
    assert slicer_widget.model_spec(param) == str(tmp_path / "mine.safetensors")


class FakeCombo:
    def __init__(self):
        self.items, self.currentIndex, self.blocked = [], -1, False

    def blockSignals(self, value):
        old, self.blocked = self.blocked, value
        return old

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, text):
        self.items.append(text)
        if self.currentIndex < 0:
            self.currentIndex = 0

    def findText(self, text):
        return self.items.index(text) if text in self.items else -1

    def itemText(self, index):
        return self.items[index]

    @property
    def count(self):
        return len(self.items)

    @property
    def currentText(self):
        return self.items[self.currentIndex] if self.currentIndex >= 0 else ""


def test_model_combo_lists_presets_and_checkpoint():
    combo = FakeCombo()
    slicer_widget.fill_model_combo(combo, ["lite", "full"], "full")
    assert combo.items == ["lite", "full", slicer_widget.CHECKPOINT_ITEM] and combo.currentIndex == 1
    assert not combo.blocked
    assert not slicer_widget.select_model(combo, "absent") and combo.currentIndex == 1


class FakeNode:
    def __init__(self, cls):
        self.cls = cls

    def GetID(self):
        return id(self)

    def IsA(self, name):
        return name == self.cls


class FakeParameters:
    inputVolume: object
    outputModel: object
    frameA: int
    outputTable: object

    def __init__(self):
        self.inputVolume = self.outputModel = self.outputTable = None
        self.frameA = 0


def test_outputs_and_samples_go_into_the_parameter_node():
    param, mapping = FakeParameters(), {"inputVolume": "input_volume", "outputModel": "output_model"}
    volume, model = FakeNode("vtkMRMLScalarVolumeNode"), FakeNode("vtkMRMLModelNode")
    assert slicer_widget.store_outputs(param, {"output_model": model, "frame_a": 3, "other": model}, mapping) == [
        "outputModel"]
    assert param.outputModel is model and param.frameA == 0
    assert set(slicer_widget.apply_sample(param, {"input_volume": volume, "frameA": 4}, mapping)) == {
        "inputVolume", "frameA"}
    assert param.frameA == 4
    fresh = FakeParameters()
    assert slicer_widget.apply_sample(fresh, volume, mapping, inputs=("inputVolume",)) == ["inputVolume"]
    table = FakeNode("vtkMRMLTableNode")
    assert slicer_widget.result_table({"output_table": table, "output_model": model}) is table
    assert slicer_widget.result_table(model) is None and slicer_widget.result_table(None) is None


class FakeTableView:
    def __init__(self):
        self.node, self.visible = None, False

    def setMRMLTableNode(self, node):
        self.node = node


class DemoParameters:
    inputVolume: object
    model: str
    checkpointPath: Path
    device: str
    outputModel: object
    outputTable: object
    referenceModel: object
    evaluationTable: object

    def __init__(self):
        self.inputVolume = self.outputModel = self.outputTable = self.referenceModel = self.evaluationTable = None
        self.model, self.checkpointPath, self.device = "lite", Path(""), "cpu"


class DemoLogic:
    def __init__(self):
        self.calls = []

    def shipped_models(self):
        return ["lite"]

    def process(self, input_volume, output_model=None, output_table=None, model="lite", device="auto",
                progress=None, cancel=None, background=None):
        self.calls.append(("process", input_volume, model, device))
        worker = background(lambda: threading.current_thread())
        progress(1.0, "done")
        return {"output_model": FakeNode("vtkMRMLModelNode"), "output_table": FakeNode("vtkMRMLTableNode"),
                "worker": worker}

    def evaluate(self, prediction, reference, table=None):
        self.calls.append(("evaluate", prediction, reference))
        return FakeNode("vtkMRMLTableNode")

    def load_sample(self):
        return {"input_volume": FakeNode("vtkMRMLScalarVolumeNode")}


def test_module_widget_mixin_drives_the_logic():
    class DemoWidget(slicer_widget.ModuleWidgetMixin):
        PROCESS_ARGS = {"inputVolume": "input_volume", "outputModel": "output_model", "outputTable": "output_table"}
        EVALUATE_ARGS = {"outputModel": "prediction", "referenceModel": "reference", "evaluationTable": "table"}
        REQUIRED_INPUTS = ("inputVolume",)
        moduleName = "Demo"

        def ensureDependencies(self):
            return True

    widget, combo = DemoWidget(), FakeCombo()
    widget.ui = types.SimpleNamespace(**vars(fake_ui()), modelComboBox=combo, checkpointPathLineEdit=FakeWidget(),
                                      resultsTableView=FakeTableView(), evaluationTableView=FakeTableView())
    widget.logic, widget._parameterNode = DemoLogic(), DemoParameters()
    widget.runner = slicer_widget.TaskRunner(widget.ui, on_idle=widget._checkCanApply, error_display=pytest.fail)
    slicer_widget.fill_model_combo(combo, widget.logic.shipped_models())
    p, ui = widget._parameterNode, widget.ui

    widget._checkCanApply()
    assert not ui.applyButton.enabled and "inputVolume" in ui.applyButton.toolTip
    assert not ui.checkpointPathLineEdit.enabled
    widget.onLoadSampleButton()
    assert p.inputVolume is not None and ui.applyButton.enabled and not ui.evaluateButton.enabled
    widget.onApplyButton()
    assert widget.logic.calls == [("process", p.inputVolume, "lite", "cpu")]
    assert p.outputModel.IsA("vtkMRMLModelNode") and p.outputTable.IsA("vtkMRMLTableNode")
    assert ui.resultsTableView.node is p.outputTable and ui.resultsTableView.visible
    p.referenceModel = FakeNode("vtkMRMLModelNode")
    widget._checkCanApply()
    assert ui.evaluateButton.enabled
    widget.onEvaluateButton()
    assert widget.logic.calls[-1] == ("evaluate", p.outputModel, p.referenceModel)
    assert ui.evaluationTableView.node is p.evaluationTable is not None
    widget.onModelChanged(1)
    widget._checkCanApply()
    assert p.model == slicer_widget.CHECKPOINT_ITEM and ui.checkpointPathLineEdit.enabled


def test_bind_core_combines_lazily_and_retries_a_missing_core(monkeypatch):
    class Base:  # stands in for ScriptedLoadableModuleLogic
        def __init__(self):
            super().__init__()

    class Core:
        def __init__(self, scene=None):
            self.core_initialized = True

        def process(self, input_volume):
            return input_volume

    class DemoLogic(Base):
        def __new__(cls, *args, **kwargs):
            return super().__new__(slicer_widget.bind_core(cls, "_demo", "DemoLogic"))

    logic = DemoLogic()
    assert hasattr(logic, "core_missing") and logic.shipped_models() == []
    with pytest.raises(InputError, match="_demo processing code could not be loaded"):
        logic.process(input_volume=1)
    package, core_module = types.ModuleType("VesselReconLib._demo"), types.ModuleType("VesselReconLib._demo.logic")
    core_module.DemoLogic = Core
    monkeypatch.setitem(sys.modules, "VesselReconLib._demo", package)
    monkeypatch.setitem(sys.modules, "VesselReconLib._demo.logic", core_module)
    logic = slicer_widget.fresh_logic(logic)
    assert isinstance(logic, DemoLogic) and isinstance(logic, Core) and logic.core_initialized
    assert type(logic).__name__ == "DemoLogic" and logic.process(input_volume=5) == 5
    assert type(DemoLogic()) is type(logic), "the combined class is cached"
    assert slicer_widget.fresh_logic(logic) is logic


# ---------------------------------------------------------------- dependency installer


def test_dependency_list_covers_the_stack():
    wanted = {"monai", "timm", "segmentation_models_pytorch", "safetensors", "skimage", "scipy", "pyvista",
              "pytorch_msssim", "manifold3d", "pydicom", "yaml"}
    assert set(slicerdeps.REQUIREMENTS) == wanted
    names = {slicerdeps._name(r) for r in slicerdeps.REQUIREMENTS.values()}
    assert not names & {p.lower() for p in slicerdeps.SLICER_PACKAGES}
    assert {"numpy", "vtk", "SimpleITK"} <= set(slicerdeps.SLICER_PACKAGES)
    assert slicerdeps.missing_modules(["json", "surely_not_a_module_xyz"]) == ["surely_not_a_module_xyz"]


def test_dependency_installer_protects_slicer_packages(monkeypatch):
    calls = []

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, requester=None):
        calls.append(([str(r) for r in requirements], skip_packages, prompt_install, requester))

    monkeypatch.setattr(slicerdeps, "_pip_ensure", lambda: pip_ensure)
    assert slicerdeps._install_packages(["pyvista", "monai>=1.3"], None, ask=False)
    assert calls == [(["pyvista", "monai>=1.3"], list(slicerdeps.SLICER_PACKAGES), False, "VesselRecon")]
    monkeypatch.setattr(slicerdeps, "missing_modules", lambda names=None: [])
    assert slicerdeps.ensure_dependencies() is True


def test_dependency_failures_are_short_messages(monkeypatch):
    shown = []
    monkeypatch.setattr(slicerdeps, "_show", lambda message, parent=None: shown.append(message))

    def failing(requirements, **kwargs):
        raise subprocess.CalledProcessError(1, ["pip", "install"])

    monkeypatch.setattr(slicerdeps, "_pip_ensure", lambda: failing)
    assert not slicerdeps._install_packages(["pyvista"], None, ask=True)
    assert shown and "Installing pyvista failed" in shown[0] and "Traceback" not in shown[0]

    def declined(requirements, **kwargs):
        raise RuntimeError("User declined package installation")

    monkeypatch.setattr(slicerdeps, "_pip_ensure", lambda: declined)
    assert not slicerdeps._install_packages(["pyvista"], None, ask=True)
    assert "cannot run without" in shown[-1]


def test_slicerdeps_and_slicer_widget_import_without_slicer_or_torch():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import VesselReconLib.slicer_widget, VesselReconLib.slicerdeps
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'torch', 'slicer'))
        print(bad)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

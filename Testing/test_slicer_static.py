"""Static and stubbed checks of the Slicer extension: CMake, .s4ext, .ui and module files, widget plumbing.

Nothing here needs the Slicer application: module files are executed in a subprocess with minimal
stand-ins for ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.i18n``
while ``qt``, ``ctk`` (and, until a Logic is created, ``torch``) are made unimportable.
"""

from __future__ import annotations

import ast
import importlib
import inspect
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

from VesselReconLib import (registry, slicer_compat, slicer_logic, slicer_results, slicer_samples,  # noqa: E402
                            slicer_selftest, slicer_widget, slicerdeps)
from VesselReconLib.errors import CheckpointError, InputError  # noqa: E402
from VesselReconLib.progress import Reporter  # noqa: E402

MODULES = {  # module -> (core package, paper title in the acknowledgement)
    "OCTADepth": ("octadepth", "3D vessel reconstruction in OCT-angiography via depth map estimation"),
    "Angio3D": ("angio3d", "3D Coronary Vessel Reconstruction from Bi-Plane Angiography using Graph Convolutional "
                         "Networks"),
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
    tree = module_ast(name)
    for node in ast.walk(tree):  # Angio3D defines its class inside a function (Markups, 5.8)
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            assert node.name == f"{name}ParameterNode"
            constants = _core_constants(tree)
            return {item.target.id: _field_info(item, constants) for item in node.body
                    if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{name}.py has no @parameterNodeWrapper class")


def _core_constants(tree: ast.Module) -> dict:
    """Names the module imports from the Qt-free core (``from VesselReconLib.x import NAME``), resolved."""
    import importlib

    return {alias.asname or alias.name: getattr(importlib.import_module(node.module), alias.name)
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("VesselReconLib")
            for alias in node.names if alias.name.isupper()}


def _field_info(item: ast.AnnAssign, constants: dict) -> dict:
    value = item.value
    default = constants.get(value.id) if isinstance(value, ast.Name) else _literal(value) if value is not None else None
    info = {"default": default, "range": None, "choices": None}
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


RAW_URL = "https://raw.githubusercontent.com/vesselrecon/SlicerVesselRecon/main/"
# Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json ("additionalProperties": false)
CATALOG_SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                      "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
                      "enabled": bool, "tier": int}


def catalog_entry() -> dict:
    return json.loads((ROOT / "VesselRecon.json").read_text())


def test_s4ext_matches_cmake_metadata():
    text, meta = cmake_text(ROOT / "CMakeLists.txt"), s4ext()
    for key in ("homepage", "category", "contributors", "description", "iconurl", "screenshoturls", "status"):
        assert meta[key] == " ".join(cmake_set(text, f"EXTENSION_{key.upper()}")), key
    assert meta["depends"] == " ".join(cmake_set(text, "EXTENSION_DEPENDS")) == "PyTorch"
    assert meta["scm"] == "git" and meta["scmurl"].startswith(meta["homepage"])
    assert meta["build_subdirectory"] == "." == cmake_set(text, "EXTENSION_BUILD_SUBDIRECTORY")[0]
    assert meta["enabled"] == "1"
    assert meta["homepage"] == "https://github.com/vesselrecon/SlicerVesselRecon"


def test_catalog_entry_follows_the_index_schema_and_matches_cmake():
    """VesselRecon.json is the ExtensionsIndex catalog entry (JSON since April 2024); .s4ext stays for
    older index branches. Both must say what CMake's extension metadata says."""
    entry, meta, text = catalog_entry(), s4ext(), cmake_text(ROOT / "CMakeLists.txt")
    assert CATALOG_REQUIRED <= set(entry) <= set(CATALOG_PROPERTIES), "the schema allows no other keys"
    assert all(isinstance(entry[k], CATALOG_PROPERTIES[k]) for k in entry)
    assert entry["$schema"] == CATALOG_SCHEMA
    assert entry["category"] == meta["category"] == cmake_set(text, "EXTENSION_CATEGORY")[0]
    assert entry["build_dependencies"] == cmake_set(text, "EXTENSION_DEPENDS") == meta["depends"].split()
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"] == meta["scmurl"] and entry["scm_url"].startswith(cmake_set(text, "EXTENSION_HOMEPAGE")[0])
    assert entry["scm_revision"] == meta["scmrevision"] and entry.get("scm_type", "git") == meta["scm"]
    assert entry["build_subdirectory"] == meta["build_subdirectory"]
    assert entry.get("enabled", True) == (meta["enabled"] == "1") and 1 <= entry.get("tier", 1) <= 5


def test_the_index_validator_reads_our_cmake_and_catalog_entry():
    """Slicer/ExtensionsIndex's scripts/check_description_files.py parses the top-level CMakeLists.txt
    with these regular expressions (the URLs must be quoted, the project named as the entry file), and
    wants an https/git scm_url of a repository whose name contains 'Slicer' and a license file at the
    root. A CMakeLists.txt that our own parser reads but theirs does not fails the index's CI."""
    text, entry = (ROOT / "CMakeLists.txt").read_text(), catalog_entry()
    project = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", text, re.IGNORECASE)
    assert project and project[0] == "VesselRecon" == (ROOT / "VesselRecon.json").stem
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.IGNORECASE)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.IGNORECASE)
    assert icon and icon[0] == s4ext()["iconurl"] and icon[0].startswith("http")
    assert shots and shots[0].split() == s4ext()["screenshoturls"].split()
    assert entry["scm_url"].split("://")[0] in ("https", "git")
    assert "slicer" in Path(entry["scm_url"]).stem.lower()
    assert entry["category"] in ("Segmentation", "Quantification", "Vascular Modeling Toolkit"), \
        "one of the index's ACCEPTED_EXTENSION_CATEGORIES"
    assert (ROOT / "LICENSE.txt").is_file()


def test_extension_urls_point_at_files_that_exist_with_that_case():
    """Raw GitHub URLs are case-sensitive: OCTADepth.png 404s when the file is octadepth.png."""
    meta = s4ext()
    urls = [meta["iconurl"], *meta["screenshoturls"].split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(RAW_URL), url
        relative = url[len(RAW_URL):]
        folder = ROOT / Path(relative).parent
        assert Path(relative).name in {p.name for p in folder.iterdir()}, f"{relative} does not exist (exact case)"


def test_license_and_real_contributors():
    text, meta = cmake_text(ROOT / "CMakeLists.txt"), s4ext()
    license_text = (ROOT / "LICENSE.txt").read_text()
    assert license_text.startswith("BSD 3-Clause License") and "Redistribution and use" in license_text
    import tomllib

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "BSD-3-Clause"
    assert cmake_set(text, "EXTENSION_LICENSE_FILE") == ["${CMAKE_CURRENT_SOURCE_DIR}/LICENSE.txt"]
    contributors = meta["contributors"]
    assert contributors == cmake_set(text, "EXTENSION_CONTRIBUTORS")[0] == slicer_widget.CONTRIBUTORS[0]
    assert "contributors" not in contributors.lower() and "(" in contributors, "a name with its organisation"


def test_minimum_slicer_version_is_declared_everywhere():
    """5.8 or later: the compatibility layer, the CMake check, the extension description, the README."""
    text, meta = cmake_text(ROOT / "CMakeLists.txt"), s4ext()
    minimum = ".".join(map(str, slicer_compat.MINIMUM_SLICER_VERSION))
    assert minimum == "5.8" and slicer_compat.MINIMUM_SLICER_TEXT == f"3D Slicer {minimum} or later"
    assert cmake_set(text, "VESSELRECON_MINIMUM_SLICER_VERSION") == [minimum]
    assert "VERSION_LESS VESSELRECON_MINIMUM_SLICER_VERSION" in text and "FATAL_ERROR" in text
    assert meta["description"].endswith(f"Requires {slicer_compat.MINIMUM_SLICER_TEXT}.")
    readme = (ROOT / "README.md").read_text()
    stated = set(re.findall(r"Slicer (\d+\.\d+) or later", readme))
    assert stated <= {minimum}, f"README states another minimum version: {stated}"


def test_icons_are_128_pixel_pngs():
    from PIL import Image

    for path in [ROOT / "Resources/Icons/VesselRecon.png"] + [SRC / m / f"Resources/Icons/{m}.png" for m in MODULES]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128), path


def test_self_test_names_every_missing_package(monkeypatch):
    """A Slicer with torch but no torchvision (Angio3D's backbones need it) skips the self-test, naming it."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real_find_spec(name, *a))
    assert slicer_selftest.torch_missing_reason() == "torchvision not installed"
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    assert slicer_selftest.torch_missing_reason() is None


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
    # Other Python files of the module folder (VCNet/scripts: measurement scripts) are not installed:
    # the module must not import them, or it would fail only in the installed extension.
    imported = {(a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
                for n in ast.walk(module_ast(name)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
    others = {p.stem for p in folder.rglob("*.py") if p.name != f"{name}.py"} | {
        p.parent.name for p in folder.rglob("*.py") if p.parent != folder}
    assert not imported & others, f"{name}.py imports files CMake does not install: {imported & others}"
    assert all((folder / f).is_file() for f in scripts + resources)
    build = " ".join(cmake_calls(text, "slicerMacroBuildScriptedModule")).split()
    assert build == ["NAME", "${MODULE_NAME}", "SCRIPTS", "${MODULE_PYTHON_SCRIPTS}",
                     "RESOURCES", "${MODULE_PYTHON_RESOURCES}", "WITH_GENERIC_TESTS"]
    testing = text[text.index("if(BUILD_TESTING)"):text.index("endif()")]
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing
    for sub in cmake_calls(testing, "add_subdirectory"):
        assert (folder / sub.strip() / "CMakeLists.txt").is_file()


def shipped_library_files() -> set[str]:
    """The package files a clone of the repository has under VesselReconLib (tracked, or new and not
    ignored), relative to it: what CMake must install and the wheel must hold. Its CMakeLists.txt and
    notes (*.md) are not needed at run time."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "."],
                                cwd=LIB, capture_output=True, text=True)
    except FileNotFoundError:
        listed = None
    if listed is None or listed.returncode:
        pytest.skip("needs git and a checkout")
    names = {n for n in listed.stdout.split("\0") if n and (LIB / n).is_file()}
    return {n for n in names if not n.endswith((".md", "CMakeLists.txt"))}


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
    shipped = shipped_library_files()
    from VesselReconLib import registry

    entries = [e for e in registry.load_registry() if e.status() == "ok"]
    named = {f"models/{e.name}.json" for e in entries} | {f"models/{e.file}" for e in entries}
    assert entries and named <= shipped, f"registry files not in the package: {sorted(named - shipped)}"
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
        assert files == shipped, (f"{tree.name}: not installed {sorted(shipped - files)}, "
                                  f"installed but not in the package {sorted(files - shipped)}")
        assert "resources/FolderBatch.ui" in files, "the shared folder-batch section travels with the package"


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
    # round 15: the opt-in QCA calibrator is a check box in the panel, passed to the Logic's process()
    assert bound["qcaCalibration"].get("class") == "QCheckBox"
    assert module_constant("Angio3D", "PROCESS_ARGS")["qcaCalibration"] == "qcaCalibration"


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
    if "FOLDER_BATCH = True" in module_file(name).read_text():
        names |= set(widgets(slicer_widget.BATCH_UI))
    used = widget_code_names(module_file(name).read_text()) | widget_code_names((LIB / "slicer_widget.py").read_text())
    used |= widget_code_names((LIB / "slicer_tasks.py").read_text())
    assert used, "no self.ui.<name> found: the check would be vacuous"
    assert used <= names, f"{name}.ui lacks {sorted(used - names)}"
    assert f'self.resourcePath("UI/{name}.ui")' in module_file(name).read_text()


CONTROL_CLASSES = {"QPushButton", "QToolButton", "QCheckBox", "QRadioButton", "QComboBox", "QSpinBox",
                   "QDoubleSpinBox", "QSlider", "ctkSliderWidget", "QLineEdit", "QTextEdit", "ctkPathLineEdit",
                   "ctkDirectoryButton", "qMRMLNodeComboBox", "qMRMLTableView", "qMRMLSubjectHierarchyTreeView",
                   "QProgressBar"}


@pytest.mark.parametrize("name", [*MODULES, "FolderBatch"])
def test_every_control_in_the_ui_is_bound_or_used(name):
    """The reverse of the check above: a control that is neither bound to a parameter nor used by the
    code is dead (a button that does nothing, a setting that reaches no Logic)."""
    if name == "FolderBatch":
        path, code = slicer_widget.BATCH_UI, [LIB / "slicer_widget.py", LIB / "folder_batch.py"]
    else:
        path, code = ui_file(name), [module_file(name), LIB / "slicer_widget.py", LIB / "slicer_tasks.py"]
    used = set().union(*(widget_code_names(p.read_text()) for p in code))
    controls = {n for n, w in widgets(path).items() if w.get("class") in CONTROL_CLASSES}
    assert controls, "no controls found: the check would be vacuous"
    dead = {n for n in controls - used if prop(widgets(path)[n], "SlicerParameterName") is None}
    assert not dead, f"{path.name}: controls neither bound nor used: {sorted(dead)}"


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

# Slicer 5.8: the Markups MRML classes are not in ``slicer`` while scripted modules are imported; they
# live in the Markups module's own wrapping until the Markups module has loaded.
markups = types.ModuleType("vtkSlicerMarkupsModuleMRMLPython")
for _name in [n for n in dir(slicer) if n.startswith("vtkMRMLMarkups")]:
    setattr(markups, _name, getattr(slicer, _name))
    delattr(slicer, _name)
sys.modules["vtkSlicerMarkupsModuleMRMLPython"] = markups

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
    entry["markups_in_slicer_during_test"] = any(n.startswith("vtkMRMLMarkups") for n in dir(slicer))
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
    expected = {name, f"{name}Widget", f"{name}Logic", f"{name}Test"}
    assert expected <= set(report["classes"])
    if name != "Angio3D":  # Angio3D defines its parameter node class on first use (Markups classes, 5.8)
        assert f"{name}ParameterNode" in report["classes"]
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
    assert not report["markups_in_slicer_during_test"], "the stand-in must behave like Slicer 5.8"
    if report["core_missing"]:
        assert report["missing_core_error"] == report["core_missing"]
        assert f"{MODULES[name][0]} processing code could not be loaded" in report["missing_core_error"]
    else:
        assert report["core_class_ok"]


@pytest.mark.parametrize("name", MODULES)
def test_core_logic_accepts_the_widget_keywords(name):
    """The core logic's entry points take what the widget passes (a missing core logic fails)."""
    method = MODULES[name][0]
    core = getattr(importlib.import_module(f"VesselReconLib.{method}.logic"), f"{name}Logic")
    calls = [("process", module_constant(name, "PROCESS_ARGS"), ("model", "device", "progress", "cancel")),
             ("evaluate", module_constant(name, "EVALUATE_ARGS"), ())]
    if name == "COIPS":
        calls.append(("process_batch", module_constant(name, "BATCH_ARGS"), ("model", "device", "progress", "cancel")))
    for method_name, mapping, extra in calls:
        keywords = {k: None for k in [*mapping.values(), *extra]}
        accepted = slicer_results.accepted_kwargs(getattr(core, method_name), keywords)
        assert set(accepted) == set(keywords), f"{name}Logic.{method_name} lacks {sorted(set(keywords) - set(accepted))}"
    assert callable(getattr(core, "load_sample"))


PANEL_ONLY_DEFAULTS = {("VCNet", "outputProbability"), ("VCNet", "outputMip")}   # the panel adds outputs


@pytest.mark.parametrize("name", MODULES)
def test_the_panel_starts_at_the_logics_defaults(name):
    """A panel user and a console user get the same result from "the defaults": every parameter-node default
    that reaches ``process`` equals the Logic's own (a ``None`` there means "from the image", which the panel
    fills in). VC-Net's and VesselSDF's panels removed small vessel pieces that the Logic keeps."""
    method = MODULES[name][0]
    core = getattr(importlib.import_module(f"VesselReconLib.{method}.logic"), f"{name}Logic")
    logic = inspect.signature(core.process).parameters
    panel = next(n for n in ast.walk(module_ast(name)) if isinstance(n, ast.ClassDef) and n.name == f"{name}ParameterNode")
    defaults = {f.target.id: _literal(f.value) for f in panel.body if isinstance(f, ast.AnnAssign) and f.value is not None}
    for field, keyword in module_constant(name, "PROCESS_ARGS").items():
        expected = logic[keyword].default if keyword in logic else None
        if field in defaults and expected not in (None, inspect.Parameter.empty) and (name, field) not in PANEL_ONLY_DEFAULTS:
            assert defaults[field] == expected, f"{name}: the panel's {field} starts at {defaults[field]!r}, the Logic's at {expected!r}"


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


def test_task_runner_shows_the_results_warnings_in_the_panel():
    """Warnings (an implausible vessel fraction, a model of the other contrast, ...) reached only the log, so the
    panel said "Processing finished." as for a clean run; they are now listed under it."""
    ui = fake_ui()
    runner = slicer_widget.TaskRunner(ui, error_display=pytest.fail)
    warned = types.SimpleNamespace(warnings=["vessel fraction 0.72 is implausible", "depth range collapsed"])
    assert runner.run(lambda progress, cancel, background: warned, "Processing") is warned
    assert ui.statusLabel.text == ("Processing finished with 2 warnings:\n- vessel fraction 0.72 is implausible\n"
                                   "- depth range collapsed")
    runner.run(lambda progress, cancel, background: types.SimpleNamespace(warnings=[]), "Processing")
    assert ui.statusLabel.text == "Processing finished."


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
        assert slicer_results.call_logic(process, kwargs) == (1, 0.7)
    assert "unknown_setting" in caplog.text and "background" not in caplog.text
    assert slicer_results.call_logic(lambda **kw: sorted(kw), kwargs) == sorted(kwargs)


def test_model_choice(tmp_path):
    param = types.SimpleNamespace(model="lite", checkpointPath=Path(""), device="cpu", inputVolume="node")
    assert slicer_results.logic_kwargs(param, {"inputVolume": "input_volume"}) == {
        "input_volume": "node", "model": "lite", "device": "cpu"}
    param.model = slicer_widget.CHECKPOINT_ITEM
    with pytest.raises(InputError, match="Choose a checkpoint"):
        slicer_results.model_spec(param)
    param.checkpointPath = tmp_path / "missing.safetensors"
    with pytest.raises(InputError, match="does not exist"):
        slicer_results.model_spec(param)
    (tmp_path / "mine.safetensors").write_bytes(b"")
    param.checkpointPath = tmp_path / "mine.safetensors"
    assert slicer_results.model_spec(param) == str(tmp_path / "mine.safetensors")


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
    assert slicer_results.store_outputs(param, {"output_model": model, "frame_a": 3, "other": model}, mapping) == [
        "outputModel"]
    assert param.outputModel is model and param.frameA == 0
    assert set(slicer_results.apply_sample(param, {"input_volume": volume, "frameA": 4}, mapping)) == {
        "inputVolume", "frameA"}
    assert param.frameA == 4
    fresh = FakeParameters()
    assert slicer_results.apply_sample(fresh, volume, mapping, inputs=("inputVolume",)) == ["inputVolume"]
    table = FakeNode("vtkMRMLTableNode")
    assert slicer_results.result_table({"output_table": table, "output_model": model}) is table
    assert slicer_results.result_table(model) is None and slicer_results.result_table(None) is None


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
    widget, combo = _demo_widget()
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
            return super().__new__(slicer_logic.bind_core(cls, "_demo", "DemoLogic"))

    logic = DemoLogic()
    assert hasattr(logic, "core_missing") and logic.shipped_models() == []
    with pytest.raises(InputError, match="_demo processing code could not be loaded"):
        logic.process(input_volume=1)
    package, core_module = types.ModuleType("VesselReconLib._demo"), types.ModuleType("VesselReconLib._demo.logic")
    core_module.DemoLogic = Core
    monkeypatch.setitem(sys.modules, "VesselReconLib._demo", package)
    monkeypatch.setitem(sys.modules, "VesselReconLib._demo.logic", core_module)
    logic = slicer_logic.fresh_logic(logic)
    assert isinstance(logic, DemoLogic) and isinstance(logic, Core) and logic.core_initialized
    assert type(logic).__name__ == "DemoLogic" and logic.process(input_volume=5) == 5
    assert type(DemoLogic()) is type(logic), "the combined class is cached"
    assert slicer_logic.fresh_logic(logic) is logic


# ---------------------------------------------------------------- dependency installer


def test_dependency_list_covers_the_stack():
    wanted = {"monai", "timm", "segmentation_models_pytorch", "safetensors", "skimage", "scipy",
              "pytorch_msssim", "manifold3d", "pydicom", "yaml"}
    assert set(slicerdeps.REQUIREMENTS) == wanted
    assert "pyvista" not in slicerdeps.REQUIREMENTS, "pyvista is not needed inside Slicer"
    names = {slicer_compat.requirement_name(r) for r in slicerdeps.REQUIREMENTS.values()}
    assert not names & {p.lower() for p in slicerdeps.SLICER_PACKAGES}
    assert {"numpy", "vtk", "SimpleITK"} <= set(slicerdeps.SLICER_PACKAGES)
    assert slicerdeps.missing_modules(["json", "surely_not_a_module_xyz"]) == ["surely_not_a_module_xyz"]


def test_the_wheel_holds_every_package_file():
    """pip installs (``make setup``, notebooks) get the weights, registry and .ui through setuptools'
    package-data: every file of the package must match a pattern there (the .py files go with their
    packages), as in the CMake install."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"": "VesselRecon"} and config["packages"]["find"]["include"] == ["VesselReconLib*"]
    patterns = config["package-data"]["VesselReconLib"]
    included = {p.relative_to(LIB).as_posix() for pattern in patterns for p in LIB.glob(pattern) if p.is_file()}
    shipped = shipped_library_files()
    missing = {f for f in shipped - included if not f.endswith(".py")}
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert {"resources/FolderBatch.ui", "models/vcnet-lite.safetensors", "models/vcnet-lite.json"} <= included


def test_the_wheel_holds_every_python_folder():
    """setuptools' ``packages.find`` skips a folder without ``__init__.py``: its modules would be missing
    from a pip-installed VesselReconLib (vcnet/ had none before round 10)."""
    from setuptools import find_packages

    found = {ROOT / "VesselRecon" / p.replace(".", "/") for p in find_packages(ROOT / "VesselRecon", include=["VesselReconLib*"])}
    folders = {p.parent for p in LIB.rglob("*.py") if "__pycache__" not in p.parts}
    assert not folders - found, f"no __init__.py, left out of the wheel: {sorted(map(str, folders - found))}"


def test_no_network_is_built_with_downloaded_weights(monkeypatch):
    """Model weights are never downloaded: every shipped network (timm, segmentation-models-pytorch and
    torchvision backbones included) is built and loaded with the network unreachable."""
    pytest.importorskip("torch")
    import socket

    from VesselReconLib import registry

    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    entries = registry.load_registry()
    built = {}
    for entry in entries:
        key = (entry.module, entry.preset, json.dumps(entry.config, sort_keys=True))
        built.setdefault(key, registry.build_model(entry.module, entry.preset, entry.config))
    assert {m for m, _, _ in built} == {"octadepth", "angio3d", "coips", "vcnet", "vesselsdf", "octavessel"}
    for module in ("angio3d", "coips"):  # the two with pretrained-capable backbones, loaded end to end
        net, _ = registry.load_model(module, "lite")
        assert not net.training
    assert tried == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_setup_refuses_a_python_without_wheels(tmp_path):
    """On a fresh machine whose python3 has no slicer-core/vtk wheels (3.14), ``make demo`` stops before
    creating .venv and says which Python to use, instead of ending in pip's resolver error."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    fake = tmp_path / "python3.14"
    fake.write_text(f'#!/bin/sh\n[ "$1" = "-c" ] && exec {sys.executable} -c '
                    f'"import sys; sys.version_info = (3, 14, 0, \'final\', 0)\n$2"\nexit 99\n')
    fake.chmod(0o755)
    made = subprocess.run(["make", "demo", f"PY={fake}"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode != 0 and not (tmp_path / ".venv").exists()
    assert "is Python 3.14; VesselRecon needs Python 3.10 to 3.13" in made.stderr
    assert "make PY=python3.12 demo" in made.stderr
    ok = subprocess.run(["make", "-n", "demo", f"PY={sys.executable}"], cwd=tmp_path, capture_output=True, text=True)
    check = next(line for line in ok.stdout.splitlines() if "sys.version_info" in line)
    assert subprocess.run(["sh", "-c", check.split("||", 1)[1].split("&&")[0].strip(" {")]).returncode == 0, \
        "the suite's own Python passes the check"


def test_pyvista_is_an_optional_extra_and_imported_nowhere():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(slicer_compat.requirement_name(d) == "pyvista" for d in project["dependencies"])
    assert any(slicer_compat.requirement_name(d) == "pyvista" for d in project["optional-dependencies"]["notebook"])
    imports = re.compile(r"^\s*(import pyvista|from pyvista)\b", re.MULTILINE)
    assert not [p for p in LIB.rglob("*.py") if imports.search(p.read_text())]


def test_dependency_installer_protects_slicer_packages(monkeypatch):
    calls = []

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, requester=None,
                   show_progress=True):
        calls.append(([str(r) for r in requirements], skip_packages, prompt_install, requester, show_progress))

    assert slicerdeps._install_packages(["pydicom", "monai>=1.3"], None, ask=False, pip_ensure=pip_ensure)
    assert calls == [(["pydicom", "monai>=1.3"], list(slicerdeps.SLICER_PACKAGES), False, "VesselRecon", True)]
    monkeypatch.setattr(slicerdeps, "missing_modules", lambda names=None: [])
    assert slicerdeps.ensure_dependencies() is True


def _fake_pytorch_utils(monkeypatch, installed: dict, after: dict, asked: list):
    """PyTorchUtils whose installTorch records the requirement and then 'installs' the ``after`` versions."""
    monkeypatch.setattr(slicer_compat, "installed_version", lambda name: installed.get(name))
    monkeypatch.setitem(sys.modules, "slicer",
                        types.SimpleNamespace(app=types.SimpleNamespace(testingEnabled=lambda: False)))

    class Logic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            asked.append((askConfirmation, torchVersionRequirement))
            installed.update(after)
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))


def test_an_old_torch_is_not_accepted(monkeypatch):
    """As SlicerTotalSegmentator does: an installed torch below the requirement triggers an upgrade offer;
    if the old torch was already imported, only a restart loads the new one."""
    shown, asked = [], []
    monkeypatch.setattr(slicerdeps, "missing_modules", lambda names=None: [])
    monkeypatch.setattr(slicerdeps, "_show", lambda message, parent=None: shown.append(message))
    _fake_pytorch_utils(monkeypatch, {"torch": "1.13.1+cu117", "torchvision": "0.14.1+cu117"},
                        {"torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130"}, asked)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="1.13.1+cu117"))
    assert slicerdeps.ensure_dependencies() is False
    assert asked == [(True, slicerdeps.TORCH_REQUIREMENTS["torch"])]
    assert "1.13.1+cu117 is installed" in shown[-1] and "Restart Slicer" in shown[-1]
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="2.14.1+cu130"))
    assert slicerdeps.ensure_dependencies() is True, "the upgraded torch is the one loaded: nothing to do"
    assert len(asked) == 1
    monkeypatch.setattr(slicer_compat, "installed_version", lambda name: "1.13.1")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # no PyTorch extension: say what to install
    assert slicerdeps.ensure_dependencies() is False
    assert "PyTorch\" extension" in shown[-1] and "1.13.1" in shown[-1]


def test_a_missing_torchvision_is_installed_with_torch(monkeypatch):
    """Angio3D's network (its VGG encoder) imports torchvision: a torch installed without it (or with an
    old one) goes through PyTorchUtils, which installs the torchvision matching torch."""
    shown, asked = [], []
    monkeypatch.setattr(slicerdeps, "missing_modules", lambda names=None: [])
    monkeypatch.setattr(slicerdeps, "_show", lambda message, parent=None: shown.append(message))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="2.14.1"))
    _fake_pytorch_utils(monkeypatch, {"torch": "2.14.1"}, {"torchvision": "0.29.1"}, asked)
    assert slicerdeps.torch_problem() == "torchvision is not installed."
    assert slicerdeps.ensure_dependencies() is True
    assert asked == [(True, slicerdeps.TORCH_REQUIREMENTS["torch"])] and not shown
    assert slicerdeps.torch_problem() is None
    _fake_pytorch_utils(monkeypatch, {"torch": "2.14.1", "torchvision": "0.15.2"}, {}, asked)  # not upgraded
    monkeypatch.setattr(slicerdeps, "missing_modules", lambda names=None: ["torchvision"])
    assert slicerdeps.ensure_dependencies() is False and "still missing: torchvision" in shown[-1]


def test_a_failed_torch_install_says_what_to_do(monkeypatch):
    """Offline (or behind a proxy) light-the-torch fails inside PyTorchUtils: a short message with the
    manual route and the offline one, no traceback, and nothing else is installed."""
    shown, asked = [], []
    monkeypatch.setattr(slicerdeps, "missing_modules", lambda names=None: ["torch", "torchvision", "monai"])
    monkeypatch.setattr(slicerdeps, "_show", lambda message, parent=None: shown.append(message))
    monkeypatch.setattr(slicerdeps, "_install_packages", lambda *args, **kwargs: asked.append("packages"))
    _fake_pytorch_utils(monkeypatch, {}, {}, asked)

    def offline(self, askConfirmation, torchVersionRequirement):
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install"])

    monkeypatch.setattr(sys.modules["PyTorchUtils"].PyTorchUtilsLogic, "installTorch", offline)
    assert slicerdeps.ensure_dependencies() is False
    assert asked == [] and len(shown) == 1 and "Traceback" not in shown[0]
    assert "Installing PyTorch failed" in shown[0] and "PyTorch Utils" in shown[0]
    assert "offline" in shown[0].lower() and "wheels" in shown[0]


def test_dependency_failures_are_short_messages(monkeypatch):
    shown = []
    monkeypatch.setattr(slicerdeps, "_show", lambda message, parent=None: shown.append(message))

    def failing(requirements, **kwargs):
        raise subprocess.CalledProcessError(1, ["pip", "install"], output="ERROR: Could not connect to proxy")

    assert not slicerdeps._install_packages(["pydicom"], None, ask=True, pip_ensure=failing)
    assert "Installing pydicom failed" in shown[0] and "Traceback" not in shown[0]
    assert "proxy" in shown[0].lower() and "HTTPS_PROXY" in shown[0]
    assert "offline" in shown[0].lower() and "wheels" in shown[0], "offline users get the wheel-folder route"

    def declined(requirements, **kwargs):
        raise RuntimeError("User declined package installation")

    assert not slicerdeps._install_packages(["pydicom"], None, ask=True, pip_ensure=declined)
    assert "cannot run without" in shown[-1]


SLICER_SIDE = ["slicer_compat", "slicer_results", "slicer_logic", "slicer_samples", "slicer_selftest",
               "slicerdeps", "slicer_tasks", "slicer_widget", "folder_batch"]


def test_slicer_side_imports_without_slicer_or_torch():
    modules = ", ".join(f"VesselReconLib.{m}" for m in SLICER_SIDE)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import {modules}
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'torch', 'slicer'))
        print(bad)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _library_imports(name: str) -> set[str]:
    """VesselReconLib modules that ``name`` imports (anywhere in the file, top level or in functions)."""
    found = set()
    for node in ast.walk(ast.parse((LIB / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_slicer_side_has_no_import_circle():
    """One file, one job: the Slicer-side modules import each other in one direction only."""
    graph = {m: _library_imports(m) & set(SLICER_SIDE) for m in SLICER_SIDE}
    assert "slicer_widget" not in set().union(*(graph[m] for m in SLICER_SIDE if m != "slicer_widget"))
    order, seen = [], set()

    def visit(node, stack):
        assert node not in stack, f"import circle: {' -> '.join([*stack, node])}"
        if node in seen:
            return
        for child in sorted(graph[node]):
            visit(child, [*stack, node])
        seen.add(node)
        order.append(node)

    for module in SLICER_SIDE:
        visit(module, [])
    assert max(len((LIB / f"{m}.py").read_text().splitlines()) for m in SLICER_SIDE) < 400


# ---------------------------------------------------------------- Slicer names used by the modules


SLICER_APP_ONLY = {  # attributes of ``slicer`` that exist only in the application, not in slicer-core
    "app", "mrmlScene", "modules", "ScriptedLoadableModule", "parameterNodeWrapper", "i18n", "packaging",
    "moduleNames", "testing", "selfTests",
}
QT_ALLOWED = set()  # the modules use no qt/ctk names directly: .ui files and slicer.util helpers do it
DIFFERING_API = {"SetTerminology", "GetTerminology", "pip_ensure", "pip_install"}  # 5.8 vs 5.13
SLICER_FILES = [*(module_file(name) for name in MODULES),
                *(LIB / f"{name}.py" for name in ("slicer_compat", "slicer_results", "slicer_logic", "slicer_samples",
                                                  "slicer_selftest", "slicerdeps", "slicer_tasks", "slicer_widget",
                                                  "folder_batch", "mrml"))]


def _uses(tree: ast.AST):
    """(root name, attribute chain, line, in a function, in a try block) for every ``x.y.z`` use."""
    found = []

    def chain(node):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        return (node.id, parts[::-1]) if isinstance(node, ast.Name) else (None, [])

    def visit(node, in_function, in_try, parent_is_attribute=False):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function = True
        if isinstance(node, ast.Try):
            for child in node.body:
                visit(child, in_function, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, in_function, in_try)
            return
        if isinstance(node, ast.Attribute) and not parent_is_attribute:
            root, parts = chain(node)
            if root is not None:
                found.append((root, parts, node.lineno, in_function, in_try))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function, in_try, isinstance(node, ast.Attribute))

    visit(tree, False, False)
    return found


def _slicer_name_problems(path: Path) -> list[str]:
    import slicer
    import slicer.util

    problems = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # ``from slicer import X``: X must exist in slicer-core (Markups: not at import)
        if isinstance(node, ast.ImportFrom) and node.module == "slicer":
            for alias in node.names:
                if alias.name.startswith("vtkMRMLMarkups"):
                    problems.append(f"{path.name}:{node.lineno}: {alias.name} imported from slicer (absent in 5.8)")
                elif alias.name != "*" and not hasattr(slicer, alias.name) and alias.name not in SLICER_APP_ONLY:
                    problems.append(f"{path.name}:{node.lineno}: slicer.{alias.name} does not exist")
    for root, parts, line, in_function, in_try in _uses(tree):
        where = f"{path.name}:{line}: {root}.{'.'.join(parts)}"
        if root == "slicer" and parts:
            head = parts[0]
            if head == "util" and len(parts) > 1 and not hasattr(slicer.util, parts[1]) and not in_try:
                problems.append(where + " is not in slicer.util")
            elif head.startswith("vtk") and not hasattr(slicer, head) and not in_try:
                problems.append(where + " is not a slicer-core class")
            elif head not in SLICER_APP_ONLY and head != "util" and not head.startswith("vtk") \
                    and not hasattr(slicer, head) and not in_try:
                problems.append(where + " is not in slicer-core nor a known application attribute")
            if head == "app" and not in_function:
                problems.append(where + " at import time")
        if root in ("qt", "ctk") and parts and parts[0] not in QT_ALLOWED:
            problems.append(where + " (qt/ctk used directly)")
        if path.name != "slicer_compat.py" and set(parts) & DIFFERING_API:
            problems.append(where + " differs between Slicer 5.8 and 5.13: call it through slicer_compat")
    return problems


def test_slicer_names_exist_in_slicer_core_or_are_guarded():
    """Every slicer.*, slicer.util.*, slicer.vtkMRML* name the modules and the Slicer-side library use
    exists in slicer-core (or is an application attribute, or sits in a try block); Markups classes are
    never imported at import time; the calls that differ between 5.8 and 5.13 go through slicer_compat."""
    problems = [p for path in SLICER_FILES for p in _slicer_name_problems(path)]
    assert problems == []
    uses = [u for path in SLICER_FILES for u in _uses(ast.parse(path.read_text())) if u[0] == "slicer"]
    assert len(uses) > 30, "the check would be vacuous"


def test_the_name_check_catches_5_8_breakers(tmp_path):
    bad = tmp_path / "Bad.py"
    bad.write_text(textwrap.dedent("""
        import slicer
        from slicer import vtkMRMLMarkupsCurveNode, vtkMRMLNoSuchNode
        slicer.app.connect("startupCompleted()", print)
        def apply(segment):
            segment.SetTerminology("x")
            slicer.util.noSuchHelper()
            try:
                slicer.util.anotherMissingHelper()
            except AttributeError:
                pass
    """))
    problems = "\n".join(_slicer_name_problems(bad))
    for needle in ("vtkMRMLMarkupsCurveNode imported", "vtkMRMLNoSuchNode does not exist", "at import time",
                   "SetTerminology differs", "noSuchHelper is not in slicer.util"):
        assert needle in problems, needle
    assert "anotherMissingHelper" not in problems


# ---------------------------------------------------------------- first run, scene close, isolation


class MissingTorchLogic(slicer_logic.missing_core("octadepth", ImportError("No module named 'torch'"))):
    pass


def test_model_box_without_torch_comes_from_the_registry():
    choices = registry.model_choices("octadepth")
    assert "lite" in choices and slicer_results.CHECKPOINT_ITEM not in choices
    assert MissingTorchLogic().shipped_models() == choices
    assert registry.model_choices("coips") == ["lite"], "the FAZ U-Net is not a model-box choice"


@pytest.mark.parametrize("name", MODULES)
def test_registry_choices_are_what_the_core_offers(name):
    """Before torch is installed the model box lists what the core Logic will list afterwards, in the same
    order, the parameter node's default first (the stand-in listed VesselSDF's ablations before 'lite')."""
    method = MODULES[name][0]
    core = getattr(__import__(f"VesselReconLib.{method}.logic", fromlist=["*"]), f"{name}Logic")
    offered = core.__new__(core).shipped_models()
    stand_in = slicer_logic.missing_core(method, ImportError("No module named 'torch'"))().shipped_models()
    assert offered and stand_in == offered
    default = parameter_fields(name)["model"]["default"]
    assert offered[0] == default, f"the parameter node's default model {default!r} is not listed first"


def test_first_run_never_turns_the_model_into_load_checkpoint():
    """The first Apply used to fail with 'Choose a checkpoint file': without torch the combo held only
    'Load checkpoint…', which _checkCanApply copied into the parameter node."""
    widget, combo = _demo_widget()
    p = widget._parameterNode
    widget.logic = MissingTorchLogic()
    slicer_widget.fill_model_combo(combo, [])  # the worst case: nothing listed at all
    widget._checkCanApply()
    assert p.model == "lite"
    slicer_widget.fill_model_combo(combo, widget.logic.shipped_models())
    widget._checkCanApply()
    assert p.model == "lite" and combo.currentText == "lite"
    p.model = ""
    widget._checkCanApply()
    assert p.model == "lite", "an empty model becomes the first shipped one, never 'Load checkpoint…'"


def test_dependencies_are_asked_for_on_apply_not_on_enter(monkeypatch):
    from VesselReconLib import slicerdeps as deps

    calls = []
    monkeypatch.setattr(deps, "ensure_dependencies", lambda parent=None, ask=True: calls.append(parent) or True)
    widget, combo = _demo_widget(real_ensure=True)
    widget.logic = MissingTorchLogic()
    widget.initializeParameterNode = lambda: None
    widget.enter()
    assert calls == [], "opening the module must not install anything"
    monkeypatch.setattr(slicer_logic, "fresh_logic", lambda logic: DemoLogic())
    widget._parameterNode.model = "lite"
    assert widget.ensureDependencies()
    assert len(calls) == 1 and isinstance(widget.logic, DemoLogic)
    assert combo.items == ["lite", slicer_results.CHECKPOINT_ITEM] and widget._parameterNode.model == "lite"


def _demo_widget(real_ensure: bool = False):
    class DemoWidget(slicer_widget.ModuleWidgetMixin):
        PROCESS_ARGS = {"inputVolume": "input_volume", "outputModel": "output_model", "outputTable": "output_table"}
        EVALUATE_ARGS = {"outputModel": "prediction", "referenceModel": "reference", "evaluationTable": "table"}
        REQUIRED_INPUTS = ("inputVolume",)
        moduleName = "Demo"
        parent = None

        def setParameterNode(self, node):
            self._parameterNode = node

        if not real_ensure:
            def ensureDependencies(self):
                return True

    widget, combo = DemoWidget(), FakeCombo()
    widget.ui = types.SimpleNamespace(**vars(fake_ui()), modelComboBox=combo, checkpointPathLineEdit=FakeWidget(),
                                      resultsTableView=FakeTableView(), evaluationTableView=FakeTableView())
    widget.logic, widget._parameterNode = DemoLogic(), DemoParameters()
    widget.runner = slicer_widget.TaskRunner(widget.ui, on_idle=widget._checkCanApply, error_display=pytest.fail)
    slicer_widget.fill_model_combo(combo, widget.logic.shipped_models())
    return widget, combo


def test_closing_the_scene_cancels_a_running_task():
    """Scene close during Apply: the task is cancelled and nothing is written to the closed scene's nodes."""
    widget, _ = _demo_widget()
    p = widget._parameterNode
    p.inputVolume = FakeNode("vtkMRMLScalarVolumeNode")
    closed = []

    def pump():  # the user closes the scene while the worker runs
        if not closed:
            closed.append(True)
            widget.onSceneStartClose(None, None)

    widget.runner.pump_events = pump

    class SlowLogic(DemoLogic):
        def process(self, input_volume, model="lite", device="auto", progress=None, cancel=None, background=None,
                    **kwargs):
            def compute():
                while not cancel():
                    threading.Event().wait(0.01)
                return "late result"

            return {"output_model": FakeNode("vtkMRMLModelNode"), "computed": background(compute)}

    widget.logic = SlowLogic()
    widget.onApplyButton()
    assert closed and widget._parameterNode is None, "the scene close detached the parameter node"
    assert p.outputModel is None, "no write-back after the scene closed"
    assert "cancelled" in widget.ui.statusLabel.text and not widget.runner.busy


def _forward_with_hooks(hook):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    for layer in net:
        layer.register_forward_hook(hook)
    with torch.no_grad():
        return net(torch.rand(1, 1, 32, 32))


def test_in_process_worker_survives_out_of_memory_and_cancel_mid_forward():
    """The GUI path runs inference in-process on a worker thread. A CUDA out-of-memory error raised in the
    middle of a forward pass, and a Cancel pressed between two layers of one, leave the widget usable."""
    pytest.importorskip("torch")
    ui, shown = fake_ui(), []
    cancel_pressed, delivered = threading.Event(), threading.Event()

    def pump():   # the GUI thread: a pressed Cancel reaches the runner at the next pump
        if cancel_pressed.is_set():
            runner.cancel()
            delivered.set()

    runner = slicer_widget.TaskRunner(ui, pump, error_display=shown.append)
    workers = []

    def oom_hook(module, inputs, output):
        workers.append(threading.current_thread())
        if len(workers) == 2:  # the second layer of the forward pass runs out of memory
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 7.79 GiB total capacity)")

    assert runner.run_compute(lambda progress, cancel: _forward_with_hooks(oom_hook), title="Processing") is None
    assert shown and shown[-1].startswith("Processing failed: CUDA out of memory")
    assert slicer_widget.OOM_HELP in shown[-1] and "Traceback" not in shown[-1]
    assert workers[0] is not threading.main_thread() and not workers[0].is_alive()
    assert ui.applyButton.enabled and not ui.cancelButton.enabled and not runner.busy

    layers = []

    def compute(progress, cancel):
        report = Reporter(progress, cancel)

        def cancel_hook(module, inputs, output):  # what the sliding-window loops do between windows
            layers.append(type(module).__name__)
            cancel_pressed.set()  # the user presses Cancel while the forward pass runs
            assert delivered.wait(30)  # the GUI thread pumps and delivers the click (no fixed sleep)
            report(len(layers) / 3, "forward")

        return _forward_with_hooks(cancel_hook)

    assert runner.run_compute(compute, title="Processing") is None
    assert ui.statusLabel.text == "Processing cancelled." and layers == ["Conv2d"], layers   # stopped after layer 1
    assert not runner.busy and ui.applyButton.enabled and len(shown) == 1
    cancel_pressed.clear()
    delivered.clear()
    output = runner.run_compute(lambda progress, cancel: _forward_with_hooks(lambda *a: None), title="Processing")
    assert tuple(output.shape) == (1, 1, 32, 32), "the worker runs again after an OOM and a cancel"
    assert ui.statusLabel.text == "Processing finished."


# ---------------------------------------------------------------- Sample Data, self-test, folder batch


def _volume(scene, name="input", value=1.0, shape=(2, 8, 8)):
    import numpy as np

    from VesselReconLib import mrml

    return mrml.array_to_volume(np.full(shape, value, np.float32), np.diag([0.5, 0.5, 2.0, 1.0]), name, scene=scene)


def test_scripted_sample_download_goes_through_the_vesselrecon_url_scheme(tmp_path):
    """SampleData.downloadSample() fetches the source URI into its cache and loads it (it never calls the
    custom downloader): the vesselrecon:// scheme generates the sample as a scene bundle on the fly."""
    import urllib.error
    import urllib.request

    from VesselReconLib import mrml, runtime

    class DemoCore:
        def __init__(self, scene=None):
            self.scene = scene

        def load_sample(self, progress=None):
            progress(0.5, "rendering the phantom")
            return {"inputVolume": _volume(self.scene, "DemoSample input")}

    messages = []
    slicer_samples.GENERATORS["Demo"] = lambda path: slicer_samples.write_sample_bundle(
        DemoCore, path, progress=lambda f, m="": messages.append(m))
    try:
        slicer_samples.install_url_handler()
        slicer_samples.install_url_handler()  # idempotent
        target = tmp_path / "DemoSample.mrb"
        urllib.request.urlretrieve(slicer_samples.sample_uri("Demo"), target)
        assert messages == ["rendering the phantom"]
        scene = mrml.load_scene(target, runtime.new_scene())
        assert scene.GetFirstNodeByName("DemoSample input") is not None
        with pytest.raises(urllib.error.URLError, match="No VesselRecon sample"):
            urllib.request.urlretrieve("vesselrecon://Unknown/UnknownSample.mrb", tmp_path / "x.mrb")
        urllib.request.urlopen("file://" + str(target)).close()  # other schemes still work

        def needs_torch(path):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")

        slicer_samples.GENERATORS["Demo"] = needs_torch
        with pytest.raises(urllib.error.URLError, match="Demo sample needs the Python package 'torch'"):
            urllib.request.urlretrieve(slicer_samples.sample_uri("Demo"), tmp_path / "y.mrb")
    finally:
        slicer_samples.GENERATORS.pop("Demo", None)
    from VesselReconLib import __version__

    assert slicer_samples.sample_uri("OCTADepth") == f"vesselrecon://OCTADepth/VesselRecon-{__version__}-OCTADepthSample.mrb"


def test_sample_data_registration_works_for_scripts(monkeypatch):
    registered = []
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kwargs: registered.append(kwargs))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    slicer_samples.register_sample_data("Demo", object, "icon.png", {"inputVolume": "inputVolume"},
                                        inputs=("inputVolume",))
    try:
        (source,) = registered
        assert source["uris"] == slicer_samples.sample_uri("Demo") and source["uris"].endswith(source["fileNames"])
        assert source["fileNames"].endswith("-DemoSample.mrb")
        assert source["loadFileType"] == "SceneFile" and source["loadFiles"] is True
        assert source["sampleName"] == "DemoSample" and source["category"] == slicer_samples.CATEGORY
        assert repr(source["customDownloader"]) == "VesselReconSampleLoader(Demo)"
        assert "Demo" in slicer_samples.GENERATORS
    finally:
        slicer_samples.GENERATORS.pop("Demo", None)


class SelfTestCase:
    """What ScriptedLoadableModuleTest offers self_test: unittest assertions and delayDisplay."""

    def __init__(self):
        import unittest

        self.tc, self.shown = unittest.TestCase(), []

    def __getattr__(self, name):
        return getattr(self.tc, name)

    def delayDisplay(self, message):
        self.shown.append(message)


def _selftest_logic(dice: float, output_shape=(2, 8, 8)):
    from VesselReconLib import mrml, runtime

    scene = runtime.new_scene()

    class Params:
        inputVolume: object
        outputVolume: object
        evaluationTable: object
        referenceVolume: object
        model: str
        checkpointPath: Path
        device: str

        def __init__(self):
            self.inputVolume = self.outputVolume = self.evaluationTable = self.referenceVolume = None
            self.model, self.checkpointPath, self.device = "lite", Path(""), "auto"

    class Logic:
        params = Params()

        def getParameterNode(self):
            return self.params

        def load_sample(self):
            return {"inputVolume": _volume(scene), "referenceVolume": _volume(scene, "reference")}

        def process(self, inputVolume, model="lite", device="auto"):
            if inputVolume is None:
                raise InputError("Select an input volume.")
            assert device == "cpu"
            return {"outputVolume": _volume(scene, "output", 2.0, output_shape)}

        def evaluate(self, prediction, reference, table=None):
            return mrml.rows_to_table([{"Metric": "Dice", "Value": dice}], "evaluation", scene=scene)

    return Logic()


SELFTEST_MAPS = ({"inputVolume": "inputVolume", "outputVolume": "outputVolume"},
                 {"outputVolume": "prediction", "referenceVolume": "reference", "evaluationTable": "table"})


def test_self_test_asserts_real_behaviour(monkeypatch):
    monkeypatch.setattr(slicer_selftest, "torch_missing_reason", lambda: None)
    case = SelfTestCase()
    slicer_selftest.self_test(case, _selftest_logic(0.9), *SELFTEST_MAPS, ("inputVolume",),
                              metric=("dice", 0.8), same_grid_outputs=("outputVolume",))
    assert case.shown[-1] == "Test passed"
    with pytest.raises(AssertionError, match="below the floor"):
        slicer_selftest.self_test(SelfTestCase(), _selftest_logic(0.3), *SELFTEST_MAPS, ("inputVolume",),
                                  metric=("dice", 0.8))
    with pytest.raises(AssertionError, match="not on the input's grid"):
        slicer_selftest.self_test(SelfTestCase(), _selftest_logic(0.9, (2, 8, 9)), *SELFTEST_MAPS, ("inputVolume",),
                                  metric=("dice", 0.8), same_grid_outputs=("outputVolume",))


def test_metric_value_reads_every_module_table_layout():
    rows = {"OCTADepth/COIPS/Angio3D": [{"metric": "dice", "value": 0.9}],
            "VesselSDF": [{"Metric": "Dice", "Value": 0.9, "Unit": ""}],
            "VCNet": [{"Measurement": "dice", "Value": 0.9, "Unit": ""}],
            "columns": [{"Dice": 0.9, "IoU": 0.8}]}
    for layout, table in rows.items():
        assert slicer_selftest.metric_value(table, "dice") == 0.9, layout
    assert slicer_selftest.metric_value([{"metric": "iou", "value": 1}], "dice") is None


def test_self_test_skips_cleanly_without_torch(monkeypatch):
    monkeypatch.setattr(slicer_selftest, "torch_missing_reason", lambda: "torch, monai not installed")
    case = SelfTestCase()

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the skipped self-test used the Logic ({name})")

    slicer_selftest.self_test(case, Untouchable(), *SELFTEST_MAPS, ("inputVolume",), metric=("dice", 0.8))
    assert case.shown == ["Self-test skipped: torch, monai not installed"]
    case = SelfTestCase()
    monkeypatch.setattr(slicer_selftest, "torch_missing_reason", lambda: None)
    slicer_selftest.self_test(case, MissingTorchLogic(), *SELFTEST_MAPS, ("inputVolume",))
    assert case.shown[0].startswith("Self-test skipped: The octadepth processing code could not be loaded")


@pytest.mark.parametrize("name", MODULES)
def test_module_self_tests_declare_a_metric_floor(name):
    checks = module_constant(name, "SELF_TEST")
    metric, floor = checks["metric"]
    assert isinstance(metric, str) and 0 < floor < 1
    fields = parameter_fields(name)
    for field in checks.get("same_grid_outputs", ()):
        assert fields[field]["nodes"] and all("Volume" in n for n in fields[field]["nodes"]), field
    assert "**SELF_TEST)" in module_file(name).read_text()


class BatchCore:
    """A core Logic without process_batch: the folder batch is mixed in by bind_core."""

    method = "vcnet"

    def __init__(self, scene=None):
        self.scene = scene

    def process(self, inputVolume, threshold=0.5, model="lite", device="auto", progress=None, cancel=None,
                background=None):
        from VesselReconLib import mrml

        array, ijk_to_ras = mrml.volume_to_array(inputVolume)
        mrml.array_to_volume((array > threshold).astype("uint8"), ijk_to_ras, "segmentation", scene=self.scene)
        worker = background(lambda: threading.current_thread()) if background else None
        return {"metrics": {"mean": float(array.mean()), "threshold": threshold}, "worker": worker}


def _volume_folder(folder: Path) -> Path:
    import numpy as np
    import SimpleITK as sitk

    folder.mkdir()
    for index in range(2):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 6, 6), index + 1, np.float32)), str(folder / f"case{index}.nii.gz"))
    (folder / "broken.nrrd").write_text("not a volume")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_folder_batch_processes_every_input_and_reports_failures(tmp_path):
    import csv

    class Base:
        def __init__(self):
            pass

    combined = slicer_logic._combine(Base, BatchCore)
    assert hasattr(combined, "process_batch") and combined.core_class is BatchCore
    inputs, out = _volume_folder(tmp_path / "in"), tmp_path / "out"
    seen = []
    result = combined.process_batch(combined.__new__(combined), inputFolder=inputs, outputFolder=out,
                                    threshold=1.5, model="lite", device="cpu", outputTable=FakeNode("vtkMRMLTableNode"),
                                    progress=lambda f, m="": seen.append(f), background=lambda fn: fn())
    rows = {Path(r["input"]).name: r for r in result.rows}
    assert set(rows) == {"broken.nrrd", "case0.nii.gz", "case1.nii.gz"} and result.failed == 1
    assert rows["broken.nrrd"]["status"] == "failed" and "broken.nrrd" in rows["broken.nrrd"]["error"]
    assert rows["case1.nii.gz"]["status"] == "ok" and rows["case1.nii.gz"]["mean"] == 2.0
    assert rows["case0.nii.gz"]["threshold"] == 1.5, "the widget's settings reach every run"
    assert (out / "case0.mrb").is_file() and (out / "case1.mrb").is_file()
    with open(result.csvPath) as handle:
        written = list(csv.DictReader(handle))
    assert [r["status"] for r in written] == [rows[Path(r["input"]).name]["status"] for r in written]
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    table_rows = slicer_results._rows(result, slicer_results._items(result))
    assert len(table_rows) == 3, "the widget shows one row per input"


def test_a_folder_batch_whose_every_input_fails_writes_nothing(tmp_path):
    """Every input unreadable: the output folder and a CSV of failures were written as if the batch ran; now, as
    COIPS and OCTADepth's command line, nothing is written and the error names each input."""
    from VesselReconLib.errors import InputError

    inputs, out = tmp_path / "in", tmp_path / "out" / "batch"
    inputs.mkdir()
    for name in ("a.nrrd", "b.nii.gz"):
        (inputs / name).write_text("not a volume")

    class Base:
        pass

    combined = slicer_logic._combine(Base, BatchCore)
    with pytest.raises(InputError, match="All 2 inputs failed, so nothing was written: a.nrrd") as refused:
        combined.__new__(combined).process_batch(inputFolder=inputs, outputFolder=out)
    assert "b.nii.gz" in str(refused.value) and not (tmp_path / "out").exists()


def test_folder_batch_cancel_keeps_the_csv_of_what_finished(tmp_path):
    from VesselReconLib.progress import Cancelled

    inputs, out = _volume_folder(tmp_path / "in"), tmp_path / "out"
    done = []

    class Base:
        pass

    combined = slicer_logic._combine(Base, BatchCore)
    with pytest.raises(Cancelled):
        combined.__new__(combined).process_batch(inputFolder=inputs, outputFolder=out,
                                                 progress=lambda f, m="": done.append(m),
                                                 cancel=lambda: len(done) >= 2)  # Cancel pressed while the 2nd input runs
    lines = (out / "batch_results.csv").read_text().splitlines()
    assert len(lines) == 3 and "case1" not in "".join(lines), "the header and the two inputs that finished"


def test_folder_batch_refuses_missing_folders(tmp_path):
    from VesselReconLib import folder_batch

    with pytest.raises(InputError, match="does not exist"):
        folder_batch.list_inputs(tmp_path / "absent", "volume")
    with pytest.raises(InputError, match="output folder"):
        folder_batch.process_folder(BatchCore, "volume", tmp_path, "", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No inputs"):
        folder_batch.process_folder(BatchCore, "volume", tmp_path / "empty", tmp_path / "o", {})
    assert set(folder_batch.INPUT_KIND) == {"octadepth", "vcnet", "vesselsdf", "angio3d"}


@pytest.mark.parametrize("name", [m for m in MODULES if m != "COIPS"])
def test_3d_modules_have_the_folder_batch_section(name):
    assert "FOLDER_BATCH = True" in module_file(name).read_text()
    section = widgets(slicer_widget.BATCH_UI)
    assert {"batchInputPathLineEdit", "batchOutputPathLineEdit", "batchRunButton"} <= set(section)
    assert not set(section) & (set(widgets(ui_file(name))) - {"batchRunButton"}), "names clash with the module .ui"
    assert section["batchInputPathLineEdit"].get("class") == "ctkPathLineEdit"


# module -> (the smallest sample the API allows, the sample's node fields and their MRML classes)
SAMPLES = {
    "OCTADepth": ({"sizePx": 96}, {"inputVolume": "vtkMRMLScalarVolumeNode",
                                   "referenceDepthVolume": "vtkMRMLScalarVolumeNode",
                                   "referenceCenterlines": "vtkMRMLModelNode"}),
    "Angio3D": ({}, {"viewA": "vtkMRMLScalarVolumeNode", "viewB": "vtkMRMLScalarVolumeNode",
                     "pointsA": "vtkMRMLMarkupsFiducialNode", "pointsB": "vtkMRMLMarkupsFiducialNode",
                     "referenceMaskA": "vtkMRMLLabelMapVolumeNode", "referenceMaskB": "vtkMRMLLabelMapVolumeNode",
                     "referenceModel": "vtkMRMLModelNode"}),
    "COIPS": ({}, {"inputVolume": "vtkMRMLScalarVolumeNode", "referenceSegmentation": "vtkMRMLSegmentationNode"}),
    "VCNet": ({"crop": (16, 32, 32)}, {"inputVolume": "vtkMRMLScalarVolumeNode",
                                      "referenceSegmentation": "vtkMRMLSegmentationNode",
                                      "maskNode": "vtkMRMLLabelMapVolumeNode"}),
    "VesselSDF": ({"shape": (8, 64, 64)}, {"inputVolume": "vtkMRMLScalarVolumeNode",
                                           "roiMask": "vtkMRMLLabelMapVolumeNode",
                                           "referenceSegmentation": "vtkMRMLSegmentationNode",
                                           "referenceModel": "vtkMRMLModelNode"}),
}
TORCH_BLOCK = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "monai", "timm", "segmentation_models_pytorch"):
            raise ModuleNotFoundError("No module named " + repr(name), name=name)  # as a missing package does
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(SRC)!r})
"""


def _run_without_torch(body: str) -> dict:
    """Run ``body`` in a fresh interpreter where torch (and the packages built on it) cannot be imported;
    it prints one JSON line, returned here."""
    done = subprocess.run([sys.executable, "-c", TORCH_BLOCK + textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def samples_without_torch(tmp_path_factory) -> dict:
    """In one interpreter without torch, every module's ``Logic.load_sample`` (smallest size) into a real
    MRML scene (slicer-core), then its default sample as the ``.mrb`` that ``SampleData.downloadSample``
    gets (``slicer_samples.write_sample_bundle``), loaded back."""
    folder = tmp_path_factory.mktemp("samples")
    body = f"""
        import json
        from pathlib import Path
        from VesselReconLib import mrml, runtime, slicer_samples
        report = {{}}
        for name, (package, kwargs, fields) in {({n: (MODULES[n][0], *v) for n, v in SAMPLES.items()})!r}.items():
            scene = runtime.new_scene()
            logic_class = getattr(importlib.import_module(f"VesselReconLib.{{package}}.logic"), f"{{name}}Logic")
            try:
                sample = logic_class(scene).load_sample(**kwargs)
            except ModuleNotFoundError as exc:
                report[name] = {{"missing": exc.name}}
                continue
            nodes = {{field: getattr(sample, field) for field in fields}}
            report[name] = {{"classes": {{f: n.GetClassName() for f, n in nodes.items() if n is not None}},
                            "in_scene": all(scene.IsNodePresent(n) for n in nodes.values() if n is not None)}}
            path = slicer_samples.write_sample_bundle(logic_class, Path({str(folder)!r}) / f"{{name}}.mrb")
            loaded = mrml.load_scene(path, runtime.new_scene())
            report[name]["bundle_volumes"] = loaded.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems()
        report["torch_imported"] = "torch" in sys.modules
        print(json.dumps(report))
    """
    return _run_without_torch(body)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_samples_load_into_a_scene_without_torch(samples_without_torch, name):
    """The phantoms are numpy: a first-time user gets the sample before PyTorch is installed."""
    assert not samples_without_torch["torch_imported"], "loading a sample must never import torch"
    sample = samples_without_torch[name]
    assert "missing" not in sample, f"the {name} sample needs {sample.get('missing')}"
    assert sample["classes"] == SAMPLES[name][1], "every sample node exists, of its MRML class"
    assert sample["in_scene"]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_sample_bundles_generate_without_torch(samples_without_torch, name):
    """``SampleData.downloadSample`` path: the default-size sample as a loadable ``.mrb``, without torch."""
    assert samples_without_torch[name]["bundle_volumes"] >= 1
    assert not samples_without_torch["torch_imported"]


def test_load_sample_asks_for_packages_only_when_the_phantom_needs_them():
    widget, _ = _demo_widget()
    asked = []
    widget.ensureDependencies = lambda: asked.append(True) or True
    widget.onLoadSampleButton()
    assert asked == [] and widget._parameterNode.inputVolume is not None, "numpy phantoms need no install"

    class TorchSampleLogic(DemoLogic):
        def load_sample(self):
            if not asked:
                raise ModuleNotFoundError("No module named 'torch'", name="torch")
            return super().load_sample()

    widget._parameterNode.inputVolume = None
    widget.logic = TorchSampleLogic()
    widget.onLoadSampleButton()
    assert asked == [True] and widget._parameterNode.inputVolume is not None


def test_batch_and_samples_use_a_private_scene_inside_slicer(monkeypatch):
    """Inside Slicer the batch and the scripted samples never touch the user's scene: they get a new scene
    that knows every node class the application's scene knows (Markups, segmentations, tables...)."""
    import slicer

    from VesselReconLib import folder_batch, runtime

    app_scene = runtime.setup()
    user_node = _volume(app_scene, "the user's volume")
    monkeypatch.setattr(runtime, "in_slicer_app", lambda: True)
    monkeypatch.setattr(slicer, "mrmlScene", app_scene, raising=False)
    scene = folder_batch.private_scene()
    assert scene is not app_scene
    registered = lambda s: {s.GetNthRegisteredNodeClass(i).GetClassName()  # noqa: E731
                            for i in range(s.GetNumberOfRegisteredNodeClasses())}
    assert registered(app_scene) <= registered(scene)
    for cls in ("vtkMRMLMarkupsFiducialNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode"):
        assert scene.AddNewNodeByClass(cls) is not None, cls
    scene.Clear(1)
    assert app_scene.GetNodeByID(user_node.GetID()) is user_node

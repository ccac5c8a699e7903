"""The Slicer compatibility layer against fakes that behave like Slicer 5.8 and like 5.10+.

Slicer 5.8 differs from the slicer-core 5.13 the rest of the suite runs on in exactly the calls that
``VesselReconLib.slicer_compat`` wraps: segment terminology, Markups classes at import time, and
package installs (no ``pip_ensure``, a silent blocking ``pip_install``).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from pathlib import Path

import pytest

from VesselReconLib import mrml, slicer_compat, slicerdeps

ROOT = Path(__file__).resolve().parents[1]
TERMINOLOGY = mrml.VESSEL_TERMINOLOGY
TAG = "TerminologyEntry"


class Segment58:
    """A vtkSegment as in Slicer 5.8: terminology only through tags."""

    def __init__(self):
        self.tags = {}

    @staticmethod
    def GetTerminologyEntryTagName():
        return TAG

    def SetTag(self, key, value):
        self.tags[key] = value

    def GetTag(self, key):
        return self.tags.get(key, "")


class Segment510(Segment58):
    """A vtkSegment as in Slicer 5.10 and later."""

    def SetTerminology(self, value):
        self.terminology = value

    def GetTerminology(self):
        return getattr(self, "terminology", "")


def test_terminology_on_5_8_is_a_tag():
    segment = Segment58()
    assert not hasattr(segment, "SetTerminology")
    slicer_compat.set_segment_terminology(segment, TERMINOLOGY)
    assert segment.tags == {TAG: TERMINOLOGY}
    assert slicer_compat.segment_terminology(segment) == TERMINOLOGY


def test_terminology_on_5_10_uses_the_setter():
    segment = Segment510()
    slicer_compat.set_segment_terminology(segment, TERMINOLOGY)
    assert segment.terminology == TERMINOLOGY and segment.tags == {}
    assert slicer_compat.segment_terminology(segment) == TERMINOLOGY


def test_real_segment_terminology_round_trip():
    import slicer

    segment = slicer.vtkSegment()
    slicer_compat.set_segment_terminology(segment, TERMINOLOGY)
    assert slicer_compat.segment_terminology(segment) == TERMINOLOGY
    # What 5.8 reads: the tag that both versions store the terminology under.
    assert slicer_compat.tag_value(segment, slicer.vtkSegment.GetTerminologyEntryTagName()) == TERMINOLOGY


def _hidden(self):
    raise AttributeError("vtkSegment has no SetTerminology before Slicer 5.10")


def test_mrml_writes_terminology_on_a_5_8_like_segment(monkeypatch):
    """The Logic's segmentation writer goes through the layer, so 5.8's vtkSegment works."""
    import numpy as np
    import slicer

    from VesselReconLib import runtime

    class Segment58Real(slicer.vtkSegment):  # a real vtkSegment without SetTerminology, as in 5.8
        SetTerminology = property(_hidden)
        GetTerminology = property(_hidden)

    assert not hasattr(Segment58Real(), "SetTerminology")
    fake_slicer = types.SimpleNamespace(vtkSegment=Segment58Real, vtkOrientedImageData=slicer.vtkOrientedImageData,
                                        vtkSegmentationConverter=slicer.vtkSegmentationConverter)
    monkeypatch.setattr(mrml, "_slicer", lambda: fake_slicer)
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = 1
    node = mrml.labelmap_to_segmentation(labels, np.eye(4), [mrml.SegmentSpec(1, "vessel")], "seg",
                                         scene=runtime.new_scene())
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert slicer_compat.segment_terminology(segment) == TERMINOLOGY


def test_markups_classes_are_looked_up_at_call_time(monkeypatch):
    """5.8: Markups classes are absent from ``slicer`` until the Markups module is loaded."""
    fake_slicer = types.SimpleNamespace(vtkMRMLScalarVolumeNode=object)
    wrapper = types.ModuleType("vtkSlicerMarkupsModuleMRMLPython")
    monkeypatch.setitem(sys.modules, "vtkSlicerMarkupsModuleMRMLPython", wrapper)
    with pytest.raises(ImportError, match="vtkMRMLMarkupsCurveNode is not available"):
        slicer_compat.mrml_class("vtkMRMLMarkupsCurveNode", fake_slicer)

    class Curve:
        pass

    wrapper.vtkMRMLMarkupsCurveNode = Curve  # the module's own wrapping is loaded: found there
    assert slicer_compat.mrml_class("vtkMRMLMarkupsCurveNode", fake_slicer) is Curve
    fake_slicer.vtkMRMLMarkupsCurveNode = "from slicer"  # once Markups has loaded: from slicer
    assert slicer_compat.mrml_class("vtkMRMLMarkupsCurveNode", fake_slicer) == "from slicer"
    assert slicer_compat.mrml_class("vtkMRMLScalarVolumeNode", fake_slicer) is object
    import slicer

    assert slicer_compat.mrml_class("vtkMRMLMarkupsFiducialNode") is slicer.vtkMRMLMarkupsFiducialNode


def test_minimum_slicer_version():
    app = lambda major, minor: types.SimpleNamespace(majorVersion=major, minorVersion=minor)  # noqa: E731
    assert slicer_compat.slicer_version(app(5, 8)) == (5, 8)
    assert slicer_compat.version_supported((5, 8)) and slicer_compat.version_supported((5, 13))
    assert slicer_compat.version_supported((6, 0)) and slicer_compat.version_supported(None)
    assert not slicer_compat.version_supported((5, 7)) and not slicer_compat.version_supported((4, 11))
    assert "5.8 or later" in slicer_compat.unsupported_version_message((5, 6))
    assert slicer_compat.slicer_version(types.SimpleNamespace()) is None


def test_torch_version_check():
    requirement = slicerdeps.TORCH_REQUIREMENTS["torch"]
    assert slicer_compat.version_problem("torch", requirement, "2.14.1") is None
    assert slicer_compat.version_problem("torch", requirement, "2.8.0+cu126") is None
    assert "2.5.1+cu121 is installed" in slicer_compat.version_problem("torch", requirement, "2.5.1+cu121")
    assert slicer_compat.version_problem("torch", requirement, "1.13.1+cpu").startswith("PyTorch 1.13.1+cpu")
    assert slicer_compat.version_problem("torch", requirement) is None  # the suite's torch, from its metadata
    assert slicer_compat.version_problem("torchvision", ">=0.23", "0.15.2") == (
        "torchvision 0.15.2 is installed, but VesselRecon needs torchvision>=0.23.")
    assert slicer_compat.version_problem("surely-not-a-distribution-xyz", ">=1") == (
        "surely-not-a-distribution-xyz is not installed.")
    assert not slicer_compat.version_satisfies("not-a-version", requirement)
    assert slicer_compat.installed_version("surely-not-a-distribution-xyz") is None
    assert slicer_compat.installed_version("torch")  # the suite's own torch, read without importing


def _requirements_of(distribution: str, name: str) -> list[str]:
    """The specifiers with which the installed ``distribution`` requires ``name`` (extras left out)."""
    from packaging.requirements import Requirement

    found = [Requirement(r) for r in importlib.metadata.requires(distribution) or []]
    return [str(r.specifier) for r in found if r.name.lower() == name and (r.marker is None
                                                                          or "extra" not in str(r.marker))]


def test_slicer_torch_range_holds_the_pinned_versions_and_what_the_stack_needs():
    """The Slicer installer accepts torch/torchvision from a minimum on. That minimum must be one the
    pinned, tested versions of pyproject.toml satisfy, and one every package the installer adds (MONAI
    1.6 needs torch>=2.8) declares it supports; else the installer would accept a torch they refuse."""
    import tomllib

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    pins = {slicer_compat.requirement_name(d): d.split("==")[1]
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if "==" in d}
    assert set(slicerdeps.TORCH_REQUIREMENTS) <= set(pins), "pyproject.toml pins torch and torchvision"
    checked = 0
    for name, requirement in slicerdeps.TORCH_REQUIREMENTS.items():
        assert slicer_compat.version_satisfies(pins[name], requirement), (name, pins[name], requirement)
        assert slicer_compat.installed_version(name).split("+")[0] == pins[name], f"the suite runs the pinned {name}"
        minimum = Version(requirement.removeprefix(">="))
        assert str(SpecifierSet(requirement)) == f">={minimum}", "a lower bound only: other extensions share torch"
        for distribution in (slicer_compat.requirement_name(r) for r in slicerdeps.REQUIREMENTS.values()):
            for specifier in _requirements_of(distribution, name):
                checked += 1
                assert SpecifierSet(specifier).contains(minimum), (
                    f"{distribution} requires {name}{specifier}; raise TORCH_REQUIREMENTS[{name!r}]")
    assert checked >= 4, "monai, timm and segmentation-models-pytorch declare torch/torchvision"


def test_pip_ensure_gets_skip_packages_and_progress():
    calls = []

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        calls.append(([str(r) for r in requirements], skip_packages, prompt_install, requester, show_progress,
                      skip_in_testing))

    slicer_compat.install_packages(["monai>=1.3", "pydicom"], ["numpy", "vtk"], ask=True, pip_ensure=pip_ensure)
    assert calls == [(["monai>=1.3", "pydicom"], ["numpy", "vtk"], True, "VesselRecon", True, False)]


def test_pip_install_fallback_on_5_8_asks_and_protects_slicer_packages():
    runs, asked = [], []
    no_deps = {"monai": [], "timm": ["huggingface-hub", "safetensors"]}
    kwargs = dict(no_deps=no_deps, confirm=lambda message: asked.append(message) or True, run_pip=runs.append)
    slicer_compat.install_packages(["monai>=1.3", "timm", "pydicom"], ["numpy"], ask=True, pip_ensure=None, **kwargs)
    assert len(asked) == 1 and "monai>=1.3" in asked[0]
    assert runs == [["install", "pydicom", "huggingface-hub", "safetensors"], ["install", "--no-deps", "monai>=1.3", "timm"]]
    runs.clear()
    with pytest.raises(slicer_compat.InstallDeclined):
        slicer_compat.install_packages(["pydicom"], ["numpy"], ask=True, pip_ensure=None, no_deps=no_deps,
                                       confirm=lambda message: False, run_pip=runs.append)
    assert runs == []


def test_pip_progress_streams_lines_and_reports_failure():
    """The 5.8/5.10 install path: a child process whose output is shown line by line while the GUI pumps."""
    lines, pumps = [], []
    script = "import sys, time\nfor i in range(3):\n    print('Collecting package', i, flush=True); time.sleep(0.05)\n"
    slicer_compat.run_pip_with_progress([], on_line=lines.append, pump=lambda: pumps.append(1),
                                        command=[sys.executable, "-c", script])
    assert lines == ["Collecting package 0", "Collecting package 1", "Collecting package 2"]
    assert pumps, "the GUI was never pumped while pip ran"
    failing = "import sys\nprint('ERROR: No matching distribution found for nothing')\nsys.exit(1)\n"
    with pytest.raises(subprocess.CalledProcessError) as info:
        slicer_compat.run_pip_with_progress([], on_line=lines.append, command=[sys.executable, "-c", failing])
    assert "No matching distribution" in info.value.output


def test_pip_progress_cancel_kills_the_child():
    import os

    script = "import os, time\nprint('Downloading torch', os.getpid(), flush=True)\ntime.sleep(60)\n"
    seen = []
    with pytest.raises(slicer_compat.InstallDeclined):
        slicer_compat.run_pip_with_progress([], on_line=seen.append, cancel=lambda: bool(seen),
                                            command=[sys.executable, "-c", script])
    assert len(seen) == 1 and seen[0].startswith("Downloading torch ")
    with pytest.raises(ProcessLookupError):   # killed and reaped, not left sleeping
        os.kill(int(seen[0].split()[-1]), 0)


def test_no_worker_processes_inside_slicer(monkeypatch):
    from VesselReconLib import runtime

    assert slicer_compat.worker_processes_allowed()
    monkeypatch.setattr(runtime, "in_slicer_app", lambda: True)
    assert not slicer_compat.worker_processes_allowed()


def test_requirement_names():
    assert slicer_compat.requirement_name("monai>=1.3") == "monai"
    assert slicer_compat.requirement_name("segmentation-models-pytorch") == "segmentation-models-pytorch"
    assert slicer_compat.requirement_name("PyYAML[extra]; python_version>'3'") == "pyyaml"


def test_coips_batch_starts_no_worker_processes_inside_slicer(monkeypatch):
    """COIPS batch decodes with DataLoader workers and finishes images in a process pool; inside Slicer
    (fork copies the GUI; on macOS/Windows each child is another PythonSlicer) it uses neither."""
    pytest.importorskip("torch")
    from VesselReconLib import runtime
    from VesselReconLib.coips import batch

    assert batch.decode_workers(2) == 2
    monkeypatch.setattr(runtime, "in_slicer_app", lambda: True)
    assert batch.decode_workers(2) == 0
    assert batch._post_pool(2) is None

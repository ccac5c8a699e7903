"""Headless MRML runtime: a real Slicer scene and module logics on plain Python (``slicer-core``).

Inside the Slicer application, :func:`setup` returns Slicer's own scene and does nothing else.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

_RUNTIME: "HeadlessRuntime | None" = None


def in_slicer_app() -> bool:
    """True when running inside the 3D Slicer application (``slicer.app`` exists)."""
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "app") and getattr(slicer, "app") is not None and not isinstance(
        getattr(slicer, "app"), HeadlessApp
    )


@dataclass
class HeadlessRuntime:
    """The scene, application logic and module logics of a headless session."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)
    cache_dir: str = ""

    def logic(self, name: str) -> Any:
        """Return a module logic by module name (``Volumes``, ``Segmentations``, ``Models``, ...)."""
        return self.logics[name]


class HeadlessApp:
    """A tiny stand-in for ``slicer.app`` exposing only what scripted logics call headlessly."""

    def __init__(self, runtime: HeadlessRuntime):
        self._runtime = runtime
        self.temporaryPath = runtime.cache_dir
        self.mrmlScene = runtime.scene

    def applicationLogic(self):
        return self._runtime.app_logic

    def moduleLogic(self, name: str):
        return self._runtime.logics.get(name)

    def processEvents(self) -> None:
        """Nothing to pump without a GUI."""

    def testingEnabled(self) -> bool:
        return True


def _module_logic(cls, scene, app_logic):
    logic = cls()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    return logic


def _make_runtime() -> HeadlessRuntime:
    import slicer
    from vtkmodules.vtkCommonCore import vtkCollection

    scene = slicer.vtkMRMLScene()
    cache_dir = tempfile.mkdtemp(prefix="vesselrecon-mrml-")
    scene.SetRootDirectory(cache_dir)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())
    _setup_data_io(scene, app_logic, cache_dir)
    runtime = HeadlessRuntime(scene=scene, app_logic=app_logic, cache_dir=cache_dir)
    runtime.logics = _make_module_logics(slicer, scene, app_logic)
    _register_segmentation_converters(slicer)
    return runtime


def _setup_data_io(scene, app_logic, cache_dir: str) -> None:
    import slicer

    cache_manager = slicer.vtkCacheManager()
    cache_manager.SetRemoteCacheDirectory(cache_dir)
    scene.SetCacheManager(cache_manager)
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache_manager)
    scene.SetDataIOManager(io_manager)
    io_logic = slicer.vtkDataIOManagerLogic()
    io_logic.SetMRMLApplicationLogic(app_logic)
    io_logic.SetAndObserveDataIOManager(io_manager)


def _make_module_logics(slicer, scene, app_logic) -> dict[str, Any]:
    classes = {
        "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
        "Volumes": slicer.vtkSlicerVolumesLogic,
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
        "Models": slicer.vtkSlicerModelsLogic,
        "Markups": slicer.vtkSlicerMarkupsLogic,
        "Tables": slicer.vtkSlicerTablesLogic,
        "Sequences": slicer.vtkSlicerSequencesLogic,
    }
    logics = {"Colors": app_logic.GetColorLogic()}
    for name, cls in classes.items():
        logics[name] = _module_logic(cls, scene, app_logic)
        app_logic.SetModuleLogic(name, logics[name])
    return logics


def _register_segmentation_converters(slicer) -> None:
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    existing = {factory.GetConverterRules()[i].GetName() for i in range(len(factory.GetConverterRules()))} if hasattr(
        factory.GetConverterRules(), "__len__"
    ) else set()
    rules = [
        "vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "vtkClosedSurfaceToBinaryLabelmapConversionRule",
        "vtkClosedSurfaceToFractionalLabelmapConversionRule",
        "vtkFractionalLabelmapToClosedSurfaceConversionRule",
    ]
    for rule_name in rules:
        rule_cls = getattr(slicer, rule_name, None)
        if rule_cls is None or rule_cls().GetName() in existing:
            continue
        factory.RegisterConverterRule(rule_cls())


def setup() -> Any:
    """Return a ready MRML scene: Slicer's own inside Slicer, else a headless one (created once).

    Afterwards ``slicer.mrmlScene``, ``slicer.app.applicationLogic()`` and the ``slicer.util`` array
    helpers work on plain Python.
    """
    global _RUNTIME
    if in_slicer_app():
        import slicer

        return slicer.mrmlScene
    if _RUNTIME is None:
        _RUNTIME = _make_runtime()
        _install_slicer_globals(_RUNTIME)
    return _RUNTIME.scene


def runtime() -> HeadlessRuntime:
    """The headless runtime (set up on first use). Not available inside the Slicer application."""
    if in_slicer_app():
        raise RuntimeError("Inside the Slicer application: use slicer.mrmlScene and slicer.app instead.")
    setup()
    return _RUNTIME  # type: ignore[return-value]


def new_scene() -> Any:
    """Clear the headless scene (keeping default colour nodes) and return it; for tests and batch jobs."""
    scene = setup()
    scene.Clear(False)
    return scene


def private_scene() -> Any:
    """A headless scene apart from ``slicer.mrmlScene``, with the default colour nodes and data IO, for batches
    and sample bundles that must leave the script's own scene alone. Not available inside the Slicer application."""
    import slicer

    rt = runtime()
    scene = slicer.vtkMRMLScene()
    scene.SetRootDirectory(rt.cache_dir)
    rt.scene.CopyRegisteredNodesToScene(scene)   # the module logics' classes (a curve's radius measurement)
    scene.AddNode(slicer.vtkMRMLSelectionNode())   # the unit lookup of markups measurements needs it
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    colors.SetMRMLScene(None)   # the nodes stay: a colour logic still bound to the scene removes them when it goes
    _setup_data_io(scene, rt.app_logic, rt.cache_dir)
    return scene


def _install_slicer_globals(rt: HeadlessRuntime) -> None:
    import slicer
    import slicer.util  # noqa: F401  (array helpers)

    slicer.mrmlScene = rt.scene
    slicer.app = HeadlessApp(rt)
    os.environ.setdefault("VESSELRECON_HEADLESS", "1")

"""Widget, sample and self-test plumbing shared by the five Slicer modules.

Used only inside 3D Slicer, yet importable anywhere: nothing here imports ``qt``, ``ctk``,
``slicer.app`` or torch at module level. Widgets stay thin: they read the parameter node, call the
module Logic through :class:`TaskRunner` and show progress, cancellation, errors and result tables.

Conventions (the module files define the mappings):

- ``PROCESS_ARGS`` maps parameter-node field names to ``Logic.process`` keyword names. The widget
  adds ``model`` (a shipped preset name or a checkpoint path), ``device`` and the plumbing keywords
  ``progress(fraction, message)``, ``cancel() -> bool`` and ``background(fn) -> fn()``; the Logic
  calls ``background`` for its heavy, MRML-free part so the GUI stays responsive. Keywords the
  Logic does not accept are dropped (with a warning for non-plumbing ones).
- ``EVALUATE_ARGS`` does the same for ``Logic.evaluate`` (keywords ``prediction``, ``reference``,
  ``table``).
- A Logic result (``process``/``evaluate``/``load_sample``) may be a node, a list of nodes, a dict
  or an object with attributes; nodes under keys / attribute names that match a field or keyword
  name are written back into the parameter node (for ``load_sample`` plain values too), and a
  table (node, list of row dicts, or dict of scalars) is shown in the module's table view.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import queue
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import InputError
from .progress import CancelToken, Cancelled, run_in_worker

log = logging.getLogger(__name__)

CATEGORY = "Vessel Reconstruction"
CONTRIBUTORS = ["VesselRecon contributors"]
CHECKPOINT_ITEM = "Load checkpoint…"
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")  # same as VesselReconLib.device.DEVICE_CHOICES (no torch here)
PLUMBING = ("progress", "cancel", "background")
BUSY_BUTTONS = ("applyButton", "evaluateButton", "loadSampleButton", "batchRunButton")


# ---------------------------------------------------------------- messages


def show_error(message: str, parent=None) -> None:
    """Show ``message`` in Slicer's error dialog (only log it outside the application)."""
    from . import runtime

    if runtime.in_slicer_app():
        import slicer

        slicer.util.errorDisplay(message, parent=parent)
    else:
        log.error(message)


# ---------------------------------------------------------------- calling the Logic


def accepted_kwargs(fn: Callable, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def call_logic(fn: Callable, kwargs: Mapping[str, Any]):
    """Call ``fn`` with the keywords it accepts; warn about dropped method parameters."""
    accepted = accepted_kwargs(fn, kwargs)
    dropped = sorted(set(kwargs) - set(accepted) - set(PLUMBING))
    if dropped:
        log.warning("%s does not take %s; these settings are ignored.", getattr(fn, "__qualname__", fn),
                    ", ".join(dropped))
    return fn(**accepted)


def path_or_none(value) -> Path | None:
    """A parameter-node path, or ``None`` when it is empty (``Path("")`` reads back as ``.``)."""
    if value is None or str(value) in ("", "."):
        return None
    return Path(value)


def model_spec(param) -> str:
    """The ``model`` keyword: the chosen shipped preset, or the checkpoint file path."""
    if param.model != CHECKPOINT_ITEM:
        if not param.model:
            raise InputError("No model is selected: choose a shipped model or 'Load checkpoint…'.")
        return param.model
    path = path_or_none(param.checkpointPath)
    if path is None:
        raise InputError("Choose a checkpoint file (.safetensors or .pt), or pick a shipped model.")
    if not path.is_file():
        raise InputError(f"Checkpoint file {path} does not exist.")
    return str(path)


def logic_kwargs(param, mapping: Mapping[str, str], with_model: bool = True) -> dict[str, Any]:
    """Keyword arguments for a Logic call: mapped parameter-node fields, plus model and device."""
    kwargs = {keyword: _plain(getattr(param, field)) for field, keyword in mapping.items()}
    if with_model:
        kwargs["model"] = model_spec(param)
        kwargs["device"] = param.device
    return kwargs


def _plain(value):
    return path_or_none(value) if isinstance(value, Path) else value


# ---------------------------------------------------------------- results


def is_node(value) -> bool:
    """True for MRML nodes (anything with ``GetID`` and ``IsA``)."""
    return hasattr(value, "GetID") and hasattr(value, "IsA")


def _items(result) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return dict(result)
    if result is None or is_node(result) or isinstance(result, (list, tuple, str, int, float)):
        return {}
    return {k: v for k, v in vars(result).items() if not k.startswith("_")} if hasattr(result, "__dict__") else {}


def _field_for(key: str, mapping: Mapping[str, str], fields: set[str]) -> str | None:
    """The parameter-node field for a result key: a field name, a keyword, or ``output_<key>``."""
    if key in fields:
        return key
    for candidate in (key, f"output_{key}"):
        for field, keyword in mapping.items():
            if keyword == candidate:
                return field
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)
    return camel if camel in fields else None


def parameter_fields(param) -> set[str]:
    """Field names of a parameter-node wrapper (its annotations)."""
    names: set[str] = set()
    for cls in type(param).__mro__:
        names.update(getattr(cls, "__annotations__", {}))
    return names


def store_outputs(param, result, mapping: Mapping[str, str], values: bool = False) -> list[str]:
    """Write nodes found in ``result`` into matching parameter-node fields; return the field names.

    With ``values``, plain values (numbers, text, paths) are written too.
    """
    fields, stored = parameter_fields(param), []
    for key, value in _items(result).items():
        field = _field_for(key, mapping, fields)
        if field is None or not (is_node(value) or (values and isinstance(value, (int, float, str, Path)))):
            continue
        current = getattr(param, field, None)
        if isinstance(value, float) and type(current) is int and value.is_integer():
            value = int(value)  # e.g. a field of view of 3.0 mm for an integer choice
        try:
            setattr(param, field, value)
        except Exception as exc:  # wrong node class, a value out of range or not among the choices
            log.warning("Not setting %s from %r: %s", field, key, exc)
            continue
        stored.append(field)
    return stored


def apply_sample(param, sample, *mappings: Mapping[str, str], inputs: tuple[str, ...] = ()) -> list[str]:
    """Put a loaded sample into the parameter node; return the fields set.

    ``sample`` may be a dict / object keyed by field or keyword names (nodes and plain values, e.g.
    geometry), a single node (goes to the first of ``inputs``) or a list of nodes (to ``inputs`` in order).
    """
    if is_node(sample):
        sample = [sample]
    if isinstance(sample, (list, tuple)):
        sample = dict(zip(inputs, sample))
    merged = {k: v for m in mappings for k, v in m.items()}
    return store_outputs(param, sample, merged, values=True)


def result_table(result, name: str = "VesselRecon results", node=None):
    """A table node for ``result``: a table node in it, or rows / scalar metrics written into ``node``."""
    if result is None:
        return None
    if is_node(result):
        return result if result.IsA("vtkMRMLTableNode") else None
    items = _items(result)
    for value in items.values():
        if is_node(value) and value.IsA("vtkMRMLTableNode"):
            return value
    rows = _rows(result, items)
    if not rows:
        return None
    from . import mrml

    return mrml.rows_to_table(rows, name, node=node)


def _rows(result, items) -> list[dict]:
    """Rows from a list of dicts, an item ``rows``/``metrics``, or the scalar items themselves."""
    if isinstance(result, (list, tuple)):
        return [dict(r) for r in result if isinstance(r, Mapping)]
    for key in ("rows", "metrics"):
        value = items.get(key)
        if isinstance(value, (list, tuple)):
            return [dict(r) for r in value if isinstance(r, Mapping)]
        if isinstance(value, Mapping):
            items = dict(value)
            break
    return [{"metric": k, "value": v} for k, v in items.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]


def show_table(view, table_node) -> None:
    """Show ``table_node`` in a ``qMRMLTableView`` (hide the view when there is none)."""
    if view is None:
        return
    view.setMRMLTableNode(table_node)
    view.visible = table_node is not None


# ---------------------------------------------------------------- model and device choice


def fill_model_combo(combo, models: list[str], current: str | None = None) -> None:
    """Fill the model combo box with shipped presets and a 'Load checkpoint…' entry."""
    was_blocked = combo.blockSignals(True)
    try:
        combo.clear()
        for name in models:
            combo.addItem(name)
        combo.addItem(CHECKPOINT_ITEM)
    finally:
        combo.blockSignals(was_blocked)
    if current:
        select_model(combo, current)


def select_model(combo, name: str) -> bool:
    """Select ``name`` in the model combo box; False when it is not listed."""
    index = combo.findText(name)
    if index < 0:
        return False
    if combo.currentIndex != index:
        combo.currentIndex = index
    return True


# ---------------------------------------------------------------- running tasks


class TaskRunner:
    """Runs one Logic task at a time for a module widget.

    While a task runs, the Apply-like buttons are disabled and Cancel is enabled; progress reported
    from any thread is queued and shown (``ui.progressBar``, ``ui.statusLabel``) only on the GUI
    thread, when events are pumped. :class:`InputError` (and :class:`CheckpointError`) messages are
    shown as they are; other errors are logged with their traceback and reported briefly.
    """

    def __init__(self, ui, pump_events: Callable[[], None] | None = None,
                 error_display: Callable[[str], None] | None = None, on_idle: Callable[[], None] | None = None):
        self.ui = ui
        self.pump_events = pump_events or (lambda: None)
        self.error_display = error_display or show_error
        self.on_idle = on_idle
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._token: CancelToken | None = None

    @property
    def busy(self) -> bool:
        return self._token is not None

    def cancel(self, *args) -> None:
        """Ask the running task to stop (connected to the Cancel button)."""
        if self._token is not None:
            self._token.set()
            self._show(None, "Cancelling…")

    def progress(self, fraction: float, message: str = "") -> None:
        """Thread-safe progress callback; on the GUI thread it also updates the widgets."""
        self._queue.put((fraction, message))
        if threading.current_thread() is threading.main_thread():
            self.pump()

    def pump(self) -> None:
        """Show queued progress, then let the GUI process its events (Cancel clicks included)."""
        self._drain()
        self.pump_events()

    def background(self, fn: Callable[[], Any]):
        """Run ``fn()`` on a worker thread while the GUI keeps running; return its result."""
        return run_in_worker(fn, self.pump)

    def run(self, task: Callable[..., Any], title: str = "Processing"):
        """Run ``task(progress, cancel, background)`` on the GUI thread; its result, or None on failure."""
        if self.busy:
            return None
        self._token = CancelToken()
        self._set_busy(True)
        self._show(0.0, f"{title}…")
        try:
            result = task(self.progress, self._token, self.background)
        except Cancelled:
            self._show(0.0, f"{title} cancelled.")
            return None
        except InputError as exc:
            self._show(0.0, f"{title} stopped: {exc}")
            self.error_display(str(exc))
            return None
        except Exception as exc:  # report briefly, keep the traceback in the log
            log.exception("%s failed", title)
            self._show(0.0, f"{title} failed.")
            self.error_display(f"{title} failed: {exc}\n\nThe application log has the details.")
            return None
        finally:
            self._token = None
            self._set_busy(False)
        self._drain()
        self._show(1.0, f"{title} finished.")
        return result

    def run_compute(self, compute: Callable[[Callable, Callable], Any],
                    apply_on_main_thread: Callable[[Any], Any] | None = None, title: str = "Processing"):
        """Run ``compute(progress, cancel)`` on a worker thread, then ``apply_on_main_thread(result)``."""
        def task(progress, cancel, background):
            result = background(lambda: compute(progress, cancel))
            return apply_on_main_thread(result) if apply_on_main_thread is not None else result

        return self.run(task, title)

    def _drain(self) -> None:
        latest = None
        while True:
            try:
                latest = self._queue.get_nowait()
            except queue.Empty:
                break
        if latest is not None:
            self._show(*latest)

    def _show(self, fraction: float | None, message: str) -> None:
        if fraction is not None and getattr(self.ui, "progressBar", None) is not None:
            self.ui.progressBar.value = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
        if message and getattr(self.ui, "statusLabel", None) is not None:
            self.ui.statusLabel.text = message

    def _set_busy(self, busy: bool) -> None:
        for name in BUSY_BUTTONS:
            button = getattr(self.ui, name, None)
            if button is not None:
                button.enabled = not busy
        if getattr(self.ui, "cancelButton", None) is not None:
            self.ui.cancelButton.enabled = busy
        if not busy and self.on_idle is not None:
            self.on_idle()


def run_with_progress(ui, compute: Callable[[Callable, Callable], Any],
                      apply_on_main_thread: Callable[[Any], Any] | None = None,
                      pump_events: Callable[[], None] | None = None, title: str = "Processing"):
    """One-off :meth:`TaskRunner.run_compute`, with ``ui.cancelButton`` wired for its duration."""
    runner = TaskRunner(ui, pump_events)
    button = getattr(ui, "cancelButton", None)
    signal = getattr(button, "clicked", None)
    if signal is not None:
        signal.connect(runner.cancel)
    try:
        return runner.run_compute(compute, apply_on_main_thread, title)
    finally:
        if signal is not None:
            signal.disconnect(runner.cancel)


# ---------------------------------------------------------------- the Slicer Logic class


_BOUND: dict[type, type] = {}


def bind_core(cls: type, method: str, core_name: str) -> type:
    """The class to instantiate for the Slicer Logic ``cls``: ``cls`` combined with the core Logic.

    The core (``VesselReconLib.<method>.logic.<core_name>``) is imported on first use, so Slicer
    starts without loading torch. If it cannot be imported, a stand-in whose entry points raise
    :class:`InputError` (naming the missing piece) takes its place, and the import is retried next time.
    """
    if cls.__dict__.get("_core_bound"):
        return cls
    if cls in _BOUND:
        return _BOUND[cls]
    try:
        core = getattr(importlib.import_module(f"{__package__}.{method}.logic"), core_name)
    except (ImportError, AttributeError) as exc:
        log.warning("VesselRecon %s: core logic unavailable (%s)", method, exc)
        return _combine(cls, missing_core(method, exc))
    _BOUND[cls] = _combine(cls, core)
    return _BOUND[cls]


def _combine(cls: type, core: type) -> type:
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                 "_core_bound": True, "core_class": core}
    return type(cls.__name__, (cls, core), namespace)


def missing_core(method: str, error: BaseException) -> type:
    """A stand-in core Logic whose entry points explain why the real one is unavailable."""
    message = (f"The {method} processing code could not be loaded: {error}. Install VesselRecon's Python "
               "dependencies when the module asks (or restart Slicer after installing them), then try again.")

    class MissingCoreLogic:
        core_missing = message

        def shipped_models(self) -> list[str]:
            return []

        def _unavailable(self, *args, **kwargs):
            raise InputError(message)

        process = process_batch = evaluate = load_sample = _unavailable

    return MissingCoreLogic


def fresh_logic(logic):
    """A new Logic of the same module if ``logic`` has no core yet (after installing dependencies)."""
    if not hasattr(logic, "core_missing"):
        return logic
    return type(logic).__mro__[1]()


# ---------------------------------------------------------------- the module widget


class ModuleWidgetMixin:
    """Behaviour shared by the module widgets; list it before ``ScriptedLoadableModuleWidget``.

    The module's ``setup()`` loads its .ui into ``self.ui``, creates ``self.logic`` and calls
    :meth:`setupVesselRecon`. Class attributes configure it: ``PROCESS_ARGS``, ``EVALUATE_ARGS``
    (field -> keyword), ``REQUIRED_INPUTS`` (fields that must be set before Apply).
    """

    PROCESS_ARGS: Mapping[str, str] = {}
    EVALUATE_ARGS: Mapping[str, str] = {}
    REQUIRED_INPUTS: tuple[str, ...] = ()

    def setupVesselRecon(self, pump_events: Callable[[], None]) -> None:
        """Connect the common buttons and observers (call at the end of ``setup()``)."""
        import slicer

        self.runner = TaskRunner(self.ui, pump_events, on_idle=self._checkCanApply)
        self._dependenciesChecked = False
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.runner.cancel)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSampleButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = ""
        show_table(self.ui.resultsTableView, None)
        show_table(self.ui.evaluationTableView, None)
        fill_model_combo(self.ui.modelComboBox, self.logic.shipped_models())

    # -- Slicer template methods

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if getattr(self, "runner", None) is not None:
            self.runner.cancel()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        if not self._dependenciesChecked:
            self._dependenciesChecked = True
            self.ensureDependencies()
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use this module's parameter node; pick a first input volume like Slicer's template."""
        import slicer

        self.setParameterNode(self.logic.getParameterNode())
        if "inputVolume" in parameter_fields(self._parameterNode) and not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, inputParameterNode) -> None:
        """Bind the GUI to ``inputParameterNode`` (two-way, via its SlicerParameterName properties)."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable Apply/Evaluate when their inputs are set; keep the model choice in sync."""
        p = self._parameterNode
        if p is None or getattr(self, "runner", None) is None or self.runner.busy:
            return
        if not select_model(self.ui.modelComboBox, p.model) and self.ui.modelComboBox.count:
            p.model = self.ui.modelComboBox.currentText
        self.ui.checkpointPathLineEdit.enabled = p.model == CHECKPOINT_ITEM
        missing = [name for name in self.REQUIRED_INPUTS if not getattr(p, name)]
        self.ui.applyButton.enabled = not missing
        self.ui.applyButton.toolTip = ("Run the reconstruction." if not missing
                                       else "Select " + ", ".join(missing) + " first.")
        evaluation = [f for f, kw in self.EVALUATE_ARGS.items() if kw in ("prediction", "reference")]
        self.ui.evaluateButton.enabled = all(getattr(p, f) for f in evaluation)

    # -- actions

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemText(index)

    def ensureDependencies(self) -> bool:
        """Offer to install missing Python packages; rebuild the Logic once they are there."""
        from . import slicerdeps

        ok = slicerdeps.ensure_dependencies(self.parent)
        if ok and hasattr(self.logic, "core_missing"):
            self.logic = fresh_logic(self.logic)
            fill_model_combo(self.ui.modelComboBox, self.logic.shipped_models(),
                             self._parameterNode.model if self._parameterNode else None)
        return ok

    def runLogic(self, method: str, mapping: Mapping[str, str], title: str, view=None, with_model: bool = True):
        """Call ``self.logic.<method>`` with the parameter node's values; store and show its outputs."""
        p = self._parameterNode
        table_field = next((f for f, kw in mapping.items() if kw in ("table", "output_table")), None)

        def task(progress, cancel, background):
            kwargs = logic_kwargs(p, mapping, with_model)
            kwargs.update(progress=progress, cancel=cancel, background=background)
            result = call_logic(getattr(self.logic, method), kwargs)
            store_outputs(p, result, mapping)
            current = getattr(p, table_field) if table_field else None
            table = result_table(result, f"{self.moduleName} {title.lower()}", node=current) or current
            if table is not None and table_field:
                setattr(p, table_field, table)
            show_table(view, table)
            return result

        return self.runner.run(task, title)

    def onApplyButton(self) -> None:
        """Run the module's ``Logic.process`` with the parameter node's values."""
        if self.ensureDependencies():
            self.runLogic("process", self.PROCESS_ARGS, "Processing", self.ui.resultsTableView)

    def onEvaluateButton(self) -> None:
        """Compare the output with the reference (``Logic.evaluate``) and show the metrics."""
        if self.ensureDependencies():
            self.runLogic("evaluate", self.EVALUATE_ARGS, "Evaluation", self.ui.evaluationTableView,
                          with_model=False)

    def onLoadSampleButton(self) -> None:
        """Generate this module's sample data (``Logic.load_sample``) and select it as input."""
        if not self.ensureDependencies():
            return
        p = self._parameterNode

        def task(progress, cancel, background):
            kwargs = {"progress": progress, "cancel": cancel, "background": background}
            sample = call_logic(self.logic.load_sample, kwargs)
            apply_sample(p, sample, self.PROCESS_ARGS, self.EVALUATE_ARGS, inputs=self.REQUIRED_INPUTS)
            return sample

        self.runner.run(task, "Loading sample")


# ---------------------------------------------------------------- sample data and self-test


class SampleLoader:
    """``customDownloader`` for Slicer's Sample Data module: generates the sample with the Logic."""

    def __init__(self, module_name: str, logic_class: type, *mappings: Mapping[str, str],
                 inputs: tuple[str, ...] = ()):
        self.module_name, self.logic_class, self.mappings, self.inputs = module_name, logic_class, mappings, inputs

    def __repr__(self) -> str:  # SampleData compares sources by their text: keep it stable
        return f"VesselReconSampleLoader({self.module_name})"

    def __call__(self, source=None):
        try:
            logic = self.logic_class()
            sample = logic.load_sample()
            apply_sample(logic.getParameterNode(), sample, *self.mappings, inputs=self.inputs)
            return sample
        except InputError as exc:
            show_error(str(exc))
        except Exception as exc:  # keep the traceback in the log only
            log.exception("Generating the %s sample failed", self.module_name)
            show_error(f"Generating the {self.module_name} sample failed: {exc}")
        return None


def register_sample_data(module_name: str, logic_class: type, thumbnail: str, *mappings: Mapping[str, str],
                         inputs: tuple[str, ...] = ()) -> None:
    """Add the module's generated sample to the Sample Data module (nothing is downloaded)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=f"{module_name}Sample",
        thumbnailFileName=thumbnail,
        # SampleData needs a URI and file name per item; the custom downloader never fetches them.
        uris=f"vesselrecon://{module_name}/sample",
        fileNames=f"{module_name}Sample.nrrd",
        nodeNames=f"{module_name}Sample",
        customDownloader=SampleLoader(module_name, logic_class, *mappings, inputs=inputs),
    )


def self_test(case, logic, process_args: Mapping[str, str], evaluate_args: Mapping[str, str],
              inputs: tuple[str, ...]) -> None:
    """The module self-test: generated sample -> process on the CPU -> evaluate -> bad input refused."""
    param = logic.getParameterNode()
    case.delayDisplay("Generating the sample")
    apply_sample(param, logic.load_sample(), process_args, evaluate_args, inputs=inputs)
    for name in inputs:
        case.assertTrue(getattr(param, name), f"the sample did not provide {name}")
    param.device = "cpu"
    case.delayDisplay("Processing the sample on the CPU")
    kwargs = logic_kwargs(param, process_args)
    result = call_logic(logic.process, kwargs)
    stored = store_outputs(param, result, process_args)
    case.assertTrue(stored or result is not None, "process() returned no output")
    if all(getattr(param, f) for f, kw in evaluate_args.items() if kw in ("prediction", "reference")):
        case.delayDisplay("Evaluating against the sample's reference")
        case.assertIsNotNone(call_logic(logic.evaluate, logic_kwargs(param, evaluate_args, False)))
    case.delayDisplay("Checking that a missing input is refused")
    keyword = process_args[inputs[0]]
    with case.assertRaises(InputError):
        call_logic(logic.process, {**kwargs, keyword: None})
    case.delayDisplay("Test passed")

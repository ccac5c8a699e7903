"""The module widget base shared by the five Slicer modules: Apply/Cancel/progress, model choice, batch.

Used only inside 3D Slicer, yet importable anywhere: nothing here imports ``qt``, ``ctk``,
``slicer.app`` or torch at module level. Widgets stay thin: they read the parameter node, call the
module Logic through :class:`TaskRunner` and show progress, cancellation, errors and result tables.
The other Slicer-side jobs live beside it, each in its own file: ``slicer_results`` (parameter node
<-> Logic keywords and outputs), ``slicer_logic`` (core Logic binding), ``slicer_samples`` (Sample
Data), ``slicer_selftest`` (self-tests), ``slicerdeps`` (dependency prompts) and ``slicer_compat``
(Slicer 5.8..5.13 differences).
See ``slicer_tasks`` for how a task runs (and why in-process inference is safe enough).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .progress import Cancelled
from .slicer_results import (CHECKPOINT_ITEM, DEVICE_CHOICES, call_logic, logic_kwargs, parameter_fields,
                             path_or_none, result_table, show_table, store_outputs, apply_sample)
from .slicer_samples import CATEGORY
from .slicer_tasks import OOM_HELP, TaskRunner, is_out_of_memory, run_with_progress

log = logging.getLogger(__name__)

CONTRIBUTORS = ["VesselRecon project (https://github.com/vesselrecon)"]
BATCH_UI = Path(__file__).resolve().parent / "resources" / "FolderBatch.ui"
NEEDS_PACKAGES = object()  # a sample that needs packages not installed yet

__all__ = ["CATEGORY", "CHECKPOINT_ITEM", "CONTRIBUTORS", "DEVICE_CHOICES", "ModuleWidgetMixin", "TaskRunner",
           "fill_model_combo", "run_with_progress", "select_model", "is_out_of_memory", "OOM_HELP"]


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


def shipped_items(combo) -> list[str]:
    """The combo's shipped-model entries (all but 'Load checkpoint…')."""
    return [combo.itemText(i) for i in range(combo.count) if combo.itemText(i) != CHECKPOINT_ITEM]


def select_model(combo, name: str) -> bool:
    """Select ``name`` in the model combo box; False when it is not listed."""
    index = combo.findText(name)
    if index < 0:
        return False
    if combo.currentIndex != index:
        combo.currentIndex = index
    return True


# ---------------------------------------------------------------- the module widget


class ModuleWidgetMixin:
    """Behaviour shared by the module widgets; list it before ``ScriptedLoadableModuleWidget``.

    The module's ``setup()`` loads its .ui into ``self.ui``, creates ``self.logic`` and calls
    :meth:`setupVesselRecon`. Class attributes configure it: ``PROCESS_ARGS``, ``EVALUATE_ARGS``
    (field -> keyword), ``REQUIRED_INPUTS`` (fields that must be set before Apply) and
    ``FOLDER_BATCH`` (add the shared folder-batch section; the 3D modules set it).
    """

    PROCESS_ARGS: Mapping[str, str] = {}
    EVALUATE_ARGS: Mapping[str, str] = {}
    REQUIRED_INPUTS: tuple[str, ...] = ()
    FOLDER_BATCH: bool = False

    def setupVesselRecon(self, pump_events: Callable[[], None]) -> None:
        """Connect the common buttons and observers (call at the end of ``setup()``).

        Nothing is installed here: dependencies are asked for on Apply, Load sample, Evaluate and
        Run batch. The model box is filled from the registry JSON, which needs no torch.
        """
        import slicer

        from . import slicer_compat

        self.runner = TaskRunner(self.ui, pump_events, on_idle=self._checkCanApply)
        if self.FOLDER_BATCH:
            self.setupFolderBatch()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.runner.cancel)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSampleButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.modelComboBox.connect("activated(int)", self.onModelChanged)  # user choices only
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = ""
        show_table(self.ui.resultsTableView, None)
        show_table(self.ui.evaluationTableView, None)
        fill_model_combo(self.ui.modelComboBox, self.logic.shipped_models())
        version = slicer_compat.slicer_version()
        if not slicer_compat.version_supported(version):
            self.ui.statusLabel.text = slicer_compat.unsupported_version_message(version)

    def setupFolderBatch(self) -> None:
        """Add the shared folder-batch section (``resources/FolderBatch.ui``) below the module's own GUI."""
        import slicer

        section = slicer.util.loadUI(str(BATCH_UI))
        self.layout.addWidget(section)
        for name, widget in slicer.util.childWidgetVariables(section).__dict__.items():
            setattr(self.ui, name, widget)
        self.ui.batchRunButton.connect("clicked(bool)", self.onFolderBatchButton)
        for edit in (self.ui.batchInputPathLineEdit, self.ui.batchOutputPathLineEdit):
            edit.connect("currentPathChanged(QString)", lambda path: self._checkCanApply())

    # -- Slicer template methods

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if getattr(self, "runner", None) is not None:
            self.runner.cancel()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module (installs nothing)."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """A closing scene cancels a running task: its outputs would go to nodes that are about to go."""
        if getattr(self, "runner", None) is not None and self.runner.busy:
            self.runner.cancel()
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
        """Enable Apply/Evaluate when their inputs are set; keep the model choice in sync.

        The model in the parameter node is never replaced by 'Load checkpoint…': only the user picks
        that. A model that is not listed (yet) is kept; an empty one becomes the first shipped model.
        """
        p = self._parameterNode
        if p is None or getattr(self, "runner", None) is None or self.runner.busy:
            return
        combo = self.ui.modelComboBox
        if not select_model(combo, p.model):
            shipped = shipped_items(combo)
            if not p.model and shipped:
                p.model = shipped[0]
        self.ui.checkpointPathLineEdit.enabled = p.model == CHECKPOINT_ITEM
        missing = [name for name in self.REQUIRED_INPUTS if not getattr(p, name)]
        self.ui.applyButton.enabled = not missing
        self.ui.applyButton.toolTip = ("Run the reconstruction." if not missing
                                       else "Select " + ", ".join(missing) + " first.")
        evaluation = [f for f, kw in self.EVALUATE_ARGS.items() if kw in ("prediction", "reference")]
        self.ui.evaluateButton.enabled = all(getattr(p, f) for f in evaluation)
        if self.FOLDER_BATCH and getattr(self.ui, "batchRunButton", None) is not None:
            self.ui.batchRunButton.enabled = all(self.batchFolders())

    # -- actions

    def onModelChanged(self, index: int) -> None:
        """The user picked a model (or 'Load checkpoint…') in the combo box."""
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemText(index)

    def ensureDependencies(self) -> bool:
        """Offer to install missing Python packages; rebuild the Logic once they are there.

        The model box is refilled from the core Logic, keeping the chosen model.
        """
        from . import slicerdeps
        from .slicer_logic import fresh_logic

        ok = slicerdeps.ensure_dependencies(self.parent)
        if ok and hasattr(self.logic, "core_missing"):
            self.logic = fresh_logic(self.logic)
            fill_model_combo(self.ui.modelComboBox, self.logic.shipped_models(),
                             self._parameterNode.model if self._parameterNode else None)
            self._checkCanApply()
        return ok

    def runLogic(self, method: str, mapping: Mapping[str, str], title: str, view=None, with_model: bool = True,
                 extra: Mapping[str, Any] | None = None):
        """Call ``self.logic.<method>`` with the parameter node's values; store and show its outputs.

        If the task was cancelled meanwhile (Cancel, or the scene closed) nothing is written back.
        """
        p = self._parameterNode
        table_field = next((f for f, kw in mapping.items() if kw in ("table", "output_table")), None)

        def task(progress, cancel, background):
            kwargs = logic_kwargs(p, mapping, with_model)
            kwargs.update(extra or {})
            kwargs.update(progress=progress, cancel=cancel, background=background)
            result = call_logic(getattr(self.logic, method), kwargs)
            if cancel():
                raise Cancelled("Cancelled (the scene was closed or Cancel was pressed).")
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
        """Generate this module's sample data (``Logic.load_sample``) and select it as input.

        The phantoms are numpy: packages are asked for only if generating the sample needs them.
        """
        if hasattr(self.logic, "core_missing") and not self.ensureDependencies():
            return
        if self._loadSample() is NEEDS_PACKAGES and self.ensureDependencies():
            self._loadSample()

    def _loadSample(self):
        p = self._parameterNode

        def task(progress, cancel, background):
            kwargs = {"progress": progress, "cancel": cancel, "background": background}
            try:
                sample = call_logic(self.logic.load_sample, kwargs)
            except ModuleNotFoundError:
                return NEEDS_PACKAGES
            if cancel():
                raise Cancelled("Cancelled.")
            apply_sample(p, sample, self.PROCESS_ARGS, self.EVALUATE_ARGS, inputs=self.REQUIRED_INPUTS)
            return sample

        return self.runner.run(task, "Loading sample")

    def batchFolders(self) -> tuple[Path | None, Path | None]:
        """The folder-batch section's input and output folders (None when empty)."""
        return (path_or_none(self.ui.batchInputPathLineEdit.currentPath),
                path_or_none(self.ui.batchOutputPathLineEdit.currentPath))

    def onFolderBatchButton(self) -> None:
        """Process every input of a folder with the current settings (``Logic.process_batch``), as COIPS does."""
        if not self.ensureDependencies():
            return
        inputFolder, outputFolder = self.batchFolders()
        settings = {f: kw for f, kw in self.PROCESS_ARGS.items() if f not in self.REQUIRED_INPUTS}
        self.runLogic("process_batch", settings, "Batch processing", self.ui.resultsTableView,
                      extra={"inputFolder": inputFolder, "outputFolder": outputFolder})

import os
from pathlib import Path
from typing import Annotated

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    parameterNodeWrapper,
    Choice,
)

from slicer import (
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

from VesselReconLib import slicer_logic, slicer_results, slicer_samples, slicer_selftest, slicer_widget

# Apply, Run batch, Evaluate and Load sample call the core logic (VesselReconLib.coips.logic.COIPSLogic)
# with keyword arguments only:
#   process(inputVolume, fieldOfViewMm=None, forceFazOnUngradable=False, outputSegmentation=None,
#           outputTable=None, model="lite", fazModel="faz-lite", device="auto", progress, cancel, background)
#       -> CoipsResult(outputTable, outputSegmentation (None when ungradable), grade, probabilities, metrics,
#                      flagged, fieldOfViewMm, fovSource)
#   process_batch(inputFolder, outputFolder, fieldOfViewMm, forceFazOnUngradable, outputTable,
#                 model, fazModel, device, numWorkers, batchSize, configFile, progress, cancel, background)
#       -> CoipsBatchResult(outputTable, rows, csvPath, htmlPath, summary)
#   evaluate(prediction, reference, table=None, fieldOfViewMm=None, referenceVolume=None)
#       -> table node (Dice, Jaccard, precision, recall, area error)
#   load_sample() -> CoipsSample(inputVolume, referenceSegmentation)
# `model` is a shipped quality preset or a checkpoint path (a FAZ U-Net checkpoint replaces the FAZ model).
PROCESS_ARGS = {
    "inputVolume": "inputVolume",
    "fieldOfViewMm": "fieldOfViewMm",
    "forceFazOnUngradable": "forceFazOnUngradable",
    "outputSegmentation": "outputSegmentation",
    "outputTable": "outputTable",
}
BATCH_ARGS = {
    "batchInputFolder": "inputFolder",
    "batchOutputFolder": "outputFolder",
    "fieldOfViewMm": "fieldOfViewMm",
    "forceFazOnUngradable": "forceFazOnUngradable",
    "outputTable": "outputTable",
}
EVALUATE_ARGS = {
    "outputSegmentation": "prediction",
    "referenceSegmentation": "reference",
    "fieldOfViewMm": "fieldOfViewMm",
    "evaluationTable": "table",
}
REQUIRED_INPUTS = ("inputVolume",)
# The self-test's floor on the phantom sample (the shipped model must reach it on the CPU), and the
# outputs that must lie on the input's voxel grid.
SELF_TEST = {"metric": ("dice", 0.8)}


#
# COIPS
#


class COIPS(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("COIPS")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Vessel Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = list(slicer_widget.CONTRIBUTORS)
        self.parent.helpText = _("""
Grades the quality of en-face OCT-angiography images (ungradable, gradable, outstanding), segments the
foveal avascular zone (FAZ) on gradable images and measures it (area in mm², perimeter, circularity,
axis ratio) in a table. Use the <b>Single image</b> tab for an image in the scene, or the <b>Batch</b> tab
to grade a study folder into a CSV and an HTML report. Ungradable images are flagged and their FAZ is
skipped unless asked for. <b>Load sample</b> generates a synthetic
OCTA image with its reference FAZ segmentation.
See the <a href="https://github.com/vesselrecon/SlicerVesselRecon#coips">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
This module implements the method of <i>A deep learning-based quality assessment and segmentation
system with a large-scale benchmark dataset for OCTA images</i> (OCTA-25K-IQA-SEG). Please cite that
paper when you use the module. Part of the VesselRecon extension.
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the generated COIPS sample to the Sample Data module (nothing is downloaded)."""
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    slicer_samples.register_sample_data("COIPS", COIPSLogic, os.path.join(iconsPath, "COIPS.png"),
                                       PROCESS_ARGS, EVALUATE_ARGS, inputs=REQUIRED_INPUTS)


#
# COIPSParameterNode
#


@parameterNodeWrapper
class COIPSParameterNode:
    """
    The parameters needed by module.

    inputVolume - en-face OCTA image (single-slice volume).
    batchInputFolder, batchOutputFolder - folders of the Batch tab.
    model, checkpointPath, device - network weights (shipped preset or "Load checkpoint…") and device.
    fieldOfViewMm - scan size: "auto (from the image)" (its spacing; refused when the image has none),
        "3 mm" or "6 mm" (overrides the image's spacing).
    forceFazOnUngradable - segment the FAZ even on images graded ungradable.
    outputSegmentation, outputTable - FAZ segment; grade, probabilities and FAZ measurements.
    referenceSegmentation, evaluationTable - reference FAZ segment and metrics table (Evaluation).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    batchInputFolder: Path
    batchOutputFolder: Path
    model: str = "lite"
    checkpointPath: Path
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    fieldOfViewMm: Annotated[str, Choice(["auto (from the image)", "3 mm", "6 mm"])] = "auto (from the image)"
    forceFazOnUngradable: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode
    referenceSegmentation: vtkMRMLSegmentationNode
    evaluationTable: vtkMRMLTableNode


#
# COIPSWidget
#


class COIPSWidget(slicer_widget.ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Parameter-node binding, Apply/Cancel/progress, sample loading and evaluation are shared by all
    VesselRecon modules: see VesselReconLib.slicer_widget.ModuleWidgetMixin. This class adds the
    Batch tab.
    """

    PROCESS_ARGS = PROCESS_ARGS
    EVALUATE_ARGS = EVALUATE_ARGS
    REQUIRED_INPUTS = REQUIRED_INPUTS

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/COIPS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = COIPSLogic()
        self.setupVesselRecon(slicer.app.processEvents)
        self.ui.batchRunButton.connect("clicked(bool)", self.onBatchRunButton)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def _checkCanApply(self, caller=None, event=None) -> None:
        super()._checkCanApply(caller, event)
        p = self._parameterNode
        if p is not None and not self.runner.busy:
            folders = (p.batchInputFolder, p.batchOutputFolder)
            self.ui.batchRunButton.enabled = all(slicer_results.path_or_none(f) for f in folders)

    def onBatchRunButton(self) -> None:
        """Grade every image of the input folder and segment its FAZ (``Logic.process_batch``)."""
        if self.ensureDependencies():
            self.runLogic("process_batch", BATCH_ARGS, "Batch processing", self.ui.resultsTableView)


#
# COIPSLogic
#


class COIPSLogic(ScriptedLoadableModuleLogic):
    """COIPS logic for Slicer: ScriptedLoadableModuleLogic plus the Qt-free core logic.

    Instances are of ``class COIPSLogic(ScriptedLoadableModuleLogic, CoreCOIPSLogic)`` where the
    core, ``VesselReconLib.coips.logic.COIPSLogic``, is imported on first instantiation (it loads
    torch), so Slicer starts fast.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(slicer_logic.bind_core(cls, "coips", "COIPSLogic"))

    def __init__(self) -> None:
        """Called when the logic class is instantiated (also initializes the core logic)."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return COIPSParameterNode(super().getParameterNode())


#
# COIPSTest
#


class COIPSTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_COIPS1()

    def test_COIPS1(self):
        """Generated OCTA sample -> grade and FAZ on the CPU -> evaluation; a missing input is refused."""
        slicer_selftest.self_test(self, COIPSLogic(), PROCESS_ARGS, EVALUATE_ARGS, REQUIRED_INPUTS, **SELF_TEST)

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
    WithinRange,
    Choice,
)

from slicer import (
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

from VesselReconLib import slicer_logic, slicer_samples, slicer_selftest, slicer_widget

# Apply, Evaluate and Load sample call the core logic (VesselReconLib.octadepth.logic.OCTADepthLogic)
# with keyword arguments only; keywords it does not accept are dropped with a warning:
#   process(inputVolume, fieldOfViewMm=None, pixelMm=None, depthRangeMm=0.25, threshold=0.5, minSegmentLengthPx=2,
#           outputDepthVolume=None, outputSegmentation=None, outputModel=None, outputCenterlines=None,
#           outputTable=None, model="lite", device="auto", progress=None, cancel=None, background=None)
#       -> OCTADepthOutputs(outputDepthVolume, outputSegmentation, outputModel, outputCenterlines, outputTable,
#                           pixelMm, spacingAssumed, message, timings)
#   evaluate(prediction, reference, referenceCenterlines=None, table=None, depthRangeMm=0.25) -> table node
#   load_sample(seed=7, sizePx=304, fieldOfViewMm=3.0)
#       -> OCTADepthSample(inputVolume, referenceDepthVolume, referenceCenterlines, fieldOfViewMm)
# `model` is a shipped preset or a checkpoint path; `progress(fraction, message)`, `cancel() -> bool`
# follow VesselReconLib.progress; `background(fn)` runs the MRML-free heavy part off the GUI thread.
# Missing inputs must raise VesselReconLib.errors.InputError (shown to the user as is).
PROCESS_ARGS = {
    "inputVolume": "inputVolume",
    "fieldOfViewMm": "fieldOfViewMm",
    "depthRangeMm": "depthRangeMm",
    "threshold": "threshold",
    "minSegmentLengthPx": "minSegmentLengthPx",
    "outputDepthVolume": "outputDepthVolume",
    "outputSegmentation": "outputSegmentation",
    "outputModel": "outputModel",
    "outputCenterlines": "outputCenterlines",
    "outputTable": "outputTable",
}
EVALUATE_ARGS = {
    "outputDepthVolume": "prediction",
    "referenceDepthVolume": "reference",
    "referenceCenterlines": "referenceCenterlines",
    "depthRangeMm": "depthRangeMm",
    "evaluationTable": "table",
}
REQUIRED_INPUTS = ("inputVolume",)
# The self-test's floor on the phantom sample (the shipped model must reach it on the CPU), and the
# outputs that must lie on the input's voxel grid.
SELF_TEST = {"metric": ("dice", 0.8), "same_grid_outputs": ("outputDepthVolume",)}


#
# OCTADepth
#


class OCTADepth(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("OCTADepth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Vessel Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = list(slicer_widget.CONTRIBUTORS)
        self.parent.helpText = _("""
Reconstructs 3D retinal vessels from a single en-face OCT-angiography image. A network segments the
vessels and estimates the depth of every vessel pixel; the vessel mask lifted to its depth gives a
3D surface and centerlines, and the depth bands and vessel measurements are listed in a table.
Select the OCTA image, the scan field of view and a model, then click Apply.
<b>Load sample</b> generates a synthetic OCTA image with its true depth map for a quick try and for
the Evaluation section.
See the <a href="https://github.com/vesselrecon/SlicerVesselRecon#octadepth">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
This module implements the method of <i>3D vessel reconstruction in OCT-angiography via depth map
estimation</i> (IEEE International Symposium on Biomedical Imaging, ISBI 2021). Please cite that
paper when you use the module. Part of the VesselRecon extension.
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the generated OCTADepth sample to the Sample Data module (nothing is downloaded)."""
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    slicer_samples.register_sample_data("OCTADepth", OCTADepthLogic, os.path.join(iconsPath, "OCTADepth.png"),
                                       PROCESS_ARGS, EVALUATE_ARGS, inputs=REQUIRED_INPUTS)


#
# OCTADepthParameterNode
#


@parameterNodeWrapper
class OCTADepthParameterNode:
    """
    The parameters needed by module.

    inputVolume - en-face OCTA image (single-slice volume).
    model, checkpointPath, device - network weights (shipped preset or "Load checkpoint…") and device.
    fieldOfViewMm - scan size: "auto (from the image)" (its spacing or a 3x3/6x6 name token; an image without
        either is refused with a request to choose), "3 mm" or "6 mm" (overrides the image's spacing).
    depthRangeMm - axial extent that normalized depths are scaled to.
    threshold - vessel probability threshold; minSegmentLengthPx - shorter vessel segments are dropped.
    output* - depth map, 2D vessel segmentation, 3D vessel surface and centerlines, results table.
    referenceDepthVolume, referenceCenterlines, evaluationTable - ground truth and metrics (Evaluation).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = "lite"
    checkpointPath: Path
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    fieldOfViewMm: Annotated[str, Choice(["auto (from the image)", "3 mm", "6 mm"])] = "auto (from the image)"
    depthRangeMm: Annotated[float, WithinRange(0.01, 2.0)] = 0.25
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    minSegmentLengthPx: Annotated[int, WithinRange(0, 500)] = 2
    outputDepthVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputModel: vtkMRMLModelNode
    outputCenterlines: vtkMRMLModelNode
    outputTable: vtkMRMLTableNode
    referenceDepthVolume: vtkMRMLScalarVolumeNode
    referenceCenterlines: vtkMRMLModelNode
    evaluationTable: vtkMRMLTableNode


#
# OCTADepthWidget
#


class OCTADepthWidget(slicer_widget.ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Parameter-node binding, Apply/Cancel/progress, sample loading and evaluation are shared by all
    VesselRecon modules: see VesselReconLib.slicer_widget.ModuleWidgetMixin.
    """

    PROCESS_ARGS = PROCESS_ARGS
    EVALUATE_ARGS = EVALUATE_ARGS
    REQUIRED_INPUTS = REQUIRED_INPUTS
    FOLDER_BATCH = True  # the shared folder-batch section (VesselReconLib.folder_batch)

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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OCTADepth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = OCTADepthLogic()
        self.setupVesselRecon(slicer.app.processEvents)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()


#
# OCTADepthLogic
#


class OCTADepthLogic(ScriptedLoadableModuleLogic):
    """OCTADepth logic for Slicer: ScriptedLoadableModuleLogic plus the Qt-free core logic.

    Instances are of ``class OCTADepthLogic(ScriptedLoadableModuleLogic, CoreOCTADepthLogic)`` where
    the core, ``VesselReconLib.octadepth.logic.OCTADepthLogic``, is imported on first instantiation
    (it loads torch), so Slicer starts fast. From the Python console:
    ``OCTADepthLogic().process(inputVolume=getNode("OCTA"))``.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(slicer_logic.bind_core(cls, "octadepth", "OCTADepthLogic"))

    def __init__(self) -> None:
        """Called when the logic class is instantiated (also initializes the core logic)."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return OCTADepthParameterNode(super().getParameterNode())


#
# OCTADepthTest
#


class OCTADepthTest(ScriptedLoadableModuleTest):
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
        self.test_OCTADepth1()

    def test_OCTADepth1(self):
        """Generated sample -> depth map and 3D vessels on the CPU -> evaluation; a missing input is refused."""
        slicer_selftest.self_test(self, OCTADepthLogic(), PROCESS_ARGS, EVALUATE_ARGS, REQUIRED_INPUTS, **SELF_TEST)

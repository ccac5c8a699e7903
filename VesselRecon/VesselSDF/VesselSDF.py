import os
from pathlib import Path
from typing import Annotated, Union

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
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

from VesselReconLib import slicer_logic, slicer_samples, slicer_selftest, slicer_widget

# Apply, Evaluate and Load sample call the core logic (VesselReconLib.vesselsdf.logic.VesselSDFLogic)
# with keyword arguments only:
#   process(inputVolume, roiMask=None, outputModel=None, outputSegmentation=None, outputSdfVolume=None,
#           outputOccupancyVolume=None, outputTable=None, model="lite", device="auto",
#           portalVenousWindow=True, createOccupancy=False, throughPlaneFactor=0 (0 = auto),
#           minComponentMm3=0.0, referenceSegmentation=None, progress=None, cancel=None, background=None)
#       -> VesselSDFResult(outputModel, outputSegmentation, outputSdfVolume, outputTable,
#                          outputOccupancyVolume, metrics, reconstruction)
#   evaluate(prediction, reference, table=None, inputVolume=None, predictionModel=None,
#            referenceModel=None, progress=None, cancel=None, background=None) -> table node
#   load_sample() -> VesselSDFSample(inputVolume, roiMask, referenceSegmentation, referenceModel)
# Missing or bad inputs raise VesselReconLib.errors.InputError before any scene change.
PROCESS_ARGS = {
    "inputVolume": "inputVolume",
    "roiMask": "roiMask",
    "upsamplingFactor": "throughPlaneFactor",
    "minComponentMm3": "minComponentMm3",
    "windowPortalVenous": "portalVenousWindow",
    "outputOccupancy": "createOccupancy",
    "outputSegmentation": "outputSegmentation",
    "outputSdfVolume": "outputSdfVolume",
    "outputOccupancyVolume": "outputOccupancyVolume",
    "outputModel": "outputModel",
    "outputTable": "outputTable",
}
EVALUATE_ARGS = {
    "outputSegmentation": "prediction",
    "referenceSegmentation": "reference",
    "evaluationTable": "table",
    "inputVolume": "inputVolume",
    "outputModel": "predictionModel",
}
REQUIRED_INPUTS = ("inputVolume",)
# The self-test's floor on the phantom sample (the shipped model must reach it on the CPU), and the
# outputs that must lie on the input's voxel grid.
SELF_TEST = {"metric": ("dice", 0.4)}


#
# VesselSDF
#


class VesselSDF(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VesselSDF")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Vessel Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = list(slicer_widget.CONTRIBUTORS)
        self.parent.helpText = _("""
Reconstructs vascular networks (e.g. the hepatic and portal veins) from CT with thick slices. A
network predicts a signed distance field to the vessel wall, evaluated on slices thinner than the
input's, which keeps thin vessels connected between slices; the vessels are its inside, and the
vessel surface its zero level. Optionally restrict it to a region of interest such as the liver.
<b>Load sample</b> generates a synthetic anisotropic CT with its reference vessels.
See the <a href="https://github.com/vesselrecon/SlicerVesselRecon#vesselsdf">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
This module implements the method of <i>VesselSDF: Distance Field Priors for Vascular Network
Reconstruction</i> (MICCAI 2025). Please cite that paper when you use the module. Part of the
VesselRecon extension.
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the generated VesselSDF sample to the Sample Data module (nothing is downloaded)."""
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    slicer_samples.register_sample_data("VesselSDF", VesselSDFLogic, os.path.join(iconsPath, "VesselSDF.png"),
                                       PROCESS_ARGS, EVALUATE_ARGS, inputs=REQUIRED_INPUTS)


#
# VesselSDFParameterNode
#


@parameterNodeWrapper
class VesselSDFParameterNode:
    """
    The parameters needed by module.

    inputVolume - CT volume; roiMask - optional liver ROI (found automatically when empty).
    model, checkpointPath, device - network weights (shipped preset or "Load checkpoint…") and device.
    upsamplingFactor - sub-slices per slice gap when meshing the distance field (0 = auto, about
        isotropic: round(slice spacing / pixel spacing)).
    minComponentMm3 - smaller pieces are removed; windowPortalVenous - the input is in HU (unchecked: windowed/8-bit accepted).
    outputOccupancy - also write the occupancy volume.
    output* - segmentation, signed distance field, occupancy, vessel surface, results table.
    referenceSegmentation, evaluationTable - reference vessels and metrics table (Evaluation).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roiMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    model: str = "lite"
    checkpointPath: Path
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    upsamplingFactor: Annotated[int, WithinRange(0, 16)] = 0
    minComponentMm3: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    windowPortalVenous: bool = True
    outputOccupancy: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    outputSdfVolume: vtkMRMLScalarVolumeNode
    outputOccupancyVolume: vtkMRMLScalarVolumeNode
    outputModel: vtkMRMLModelNode
    outputTable: vtkMRMLTableNode
    referenceSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    evaluationTable: vtkMRMLTableNode


#
# VesselSDFWidget
#


class VesselSDFWidget(slicer_widget.ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VesselSDF.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VesselSDFLogic()
        self.setupVesselRecon(slicer.app.processEvents)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()


#
# VesselSDFLogic
#


class VesselSDFLogic(ScriptedLoadableModuleLogic):
    """VesselSDF logic for Slicer: ScriptedLoadableModuleLogic plus the Qt-free core logic.

    Instances are of ``class VesselSDFLogic(ScriptedLoadableModuleLogic, CoreVesselSDFLogic)`` where
    the core, ``VesselReconLib.vesselsdf.logic.VesselSDFLogic``, is imported on first instantiation
    (it loads torch), so Slicer starts fast.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(slicer_logic.bind_core(cls, "vesselsdf", "VesselSDFLogic"))

    def __init__(self) -> None:
        """Called when the logic class is instantiated (also initializes the core logic)."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return VesselSDFParameterNode(super().getParameterNode())


#
# VesselSDFTest
#


class VesselSDFTest(ScriptedLoadableModuleTest):
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
        self.test_VesselSDF1()

    def test_VesselSDF1(self):
        """Generated anisotropic CT -> distance field and vessels on the CPU -> evaluation; bad input refused."""
        slicer_selftest.self_test(self, VesselSDFLogic(), PROCESS_ARGS, EVALUATE_ARGS, REQUIRED_INPUTS, **SELF_TEST)

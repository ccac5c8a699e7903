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
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

from VesselReconLib import slicer_logic, slicer_samples, slicer_selftest, slicer_widget
from VesselReconLib.vcnet.defaults import DEFAULT_MODEL

# Apply, Evaluate and Load sample call the core logic (VesselReconLib.vcnet.logic.VCNetLogic):
#   process(inputVolume, maskVolume=None, darkVessels=False, model=DEFAULT_MODEL, device="auto", overlap=0.0,
#           threshold=0.5, minComponentMm3=0.0, batchSize=None, outputProbability=False, outputMip=False,
#           outputSegmentation=None, outputProbabilityVolume=None, outputMipVolume=None, outputTable=None,
#           referenceSegmentation=None, referenceLabelmap=None, progress=None, cancel=None, background=None)
#       -> VCNetResult(outputSegmentation, outputTable, outputProbabilityVolume, outputMipVolume, ..., metrics)
#   evaluate(prediction, reference, referenceVolume=None, table=None) -> VCNetEvaluation(evaluationTable, metrics)
#   load_sample(kind="mra", seed=0, crop=(64, 192, 192)) -> VCNetSample(inputVolume, referenceSegmentation, maskNode)
PROCESS_ARGS = {
    "inputVolume": "inputVolume",
    "maskNode": "maskVolume",
    "darkVessels": "darkVessels",
    "overlap": "overlap",
    "threshold": "threshold",
    "minComponentMm3": "minComponentMm3",
    "outputProbability": "outputProbability",
    "outputMip": "outputMip",
    "outputSegmentation": "outputSegmentation",
    "outputProbabilityVolume": "outputProbabilityVolume",
    "outputMipVolume": "outputMipVolume",
    "outputTable": "outputTable",
    "referenceSegmentation": "referenceSegmentation",
}
EVALUATE_ARGS = {
    "outputSegmentation": "prediction",
    "referenceSegmentation": "reference",
    "inputVolume": "referenceVolume",
    "evaluationTable": "table",
}
REQUIRED_INPUTS = ("inputVolume",)
# The self-test's floor on the phantom sample (the shipped model must reach it on the CPU), and the
# outputs that must lie on the input's voxel grid.
SELF_TEST = {"metric": ("dice", 0.6), "same_grid_outputs": ("outputProbabilityVolume",)}


#
# VCNet
#


class VCNet(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VCNet")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Vessel Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = list(slicer_widget.CONTRIBUTORS)
        self.parent.helpText = _("""
Segments highly sparse and noisy vessels in 3D images (MR angiography, susceptibility-weighted
imaging, microscopy). The network combines 3D patches with their maximum-intensity projections, so
faint vessels that are hard to see slice by slice are still found; the result is a vessel
segmentation, an optional probability volume and the composited sliding MIPs the network sees, with
their 2D segmentation. The input is resampled to the model's training spacing and the result back
(a finer input, such as 0.3 mm, also runs on a finer grid for its thin vessels).
The optional mask also sets the intensity statistics; without it the whole volume's tissue level is
used. Check <b>Dark vessels</b> for images where vessels are darker than the background, with the
model <i>vcnet-swi-lite</i> (the default model is trained on TOF-MRA). <b>Load sample</b> generates
a synthetic noisy vessel volume with its reference segmentation.
See the <a href="https://github.com/vesselrecon/SlicerVesselRecon#vcnet">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
This module implements the method of <i>VC-Net: Deep Volume-Composition Networks for Segmentation
and Visualization of Highly Sparse and Noisy Image Data</i> (IEEE VIS 2020, IEEE Transactions on
Visualization and Computer Graphics 2021). Please cite that paper when you use the module. Part of
the VesselRecon extension.
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the generated VCNet sample to the Sample Data module (nothing is downloaded)."""
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    slicer_samples.register_sample_data("VCNet", VCNetLogic, os.path.join(iconsPath, "VCNet.png"),
                                       PROCESS_ARGS, EVALUATE_ARGS, inputs=REQUIRED_INPUTS)


#
# VCNetParameterNode
#


@parameterNodeWrapper
class VCNetParameterNode:
    """
    The parameters needed by module.

    inputVolume - 3D image with sparse, noisy vessels; maskNode - optional region of interest.
    model, checkpointPath, device - network weights (shipped preset or "Load checkpoint…") and device.
    darkVessels - vessels darker than the background; overlap - sliding-window patch overlap.
    threshold - probability threshold; minComponentMm3 - smaller pieces are removed.
    outputProbability, outputMip - also write the probability volume / the composited MIPs and their 2D segmentation.
    output* - segmentation, probability, MIP, results table.
    referenceSegmentation, evaluationTable - reference vessels and metrics table (Evaluation).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    maskNode: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    model: str = DEFAULT_MODEL  # "vcnet-swi-lite" for SWI (Dark vessels)
    checkpointPath: Path
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    darkVessels: bool = False
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.0
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    minComponentMm3: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0  # the Logic's and CLI's: keep every piece
    outputProbability: bool = True
    outputMip: bool = True
    outputSegmentation: vtkMRMLSegmentationNode
    outputProbabilityVolume: vtkMRMLScalarVolumeNode
    outputMipVolume: vtkMRMLScalarVolumeNode
    outputTable: vtkMRMLTableNode
    referenceSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    evaluationTable: vtkMRMLTableNode


#
# VCNetWidget
#


class VCNetWidget(slicer_widget.ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VCNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VCNetLogic()
        self.setupVesselRecon(slicer.app.processEvents)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()


#
# VCNetLogic
#


class VCNetLogic(ScriptedLoadableModuleLogic):
    """VCNet logic for Slicer: ScriptedLoadableModuleLogic plus the Qt-free core logic.

    Instances are of ``class VCNetLogic(ScriptedLoadableModuleLogic, CoreVCNetLogic)`` where the
    core, ``VesselReconLib.vcnet.logic.VCNetLogic``, is imported on first instantiation (it loads
    torch), so Slicer starts fast.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(slicer_logic.bind_core(cls, "vcnet", "VCNetLogic"))

    def __init__(self) -> None:
        """Called when the logic class is instantiated (also initializes the core logic)."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return VCNetParameterNode(super().getParameterNode())


#
# VCNetTest
#


class VCNetTest(ScriptedLoadableModuleTest):
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
        self.test_VCNet1()

    def test_VCNet1(self):
        """Generated noisy volume -> vessel segmentation on the CPU -> evaluation; a missing input is refused."""
        slicer_selftest.self_test(self, VCNetLogic(), PROCESS_ARGS, EVALUATE_ARGS, REQUIRED_INPUTS, **SELF_TEST)

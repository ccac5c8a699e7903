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

from VesselReconLib import slicer_widget

# Apply, Evaluate and Load sample call the core logic (VesselReconLib.vesselsdf.logic.VesselSDFLogic)
# with keyword arguments only; keywords it does not accept are dropped with a warning:
#   process(input_volume, roi_mask=None, upsampling_factor=2, min_component_mm3=10.0,
#           window_portal_venous=True, output_occupancy=False,
#           output_segmentation=None, output_sdf_volume=None, output_occupancy_volume=None,
#           output_model=None, output_table=None,
#           model="lite", device="auto", progress=None, cancel=None, background=None)
#       -> dict of output nodes keyed like the output keywords
#   evaluate(prediction, reference, table=None) -> table node | list of row dicts | dict of metrics
#   load_sample() -> {"input_volume": node, "reference_segmentation": node}
# `roi_mask` is a labelmap or segmentation node (or None); `model` is a shipped preset or a
# checkpoint path; `progress(fraction, message)`, `cancel() -> bool` follow VesselReconLib.progress;
# `background(fn)` runs the MRML-free heavy part off the GUI thread.
# Missing inputs must raise VesselReconLib.errors.InputError (shown to the user as is).
PROCESS_ARGS = {
    "inputVolume": "input_volume",
    "roiMask": "roi_mask",
    "upsamplingFactor": "upsampling_factor",
    "minComponentMm3": "min_component_mm3",
    "windowPortalVenous": "window_portal_venous",
    "outputOccupancy": "output_occupancy",
    "outputSegmentation": "output_segmentation",
    "outputSdfVolume": "output_sdf_volume",
    "outputOccupancyVolume": "output_occupancy_volume",
    "outputModel": "output_model",
    "outputTable": "output_table",
}
EVALUATE_ARGS = {
    "outputSegmentation": "prediction",
    "referenceSegmentation": "reference",
    "evaluationTable": "table",
}
REQUIRED_INPUTS = ("inputVolume",)


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
        self.parent.contributors = ["VesselRecon contributors"]
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
    slicer_widget.register_sample_data("VesselSDF", VesselSDFLogic, os.path.join(iconsPath, "VesselSDF.png"),
                                       PROCESS_ARGS, EVALUATE_ARGS, inputs=REQUIRED_INPUTS)


#
# VesselSDFParameterNode
#


@parameterNodeWrapper
class VesselSDFParameterNode:
    """
    The parameters needed by module.

    inputVolume - CT volume; roiMask - optional region of interest.
    model, checkpointPath, device - network weights (shipped preset or "Load checkpoint…") and device.
    upsamplingFactor - through-plane upsampling of the distance-field grid.
    minComponentMm3 - smaller pieces are removed; windowPortalVenous - clip to a portal-venous window.
    outputOccupancy - also write the occupancy volume.
    output* - segmentation, signed distance field, occupancy, vessel surface, results table.
    referenceSegmentation, evaluationTable - reference vessels and metrics table (Evaluation).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roiMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    model: str = "lite"
    checkpointPath: Path
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    upsamplingFactor: Annotated[int, WithinRange(1, 8)] = 2
    minComponentMm3: Annotated[float, WithinRange(0.0, 100000.0)] = 10.0
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
        return super().__new__(slicer_widget.bind_core(cls, "vesselsdf", "VesselSDFLogic"))

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
        slicer_widget.self_test(self, VesselSDFLogic(), PROCESS_ARGS, EVALUATE_ARGS, REQUIRED_INPUTS)

import os
from pathlib import Path
from typing import Annotated

import vtk

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

# The Markups classes (vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsCurveNode) are not imported here:
# Slicer 5.8 wraps them only once the Markups module has loaded, after this file is imported.
from slicer import (
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLTableNode,
)

from VesselReconLib import slicer_compat, slicer_logic, slicer_samples, slicer_selftest, slicer_widget

# Apply, Evaluate and Load sample call the core logic (VesselReconLib.angio3d.logic.Angio3DLogic)
# with keyword arguments only; keywords it does not accept are dropped with a warning:
#   process(viewA, viewB, pointsA, pointsB, frameA=0, frameB=0,
#           primaryAngleA, secondaryAngleA, sidA, sodA, pixelSpacingA,   (view A geometry:
#           primaryAngleB, secondaryAngleB, sidB, sodB, pixelSpacingB,    degrees and mm)
#           outputModel=None, outputCenterline=None, outputTable=None,
#           model="lite", device="auto", progress=None, cancel=None, background=None)
#       -> Angio3DResult (outputModel, outputCenterline, outputTable, ... nodes)
#   evaluate(prediction, reference, table=None) -> metrics table node
#   load_sample() -> Angio3DSample (viewA, viewB, pointsA, pointsB, referenceModel, ... nodes and the
#                    geometry values primaryAngleA ...; read by attribute name)
# View volumes hold the frames along K; points* hold the start and end points (2 control points).
# `model` is a shipped preset or a checkpoint path; `progress(fraction, message)`, `cancel() -> bool`
# follow VesselReconLib.progress; `background(fn)` runs the MRML-free heavy part off the GUI thread.
# Missing inputs must raise VesselReconLib.errors.InputError (shown to the user as is).
PROCESS_ARGS = {
    "viewA": "viewA",
    "viewB": "viewB",
    "pointsA": "pointsA",
    "pointsB": "pointsB",
    "frameA": "frameA",
    "frameB": "frameB",
    "primaryAngleA": "primaryAngleA",
    "secondaryAngleA": "secondaryAngleA",
    "sidA": "sidA",
    "sodA": "sodA",
    "pixelSpacingA": "pixelSpacingA",
    "primaryAngleB": "primaryAngleB",
    "secondaryAngleB": "secondaryAngleB",
    "sidB": "sidB",
    "sodB": "sodB",
    "pixelSpacingB": "pixelSpacingB",
    "qcaCalibration": "qcaCalibration",
    "outputModel": "outputModel",
    "outputCenterline": "outputCenterline",
    "outputTable": "outputTable",
}
EVALUATE_ARGS = {
    "outputModel": "prediction",
    "referenceModel": "reference",
    "evaluationTable": "table",
}
REQUIRED_INPUTS = ("viewA", "viewB", "pointsA", "pointsB")
# The self-test's floor on the phantom sample (the shipped model must reach it on the CPU), and the
# outputs that must lie on the input's voxel grid.
SELF_TEST = {"metric": ("fscore_1mm", 0.5)}


#
# Angio3D
#


class Angio3D(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Angio3D")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Vessel Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = list(slicer_widget.CONTRIBUTORS)
        self.parent.helpText = _("""
Reconstructs a 3D coronary vessel (surface mesh and centerline with radii) from two X-ray
angiography views. For each view select the angiogram, browse to a well-filled frame (ideally
end-diastole) and click <b>Use this frame</b>, place the start and end points of the vessel, and
check the C-arm geometry (angles, distances and pixel spacing, as in the DICOM header). The network
segments the vessel in both views and the two segmentations are matched along epipolar lines.
<b>Load sample</b> generates a synthetic two-view angiogram of a known 3D vessel.
See the <a href="https://github.com/vesselrecon/SlicerVesselRecon#angio3d">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
This module implements 3DAngioNet from K. M. Bransby, V. Tufaro, M. Cap, G. Slabaugh, C. Bourantas and
Q. Zhang, <i>3D Coronary Vessel Reconstruction from Bi-Plane Angiography using Graph Convolutional
Networks</i> (IEEE International Symposium on Biomedical Imaging, ISBI 2023; arXiv:2302.14795).
Please cite that paper when you use the module. Part of the VesselRecon extension.
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the generated Angio3D sample to the Sample Data module (nothing is downloaded)."""
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    slicer_samples.register_sample_data("Angio3D", Angio3DLogic, os.path.join(iconsPath, "Angio3D.png"),
                                       PROCESS_ARGS, EVALUATE_ARGS, inputs=REQUIRED_INPUTS)


#
# Angio3DParameterNode
#


Angio3DParameterNode = None  # defined by angio3DParameterNodeClass() on first use


def angio3DParameterNodeClass():
    """The parameter node wrapper class, defined on first use (when the Markups module is loaded)."""
    global Angio3DParameterNode
    if Angio3DParameterNode is not None:
        return Angio3DParameterNode
    vtkMRMLMarkupsFiducialNode = slicer_compat.mrml_class("vtkMRMLMarkupsFiducialNode")
    vtkMRMLMarkupsCurveNode = slicer_compat.mrml_class("vtkMRMLMarkupsCurveNode")

    @parameterNodeWrapper
    class Angio3DParameterNode:
        """
        The parameters needed by module.

        viewA, viewB - angiography runs (frames along K); pointsA, pointsB - start and end points per view.
        frameA, frameB - frame index used in each view.
        primaryAngle*, secondaryAngle* (degrees), sid*, sod*, pixelSpacing* (mm) - C-arm geometry per view.
        model, checkpointPath, device - network weights (shipped preset or "Load checkpoint…") and device.
        qcaCalibration - the opt-in QCA calibrator on the main branch's % stenosis (readings >= 30 % only).
        outputModel, outputCenterline, outputTable - vessel mesh, centerline with radii, measurements.
        referenceModel, evaluationTable - reference mesh and metrics table (Evaluation).
        """

        viewA: vtkMRMLScalarVolumeNode
        viewB: vtkMRMLScalarVolumeNode
        pointsA: vtkMRMLMarkupsFiducialNode
        pointsB: vtkMRMLMarkupsFiducialNode
        frameA: Annotated[int, WithinRange(0, 9999)] = 0
        frameB: Annotated[int, WithinRange(0, 9999)] = 0
        primaryAngleA: Annotated[float, WithinRange(-180.0, 180.0)] = -30.0
        secondaryAngleA: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
        sidA: Annotated[float, WithinRange(100.0, 2000.0)] = 1000.0
        sodA: Annotated[float, WithinRange(50.0, 2000.0)] = 750.0
        pixelSpacingA: Annotated[float, WithinRange(0.01, 5.0)] = 0.3
        primaryAngleB: Annotated[float, WithinRange(-180.0, 180.0)] = 60.0
        secondaryAngleB: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
        sidB: Annotated[float, WithinRange(100.0, 2000.0)] = 1000.0
        sodB: Annotated[float, WithinRange(50.0, 2000.0)] = 750.0
        pixelSpacingB: Annotated[float, WithinRange(0.01, 5.0)] = 0.3
        model: str = "lite"
        checkpointPath: Path
        device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
        qcaCalibration: bool = False
        outputModel: vtkMRMLModelNode
        outputCenterline: vtkMRMLMarkupsCurveNode
        outputTable: vtkMRMLTableNode
        referenceModel: vtkMRMLModelNode
        evaluationTable: vtkMRMLTableNode

    return Angio3DParameterNode


#
# Angio3DWidget
#


class Angio3DWidget(slicer_widget.ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Parameter-node binding, Apply/Cancel/progress, sample loading and evaluation are shared by all
    VesselRecon modules: see VesselReconLib.slicer_widget.ModuleWidgetMixin. This class adds the
    frame browsing of the two views.
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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/Angio3D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = Angio3DLogic()
        self.setupVesselRecon(slicer.app.processEvents)

        self.frameSliders = {"A": self.ui.frameSliderA, "B": self.ui.frameSliderB}
        self.ui.frameSliderA.connect("valueChanged(int)", lambda frame: self.onFrameSliderChanged("A", frame))
        self.ui.frameSliderB.connect("valueChanged(int)", lambda frame: self.onFrameSliderChanged("B", frame))
        self.ui.useFrameAButton.connect("clicked(bool)", lambda checked: self.onUseFrame("A"))
        self.ui.useFrameBButton.connect("clicked(bool)", lambda checked: self.onUseFrame("B"))
        self.ui.viewASelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.onViewChanged("A", node))
        self.ui.viewBSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.onViewChanged("B", node))

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def _checkCanApply(self, caller=None, event=None) -> None:
        super()._checkCanApply(caller, event)
        if self._parameterNode is not None and hasattr(self, "frameSliders"):
            for view, slider in self.frameSliders.items():
                slider.maximum = max(self._frameCount(view) - 1, 0)

    def _frameCount(self, view: str) -> int:
        volume = getattr(self._parameterNode, f"view{view}")
        imageData = volume.GetImageData() if volume else None
        return imageData.GetDimensions()[2] if imageData else 0

    def onFrameSliderChanged(self, view: str, frame: int) -> None:
        """Show frame ``frame`` of the view's angiogram in the slice viewers."""
        volume = getattr(self._parameterNode, f"view{view}") if self._parameterNode else None
        if not volume or not volume.GetImageData():
            return
        slicer.util.setSliceViewerLayers(background=volume, fit=False)
        dims = volume.GetImageData().GetDimensions()
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        ras = ijkToRas.MultiplyPoint(((dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, frame, 1.0))
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, ras[0], ras[1], ras[2])

    def onViewChanged(self, view: str, volume) -> None:
        """Fill the view's C-arm geometry from the volume's DICOM attributes (set by the Angio3D loader)."""
        if self._parameterNode is None or volume is None:
            return
        fields = {"PositionerPrimaryAngle": "primaryAngle", "PositionerSecondaryAngle": "secondaryAngle",
                  "DistanceSourceToDetector": "sid", "DistanceSourceToPatient": "sod", "ImagerPixelSpacing": "pixelSpacing"}
        for tag, field in fields.items():
            value = volume.GetAttribute(f"DICOM.{tag}")
            if value:
                try:
                    setattr(self._parameterNode, f"{field}{view}", float(value.split()[0]))
                except (ValueError, TypeError):
                    pass
        self._selectDefaultFrame(view, volume)

    def _selectDefaultFrame(self, view: str, volume) -> None:
        """Start on the run's representative frame, else its frame of maximal contrast (frame 0 of a cine
        run is usually before the contrast arrives)."""
        try:
            from VesselReconLib.angio3d.logic import Angio3DLogic as CoreLogic

            frame = int(CoreLogic.choose_frame(volume, None))
        except Exception:  # never block selecting a view
            return
        setattr(self._parameterNode, f"frame{view}", frame)
        if hasattr(self, "frameSliders"):
            self.frameSliders[view].maximum = max(self._frameCount(view) - 1, frame)
            self.frameSliders[view].value = frame

    def onUseFrame(self, view: str) -> None:
        """Use the frame shown by the view's slider for the reconstruction."""
        if self._parameterNode is not None:
            setattr(self._parameterNode, f"frame{view}", self.frameSliders[view].value)


#
# Angio3DLogic
#


class Angio3DLogic(ScriptedLoadableModuleLogic):
    """Angio3D logic for Slicer: ScriptedLoadableModuleLogic plus the Qt-free core logic.

    Instances are of ``class Angio3DLogic(ScriptedLoadableModuleLogic, CoreAngio3DLogic)`` where
    the core, ``VesselReconLib.angio3d.logic.Angio3DLogic``, is imported on first instantiation
    (it loads torch), so Slicer starts fast.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(slicer_logic.bind_core(cls, "angio3d", "Angio3DLogic"))

    def __init__(self) -> None:
        """Called when the logic class is instantiated (also initializes the core logic)."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return angio3DParameterNodeClass()(super().getParameterNode())


#
# Angio3DTest
#


class Angio3DTest(ScriptedLoadableModuleTest):
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
        self.test_Angio3D1()

    def test_Angio3D1(self):
        """Generated two-view sample -> 3D vessel on the CPU -> evaluation; a missing input is refused."""
        slicer_selftest.self_test(self, Angio3DLogic(), PROCESS_ARGS, EVALUATE_ARGS, REQUIRED_INPUTS, **SELF_TEST)

"""Angio3D Logic: two angiograms + C-arm geometry + SOI points -> 3D lumen mesh, centreline, QCA table,
2D segmentations and mesh reprojections, all as MRML nodes. Qt-free; console example::

    from VesselReconLib.angio3d.logic import Angio3DLogic
    logic = Angio3DLogic()
    sample = logic.load_sample()
    result = logic.process(sample.viewA, sample.viewB, sample.pointsA, sample.pointsB)
    print(result.qca)
    logic.evaluate(result.outputModel, sample.referenceModel)

View volumes hold the frames along K. When a view volume carries the ``DICOM.*`` geometry attributes
(set by :meth:`Angio3DLogic.load_xa` and :meth:`load_sample`) its geometry is read from them; typed
values (``primaryAngleA`` ...) override them. Each markups point list holds the start and end point
of the main branch, then start (at the bifurcation) and end of each side branch.

Volumes made here are placed on the detector plane in patient space (RAS), so the mesh, the
centreline and both views line up in the 3D view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .. import meshes, mrml
from ..errors import InputError
from ..logic_base import CURVE, MARKUPS, MODEL, TABLE, VesselReconLogic
from ..progress import as_reporter
from . import template
from .geometry import CArmGeometry

log = logging.getLogger(__name__)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NAMES = {"model": "Angio3D lumen mesh", "centerline": "Angio3D centerline", "table": "Angio3D QCA",
         "segmentation": "Angio3D view {view} segmentation", "reprojection": "Angio3D view {view} mesh reprojection",
         "metrics": "Angio3D evaluation"}
ATTRIBUTE = "DICOM.{}"
GEOMETRY_ARGS = ("primaryAngle", "secondaryAngle", "sid", "sod", "pixelSpacing")
BRANCH_COLORS = [(0.9, 0.25, 0.2), (0.2, 0.6, 0.95), (0.3, 0.85, 0.3), (0.95, 0.8, 0.2)]


def detector_ijk_to_ras(geometry: CArmGeometry) -> np.ndarray:
    """IJK-to-RAS placing pixel (i = column, j = row) on the detector plane; K (the frames) runs from the detector
    towards the source, so that the frame is right-handed: Slicer's volume reader flips the K axis of a left-handed
    one (u, v, beam), and a saved scene would come back with its frames in reverse order."""
    rotation = geometry.rotation() * np.array([1.0, 1.0, -1.0])
    k = geometry.intrinsics()
    centre = geometry.source + geometry.sid * geometry.direction
    origin = centre - k[0, 2] * geometry.pixel_spacing[1] * rotation[:, 0] - k[1, 2] * geometry.pixel_spacing[0] * rotation[:, 1]
    lps = mrml.ijk_to_ras_matrix((geometry.pixel_spacing[1], geometry.pixel_spacing[0], 1.0), origin, rotation)
    return LPS_TO_RAS @ lps


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, float) * np.array([-1.0, -1.0, 1.0])


@dataclass
class Angio3DResult:
    """Nodes written by :meth:`Angio3DLogic.process` and the measures."""

    outputModel: object
    outputCenterline: object
    outputTable: object
    outputSegmentationA: object
    outputSegmentationB: object
    outputReprojectionA: object
    outputReprojectionB: object
    sideCenterlines: list = field(default_factory=list)
    qca: dict = field(default_factory=dict)
    epipolarErrorPx: float = float("nan")
    epipolarErrorBeforePx: float = float("nan")
    timings: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    frames: tuple = (0, 0)
    _reconstruction: object = field(default=None, repr=False)

    @property
    def reconstruction(self):
        """The array-level :class:`~.pipeline.Reconstruction`."""
        return self._reconstruction


@dataclass
class Angio3DSample:
    """Nodes and values made by :meth:`Angio3DLogic.load_sample`: both views with their SOI points, the
    true lumen mesh and 2D SOI masks, each view's geometry (degrees and mm) and the true % stenosis."""

    viewA: object
    viewB: object
    pointsA: object
    pointsB: object
    referenceModel: object
    referenceMaskA: object
    referenceMaskB: object
    primaryAngleA: float
    secondaryAngleA: float
    sidA: float
    sodA: float
    pixelSpacingA: float
    primaryAngleB: float
    secondaryAngleB: float
    sidB: float
    sodB: float
    pixelSpacingB: float
    stenosisPercent: float


class Angio3DLogic(VesselReconLogic):
    """3DAngioNet in Slicer: :meth:`process`, :meth:`evaluate`, :meth:`load_sample`, :meth:`load_xa`."""

    method = "angio3d"
    creator = "Angio3D"

    def model(self, model: str = "lite", device: str = "auto"):
        """The network for a preset (the main ``angio3d-<preset>`` model, not its ablations), a shipped
        model name or a checkpoint path; cached."""
        from .. import registry

        names = {e.name for e in registry.load_registry() if e.module == self.method}
        preferred = f"{self.method}-{model}"
        return super().model(preferred if preferred in names else model, device)

    # ------------------------------------------------------------------ inputs
    def view_geometry(self, volume, primaryAngle=None, secondaryAngle=None, sid=None, sod=None,
                      pixelSpacing=None) -> CArmGeometry:
        """A view's geometry: typed values over the volume's ``DICOM.*`` attributes.

        :raises InputError: when a value is neither typed nor stored on the volume.
        """
        array, _ = mrml.volume_to_array(volume)
        stored = {k: volume.GetAttribute(ATTRIBUTE.format(k)) for k in
                  ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "DistanceSourceToDetector",
                   "DistanceSourceToPatient", "ImagerPixelSpacing")}
        typed = dict(zip(stored, (primaryAngle, secondaryAngle, sid, sod, pixelSpacing)))
        tags = {}
        for key in stored:
            value = typed[key] if typed[key] is not None else stored[key]
            if value is None:
                raise InputError(f"The geometry of {volume.GetName()} lacks {key}: type it in "
                                 "(C-arm angles in degrees, distances and pixel spacing in mm).")
            tags[key] = value
        spacing = tags["ImagerPixelSpacing"]
        try:
            if isinstance(spacing, str):
                spacing = [float(s) for s in spacing.replace("\\", " ").replace(",", " ").split()]
            spacing = np.broadcast_to(np.asarray(spacing, float), (2,))
        except ValueError:
            raise InputError(f"The pixel spacing of {volume.GetName()} is {tags['ImagerPixelSpacing']!r}; give one "
                             "value or two (row, column) in mm.") from None
        tags["ImagerPixelSpacing"] = spacing.tolist()
        tags["Rows"], tags["Columns"] = array.shape[-2], array.shape[-1]
        return CArmGeometry.from_dicom(tags)

    @staticmethod
    def frame_of(volume, frame: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One frame (rows, columns) of a view volume and that frame's IJK-to-RAS."""
        array, ijk_to_ras = VesselReconLogic.read_volume(volume, f"{name} is missing: select an angiogram.")
        VesselReconLogic.check_range(frame, f"The frame of {name}", 0, integer=True)
        if array.ndim != 3:
            raise InputError(f"{name} must be a grayscale image or a run of frames; got shape {array.shape}.")
        if not 0 <= int(frame) < array.shape[0]:
            raise InputError(f"{name} has {array.shape[0]} frames; frame {frame} does not exist.")
        shift = np.eye(4)
        shift[2, 3] = int(frame)
        return array[int(frame)].astype(np.float32), ijk_to_ras @ shift

    @staticmethod
    def soi_pixels(points_node, ijk_to_ras: np.ndarray, name: str) -> np.ndarray:
        """Markups control points -> (branches, 2, 2) (column, row) pixels of one view."""
        if points_node is None:
            raise InputError(f"The SOI points of {name} are missing: place the start and end points.")
        mrml.check_node_class(points_node, MARKUPS, f"The SOI points of {name}")
        n = points_node.GetNumberOfControlPoints()
        if n < 2 or n % 2:
            raise InputError(f"{name} has {n} SOI points; place a start and an end point per branch "
                             "(main branch first).")
        ras = np.array([points_node.GetNthControlPointPositionWorld(i) for i in range(n)], float)
        ijk = (np.linalg.inv(ijk_to_ras) @ np.c_[ras, np.ones(n)].T).T[:, :3]
        return ijk[:, :2].reshape(-1, 2, 2)

    # ------------------------------------------------------------------ process
    def process(self, viewA, viewB, pointsA, pointsB, frameA: int | None = None, frameB: int | None = None,
                primaryAngleA: float | None = None, secondaryAngleA: float | None = None,
                sidA: float | None = None, sodA: float | None = None, pixelSpacingA: float | None = None,
                primaryAngleB: float | None = None, secondaryAngleB: float | None = None,
                sidB: float | None = None, sodB: float | None = None, pixelSpacingB: float | None = None,
                outputModel=None, outputCenterline=None, outputTable=None, model: str = "lite",
                device: str = "auto", segmenter: str = "net", refine: bool = True, calibrate: bool = True,
                radiusFusion: str = "lesion", qcaRadius: str = "regressor", qcaCalibration: bool = False,
                progress=None, cancel=None,
                background=None) -> Angio3DResult:
        """Reconstruct the SOI from two views and write the outputs.

        :param viewA: angiography volume of view A (frames along K); ``viewB`` likewise (all ``*B`` too).
        :param pointsA: markups point list with the SOI start/end points in view A (pairs per branch).
        :param frameA: frame index of view A to use; None takes the DICOM representative frame, else the
            frame of maximal vessel contrast.
        :param primaryAngleA: PositionerPrimaryAngle (LAO+) in degrees; None reads the volume's attribute.
            ``secondaryAngleA`` (degrees), ``sidA``, ``sodA`` (mm) likewise.
        :param pixelSpacingA: ImagerPixelSpacing in mm (one value or (row, column)).
        :param outputModel: model node to overwrite (else "Angio3D lumen mesh" is created/updated);
            ``outputCenterline`` (main branch curve) and ``outputTable`` (QCA) likewise.
        :param model: shipped preset ("lite") or checkpoint path.
        :param segmenter: "net" (U-Net) or "frangi" (classical baseline).
        :param refine: run surface refinement; ``calibrate``: LM refinement of view B's geometry.
        :param radiusFusion: mesh radii from the two views: "lesion" (mean, but the clean view where the other
            is overlapped or floored), "mean" (paper) or "min". The QCA measures each view along its own
            path (radii read by the shipped lumen regressor and strip reader, then, on the main branch, from
            both views by the two-view fusion) and reports the view that shows the tighter lesion, naming it
            (``radius_view``) and the reading (``radius_fusion``).
        :param qcaCalibration: correct the main branch's % with the QCA calibrator (off by default: it learned the
            phantoms' 30-90 % lesions; ungated it read a real 4 % reading as 31 %, so it leaves readings below 30 %).
        :param qcaRadius: QCA radii from the shipped lumen "regressor" refined by the strip reader (default) or
            the "profile" model fit (for angiograms whose imaging chain differs much from the training phantoms').
        :param background: optional ``fn -> fn()`` runner for the MRML-free computation (GUI thread safety).
        :returns: :class:`Angio3DResult`.
        :raises InputError: bad inputs, before any scene change.
        """
        reporter = as_reporter(progress, cancel)
        self.check_outputs(outputModel=(outputModel, MODEL), outputCenterline=(outputCenterline, CURVE),
                           outputTable=(outputTable, TABLE))
        frameA, frameB = self.choose_frame(viewA, frameA), self.choose_frame(viewB, frameB)
        image_a, ijk_a = self.frame_of(viewA, frameA, "View A")
        image_b, ijk_b = self.frame_of(viewB, frameB, "View B")
        geometry_a = self.view_geometry(viewA, primaryAngleA, secondaryAngleA, sidA, sodA, pixelSpacingA)
        geometry_b = self.view_geometry(viewB, primaryAngleB, secondaryAngleB, sidB, sodB, pixelSpacingB)
        pixels = [self.soi_pixels(pointsA, ijk_a, "View A"), self.soi_pixels(pointsB, ijk_b, "View B")]
        if pixels[0].shape != pixels[1].shape:
            raise InputError("Both views need the same number of SOI points (a start and an end per branch).")
        from ..device import resolve_device  # torch: imported on first use, so the sample needs none
        from .pipeline import reconstruct, validate_inputs

        validate_inputs([image_a, image_b], [geometry_a, geometry_b], pixels)
        resolve_device(device)  # refuse a bad device even when no network runs
        net = self.model(model, device)[0] if (segmenter == "net" or refine) else None
        torch_device = next(net.parameters()).device if net is not None else "cpu"

        def compute():
            return reconstruct([image_a, image_b], [geometry_a, geometry_b], pixels, net=net, device=torch_device,
                               segmenter=segmenter, refine=refine, calibrate=calibrate, radius_fusion=radiusFusion,
                               qca_radius=qcaRadius, qca_calibration=qcaCalibration, progress=reporter.sub(0.0, 0.9),
                               cancel=cancel)

        result = background(compute) if background is not None else compute()
        reporter(0.92, "writing outputs")
        with self.writing(reporter):
            outputs = self._write_outputs(result, [ijk_a, ijk_b], [viewA, viewB], outputModel, outputCenterline,
                                          outputTable)
        self._remove_stale_branches(len(result.branches))
        reporter(1.0, "done")
        return outputs

    def _remove_stale_branches(self, branches: int) -> None:
        """Remove the side-branch curves an earlier run with more branches left ("... branch 3" of a 2-branch run);
        called once this run's outputs are committed, so a failed or cancelled run leaves them as they were."""
        prefix = f"{NAMES['centerline']} branch "

        def stale(name: str) -> bool:
            number = name[len(prefix):] if name.startswith(prefix) else ""
            return number.isdigit() and int(number) > branches

        mrml.remove_own_outputs(self.scene, "vtkMRMLMarkupsCurveNode", self.creator, stale)

    def _write_outputs(self, result, ijk_to_ras, views, output_model, output_centerline, output_table) -> Angio3DResult:
        scene = self.scene
        mesh = meshes.transform(result.mesh, LPS_TO_RAS)
        model_node = mrml.polydata_to_model(mesh, NAMES["model"], color=(0.85, 0.2, 0.2), node=output_model,
                                            scene=scene, creator=self.creator)
        curves = []
        for index, branch in enumerate(result.branches):
            centres, radii = branch.refined_centerline()
            name = NAMES["centerline"] if index == 0 else f"{NAMES['centerline']} branch {index + 1}"
            curves.append(mrml.polyline_to_curve(lps_to_ras_points(centres), name, radii=radii,
                                                 node=output_centerline if index == 0 else None, scene=scene,
                                                 creator=self.creator))
        table = mrml.rows_to_table(self.qca_rows(result), NAMES["table"], node=output_table, scene=scene,
                                   creator=self.creator)
        segmentations, reprojections = [], []
        silhouettes = result.silhouettes()
        for view, mask, silhouette, matrix, volume in zip("AB", result.masks, silhouettes, ijk_to_ras, views):
            segmentations.append(mrml.labelmap_to_segmentation(
                mask.astype(np.uint8), matrix, [mrml.SegmentSpec(1, "Vessel (2D)", (0.95, 0.75, 0.1))],
                NAMES["segmentation"].format(view=view), scene=scene, creator=self.creator))
            reprojections.append(mrml.array_to_volume(silhouette, matrix, NAMES["reprojection"].format(view=view),
                                                      scene=scene, labelmap=True, creator=self.creator))
        return Angio3DResult(model_node, curves[0], table, *segmentations, *reprojections, sideCenterlines=curves[1:],
                             qca=result.qca, epipolarErrorPx=result.calibration.epipolar_error_after,
                             epipolarErrorBeforePx=result.calibration.epipolar_error_before,
                             timings=result.timings, quality=result.quality, warnings=result.warnings,
                             _reconstruction=result)

    @staticmethod
    def qca_rows(result) -> list[dict]:
        """QCA per branch (main first): length, MLD, reference diameter, % diameter stenosis (with the opt-in QCA
        calibrator, on the main branch, the calibrated one and the reading it corrected in
        ``percent_diameter_stenosis_raw``; NaN otherwise), the view whose
        radii gave the MLD (``radius_view``: "A", "B", "A+B" when both agree, "fused" when the pipeline gave none), how
        each view's radii were read (``radius_fusion``: the two-view fusion or the view's own strip), whether another vessel covers a stretch of it in
        both views, a 2D path has left the vessel or the two views' narrowest points lie apart (``unreliable``; the
        warnings say which; ``mld_apart_mm`` how far apart, NaN when the pipeline gave no per-view reading) and the
        warnings ("" when none)."""
        from .pipeline import quantitative_coronary_analysis

        rows = []
        for index, branch in enumerate(result.branches):
            qca = branch.qca or quantitative_coronary_analysis(*branch.refined_centerline())
            rows.append({"branch": "main" if index == 0 else f"side {index}",
                         "length_mm": round(qca["length_mm"], 3), "mld_mm": round(qca["mld_mm"], 3),
                         "reference_diameter_mm": round(qca["reference_diameter_mm"], 3),
                         "percent_diameter_stenosis": round(qca["percent_diameter_stenosis"], 2),
                         "percent_diameter_stenosis_raw": round(qca.get("percent_diameter_stenosis_raw", float("nan")), 2),
                         "mld_position_mm": round(qca["mld_position_mm"], 3),
                         "mld_apart_mm": round(qca.get("mld_apart_mm", float("nan")), 3),
                         "radius_view": qca.get("radius_view", "fused"),
                         "radius_fusion": qca.get("radius_fusion", "sample by sample"),
                         "unreliable": bool(qca.get("unreliable", False)),
                         "warnings": "; ".join(qca.get("warnings", []))})
        return rows

    @staticmethod
    def choose_frame(volume, frame):
        """``frame`` when given, else the volume's DICOM representative frame, else the frame of maximal
        vessel contrast (frame 0 of a cine run is usually before the contrast arrives)."""
        if frame is not None or volume is None:
            return frame
        from .dicom_io import default_frame

        array = mrml.volume_to_array(volume)[0]
        stored = volume.GetAttribute(ATTRIBUTE.format("RepresentativeFrameNumber"))
        return default_frame(array if array.ndim == 3 else array[None], int(stored) if stored else None)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, prediction, reference, table=None, reprojections=None, referenceMasks=None,
                 tauMm: float = 1.0):
        """Compare a reconstructed mesh with a reference mesh (and reprojections with 2D truth masks).

        :param prediction: model node (the output mesh).
        :param reference: model node of the true lumen surface.
        :param reprojections: optional labelmap nodes (one per view) of the mesh reprojection.
        :param referenceMasks: optional labelmap nodes of the true 2D SOI masks, same order.
        :param tauMm: distance threshold of the F-score (mm).
        :returns: the metrics table node.
        """
        from .. import metrics

        self.check_outputs(prediction=(prediction, MODEL), reference=(reference, MODEL))
        if prediction is None or reference is None or prediction.GetPolyData() is None or reference.GetPolyData() is None:
            raise InputError("Select the reconstructed mesh and a reference mesh to evaluate.")
        pred, ref = meshes.points_of(prediction.GetPolyData()), meshes.points_of(reference.GetPolyData())
        if not len(pred) or not len(ref):
            raise InputError("The prediction or the reference mesh has no points.")
        report = metrics.surface_report(pred, ref, tauMm)
        row = {"hausdorff_mm": report["hausdorff"], "chamfer_mm": report["chamfer"], f"fscore_{tauMm:g}mm": report["fscore"]}
        if len(pred) == len(ref):
            row["vertex_mae_mm"] = metrics.vertex_mae(pred, ref)
        for view, (rep, truth) in enumerate(zip(reprojections or [], referenceMasks or [])):
            a, b = mrml.volume_to_array(rep)[0] > 0, mrml.volume_to_array(truth)[0] > 0
            row[f"dice_view_{'AB'[view]}"] = metrics.dice(a, b)
            row[f"jaccard_view_{'AB'[view]}"] = metrics.iou(a, b)
        rows = [{"metric": k, "value": float(v)} for k, v in row.items()]
        return mrml.rows_to_table(rows, NAMES["metrics"], node=table, scene=self.scene, creator=self.creator)

    # ------------------------------------------------------------------ data
    def add_view(self, frames: np.ndarray, geometry: CArmGeometry, name: str, representative: int | None = None,
                 new: bool = False):
        """A view volume (frames along K) on its detector plane, with the DICOM geometry (and the
        1-based ``RepresentativeFrameNumber`` when known) as attributes; ``new``: a loaded file's own node
        (:func:`mrml.output_node`)."""
        frames = np.asarray(frames, np.float32)
        frames = frames[None] if frames.ndim == 2 else frames
        node = mrml.array_to_volume(frames, detector_ijk_to_ras(geometry), name, scene=self.scene, creator=self.creator,
                                    new=new)
        for key, value in geometry.to_dicom().items():
            if key in ("Rows", "Columns", "DetectorOffsetPixels"):
                continue
            node.SetAttribute(ATTRIBUTE.format(key), " ".join(map(str, value)) if isinstance(value, list) else str(value))
        if representative is not None:
            node.SetAttribute(ATTRIBUTE.format("RepresentativeFrameNumber"), str(int(representative)))
        return node

    def add_points(self, pixels: np.ndarray, volume, name: str, frame: int = 0):
        """A markups point list from (branches, 2, 2) pixels of a view volume."""
        _, ijk_to_ras = mrml.volume_to_array(volume)
        pixels = np.asarray(pixels, float).reshape(-1, 2)
        ras = (ijk_to_ras @ np.c_[pixels, np.full(len(pixels), frame), np.ones(len(pixels))].T).T[:, :3]
        node = mrml.output_node("vtkMRMLMarkupsFiducialNode", name, scene=self.scene, creator=self.creator)
        node.RemoveAllControlPoints()
        for index, point in enumerate(ras):
            branch, end = divmod(index, 2)
            node.AddControlPoint(*point, f"{'main' if branch == 0 else f'side{branch}'}-{'end' if end else 'start'}")
        return node

    def load_xa(self, path, name: str | None = None):
        """Load a (multi-frame) XA DICOM file as a view volume with its geometry attributes."""
        from pathlib import Path

        from .dicom_io import read_xa, representative_frame

        frames, geometry, tags = read_xa(path)
        if geometry is None:
            missing = [k for k, v in tags.items() if v is None]
            raise InputError(f"{Path(path).name} lacks {', '.join(missing)}; type the geometry in after loading "
                             "it with Slicer's DICOM module.")
        return self.add_view(frames, geometry, name or Path(path).stem, representative_frame(path), new=True)

    def load_sample(self, seed: int = 0) -> Angio3DSample:
        """Generate a two-view phantom (main branch with a stenosis and a side branch) into the scene.

        :returns: :class:`Angio3DSample` (``viewA``, ``viewB``, ``pointsA``, ``pointsB``, ``referenceModel``,
            ``referenceMaskA``/``B``, the geometry values ``primaryAngleA`` ... and ``stenosisPercent``).
        """
        from ..phantoms.xray import make_case
        from .stitching import union_polydata

        case = make_case(seed)
        out = {}
        for view, geometry, rendered, pixels in zip("AB", case["geometries"], case["views"], case["soi_points"]):
            volume = self.add_view(rendered["image"], geometry, f"Angio3D sample view {view}")
            out[f"view{view}"] = volume
            out[f"points{view}"] = self.add_points(np.array(pixels), volume, f"Angio3D sample SOI points {view}")
            out[f"referenceMask{view}"] = mrml.array_to_volume(
                rendered["soi"], detector_ijk_to_ras(geometry), f"Angio3D sample view {view} truth",
                scene=self.scene, labelmap=True, creator=self.creator)
            out.update({f"{arg}{view}": value for arg, value in zip(GEOMETRY_ARGS, (
                geometry.primary_angle, geometry.secondary_angle, geometry.sid, geometry.sod, geometry.pixel_spacing[0]))})
        truth = [template.template_vertices(c["points"], c["radii"]) for c in case["centerlines"]]
        out["referenceModel"] = mrml.polydata_to_model(meshes.transform(union_polydata(truth), LPS_TO_RAS),
                                                        "Angio3D sample true lumen", color=(0.3, 0.8, 0.3),
                                                        opacity=0.5, scene=self.scene, creator=self.creator)
        out["stenosisPercent"] = float(case["case"].stenosis["percent_diameter"])
        return Angio3DSample(**out)

"""VesselSDF Logic: CT volume in, vessel model / segmentation / SDF volume / measurement table out.

Qt-free; used by the Slicer module, the CLI and the Python console::

    from VesselReconLib.vesselsdf.logic import VesselSDFLogic
    logic = VesselSDFLogic()
    sample = logic.load_sample()
    result = logic.process(sample.inputVolume, roiMask=sample.roiMask,
                           referenceSegmentation=sample.referenceSegmentation)
    print(result.metrics)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import meshes, metrics, mrml
from ..errors import InputError, check_image
from ..logic_base import MODEL, SEGMENTATION, TABLE, VOLUME, VesselReconLogic
from ..progress import as_reporter
from .realdata import check_not_lvsd_slab

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # inference imports torch: loaded on first use, so the sample needs none
    from .inference import Reconstruction

SDF_COLORS = ((0.05, 0.2, 0.8), (1.0, 1.0, 1.0), (0.8, 0.05, 0.05))
"""Diverging blue (inside, negative) - white (wall) - red (outside, positive)."""
SDF_DISPLAY_MM = 10.0
VESSEL_COLOR = (0.85, 0.2, 0.2)


@dataclass
class VesselSDFResult:
    """Nodes created or updated by :meth:`VesselSDFLogic.process` and the measurements."""

    outputModel: object
    outputSegmentation: object
    outputSdfVolume: object
    outputTable: object
    outputOccupancyVolume: object | None = None
    metrics: dict = field(default_factory=dict)
    reconstruction: Reconstruction | None = None

    @property
    def warnings(self) -> list[str]:
        """What mapping the input noted (unusual spacing, non-HU values, the automatic liver ROI, ...)."""
        canonical = self.reconstruction.canonical if self.reconstruction is not None else None
        return list(canonical.notes) if canonical is not None else []


@dataclass
class VesselSDFSample:
    """Nodes of a generated phantom case (named like the module's parameters)."""

    inputVolume: object
    roiMask: object
    referenceSegmentation: object
    referenceModel: object


class VesselSDFLogic(VesselReconLogic):
    """Reconstruct smooth, connected vessels from thick-slice contrast CT with VesselSDF."""

    method = "vesselsdf"
    creator = "VesselSDF"

    # ---------------------------------------------------------------- inputs

    def _mask_array(self, node, grid, shape, what: str = "The ROI mask") -> np.ndarray | None:
        """A labelmap or segmentation node as a boolean KJI array on the grid of volume ``grid``."""
        if node is None:
            return None
        return mrml.labels_on_grid(node, grid, shape, what, "the CT") > 0

    def _read_input(self, inputVolume) -> tuple[np.ndarray, np.ndarray]:
        array, ijk_to_ras = self.read_volume(inputVolume, "Input CT volume is missing: select a CT volume.")
        if array.ndim == 4:
            raise InputError("The input CT has several components per voxel; select a scalar CT volume.")
        return check_image(array, "Input CT volume", 3, min_size=1), ijk_to_ras  # sizes: check_ct_parameters

    # ---------------------------------------------------------------- processing

    def compute(self, volume: np.ndarray, ijk_to_ras: np.ndarray, roi: np.ndarray | None = None,
                model: str = "lite", device: str = "auto", portalVenousWindow: bool = True,
                throughPlaneFactor: int = 0, minComponentMm3: float = 0.0,
                progress=None, cancel=None) -> Reconstruction:
        """Arrays in, :class:`.inference.Reconstruction` out (no scene access).

        :param volume: CT ``[k, j, i]`` (HU when ``portalVenousWindow``).
        :param ijk_to_ras: its geometry.
        :param roi: optional liver/organ mask ``[k, j, i]``; found automatically when None
            (:func:`.preprocess.auto_liver_roi`, classical).
        :param portalVenousWindow: the input is HU (refused when it clearly is not); False accepts
            windowed/uint8 input. Either way the network sees the liver-relative normalisation of
            :mod:`.preprocess` (windowed input is mapped to HU-like values first).
        :param throughPlaneFactor: sub-slices per slice gap for meshing (0: round(Δz/Δx)).
        """
        from .inference import PORTAL_VENOUS_WINDOW, reconstruct

        net, _ = self.model(model, device)
        device_ = next(net.parameters()).device
        return reconstruct(net, volume, ijk_to_ras, device_, PORTAL_VENOUS_WINDOW if portalVenousWindow else None,
                           roi, throughPlaneFactor or None, minComponentMm3, progress, cancel)

    def process(self, inputVolume, roiMask=None, outputModel=None, outputSegmentation=None,
                outputSdfVolume=None, outputOccupancyVolume=None, outputTable=None, model: str = "lite",
                device: str = "auto", portalVenousWindow: bool = True, createOccupancy: bool = False,
                throughPlaneFactor: int = 0, minComponentMm3: float = 0.0,
                referenceSegmentation=None, progress=None, cancel=None, background=None) -> VesselSDFResult:
        """Run VesselSDF on a CT volume and write the outputs into the scene.

        :param inputVolume: thick-slice contrast CT (scalar volume node).
        :param roiMask: optional organ/ROI labelmap volume or segmentation node restricting the work.
        :param outputModel: model node for the vessel surface (default: "<input> vessels").
        :param outputSegmentation: segmentation node for SDF < 0 on the input geometry.
        :param outputSdfVolume: volume node for the SDF (mm, blue-white-red colours).
        :param outputOccupancyVolume: volume node for the occupancy probability (with ``createOccupancy``).
        :param outputTable: table node for the measurements.
        :param model: shipped preset (``lite``) or a checkpoint path.
        :param device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        :param portalVenousWindow: the input is HU (refused when it clearly is not); False accepts
            windowed/uint8 input (mapped to HU-like values, liver median 110 HU).
        :param createOccupancy: also output the stage-1 occupancy probability.
        :param throughPlaneFactor: sub-slices per slice gap for meshing (0: round(Δz/Δx)).
        :param minComponentMm3: drop surface components enclosing less volume (mm³; 0 keeps all).
        :param referenceSegmentation: optional reference segmentation: adds Dice, IoU, Jaccard
            distance, Chamfer ×100 and Hausdorff distance to the table.
        :param progress: ``progress(fraction, message)``; ``cancel() -> bool``.
        :param background: ``background(fn) -> fn()`` runs the scene-free computation (the GUI
            passes a worker-thread runner).
        :raises InputError: bad input or checkpoint, before any scene change.
        """
        reporter = as_reporter(progress, cancel)
        self.check_outputs(outputModel=(outputModel, MODEL), outputSegmentation=(outputSegmentation, SEGMENTATION),
                           outputSdfVolume=(outputSdfVolume, VOLUME), outputOccupancyVolume=(outputOccupancyVolume, VOLUME),
                           outputTable=(outputTable, TABLE))
        volume, ijk_to_ras = self._read_input(inputVolume)
        check_not_lvsd_slab(volume, f"'{inputVolume.GetName()}'")
        check_ct_parameters(volume, ijk_to_ras, portalVenousWindow, throughPlaneFactor, minComponentMm3)
        roi = self._mask_array(roiMask, inputVolume, volume.shape)
        reference = self._reference_array(referenceSegmentation, inputVolume, volume.shape)
        self.model(model, device)
        run = background or (lambda fn: fn())
        recon = run(lambda: self.compute(volume, ijk_to_ras, roi, model, device, portalVenousWindow,
                                         throughPlaneFactor, minComponentMm3, reporter.sub(0.0, 0.85)))
        reporter(0.9, "writing outputs")
        name = inputVolume.GetName() or "CT"
        values = self.measure(recon)
        if reference is not None:
            values.update(self.compare(recon, reference, ijk_to_ras))
            note_reference_outside_roi(recon, reference)
        occupancy_wanted = bool(createOccupancy or outputOccupancyVolume)
        with self.writing(reporter, follow=inputVolume):
            result = self._write_outputs(recon, ijk_to_ras, name, inputVolume, values, outputModel, outputSegmentation,
                                         outputSdfVolume, outputOccupancyVolume if occupancy_wanted else False,
                                         outputTable)
        if not occupancy_wanted:   # an earlier run's occupancy no longer matches these outputs
            mrml.remove_own_outputs(self.scene, "vtkMRMLScalarVolumeNode", self.creator,
                                    lambda node_name: node_name == f"{name} vessel occupancy")
        reporter(1.0, "done")
        return result

    def _reference_array(self, referenceSegmentation, inputVolume, shape) -> np.ndarray | None:
        if referenceSegmentation is None:
            return None
        return self._mask_array(referenceSegmentation, inputVolume, shape, "The reference segmentation")

    def _write_outputs(self, recon: Reconstruction, ijk_to_ras, name, inputVolume, values, outputModel,
                       outputSegmentation, outputSdfVolume, outputOccupancyVolume, outputTable) -> VesselSDFResult:
        scene = self.scene
        model = mrml.polydata_to_model(recon.surface, f"{name} vessels", color=VESSEL_COLOR, node=outputModel,
                                       scene=scene, creator=self.creator)
        segmentation = mrml.labelmap_to_segmentation(
            recon.mask, ijk_to_ras, [mrml.SegmentSpec(1, "Vessels", VESSEL_COLOR)], f"{name} vessel segmentation",
            node=outputSegmentation, reference_volume=inputVolume, scene=scene, creator=self.creator)
        colors = mrml.color_table("VesselSDF diverging", SDF_COLORS, scene=scene)
        sdf = recon.prediction.surface_field()
        sdf_volume = mrml.array_to_volume(sdf.astype(np.float32), ijk_to_ras, f"{name} vessel SDF", node=outputSdfVolume,
                                          scene=scene, color_node_id=colors.GetID(),
                                          window_level=(2 * SDF_DISPLAY_MM, 0.0), creator=self.creator)
        occupancy = None
        if outputOccupancyVolume is not False and recon.prediction.occupancy is not None:
            occupancy = mrml.array_to_volume(recon.prediction.occupancy.astype(np.float32), ijk_to_ras,
                                             f"{name} vessel occupancy", node=outputOccupancyVolume or None,
                                             scene=scene, window_level=(1.0, 0.5), creator=self.creator)
        table = mrml.rows_to_table(metric_rows(values), f"{name} VesselSDF measurements", node=outputTable,
                                   scene=scene, creator=self.creator)
        return VesselSDFResult(model, segmentation, sdf_volume, table, occupancy, values, recon)

    # ---------------------------------------------------------------- measurements

    @staticmethod
    def measure(recon: Reconstruction) -> dict[str, float]:
        """Vessel volume (mm³), surface area (mm²) and connected-component count of the surface."""
        surface = recon.surface
        spacing = {f"spacing_{axis}_mm": float(v) for axis, v in zip("xyz", recon.spacing or ())}
        if surface.GetNumberOfPoints() == 0:
            return {"vessel_volume_mm3": 0.0, "surface_area_mm2": 0.0, "components": 0.0, **spacing}
        area, volume = meshes.surface_area_and_volume(surface)
        return {"vessel_volume_mm3": volume, "surface_area_mm2": area,
                "components": float(len(meshes.component_sizes(surface))), **spacing}

    @staticmethod
    def compare(recon: Reconstruction, reference: np.ndarray, ijk_to_ras: np.ndarray,
                reference_surface=None) -> dict[str, float]:
        """Dice, IoU, Jaccard distance vs a reference mask; Chamfer ×100 / Hausdorff vs its surface.

        A reference labelled on a few slices only (at most a fifth, e.g. one middle slice) is scored
        on those slices:
        Dice, IoU, Jaccard distance, and in-plane Chamfer and HD95 (mm) of the mask outlines.
        """
        from .evaluation import surface_metrics
        from .inference import mesh_zero_level, refine_through_plane, refined_geometry

        labelled = np.asarray(reference).any(axis=(1, 2))
        if reference_surface is None and 0 < labelled.sum() <= max(1, len(labelled) // 5):
            return labelled_slice_scores(recon.mask, reference, labelled, ijk_to_ras)
        report = metrics.segmentation_report(recon.mask, reference)
        if reference_surface is None and np.any(reference):
            field = 0.5 - refine_through_plane(reference.astype(np.float32), recon.factor).numpy()
            reference_surface = mesh_zero_level(field, refined_geometry(ijk_to_ras, recon.factor),
                                                compute_normals=False)
        values = {"dice": report["dice"], "iou": report["iou"], "jaccard_distance": report["jaccard_distance"]}
        if reference_surface is not None and reference_surface.GetNumberOfPoints():
            values.update(surface_metrics(recon.surface, reference_surface))
        return values

    def evaluate(self, prediction, reference, table=None, inputVolume=None, predictionModel=None,
                 referenceModel=None, progress=None, cancel=None, background=None):
        """Compare a predicted vessel segmentation with a reference; returns a table node.

        Rows: the prediction and, when ``inputVolume`` is given, the classical smoothed-threshold
        baseline on that CT. Columns: Dice, IoU, Jaccard distance, Chamfer ×100 (% of the reference
        diagonal), Chamfer and Hausdorff distance (mm), surface components.

        :param prediction: predicted segmentation (e.g. ``result.outputSegmentation``) or labelmap.
        :param reference: reference segmentation or labelmap.
        :param table: table node to overwrite (default: a new "VesselSDF evaluation" table).
        :param inputVolume: the CT; gives the common grid and enables the baseline row.
        :param predictionModel: predicted surface model (else meshed from the prediction).
        :param referenceModel: reference surface model (else meshed from the reference).
        """
        from .evaluation import ROW_NAMES, classical_baseline
        from .inference import (Prediction, Reconstruction, mesh_zero_level, refine_through_plane, refined_geometry,
                                through_plane_factor)

        reporter = as_reporter(progress, cancel)
        if prediction is None or reference is None:
            raise InputError("Select both the predicted and the reference vessel segmentation to evaluate.")
        grid = inputVolume if inputVolume is not None else reference
        if grid.IsA("vtkMRMLSegmentationNode"):
            raise InputError("Select the input CT volume (or a reference labelmap) to define the evaluation grid.")
        volume, ijk_to_ras = (self._read_input(inputVolume) if inputVolume is not None
                              else mrml.volume_to_array(reference))
        predicted = self._mask_array(prediction, grid, volume.shape, "The predicted segmentation")
        expected = self._mask_array(reference, grid, volume.shape, "The reference segmentation")
        spacing = mrml.spacing_of(ijk_to_ras)
        factor = through_plane_factor(spacing)
        reference_surface = referenceModel.GetPolyData() if referenceModel is not None else None

        def recon_of(occupancy: np.ndarray, surface=None) -> Reconstruction:
            pred = Prediction(occupancy=occupancy.astype(np.float32), sdf=None)
            fine = refine_through_plane(pred.surface_field(), factor).numpy()
            matrix = refined_geometry(ijk_to_ras, factor)
            surface = surface if surface is not None else mesh_zero_level(fine, matrix, compute_normals=False)
            return Reconstruction(pred, pred.mask(), surface, fine, matrix, factor)

        reporter(0.2, "comparing")
        candidates = [(ROW_NAMES["lite"], recon_of(predicted, predictionModel.GetPolyData() if predictionModel else None))]
        if inputVolume is not None:
            reporter(0.5, "classical baseline")
            candidates.append((ROW_NAMES["classical"], recon_of(classical_baseline(volume, spacing).occupancy)))
        rows = [{"Method": name, **self.compare(recon, expected, ijk_to_ras, reference_surface),
                 "components": self.measure(recon)["components"]} for name, recon in candidates]
        reporter(1.0, "done")
        return mrml.rows_to_table(rows, "VesselSDF evaluation", node=table, scene=self.scene, creator=self.creator)

    # ---------------------------------------------------------------- sample data

    def load_sample(self, seed: int = 2025, shape: tuple[int, int, int] = (16, 128, 128), progress=None,
                    cancel=None, background=None) -> VesselSDFSample:
        """Generate a CT phantom case into the scene: CT, organ mask, reference segmentation and surface.

        :param seed: phantom seed (cases are deterministic).
        :param shape: thick-slice grid (slices, rows, columns) at 0.7 x 0.7 x 5 mm.
        """
        from ..phantoms.ct import CTPhantomParams, make_ct_phantom

        run = background or (lambda fn: fn())
        case = run(lambda: make_ct_phantom(CTPhantomParams(shape=tuple(shape), seed=seed), progress=progress))
        scene = self.scene
        ct = mrml.array_to_volume(case.image, case.ijk_to_ras, "VesselSDF sample CT", scene=scene,
                                  window_level=(400.0, 100.0), creator=self.creator)
        organ = mrml.array_to_volume(case.organ, case.ijk_to_ras, "VesselSDF sample liver mask", scene=scene,
                                     labelmap=True, creator=self.creator)
        reference = mrml.labelmap_to_segmentation(
            case.labels, case.ijk_to_ras, [mrml.SegmentSpec(1, "Reference vessels", (0.2, 0.6, 0.9))],
            "VesselSDF sample reference", reference_volume=ct, scene=scene, creator=self.creator)
        reference_model = mrml.polydata_to_model(case.mesh(spacing_mm=0.5), "VesselSDF sample reference surface",
                                                 color=(0.2, 0.6, 0.9), opacity=0.4, scene=scene, creator=self.creator)
        return VesselSDFSample(inputVolume=ct, roiMask=organ, referenceSegmentation=reference,
                               referenceModel=reference_model)


def labelled_slice_scores(mask: np.ndarray, reference: np.ndarray, labelled: np.ndarray, ijk_to_ras) -> dict:
    """Scores of a prediction on the slices where the reference has labels."""
    from .realdata import surface_distances

    pred, ref = np.asarray(mask)[labelled] > 0, np.asarray(reference)[labelled] > 0
    report = metrics.segmentation_report(pred, ref)
    spacing = mrml.spacing_of(ijk_to_ras)
    chamfer, hd95 = surface_distances(pred, ref, (1e6, spacing[1], spacing[0]))
    return {"dice": report["dice"], "iou": report["iou"], "jaccard_distance": report["jaccard_distance"],
            "chamfer_mm": chamfer, "hd95_mm": hd95, "labelled_slices": float(labelled.sum())}


def note_reference_outside_roi(recon: Reconstruction, reference: np.ndarray) -> None:
    """Warn (and add to ``recon.canonical.notes``) when much of a reference lies outside the ROI the output is kept in."""
    from .preprocess import reference_outside_note

    note = recon.canonical and reference_outside_note(reference, recon.canonical.roi, recon.spacing)
    if note:
        log.warning(note)
        recon.canonical.notes.append(note)


def check_ct_parameters(volume: np.ndarray, ijk_to_ras: np.ndarray, hounsfield: bool, factor, min_component) -> None:
    """VesselSDF's own input checks: slice count and in-plane size, HU range, the through-plane
    factor (bounded by memory) and the component size; each refusal an :class:`InputError`."""
    from ..errors import check_hounsfield, check_number, check_voxel_budget
    from .inference import through_plane_factor

    if volume.shape[0] < 3 or min(volume.shape[1:]) < 16:
        raise InputError(f"The CT has {volume.shape[0]} slices of {volume.shape[2]} x {volume.shape[1]} pixels; VesselSDF "
                         "needs at least 3 slices of at least 16 x 16 pixels: select the whole thick-slice series.")
    if hounsfield:
        check_hounsfield(volume, "The input CT", "If it is windowed or scaled, turn the portal-venous HU window off "
                         "(portalVenousWindow=False, CLI --no-window).")
    check_number(factor, "throughPlaneFactor", 0, 64, integer=True, hint="Use 0 (automatic: slice gap / pixel size).")
    check_number(min_component, "minComponentMm3", 0, hint="Use 0 to keep every piece.")
    refined = ((volume.shape[0] - 1) * through_plane_factor(mrml.spacing_of(ijk_to_ras), int(factor) or None) + 1,
               *volume.shape[1:])
    check_voxel_budget(refined, "Meshing at this throughPlaneFactor",
                       hint="Lower throughPlaneFactor (0 picks slice gap / pixel size) or crop the CT.")


def metric_rows(values: dict[str, float]) -> list[dict]:
    """Measurement dict -> table rows (metric, value, unit)."""
    units = {"vessel_volume_mm3": ("Vessel volume", "mm3"), "surface_area_mm2": ("Surface area", "mm2"),
             "components": ("Connected components", ""), "dice": ("Dice", ""), "iou": ("IoU", ""),
             "jaccard_distance": ("Jaccard distance", ""), "cd_x100": ("Chamfer distance x100", "% of diagonal"),
             "chamfer_mm": ("Chamfer distance", "mm"), "hausdorff_mm": ("Hausdorff distance", "mm"),
             "hd95_mm": ("HD95", "mm"), "labelled_slices": ("Labelled slices scored", ""),
             "spacing_x_mm": ("Spacing x", "mm"), "spacing_y_mm": ("Spacing y", "mm"), "spacing_z_mm": ("Spacing z", "mm")}
    return [{"Metric": units.get(k, (k, ""))[0], "Value": float(v), "Unit": units.get(k, (k, ""))[1]}
            for k, v in values.items()]

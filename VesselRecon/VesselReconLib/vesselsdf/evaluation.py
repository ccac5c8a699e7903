"""VesselSDF evaluation: the paper's metrics, its ablation table and a classical baseline.

Every method runs on the liver-relative normalised CT inside the phantom's organ mask (the ROI),
exactly as ``reconstruct`` does. Real CT is evaluated by :mod:`.realdata`.

Metrics per case (averaged over a held-out folder):

* ``dice``, ``iou``, ``jaccard_distance``: predicted vessel mask vs the thick-slice labelmap;
* ``hires_dice``: each method's *interpolated* field (SDF for VesselSDF, the binary/probability
  mask for the others, exactly as each is meshed) sampled on the high-resolution grid
  (1 mm slices) vs the high-resolution labelmap -- what bridging the slice gaps buys;
* ``cd_x100``: Chamfer distance between predicted and reference surfaces (mesh vertices) divided
  by the reference bounding-box diagonal, ×100 (the paper reports CD×100 on normalised shapes);
  ``chamfer_mm``, ``hd95_mm`` (95th percentile of the two-way surface distances) and
  ``hausdorff_mm`` in millimetres;
* ``components``: connected components of the predicted surface (floating fragments).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import meshes, metrics
from .data import fine_positions
from .inference import (Prediction, interpolate_slices, mesh_zero_level, refine_through_plane, refined_geometry,
                        through_plane_factor)

ROW_NAMES = {"lite": "VesselSDF (ours)", "paper": "VesselSDF (ours, paper)", "occ": "occupancy only",
             "sdfonly": "SDF only", "nogauss": "w/o Gaussian loss", "unet": "plain 3D U-Net",
             "dstart": "refiner with distance start (d0 + 3 mm correction)",
             "direct": "refiner w/o SDF Dice term, zero level (release 1)",
             "agree7": "refiner + agreement hinge (round 7, ablation)",
             "fuse8": "occupancy-component-preserving fusion (round 8, ablation)",
             "motion8": "displacement-following interpolation (round 8, ablation)",
             "skel9": "refiner + fine-grid skeleton recall (round 9, ablation)",
             "gap11": "gap-filling through-plane interpolation (round 11, ablation)",
             "wall11": "refiner + truth->surface wall term (round 11b, ablation)",
             "artwall12": "wall term trained with arterial distractors (round 12, ablation)",
             "classical": "classical (smoothed adaptive HU threshold)"}


def classical_baseline(volume: np.ndarray, spacing, roi_mask: np.ndarray | None = None,
                       sigma_mm: float = 0.5, k_mad: float = 3.0) -> Prediction:
    """Gaussian smoothing + an adaptive HU threshold above the parenchyma (no learning).

    The parenchyma level is the median of the smoothed voxels in the enhancing soft-tissue range
    60..400 HU (inside ``roi_mask`` when given) and the threshold is that median plus ``k_mad``
    robust standard deviations (1.4826·MAD). Returned as an occupancy-only :class:`Prediction`
    (binary), so it is meshed like any voxel classifier: by interpolating the mask.
    """
    from scipy.ndimage import gaussian_filter

    sigma = (sigma_mm / spacing[2], sigma_mm / spacing[1], sigma_mm / spacing[0])
    smooth = gaussian_filter(np.asarray(volume, np.float32), sigma)
    values = smooth[roi_mask > 0] if roi_mask is not None else smooth[(smooth > 60) & (smooth < 400)]
    if values.size < 16:
        values = smooth.ravel()
    median = float(np.median(values))
    threshold = median + k_mad * 1.4826 * float(np.median(np.abs(values - median)))
    mask = smooth > threshold
    if roi_mask is not None:
        mask &= roi_mask > 0
    return Prediction(occupancy=mask.astype(np.float32), sdf=None)


def hires_field(prediction: Prediction, thick_shape, thick_origin_z: float, thick_dz: float,
                hires_shape, hires_origin_z: float, hires_dz: float) -> np.ndarray:
    """The prediction's surface field linearly interpolated to the high-resolution slice positions."""
    k = fine_positions(thick_origin_z, thick_dz, hires_origin_z, hires_dz, hires_shape[0])
    k = np.clip(k, 0, thick_shape[0] - 1)
    return interpolate_slices(prediction.surface_field(), k, prediction.motion, prediction.gap_mm).numpy()


def surface_metrics(surface, reference) -> dict[str, float]:
    """CD×100 (normalised by the reference diagonal), Chamfer, Hausdorff and HD95 (mm):
    :func:`.metrics.surface_distances`."""
    if surface is None or surface.GetNumberOfPoints() == 0:
        return {"cd_x100": float("nan"), "chamfer_mm": float("nan"), "hausdorff_mm": float("nan"),
                "hd95_mm": float("nan")}
    ref_points = metrics.as_points(reference)
    diagonal = float(np.linalg.norm(ref_points.max(0) - ref_points.min(0)))
    distances = metrics.surface_distances(surface, ref_points)
    return {"cd_x100": 100.0 * distances["chamfer"] / diagonal, "chamfer_mm": distances["chamfer"],
            "hausdorff_mm": distances["hausdorff"], "hd95_mm": distances["hd95"]}


@dataclass
class EvalCase:
    """A held-out case with its high-resolution ground truth."""

    name: str
    image: np.ndarray
    label: np.ndarray
    ijk_to_ras: np.ndarray
    hires_label: np.ndarray
    hires_ijk_to_ras: np.ndarray
    mesh: object
    organ: np.ndarray | None = None

    @property
    def spacing(self):
        return tuple(np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))


def evaluate_prediction(prediction: Prediction, case: EvalCase, factor: int | None = None) -> dict[str, float]:
    """All metrics of one prediction on one case."""
    report = metrics.segmentation_report(prediction.mask(), case.label)
    field = hires_field(prediction, case.label.shape, case.ijk_to_ras[2, 3], case.spacing[2],
                        case.hires_label.shape, case.hires_ijk_to_ras[2, 3],
                        float(np.linalg.norm(case.hires_ijk_to_ras[:3, 2])))
    return {"dice": report["dice"], "iou": report["iou"], "jaccard_distance": report["jaccard_distance"],
            "hires_dice": metrics.dice(field < 0, case.hires_label > 0),
            **mesh_scores(prediction.surface_field(), case, factor, prediction.motion, prediction.gap_mm)}


def mesh_scores(field: np.ndarray, case: EvalCase, factor: int | None = None, motion=None,
                gap_mm: float = 0.0) -> dict[str, float]:
    """:func:`surface_metrics` and the surface pieces (``components``) of a thick-grid field's zero
    level, meshed on the through-plane refined grid (``motion``, ``gap_mm``: :func:`.inference.interpolate_slices`)."""
    factor = through_plane_factor(case.spacing, factor)
    fine = refine_through_plane(field, factor, motion, gap_mm).numpy()
    surface = mesh_zero_level(fine, refined_geometry(case.ijk_to_ras, factor), compute_normals=False)
    sizes = meshes.component_sizes(surface) if surface.GetNumberOfPoints() else np.zeros(0)
    return {**surface_metrics(surface, case.mesh), "components": float(len(sizes))}


def load_eval_cases(root, limit: int | None = None) -> list[EvalCase]:
    """Held-out cases of a ``vesselrecon phantoms ct`` folder (needs the high-res and mesh folders)."""
    from ..errors import InputError
    from ..volume_io import read_volume
    from ..phantoms.datasets import read_msd_training

    cases = []
    for entry in read_msd_training(root, "ct")[:limit]:
        if "hires_label" not in entry or "mesh" not in entry:
            raise InputError(f"{root} lacks high-resolution ground truth: evaluate on a `vesselrecon phantoms ct` folder.")
        image, matrix = read_volume(entry["image"])
        label, _ = read_volume(entry["label"])
        hires, hires_matrix = read_volume(entry["hires_label"])
        organ = read_volume(entry["organ"])[0] if "organ" in entry else None
        cases.append(EvalCase(entry["image"].rsplit("/", 1)[-1].split(".")[0], image.astype(np.float32),
                              label > 0, matrix, hires > 0, hires_matrix, meshes.load_polydata(entry["mesh"]),
                              organ))
    return cases


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def evaluate_methods(cases: list[EvalCase], models: dict[str, torch.nn.Module], device="cpu",
                     progress=None) -> dict[str, dict[str, float]]:
    """Mean metrics of every named model and of the classical baseline on ``cases``."""
    from ..progress import as_reporter
    from .inference import predict_in_roi
    from .preprocess import canonicalise

    reporter = as_reporter(progress)
    table: dict[str, dict[str, float]] = {}
    names = list(models) + ["classical"]
    for index, name in enumerate(names):
        rows = []
        for case in cases:
            roi = case.organ > 0 if case.organ is not None else None
            if name == "classical":
                prediction = classical_baseline(case.image, case.spacing, roi)
            else:
                canonical = canonicalise(case.image, case.ijk_to_ras, roi)
                prediction = predict_in_roi(models[name], canonical, device, case.spacing)
            rows.append(evaluate_prediction(prediction, case))
        table[name] = mean_metrics(rows)
        reporter((index + 1) / len(names), name)
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A plain-text results table."""
    columns = ["dice", "hires_dice", "cd_x100", "chamfer_mm", "hd95_mm", "hausdorff_mm", "components"]
    lines = [f"{'method':36}" + "".join(f"{c:>17}" for c in columns)]
    for name, row in table.items():
        lines.append(f"{ROW_NAMES.get(name, name):36}" + "".join(f"{row[c]:17.4f}" for c in columns))
    return "\n".join(lines)

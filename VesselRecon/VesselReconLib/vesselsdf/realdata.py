"""VesselSDF on real CT: dataset readers, volumetric metrics and the real-data results table.

Readers (all give :class:`RealCase` objects: a sparse-slice input, an optional liver ROI on it, and a
reference vessel mask on a fine grid with the slices that are labelled):

* **3D-IRCADb-01** patient folder (``PATIENT_DICOM`` and ``MASKS_DICOM`` as folders or as the
  ``.tar.gz`` / ``.zip`` they ship in, extracted to a temporary folder): every ``keep_every``-th
  slice is the input (the paper's sparse setting; 3 x 1.6 mm = 4.8 mm), the reference is
  portal vein ∪ venous system at full resolution, scored inside the reference liver;
* **LVSD slabs** (``*.nii.gz``, 512 x 512 x 8 uint8: channel 0 the vessel mask of the middle
  slice, channels 1-7 seven consecutive liver-masked, windowed slices): input the 7 slices, scored
  on the labelled middle slice only;
* **MSD-style** folders (``dataset.json`` with ``image``/``label``; Task08 HepaticVessel: label 1
  vessel, 2 tumour): input every ``keep_every``-th slice, reference label 1 on all slices.

Metrics (:func:`volume_metrics`), inside the evaluation region and on the labelled slices only:
Dice; clDice and centreline recall (Shit et al., CVPR 2021: skeleton of the reference covered by
the prediction, and vice versa); Chamfer distance and HD95 between the mask surfaces (mm); and
fragments, the connected components (26-connected) of the predicted mask. Also, on the whole grid
(round 8): ``outside_cm3``, the predicted vessel volume outside the evaluation region (the true
liver; 0 where the region is the whole image, e.g. LVSD), which the in-liver scores cannot show.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass
class RealCase:
    """A real CT in the sparse-slice setting with its fine-grid reference."""

    name: str
    image: np.ndarray
    ijk_to_ras: np.ndarray
    reference: np.ndarray
    reference_ijk_to_ras: np.ndarray
    region: np.ndarray
    roi: np.ndarray | None = None
    labelled_slices: np.ndarray | None = None
    notes: str = ""

    def scored(self) -> np.ndarray:
        """Boolean fine-grid mask of the voxels that are scored (region ∩ labelled slices)."""
        mask = self.region.copy()
        if self.labelled_slices is not None:
            keep = np.zeros(mask.shape[0], bool)
            keep[self.labelled_slices] = True
            mask &= keep[:, None, None]
        return mask


# ----------------------------------------------------------------------------------------- readers


def _extract(archive: Path, into: Path) -> Path:
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as handle:
            handle.extractall(into, filter="data")
    elif archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(into)
    else:
        raise InputError(f"{archive} is not a .tar.gz or .zip archive.")
    return into


def _find_folder(root: Path, name: str, scratch: Path) -> Path:
    """``root/name`` as a folder, or extracted from ``root/name.tar.gz|.zip`` into ``scratch``."""
    if (root / name).is_dir():
        return root / name
    for suffix in (".tar.gz", ".tgz", ".zip"):
        archive = root / f"{name}{suffix}"
        if archive.is_file():
            out = _extract(archive, scratch / name)
            nested = out / name
            return nested if nested.is_dir() else out
    raise InputError(f"{root} has no {name} folder or archive (3D-IRCADb layout).")


def read_ircadb(root: str | Path, keep_every: int = 3) -> list[RealCase]:
    """A 3D-IRCADb-01 patient folder as one sparse-slice case (module docs)."""
    from ..volume_io import read_volume

    root = Path(root)
    with tempfile.TemporaryDirectory(prefix="vesselsdf_ircadb_") as scratch:
        scratch = Path(scratch)
        image, matrix = read_volume(_find_folder(root, "PATIENT_DICOM", scratch))
        masks_root = _find_folder(root, "MASKS_DICOM", scratch)
        masks = {name: read_volume(masks_root / name)[0] > 0 for name in ("liver", "portalvein", "venoussystem")
                 if (masks_root / name).is_dir()}
    if "liver" not in masks or not {"portalvein", "venoussystem"} & set(masks):
        raise InputError(f"{root}/MASKS_DICOM lacks the liver or vessel masks.")
    vessels = masks.get("portalvein", False) | masks.get("venoussystem", False)
    sparse = np.arange(0, image.shape[0], keep_every)
    sparse_matrix = np.array(matrix, float)
    sparse_matrix[:3, 2] *= keep_every
    return [RealCase(name=root.name, image=image[sparse].astype(np.float32), ijk_to_ras=sparse_matrix,
                     reference=vessels, reference_ijk_to_ras=np.asarray(matrix, float), region=masks["liver"],
                     roi=masks["liver"][sparse], notes=kept_slices_note(keep_every, image.shape[0]))]


def kept_slices_note(keep_every: int, total: int) -> str:
    """How the sparse input was taken, e.g. ``every 3rd slice of 151`` (``every slice of 40`` for 1)."""
    if keep_every == 1:
        return f"every slice of {total}"
    suffix = "th" if 10 <= keep_every % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(keep_every % 10, "th")
    return f"every {keep_every}{suffix} slice of {total}"


def is_lvsd_slab(array: np.ndarray) -> bool:
    """The LVSD slab layout (module docs): 8 slices, the first a binary vessel label, the others not."""
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[0] != 8:
        return False
    return np.unique(array[0]).size <= 2 and np.unique(array[1:]).size > 2


def check_not_lvsd_slab(array: np.ndarray, name: str) -> None:
    """Refuse an LVSD slab given as a CT: its slice 0 is the vessel label, not CT."""
    if is_lvsd_slab(array):
        raise InputError(f"{name} is an LVSD slab (8 slices, slice 0 a binary vessel label, not CT): evaluate it with "
                         "`vesselrecon eval vesselsdf --data <its folder>`, or give its 7 CT slices only.")


def read_lvsd(root: str | Path, spacing: tuple[float, float, float] | None = None) -> list[RealCase]:
    """LVSD slabs (module docs); ``spacing`` overrides the files' (1 x 1 x 1 mm) header."""
    import SimpleITK as sitk

    cases = []
    for path in sorted(Path(root).glob("*.nii*")):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        if not is_lvsd_slab(array):
            continue
        sx, sy, sz = spacing or image.GetSpacing()
        matrix = np.diag([-sx, -sy, sz, 1.0])  # LPS identity direction on disk -> RAS
        ct = array[1:].astype(np.float32)
        reference = np.zeros(ct.shape, bool)
        reference[3] = array[0] > 0
        name = path.name[:-len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
        cases.append(RealCase(name=name, image=ct, ijk_to_ras=matrix, reference=reference, reference_ijk_to_ras=matrix,
                              region=np.ones(ct.shape, bool), labelled_slices=np.array([3]),
                              notes="LVSD slab: middle slice labelled"))
    if not cases:
        raise InputError(f"{root} holds no LVSD slabs (512x512x8 NIfTI: mask + 7 CT slices).")
    return cases


def read_msd(root: str | Path, keep_every: int = 1, limit: int | None = None, vessel_label: int = 1
             ) -> list[RealCase]:
    """An MSD-style folder (``dataset.json``); every ``keep_every``-th slice is the input."""
    from ..volume_io import read_volume
    from ..phantoms.datasets import read_msd_training

    cases = []
    for entry in read_msd_training(root, "ct")[:limit]:
        image, matrix = read_volume(entry["image"])
        label, _ = read_volume(entry["label"])
        sparse = np.arange(0, image.shape[0], keep_every)
        sparse_matrix = np.array(matrix, float)
        sparse_matrix[:3, 2] *= keep_every
        organ = read_volume(entry["organ"])[0] > 0 if "organ" in entry else None
        name = Path(entry["image"]).name.split(".nii")[0]
        cases.append(RealCase(name=name, image=image[sparse].astype(np.float32), ijk_to_ras=sparse_matrix,
                              reference=label == vessel_label, reference_ijk_to_ras=np.asarray(matrix, float),
                              region=organ if organ is not None else np.ones(label.shape, bool),
                              roi=None if organ is None else organ[sparse]))
    return cases


def detect_layout(root: str | Path) -> str:
    """``ircadb``, ``lvsd``, ``phantom`` (a `vesselrecon phantoms ct` folder) or ``msd``."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root} does not exist.")
    if any((root / f"PATIENT_DICOM{s}").exists() for s in ("", ".tar.gz", ".zip")):
        return "ircadb"
    if (root / "dataset.json").is_file():
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        first = (meta.get("training") or [{}])[0]
        return "phantom" if "hires_label" in first and "mesh" in first else "msd"
    if any(root.glob("*.nii*")):
        return "lvsd"
    raise InputError(f"Cannot tell the layout of {root}: expected 3D-IRCADb (PATIENT_DICOM), LVSD slabs (*.nii.gz) "
                     "or an MSD folder (dataset.json).")


# ----------------------------------------------------------------------------------------- metrics


def _skeleton(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize

    return skeletonize(mask) > 0 if mask.any() else np.zeros(mask.shape, bool)


def centreline_scores(prediction: np.ndarray, reference: np.ndarray, per_slice: bool = False) -> tuple[float, float]:
    """(clDice, centreline recall): Tsens = |S(ref) ∩ pred| / |S(ref)|, Tprec = |S(pred) ∩ ref| / |S(pred)|.

    :param per_slice: skeletonise each slice in 2D (a single labelled slice), else in 3D.
    """
    if per_slice:
        sk_ref = np.stack([_skeleton(s) for s in reference])
        sk_pred = np.stack([_skeleton(s) for s in prediction])
    else:
        sk_ref, sk_pred = _skeleton(reference), _skeleton(prediction)
    t_sens = float((sk_ref & prediction).sum() / max(sk_ref.sum(), 1))
    t_prec = float((sk_pred & reference).sum() / max(sk_pred.sum(), 1))
    cl_dice = 0.0 if t_sens + t_prec == 0 else 2 * t_sens * t_prec / (t_sens + t_prec)
    return cl_dice, t_sens


def _surface_points(mask: np.ndarray, spacing_kji) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    border = mask & ~binary_erosion(mask, border_value=0)
    return np.argwhere(border) * np.asarray(spacing_kji, float)


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing_kji) -> tuple[float, float]:
    """(Chamfer, HD95) in mm between the boundary voxels of two masks (nan when one is empty)."""
    from .. import metrics

    a, b = _surface_points(prediction, spacing_kji), _surface_points(reference, spacing_kji)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    distances = metrics.surface_distances(a, b)
    return distances["chamfer"], distances["hd95"]


def _scored_pair(prediction: np.ndarray, case: RealCase) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference inside the scored voxels, cut to the scored rows and in-plane box (+1 pixel)."""
    scored = case.scored()
    rows = np.flatnonzero(scored.any(axis=(1, 2)))
    js, is_ = np.flatnonzero(scored.any(axis=(0, 2))), np.flatnonzero(scored.any(axis=(0, 1)))
    if rows.size == 0:
        raise InputError(f"{case.name}: nothing to score (empty region or no labelled slice).")
    box = (rows, slice(max(js[0] - 1, 0), js[-1] + 2), slice(max(is_[0] - 1, 0), is_[-1] + 2))
    scored = scored[box[0]][:, box[1], box[2]]
    return (np.asarray(prediction, bool)[box[0]][:, box[1], box[2]] & scored,
            np.asarray(case.reference, bool)[box[0]][:, box[1], box[2]] & scored)


def volume_metrics(prediction: np.ndarray, case: RealCase) -> dict[str, float]:
    """Dice, clDice, centreline recall, Chamfer, HD95 (mm) and fragments of a fine-grid prediction."""
    from scipy.ndimage import label

    from .. import metrics

    pred_s, ref_s = _scored_pair(prediction, case)
    per_slice = case.labelled_slices is not None and len(case.labelled_slices) == 1
    cl_dice, cl_recall = centreline_scores(pred_s, ref_s, per_slice)
    spacing = np.linalg.norm(case.reference_ijk_to_ras[:3, :3], axis=0)[::-1]
    if per_slice:
        spacing = (1e6, spacing[1], spacing[2])  # one slice: in-plane distances only
    chamfer, hd95 = surface_distances(pred_s, ref_s, spacing)
    fragments = label(pred_s, np.ones((3, 3, 3)))[1]
    return {"dice": metrics.dice(pred_s, ref_s), "cldice": cl_dice, "cl_recall": cl_recall,
            "chamfer_mm": chamfer, "hd95_mm": hd95, "fragments": float(fragments),
            "outside_cm3": outside_volume_cm3(prediction, case)}


def outside_volume_cm3(prediction: np.ndarray, case: RealCase) -> float:
    """Predicted vessel volume (cm³, fine grid) outside the evaluation region (the true liver)."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(case.reference_ijk_to_ras, float)[:3, :3])))
    return float((np.asarray(prediction, bool) & ~np.asarray(case.region, bool)).sum()) * voxel_mm3 / 1000.0


def recall_by_radius(prediction: np.ndarray, case: RealCase, edges=(1.0, 1.5, 2.0, 3.0)) -> dict[str, tuple]:
    """Centreline recall per vessel calibre (round 8): the reference's 3D skeleton points (as in
    :func:`centreline_scores`) binned by the reference's distance map there (mm to the nearest background
    voxel, about the local radius); ``{"r <= 1.0": (recall, points), "1.0 < r <= 1.5": ..., "r > 3.0": ...}``."""
    from scipy.ndimage import distance_transform_edt

    pred_s, ref_s = _scored_pair(prediction, case)
    skeleton = _skeleton(ref_s)
    spacing = np.linalg.norm(case.reference_ijk_to_ras[:3, :3], axis=0)[::-1]
    radius, hit = distance_transform_edt(ref_s, sampling=spacing)[skeleton], pred_s[skeleton]
    bounds = [0.0, *edges, np.inf]
    names = [f"r <= {edges[0]}"] + [f"{lo} < r <= {hi}" for lo, hi in zip(edges, edges[1:])] + [f"r > {edges[-1]}"]
    out = {}
    for name, lo, hi in zip(names, bounds, bounds[1:]):
        inside = (radius > lo) & (radius <= hi)
        out[name] = (float(hit[inside].mean()) if inside.any() else float("nan"), int(inside.sum()))
    return out


# ----------------------------------------------------------------------------------------- methods


def kept_slice_oracle(case: RealCase, keep_every: int, mode: str = "sdf") -> np.ndarray:
    """The reference on the kept input slices only (every ``keep_every``-th), interpolated to the fine grid as a
    perfect segmentation of the input would be (round 8's ceiling of a sparse-slice method): ``sdf`` — each kept
    slice's 2D signed distance (mm), linearly between slices (shape-based, as VesselSDF interpolates its field);
    ``mask`` — the binary mask linearly (each slice's mask reaches halfway to the next)."""
    from scipy.ndimage import distance_transform_edt

    from .inference import resample_field

    kept = np.asarray(case.reference, bool)[::keep_every]
    if mode == "mask":
        field = 0.5 - kept.astype(np.float32)
    else:
        plane_mm = np.linalg.norm(case.ijk_to_ras[:3, :2], axis=0)[::-1]
        field = np.full(kept.shape, 50.0, np.float32)
        for k, plane in enumerate(kept):
            if plane.any():
                field[k] = distance_transform_edt(~plane, sampling=plane_mm) - distance_transform_edt(plane, sampling=plane_mm)
    return resample_field(field, case.ijk_to_ras, case.reference_ijk_to_ras, case.reference.shape) < 0


def otsu_baseline(case: RealCase, roi: np.ndarray) -> np.ndarray:
    """Otsu threshold of the sparse slices inside the ROI, mask linearly interpolated to the fine grid."""
    from skimage.filters import threshold_otsu

    from .inference import resample_field

    values = case.image[roi]
    mask = (case.image > threshold_otsu(values)) & roi if values.size > 16 else np.zeros(roi.shape, bool)
    field = 0.5 - mask.astype(np.float32)
    return resample_field(field, case.ijk_to_ras, case.reference_ijk_to_ras, case.reference.shape) < 0


def classical_fine(case: RealCase, roi: np.ndarray) -> np.ndarray:
    """The project's classical baseline (smoothed adaptive threshold in the ROI), interpolated likewise."""
    from .evaluation import classical_baseline
    from .inference import resample_field
    from .preprocess import canonicalise

    canonical = canonicalise(case.image, case.ijk_to_ras, roi)
    spacing = tuple(np.linalg.norm(case.ijk_to_ras[:3, :3], axis=0))
    mask = classical_baseline(canonical.hu, spacing, roi).occupancy
    return resample_field(0.5 - mask, case.ijk_to_ras, case.reference_ijk_to_ras, case.reference.shape) < 0


def model_fine(model, case: RealCase, roi: np.ndarray | None, device="cpu") -> tuple[np.ndarray, object]:
    """A network's vessel mask on the fine grid (its surface field interpolated) and the canonical input."""
    from .inference import predict_in_roi, resample_field
    from .preprocess import canonicalise

    canonical = canonicalise(case.image, case.ijk_to_ras, roi)
    spacing = tuple(float(v) for v in np.linalg.norm(case.ijk_to_ras[:3, :3], axis=0))
    prediction = predict_in_roi(model, canonical, device, spacing)
    field = resample_field(prediction.surface_field(), case.ijk_to_ras, case.reference_ijk_to_ras,
                           case.reference.shape, prediction.motion, prediction.gap_mm)
    return field < 0, canonical


def evaluate_real(cases: list[RealCase], models: dict[str, object], device="cpu", with_roi: bool = True,
                  progress=None) -> dict[str, dict[str, float]]:
    """Mean metrics per method: each model without ROI (automatic) and, when the case has one, with
    the reference liver ROI; the Otsu and classical baselines use the ROI (the given or automatic one)."""
    from ..progress import as_reporter

    reporter = as_reporter(progress)
    rows: dict[str, list[dict]] = {}
    for index, case in enumerate(cases):
        auto_roi = None
        for name, model in models.items():
            mask, canonical = model_fine(model, case, None, device)
            auto_roi = canonical.roi
            rows.setdefault(name, []).append(volume_metrics(mask, case))
            if with_roi and case.roi is not None:
                mask, _ = model_fine(model, case, case.roi, device)
                rows.setdefault(f"{name}+roi", []).append(volume_metrics(mask, case))
        roi = case.roi if case.roi is not None else auto_roi
        if roi is None:
            from .preprocess import canonicalise

            roi = canonicalise(case.image, case.ijk_to_ras).roi
        rows.setdefault("otsu", []).append(volume_metrics(otsu_baseline(case, roi), case))
        rows.setdefault("classical", []).append(volume_metrics(classical_fine(case, roi), case))
        reporter((index + 1) / len(cases), case.name)
    return {name: {k: float(np.nanmean([r[k] for r in values])) for k in values[0]} for name, values in rows.items()}


REAL_COLUMNS = ("dice", "cldice", "cl_recall", "chamfer_mm", "hd95_mm", "fragments", "outside_cm3")


def format_real_table(table: dict[str, dict[str, float]]) -> str:
    from .evaluation import ROW_NAMES

    names = {**ROW_NAMES, "otsu": "Otsu in liver ROI, interpolated", "classical": "classical (smoothed adaptive HU threshold)"}
    lines = [f"{'method':40}" + "".join(f"{c:>12}" for c in REAL_COLUMNS)]
    for key, row in table.items():
        base, _, roi = key.partition("+")
        label = names.get(_row(base), base) + (" + liver ROI" if roi else "")
        lines.append(f"{label:40}" + "".join(f"{row[c]:12.4f}" for c in REAL_COLUMNS))
    return "\n".join(lines)


def _row(name: str) -> str:
    return name.split("-", 1)[1] if name.startswith(("lite-", "paper-")) else name

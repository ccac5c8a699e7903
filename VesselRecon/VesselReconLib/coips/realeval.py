"""Real-scan checks of ``vesselrecon eval coips`` (``../shared/samples/octa-octagon``, when present).

- FAZ on the two OCTAGON scans that come with the device's FAZ (3x3 and 6x6 mm superficial, at their
  true fields from the file names): Dice and area error of our default (U-Net + central component), of
  the old post-processing (largest component) and of the classical baseline.
- The 6x6 mm deep slab with a motion band (``octagon_angio6prof``): grade, probabilities, FAZ area and flags.
- Degradation series (:mod:`.degradations`) of every OCTAGON scan: grades per severity; each series
  must never rise and must end ungradable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import GRADES
from .degradations import KINDS, SERIES_SEVERITIES, series

OCTAGON_FAZ = {"octagon_angio3superf.tif": "octagon_area3superf_system.png",
               "octagon_angio6superf.tif": "octagon_area6superf_system.png"}
MOTION_BAND_SCAN = "octagon_angio6prof.tif"
OCTAGON_SCANS = ("octagon_angio3superf.tif", "octagon_angio3prof.tif", "octagon_angio6superf.tif",
                 "octagon_angio6prof.tif")


def default_octagon_dir() -> Path | None:
    """``../shared/samples/octa-octagon`` next to the repository, if it is there."""
    folder = Path(__file__).resolve().parents[3].parent / "shared" / "samples" / "octa-octagon"
    return folder if folder.is_dir() else None


def default_rossa_dir(split: str = "test") -> Path | None:
    """``../shared/datasets/rossa/<split>`` next to the repository, if it is there."""
    folder = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "rossa" / split
    return folder if folder.is_dir() else None


def rossa_grades(quality_net, folder: Path, device="cpu", limit: int | None = None) -> dict:
    """Grades of held-out real ROSSA images (``test``: neither trained nor calibrated on): clean grade
    counts, macro F1 against the severity labels, and the two series checks (every kind)."""
    from .calibration import _macro_f1, calibration_images, collect_logits, series_scores

    calibration = collect_logits(quality_net, calibration_images(folder, limit), device)
    grades = calibration.series_logits.argmax(-1)
    monotone, worst = series_scores(grades)
    return {"folder": str(folder), "images": len(calibration.names),
            "clean_grades": np.bincount(grades[:, 0, 0], minlength=3).tolist(),
            "macro_f1": _macro_f1(calibration.labels().ravel(), grades.ravel()),
            "series_monotone": monotone, "series_worst_ungradable": worst,
            "series_total": int(np.prod(grades.shape[:2]))}


def read_device_faz(path: str | Path) -> np.ndarray:
    """The device's FAZ mask from an OCTAGON ``*_system.png`` (the FAZ drawn in yellow on purple)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    return rgb[..., 0] > 128


def grade_images(quality_net, images: list[np.ndarray], device="cpu") -> np.ndarray:
    """Class probabilities ``(N, 3)`` of normalised images (one batched pass)."""
    from ..device import inference
    from ..enface_io import to_work_image
    from .inference import grade

    device = torch.device(device)
    size = quality_net.input_size
    x = torch.stack([torch.from_numpy(to_work_image(p, size)) for p in images])[:, None].float().to(device) / 255.0
    with inference(device):
        return grade(quality_net, x).cpu().numpy()


def faz_rows(faz_net, folder: Path, device="cpu") -> list[dict]:
    """Per scan and method: Dice, Jaccard, our and the device's FAZ area, relative area error."""
    from ..enface_io import read_image
    from .evaluation import faz_method_masks
    from .logic import faz_comparison

    rows, device = [], torch.device(device)
    for scan, reference_name in OCTAGON_FAZ.items():
        image = read_image(folder / scan)
        reference = read_device_faz(folder / reference_name)
        masks = faz_method_masks(faz_net, image.pixels, image.field_of_view_mm, device)
        for method, mask in masks.items():
            comparison = faz_comparison(mask, reference, image.field_of_view_mm)
            rows.append({"scan": scan, "field_mm": image.field_of_view_mm, "method": method,
                         "dice": comparison["dice"], "jaccard": comparison["jaccard"],
                         "faz_area_mm2": comparison["faz_area_mm2"],
                         "device_faz_area_mm2": comparison["reference_faz_area_mm2"],
                         "area_error_pct": 100 * comparison["faz_area_error_mm2"] / comparison["reference_faz_area_mm2"]})
    return rows


CEILING_THRESHOLDS = np.arange(-6.0, 6.01, 0.25)    # margins (FAZ minus background logit) swept by faz_ceiling


def faz_ceiling(faz_net, folder: Path, device="cpu") -> list[dict]:
    """A diagnostic, not a method: per scan, the U-Net's margin thresholded at every :data:`CEILING_THRESHOLDS`
    value (central component, as the default), scored against the device's mask, and the best Dice over them:
    what any recalibration of this network's outline could reach when chosen on the evaluation mask itself."""
    from ..enface_io import read_image
    from .evaluation import raw_faz_margin
    from .faz import select_faz
    from .logic import faz_comparison

    rows = []
    for scan, reference_name in OCTAGON_FAZ.items():
        image = read_image(folder / scan)
        reference = read_device_faz(folder / reference_name)
        margin = raw_faz_margin(faz_net, image.pixels, image.field_of_view_mm, torch.device(device))
        sweep = []
        for threshold in CEILING_THRESHOLDS:
            c = faz_comparison(select_faz(margin > threshold, image.field_of_view_mm), reference, image.field_of_view_mm)
            sweep.append((c["dice"], float(threshold), 100 * c["faz_area_error_mm2"] / c["reference_faz_area_mm2"]))
        dice, threshold, error = max(sweep)
        rows.append({"scan": scan, "best_dice": dice, "best_threshold": threshold, "area_error_pct_there": error})
    return rows


def scan_rows(quality_net, faz_net, folder: Path, device="cpu") -> list[dict]:
    """Grade, probabilities, FAZ area and flags of every OCTAGON scan (the single-image pipeline), then
    the slab-pair rule of the batch pipeline (:func:`.pairs.propagate_pair_grades`: a deep image takes its
    superficial partner's grade unless their FAZ centres show two acquisitions; the centres come from a
    forced segmentation of both). ``grade`` is the grade after pairing, ``grade_own`` the image's own."""
    from ..enface_io import read_image
    from .inference import assess
    from .pairs import propagate_pair_grades
    from .postprocess import faz_centre

    rows = []
    for scan in OCTAGON_SCANS:
        if not (folder / scan).is_file():
            continue
        image = read_image(folder / scan)
        result = assess(image.pixels, image.field_of_view_mm, quality_net, faz_net, torch.device(device),
                        force_segmentation=True)
        rows.append({"scan": scan, "image": scan, "status": "ok", "field_mm": image.field_of_view_mm,
                     "grade": result.grade, **{f"p_{g}": round(p, 3) for g, p in result.probabilities.items()},
                     "faz_area_mm2": result.metrics.get("faz_area_mm2", math.nan) if not result.forced else math.nan,
                     "faz_axis_ratio": result.metrics.get("faz_axis_ratio", math.nan) if not result.forced else math.nan,
                     "forced_faz_area_mm2": result.metrics.get("faz_area_mm2", math.nan),
                     "forced_faz_axis_ratio": result.metrics.get("faz_axis_ratio", math.nan),
                     "faz_flags": "" if result.forced else "; ".join(result.flags), **faz_centre(result.mask)})
    propagate_pair_grades(rows)
    return rows


def degradation_series(quality_net, images: dict[str, np.ndarray], device="cpu", seed: int = 3) -> list[dict]:
    """Grades (0 ungradable .. 2 outstanding) of each image's series per kind, with the two checks."""
    from .data import fovea_of

    rows = []
    for name, pixels in images.items():
        fovea = fovea_of(pixels)
        for kind in KINDS:
            probabilities = grade_images(quality_net, series(pixels, kind, seed, fovea), device)
            grades = probabilities.argmax(1).tolist()
            rows.append({"image": name, "kind": kind, "grades": grades,
                         "p_outstanding": [round(float(p), 3) for p in probabilities[:, 2]],
                         "monotone": all(b <= a for a, b in zip(grades, grades[1:])),
                         "worst_ungradable": grades[-1] == 0})
    return rows


def octagon_images(folder: Path) -> dict[str, np.ndarray]:
    from ..enface_io import read_image

    return {scan: read_image(folder / scan).pixels for scan in OCTAGON_SCANS if (folder / scan).is_file()}


def run_real_evaluation(quality_net, faz_net, folder: Path, device="cpu", rossa: Path | None = None) -> dict:
    series_rows = degradation_series(quality_net, octagon_images(folder), device)
    rossa = rossa if rossa is not None else default_rossa_dir("test")
    return {"rossa_test": rossa_grades(quality_net, rossa, device) if rossa else None,
            "faz": faz_rows(faz_net, folder, device), "faz_ceiling": faz_ceiling(faz_net, folder, device),
            "scans": scan_rows(quality_net, faz_net, folder, device),
            "series": series_rows,
            "series_monotone": sum(r["monotone"] for r in series_rows),
            "series_worst_ungradable": sum(r["worst_ungradable"] for r in series_rows),
            "series_total": len(series_rows)}


def format_real(result: dict, faz_name: str) -> str:
    """The real-scan tables as text."""
    from .evaluation import faz_method_names

    names = faz_method_names(faz_name)
    width = max(len(name) for name in names.values()) + 2
    lines = ["FAZ on OCTAGON scans with the device's FAZ (true fields from the file names)",
             f"{'scan':28s}{'method':{width}s}{'dice':>8s}{'area mm2':>10s}{'device':>9s}{'error %':>9s}"]
    for row in result["faz"]:
        lines.append(f"{row['scan']:28s}{names.get(row['method'], row['method']):{width}s}{row['dice']:8.4f}"
                     f"{row['faz_area_mm2']:10.3f}{row['device_faz_area_mm2']:9.3f}{row['area_error_pct']:+9.1f}")
    lines += ["", "Ceiling of the U-Net's outline (diagnostic, not a method: its margin thresholded at the value "
                  "that best fits the device's mask, chosen on that mask itself)"]
    for row in result.get("faz_ceiling", []):
        lines.append(f"{row['scan']:28s}best Dice {row['best_dice']:.4f} at margin {row['best_threshold']:+.2f} "
                     f"(area error there {row['area_error_pct_there']:+.1f} %)")
    lines += ["", "Grades of the OCTAGON scans (single-image pipeline)",
              f"{'scan':28s}{'grade':>12s}{'p_ungr':>8s}{'p_grad':>8s}{'p_outs':>8s}{'FAZ mm2':>9s}{'ratio':>7s}  flags"]
    for row in result["scans"]:
        lines.append(f"{row['scan']:28s}{row.get('grade_own', row['grade']):>12s}{row['p_ungradable']:8.3f}{row['p_gradable']:8.3f}"
                     f"{row['p_outstanding']:8.3f}{row['faz_area_mm2']:9.3f}{row['faz_axis_ratio']:7.2f}  {row['faz_flags']}")
    lines += ["", "Slab pairs (a deep image takes its superficial partner's grade when they are one acquisition)",
              f"{'scan':28s}{'own grade':>12s}{'grade':>12s}{'forced FAZ mm2':>16s}  grade source"]
    for row in result["scans"]:
        lines.append(f"{row['scan']:28s}{row.get('grade_own', row['grade']):>12s}{row['grade']:>12s}"
                     f"{row.get('forced_faz_area_mm2', math.nan):16.3f}  {row.get('grade_source', '')}")
    lines += ["", f"Degradation series (severities {', '.join(f'{s:g}' for s in SERIES_SEVERITIES)}; grade 2 "
                  "outstanding, 1 gradable, 0 ungradable)"]
    for row in result["series"]:
        lines.append(f"{row['image']:28s}{row['kind']:14s}{str(row['grades']):22s}"
                     f"{'monotone' if row['monotone'] else 'RISES':>10s}"
                     f"{'  worst ungradable' if row['worst_ungradable'] else '  worst NOT ungradable'}")
    lines.append(f"monotone {result['series_monotone']}/{result['series_total']}, ungradable at the worst severity "
                 f"{result['series_worst_ungradable']}/{result['series_total']}")
    rossa = result.get("rossa_test")
    if rossa:
        n = rossa["series_total"]
        lines += ["", f"Held-out real ROSSA images ({rossa['folder']}, {rossa['images']} images, never trained or "
                      "calibrated on)",
                  f"clean images graded ungradable/gradable/outstanding: {rossa['clean_grades']}",
                  f"macro F1 against the severity labels (clean + 4 kinds x 5 severities): {rossa['macro_f1']:.3f}",
                  f"series monotone {round(rossa['series_monotone'] * n)}/{n}, ungradable at the worst severity "
                  f"{round(rossa['series_worst_ungradable'] * n)}/{n}"]
    return "\n".join(lines)


__all__ = ["run_real_evaluation", "format_real", "degradation_series", "default_octagon_dir", "GRADES"]

"""The paper's results table: depth accuracy (delta < 1.25^k, ARD, RMSE on vessel pixels) and the 3D
centreline distances (Chamfer, Hausdorff, mm), for our model, the plain U-Net ablation and classical
baselines (constant depth on our vessel mask; Frangi vesselness + Otsu mask with constant depth).
"""

from __future__ import annotations

import numpy as np

from .. import metrics
from .data import OCTASample
from .pipeline import normalize_image, predict
from .reconstruction import reconstruct

COLUMNS = ("delta1", "delta2", "delta3", "ard", "rmse", "chamfer_mm", "hausdorff_mm", "dice")


def case_metrics(sample: OCTASample, vessel_mask: np.ndarray, depth: np.ndarray) -> dict:
    """Depth metrics on every pixel with a true depth (vessels and capillaries), vessel Dice, and 3D
    distances of the reconstruction."""
    report = metrics.depth_report(depth, sample.depth, sample.depth > 0)
    report["dice"] = metrics.dice(vessel_mask, sample.vessel)
    if sample.centerlines is not None and vessel_mask.any():
        network = reconstruct(vessel_mask, depth, sample.pixel_mm, sample.depth_range_mm)
        points = network.centerline_points()
        if len(points):
            report["chamfer_mm"] = metrics.chamfer_distance(points, sample.centerlines)
            report["hausdorff_mm"] = metrics.hausdorff_distance(points, sample.centerlines)
    return report


def _mean(reports: list[dict]) -> dict:
    keys = [k for k in COLUMNS if any(k in r for r in reports)]
    return {k: float(np.mean([r[k] for r in reports if k in r])) for k in keys}


def evaluate_model(net, samples: list[OCTASample], device: str = "cpu", threshold: float = 0.5) -> dict:
    """Mean metrics of a network over cases."""
    reports = []
    for sample in samples:
        probability, depth = predict(net, sample.image, device)
        reports.append(case_metrics(sample, probability > threshold, depth))
    return _mean(reports)


def mean_vessel_depth(samples: list[OCTASample]) -> float:
    """Mean relative depth over the vessel pixels of (training) cases: the constant-depth model."""
    return float(np.mean(np.concatenate([s.depth[s.depth > 0] for s in samples if s.has_depth])))


def frangi_mask(image: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Classical vessel mask: Frangi vesselness (bright ridges, 1-3 px scales) thresholded by Otsu."""
    from skimage.filters import frangi, threshold_otsu

    vesselness = frangi(normalize_image(image), sigmas=(0.7, 1.0, 1.5, 2.0), black_ridges=False)
    return vesselness > threshold_otsu(vesselness)


def evaluate_constant_depth(samples: list[OCTASample], constant: float, masks: list[np.ndarray]) -> dict:
    """Metrics of a constant depth on given vessel masks."""
    return _mean([case_metrics(s, m, np.full(s.depth.shape, constant, np.float32)) for s, m in zip(samples, masks)])


def results_table(samples: list[OCTASample], models: dict, constant: float, device: str = "cpu") -> list[dict]:
    """Rows ``{"method": name, metric: value}``: each model, then the constant-depth baselines."""
    rows = []
    our_masks = None
    for name, net in models.items():
        reports, masks = [], []
        for sample in samples:
            probability, depth = predict(net, sample.image, device)
            masks.append(probability > 0.5)
            reports.append(case_metrics(sample, masks[-1], depth))
        our_masks = our_masks or masks
        rows.append({"method": name, **_mean(reports)})
    if our_masks is not None:
        rows.append({"method": f"constant depth {constant:.3f} (our mask)",
                     **evaluate_constant_depth(samples, constant, our_masks)})
    classical = [frangi_mask(s.image, s.pixel_mm) for s in samples]
    rows.append({"method": f"Frangi+Otsu, constant depth {constant:.3f}",
                 **evaluate_constant_depth(samples, constant, classical)})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table (methods x metrics)."""
    header = f"{'method':44}" + "".join(f"{c:>13}" for c in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['method'][:44]:44}" + "".join(
            f"{row[c]:13.4f}" if c in row else f"{'-':>13}" for c in COLUMNS))
    return "\n".join(lines)

"""Densitometric QCA (issue 14, round 6): a study of the clinical complement to edge-based QCA. Not the default.

By Beer-Lambert, the background-subtracted log-attenuation integrated across a vessel's projection is
proportional to the lumen's cross-sectional area, whatever the blur: a throat below the resolution, whose
edges cannot be found, still removes its share of iodine from the ray sum. Along each view's own 2D path
(:func:`~.triangulation.own_view_samples`) :func:`integrated_darkness` sums the darkness below a linear
background (medians of two bands just outside the vessel) over a window as wide as the healthy vessel
plus a margin; :func:`densitometric_radii_px` turns it into an equivalent radius ``sqrt(kappa * area)``,
with the iodine per unit area ``kappa`` calibrated on the same view's resolved samples (edge radius above
``CALIBRATION_MIN_PX``), so the % diameter stenosis ``1 - sqrt(A_min / A_ref)`` comes out of the same QCA
(interpolated reference, 3-sample median, tighter view). :func:`hybrid_radii_px` keeps the edge radius
except where it is near the blur floor.

Measured on the fresh phantoms (see the Angio3D README, round 6): the per-sample area is far noisier than
the edge reading (log-sd of the equivalent radius along healthy vessel ~0.18 against ~0.04 for the lumen
regressor, i.e. an area noise of about a third of the reference area per sample, several times the whole
area of an 80 % throat), because the angiograms are not log-attenuation images: the phantoms' chain (as a
real system's) applies edge enhancement (unsharp masking, radius 1.5-8 px), a display gamma and, at
random, a linear (not log) transfer; ribs, lung texture and neighbouring vessels enter the window. So it
is kept as a measured study (``python -m VesselReconLib.angio3d.densitometry``), not a pipeline option.
"""

from __future__ import annotations

import argparse

import numpy as np

from .centerline import RADIUS_FLOOR_PX, vessel_profiles

DENSITY_MARGIN_PX = 3.0      # window half-width: the view's median edge radius plus this
DENSITY_BAND_PX = 2.0        # background bands just outside the window, each side
CALIBRATION_MIN_PX = 3.0     # samples with an edge radius above this (resolved) calibrate kappa
HYBRID_FLOOR_PX = 1.5        # hybrid: densitometry only where the edge radius is below this
STEP_PX = 0.5


def integrated_darkness(image: np.ndarray, points: np.ndarray, half_px: float) -> np.ndarray:
    """Per centreline point: the darkness below a linear background, summed across the vessel over
    ``|x| <= half_px`` (px x intensity). The background joins the medians of the two bands of
    ``DENSITY_BAND_PX`` just outside the window (the lumen's neighbours, not far-away structures)."""
    offsets, profiles = vessel_profiles(image, points, half_px + DENSITY_BAND_PX, STEP_PX)
    left, right = offsets < -half_px, offsets > half_px
    inside = ~(left | right)
    low, high = np.median(profiles[:, left], 1), np.median(profiles[:, right], 1)
    x_low, x_high = offsets[left].mean(), offsets[right].mean()
    background = low[:, None] + (high - low)[:, None] * (offsets[inside][None] - x_low) / (x_high - x_low)
    return (background - profiles[:, inside]).sum(1) * STEP_PX


def densitometric_radii_px(image: np.ndarray, points: np.ndarray, edge_radii_px: np.ndarray) -> np.ndarray:
    """Equivalent lumen radius (px) ``sqrt(kappa * area)`` at each point of one view's path; ``kappa``
    (px^2 per unit of integrated darkness) is the median of ``r_edge^2 / area`` over the resolved samples
    (all samples with a positive area where fewer than 10 are resolved). Floored at ``RADIUS_FLOOR_PX``."""
    edge = np.asarray(edge_radii_px, float)
    area = integrated_darkness(image, points, float(np.median(edge)) + DENSITY_MARGIN_PX)
    calibration = (edge > CALIBRATION_MIN_PX) & (area > 0)
    if calibration.sum() < 10:
        calibration = area > 0
    kappa = float(np.median(edge[calibration] ** 2 / area[calibration])) if calibration.any() else 0.0
    return np.maximum(np.sqrt(np.maximum(kappa * area, 0.0)), RADIUS_FLOOR_PX)


def hybrid_radii_px(edge_radii_px: np.ndarray, dens_radii_px: np.ndarray, floor_px: float = HYBRID_FLOOR_PX) -> np.ndarray:
    """The edge radius, except below ``floor_px`` (near the blur floor), where the smaller of the two."""
    edge = np.asarray(edge_radii_px, float)
    return np.where(edge < floor_px, np.minimum(edge, dens_radii_px), edge)


METHODS = ("edge", "densitometric", "hybrid")


def method_qca(images, qca_samples: dict) -> dict:
    """Main-branch QCA (:func:`~.pipeline.own_view_qca`) of one reconstruction by each of ``METHODS``:
    ``edge`` (the shipped radii, regressor or model fit), ``densitometric`` and ``hybrid``, all along each
    view's own first path with the same reference rule and view choice."""
    from .pipeline import own_view_qca

    out = {}
    for method in METHODS:
        own = []
        for image, view in zip(images, qca_samples["own"]):
            edge = view["radii"] / view["mm_per_px"]
            radii = edge
            if method != "edge":
                dens = densitometric_radii_px(image, view["pixels"], edge)
                radii = dens if method == "densitometric" else hybrid_radii_px(edge, dens)
            own.append(dict(view, radii=radii * view["mm_per_px"]))
        out[method] = own_view_qca({"points": qca_samples["points"], "own": own})
    return out


def true_path_samples(case: dict, result) -> dict:
    """The QCA samples of the **true** centreline projected into each view (the ceiling of a per-view
    measure: no path error), with the shipped lumen regressor's radii read along it."""
    from ..phantoms.xray import soi_centerlines
    from .centerline import lumen_radii_px, profile_radii_px
    from .lumen import shipped_regressor

    truth = soi_centerlines(case["case"])[0]["points"]
    own = []
    for view, geometry, probability in zip(case["views"], case["geometries"], result.probabilities):
        image, pixels = view["image"].astype(np.float32), geometry.project(truth)
        mask = lumen_radii_px(probability > 0.5, pixels)
        radii = shipped_regressor().radii(image, pixels, profile_radii_px(image, pixels, mask)[0], mask)
        mm = geometry.mm_per_pixel_at(truth)
        own.append({"pixels": pixels, "points": truth, "a_index": np.arange(len(truth), dtype=float),
                    "radii": np.maximum(radii, RADIUS_FLOOR_PX) * mm, "mm_per_px": mm,
                    "floored": np.zeros(len(truth), bool)})
    return {"points": truth, "own": own}


def study(seeds, true_path: bool = False, log=print) -> dict:
    """Signed main-branch QCA errors (points of % diameter stenosis) per method on ``make_case(seed)``
    phantoms, the shipped pipeline without SR (the QCA test's loop); ``true_path``: along the true
    centreline's projections instead of our own 2D paths. Also each view's own errors (``<method>_views``)."""
    from .. import registry
    from .lumen import phantom_run

    net = registry.load_model("angio3d", "angio3d-lite", "cpu")[0]
    errors = {k: [] for m in METHODS for k in (m, m + "_views")}
    for seed in seeds:
        case, images, result, _ = phantom_run(seed, net)
        samples = true_path_samples(case, result) if true_path else result.branches[0].views["qca_samples"]
        truth = case["case"].stenosis["percent_diameter"]
        for method, qca in method_qca(images, samples).items():
            errors[method].append(qca["percent_diameter_stenosis"] - truth)
            errors[method + "_views"].append(np.array(qca["percent_diameter_stenosis_views"]) - truth)
        log(f"{seed}: true {truth:.1f} " + " ".join(f"{m} {errors[m][-1]:+.1f}" for m in METHODS))
    return {m: np.array(e) for m, e in errors.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Densitometric vs edge QCA on fresh xray phantoms.")
    parser.add_argument("--seeds", default="7001-7260", help="make_case seeds, lo-hi")
    parser.add_argument("--true-path", action="store_true", help="measure along the true centreline's projections")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    lo, hi = (int(v) for v in args.seeds.split("-"))
    for method, e in study(range(lo, hi + 1), args.true_path).items():
        print(f"{method:22s} {'per view' if e.ndim > 1 else 'reported'}: mean |error| {np.abs(e).mean():.2f}  "
              f"bias {e.mean():+.2f}  median {np.median(np.abs(e)):.2f}  ({len(e)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality signals of a two-view reconstruction, for the reader to judge a result before trusting it.

- the size of the calibration correction (degrees and pixels), with a warning above sane bounds;
- the whole-centreline reprojection error per view (3D centreline projected against the 2D one);
- a warning when a segment is seen nearly end-on (strong foreshortening) in a view;
- a warning when the start/end points look swapped between the views (the swapped pairing fits the
  epipolar geometry much better than the given one);
- per branch, the depth uncertainty (1-sigma, mm) of its points from the view pair's geometry and the
  two views' residual disagreement (:func:`~.triangulation.depth_uncertainty`), with a warning where
  a fifth of the branch is poorly measured.
"""

from __future__ import annotations

import numpy as np

from .geometry import fundamental_matrix, epipolar_distances

MAX_ANGLE_CORRECTION_DEG = 3.0
MAX_OFFSET_CORRECTION_PX = 15.0
END_ON_FORESHORTENING = 0.5      # projected / true length below this: nearly end-on
SWAP_MIN_ERROR_PX = 8.0
POOR_DEPTH_MM = 1.0              # depth 1-sigma above this: the two views do not pin the point


def calibration_report(calibration) -> dict:
    """Correction applied to view B (degrees, pixels) and a warning when it is larger than the bounds."""
    delta = np.asarray(calibration.parameters, float)
    report = {"delta_primary_deg": round(float(delta[0]), 3), "delta_secondary_deg": round(float(delta[1]), 3),
              "offset_px": [round(float(delta[2]), 2), round(float(delta[3]), 2)],
              "epipolar_error_before_px": float(calibration.epipolar_error_before),
              "epipolar_error_after_px": float(calibration.epipolar_error_after), "warnings": []}
    angle, offset = float(np.abs(delta[:2]).max()), float(np.hypot(delta[2], delta[3]))
    if angle > MAX_ANGLE_CORRECTION_DEG or offset > MAX_OFFSET_CORRECTION_PX:
        report["warnings"].append(
            f"large calibration correction ({delta[0]:+.1f} deg primary, {delta[1]:+.1f} deg secondary, "
            f"{offset:.0f} px detector shift): check the C-arm angles and the start/end points")
    return report


def polyline_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 2) to a polyline (M, 2)."""
    a, b = polyline[:-1], polyline[1:]
    ab = b - a
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(1)


def reprojection_report(branches, geometries) -> dict:
    """Mean and max distance (px) of each view's 2D centreline from the projected 3D centreline."""
    out = {}
    for v, (name, geometry) in enumerate(zip("AB", geometries)):
        distances = np.concatenate([polyline_distance(geometry.project(b.centerline), b.centerlines_2d[v].points)
                                    for b in branches])
        out[name] = {"mean_px": round(float(distances.mean()), 3), "max_px": round(float(distances.max()), 3)}
    return out


def foreshortening(centerline: np.ndarray, geometry) -> float:
    """Projected chord over true chord (both at the isocentre scale): 1 broadside, 0 end-on."""
    chord = centerline[-1] - centerline[0]
    length = np.linalg.norm(chord)
    along_beam = abs(chord @ geometry.direction)
    return float(np.sqrt(max(length ** 2 - along_beam ** 2, 0.0)) / max(length, 1e-9))


def swapped_ends(points_a: np.ndarray, points_b: np.ndarray, geometry_a, geometry_b) -> bool:
    """True when pairing view A's start with view B's end (and vice versa) fits the epipolar geometry
    much better than the given pairing."""
    f = fundamental_matrix(geometry_a.projection_matrix(), geometry_b.projection_matrix())
    given = epipolar_distances(f, points_a, points_b).mean()
    swapped = epipolar_distances(f, points_a, points_b[::-1]).mean()
    return bool(given > SWAP_MIN_ERROR_PX and swapped < 0.5 * given)


def quality_report(branches, geometries, calibration, soi_points, recorded_geometries=None) -> dict:
    """All quality signals and the warnings a reader must see.

    :param soi_points: (2, B, 2, 2) start/end pixels per view and branch.
    :param recorded_geometries: the geometries before calibration (the swap test uses them, since the
        calibration itself fits the given pairing).
    """
    recorded = recorded_geometries or geometries
    report = {"calibration": calibration_report(calibration),
              "reprojection_px": reprojection_report(branches, geometries), "foreshortening": {}, "warnings": []}
    report["warnings"] += report["calibration"]["warnings"]
    for index, branch in enumerate(branches):
        name = "main" if index == 0 else f"side {index}"
        ratios = {view: round(foreshortening(branch.centerline, g), 3) for view, g in zip("AB", geometries)}
        report["foreshortening"][name] = ratios
        for view, ratio in ratios.items():
            if ratio < END_ON_FORESHORTENING:
                report["warnings"].append(f"{name} branch is seen nearly end-on in view {view} (projected length "
                                          f"{100 * ratio:.0f} % of the true length): choose a more open view")
        if swapped_ends(np.asarray(soi_points[0][index]), np.asarray(soi_points[1][index]), *recorded):
            report["warnings"].append(f"{name} branch: the start and end points look swapped between the views "
                                      "(the reverse pairing fits the geometry much better)")
    report["uncertainty_mm"] = {}
    for index, branch in enumerate(branches):
        sigma = branch.views.get("depth_sigma_mm")
        if sigma is None:
            continue
        name = "main" if index == 0 else f"side {index}"
        summary = {"median": round(float(np.median(sigma)), 3), "p90": round(float(np.percentile(sigma, 90)), 3),
                   "poorly_measured_fraction": round(float(np.mean(sigma > POOR_DEPTH_MM)), 3)}
        report["uncertainty_mm"][name] = summary
        if branch.views.get("rerouted"):
            report["warnings"].append(f"{name} branch: the two views' first 2D paths disagreed (one followed another "
                                      "vessel); both were re-routed jointly -- check the overlays")
        if summary["poorly_measured_fraction"] > 0.2:
            report["warnings"].append(
                f"{name} branch: the depth is poorly measured along {100 * summary['poorly_measured_fraction']:.0f} % "
                f"of it (1-sigma > {POOR_DEPTH_MM:g} mm; median {summary['median']:.1f} mm): it runs along the "
                "epipolar lines of this view pair or the views disagree there -- a third view would pin it")
    for view, values in report["reprojection_px"].items():
        if values["mean_px"] > 3.0:
            report["warnings"].append(f"view {view}: the 3D centreline reprojects {values['mean_px']:.1f} px "
                                      "(mean) from the 2D centreline: the views disagree")
    return report

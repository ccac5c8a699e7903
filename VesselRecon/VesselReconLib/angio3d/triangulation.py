"""3D centreline from two 2D centrelines: epipolar point correspondence and DLT triangulation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..phantoms.xray import resample_polyline
from .geometry import epipolar_lines, fundamental_matrix, triangulate_dlt


def epipolar_correspondence(points_a: np.ndarray, points_b: np.ndarray, f: np.ndarray,
                            prior: float = 0.05) -> np.ndarray:
    """For each point of centreline A, the fractional index along centreline B that corresponds to it.

    A monotonic alignment (dynamic time warping) minimises the summed distance of B's points to A's
    epipolar lines plus ``prior`` pixels per index of deviation from the arc-length correspondence
    (which settles stretches where the epipolar lines run along the vessel); each match is then
    refined to the sub-point crossing of the epipolar line nearby. Start and end correspond.
    """
    na, nb = len(points_a), len(points_b)
    lines = epipolar_lines(f, points_a)
    signed = lines @ np.c_[points_b, np.ones(nb)].T                               # (na, nb)
    guess = np.linspace(0, nb - 1, na)
    cost = np.abs(signed) + prior * np.abs(np.arange(nb)[None] - guess[:, None])
    path = _dtw_path(cost)
    path = np.asarray(path)
    match = np.bincount(path[:, 0], weights=path[:, 1], minlength=na) / np.bincount(path[:, 0], minlength=na)
    for i in range(1, na - 1):
        j = int(np.clip(round(match[i]), 1, nb - 2))
        d = signed[i, j - 1:j + 2]
        k = np.flatnonzero(np.sign(d[:-1]) != np.sign(d[1:]))
        if len(k):
            match[i] = j - 1 + k[0] + d[k[0]] / (d[k[0]] - d[k[0] + 1])
    match = np.maximum.accumulate(np.clip(match, 0, nb - 1))
    match[0], match[-1] = 0, nb - 1
    return match


def _dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Monotonic minimal-cost path from (0, 0) to (n-1, m-1) with steps (1,0), (0,1), (1,1)."""
    n, m = cost.shape
    total = np.full((n, m), np.inf)
    total[0] = np.cumsum(cost[0])
    diagonal = np.full(m, np.inf)                 # the previous row shifted by one column
    cumulative = np.cumsum(cost, axis=1)          # horizontal moves within each row
    for i in range(1, n):
        diagonal[1:] = total[i - 1, :-1]
        row = cost[i] + np.minimum(total[i - 1], diagonal)
        total[i] = cumulative[i] + np.minimum.accumulate(row - cumulative[i])   # min(row[j], row[j-1] + cost[i, j])
    total = total.tolist()                        # the walk back reads single values: Python floats
    i, j, path = n - 1, m - 1, [(n - 1, m - 1)]
    while i > 0 or j > 0:
        options = [(total[i - 1][j - 1], i - 1, j - 1) if i and j else (np.inf, 0, 0),
                   (total[i - 1][j], i - 1, j) if i else (np.inf, 0, 0),
                   (total[i][j - 1], i, j - 1) if j else (np.inf, 0, 0)]
        _, i, j = min(options)
        path.append((i, j))
    return path[::-1]


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    grid = np.arange(len(values))
    if values.ndim == 1:
        return np.interp(index, grid, values)
    return np.stack([np.interp(index, grid, values[:, k]) for k in range(values.shape[1])], 1)


RADIUS_FUSIONS = ("lesion", "mean", "min")


def fuse_radii(radii: np.ndarray, unreliable: np.ndarray, fusion: str = "lesion") -> np.ndarray:
    """One radius per sample from the two views' radii (2, N).

    ``"mean"``: the paper's mean of the two views; ``"min"``: the narrower view; ``"lesion"``: the
    mean, except where one view is unreliable there (another vessel overlaps the SOI, or its radius sits
    on the floor) and the other is not: then the clean view alone.
    """
    if fusion not in RADIUS_FUSIONS:
        raise ValueError(f"radius_fusion must be one of {', '.join(RADIUS_FUSIONS)}, not {fusion!r}")
    if fusion == "min":
        return radii.min(0)
    fused = radii.mean(0)
    if fusion == "lesion":
        only_a, only_b = unreliable[1] & ~unreliable[0], unreliable[0] & ~unreliable[1]
        fused = np.where(only_a, radii[0], np.where(only_b, radii[1], fused))
    return fused


DEPTH_SMOOTHNESS = 30.0    # px of view-B distance per mm of the 3D curve's second difference


def refine_depths(points: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray, geom_a, geom_b, match: np.ndarray,
                  weight: float | None = None, window: int = 10) -> np.ndarray:
    """Depths of view A's centreline points along their rays, fitted to view B's whole centreline.

    Each 3D point stays on its view-A ray (view A's centreline is honoured exactly); its depth ``t_i``
    minimises the signed distance of its view-B projection to view B's centreline (nearest point
    within ``window`` samples of the epipolar match) plus ``weight`` times the curve's second
    difference. Where the vessel runs along the epipolar lines the distance term is flat in ``t`` (the
    depth is unobservable there) and the smoothness term carries the depth over from the well-seen
    neighbours, instead of a point-wise match that slides along the vessel. The two ends (the clicked
    start and end, triangulated directly) are kept. Solved by damped Gauss-Newton with the soft-L1
    loss on the data term as iteratively reweighted least squares: each step is one banded
    (pentadiagonal) solve with the analytic Jacobian (the smoothness term is linear in the depths).
    """
    from scipy.linalg import solveh_banded

    weight = DEPTH_SMOOTHNESS if weight is None else weight
    source, rays = geom_a.pixel_rays(pts_a)
    t = ((np.asarray(points, float) - source) * rays).sum(1)
    n, nb = len(t), len(pts_b)
    factor = 8
    fine = resample_polyline(np.asarray(pts_b, float), n=factor * (nb - 1) + 1)
    tangent = np.gradient(fine, axis=0)
    normal = np.c_[-tangent[:, 1], tangent[:, 0]] / np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    centre = np.round(np.asarray(match, float) * factor).astype(int)
    candidates = np.clip(centre[:, None] + np.arange(-window * factor, window * factor + 1)[None], 0, len(fine) - 1)
    near_points, near_normals = fine[candidates], normal[candidates]           # (n, K, 2)
    p_b = geom_b.projection_matrix()
    ray_h = rays @ p_b[:, :3].T                     # d(homogeneous view-B projection)/dt, per point
    source_h = p_b[:, :3] @ source + p_b[:, 3]
    rows = np.arange(n)
    # smoothness: second difference of the 3D curve, linear in t -> constant pentadiagonal normal matrix
    # (the Gram matrix of the rays' second-difference stencil); only the inner depths move
    gram = rays @ rays.T
    stencil = ((0, 1.0), (1, -2.0), (2, 1.0))
    smooth_normal = np.zeros((3, n))                # upper banded form for solveh_banded (full index)
    inner = np.arange(n - 2)
    for a, ca in stencil:
        for b, cb in stencil:
            if b >= a:
                np.add.at(smooth_normal[2 - (b - a)], inner + b, weight ** 2 * ca * cb * gram[inner + a, inner + b])

    def terms(depths):
        homog = source_h[None] + depths[:, None] * ray_h
        proj = homog[:, :2] / homog[:, 2:3]
        k = np.argmin(((near_points - proj[:, None]) ** 2).sum(-1), axis=1)
        data = ((proj - near_points[rows, k]) * near_normals[rows, k]).sum(1)
        slope = ((ray_h[:, :2] * homog[:, 2:3] - homog[:, :2] * ray_h[:, 2:3]) / homog[:, 2:3] ** 2
                 * near_normals[rows, k]).sum(1)
        world = source + depths[:, None] * rays
        second = weight * (world[:-2] - 2 * world[1:-1] + world[2:])
        return data, slope, second

    def cost(data, second):
        return float((2 * f_scale ** 2 * (np.sqrt(1 + (data / f_scale) ** 2) - 1)).sum() + (second ** 2).sum())

    f_scale = 2.0
    data, slope, second = terms(t)
    current = cost(data, second)
    damping = 1e-3
    for _ in range(30):
        robust = 1.0 / np.sqrt(1 + (data / f_scale) ** 2)            # IRLS weight of the soft-L1 loss
        gradient = robust * slope * data
        for a, ca in stencil:                                        # smoothness gradient: S^T (S t + c)
            gradient[a:n - 2 + a] += weight * ca * (second * rays[a:n - 2 + a]).sum(1)
        band = smooth_normal.copy()
        band[2] += robust * slope ** 2
        band[2] += damping * (band[2].max() + 1e-9)
        step = -solveh_banded(band[:, 1:-1], gradient[1:-1])
        trial = t.copy()
        trial[1:-1] += step                                          # the clicked ends stay where the DLT put them
        trial_terms = terms(trial)
        trial_cost = cost(trial_terms[0], trial_terms[2])
        if trial_cost <= current:
            t, (data, slope, second), improvement, current = trial, trial_terms, current - trial_cost, trial_cost
            damping = max(damping / 3, 1e-7)
            if improvement < 1e-6 * max(current, 1e-9) or np.abs(step).max() < 1e-4:
                break
        else:
            damping *= 10
    return source + t[:, None] * rays


SIGMA_2D_PX = 1.0    # typical 2D centreline error (px) assumed for the depth uncertainty
MAX_SIGMA_MM = 50.0


def depth_uncertainty(points: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray, geom_a, geom_b,
                      sigma_px: float = SIGMA_2D_PX) -> np.ndarray:
    """Per point, the 1-sigma error (mm) of its position along view A's ray (its depth).

    The depth is read in view B: moving a point along its view-A ray moves its view-B projection along
    the epipolar line at ``rate`` px per mm; only the part across view B's centreline (``rate_perp``)
    is measured. A 2D error of ``sigma`` px -- ``sigma_px`` plus whatever the two views still disagree
    there (the distance of the projection from view B's centreline) -- gives ``sigma / rate_perp`` mm.
    Where the vessel runs along the epipolar lines ``rate_perp`` -> 0 and the depth is not measured at
    all (capped at ``MAX_SIGMA_MM``); the smoothness of the depth refit then only interpolates it.
    """
    source, rays = geom_a.pixel_rays(pts_a)
    t = ((np.asarray(points, float) - source) * rays).sum(1)
    p_b = geom_b.projection_matrix()
    ray_h = rays @ p_b[:, :3].T
    homog = (p_b[:, :3] @ source + p_b[:, 3])[None] + t[:, None] * ray_h
    proj = homog[:, :2] / homog[:, 2:3]
    rate = (ray_h[:, :2] * homog[:, 2:3] - homog[:, :2] * ray_h[:, 2:3]) / homog[:, 2:3] ** 2     # px / mm
    fine = resample_polyline(np.asarray(pts_b, float), n=8 * (len(pts_b) - 1) + 1)
    tangent = np.gradient(fine, axis=0)
    normal = np.c_[-tangent[:, 1], tangent[:, 0]] / np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    nearest = np.argmin(((fine[None] - proj[:, None]) ** 2).sum(-1), axis=1)
    disagreement = np.abs(((proj - fine[nearest]) * normal[nearest]).sum(1))
    rate_perp = np.abs((rate * normal[nearest]).sum(1))
    sigma = np.sqrt(sigma_px ** 2 + disagreement ** 2)
    return np.minimum(sigma / np.maximum(rate_perp, 1e-6), MAX_SIGMA_MM)


def triangulate_points(points_a: np.ndarray, points_b: np.ndarray, geom_a, geom_b, smooth: float = 1.5,
                       depth_refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The geometric part of :func:`triangulate_centerline`: 3D points at view A's samples (before
    resampling) and the epipolar match of each in view B's path (fractional index)."""
    p_a, p_b = geom_a.projection_matrix(), geom_b.projection_matrix()
    match = epipolar_correspondence(points_a, points_b, fundamental_matrix(p_a, p_b))
    points = triangulate_dlt(p_a, p_b, points_a, _at(points_b, match))
    if depth_refine:
        points = refine_depths(points, points_a, points_b, geom_a, geom_b, match)
    if smooth:
        inner = ndimage.gaussian_filter1d(points, smooth, axis=0, mode="nearest")
        inner[0], inner[-1] = points[0], points[-1]
        points = inner
    return points, match


def triangulate_centerline(line_a, line_b, geom_a, geom_b, n: int = 100, smooth: float = 1.5,
                           radius_fusion: str = "mean", details: bool = False, depth_refine: bool = True):
    """3D centreline P (n, 3) and lumen radius R (n,) from two :class:`Centerline2D`.

    Radii: each view's radius converted from pixels to mm at the triangulated point's own depth
    (pixel size x distance from the source / SID), then fused by :func:`fuse_radii`. With
    ``details`` a third value holds, per view and resampled on P, the radii (2, n) in mm and the
    ``floored`` and ``overlap`` flags (2, n), and under ``qca_samples`` the 3D points at view A's own
    samples and each view's QCA radii at its own samples (:func:`own_view_samples`, not resampled).
    """
    if radius_fusion not in RADIUS_FUSIONS:
        raise ValueError(f"radius_fusion must be one of {', '.join(RADIUS_FUSIONS)}, not {radius_fusion!r}")
    points, match = triangulate_points(line_a.points, line_b.points, geom_a, geom_b, smooth, depth_refine)
    mm_a, mm_b = geom_a.mm_per_pixel_at(points), geom_b.mm_per_pixel_at(points)
    per_view = np.stack([line_a.radii_px * mm_a, _at(line_b.radii_px, match) * mm_b])
    floored = np.stack([line_a.floored, _at(line_b.floored.astype(float), match) > 0.5])
    overlap = np.stack([line_a.overlap, _at(line_b.overlap.astype(float), match) > 0.5])
    radii = fuse_radii(per_view, floored | overlap, radius_fusion)
    out_points, out_radii = resample_polyline(points, radii, n)
    if not details:
        return out_points, out_radii
    qca_view = np.stack([line_a.qca_radii_px * mm_a, _at(line_b.qca_radii_px, match) * mm_b])
    sigma = depth_uncertainty(points, line_a.points, line_b.points, geom_a, geom_b)
    extra = {"radii": np.stack([resample_polyline(points, r, n)[1] for r in per_view]),
             "depth_sigma_mm": resample_polyline(points, sigma, n)[1],
             "qca_radii": np.stack([resample_polyline(points, r, n)[1] for r in qca_view]),
             "floored": np.stack([resample_polyline(points, f.astype(float), n)[1] > 0.5 for f in floored]),
             "overlap": np.stack([resample_polyline(points, f.astype(float), n)[1] > 0.5 for f in overlap])}
    # QCA reads the per-view radii where they were measured (each view's own samples), not resampled:
    # every linear resampling of a sharp narrowing raises its minimum
    extra["qca_samples"] = {"points": points, "own": own_view_samples(points, line_a, line_b, match, geom_a, geom_b)}
    return out_points, out_radii, extra


def own_view_samples(points: np.ndarray, line_a, line_b, match: np.ndarray, geom_a, geom_b) -> list[dict]:
    """Each view's QCA radii at its **own** 2D samples (mm at the depth of the 3D point each corresponds to,
    ``mm_per_px`` per sample), with their pixels and 3D points: a view's lesion is measured where that view's path saw it, even where
    the other view's path detours (a correspondence through the epipolar match would skip it)."""
    index = np.arange(len(points), dtype=float)
    order = np.maximum.accumulate(np.asarray(match, float)) + 1e-9 * index        # strictly increasing
    a_of_b = np.interp(np.arange(len(line_b.points), dtype=float), order, index)
    points_b = _at(points, a_of_b)
    out = []
    for line, geometry, where, at in ((line_a, geom_a, points, index), (line_b, geom_b, points_b, a_of_b)):
        mm = geometry.mm_per_pixel_at(where)
        out.append({"pixels": line.points, "points": where, "a_index": at, "radii": line.qca_radii_px * mm,
                    "mm_per_px": mm, "floored": np.asarray(line.floored, bool)})
        if getattr(line, "qca_inputs", None) is not None:
            out[-1]["strip_inputs"] = line.qca_inputs
    return out

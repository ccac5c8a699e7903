"""2D SOI centrelines: geodesic minimal path on a vessel-probability cost map, resampled, with radii."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from ..phantoms.xray import resample_polyline

N_POINTS = 100
RADIUS_FLOOR_PX = 0.5
OVERLAP_RATIO = 1.6


@dataclass
class Centerline2D:
    """A view's SOI centreline: pixels (N, 2) = (column, row) and lumen radii in pixels and in mm at the isocentre."""

    points: np.ndarray
    radii_px: np.ndarray
    radii_mm: np.ndarray
    floored: np.ndarray | None = None      # (N,) radius at the 0.5 px floor (no lumen found there)
    overlap: np.ndarray | None = None      # (N,) densitometry says another vessel overlaps the SOI here
    qca_radii_px: np.ndarray | None = None  # (N,) radii from the angiogram's edge profiles (QCA)
    qca_inputs: np.ndarray | None = None    # (C, N) the strip reader's inputs (QCA two-view fusion), if it read them

    def __post_init__(self):
        if self.qca_radii_px is None:
            self.qca_radii_px = self.radii_px
        if self.floored is None:
            self.floored = self.radii_px <= RADIUS_FLOOR_PX + 1e-6
        if self.overlap is None:
            self.overlap = np.zeros(len(self.points), bool)


PATH_EPS = 0.05       # probability floor of the path cost (the price of a gap), see :func:`cost_map`


def cost_map(probability: np.ndarray, eps: float = PATH_EPS, threshold: float = 0.5) -> np.ndarray:
    """Travel cost ``1 / ((p + eps) (1 + EDT))``: cheap inside the vessel and cheapest on its medial
    axis (so paths do not cut corners); ``eps`` bounds the price of crossing the short gap of a tight
    stenosis (chosen on the validation phantoms against a squared-EDT and an additive variant)."""
    distance = foreground_edt(probability > threshold)
    return 1.0 / (np.clip(probability, 0, 1) + eps) / (1.0 + distance)


def foreground_edt(mask: np.ndarray) -> np.ndarray:
    """``ndimage.distance_transform_edt(mask)``, computed on the foreground's bounding box plus one pixel of
    background only (the same values: the nearest background pixel of a foreground pixel lies in that box)."""
    (top, left), (bottom, right) = _support_box(mask)
    out = np.zeros(mask.shape)
    if top <= bottom:
        box = np.s_[max(top - 1, 0):bottom + 2, max(left - 1, 0):right + 2]
        out[box] = ndimage.distance_transform_edt(mask[box])
    return out


GUIDE_PX = 4.0        # corridor half-width (px) of a guided path: cost x (1 + (d / GUIDE_PX)^2)


def guide_distance(guide: np.ndarray, lo: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Distance (px) of every pixel of a box (origin ``lo`` = (row, col), ``shape``) to a guide polyline (K, 2)."""
    guide = np.asarray(guide, float)
    length = np.linalg.norm(np.diff(guide, axis=0), axis=1).sum()
    dense = np.round(resample_polyline(guide, n=max(int(2 * length), 2))[:, ::-1] - lo).astype(int)
    dense = dense[((dense >= 0) & (dense < np.asarray(shape))).all(1)]
    marks = np.ones(shape, bool)
    marks[dense[:, 0], dense[:, 1]] = False
    return ndimage.distance_transform_edt(marks) if len(dense) else np.zeros(shape)


def _support_box(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the first and last pixel rows/columns where ``probability > 0`` (empty: an
    inverted box that leaves the end points' own box unchanged); the bounds of ``np.argwhere``."""
    support = probability > 0
    rows, cols = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
    if len(rows) == 0:
        return np.array([np.iinfo(int).max] * 2), np.array([np.iinfo(int).min] * 2)
    return np.array([rows[0], cols[0]]), np.array([rows[-1], cols[-1]])


AVOID_PX, AVOID_GAIN = 4.0, 50.0     # an avoided stretch: cost x 51 within 4 px of it


def geodesic_path(probability: np.ndarray, start: np.ndarray, end: np.ndarray, margin: int = 12,
                  eps: float | None = None, guide: np.ndarray | None = None,
                  avoid: np.ndarray | None = None) -> np.ndarray:
    """Minimal path (K, 2) in (column, row) from ``start`` to ``end`` with ``skimage.graph.route_through_array``,
    searched inside the probability map's support box (plus a margin). With a ``guide`` polyline (K, 2)
    the cost grows with the distance from it (a corridor of ``GUIDE_PX``): used to re-route a view's
    path along where the other view says the vessel is. With ``avoid`` (a polyline) the pixels near it cost
    ``1 + AVOID_GAIN`` times more: the second-best route, around a stretch the other view disagrees with."""
    from skimage.graph import route_through_array

    rows, cols = probability.shape
    ends = np.round([start[::-1], end[::-1]]).astype(int)
    first, last = _support_box(probability)
    lo = np.clip(np.minimum(ends.min(0), first) - margin, 0, None)
    hi = np.minimum(np.maximum(ends.max(0), last) + margin + 1, (rows, cols))
    ends = np.clip(ends, 0, [rows - 1, cols - 1])
    cost = cost_map(probability[lo[0]:hi[0], lo[1]:hi[1]], PATH_EPS if eps is None else eps)
    if guide is not None:
        cost = cost * (1.0 + (guide_distance(guide, lo, cost.shape) / GUIDE_PX) ** 2)
    if avoid is not None and len(avoid) > 1:
        cost = cost * (1.0 + AVOID_GAIN * (guide_distance(avoid, lo, cost.shape) < AVOID_PX))
    if not np.isfinite(cost).all():  # route_through_array crashes the process on NaN costs
        from ..errors import InferenceError

        raise InferenceError("The vessel probability of a view holds NaN values (centreline extraction step): "
                             "the segmenter output is invalid; load another model or use the Frangi segmenter.")
    path, _ = route_through_array(cost, tuple(ends[0] - lo), tuple(ends[1] - lo), fully_connected=True, geometric=True)
    return (np.asarray(path, float) + lo)[:, ::-1]


def smooth_resample(path: np.ndarray, start: np.ndarray, end: np.ndarray, n: int = N_POINTS,
                    sigma: float = 2.0) -> np.ndarray:
    """Gaussian-smoothed path with the exact start/end points, resampled to ``n`` points by arc length."""
    path = np.asarray(path, float).copy()
    path[0], path[-1] = start, end
    if len(path) > 4:
        smoothed = ndimage.gaussian_filter1d(path, sigma, axis=0, mode="nearest")
        weight = np.clip(np.minimum(np.arange(len(path)), np.arange(len(path))[::-1]) / (2 * sigma), 0, 1)[:, None]
        path = weight * smoothed + (1 - weight) * path
    return resample_polyline(path, n=n)


def lumen_radii_px(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Radius (pixels) at each centreline point: the distance transform's ridge value near the point,
    minus a quarter pixel (the transform measures to background pixel centres; calibrated on phantoms)."""
    points = np.asarray(points, float)
    lo = np.clip(np.floor(points.min(0)).astype(int) - 40, 0, None)           # the SOI's box (+ 40 px)
    hi = np.minimum(np.ceil(points.max(0)).astype(int) + 41, mask.shape[::-1])
    box = np.pad(mask[lo[1]:hi[1], lo[0]:hi[0]], 1)          # outside the image counts as background
    distance = foreground_edt(box)[1:-1, 1:-1]
    values = max3_at(distance, points - lo, mode="nearest")
    return np.maximum(values - 0.25, RADIUS_FLOOR_PX)


def max3_at(values: np.ndarray, points: np.ndarray, mode: str = "constant") -> np.ndarray:
    """``map_coordinates(maximum_filter(values, 3), points, order=1, mode)`` at (column, row) ``points`` inside
    ``values``, filtering only the points' box plus 3 px (the same numbers: every 3 x 3 neighbourhood read
    lies in it, and shifting non-negative coordinates by whole pixels is exact)."""
    lo = np.clip(np.floor(points.min(0)).astype(int) - 3, 0, None)
    hi = np.minimum(np.ceil(points.max(0)).astype(int) + 4, values.shape[::-1])
    ridge = ndimage.maximum_filter(values[lo[1]:hi[1], lo[0]:hi[0]], size=3)
    local = points - lo
    return ndimage.map_coordinates(ridge, [local[:, 1], local[:, 0]], order=1, mode=mode)


def overlap_flags(image: np.ndarray, points: np.ndarray, radii_px: np.ndarray,
                  ratio: float = OVERLAP_RATIO) -> np.ndarray:
    """Samples where another vessel overlaps the SOI, by densitometry: the vessel's darkness against
    its local background (black top-hat) per unit of projected diameter, more than ``ratio`` times its
    median along the SOI, means more iodine in the ray than the SOI's own lumen holds."""
    points = np.asarray(points, float)
    size = int(2 * np.ceil(4 * np.percentile(radii_px, 90) + 4) + 1)
    lo = np.clip(np.floor(points.min(0)).astype(int) - size, 0, None)
    hi = np.minimum(np.ceil(points.max(0)).astype(int) + size + 1, image.shape[::-1])
    window = np.asarray(image, np.float32)[lo[1]:hi[1], lo[0]:hi[0]]
    window = ndimage.uniform_filter(window, 3)
    darkness = ndimage.black_tophat(window, size=(size, size))
    values = max3_at(darkness, points - lo)
    per_diameter = values / np.maximum(2 * radii_px, 1.0)
    return per_diameter > ratio * max(np.median(per_diameter), 1e-9)


PROFILE_STEP = 0.5                      # px between samples across the vessel
PROFILE_ALONG = (-1.0, -0.5, 0.0, 0.5, 1.0)   # px along the vessel: lines averaged into one profile
PROFILE_BLUR_PX = 1.2                   # Gaussian blur of the lumen model (focal spot + detector + sampling)
FIT_RADII_PX = np.r_[np.arange(0.2, 3.0, 0.1), np.arange(3.0, 20.0, 0.25)]
FIT_CENTRES_PX = np.arange(-2.0, 2.01, 0.5)
RESOLVED_PX = 2.5                       # radii above this are measured by the edges, below by densitometry
DENSITOMETRIC_GAIN = 1.25      # iodine per chord at a narrowing / along the healthy vessel (see README)


def vessel_profiles(image: np.ndarray, points: np.ndarray, reach: float, step: float = PROFILE_STEP,
                    along: tuple = PROFILE_ALONG) -> tuple[np.ndarray, np.ndarray]:
    """Intensity profiles (N, L) across the vessel at each centreline point (normal to it), each the mean
    of lines ``along`` px apart along the vessel (noise down, no smoothing of a narrowing beyond 1 px)."""
    points = np.asarray(points, float)
    tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.c_[-tangent[:, 1], tangent[:, 0]]
    offsets = np.arange(-reach, reach + step / 2, step)
    image = np.asarray(image, np.float32)
    shift = np.asarray(along, float)[:, None, None, None]
    xy = points[None, :, None, :] + offsets[None, None, :, None] * normal[None, :, None, :] + shift * tangent[None, :, None, :]
    lines = ndimage.map_coordinates(image, [xy[..., 1], xy[..., 0]], order=1, mode="nearest")   # one call
    total = 0.0
    for line in lines:                 # summed in order (the same floats as one line at a time)
        total = total + line
    return offsets, total / len(along)


TEMPLATE_STEP = 0.05                    # px: the fine grid the blurred chords are computed on


@lru_cache(maxsize=4)
def _blurred_chords(sigma: float) -> np.ndarray:
    """(R, F) projected chord of a round lumen of each radius in ``FIT_RADII_PX``, blurred by a Gaussian
    of ``sigma`` px, on a fine grid of ``TEMPLATE_STEP`` px from -60 to 60 px (computed once)."""
    fine = np.arange(-60.0, 60.0001, TEMPLATE_STEP)
    kernel = np.exp(-0.5 * (np.arange(-6 * sigma, 6 * sigma + 0.001, TEMPLATE_STEP) / sigma) ** 2)
    kernel /= kernel.sum()
    chords = 2 * np.sqrt(np.maximum(FIT_RADII_PX[:, None] ** 2 - fine[None] ** 2, 0))
    return ndimage.convolve1d(chords, kernel, axis=1, mode="constant")


def _lumen_templates(offsets: tuple, sigma: float, centres: np.ndarray = FIT_CENTRES_PX) -> np.ndarray:
    """(R * C, L) projected chord of a round lumen of each radius in ``FIT_RADII_PX`` centred at each
    of ``centres``, blurred by a Gaussian of ``sigma`` px, sampled at ``offsets`` (linear
    interpolation of :func:`_blurred_chords`)."""
    chords = _blurred_chords(float(sigma))
    position = (np.asarray(offsets)[None, :] - centres[:, None] + 60.0) / TEMPLATE_STEP          # (C, L)
    position = np.clip(position, 0, chords.shape[1] - 1)
    low = np.minimum(np.floor(position).astype(int), chords.shape[1] - 2)
    frac = position - low
    values = chords[:, low] * (1 - frac) + chords[:, low + 1] * frac                            # (R, C, L)
    return values.reshape(len(FIT_RADII_PX) * len(centres), -1)


CONTRAST_PRIOR = 0.3                    # std of log(iodine per chord) about the healthy vessel's value
CONTRAST_STEPS = np.exp(np.linspace(-0.9, 0.9, 13))


def _fit_terms(profiles: np.ndarray, offsets: np.ndarray, sigma: float, centres: np.ndarray = FIT_CENTRES_PX) -> tuple:
    """The profiles and lumen templates (centred at each of ``centres``) with their linear background projected
    out, and their inner products (shared by the free and the constrained fit of :func:`_fit_lumen`)."""
    templates = _lumen_templates(tuple(np.round(offsets, 6)), float(sigma), centres)
    basis, _ = np.linalg.qr(np.c_[np.ones_like(offsets), offsets / np.abs(offsets).max()])
    shapes = templates - (templates @ basis) @ basis.T            # removes the linear background
    data = profiles - (profiles @ basis) @ basis.T                # (K, L), (N, L)
    energy = (shapes * shapes).sum(1) + 1e-12
    # the one large product through torch, so that it runs on the caller's torch threads (a
    # multi-threaded BLAS on a busy machine is ~50 x slower for these sizes)
    dot = (torch.from_numpy(np.ascontiguousarray(data)) @ torch.from_numpy(np.ascontiguousarray(shapes)).T).numpy()
    return energy, dot, (data * data).sum(1)                      # (K,), (N, K), (N,)


def _free_fit(energy: np.ndarray, dot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per profile, the best template (index into :func:`_fit_terms`' templates) with a free iodine amount
    ``A >= 0``, that ``A`` and the drop of the residual sum of squares it gives."""
    rows = np.arange(len(dot))
    amplitude = np.maximum(-dot / energy, 0)
    error = amplitude ** 2 * energy + 2 * amplitude * dot
    best = np.argmin(error, 1)
    return best, amplitude[rows, best], error[rows, best]


def fitted_lumen_centres(profiles: np.ndarray, offsets: np.ndarray, centres: np.ndarray,
                         sigma: float = PROFILE_BLUR_PX) -> np.ndarray:
    """The centre (px, one of ``centres``) of the free lumen fit of :func:`_fit_lumen` to each profile."""
    energy, dot, _ = _fit_terms(profiles, offsets, sigma, np.asarray(centres, float))
    return np.asarray(centres, float)[_free_fit(energy, dot)[0] % len(centres)]


def _fit_lumen(profiles: np.ndarray, offsets: np.ndarray, sigma: float, contrast: np.ndarray | None = None,
               noise: float | None = None, terms: tuple | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of ``b0 + b1 x - A chord(x; r, c)`` (blurred) to each profile: a linear
    background, the iodine per unit chord ``A``, radius ``r`` and centre ``c`` on a grid.

    Without ``contrast`` A is free (> 0). With it (one value per profile, the healthy vessel's) and the
    profile ``noise`` variance, A is searched around it under a log-normal prior of std
    ``CONTRAST_PRIOR``: a resolved lumen's edges overrule the prior, a sub-resolution one's total
    darkness (its cross-section) is read with the healthy vessel's contrast. Returns r (px), A and the
    residual sum of squares per profile.
    """
    energy, dot, base = _fit_terms(profiles, offsets, sigma) if terms is None else terms
    rows = np.arange(len(dot))
    if contrast is None:
        best, amplitude, error = _free_fit(energy, dot)
        return FIT_RADII_PX[best // len(FIT_CENTRES_PX)], amplitude, base + error
    best_cost = np.full(len(dot), np.inf)
    best_k, best_a, best_sse = np.zeros(len(dot), int), np.zeros(len(dot)), np.zeros(len(dot))
    for step in CONTRAST_STEPS:
        amplitude = np.asarray(contrast, float)[:, None] * step
        error = amplitude ** 2 * energy + 2 * amplitude * dot
        k = np.argmin(error, 1)
        sse = base + error[rows, k]
        cost = sse / (2 * noise) + 0.5 * (np.log(step) / CONTRAST_PRIOR) ** 2
        better = cost < best_cost
        best_cost[better], best_k[better], best_sse[better] = cost[better], k[better], sse[better]
        best_a[better] = amplitude[better, 0]
    return FIT_RADII_PX[best_k // len(FIT_CENTRES_PX)], best_a, best_sse


def profiles_within(wide: tuple[np.ndarray, np.ndarray] | None, reach: float) -> tuple | None:
    """The part of :func:`vessel_profiles` ``(offsets, profiles)`` computed at a larger reach that equals the
    profiles at ``reach`` (the same offsets, so the same samples); ``None`` when the offsets do not line up."""
    if wide is None:
        return None
    offsets = np.arange(-reach, reach + PROFILE_STEP / 2, PROFILE_STEP)
    start = int(np.searchsorted(wide[0], offsets[0]))
    if not np.array_equal(wide[0][start:start + len(offsets)], offsets):
        return None
    return offsets, wide[1][:, start:start + len(offsets)]


def profile_radii_px(image: np.ndarray, points: np.ndarray, mask_radii: np.ndarray,
                     sigma: float = PROFILE_BLUR_PX, wide: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lumen radius (px) at each centreline point from the angiogram's own intensity profiles (QCA).

    A round lumen's projection (its chord across the vessel, blurred) is fitted to each profile on a
    linear local background (:func:`_fit_lumen`). First freely, which finds the healthy vessel's iodine
    per unit chord (running median of the typical fits nearby, times ``DENSITOMETRIC_GAIN``); then with
    that contrast as a prior: where the lumen is resolved its edges fix the radius, where it is not
    (width and contrast trade off in the noise) the fit reads the narrowing's total darkness, i.e. its
    cross-section (videodensitometry), which blur does not change. Returns the radii and a flag where
    no vessel was found in the profile (there the mask radius is kept). ``wide``: profiles already sampled
    at a larger reach (:func:`profiles_within`), used instead of sampling again where they line up.
    """
    points = np.asarray(points, float)
    mask_radii = np.asarray(mask_radii, float)
    reach = float(max(10.0, np.percentile(mask_radii, 90) + 6.0))
    offsets, profiles = profiles_within(wide, reach) or vessel_profiles(image, points, reach)
    terms = _fit_terms(profiles, offsets, sigma)
    free, amplitude, sse = _fit_lumen(profiles, offsets, sigma, terms=terms)
    typical = np.median(free)
    resolved = np.flatnonzero((free > 0.6 * typical) & (free < 1.4 * typical) & (amplitude > 0))
    faint = amplitude <= 0
    if len(resolved) == 0:
        return np.maximum(mask_radii, RADIUS_FLOOR_PX), np.ones(len(points), bool)
    nearest = np.argsort(np.abs(resolved[None, :] - np.arange(len(points))[:, None]), axis=1)[:, :21]
    contrast = np.median(amplitude[resolved][nearest], axis=1) * DENSITOMETRIC_GAIN
    noise = float(np.median(sse[resolved])) / max(len(offsets) - 5, 1)
    prior, _, _ = _fit_lumen(profiles, offsets, sigma, contrast, noise, terms=terms)
    radii = np.where(free >= RESOLVED_PX, free, prior)
    radii = np.where(faint, mask_radii, radii)
    return np.maximum(radii, RADIUS_FLOOR_PX), faint


def extract_centerline(probability: np.ndarray, start: np.ndarray, end: np.ndarray, geometry,
                       n: int = N_POINTS, threshold: float = 0.5, image: np.ndarray | None = None,
                       guide: np.ndarray | None = None, avoid: np.ndarray | None = None,
                       lumen=None) -> Centerline2D:
    """Centreline and radii of one view's SOI from its vessel probability map (and, given the
    ``image``, the densitometric overlap flags and the QCA radii: the profile model fit, or, given a
    ``lumen`` regressor (:class:`~.lumen.LumenRegressor`), its reading of the same profiles).

    Radii in mm are given at the isocentre: pixels x ImagerPixelSpacing / (SID / SOD).
    """
    points = centerline_points(probability, start, end, n, guide, avoid)
    return measure_centerline(probability, points, geometry, threshold, image, lumen)


def centerline_points(probability: np.ndarray, start: np.ndarray, end: np.ndarray, n: int = N_POINTS,
                      guide: np.ndarray | None = None, avoid: np.ndarray | None = None) -> np.ndarray:
    """The path part of :func:`extract_centerline`: ``n`` smoothed points (column, row), no radii."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    return smooth_resample(geodesic_path(probability, start, end, guide=guide, avoid=avoid), start, end, n)


def measure_centerline(probability: np.ndarray, points: np.ndarray, geometry, threshold: float = 0.5,
                       image: np.ndarray | None = None, lumen=None) -> Centerline2D:
    """The radii part of :func:`extract_centerline` along given ``points``."""
    radii = lumen_radii_px(probability > threshold, points)
    overlap, qca_radii, inputs = None, None, None
    if image is not None:
        overlap = overlap_flags(image, points, radii)
        wide = None if lumen is None else vessel_profiles(image, points, lumen.REACH_PX)    # sampled once for both
        qca_radii = profile_radii_px(image, points, radii, wide=wide)[0]
        if hasattr(lumen, "read"):
            qca_radii, inputs = lumen.read(image, points, qca_radii, radii, profiles=wide[1])
        elif lumen is not None:
            qca_radii = lumen.radii(image, points, qca_radii, radii, profiles=wide[1])
        if lumen is not None:
            qca_radii = np.maximum(qca_radii, RADIUS_FLOOR_PX)
    return Centerline2D(points, radii, radii * geometry.isocentre_mm_per_pixel(), overlap=overlap,
                        qca_radii_px=qca_radii, qca_inputs=inputs)

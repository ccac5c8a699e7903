"""2D SOI centrelines: geodesic minimal path on a vessel-probability cost map, resampled, with radii."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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

    def __post_init__(self):
        if self.qca_radii_px is None:
            self.qca_radii_px = self.radii_px
        if self.floored is None:
            self.floored = self.radii_px <= RADIUS_FLOOR_PX + 1e-6
        if self.overlap is None:
            self.overlap = np.zeros(len(self.points), bool)


def cost_map(probability: np.ndarray, eps: float = 0.05, threshold: float = 0.5) -> np.ndarray:
    """Travel cost ``1 / ((p + eps) (1 + EDT))``: cheap inside the vessel and cheapest on its medial
    axis (so paths do not cut corners); ``eps`` bounds the price of crossing the short gap of a tight
    stenosis (chosen on the validation phantoms against a squared-EDT and an additive variant)."""
    distance = ndimage.distance_transform_edt(probability > threshold)
    return 1.0 / (np.clip(probability, 0, 1) + eps) / (1.0 + distance)


def geodesic_path(probability: np.ndarray, start: np.ndarray, end: np.ndarray, margin: int = 12) -> np.ndarray:
    """Minimal path (K, 2) in (column, row) from ``start`` to ``end`` with ``skimage.graph.route_through_array``,
    searched inside the probability map's support box (plus a margin)."""
    from skimage.graph import route_through_array

    rows, cols = probability.shape
    support = np.argwhere(probability > 0)
    ends = np.round([start[::-1], end[::-1]]).astype(int)
    box = np.r_[support, ends] if len(support) else ends
    lo = np.clip(box.min(0) - margin, 0, None)
    hi = np.minimum(box.max(0) + margin + 1, (rows, cols))
    ends = np.clip(ends, 0, [rows - 1, cols - 1])
    cost = cost_map(probability[lo[0]:hi[0], lo[1]:hi[1]])
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
    distance = ndimage.distance_transform_edt(mask)
    ridge = ndimage.maximum_filter(distance, size=3)
    values = ndimage.map_coordinates(ridge, [points[:, 1], points[:, 0]], order=1, mode="nearest")
    return np.maximum(values - 0.25, RADIUS_FLOOR_PX)


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
    darkness = ndimage.grey_closing(window, size=(size, size)) - window
    local = points - lo
    values = ndimage.map_coordinates(ndimage.maximum_filter(darkness, 3), [local[:, 1], local[:, 0]], order=1)
    per_diameter = values / np.maximum(2 * radii_px, 1.0)
    return per_diameter > ratio * max(np.median(per_diameter), 1e-9)


def profile_radii_px(image: np.ndarray, points: np.ndarray, mask_radii: np.ndarray, step: float = 0.5,
                     average: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Lumen radius (px) from the angiogram's own edge profiles, as classical QCA measures it.

    At each centreline point the image is sampled across the vessel (normal to the centreline, 0.5 px
    steps, averaged over ``average`` neighbouring points against noise); the vessel's darkness below
    the local background (median of the profile's outer parts, each side) is measured and the full
    width at half of its peak gives the radius: a round lumen projects a half-ellipse of chord
    lengths whose FWHM is sqrt(3) r. Returns the radii and a flag where the profile is too faint to
    measure (there the mask radius is kept).
    """
    points = np.asarray(points, float)
    tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.c_[-tangent[:, 1], tangent[:, 0]]
    reach = float(max(10.0, 3.0 * np.percentile(mask_radii, 90) + 4))
    offsets = np.arange(-reach, reach + step / 2, step)
    xy = points[:, None, :] + offsets[None, :, None] * normal[:, None, :]
    profiles = ndimage.map_coordinates(np.asarray(image, np.float32), [xy[..., 1], xy[..., 0]], order=1, mode="nearest")
    profiles = ndimage.uniform_filter1d(profiles, average, axis=0, mode="nearest")
    radii = np.array(mask_radii, float)
    faint = np.zeros(len(points), bool)
    centre = len(offsets) // 2
    outer = int(round((1.6 * np.percentile(mask_radii, 90) + 3) / step))
    noise = np.median(np.abs(np.diff(profiles, axis=1))) + 1e-6
    for i, profile in enumerate(profiles):
        left, right = profile[:max(centre - outer, 2)], profile[min(centre + outer, len(profile) - 2):]
        background = 0.5 * (np.median(left) + np.median(right))
        darkness = background - profile
        inner = max(2, int(round((mask_radii[i] + 2) / step)))
        window = darkness[centre - inner:centre + inner + 1]
        peak_at = centre - inner + int(np.argmax(window))
        peak = darkness[peak_at]
        if peak < 3 * noise:
            faint[i] = True
            continue
        half = peak / 2
        lo = peak_at
        while lo > 0 and darkness[lo] > half:
            lo -= 1
        hi = peak_at
        while hi < len(darkness) - 1 and darkness[hi] > half:
            hi += 1
        # sub-sample crossings
        left_x = lo + np.clip((half - darkness[lo]) / max(darkness[lo + 1] - darkness[lo], 1e-9), 0, 1)
        right_x = hi - np.clip((half - darkness[hi]) / max(darkness[hi - 1] - darkness[hi], 1e-9), 0, 1)
        radii[i] = np.clip((right_x - left_x) * step / np.sqrt(3.0), RADIUS_FLOOR_PX, reach)
    return radii, faint


def extract_centerline(probability: np.ndarray, start: np.ndarray, end: np.ndarray, geometry,
                       n: int = N_POINTS, threshold: float = 0.5, image: np.ndarray | None = None) -> Centerline2D:
    """Centreline and radii of one view's SOI from its vessel probability map (and, given the
    ``image``, the densitometric overlap flags).

    Radii in mm are given at the isocentre: pixels x ImagerPixelSpacing / (SID / SOD).
    """
    start, end = np.asarray(start, float), np.asarray(end, float)
    points = smooth_resample(geodesic_path(probability, start, end), start, end, n)
    radii = lumen_radii_px(probability > threshold, points)
    overlap, qca_radii = None, None
    if image is not None:
        overlap = overlap_flags(image, points, radii)
        qca_radii = profile_radii_px(image, points, radii)[0]
    return Centerline2D(points, radii, radii * geometry.isocentre_mm_per_pixel(), overlap=overlap,
                        qca_radii_px=qca_radii)

"""3D centreline from two 2D centrelines: epipolar point correspondence and DLT triangulation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..phantoms.xray import resample_polyline
from .geometry import epipolar_lines, fundamental_matrix, triangulate_dlt


def epipolar_correspondence(points_a: np.ndarray, points_b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """For each point of centreline A, the fractional index along centreline B where A's epipolar
    line crosses it: of the crossings not behind the previous match, the one nearest to the previous
    match advanced by an even share of the remaining curve (the arc-length guess, kept monotonic,
    when no line crosses). Start and end correspond by construction."""
    na, nb = len(points_a), len(points_b)
    lines = epipolar_lines(f, points_a)
    signed = lines @ np.c_[points_b, np.ones(nb)].T                               # (na, nb)
    guess = np.linspace(0, nb - 1, na)
    match = guess.copy()
    previous = 0.0
    for i in range(1, na - 1):
        d = signed[i]
        k = np.flatnonzero(np.sign(d[:-1]) != np.sign(d[1:]))
        if len(k):
            crossings = k + d[k] / (d[k] - d[k + 1])
            ahead = crossings[crossings >= previous - 0.5]
            if len(ahead):
                expected = previous + (nb - 1 - previous) / (na - i)
                match[i] = ahead[np.argmin(np.abs(ahead - expected))]
        match[i] = max(match[i], previous)
        previous = match[i]
    match[0], match[-1] = 0, nb - 1
    return match


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    grid = np.arange(len(values))
    if values.ndim == 1:
        return np.interp(index, grid, values)
    return np.stack([np.interp(index, grid, values[:, k]) for k in range(values.shape[1])], 1)


def triangulate_centerline(line_a, line_b, geom_a, geom_b, n: int = 100, smooth: float = 1.5):
    """3D centreline P (n, 3) and mean lumen radius R (n,) from two :class:`Centerline2D`.

    Radii: the mean of both views' radii, each converted from pixels to mm at the triangulated
    point's own depth (pixel size x distance from the source / SID).
    """
    p_a, p_b = geom_a.projection_matrix(), geom_b.projection_matrix()
    match = epipolar_correspondence(line_a.points, line_b.points, fundamental_matrix(p_a, p_b))
    matched_b = _at(line_b.points, match)
    points = triangulate_dlt(p_a, p_b, line_a.points, matched_b)
    if smooth:
        inner = ndimage.gaussian_filter1d(points, smooth, axis=0, mode="nearest")
        inner[0], inner[-1] = points[0], points[-1]
        points = inner
    mm_a = np.mean(geom_a.pixel_spacing) * geom_a.depth(points) / geom_a.sid
    mm_b = np.mean(geom_b.pixel_spacing) * geom_b.depth(points) / geom_b.sid
    radii = 0.5 * (line_a.radii_px * mm_a + _at(line_b.radii_px, match) * mm_b)
    return resample_polyline(points, radii, n)

"""A small differentiable silhouette rasteriser in the style of Soft Rasterizer (Liu et al., ICCV 2019).

Each pixel's coverage by triangle ``j`` is ``D_j = sigmoid(sign_j * d_j^2 / sigma)`` with ``d_j`` the
pixel's distance to the projected triangle's boundary and ``sign_j = +1`` inside, ``-1`` outside;
triangles are aggregated by the probabilistic union ``S = 1 - prod_j (1 - D_j)``. Computation is
vectorised over (triangle, pixel) pairs restricted to a window around each triangle (pixels farther
than a few ``sqrt(sigma)`` contribute nothing), and the union is accumulated as a sum of
``log(1 - D_j)`` with ``index_add``.
"""

from __future__ import annotations

import numpy as np
import torch


def _segment_distance2(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)
    closest = a + t.clamp(0, 1)[..., None] * ab
    return ((p - closest) ** 2).sum(-1)


def _edge(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def soft_silhouette(vertices: torch.Tensor, faces: torch.Tensor, size: tuple[int, int], sigma: float = 0.5,
                    cutoff: float = 3.0, max_window: int = 32) -> torch.Tensor:
    """Soft silhouette (H, W) of triangles whose vertices are given in pixel coordinates (x, y).

    :param vertices: (V, 2) projected vertices, pixel units, pixel centres at integers.
    :param faces: (F, 3) triangle vertex indices.
    :param sigma: sharpness in squared pixels (smaller is harder).
    :param cutoff: pixels farther than ``cutoff * sqrt(sigma)`` (at least 1.5 px) from a triangle are ignored.
    :param max_window: largest pixel window per triangle (larger triangles are clipped).
    """
    height, width = size
    tri = vertices[faces]                                                     # (F, 3, 2)
    reach = max(cutoff * sigma ** 0.5, 1.5)
    lo = torch.floor(tri.detach().amin(1) - reach)
    span = (tri.detach().amax(1) + reach).ceil() - lo
    keep = (lo[:, 0] < width) & (lo[:, 1] < height) & (lo[:, 0] + span[:, 0] >= 0) & (lo[:, 1] + span[:, 1] >= 0)
    tri, lo, span = tri[keep], lo[keep], span[keep]
    log_empty = vertices.new_zeros(height * width)
    extent = span.amax(1) + 1
    bounds = [0, 4, 8, 16, float("inf")]
    for low, high in zip(bounds[:-1], bounds[1:]):       # bucket triangles by size: small windows stay small
        pick = (extent > low) & (extent <= high)
        if pick.any():
            window = int(min(extent[pick].max().item(), max_window))
            log_empty = log_empty + _log_empty(tri[pick], lo[pick], span[pick], window, sigma, height, width)
    return (1 - torch.exp(log_empty)).reshape(height, width)


def _log_empty(tri, lo, span, window, sigma, height, width) -> torch.Tensor:
    """Per-pixel sum of log(1 - D_j) over the given triangles."""
    offsets = torch.stack(torch.meshgrid(torch.arange(window, device=tri.device),
                                         torch.arange(window, device=tri.device), indexing="xy"), -1)
    pix = lo[:, None] + offsets.reshape(-1, 2).to(lo.dtype)                  # (F, W*W, 2)
    valid = (pix[..., 0] >= 0) & (pix[..., 0] < width) & (pix[..., 1] >= 0) & (pix[..., 1] < height)
    valid &= (pix - lo[:, None] <= span[:, None]).all(-1)
    pix, tri_index = pix[valid], valid.nonzero()[:, 0]
    a, b, c = (tri[tri_index, k] for k in range(3))
    e0, e1, e2 = _edge(pix, a, b), _edge(pix, b, c), _edge(pix, c, a)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    d2 = torch.minimum(torch.minimum(_segment_distance2(pix, a, b), _segment_distance2(pix, b, c)),
                       _segment_distance2(pix, c, a))
    coverage = torch.sigmoid(torch.where(inside, d2, -d2) / sigma)
    log_empty = torch.log1p(-coverage.clamp(max=1 - 1e-6))
    flat = (pix[:, 1] * width + pix[:, 0]).long()
    return tri.new_zeros(height * width).index_add(0, flat, log_empty)


def hard_silhouette(vertices_px: np.ndarray, faces: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Binary silhouette (H, W) of projected triangles (pixel centre inside a triangle), computed
    on the bounding box of the projection."""
    vertices_px = np.asarray(vertices_px, float)
    lo = np.clip(np.floor(vertices_px.min(0)).astype(int) - 2, 0, None)
    hi = np.minimum(np.ceil(vertices_px.max(0)).astype(int) + 3, (shape[1], shape[0]))
    out = np.zeros(shape, bool)
    if (hi <= lo).any():
        return out
    local = torch.as_tensor(vertices_px - lo, dtype=torch.float32)
    with torch.no_grad():
        soft = soft_silhouette(local, torch.as_tensor(faces, dtype=torch.long),
                               (int(hi[1] - lo[1]), int(hi[0] - lo[0])), sigma=1e-3, cutoff=1.0)
    out[lo[1]:hi[1], lo[0]:hi[0]] = soft.numpy() > 0.5
    return out

"""SOI crops (rotated so start -> end runs along +x), U-Net segmentation and the Frangi baseline.

A crop is defined by a 2x3 affine ``A`` mapping crop pixel ``(x, y, 1)`` to image pixel ``(col, row)``;
pixel indices are pixel centres on both sides (``grid_sample(..., align_corners=True)``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MIN_SIDE = 72.0
MARGIN = 1.35


def crop_affine(start: np.ndarray, end: np.ndarray, size: int, margin: float = MARGIN,
                min_side: float = MIN_SIDE) -> np.ndarray:
    """Crop-to-image affine: a square of side ``margin * |end - start|`` centred on the SOI, rotated
    so that the start -> end direction is the crop's +x axis."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    delta = end - start
    angle = np.arctan2(delta[1], delta[0])
    side = max(margin * np.linalg.norm(delta), min_side)
    scale = side / size
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    centre = (start + end) / 2 - rot @ np.full(2, (size - 1) / 2)
    return np.c_[rot, centre]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Image-to-crop affine of a crop-to-image affine (works on (..., 2, 3) stacks)."""
    affine = np.asarray(affine, float)
    inv = np.linalg.inv(affine[..., :2])
    return np.concatenate([inv, -(inv @ affine[..., 2:])], -1)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, float) @ np.asarray(affine)[:2, :2].T + np.asarray(affine)[:2, 2]


def _crop_grid(affines: torch.Tensor, size: int, shape: tuple[int, int]) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size, dtype=affines.dtype, device=affines.device),
                            torch.arange(size, dtype=affines.dtype, device=affines.device), indexing="ij")
    crop = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    pix = crop @ affines.transpose(1, 2)                                         # (N, S*S, 2)
    norm = torch.stack([2 * pix[..., 0] / (shape[1] - 1) - 1, 2 * pix[..., 1] / (shape[0] - 1) - 1], -1)
    return norm.reshape(len(affines), size, size, 2)


def sample_crops(image: torch.Tensor, affines: np.ndarray, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Crops (N, C, S, S) of an image (C, H, W) or (H, W) tensor for N crop affines."""
    image = image[None] if image.ndim == 2 else image
    affines_t = torch.as_tensor(np.asarray(affines), dtype=torch.float32, device=image.device).reshape(-1, 2, 3)
    grid = _crop_grid(affines_t, size, image.shape[-2:])
    source = image[None].expand(len(affines_t), *image.shape).float()
    return F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=True)


def normalize_crops(crops: torch.Tensor) -> torch.Tensor:
    """Per-crop z-score (robust to the global intensity scale of the detector)."""
    mean = crops.mean((-2, -1), keepdim=True)
    std = crops.std((-2, -1), keepdim=True)
    return (crops - mean) / (std + 1e-6)


def paste_back(crop: np.ndarray, affine: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A crop-space map (S, S) resampled onto the full image (zero outside the crop)."""
    from scipy import ndimage

    size = crop.shape[0]
    corners = apply_affine(affine, np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]]))
    lo = np.clip(np.floor(corners.min(0)).astype(int), 0, [shape[1] - 1, shape[0] - 1])
    hi = np.clip(np.ceil(corners.max(0)).astype(int), 0, [shape[1] - 1, shape[0] - 1])
    cols, rows = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    xy = apply_affine(invert_affine(affine), np.c_[cols.ravel(), rows.ravel()])
    values = ndimage.map_coordinates(crop, [xy[:, 1], xy[:, 0]], order=1, mode="constant", cval=0.0)
    out = np.zeros(shape, np.float32)
    out[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = values.reshape(cols.shape)
    return out


def segment_crops(net, crops: torch.Tensor) -> torch.Tensor:
    """Vessel probabilities (N, S, S) of raw crops (N, 1, S, S) with the U-Net."""
    return torch.sigmoid(net.segment(normalize_crops(crops)))[:, 0].float()


def frangi_crops(crops: torch.Tensor) -> torch.Tensor:
    """Classical baseline: Frangi vesselness (dark ridges) scaled so that Otsu's threshold maps to 0.5."""
    from skimage.filters import frangi, threshold_otsu

    out = []
    for crop in crops[:, 0].cpu().numpy():
        vesselness = frangi(crop, sigmas=(1, 1.5, 2, 3, 4), black_ridges=True)
        vesselness = vesselness / (vesselness.max() + 1e-12)
        threshold = threshold_otsu(vesselness) if vesselness.max() > 0 else 1.0
        out.append(np.clip(0.5 * vesselness / max(threshold, 1e-6), 0, 1))
    return torch.as_tensor(np.stack(out), dtype=torch.float32)

"""Whole-volume VC-Net inference, post-processing and measurements.

The volume is cut into patches of the model's size (K3 x K1 x K2, slices first): non-overlapping as
in the paper (``overlap=0``), or overlapping with Gaussian blending (``overlap>0``), through MONAI
``sliding_window_inference``. The patch batch size shrinks on out-of-memory and falls back to the
CPU (``device.run_with_fallback``). Probabilities are thresholded at 0.5, restricted to the optional
mask, and components smaller than a volume in mm^3 can be removed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import device as devices
from ..progress import as_reporter
from . import mip
from .data import normalize

DEFAULT_BATCH = {"cuda": 16, "mps": 8, "cpu": 2}


@dataclass
class SegmentationResult:
    """Outputs of :func:`segment` (arrays in ``[k, j, i]`` order)."""

    probability: np.ndarray
    labels: np.ndarray
    measurements: dict
    mip_image: np.ndarray | None = None
    mip_labels: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def window_count(shape, roi, overlap: float) -> int:
    """Number of sliding windows MONAI visits for ``shape`` (same scan rule as MONAI)."""
    count = 1
    for size, r in zip(shape, roi):
        if size <= r:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        count *= math.ceil((size - r) / interval) + 1
    return count


def predict_probability(model, volume: np.ndarray, device: torch.device, overlap: float = 0.0,
                        batch_size: int | None = None, progress=None, cancel=None) -> tuple[np.ndarray, int]:
    """Vessel probability of a normalised volume; returns it and the batch size that fit."""
    from monai.inferers import sliding_window_inference

    reporter = as_reporter(progress, cancel)
    roi = tuple(int(r) for r in model.patch)
    total = window_count(volume.shape, roi, overlap)

    def run(dev: torch.device, batch: int):
        net = model.to(dev)
        done = [0]

        def predictor(windows: torch.Tensor) -> torch.Tensor:
            done[0] += windows.shape[0]
            reporter(min(done[0] / total, 1.0), f"VC-Net window {min(done[0], total)}/{total}")
            return net(windows)["prob"]

        tensor = torch.from_numpy(np.ascontiguousarray(volume))[None, None].to(dev)
        with devices.inference(dev):
            prob = sliding_window_inference(tensor, roi, batch, predictor, overlap=overlap,
                                            mode="gaussian" if overlap > 0 else "constant", padding_mode="constant",
                                            cval=float(volume.min()))
        return prob[0, 0].float().cpu().numpy(), batch

    batch_size = batch_size or DEFAULT_BATCH.get(device.type, 2)
    return devices.run_with_fallback(run, device, batch_size)


def predict_mips(model, volume: np.ndarray, device: torch.device, batch_size: int = 4
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Composited sliding MIPs of every K3-slice slab and the 2D stream's probability on them.

    Slabs start every K3 slices (the last one aligned with the end). Returns two float32 arrays
    ``(n_slabs, rows*J, 2*I)``: the MIP images and the 2D probabilities (for a model without a 2D
    stream, ``None``).
    """
    from monai.inferers import sliding_window_inference

    depth = int(model.patch[0])
    starts = slab_starts(volume.shape[0], depth)
    tensor = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    stacks = [mip.sliding_mips(_slab(tensor, s, depth), model.mip_size, model.mip_step)[0][:, 0] for s in starts]
    images = np.stack([mip.tile(s[:, None])[0, 0].numpy() for s in stacks])
    if not hasattr(model, "stream2d"):
        return images, None
    net = model.to(device)

    def predictor(windows: torch.Tensor) -> torch.Tensor:  # (B, m, K1, K2) -> same
        m = windows.shape[1]
        tiled = mip.tile(windows[:, None])
        prob = torch.sigmoid(net.head2d(torch.relu(net.stream2d(tiled))))
        return mip.untile(prob, m)[:, 0]

    probs = []
    with devices.inference(device):
        for stack in stacks:
            out = sliding_window_inference(stack.to(device), tuple(model.patch[1:]), batch_size, predictor,
                                           padding_mode="constant", cval=float(volume.min()))
            probs.append(mip.tile(out[:, None].float().cpu())[0, 0].numpy())
    return images, np.stack(probs)


def slab_starts(depth: int, k3: int) -> list[int]:
    """First slices of the K3-slice slabs covering ``depth`` slices (last aligned with the end)."""
    if depth <= k3:
        return [0]
    starts = list(range(0, depth - k3 + 1, k3))
    return starts if starts[-1] == depth - k3 else starts + [depth - k3]


def _slab(tensor: torch.Tensor, start: int, depth: int) -> torch.Tensor:
    slab = tensor[:, :, start:start + depth]
    if slab.shape[2] < depth:
        slab = torch.nn.functional.pad(slab, (0, 0, 0, 0, 0, depth - slab.shape[2]), value=float(tensor.min()))
    return slab


def remove_small_components(labels: np.ndarray, spacing, min_volume_mm3: float) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_volume_mm3``."""
    if min_volume_mm3 <= 0 or not labels.any():
        return labels
    from skimage.morphology import remove_small_objects

    voxel = float(np.prod(spacing))
    min_size = int(math.ceil(min_volume_mm3 / voxel))
    return remove_small_objects(labels.astype(bool), max_size=min_size - 1, connectivity=3).astype(np.uint8)


def centerline_length(labels: np.ndarray, spacing) -> float:
    """Total centreline length in mm: 3D skeleton (scikit-image), its 26-neighbour graph weighted by
    the anisotropic voxel distances, summed over a minimum spanning forest (so the diagonal shortcuts
    of a 26-connected skeleton are not counted twice)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree
    from skimage.morphology import skeletonize

    skeleton = skeletonize(labels.astype(bool))
    points = np.argwhere(skeleton)
    if len(points) < 2:
        return 0.0
    step = np.asarray(spacing, float)[::-1]  # (sz, sy, sx) for (k, j, i)
    index = {tuple(p): n for n, p in enumerate(points)}
    rows, cols, weights = [], [], []
    offsets = [np.array(o) for o in np.ndindex(3, 3, 3)]
    for offset in offsets:
        delta = offset - 1
        if tuple(delta) <= (0, 0, 0):
            continue
        length = float(np.linalg.norm(delta * step))
        for n, p in enumerate(points):
            m = index.get(tuple(p + delta))
            if m is not None:
                rows.append(n)
                cols.append(m)
                weights.append(length)
    graph = coo_matrix((weights, (rows, cols)), shape=(len(points), len(points))).tocsr()
    return float(minimum_spanning_tree(graph).sum())


def measurements(labels: np.ndarray, spacing) -> dict:
    """Vessel volume (mm^3) and total centreline length (mm)."""
    voxel = float(np.prod(spacing))
    return {"vessel_volume_mm3": float(labels.astype(bool).sum() * voxel),
            "centerline_length_mm": centerline_length(labels, spacing)}


def segment(volume: np.ndarray, spacing, model, mask: np.ndarray | None = None, dark: bool = False,
            overlap: float = 0.0, threshold: float = 0.5, min_component_mm3: float = 0.0,
            device: str | torch.device = "cpu", batch_size: int | None = None, with_mips: bool = False,
            progress=None, cancel=None) -> SegmentationResult:
    """Segment vessels in a raw volume.

    :param volume: ``[k, j, i]`` intensities (K is the slice axis; no resampling).
    :param spacing: ``(sx, sy, sz)`` mm.
    :param model: a :class:`~.network.VCNet` in eval mode.
    :param mask: optional brain/ROI mask; voxels outside are background.
    :param dark: dark vessels (SWI/MinIP): intensities are inverted inside the mask.
    :param overlap: window overlap; 0 = non-overlapping (paper), > 0 Gaussian blending.
    :param min_component_mm3: remove components smaller than this.
    :param with_mips: also return the composited MIPs of each slab and their 2D segmentation.
    """
    reporter = as_reporter(progress, cancel)
    torch_device = devices.resolve_device(device)
    start = time.perf_counter()
    reporter(0.0, "normalising intensities")
    normalized = normalize(volume, mask, dark)
    prob, used_batch = predict_probability(model, normalized, torch_device, overlap, batch_size,
                                           reporter.sub(0.02, 0.85))
    if mask is not None:
        prob = prob * (np.asarray(mask) > 0)
    labels = (prob >= threshold).astype(np.uint8)
    labels = remove_small_components(labels, spacing, min_component_mm3)
    result = SegmentationResult(prob.astype(np.float32), labels, {})
    if with_mips:
        reporter(0.87, "composited MIPs")
        images, probs = predict_mips(model, normalized, torch_device, used_batch)
        result.mip_image = images
        result.mip_labels = (probs >= threshold).astype(np.uint8) if probs is not None else label_mips(labels, model)
    reporter(0.93, "measuring")
    result.measurements = measurements(labels, spacing)
    result.info = {"seconds": time.perf_counter() - start, "device": str(torch_device), "batch_size": used_batch}
    reporter(1.0, "done")
    return result


def label_mips(labels: np.ndarray, model) -> np.ndarray:
    """The composited MIPs of a 3D label, slab by slab (same tiling as :func:`predict_mips`)."""
    depth = int(model.patch[0])
    tensor = torch.from_numpy(labels.astype(np.float32))[None, None]
    tiles = [mip.label_mip(_slab(tensor, s, depth), model.mip_size, model.mip_step)[0, 0].numpy()
             for s in slab_starts(labels.shape[0], depth)]
    return np.stack(tiles).astype(np.uint8)

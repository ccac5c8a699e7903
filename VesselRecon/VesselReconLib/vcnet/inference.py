"""Whole-volume VC-Net inference, post-processing and measurements.

The normalised volume is resampled (trilinear, on the compute device) to the spacing the model was
trained at, and the probability back to the input grid, so that vessels have the calibre in voxels
the weights expect. An input finer than the trained spacings (say 0.3 mm) also runs on a second grid,
0.6x the model spacing but never finer than the input, where its thin vessels have a trained calibre
in voxels; the two probabilities are joined by their voxel-wise maximum. A volume thinner than a patch is padded by reflection along the slice axis
(and in-plane) rather than refused; one narrower than 16 model voxels in-plane is refused, and one narrower than
a patch or thinner than 12 slices is run with a warning (:func:`check_extent`). It is cut into patches of the model's size (K3 x K1 x K2,
slices first): non-overlapping as in the paper (``overlap=0``), or overlapping with Gaussian
blending (``overlap>0``), as MONAI's ``sliding_window_inference`` (its window scan and importance map);
only windows with a voxel in the searched region are run, in full batches (the last, incomplete one is
padded: an odd batch size falls onto slow convolution paths). The
batch size shrinks on out-of-memory and falls back to the CPU (``device.run_with_fallback``).
Probabilities are thresholded at 0.5, restricted to the optional mask (without one, to the head
eroded by ``head_margin_mm``: no vessels in the bright subcutaneous fat and scalp; windows entirely
outside it are not run), and components smaller than a volume in mm^3 can be removed. The composited-MIP output reuses the 2D stream's output of the
main pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import device as devices
from ..device import scan_windows
from ..errors import InputError, check_voxel_budget
from ..progress import as_reporter
from . import mip
from .data import HEAD_MARGIN_MM, intracranial_region, normalize, tissue_level
from .network import VCNet, channels_last

DEFAULT_BATCH = {"cuda": 16, "mps": 8, "cpu": 4}  # CPU: 4 windows of lite run ~10 % faster per window than 2
SPACING_TOLERANCE = 0.1  # resample when an axis' spacing differs from the model's by more than this
NO_MASK_WARNING = ("No brain mask given: the intensity statistics come from the whole volume (its dominant "
                   "tissue intensity) and vessels are searched in the head minus an outer 8 mm (subcutaneous fat "
                   "and scalp; a crop with no air keeps every voxel). Pass a brain mask for exact results.")
log = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """Outputs of :func:`segment` (arrays in ``[k, j, i]`` order)."""

    probability: np.ndarray
    labels: np.ndarray
    measurements: dict
    mip_image: np.ndarray | None = None
    mip_labels: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def predict_probability(model, volume: np.ndarray, device: torch.device, overlap: float = 0.0,
                        batch_size: int | None = None, progress=None, cancel=None, mip_sink: dict | None = None,
                        region: np.ndarray | None = None, counts: dict | None = None) -> tuple[np.ndarray, int]:
    """Vessel probability of a normalised volume (at least one patch in every axis); returns it and
    the batch size that fit.

    The windows of :func:`scan_windows` with a voxel in ``region`` are run in full batches (the last
    one padded: a partial batch falls onto slow convolution paths); where windows overlap, their
    probabilities are averaged (``overlap=0``: only the last window of an axis overlaps) or blended
    with MONAI's Gaussian importance map (``overlap > 0``), as MONAI's ``sliding_window_inference``.
    On CPU the convolutions run channels-last, and with n > 1 torch threads the batches run in up to 4
    worker threads that share the n threads (``device.map_batches``; 2 cores: two one-thread workers; the
    same numbers; 16 ``lite-fast`` batches took 0.8 CPU-s against 3.0 with 2-thread operators, at a load of
    3 on 2 cores).

    :param region: optional boolean array of the volume's shape: windows with no voxel in it are not
        run (probability 0 there).
    :param counts: if a dict, it receives ``windows_run`` and ``windows_total``.
    :param mip_sink: if a dict, it receives ``{slab_start: (m, J, I) float32 array}``: the 2D stream's
        MIP probabilities of every window that starts a K3-slice slab (:func:`slab_starts`), pasted
        at the window's in-plane position (maximum where windows overlap).
    """
    from monai.data.utils import compute_importance_map

    reporter = as_reporter(progress, cancel)
    roi = tuple(int(r) for r in model.patch)
    shape = volume.shape
    if any(n < r for n, r in zip(shape, roi)):  # a volume smaller than a patch: pad with its minimum
        pads = [(0, max(0, r - n)) for n, r in zip(shape, roi)]
        volume = np.pad(volume, pads, constant_values=float(volume.min()))
        region = None if region is None else np.pad(region, pads)
    windows = scan_windows(volume.shape, roi, overlap)
    total_windows = len(windows)
    if region is not None:
        windows = [w for w in windows if region[w].any()]
    if counts is not None:
        counts.update(windows_run=len(windows), windows_total=total_windows)
    starts = set(slab_starts(volume.shape[0], roi[0]))

    skip_mips = mip_sink is None and isinstance(model, VCNet)  # the MIP head's output is not needed

    def run(dev: torch.device, batch: int):
        net = model.to(dev)
        if dev.type == "cpu":
            channels_last(net)
        canvases: dict[int, torch.Tensor] = {}
        tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(dev)
        total = torch.zeros(volume.shape, dtype=torch.float32, device=dev)
        weight = torch.zeros(volume.shape, dtype=torch.float32, device=dev)
        importance = (compute_importance_map(roi, mode="gaussian", device=dev).float() if overlap > 0
                      else torch.ones(roi, device=dev))

        def forward(chosen):  # under the caller's inference mode (map_batches carries it to its workers)
            patches = torch.stack([tensor[w] for w in chosen])[:, None]
            if len(chosen) < batch:  # pad the last batch: a partial batch falls onto slow convolution paths
                patches = torch.cat([patches, patches.new_zeros((batch - len(chosen), *patches.shape[1:]))])
            return net(patches, mips=False) if skip_mips else net(patches)

        batches = [windows[first:first + batch] for first in range(0, len(windows), batch)]
        with devices.inference(dev), contextlib.closing(devices.map_batches(forward, batches, dev)) as outs:
            for number, (chosen, out) in enumerate(zip(batches, outs)):
                reporter(number / len(batches), f"VC-Net window {number * batch + 1}/{len(windows)}")
                if mip_sink is not None and "mip_prob" in out:
                    _paste_mips(canvases, out["mip_prob"][: len(chosen)], chosen, starts, volume.shape[1:], net)
                for w, prob in zip(chosen, out["prob"][: len(chosen), 0].float()):
                    total[w] += prob * importance
                    weight[w] += importance
        if mip_sink is not None:
            mip_sink.clear()
            mip_sink.update({k: v.float().cpu().numpy() for k, v in canvases.items()})
        prob = total.div_(weight.clamp_min_(1e-12))[: shape[0], : shape[1], : shape[2]]
        return prob.cpu().numpy(), batch

    batch_size = batch_size or DEFAULT_BATCH.get(device.type, 2)
    return devices.run_with_fallback(run, device, batch_size)


def _paste_mips(canvases: dict, mip_prob: torch.Tensor, windows, starts: set, plane, net) -> None:
    """Paste the untiled MIP probabilities of slab-starting windows (``(k, j, i)`` slices, from
    :func:`scan_windows`) into per-slab canvases."""
    m = mip.mip_count(int(net.patch[0]), net.mip_size, net.mip_step)
    stacks = mip.untile(mip_prob.float(), m)[:, 0]  # (B, m, K1, K2)
    for stack, (k, j, i) in zip(stacks, windows):
        if k.start not in starts:
            continue
        canvas = canvases.setdefault(k.start, stack.new_zeros((m, *plane)))
        region = canvas[:, j, i]
        canvas[:, j, i] = torch.maximum(region, stack[:, : region.shape[1], : region.shape[2]])


def composited_mips(model, volume: np.ndarray, mip_probs: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Composited sliding MIPs of every K3-slice slab and the 2D stream's probability on them.

    Slabs start every K3 slices (the last one aligned with the end). Returns two float32 arrays
    ``(n_slabs, rows*J, 2*I)``: the MIP images, and the 2D probabilities taken from the main pass
    (``mip_probs`` from :func:`predict_probability`; ``None`` for a model without a 2D stream).
    """
    depth = int(model.patch[0])
    starts = slab_starts(volume.shape[0], depth)
    tensor = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    stacks = [mip.sliding_mips(_slab(tensor, s, depth), model.mip_size, model.mip_step)[0][:, 0] for s in starts]
    images = np.stack([mip.tile(s[:, None])[0, 0].numpy() for s in stacks])
    if not hasattr(model, "stream2d") or not mip_probs or any(s not in mip_probs for s in starts):
        return images, None
    plane = volume.shape[1:]
    probs = [mip.tile(torch.from_numpy(np.ascontiguousarray(mip_probs[s][:, : plane[0], : plane[1]]))[None, None])[0, 0].numpy()
             for s in starts]
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

    low, high = _bounding_box(labels)
    if low is None:
        return 0.0
    low, high = np.maximum(low - 1, 0), high + 2  # the skeleton of the bounding box only
    box = labels[low[0]:high[0], low[1]:high[1], low[2]:high[2]].astype(bool)
    points = _skeleton_points(box)
    if len(points) < 2:
        return 0.0
    step = np.asarray(spacing, float)[::-1]  # (sz, sy, sx) for (k, j, i)
    padded = np.asarray(box.shape) + 2  # point number per voxel by a sorted search of flat indices in
    keys = np.ravel_multi_index(tuple((points + 1).T), padded)  # the box with a 1-voxel rim (no wrap)
    rows, cols, weights = [], [], []
    for offset in np.ndindex(3, 3, 3):
        delta = np.asarray(offset) - 1
        if tuple(delta) <= (0, 0, 0):
            continue
        wanted = keys + int(np.ravel_multi_index(tuple(delta + 1), padded) - np.ravel_multi_index((1, 1, 1), padded))
        other = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        found = keys[other] == wanted
        rows.append(np.flatnonzero(found))
        cols.append(other[found])
        weights.append(np.full(int(found.sum()), float(np.linalg.norm(delta * step))))
    rows, cols, weights = (np.concatenate(v) for v in (rows, cols, weights))
    graph = coo_matrix((weights, (rows, cols)), shape=(len(points), len(points))).tocsr()
    return float(minimum_spanning_tree(graph).sum())


def _bounding_box(labels: np.ndarray):
    """First and last+1 ``(k, j, i)`` of the nonzero voxels (None, None when there are none), by
    projections (no list of every voxel)."""
    spans = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(labels, axis=tuple(a for a in range(3) if a != axis)))
        if not hit.size:
            return None, None
        spans.append((hit[0], hit[-1] + 1))
    return np.asarray([s[0] for s in spans]), np.asarray([s[1] for s in spans])


def _skeleton_points(labels: np.ndarray) -> np.ndarray:
    """``(k, j, i)`` of the voxels of ``skeletonize(labels)``, in raster order (as ``np.argwhere``),
    thinning each 26-connected component on its own bounding box: the same skeleton (thinning only
    looks at 26-neighbours, which never belong to another component), but a whole head's scattered
    vessels are thinned on 1/5 of the voxels of their common bounding box."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    components, _ = ndimage.label(labels, np.ones((3, 3, 3), bool))
    parts = [np.zeros((0, 3), np.int64)]
    for index, piece in enumerate(ndimage.find_objects(components), 1):
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in piece)
        parts.append(np.argwhere(skeletonize(components[grown] == index)) + [s.start for s in grown])
    points = np.concatenate(parts)
    return points[np.lexsort(points.T[::-1])]


def measurements(labels: np.ndarray, spacing) -> dict:
    """Vessel volume (mm^3) and total centreline length (mm)."""
    voxel = float(np.prod(spacing))
    return {"vessel_volume_mm3": float(labels.astype(bool).sum() * voxel),
            "centerline_length_mm": centerline_length(labels, spacing)}


def check_slice_axis(shape, spacing) -> str | None:
    """A warning when the array's K axis does not look like the acquisition slice axis."""
    sx, sy, sz = (float(v) for v in spacing)
    if sz < 0.8 * max(sx, sy):
        return (f"The slice spacing ({sz:.2f} mm) is finer than the in-plane spacing ({sx:.2f} x {sy:.2f} mm): "
                "the volume's K axis may not be the acquisition slice axis (reorient it so that K runs "
                "through the axial TOF slab).")
    if shape[0] * sz > 2.0 * max(shape[1] * sy, shape[2] * sx):
        return (f"The volume is {shape[0] * sz:.0f} mm along K but only {shape[1] * sy:.0f} x {shape[2] * sx:.0f} mm "
                "in-plane: K may not be the slice axis of the slab.")
    return None


# How small a volume VC-Net segments, on its model grid (round 11, notes/r11/leftovers-vcnet-small-rule.md: a centred
# crop of two MRA phantoms run alone against the same region of the run on a 32 x 96 x 96 crop). Narrower than 16
# voxels in-plane it agreed on neither phantom (Dice 0.75, none); narrower than the 64-voxel patch, or thinner than 12
# slices, on one only (Dice 0.86-0.95 on seed 2024, 0.00-0.79 on seed 2025).
MIN_INPLANE_VOXELS, RELIABLE_INPLANE_VOXELS, RELIABLE_SLICES = 16, 64, 12


def check_extent(shape, spacing, model_spacing) -> str | None:
    """Refuse a volume too small in-plane for VC-Net; a warning for one below its reliable size; else None. Sizes
    count voxels of the model's grid (``model_spacing``, x y z), where the volume runs.

    :raises InputError: narrower in-plane than :data:`MIN_INPLANE_VOXELS` model voxels, naming the size needed.
    """
    (k, j, i), (sx, sy, sz), (mx, my, mz) = shape, spacing, model_spacing
    size = f"{i * sx:g} x {j * sy:g} x {k * sz:g} mm ({i} x {j} x {k} voxels)"
    inplane = min(i * sx / mx, j * sy / my)
    if inplane < MIN_INPLANE_VOXELS:
        raise InputError(f"The volume is {size}: VC-Net needs at least {MIN_INPLANE_VOXELS * max(mx, my):g} mm "
                         f"in-plane ({MIN_INPLANE_VOXELS} voxels of its {mx:g} x {my:g} mm grid); on a smaller crop its "
                         "result is meaningless. Give a larger crop or the whole scan.")
    if inplane < RELIABLE_INPLANE_VOXELS or k * sz / mz < RELIABLE_SLICES:
        return (f"The volume is only {size}: below {RELIABLE_INPLANE_VOXELS * mx:g} x {RELIABLE_INPLANE_VOXELS * my:g} "
                f"mm in-plane (the network's patch) or {RELIABLE_SLICES * mz:g} mm through the slab, VC-Net's result can "
                "differ from a run on a larger crop: give a larger crop or the whole scan for a reliable result.")
    return None


def trained_spacing(spacing, model_spacing, tolerance: float = SPACING_TOLERANCE) -> tuple:
    """The nearest ``(sx, sy, sz)`` the model was trained at: each axis clipped to ``model_spacing``
    +- ``tolerance`` (the training phantoms' spacing jitter). A 0.3 mm input goes to 0.45 x 0.45 x
    0.72 mm, the finest trained grid, rather than to 0.5 x 0.5 x 0.8: the probability then comes back
    from finer voxels (calibration seeds 900027/8 at 0.3 mm: Dice 0.849 against 0.843)."""
    return tuple(min(max(float(s), float(m) * (1 - tolerance)), float(m) * (1 + tolerance))
                 for s, m in zip(spacing, model_spacing))


def model_grid(shape, spacing, model_spacing, tolerance: float = SPACING_TOLERANCE):
    """``(k, j, i)`` shape of the volume resampled to :func:`trained_spacing`, or None if its spacing
    already lies within ``tolerance`` of ``model_spacing`` on every axis."""
    ratios = [float(s) / float(m) for s, m in zip(spacing, model_spacing)]  # x, y, z
    if all(abs(r - 1) <= tolerance for r in ratios):
        return None
    return grid_shape(shape, spacing, trained_spacing(spacing, model_spacing, tolerance))


def grid_shape(shape, spacing, target) -> tuple:
    """``(k, j, i)`` shape of a ``[k, j, i]`` volume of ``spacing`` (x, y, z) resampled to ``target``."""
    return tuple(max(1, int(round(n * float(s) / t))) for n, s, t in zip(shape, spacing[::-1], target[::-1]))


FINE_GRID_FACTOR = 0.6  # the second grid of a fine input, relative to the model spacing


def fine_spacing(spacing, model_spacing, factor: float = FINE_GRID_FACTOR) -> tuple:
    """The second grid of an input finer than the trained band: each axis at ``factor`` x the model
    spacing, never finer than the input (0.3 mm isotropic -> 0.3 x 0.3 x 0.48 mm)."""
    return tuple(max(float(s), float(m) * factor) for s, m in zip(spacing, model_spacing))


def fine_grid(shape, spacing, model_spacing, tolerance: float = SPACING_TOLERANCE):
    """``(k, j, i)`` shape of the second grid (:func:`fine_spacing`) for an input finer than the trained
    band (``model_spacing`` - ``tolerance``) on some axis, else None.

    Vessels thinner than a voxel of the trained grid (thin, faint, distal vessels: 1-2 voxels at 0.3
    mm) are seen on this grid at a calibre in voxels the network was trained on, while the trained
    grid sees the large vessels at theirs; :func:`segment` takes the voxel-wise maximum of the two
    probabilities. Calibration seeds 900027/8 at 0.3 mm, ``lite-fast``, default call: Dice 0.855 with
    the trained grid alone, 0.888 with this grid added (factor 0.7: 0.869; 0.8: 0.864). None too when
    this grid has the trained grid's shape (an input just below the band: the same run twice)."""
    if all(float(s) / float(m) >= 1 - tolerance - 1e-6 for s, m in zip(spacing, model_spacing)):
        return None
    fine = grid_shape(shape, spacing, fine_spacing(spacing, model_spacing))
    return None if fine == model_grid(shape, spacing, model_spacing, tolerance) else fine


def resample(array: np.ndarray, shape, device: torch.device) -> np.ndarray:
    """Trilinear resampling of a ``[k, j, i]`` array to ``shape`` on ``device`` (CPU or GPU). No
    anti-aliasing blur: on the 0.3 mm phantoms a Gaussian prefilter (scikit-image's rule) lowered the
    default call's Dice from 0.749 to 0.743 (fainter thin vessels)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(device)
    out = torch.nn.functional.interpolate(tensor, size=tuple(int(s) for s in shape), mode="trilinear",
                                          align_corners=False)
    return out[0, 0].cpu().numpy()


def pad_to_patch(volume: np.ndarray, patch) -> tuple[np.ndarray, tuple]:
    """Reflect-pad a volume thinner than the patch up to it (at the end of each short axis)."""
    pads = [(0, max(0, int(p) - n)) for n, p in zip(volume.shape, patch)]
    if not any(after for _, after in pads):
        return volume, volume.shape
    return np.pad(volume, pads, mode="symmetric"), volume.shape


REFINE_BAND = 0.1  # probability above which a voxel may join the refined segmentation
REFINE_FRACTION = 0.4  # of the local vessel intensity: the half-maximum-like boundary
REFINE_WINDOW_MM = 2.1  # neighbourhood (mm) over which the local vessel intensity is the maximum
REFINE_SIGMA_MM = 0.18  # light smoothing of the intensities before the comparison (noise)


def refine_boundary(prob: np.ndarray, image: np.ndarray, spacing, threshold: float, device: torch.device,
                    band: float = REFINE_BAND, fraction: float = REFINE_FRACTION,
                    window_mm: float = REFINE_WINDOW_MM, sigma_mm: float = REFINE_SIGMA_MM) -> np.ndarray:
    """Vessel labels whose boundary follows the image at its own resolution (a half-maximum rule).

    The network decides *where* vessels are (``prob >= threshold``); their boundary is then drawn
    where the (lightly smoothed) normalised intensity falls below ``fraction`` of the local vessel
    intensity (the brightest detected vessel voxel within ``window_mm``), among voxels with
    ``prob >= band``. This recovers the calibre of vessels the model grid renders one voxel too thin
    or too thick: the probability comes back from the model grid by trilinear interpolation, which
    cannot place a boundary finer than a model voxel (0.5 x 0.5 x 0.8 mm); the input's own grid
    can. Computed on the band's bounding box: the Gaussian with torch on ``device``; the box maximum
    densely (torch, on ``device``: the smoothed box stays there) where the band fills much of the box
    (a crop), else gathered at the band's voxels only (NumPy: a whole head, where vessels are sparse);
    both give the same labels.

    :param image: the normalised volume (vessels bright; tissue 0), on the grid of ``prob``.
    """
    core = prob >= threshold
    near = np.flatnonzero(prob >= band)  # the band's voxels (flat indices)
    if not core.any() or not near.size:
        return np.zeros(prob.shape, bool)
    step = np.asarray(spacing, float)[::-1]  # (sz, sy, sx) for (k, j, i)
    size = np.asarray([int(2 * round(window_mm / s / 2) + 1) for s in step])
    points = np.stack(np.unravel_index(near, prob.shape), 1)
    low = np.maximum(points.min(0) - size, 0)  # work on the band's bounding box (plus the window) only
    high = np.minimum(points.max(0) + size + 1, prob.shape)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    box_size = int(np.prod(high - low))
    sigmas = sigma_mm / step
    with torch.inference_mode():
        if (sigmas >= 0.5).any():
            values = _smooth(image[box], sigmas, device)  # a tensor on ``device``
        else:  # no axis needs smoothing: read the image where needed only
            values = image[box]
        points = points - low
        if len(points) * int(np.prod(size)) < box_size * int(size.sum()):  # sparse vessels (a whole head)
            inside = _sparse_rule(values, core[box], points, size, fraction)
        else:
            inside = _dense_rule(values, core[box], points, size, fraction, device)
    out = np.zeros(prob.shape, bool)
    out.ravel()[near[inside]] = True
    return out


def _smooth(values: np.ndarray, sigmas, device: torch.device) -> torch.Tensor:
    """Separable 5-tap Gaussian along the axes whose sigma (voxels) is at least half a voxel (on ``device``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)[None, None]
    for axis, sigma in enumerate(sigmas):
        if sigma < 0.5:
            continue
        taps = torch.arange(-2, 3, dtype=torch.float32, device=device)
        kernel = torch.exp(-0.5 * (taps / float(sigma)) ** 2)
        shape, padding = [1, 1, 1, 1, 1], [0, 0, 0]
        shape[2 + axis], padding[axis] = 5, 2
        tensor = torch.nn.functional.conv3d(tensor, (kernel / kernel.sum()).view(shape), padding=tuple(padding))
    return tensor[0, 0]


def _dense_rule(values: np.ndarray | torch.Tensor, core: np.ndarray, points: np.ndarray, size, fraction: float,
                device: torch.device) -> np.ndarray:
    """The half-maximum rule at ``points`` from a dense box maximum over the whole box (separable
    ``unfold`` + ``amax``: 3x faster than ``max_pool3d`` on CPU); for dense vessels (a crop)."""
    tensor = torch.as_tensor(values, dtype=torch.float32, device=device)  # a tensor already there: as is
    local = torch.where(torch.from_numpy(core).to(device), tensor, torch.full_like(tensor, -1e3))
    for axis, k in enumerate(size):
        pads = [0] * 6
        pads[2 * (2 - axis)] = pads[2 * (2 - axis) + 1] = int(k) // 2
        local = torch.nn.functional.pad(local[None], pads, value=-1e3)[0].unfold(axis, int(k), 1).amax(-1)
    index = tuple(torch.from_numpy(points[:, a]).to(device) for a in range(3))
    peak, value = local[index], tensor[index]
    return ((peak > 0) & (value >= fraction * peak)).cpu().numpy()


def _sparse_rule(values: np.ndarray | torch.Tensor, core: np.ndarray, points: np.ndarray, size,
                 fraction: float) -> np.ndarray:
    """The same rule with the box maximum gathered at ``points`` only (offset by offset): for sparse
    vessels, where the band is a small part of its bounding box (a whole head: ~50 times faster)."""
    if isinstance(values, torch.Tensor):  # the smoothed box
        values = values.cpu().numpy()
    half = np.asarray(size) // 2
    padded = np.full(np.asarray(values.shape) + 2 * half, -1e3, np.float32)
    inner = padded[half[0]:half[0] + values.shape[0], half[1]:half[1] + values.shape[1], half[2]:half[2] + values.shape[2]]
    found = np.nonzero(core)
    inner[found] = values[found]
    strides = np.asarray([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    centre = (points + half) @ strides
    flat = padded.ravel()
    peak = np.full(len(points), -1e3, np.float32)
    for offset in np.ndindex(*size):
        np.maximum(peak, flat[centre + (np.asarray(offset) - half) @ strides], out=peak)
    value = values[tuple(points.T)].astype(np.float32, copy=False)
    return (peak > 0) & (value >= np.float32(fraction) * peak)


def segment(volume: np.ndarray, spacing, model, mask: np.ndarray | None = None, dark: bool = False,
            overlap: float = 0.0, threshold: float = 0.5, min_component_mm3: float = 0.0,
            device: str | torch.device = "cpu", batch_size: int | None = None, with_mips: bool = False,
            progress=None, cancel=None, resample_to_model: bool = True,
            head_margin_mm: float = HEAD_MARGIN_MM, refine: bool = True) -> SegmentationResult:
    """Segment vessels in a raw volume.

    :param volume: ``[k, j, i]`` intensities (K is the slice axis).
    :param spacing: ``(sx, sy, sz)`` mm.
    :param model: a :class:`~.network.VCNet` in eval mode.
    :param mask: optional brain/ROI mask: sets the intensity statistics; voxels outside are background.
    :param dark: dark vessels (SWI/MinIP): intensities are inverted inside the mask.
    :param overlap: window overlap; 0 = non-overlapping (paper), > 0 Gaussian blending.
    :param min_component_mm3: remove components smaller than this.
    :param with_mips: also return the composited MIPs of each slab and their 2D segmentation.
    :param resample_to_model: resample to the model's training spacing (and the probability back).
    :param head_margin_mm: without a mask, vessels are only searched at least this far from the air
        around the head (:func:`~.data.intracranial_region`: removes the bright fat and scalp of a
        whole head; a crop with no air keeps every voxel); 0 searches everywhere.
    :param refine: draw the vessel boundary on the input grid by the half-maximum rule
        (:func:`refine_boundary`); False thresholds the probability alone.
    """
    reporter = as_reporter(progress, cancel)
    torch_device = devices.resolve_device(device)
    start = time.perf_counter()
    model_spacing = tuple(getattr(model, "spacing", spacing))
    warnings = [w for w in (None if mask is not None else NO_MASK_WARNING, check_slice_axis(volume.shape, spacing),
                            check_extent(volume.shape, spacing, model_spacing)) if w]
    for warning in warnings:
        log.warning(warning)
    reporter(0.0, "normalising intensities")
    region = np.asarray(mask) > 0 if mask is not None else None
    level = tissue_level(volume, region if region is not None and region.any() else None)
    normalized = normalize(volume, mask, dark, level)
    grid = model_grid(volume.shape, spacing, model_spacing) if resample_to_model else None
    second = fine_grid(volume.shape, spacing, model_spacing) if resample_to_model else None
    for shape in (grid, second):
        if shape is not None:
            check_voxel_budget(shape, f"Resampling the {'x'.join(map(str, volume.shape[::-1]))} input of spacing "
                               f"{'x'.join(f'{s:g}' for s in spacing)} mm to the model's", hint="Check the voxel "
                               "spacing (Volumes module, Volume Information) or run at the native spacing "
                               "(--no-resample, resampleToModelSpacing=False).")
    if region is None and head_margin_mm > 0:
        region = intracranial_region(volume, spacing, level, margin_mm=head_margin_mm)
        region = None if region.all() else region
    sink = {} if with_mips else None
    counts: dict = {}
    prob, work, work_prob, unpadded, used_batch = _grid_probability(
        model, normalized, region, grid, torch_device, overlap, batch_size,
        reporter.sub(0.02, 0.85 if second is None else 0.3), sink, counts)
    if second is not None:  # a fine input: the union with the second, finer grid (thin vessels)
        second_counts: dict = {}
        np.maximum(prob, _grid_probability(model, normalized, region, second, torch_device, overlap, used_batch,
                                           reporter.sub(0.3, 0.85), None, second_counts)[0], out=prob)
        counts["fine_windows_run"] = second_counts["windows_run"]
    if region is not None:  # in place, with torch's threads (the MIP labels' fallback reads work_prob)
        prob = prob.copy() if grid is None and with_mips else prob
        torch.from_numpy(prob).mul_(torch.from_numpy(region))
    if refine:
        labels = refine_boundary(prob, normalized, spacing, threshold, torch_device).view(np.uint8)
    else:
        labels = (prob >= threshold).view(np.uint8)
    labels = remove_small_components(labels, spacing, min_component_mm3)
    result = SegmentationResult(prob.astype(np.float32, copy=False), labels, {})
    if with_mips:
        reporter(0.87, "composited MIPs")
        in_plane = work[:, : unpadded[1], : unpadded[2]]  # slabs of the model grid (thin slabs stay padded)
        images, probs = composited_mips(model, in_plane, sink)
        result.mip_image = images
        result.mip_labels = ((probs >= threshold).astype(np.uint8) if probs is not None
                             else label_mips((work_prob[:, : unpadded[1], : unpadded[2]] >= threshold).astype(np.uint8),
                                             model))
    reporter(0.93, "measuring")
    result.measurements = measurements(labels, spacing)
    work_spacing = trained_spacing(spacing, model_spacing) if grid is not None else tuple(spacing)
    result.info = {"seconds": time.perf_counter() - start, "device": str(torch_device), "batch_size": used_batch,
                   "warnings": warnings, "searched_fraction": 1.0 if region is None else float(region.mean()),
                   **counts,
                   "resampled_kji": list(grid) if grid is not None else None,
                   "fine_grid_kji": list(second) if second is not None else None,
                   "mip_spacing": (work_spacing[0], work_spacing[1], work_spacing[2] * int(model.patch[0]))}
    reporter(1.0, "done")
    return result


def _grid_probability(model, normalized: np.ndarray, region, grid, device: torch.device, overlap: float,
                      batch_size, reporter, sink, counts: dict):
    """The network's probability on ``grid`` (a ``(k, j, i)`` shape, or None for the input grid),
    brought back to the input grid (trilinear). Returns it, the (padded) volume and probability on
    ``grid``, the unpadded shape and the batch size that fit."""
    work = resample(normalized, grid, device) if grid is not None else normalized
    work, unpadded = pad_to_patch(work, model.patch)
    work_region = None
    if region is not None:  # the windows to run (on the model grid; generous at the border)
        work_region = resample(region.astype(np.float32), grid, device) > 0 if grid is not None else region
        work_region, _ = pad_to_patch(work_region, model.patch)
    work_prob, used_batch = predict_probability(model, work, device, overlap, batch_size, reporter,
                                                mip_sink=sink, region=work_region, counts=counts)
    prob = work_prob[: unpadded[0], : unpadded[1], : unpadded[2]]
    if grid is not None:
        prob = np.clip(resample(prob, normalized.shape, device), 0.0, 1.0)
    return prob, work, work_prob, unpadded, used_batch


def label_mips(labels: np.ndarray, model) -> np.ndarray:
    """The composited MIPs of a 3D label, slab by slab (same tiling as :func:`predict_mips`)."""
    depth = int(model.patch[0])
    tensor = torch.from_numpy(labels.astype(np.float32))[None, None]
    tiles = [mip.label_mip(_slab(tensor, s, depth), model.mip_size, model.mip_step)[0, 0].numpy()
             for s in slab_starts(labels.shape[0], depth)]
    return np.stack(tiles).astype(np.uint8)

"""Intensity preparation, MSD-style dataset loading and foreground-focused patch sampling for VC-Net.

Intensities: contrast relative to the tissue, ``(x - m) / m``, with ``m`` the tissue level: the
dominant non-air mode of the intensity histogram (refined by the median of the voxels near it),
taken inside the brain mask when one is given and over the whole volume otherwise. Vessels, bright
fat and scalp, dark CSF and air do not move the mode, so a crop without air, a whole head with air
and a masked brain all put the tissue at 0. Dark vessels (SWI/MinIP) are inverted inside the mask
(an automatic head mask without one) by negating the normalised value, which turns dark veins into
bright ones while the air outside stays dark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HISTOGRAM_BINS = 256
AIR_RATIO = 4.0  # tissue is at least this many times brighter than air (the noise floor) in MR magnitude
AIR_FRACTION = 0.15  # only a tallest peak below this fraction of the bright end can be air


def auto_head_mask(volume: np.ndarray, level: float | None = None, stride=(1, 2, 2)) -> np.ndarray:
    """Head mask: voxels above ``0.4 x`` the tissue level (default: :func:`tissue_level`), opened,
    holes filled slice by slice (the slab cuts the head). Computed on every ``stride`` voxel
    (default every second row and column) and repeated back to the volume's shape."""
    level = tissue_level(volume) if level is None else level
    mask = _coarse_head_mask(volume, level, stride)
    if mask is None:
        return np.ones(volume.shape, bool)
    for axis, n in enumerate(stride):
        mask = mask.repeat(n, axis=axis) if n > 1 else mask
    return mask[: volume.shape[0], : volume.shape[1], : volume.shape[2]]


def _coarse_head_mask(volume: np.ndarray, level: float, stride) -> np.ndarray | None:
    """:func:`auto_head_mask` on the ``stride`` grid (None when nothing is above the threshold)."""
    from scipy import ndimage

    coarse = volume[:: stride[0], :: stride[1], :: stride[2]]
    mask = ndimage.binary_opening(coarse > 0.4 * level, iterations=1)
    mask = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    return mask if mask.any() else None


HEAD_MARGIN_MM = 8.0  # fat + scalp: 5-7 mm on adult heads, the brain surface lies >= ~10 mm deep
MIN_AIR_FRACTION = 0.05  # below this much air outside the head mask, a volume is a crop inside the head
AIR_MIN_THICKNESS_MM = 12.0  # air around a head is thick; skull (5-10 mm) or CSF cut by the field of view is not


def intracranial_region(volume: np.ndarray, spacing, level: float | None = None,
                        margin_mm: float = HEAD_MARGIN_MM) -> np.ndarray:
    """Where the no-mask call may mark vessels: voxels at least ``margin_mm`` from the air around the
    head, which removes the bright subcutaneous fat and the scalp.

    The air is what lies outside the automatic head mask (:func:`auto_head_mask`) and is thick: an
    opening with a ``AIR_MIN_THICKNESS_MM`` ball drops thin dark bands (the skull or CSF cut by the
    field of view). The volume's faces do not count as air (a slab cutting the head, a crop inside
    it), and a volume with less than ``MIN_AIR_FRACTION`` air keeps every voxel. On a ~2 mm grid.
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, float)[::-1]  # (sz, sy, sx) for (k, j, i)
    stride = np.maximum(1, np.round(2.0 / spacing)).astype(int)
    level = tissue_level(volume) if level is None else level
    head = _coarse_head_mask(volume, level, stride)  # on the ~2 mm grid directly
    if head is None:
        return np.ones(volume.shape, bool)
    step = spacing * stride
    radius = np.maximum(1, np.round(AIR_MIN_THICKNESS_MM / 2 / step)).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / r) ** 2 for g, r in zip(grid, radius)) <= 1
    air = ndimage.binary_erosion(~head, ball, border_value=1)
    air = ndimage.binary_dilation(air, ball) & ~head
    if margin_mm <= 0 or air.mean() < MIN_AIR_FRACTION:  # a crop inside the head
        return np.ones(volume.shape, bool)
    keep = ndimage.distance_transform_edt(~air, sampling=step) >= margin_mm
    for axis, n in enumerate(stride):
        keep = keep.repeat(n, axis=axis)
    return np.ascontiguousarray(keep[: volume.shape[0], : volume.shape[1], : volume.shape[2]])


def _subsample(volume: np.ndarray, region: np.ndarray | None, limit: int = 2_000_000) -> np.ndarray:
    count = volume.size if region is None else int(region.sum())
    step = max(1, int(round((count / limit) ** (1 / 3))))
    values = volume[::step, ::step, ::step]
    if region is not None:
        values = values[region[::step, ::step, ::step]]
        if not values.size:
            values = volume[region]
    return values.astype(np.float32, copy=False).ravel()


def tissue_level(volume: np.ndarray, region: np.ndarray | None = None) -> float:
    """Robust tissue intensity of a volume (inside ``region`` if given).

    The tallest peak of the smoothed histogram between the 0.1st and 99.5th percentiles, unless it is
    dark (below ``AIR_FRACTION`` of the 99.5th percentile) and a peak at least ``AIR_RATIO`` times
    brighter holds 5 % of its height (then the tallest is air and the tallest of those brighter peaks
    is the tissue); refined by the median of the voxels within +-40 % of the peak. Sparse vessels, fat and scalp (bright) and CSF (dark) do not move it.
    """
    from scipy.ndimage import gaussian_filter1d

    values = _subsample(np.asarray(volume), region)
    low, high = np.percentile(values, [0.1, 99.5])
    if not high > low:
        return float(np.median(values))
    counts, edges = np.histogram(values, HISTOGRAM_BINS, (low, high))
    smooth = gaussian_filter1d(counts.astype(np.float64), 2.0)
    floor = min(float(low), 0.0)  # magnitude images start at 0; shifted ones at their minimum
    centres = (edges[:-1] + edges[1:]) / 2 - floor
    peak = int(np.argmax(smooth))
    if centres[peak] < AIR_FRACTION * (high - floor):  # a dark tallest peak may be air: look for tissue above it
        brighter = (centres > AIR_RATIO * max(centres[peak], (high - low) / HISTOGRAM_BINS)) & \
            (smooth >= 0.05 * smooth[peak])
        if brighter.any():
            peak = int(np.flatnonzero(brighter)[np.argmax(smooth[brighter])])
    mode = centres[peak] + floor
    near = values[(values >= mode - 0.4 * abs(mode)) & (values <= mode + 0.4 * abs(mode))]
    return float(np.median(near)) if near.size else float(mode)


def normalize(volume: np.ndarray, mask: np.ndarray | None = None, dark: bool = False,
              level: float | None = None) -> np.ndarray:
    """Normalised float32 volume (vessels bright): ``(x - m) / m`` with ``m`` the :func:`tissue_level`
    inside the mask (or of the whole volume without one). Dark vessels are inverted inside the mask
    (automatic head mask without one).

    :param mask: brain/ROI mask: sets the intensity statistics and the inversion region.
    :param dark: invert intensities inside the mask (SWI / MinIP: dark vessels).
    :param level: the tissue level if already known (:func:`tissue_level` of the volume in the mask).
    """
    volume = np.asarray(volume, dtype=np.float32)
    region = np.asarray(mask) > 0 if mask is not None else None
    if region is not None and not region.any():
        region = None
    centre = tissue_level(volume, region) if level is None else float(level)
    spread = float(np.ptp(volume))
    scale = max(abs(centre), spread * 1e-3, 1e-6)
    out = np.subtract(volume, np.float32(centre))  # (x - m) / m, one new array
    np.divide(out, np.float32(scale), out=out)
    if dark:
        out[auto_head_mask(volume, centre) if region is None else region] *= -1.0
    return out.astype(np.float32, copy=False)


@dataclass
class Case:
    """One training/evaluation volume: normalised image, label, brain mask and spacing (x, y, z)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, float, float]
    raw: np.ndarray | None = None  # the image as read (for the whole-pipeline calls of eval)


def load_case(entry: dict, dark: bool = False, keep_raw: bool = False) -> Case:
    """Load and normalise one dataset entry (brain mask from ``mask`` if present)."""
    from ..phantoms.datasets import load_nifti

    image, spacing, _ = load_nifti(entry["image"])
    label, _, _ = load_nifti(entry["label"])
    mask = load_nifti(entry["mask"])[0] if entry.get("mask") and Path(entry["mask"]).is_file() else None
    name = Path(entry["image"]).name.split(".")[0]
    return Case(name, normalize(image, mask, dark), (label > 0).astype(np.uint8), mask, tuple(spacing),
                np.asarray(image, np.float32) if keep_raw else None)


def load_cases(folder: str | Path, dark: bool = False, limit: int | None = None, keep_raw: bool = False) -> list[Case]:
    from ..phantoms.datasets import read_msd_training

    return [load_case(e, dark, keep_raw) for e in read_msd_training(folder, "mra")[:limit]]


class PatchSampler:
    """Random overlapping patches focused on the foreground (centres drawn by MONAI's
    ``generate_pos_neg_label_crop_centers``, the sampler behind ``RandCropByPosNegLabel``).

    :param patch: ``(K3, K1, K2)`` patch size (slices first), e.g. (16, 64, 64).
    :param pos_fraction: probability that a patch is centred on a vessel voxel; the others are
        centred on a non-vessel voxel inside the brain mask (anywhere when a case has no mask), or
        on a hard negative.
    :param hard_fraction: probability that a patch is centred on a **hard negative**: a bright
        voxel (normalised contrast above ``HARD_NEGATIVE_CONTRAST``) outside the brain mask, i.e.
        subcutaneous fat, scalp or a sinus, which a whole head without a mask shows the network.
        Cases without such voxels fall back to the other two kinds.
    """

    def __init__(self, cases: list[Case], patch, pos_fraction: float = 0.75, seed: int = 0,
                 hard_fraction: float = 0.0):
        from monai.transforms.utils import map_binary_to_indices

        self.cases, self.patch, self.pos_fraction = cases, tuple(int(p) for p in patch), pos_fraction
        self.hard_fraction = float(hard_fraction)
        self.rng = np.random.RandomState(seed)
        self.indices = [map_binary_to_indices(c.label[None], image=None if c.mask is None else c.mask[None],
                                              image_threshold=0) for c in cases]
        self.hard = [hard_negatives(c) for c in cases]

    def _pad(self, array: np.ndarray, value: float) -> np.ndarray:
        pads = [(0, max(0, p - s)) for p, s in zip(self.patch, array.shape[1:])]
        return np.pad(array, [(0, 0)] + pads, constant_values=value) if any(p[1] for p in pads) else array

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One ``(1, K3, K1, K2)`` image patch and its label patch."""
        from monai.transforms.utils import generate_pos_neg_label_crop_centers

        index = int(self.rng.randint(len(self.cases)))
        case = self.cases[index]
        fg, bg = self.indices[index]
        hard = self.hard[index]
        if self.hard_fraction > 0 and self.rng.rand() < self.hard_fraction and hard.size:
            centre = np.unravel_index(int(hard[self.rng.randint(hard.size)]), case.label.shape)
        else:  # keep the overall share of vessel-centred patches at pos_fraction
            pos = min(1.0, self.pos_fraction / (1 - self.hard_fraction)) if self.hard_fraction > 0 else self.pos_fraction
            centre = generate_pos_neg_label_crop_centers(self.patch, 1, pos, case.label.shape, fg, bg,
                                                         rand_state=self.rng, allow_smaller=True)[0]
        stacked = np.stack([case.image, case.label.astype(np.float32)])
        patch = _crop_at(stacked, centre, self.patch)
        return self._pad(patch[0:1], float(case.image.min())), self._pad(patch[1:2], 0.0)

    def batch(self, size: int):
        """``(image, label)`` float32 torch tensors ``(size, 1, K3, K1, K2)``."""
        import torch

        pairs = [self.sample() for _ in range(size)]
        return (torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))


HARD_NEGATIVE_CONTRAST = 0.8  # normalised (x - m) / m: fat in TOF is ~2, vessels 0.6-3, brain 0


def hard_negatives(case: Case) -> np.ndarray:
    """Flat indices of bright non-vessel voxels outside the brain mask (fat, scalp, sinuses)."""
    if case.mask is None:
        return np.zeros(0, np.int64)
    bright = (case.image > HARD_NEGATIVE_CONTRAST) & (case.mask == 0) & (case.label == 0)
    return np.flatnonzero(bright)


def _crop_at(array: np.ndarray, centre, patch) -> np.ndarray:
    """Crop ``(C, ...)`` around ``centre`` to ``patch`` (shifted inside the volume)."""
    slices = [slice(None)]
    for c, p, n in zip(centre, patch, array.shape[1:]):
        start = int(np.clip(int(c) - p // 2, 0, max(n - p, 0)))
        slices.append(slice(start, start + p))
    return array[tuple(slices)]

"""Intensity preparation, MSD-style dataset loading and foreground-focused patch sampling for VC-Net.

Intensities: contrast relative to the tissue, ``(x - m) / m`` with ``m`` the median inside the brain
mask (or the foreground above half the Otsu threshold without one); sparse vessels do not move the median, so crops and whole
volumes, with or without a mask, get the same scale. Dark vessels (SWI/MinIP) are inverted
inside the mask by negating the normalised value (inversion around the tissue median), which turns
dark veins into bright ones while the air outside the mask stays dark. Without a mask an automatic
head mask (Otsu threshold, slice-wise hole filling) is used. No resampling: patches follow the
native (anisotropic) grid, K3 slices along the slice axis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def auto_head_mask(volume: np.ndarray) -> np.ndarray:
    """Head mask: Otsu threshold, opening, holes filled slice by slice (the slab cuts the head).

    Computed on every second row and column and repeated back to the full grid.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    coarse = volume[:, ::2, ::2]
    mask = ndimage.binary_opening(coarse > threshold_otsu(coarse), iterations=1)
    mask = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    if not mask.any():
        return np.ones(volume.shape, bool)
    full = mask.repeat(2, axis=1).repeat(2, axis=2)
    return full[:, : volume.shape[1], : volume.shape[2]]


def foreground(volume: np.ndarray) -> np.ndarray:
    """Voxels above half the Otsu threshold: tissue rather than air and bone when the field of view
    holds air (Otsu splits air from tissue), and all tissue when it does not (Otsu then splits
    tissue classes, and half of it lies below them)."""
    from skimage.filters import threshold_otsu

    return volume > 0.5 * threshold_otsu(volume[::2, ::2, ::2])


def normalize(volume: np.ndarray, mask: np.ndarray | None = None, dark: bool = False) -> np.ndarray:
    """Normalised float32 volume (vessels bright): contrast relative to the tissue median.

    ``(x - m) / m`` with ``m`` the median of the mask (or, without a mask, of :func:`foreground`):
    vessels are sparse, so ``m`` is the tissue level whether the field of view is a small crop or the
    whole head. Dark vessels are inverted inside the mask (automatic head mask without one).

    :param mask: brain/ROI mask (statistics and inversion region).
    :param dark: invert intensities inside the mask (SWI / MinIP: dark vessels).
    """
    volume = np.asarray(volume, dtype=np.float32)
    region = np.asarray(mask) > 0 if mask is not None else foreground(volume)
    if not region.any():
        region = np.ones(volume.shape, bool)
    step = max(1, int(round((region.sum() / 2_000_000) ** (1 / 3))))  # statistics on <= ~2 M voxels
    values = volume[::step, ::step, ::step][region[::step, ::step, ::step]]
    centre = float(np.median(values if values.size else volume[region]))
    scale = max(abs(centre), float(np.ptp(values)) * 1e-3, 1e-6)
    out = (volume - np.float32(centre)) / np.float32(scale)
    if dark:
        out[auto_head_mask(volume) if mask is None else region] *= -1.0
    return out.astype(np.float32, copy=False)


@dataclass
class Case:
    """One training/evaluation volume: normalised image, label, brain mask and spacing (x, y, z)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, float, float]


def read_dataset(folder: str | Path) -> list[dict]:
    """``dataset.json`` training entries of an MSD-style folder with absolute paths."""
    folder = Path(folder)
    index = folder / "dataset.json"
    if not index.is_file():
        from ..errors import InputError

        raise InputError(f"{folder} has no dataset.json: write one with `vesselrecon phantoms mra --out {folder}`.")
    entries = json.loads(index.read_text())["training"]
    return [{k: (folder / v).resolve() if isinstance(v, str) and v.startswith("./") else v for k, v in e.items()}
            for e in entries]


def load_case(entry: dict, dark: bool = False) -> Case:
    """Load and normalise one dataset entry (brain mask from ``mask`` if present)."""
    from ..phantoms.datasets import load_nifti

    image, spacing, _ = load_nifti(entry["image"])
    label, _, _ = load_nifti(entry["label"])
    mask = load_nifti(entry["mask"])[0] if entry.get("mask") and Path(entry["mask"]).is_file() else None
    name = Path(entry["image"]).name.split(".")[0]
    return Case(name, normalize(image, mask, dark), (label > 0).astype(np.uint8), mask, tuple(spacing))


def load_cases(folder: str | Path, dark: bool = False, limit: int | None = None) -> list[Case]:
    return [load_case(e, dark) for e in read_dataset(folder)[:limit]]


class PatchSampler:
    """Random overlapping patches focused on the foreground (centres drawn by MONAI's
    ``generate_pos_neg_label_crop_centers``, the sampler behind ``RandCropByPosNegLabel``).

    :param patch: ``(K3, K1, K2)`` patch size (slices first), e.g. (16, 64, 64).
    :param pos_fraction: probability that a patch is centred on a vessel voxel.
    """

    def __init__(self, cases: list[Case], patch, pos_fraction: float = 0.75, seed: int = 0):
        from monai.transforms.utils import map_binary_to_indices

        self.cases, self.patch, self.pos_fraction = cases, tuple(int(p) for p in patch), pos_fraction
        self.rng = np.random.RandomState(seed)
        self.indices = [map_binary_to_indices(c.label[None], image=None) for c in cases]

    def _pad(self, array: np.ndarray, value: float) -> np.ndarray:
        pads = [(0, max(0, p - s)) for p, s in zip(self.patch, array.shape[1:])]
        return np.pad(array, [(0, 0)] + pads, constant_values=value) if any(p[1] for p in pads) else array

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One ``(1, K3, K1, K2)`` image patch and its label patch."""
        from monai.transforms.utils import generate_pos_neg_label_crop_centers

        index = int(self.rng.randint(len(self.cases)))
        case = self.cases[index]
        fg, bg = self.indices[index]
        centre = generate_pos_neg_label_crop_centers(self.patch, 1, self.pos_fraction, case.label.shape, fg, bg,
                                                     rand_state=self.rng, allow_smaller=True)[0]
        stacked = np.stack([case.image, case.label.astype(np.float32)])
        patch = _crop_at(stacked, centre, self.patch)
        return self._pad(patch[0:1], float(case.image.min())), self._pad(patch[1:2], 0.0)

    def batch(self, size: int):
        """``(image, label)`` float32 torch tensors ``(size, 1, K3, K1, K2)``."""
        import torch

        pairs = [self.sample() for _ in range(size)]
        return (torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))


def _crop_at(array: np.ndarray, centre, patch) -> np.ndarray:
    """Crop ``(C, ...)`` around ``centre`` to ``patch`` (shifted inside the volume)."""
    slices = [slice(None)]
    for c, p, n in zip(centre, patch, array.shape[1:]):
        start = int(np.clip(int(c) - p // 2, 0, max(n - p, 0)))
        slices.append(slice(start, start + p))
    return array[tuple(slices)]

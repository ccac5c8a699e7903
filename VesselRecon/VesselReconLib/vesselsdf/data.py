"""VesselSDF training data: Medical-Segmentation-Decathlon style folders, SDF targets and crops.

A dataset folder holds ``dataset.json`` whose ``training`` list has ``{"image", "label"}`` paths
(``imagesTr/*.nii.gz`` CT in HU, ``labelsTr/*.nii.gz`` vessel labels, any label > 0 = vessel), as
written by ``vesselrecon phantoms ct`` or the MSD Task08 HepaticVessel download (there label 2 is
tumour: pass ``vessel_labels=(1,)``). Targets: the binary vessel mask and its signed distance
(the dataset's exact ``sdfTr`` when present, else :func:`.losses.signed_distance` of the label).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..volume_io import read_volume
from .losses import signed_distance
from .preprocess import normalise_with, roi_statistics


@dataclass
class Case:
    """One training/evaluation volume (KJI arrays, spacing (x, y, z) mm)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    ijk_to_ras: np.ndarray
    sdf: np.ndarray | None = None
    organ: np.ndarray | None = None
    fine_skeleton: np.ndarray | None = None
    fine_positions: np.ndarray | None = None

    def __post_init__(self):
        roi = self.roi
        self.stats = roi_statistics(self.image, roi)

    @property
    def roi(self) -> np.ndarray:
        return self.organ > 0 if self.organ is not None else np.ones(self.image.shape, bool)

    def normalised(self) -> np.ndarray:
        """The network input: liver-relative normalisation with the statistics of the whole organ."""
        return normalise_with(self.image, self.roi, *self.stats)


FINE_SLICES_PER_CROP = 64
"""Fine (high-resolution) slices a crop carries for the fine-grid losses (fewer: zero-padded; more: evenly thinned)."""


def tubed_skeleton(mask: np.ndarray) -> np.ndarray:
    """Kirchhoff et al.'s *tubed* skeleton of a KJI mask: its 3D skeleton dilated by one in-plane pixel (a cross),
    kept inside the mask."""
    from scipy.ndimage import binary_dilation

    from .realdata import _skeleton

    mask = np.asarray(mask, bool)
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    return (binary_dilation(_skeleton(mask), cross) & mask).astype(np.uint8)


def fine_positions(thick_origin_z: float, thick_dz: float, fine_origin_z: float, fine_dz: float,
                   fine_slices: int) -> np.ndarray:
    """Each fine slice's position in thick-slice index units (unclipped; :func:`.evaluation.hires_field`)."""
    z = fine_origin_z + fine_dz * np.arange(fine_slices)
    return (z - thick_origin_z) / thick_dz


def load_case(entry: dict, vessel_labels: Sequence[int] | None = None, with_sdf: bool = True,
              fine: bool = False) -> Case:
    """Read one image/label pair; ``vessel_labels`` selects label values (default: any > 0).

    ``fine`` (round 9) also reads the high-resolution label (``"hires_label"``) as its tubed skeleton and slice
    positions, for the fine-grid skeleton recall (:func:`.losses.skeleton_recall_loss`).

    The SDF target is the dataset's exact signed distance when it ships one (``"sdf"`` entry, as
    ``vesselrecon phantoms ct`` writes: distances to the true surface, which keep the sub-slice
    position of vessels running between slice centres), else the paper's
    :func:`.losses.signed_distance` of the binary label on its anisotropic grid.
    """
    image, matrix = read_volume(entry["image"])
    label, _ = read_volume(entry["label"])
    if label.shape != image.shape:
        raise InputError(f"{entry['label']} has shape {label.shape}, its image {image.shape}.")
    mask = np.isin(label, vessel_labels) if vessel_labels else label > 0
    spacing = tuple(float(s) for s in np.linalg.norm(matrix[:3, :3], axis=0))
    sdf = None
    if with_sdf and "sdf" in entry and not vessel_labels:
        sdf = read_volume(entry["sdf"])[0].astype(np.float32)
    elif with_sdf:
        sdf = signed_distance(mask, spacing)
    organ = read_volume(entry["organ"])[0] > 0 if "organ" in entry else None
    skeleton = positions = None
    if fine:
        if "hires_label" not in entry:
            raise InputError(f"{entry['image']} has no high-resolution label (a `vesselrecon phantoms ct` folder has).")
        hires, hires_matrix = read_volume(entry["hires_label"])
        if hires.shape[1:] != image.shape[1:]:
            raise InputError(f"{entry['hires_label']} has slices of {hires.shape[1:]}, its image {image.shape[1:]}.")
        positions = fine_positions(matrix[2, 3], spacing[2], hires_matrix[2, 3],
                                   float(np.linalg.norm(hires_matrix[:3, 2])), hires.shape[0])
        skeleton = tubed_skeleton(hires > 0)
    return Case(Path(entry["image"]).name.split(".")[0], image.astype(np.float32), mask.astype(np.uint8),
                spacing, matrix, sdf, organ, skeleton, positions)


def load_dataset(root: str | Path, limit: int | None = None, vessel_labels=None, fine: bool = False) -> list[Case]:
    """All (or the first ``limit``) cases of a dataset folder (``fine``: with the fine truth, :func:`load_case`)."""
    from ..phantoms.datasets import read_msd_training

    return [load_case(e, vessel_labels, fine=fine) for e in read_msd_training(root, "ct")[:limit]]


def fine_crop(case: Case, k0: int, slices: int, rows: slice, columns: slice) -> dict[str, np.ndarray]:
    """The fine slices between a crop's first and last thick slice: positions relative to the crop (padded with
    0, thinned evenly above :data:`FINE_SLICES_PER_CROP`) and their tubed skeleton (padding: empty)."""
    inside = np.flatnonzero((case.fine_positions >= k0 - 1e-4) & (case.fine_positions <= k0 + slices - 1 + 1e-4))
    if len(inside) > FINE_SLICES_PER_CROP:
        inside = inside[np.linspace(0, len(inside) - 1, FINE_SLICES_PER_CROP).round().astype(int)]
    positions = np.zeros(FINE_SLICES_PER_CROP, np.float32)
    skeleton = np.zeros((FINE_SLICES_PER_CROP, rows.stop - rows.start, columns.stop - columns.start), np.uint8)
    positions[:len(inside)] = case.fine_positions[inside] - k0
    skeleton[:len(inside)] = case.fine_skeleton[inside, rows, columns]
    return {"fine_pos": positions, "fine_skel": skeleton}


def random_crop(case: Case, size: tuple[int, int], rng: np.random.Generator, slices: int | None = None
                ) -> dict[str, np.ndarray]:
    """A crop (``slices`` consecutive slices, default all) of image, mask and SDF target (and, for a case loaded
    with its fine truth, :func:`fine_crop`).

    Centred on a vessel half the time. The image is normalised with the whole case's liver
    statistics, so a crop looks exactly like the same region of the whole volume.
    """
    nk, nj, ni = case.image.shape
    cj, ci = min(size[0], nj), min(size[1], ni)
    ck = min(slices or nk, nk)
    if rng.random() < 0.5 and case.label.any():
        k, j, i = np.argwhere(case.label)[rng.integers(int(case.label.sum()))]
        j0 = int(np.clip(j - cj // 2 + rng.integers(-cj // 4, cj // 4 + 1), 0, nj - cj))
        i0 = int(np.clip(i - ci // 2 + rng.integers(-ci // 4, ci // 4 + 1), 0, ni - ci))
        k0 = int(np.clip(k - ck // 2, 0, nk - ck))
    else:
        j0, i0 = int(rng.integers(0, nj - cj + 1)), int(rng.integers(0, ni - ci + 1))
        k0 = int(rng.integers(0, nk - ck + 1))
    window_slice = (slice(k0, k0 + ck), slice(j0, j0 + cj), slice(i0, i0 + ci))
    image = normalise_with(case.image[window_slice], case.roi[window_slice], *case.stats)
    crop = {"image": image, "mask": case.label[window_slice],
            "sdf": case.sdf[window_slice], "spacing": np.asarray(case.spacing, np.float32)}
    if case.fine_skeleton is not None:
        crop.update(fine_crop(case, k0, ck, *window_slice[1:]))
    return crop


def flip(crop: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random in-plane flips (the only augmentation; intensities are already liver-relative)."""
    axes = [axis for axis in (1, 2) if rng.random() < 0.5]
    if not axes:
        return crop
    return {k: np.ascontiguousarray(np.flip(v, axes)) if v.ndim == 3 else v for k, v in crop.items()}


def batches(cases: Sequence[Case], crop: tuple[int, int], batch_size: int, steps: int, seed: int,
            augment: bool = True, slices: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """``steps`` random batches of crops (tensors ``(N, 1, K, J, I)``; spacing ``(N, 3)``).

    A batch holds crops of cases with the same number of slices (the first case drawn decides).
    """
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        first = cases[int(rng.integers(len(cases)))]
        same = [c for c in cases if c.image.shape[0] == first.image.shape[0]]
        crops = [random_crop(same[int(rng.integers(len(same)))], crop, rng, slices) for _ in range(batch_size)]
        if augment:
            crops = [flip(c, rng) for c in crops]
        yield {key: torch.from_numpy(np.stack([c[key] for c in crops]))[:, None] if key != "spacing"
               else torch.from_numpy(np.stack([c[key] for c in crops])) for key in crops[0]}

"""VesselSDF training data: Medical-Segmentation-Decathlon style folders, SDF targets and crops.

A dataset folder holds ``dataset.json`` whose ``training`` list has ``{"image", "label"}`` paths
(``imagesTr/*.nii.gz`` CT in HU, ``labelsTr/*.nii.gz`` vessel labels, any label > 0 = vessel), as
written by ``vesselrecon phantoms ct`` or the MSD Task08 HepaticVessel download (there label 2 is
tumour: pass ``vessel_labels=(1,)``). Targets: the binary vessel mask and its signed distance
(the dataset's exact ``sdfTr`` when present, else :func:`.losses.signed_distance` of the label).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..volume_io import read_volume
from .inference import PORTAL_VENOUS_WINDOW, normalise_ct
from .losses import signed_distance


@dataclass
class Case:
    """One training/evaluation volume (KJI arrays, spacing (x, y, z) mm)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    ijk_to_ras: np.ndarray
    sdf: np.ndarray | None = None

    def normalised(self, window=PORTAL_VENOUS_WINDOW) -> np.ndarray:
        return normalise_ct(self.image, window)


def dataset_entries(root: str | Path) -> list[dict]:
    """The ``training`` entries of an MSD ``dataset.json`` (paths made absolute)."""
    root = Path(root)
    meta = root / "dataset.json"
    if not meta.is_file():
        raise InputError(f"{root} has no dataset.json: write one with `vesselrecon phantoms ct --out {root}`.")
    entries = json.loads(meta.read_text()).get("training", [])
    if not entries:
        raise InputError(f"{meta} lists no training cases.")
    return [{k: str((root / v).resolve()) for k, v in entry.items() if isinstance(v, str)} for entry in entries]


def load_case(entry: dict, vessel_labels: Sequence[int] | None = None, with_sdf: bool = True) -> Case:
    """Read one image/label pair; ``vessel_labels`` selects label values (default: any > 0).

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
    return Case(Path(entry["image"]).name.split(".")[0], image.astype(np.float32), mask.astype(np.uint8),
                spacing, matrix, sdf)


def load_dataset(root: str | Path, limit: int | None = None, vessel_labels=None) -> list[Case]:
    """All (or the first ``limit``) cases of a dataset folder."""
    return [load_case(e, vessel_labels) for e in dataset_entries(root)[:limit]]


def random_crop(case: Case, size: tuple[int, int], rng: np.random.Generator,
                window=PORTAL_VENOUS_WINDOW) -> dict[str, np.ndarray]:
    """An in-plane crop (all slices) of image, mask and SDF target; centred on a vessel half the time."""
    _, nj, ni = case.image.shape
    cj, ci = min(size[0], nj), min(size[1], ni)
    if rng.random() < 0.5 and case.label.any():
        k, j, i = np.argwhere(case.label)[rng.integers(int(case.label.sum()))]
        j0 = int(np.clip(j - cj // 2 + rng.integers(-cj // 4, cj // 4 + 1), 0, nj - cj))
        i0 = int(np.clip(i - ci // 2 + rng.integers(-ci // 4, ci // 4 + 1), 0, ni - ci))
    else:
        j0, i0 = int(rng.integers(0, nj - cj + 1)), int(rng.integers(0, ni - ci + 1))
    window_slice = (slice(None), slice(j0, j0 + cj), slice(i0, i0 + ci))
    return {"image": normalise_ct(case.image[window_slice], window), "mask": case.label[window_slice],
            "sdf": case.sdf[window_slice], "spacing": np.asarray(case.spacing, np.float32)}


def batches(cases: Sequence[Case], crop: tuple[int, int], batch_size: int, steps: int, seed: int
            ) -> Iterator[dict[str, torch.Tensor]]:
    """``steps`` random batches of crops (tensors ``(N, 1, K, J, I)``; spacing ``(N, 3)``)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        crops = [random_crop(cases[int(rng.integers(len(cases)))], crop, rng) for _ in range(batch_size)]
        yield {key: torch.from_numpy(np.stack([c[key] for c in crops]))[:, None] if key != "spacing"
               else torch.from_numpy(np.stack([c[key] for c in crops])) for key in crops[0]}

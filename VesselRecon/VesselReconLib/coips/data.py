"""Training/evaluation data in the OCTA-25K-IQA-SEG layout, as ``vesselrecon phantoms octa-quality`` writes it.

::

    DIR/images/*.png        quality subset
    DIR/labels.csv          image file name + quality label (0/1/2 or ungradable/gradable/outstanding)
    DIR/faz/images/*.png    segmentation subset
    DIR/faz/masks/*.png     FAZ masks (non-zero = FAZ), same file stems as faz/images

Column names are matched loosely (``image``/``file``/``filename``/``name``, ``quality``/``label``/``grade``,
optional ``field_mm``/``fov_mm``), so the real dataset's CSVs work after a rename at most.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import GRADES
from ..enface_io import IMAGE_SUFFIXES, read_image, to_work_image
from ..errors import InputError

IMAGE_COLUMNS = ("image", "file", "filename", "file_name", "name", "path")
LABEL_COLUMNS = ("quality", "label", "grade", "class")
FOV_COLUMNS = ("field_mm", "fov_mm", "field_of_view_mm", "fov")


@dataclass
class QualitySample:
    path: Path
    label: int
    field_of_view_mm: float | None = None


@dataclass
class FazSample:
    image: Path
    mask: Path
    field_of_view_mm: float | None = None
    label: int | None = None


def _column(header: list[str], candidates: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _label(value: str) -> int:
    value = value.strip().lower()
    if value in GRADES:
        return GRADES.index(value)
    if value.isdigit() and int(value) < len(GRADES):
        return int(value)
    raise InputError(f"Unknown quality label {value!r}; use 0/1/2 or {', '.join(GRADES)}.")


def _read_labels(csv_path: Path) -> dict[str, tuple[int, float | None]]:
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        image_col, label_col, fov_col = (_column(header, c) for c in (IMAGE_COLUMNS, LABEL_COLUMNS, FOV_COLUMNS))
        if image_col is None or label_col is None:
            raise InputError(f"{csv_path} needs an image column ({'/'.join(IMAGE_COLUMNS)}) and a label column "
                             f"({'/'.join(LABEL_COLUMNS)}); found {header}.")
        return {Path(row[image_col]).name: (_label(row[label_col]),
                                            float(row[fov_col]) if fov_col and row.get(fov_col) else None)
                for row in reader}


def quality_samples(root: str | Path) -> list[QualitySample]:
    """Labelled images of ``root/images`` listed in ``root/labels.csv``."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise InputError(f"{root} has no labels.csv; write a dataset with `vesselrecon phantoms octa-quality`.")
    labels = _read_labels(csv_path)
    samples = [QualitySample(root / "images" / name, label, fov) for name, (label, fov) in sorted(labels.items())
               if (root / "images" / name).is_file()]
    if not samples:
        raise InputError(f"No labelled images found under {root / 'images'}.")
    return samples


def faz_samples(root: str | Path) -> list[FazSample]:
    """Image/mask pairs of ``root/faz/images`` and ``root/faz/masks`` (matched by file stem)."""
    root = Path(root)
    images, masks = root / "faz" / "images", root / "faz" / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise InputError(f"{root} has no faz/images and faz/masks folders.")
    by_stem = {p.stem.removesuffix("_faz").removesuffix("_mask"): p for p in masks.iterdir()
               if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = _read_labels(root / "labels.csv") if (root / "labels.csv").is_file() else {}
    samples = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem in by_stem:
            label, fov = labels.get(image.name, (None, None))
            samples.append(FazSample(image, by_stem[image.stem], fov, label))
    if not samples:
        raise InputError(f"No image/mask pairs under {root / 'faz'}.")
    return samples


def read_mask(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 0


def split(n: int, val_fraction: float, seed: int, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices, stratified by ``labels`` when given."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, int) if labels is None else np.asarray(labels)
    train, val = [], []
    for value in np.unique(labels):
        members = rng.permutation(np.nonzero(labels == value)[0])
        cut = int(round(len(members) * val_fraction)) if len(members) > 1 else 0
        val.extend(members[:cut])
        train.extend(members[cut:])
    return np.sort(np.array(train, int)), np.sort(np.array(val, int))


def augmentation():
    """The paper's augmentation: horizontal flip (p = 0.5) and rotation within +-15 degrees."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(p=0.5), v2.RandomRotation(degrees=15)])


class QualityDataset(torch.utils.data.Dataset):
    """``(uint8 image (1, S, S), label)`` pairs, augmented when ``train`` (decoded images are cached)."""

    def __init__(self, samples: list[QualitySample], size: int, train: bool = False):
        self.samples, self.size = samples, int(size)
        self.transform = augmentation() if train else None
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        if index not in self._cache:
            self._cache[index] = torch.from_numpy(to_work_image(read_image(sample.path, required=False).pixels, self.size))[None]
        image = self._cache[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label


class FazDataset(torch.utils.data.Dataset):
    """``(uint8 image (1, S, S), int64 mask (1, S, S))`` pairs, jointly augmented when ``train``.

    With ``patch`` the training samples are ``patch`` x ``patch`` crops (nnU-Net style patch training:
    a third of them centred on a FAZ pixel, the rest anywhere); decoded images are cached in memory.
    """

    def __init__(self, samples: list[FazSample], size: int, train: bool = False, patch: int | None = None,
                 seed: int = 0):
        self.samples, self.size, self.patch = samples, int(size), patch
        self.transform = augmentation() if train else None
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self._cache:
            from PIL import Image

            sample = self.samples[index]
            image = torch.from_numpy(to_work_image(read_image(sample.image, required=False).pixels, self.size))[None]
            mask = Image.fromarray(read_mask(sample.mask).astype(np.uint8)).resize((self.size, self.size), Image.NEAREST)
            self._cache[index] = (image, torch.from_numpy(np.array(mask))[None])
        return self._cache[index]

    def _crop(self, image: torch.Tensor, mask: torch.Tensor):
        size, patch = image.shape[-1], self.patch
        foreground = torch.nonzero(mask[0])
        if len(foreground) and self.rng.random() < 1 / 3:
            cy, cx = foreground[self.rng.integers(len(foreground))].tolist()
            top, left = np.clip([cy - patch // 2, cx - patch // 2], 0, size - patch)
        else:
            top, left = self.rng.integers(0, size - patch + 1, 2)
        return image[:, top:top + patch, left:left + patch], mask[:, top:top + patch, left:left + patch]

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        image, mask = self._load(index)
        mask = tv_tensors.Mask(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        if self.patch and self.patch < self.size:
            image, mask = self._crop(image, torch.as_tensor(mask))
        return image, torch.as_tensor(mask, dtype=torch.int64)

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
from ..enface_io import IMAGE_SUFFIXES, read_image, to_uint8, to_work_image
from ..errors import InputError

IMAGE_COLUMNS = ("image", "file", "filename", "file_name", "name", "path")
LABEL_COLUMNS = ("quality", "label", "grade", "class")
FOV_COLUMNS = ("field_mm", "fov_mm", "field_of_view_mm", "fov")


@dataclass
class QualitySample:
    path: Path
    label: int
    field_of_view_mm: float | None = None
    vessel_mask: Path | None = None


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
    with open(csv_path, newline="", encoding="utf-8") as handle:
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


def rossa_samples(root: str | Path, splits=("train_manual", "train_sam")) -> list[QualitySample]:
    """Real ROSSA OCTA images (``root/<split>/image/*.png``) as quality sources of unknown field and of
    the best grade (they are degraded on the fly, see :class:`QualityDataset`)."""
    root = Path(root)
    samples = [QualitySample(path, len(GRADES) - 1, None, _mask_beside(path)) for split_name in splits
               for path in sorted((root / split_name / "image").glob("*.png"))]
    if not samples:
        raise InputError(f"No ROSSA images under {root}/<{'|'.join(splits)}>/image.")
    return samples


def _mask_beside(image: Path) -> Path | None:
    """ROSSA's vessel mask of an image (``<split>/label/<name>``), if there is one."""
    mask = image.parent.parent / "label" / image.name
    return mask if mask.is_file() else None


def remove_large_vessels(pixels: np.ndarray, vessels: np.ndarray, rng) -> np.ndarray:
    """A deep-slab look of a superficial image (grade kept): the large vessels of ``vessels`` (a mask of
    the arteriole/venule tree, dilated by 1-2 px) are filled with the image's own capillary texture,
    copied from randomly shifted vessel-free places, so only the capillary mesh and the FAZ remain."""
    from scipy import ndimage

    hole = ndimage.binary_dilation(vessels, iterations=int(rng.integers(1, 3)))
    out = pixels.copy()
    for _ in range(8):
        if not hole.any():
            break
        dy, dx = rng.integers(-pixels.shape[0] // 4, pixels.shape[0] // 4 + 1, 2)
        source, source_hole = np.roll(pixels, (dy, dx), (0, 1)), np.roll(hole, (dy, dx), (0, 1))
        fill = hole & ~source_hole
        out[fill] = source[fill]
        hole = hole & ~fill
    out[hole] = np.median(pixels)
    return out


def fovea_of(pixels: np.ndarray) -> tuple[float, float]:
    """The fovea's (row, column): the classical FAZ's centroid when it lies near the centre, else the centre."""
    from .faz import classical_faz

    height, width = pixels.shape
    centre = ((height - 1) / 2, (width - 1) / 2)
    mask = classical_faz(pixels)
    if not mask.any():
        return centre
    rows, cols = np.nonzero(mask)
    found = (float(rows.mean()), float(cols.mean()))
    return found if np.hypot(found[0] - centre[0], found[1] - centre[1]) < 0.2 * width else centre


def _zoom(pixels: np.ndarray, fovea, rng, zoom_min: float = 0.6) -> tuple[np.ndarray, tuple[float, float]]:
    """With p = 0.5 a central crop of ``zoom_min``-100 % of the width resized back (a 3x3 mm look), and the
    fovea in it."""
    from PIL import Image

    if rng.random() >= 0.5:
        return pixels, fovea
    height, width = pixels.shape
    side = int(round(width * rng.uniform(zoom_min, 1.0)))
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(pixels[top:top + side, left:left + side].astype(np.float32)).resize((width, height),
                                                                                               Image.BILINEAR)
    scale = width / side
    return np.asarray(crop), ((fovea[0] - top) * scale, (fovea[1] - left) * scale)


def augmentation():
    """The paper's augmentation: horizontal flip (p = 0.5) and rotation within +-15 degrees."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(p=0.5), v2.RandomRotation(degrees=15)])


class QualityDataset(torch.utils.data.Dataset):
    """``(uint8 image (1, S, S), label)`` pairs, augmented when ``train`` (decoded images are cached).

    With ``degrade`` (a probability) a training image is, that often, degraded on the fly by one of
    :data:`.degradations.KINDS` at a severity drawn uniformly from ``[0, 1]`` and relabelled
    ``min(label, grade_for_severity(severity))`` (decentration moves the fovea found by :func:`fovea_of`).
    Every training image is also zoomed (p = 0.5: a central crop of ``zoom_min``-100 % of the width, as 3x3 mm scans
    magnify 6x6 mm ones), its contrast changed (gamma 0.7-1.4) and given another device's look
    (:func:`device_appearance`) before the degradation, degraded or not.
    Without ``train`` the same images are degraded the same way at every call (a fixed validation set).
    """

    def __init__(self, samples: list[QualitySample], size: int, train: bool = False, degrade: float = 0.0,
                 seed: int = 0, zoom_min: float = 0.6, pairs: bool = False, deep_look: float = 0.0,
                 composite: float = 0.0):
        self.samples, self.size, self.zoom_min = samples, int(size), float(zoom_min)
        self.pairs, self.deep_look, self.composite = bool(pairs), float(deep_look), float(composite)
        self.transform = augmentation() if train else None
        self.degrade, self.train = float(degrade), train
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int):
        if index not in self._cache:
            pixels = read_image(self.samples[index].path, required=False).pixels
            native = to_uint8(pixels) if self.degrade else None
            fovea = fovea_of(pixels) if self.degrade else None
            vessels = None
            if self.deep_look and self.samples[index].vessel_mask is not None:
                vessels = read_mask(self.samples[index].vessel_mask)
                vessels = vessels if vessels.shape == pixels.shape else None
            self._cache[index] = (torch.from_numpy(to_work_image(pixels, self.size))[None], native, fovea, vessels)
        return self._cache[index]

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image, native, fovea, vessels = self._load(index)
        label = sample.label
        rng = self.rng if self.train else np.random.default_rng([index, 17])
        if self.train and self.pairs and native is not None:
            return self._pair(native, fovea, vessels, label, rng)
        degraded = bool(self.degrade) and rng.random() < self.degrade
        if self.train and native is not None:
            pixels, fovea_now = self._augmented(native, fovea, vessels, rng)
            if degraded:
                pixels, label, _ = _random_degradation(pixels, fovea_now, label, rng)
            image = torch.from_numpy(to_work_image(pixels, self.size))[None]
        elif degraded:
            pixels, label, _ = _random_degradation(native / np.float32(255), fovea, label, rng)
            image = torch.from_numpy(to_work_image(pixels, self.size))[None]
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _augmented(self, native, fovea, vessels, rng) -> tuple[np.ndarray, tuple[float, float] | None]:
        """A training image's look before any degradation: the deep-slab look (p = ``deep_look``), the
        zoom, a gamma of 0.7-1.4 and another device's look; with the fovea in the zoomed image."""
        source = native / np.float32(255)
        if vessels is not None and rng.random() < self.deep_look:
            source = remove_large_vessels(source, vessels, rng)
        pixels, fovea_now = _zoom(source, fovea, rng, self.zoom_min)
        return device_appearance(np.clip(pixels, 0, 1) ** np.float32(rng.uniform(0.7, 1.4)), rng), fovea_now

    def _pair(self, native, fovea, vessels, label: int, rng):
        """Two images of one source degraded by one kind at severities ``s1 < s2`` (``s1 = 0`` one time in
        three; with probability ``composite`` the source is first degraded by any kind, so that pairs also
        start from gradable and ungradable images), with their labels: ``(images (2, S, S), labels (2,))``, flipped/rotated alike. The ranking
        loss asks the grader to score the second no higher than the first."""
        from .degradations import KINDS, degrade, grade_for_severity

        pixels, fovea_now = self._augmented(native, fovea, vessels, rng)
        if rng.random() < self.composite:   # an already degraded source: degrading it further must not help
            pixels, label, first = _random_degradation(pixels, fovea_now, label, rng)
            fovea_now = fovea_now if first != "decentration" else None
        kind, seed = KINDS[rng.integers(len(KINDS))], int(rng.integers(2**31))
        low = 0.0 if rng.random() < 1 / 3 else float(rng.uniform(0, 0.8))
        high = min(1.0, low + float(rng.uniform(0.1, 0.6)))
        images, labels = [], []
        for severity in (low, high):
            degraded = degrade(pixels, kind, severity, seed, fovea_now) if severity > 0 else pixels
            images.append(torch.from_numpy(to_work_image(degraded, self.size)))
            labels.append(min(label, grade_for_severity(severity, label)))
        image = torch.stack(images)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(labels)


def _random_degradation(pixels: np.ndarray, fovea, label: int, rng) -> tuple[np.ndarray, int, str]:
    """``pixels`` degraded by a random kind at a random severity, the label that severity allows, the kind."""
    from .degradations import KINDS, degrade, grade_for_severity

    kind, severity = KINDS[rng.integers(len(KINDS))], float(rng.uniform(0, 1))
    pixels = degrade(pixels, kind, severity, int(rng.integers(2**31)), fovea)
    return pixels, min(label, grade_for_severity(severity, label)), kind


def device_appearance(pixels: np.ndarray, rng) -> np.ndarray:
    """Grade-preserving device/export variation of a training image: JPEG re-encoding (p = 0.5, quality
    25-95, as OCTAGON's TIFFs), a slightly lower lateral resolution (p = 0.3, down- and upsampled by up
    to 1.3x: less than the mildest blur grade) and a contrast stretch with saturation (p = 0.3)."""
    import io

    from PIL import Image

    height, width = pixels.shape
    out = np.clip(pixels, 0, 1).astype(np.float32)
    if rng.random() < 0.3:
        out = np.clip(out * np.float32(rng.uniform(0.8, 1.4)), 0, 1)
    if rng.random() < 0.5:
        from scipy import ndimage

        shape = float(rng.uniform(2.0, 8.0))
        speckle = ndimage.gaussian_filter(rng.gamma(shape, 1.0 / shape, out.shape).astype(np.float32),
                                          float(rng.uniform(0.4, 0.8)))
        out = np.clip(out * speckle / speckle.mean(), 0, 1)
    if rng.random() < 0.3:
        factor = rng.uniform(1.0, 1.3)
        small = Image.fromarray(out).resize((max(8, int(width / factor)), max(8, int(height / factor))), Image.BILINEAR)
        out = np.asarray(small.resize((width, height), Image.BILINEAR), np.float32)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        Image.fromarray(to_uint8(out)).save(
            buffer, format="JPEG", quality=int(rng.integers(25, 96)))
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), np.float32) / 255
    return np.clip(out, 0, 1).astype(np.float32)


def _noise_floor(image: np.ndarray, rng) -> np.ndarray:
    """Speckle noise (:func:`degradations.speckle_noise`) with a mean of 10-50 % of the image's mean intensity."""
    from .degradations import speckle_noise

    return (speckle_noise(rng, image.shape) * rng.uniform(0.1, 0.5) * float(image.mean())).astype(np.float32)


class FazWindowDataset(torch.utils.data.Dataset):
    """``(uint8 window (1, S, S), int64 mask (1, S, S))`` pairs of the FAZ U-Net's central window
    (:func:`.inference.faz_window`).

    In training the window is jittered (side x0.85-1.15, centre within +-12 % of the side: decentred
    foveae), flipped and rotated by multiples of 90 degrees, its contrast changed (gamma 0.6-1.6), a
    third of the images are mildly degraded (blur, motion, low signal at severities up to 0.4), and
    (p = 0.7) a speckle noise floor is laid over the whole window (real scans have no pure-black FAZ);
    with ``device_look`` (a probability) the window then gets another device's look at its own pixels
    (:func:`device_appearance`: JPEG re-encoding, as OCTAGON's TIFFs, speckle, resolution, contrast).
    """

    def __init__(self, samples: list[FazSample], size: int, window_mm: float | None, train: bool = False,
                 seed: int = 0, device_look: float = 0.0):
        self.samples, self.size, self.window_mm, self.train = samples, int(size), window_mm, train
        self.device_look = float(device_look)
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int):
        if index not in self._cache:
            sample = self.samples[index]
            image = read_image(sample.image, sample.field_of_view_mm, required=False)
            if image.field_of_view_mm is None and self.window_mm:
                raise InputError(f"{sample.image.name}: no field of view (give field_mm in labels.csv).")
            pixels = to_uint8(image.pixels)
            self._cache[index] = (pixels, read_mask(sample.mask), image.field_of_view_mm)
        return self._cache[index]

    def _box(self, shape, fov: float | None) -> tuple[int, int, int]:
        from .inference import window_box

        top, left, side = window_box(*shape, fov, self.window_mm)
        if not self.train:
            return top, left, side
        side = int(min(min(shape), max(16, round(side * self.rng.uniform(0.85, 1.15)))))
        centre = np.array([top, left]) + side / 2 + self.rng.uniform(-0.12, 0.12, 2) * side
        top, left = np.clip(np.round(centre - side / 2).astype(int), 0, np.array(shape) - side)
        return int(top), int(left), side

    def __getitem__(self, index: int):
        from PIL import Image

        from .degradations import degrade

        pixels, mask, fov = self._load(index)
        top, left, side = self._box(pixels.shape, fov)
        image = pixels[top:top + side, left:left + side].astype(np.float32) / 255
        window_mask = mask[top:top + side, left:left + side]
        if self.train:
            if self.rng.random() < 1 / 3:
                kind = ("blur", "motion", "low_signal")[self.rng.integers(3)]
                image = degrade(image, kind, float(self.rng.uniform(0, 0.4)), int(self.rng.integers(2**31)))
            image = np.clip(image, 0, 1) ** self.rng.uniform(0.6, 1.6)
            if self.rng.random() < 0.7:
                image = np.maximum(image, _noise_floor(image, self.rng))
            if self.rng.random() < self.device_look:
                image = device_appearance(image.astype(np.float32), self.rng)
            k, flip = int(self.rng.integers(4)), bool(self.rng.random() < 0.5)
            image, window_mask = np.rot90(image, k), np.rot90(window_mask, k)
            if flip:
                image, window_mask = image[:, ::-1], window_mask[:, ::-1]
        work = to_work_image(np.ascontiguousarray(image), self.size)
        target = Image.fromarray(np.ascontiguousarray(window_mask).astype(np.uint8) * 255)
        target = np.asarray(target.resize((self.size, self.size), Image.BILINEAR)) >= 128
        return torch.from_numpy(work)[None], torch.from_numpy(target.astype(np.int64))[None]


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

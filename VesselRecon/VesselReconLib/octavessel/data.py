"""Training and evaluation data of OCTAVessel: a rolling pool of OCTA phantoms, and ROSSA-style folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Scale an en face angiogram (any range) by its 1st / 99.5th percentiles to about [0, 1]."""
    a = np.asarray(image, np.float32)
    lo, hi = np.percentile(a, [1.0, 99.5])
    return np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.5).astype(np.float32)


@dataclass
class Sample:
    image: np.ndarray  # normalised float32 (H, W)
    vessel: np.ndarray  # bool (H, W)
    name: str = ""
    raw_path: Path | None = None


def render_phantom(seed: int, rng: np.random.Generator, sizes=(320,), field_mm=(2.5, 6.5),
                   randomize: bool = True) -> Sample:
    """One phantom: size drawn from ``sizes``, field uniform in ``field_mm``; ``randomize=False``
    switches the engine's acquisition/device domain randomisation off (the ablation)."""
    from ..phantoms.octa import render_octa

    size = int(rng.choice(sizes))
    field = float(rng.uniform(*field_mm))
    quality = None if rng.random() < 0.8 else int(rng.integers(1, 3))
    case = render_octa(int(seed), size, field, quality=quality, randomize=randomize)
    return Sample(normalize_image(case.image), case.vessel_mask.copy(), f"phantom{seed}")


class PhantomPool:
    """A pool of phantoms refreshed during training (one new phantom replaces a random one per call
    to :meth:`refresh`), so a run sees many more anatomies and appearances than it holds."""

    def __init__(self, size: int, seed: int, sizes=(320,), field_mm=(2.5, 6.5), randomize: bool = True):
        self.rng = np.random.default_rng([seed, 11])
        self.randomize = randomize
        self.next_seed = 1_000_000 + 10_000 * seed
        self.sizes, self.field_mm = sizes, field_mm
        self.items = [self._new() for _ in range(size)]

    def _new(self) -> Sample:
        self.next_seed += 1
        return render_phantom(self.next_seed, self.rng, self.sizes, self.field_mm, self.randomize)

    def refresh(self) -> None:
        self.items[int(self.rng.integers(len(self.items)))] = self._new()


def read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), np.float32) / 255.0


def load_folder(folder: str | Path, limit: int | None = None) -> list[Sample]:
    """A ROSSA-style split folder: ``image/<id>.png`` with ``label/<id>.png`` (0/255), sorted by id."""
    folder = Path(folder)
    images = sorted((folder / "image").glob("*.png"), key=lambda p: (len(p.stem), p.stem))
    if not images:
        from ..errors import InputError

        raise InputError(f"No images under {folder / 'image'} (expected the ROSSA layout image/ + label/).")
    out = []
    for path in images[:limit]:
        label = folder / "label" / path.name
        out.append(Sample(normalize_image(read_gray(path)), read_gray(label) > 0.5, path.stem))
    return out


def augment_crop(image: np.ndarray, vessel: np.ndarray, crop: int, rng: np.random.Generator,
                 intensity: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A random crop with flips/rotations and (optionally) a random intensity transform
    (gamma, contrast, offset, Gaussian noise), the label moved alike."""
    H, W = image.shape
    top, left = int(rng.integers(H - crop + 1)), int(rng.integers(W - crop + 1))
    img = image[top : top + crop, left : left + crop]
    lab = vessel[top : top + crop, left : left + crop]
    k = int(rng.integers(4))
    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    img = np.ascontiguousarray(img, np.float32)
    if intensity:
        img = augment_intensity(img, rng)
    return img.astype(np.float32), np.ascontiguousarray(lab, np.float32)


def augment_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma (exp U(-0.35, 0.35)), contrast (0.8-1.2), offset (+-0.08) and, in 30 % of the
    calls, Gaussian noise (sigma 0.01-0.08) on a normalised image."""
    image = np.clip(image, 0, None) ** float(np.exp(rng.uniform(-0.35, 0.35)))
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.01, 0.08), image.shape).astype(np.float32)
    return image.astype(np.float32)

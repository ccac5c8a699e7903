"""OCTADepth data: cases from an ``octa`` dataset folder (phantoms or real data in the same layout),
rendered on the fly, or real ROSSA images with vessel labels only; random crops with flips and
90-degree rotations for training, phantoms and real images mixed in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..octavessel.data import augment_intensity

if TYPE_CHECKING:  # torch is imported where batches are built, so the Slicer sample needs none
    import torch


@dataclass
class OCTASample:
    """One en face case: image, vessel mask, relative depth (0 on background) and geometry.

    :ivar centerlines: optional ``(N, 3)`` ground-truth centreline points in image-frame mm
        (x = column, y = row, z = depth below the slab top), for the 3D metrics.
    """

    image: np.ndarray
    vessel: np.ndarray
    depth: np.ndarray
    pixel_mm: float
    centerlines: np.ndarray | None = None
    name: str = ""
    depth_range_mm: float = 0.25
    has_depth: bool = True
    vessel_weight: np.ndarray | None = None
    """``None``: every pixel's vessel label counts; else 1 where it counts, 0 where it does not."""


def centerline_points(centerlines: dict, pixel_mm: float, z0: float = 0.0, step_px: float = 1.0) -> np.ndarray:
    """Densely sampled points of a phantom centreline graph in the reconstruction's image frame.

    The phantom puts pixel ``[j, i]``'s centre at ``((i + 0.5) p, (j + 0.5) p)``; the image frame puts
    it at ``(i p, j p)``, so x and y shift by half a pixel; z is measured from the slab top ``z0``.
    Edges are sampled every ``step_px`` pixels.
    """
    points = np.asarray(centerlines["points"], float)
    edges = np.asarray(centerlines["edges"], int).reshape(-1, 2)
    a, b = points[edges[:, 0]], points[edges[:, 1]]
    steps = np.maximum(1, np.ceil(np.linalg.norm((b - a)[:, :2], axis=1) / (step_px * pixel_mm)).astype(int))
    edge_of = np.repeat(np.arange(len(edges)), steps + 1)
    first = np.cumsum(steps + 1) - (steps + 1)
    t = (np.arange(len(edge_of)) - first[edge_of]) / steps[edge_of]
    sampled = a[edge_of] + (b - a)[edge_of] * t[:, None]
    sampled[:, :2] -= 0.5 * pixel_mm
    sampled[:, 2] -= z0
    return np.unique(np.round(sampled, 6), axis=0)


def render_samples(seeds, size_px: int = 304, field_mm: float = 3.0, depth_realism: bool = True,
                   distinct_beds: bool = False) -> list[OCTASample]:
    """Render phantom cases in memory (for tests, demos and on-the-fly evaluation); ``depth_realism``:
    the renderer's real-composite depth appearance; ``distinct_beds``: also the superficial twigs and the
    two capillary beds drawn as different structures (what OCTADepth trains on since round 4)."""
    from ..phantoms.octa import render_octa

    samples = []
    for seed in seeds:
        extra = {"svp_branches": True, "distinct_beds": True} if distinct_beds else {}
        case = render_octa(int(seed), size_px, field_mm, depth_realism=depth_realism, **extra)
        samples.append(OCTASample(case.image, case.vessel_mask, case.depth, case.pixel_mm,
                                  centerline_points(case.centerlines, case.pixel_mm, case.depth_range_mm[0]),
                                  f"seed{seed}",
                                  case.depth_range_mm[1] - case.depth_range_mm[0]))
    return samples


def augment(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip and 90-degree rotation applied to every array."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for array in arrays:
        array = np.rot90(array, k)
        out.append(np.ascontiguousarray(array[:, ::-1] if flip else array))
    return out


LARGE_VESSEL_CORE_PX = 1.5
"""Phantom vessels whose centre lies at least this far (px) from the background (about 3 px wide and
up) are the vessels an expert labels on real OCTA (ROSSA's labels: median width ~2.5 px, no capillaries)."""


def large_vessel_target(vessel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vessel target and label weight for a phantom, matched to real expert labels.

    Vessels about 3 px wide and up are 1, the background 0; thinner capillaries (labelled vessels in
    the phantom, left unlabelled in ROSSA) get weight 0, so the vessel head learns the real labels'
    notion of a vessel without being told that capillaries are background.
    """
    from scipy import ndimage

    core = ndimage.distance_transform_edt(vessel) >= LARGE_VESSEL_CORE_PX
    large = ndimage.binary_dilation(core, iterations=2) & vessel
    return large, ~(vessel & ~large)


def with_large_vessel_targets(samples: list[OCTASample]) -> list[OCTASample]:
    """Phantom samples whose vessel target is :func:`large_vessel_target` (depth labels unchanged)."""
    from dataclasses import replace

    out = []
    for sample in samples:
        large, weight = large_vessel_target(sample.vessel)
        out.append(replace(sample, vessel=large, vessel_weight=weight))
    return out


@dataclass
class Batch:
    """Training tensors ``(B, 1, H, W)`` and the per-sample depth flag ``(B,)``."""

    image: torch.Tensor
    vessel: torch.Tensor
    vessel_weight: torch.Tensor
    depth: torch.Tensor
    has_depth: torch.Tensor
    depth_support: torch.Tensor | None = None
    """1 where the true depth is known; ``None``: where ``depth > 0``."""

    def to(self, device) -> "Batch":
        return Batch(*(None if t is None else t.to(device) for t in (
            self.image, self.vessel, self.vessel_weight, self.depth, self.has_depth, self.depth_support)))


def fill_background_depth(depth: np.ndarray) -> np.ndarray:
    """Depth with every background pixel (0) set to the depth of the nearest pixel with a depth
    (unchanged when no pixel has one)."""
    from scipy import ndimage

    background = depth <= 0
    if background.all() or not background.any():
        return depth
    index = ndimage.distance_transform_edt(background, return_distances=False, return_indices=True)
    return depth[tuple(index)]


def augment_speckle(image: np.ndarray, rng: np.random.Generator, probability: float = 0.5) -> np.ndarray:
    """In ``probability`` of the crops, per-pixel multiplicative speckle (gamma noise of mean 1 with
    1.5-6 looks, no smoothing): the one-pixel grain of real slab composites, which the phantoms'
    smoothed speckle lacks (a network trained without it read a real composite's grain as background)."""
    if rng.random() >= probability:
        return image
    looks = rng.uniform(1.5, 6.0)
    return (image * rng.gamma(looks, 1.0 / looks, image.shape)).astype(np.float32)


#: ``augment_resolution``: ranges drawn per crop (blur sigma in px, down-sampling factor)
RESOLUTION_AUG = {"blur_px": (0.0, 1.0), "scale": (0.6, 1.0), "p_blur": 0.5, "p_scale": 0.3}


def augment_resolution(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Device resolution drawn from a range: in half of the crops a Gaussian blur (sigma 0-1 px), in
    30 % a down-sampling by 0.6-1.0 and back (bilinear). Real composites differ in sharpness and grain
    from the phantoms and from each other; the depth head must not depend on one of them."""
    from scipy import ndimage

    out = image
    if rng.random() < RESOLUTION_AUG["p_blur"]:
        out = ndimage.gaussian_filter(out, rng.uniform(*RESOLUTION_AUG["blur_px"]))
    if rng.random() < RESOLUTION_AUG["p_scale"]:
        factor = rng.uniform(*RESOLUTION_AUG["scale"])
        small = ndimage.zoom(out, factor, order=1)
        out = ndimage.zoom(small, np.divide(image.shape, small.shape), order=1)[:image.shape[0], :image.shape[1]]
    return np.asarray(out, np.float32)


def _crop(sample: OCTASample, crop: int, rng: np.random.Generator, train: bool,
          intensity: bool = False, fill_background: bool = False, speckle: bool = False,
          resolution: bool = False) -> list[np.ndarray]:
    height, width = sample.image.shape
    top, left = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
    window = (slice(top, top + crop), slice(left, left + crop))
    from .pipeline import normalize_image

    weight = np.ones(sample.image.shape, bool) if sample.vessel_weight is None else sample.vessel_weight
    arrays = [normalize_image(sample.image)[window], sample.vessel[window].astype(np.float32),
              weight[window].astype(np.float32), sample.depth[window].astype(np.float32)]
    if fill_background:
        arrays = [*arrays[:3], fill_background_depth(arrays[3]), (arrays[3] > 0).astype(np.float32)]
    if not train:
        return arrays
    arrays = augment(arrays, rng)
    if resolution:
        arrays[0] = augment_resolution(arrays[0], rng)
    if speckle:
        arrays[0] = augment_speckle(arrays[0], rng)
    if intensity:
        arrays[0] = augment_intensity(arrays[0], rng)
    return arrays


def mixed_crop_batch(groups: list[list[OCTASample]], counts: list[int], crop: int, rng: np.random.Generator,
                     train: bool = True, intensity: bool = False, fill_background: bool = False,
                     speckle: bool = False, resolution: bool = False) -> Batch:
    """``counts[i]`` random augmented crops from ``groups[i]`` (e.g. phantoms and real images);
    ``intensity``: also :func:`augment_intensity` on the training crops; ``fill_background``: the depth
    target on the background is :func:`fill_background_depth`'s (``depth_support`` marks the known depth)."""
    import torch

    crops, flags = [], []
    for samples, count in zip(groups, counts):
        for _ in range(count):
            sample = samples[int(rng.integers(len(samples)))]
            crops.append(_crop(sample, crop, rng, train, intensity, fill_background, speckle, resolution))
            flags.append(float(sample.has_depth))
    stacked = [torch.from_numpy(np.stack([c[k] for c in crops])[:, None]) for k in range(len(crops[0]))]
    return Batch(*stacked[:4], torch.tensor(flags, dtype=torch.float32), *stacked[4:])


def random_crop_batch(samples: list[OCTASample], batch: int, crop: int, rng: np.random.Generator,
                      train: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, vessel, depth)`` tensors ``(batch, 1, crop, crop)`` of random augmented crops."""
    mixed = mixed_crop_batch([samples], [batch], crop, rng, train)
    return mixed.image, mixed.vessel, mixed.depth


def _read_image(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    from PIL import Image

    return np.asarray(Image.open(path))


def load_dataset(data_dir: str | Path, limit: int | None = None) -> list[OCTASample]:
    """Read an ``octa`` dataset folder (``vesselrecon phantoms octa`` layout, or real data laid out alike).

    ``cases.json`` lists per case ``image``, ``vessels``, ``depth`` (16-bit PNG, value / 65535) and
    optionally ``centerlines`` (JSON graph in mm), with ``pixel_mm`` and ``depth_range_mm``.
    """
    import json

    root = Path(data_dir)
    index = root / "cases.json"
    if not index.is_file():
        raise InputError(f"{root} has no cases.json: write a dataset with `vesselrecon phantoms octa --out {root}` "
                         "or lay out real data the same way (images/, vessels/, depth/, cases.json).")
    records = json.loads(index.read_text(encoding="utf-8"))["cases"][:limit]
    samples = []
    for record in records:
        image = _read_image(root / record["image"]).astype(np.float32)
        image = image.mean(-1) if image.ndim == 3 else image
        vessel = _read_image(root / record["vessels"]) > 0
        depth_raw = _read_image(root / record["depth"])
        scale = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}.get(depth_raw.dtype, 1.0)
        depth = depth_raw.astype(np.float32) / scale
        z0, z1 = record.get("depth_range_mm", (0.0, 0.25))
        centerlines = None
        if record.get("centerlines") and (root / record["centerlines"]).is_file():
            graph = json.loads((root / record["centerlines"]).read_text(encoding="utf-8"))
            centerlines = centerline_points(graph, float(record["pixel_mm"]), z0)
        samples.append(OCTASample(image, vessel, depth, float(record["pixel_mm"]), centerlines,
                                  record.get("id", Path(record["image"]).stem), float(z1 - z0)))
    if not samples:
        raise InputError(f"{index} lists no cases.")
    return samples


ROSSA_TRAIN = ("train_manual", "train_sam")
ROSSA_SOURCE = ("ROSSA (GitHub nhjydywd/OCTA-FRNet, dataset/ROSSA at commit 53e87f8, MIT License, "
                "Copyright (c) 2023 Haojian Ning; arXiv 2309.09483)")


def shared_root() -> Path:
    """``../shared`` next to the repository (present on CI and the team machine, not on users')."""
    return Path(__file__).resolve().parents[3].parent / "shared"


def rossa_dir() -> Path:
    return shared_root() / "datasets" / "rossa"


def load_rossa(root: str | Path, splits=ROSSA_TRAIN, limit: int | None = None) -> list[OCTASample]:
    """ROSSA en face images with expert (or SAM-assisted) vessel labels; no depth label.

    ``root/<split>/image/<id>.png`` and ``root/<split>/label/<id>.png`` (0/255). The field of view
    is not stated; ``pixel_mm`` is set to 3 mm / width (it does not enter training).
    """
    from PIL import Image

    root = Path(root)
    samples = []
    for split_name in (splits,) if isinstance(splits, str) else splits:
        folder = root / split_name
        if not (folder / "image").is_dir():
            raise InputError(f"{folder} has no image/ folder: point --rossa at the ROSSA dataset root.")
        paths = sorted((folder / "image").glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
        for path in paths[:limit]:
            image = np.asarray(Image.open(path).convert("L"))
            label = np.asarray(Image.open(folder / "label" / path.name).convert("L")) > 127
            no_depth = np.broadcast_to(np.float32(0.0), image.shape)  # read-only, no memory
            samples.append(OCTASample(image, label, no_depth,
                                      3.0 / image.shape[1], None, f"{split_name}/{path.stem}", has_depth=False))
    if not samples:
        raise InputError(f"No ROSSA images found under {root} ({splits}).")
    return samples

"""OCTADepth data: cases from an ``octa`` dataset folder (phantoms or real data in the same layout),
or rendered on the fly; random crops with flips and 90-degree rotations for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .pipeline import normalize_image


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


def render_samples(seeds, size_px: int = 304, field_mm: float = 3.0) -> list[OCTASample]:
    """Render phantom cases in memory (for tests, demos and on-the-fly evaluation)."""
    from ..phantoms.octa import render_octa

    samples = []
    for seed in seeds:
        case = render_octa(int(seed), size_px, field_mm)
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


def random_crop_batch(samples: list[OCTASample], batch: int, crop: int, rng: np.random.Generator,
                      train: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, vessel, depth)`` tensors ``(batch, 1, crop, crop)`` of random augmented crops."""
    images, vessels, depths = [], [], []
    for _ in range(batch):
        sample = samples[int(rng.integers(len(samples)))]
        height, width = sample.image.shape
        top, left = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
        window = (slice(top, top + crop), slice(left, left + crop))
        arrays = [normalize_image(sample.image)[window], sample.vessel[window].astype(np.float32),
                  sample.depth[window].astype(np.float32)]
        if train:
            arrays = augment(arrays, rng)
        images.append(arrays[0])
        vessels.append(arrays[1])
        depths.append(arrays[2])
    as_tensor = lambda items: torch.from_numpy(np.stack(items)[:, None])  # noqa: E731
    return as_tensor(images), as_tensor(vessels), as_tensor(depths)


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
    records = json.loads(index.read_text())["cases"][:limit]
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
            graph = json.loads((root / record["centerlines"]).read_text())
            centerlines = centerline_points(graph, float(record["pixel_mm"]), z0)
        samples.append(OCTASample(image, vessel, depth, float(record["pixel_mm"]), centerlines,
                                  record.get("id", Path(record["image"]).stem), float(z1 - z0)))
    if not samples:
        raise InputError(f"{index} lists no cases.")
    return samples

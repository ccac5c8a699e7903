"""Real-data evaluation of OCTA vessel segmenters on a ROSSA-style split, next to classical baselines."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .data import Sample, load_folder, read_gray

log = logging.getLogger(__name__)


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """Classical baseline: intensity above Otsu's threshold."""
    from skimage.filters import threshold_otsu

    return image > threshold_otsu(image)


def frangi_mask(image: np.ndarray) -> np.ndarray:
    """Classical baseline: Frangi vesselness (bright ridges, sigmas 1-4 px) above Otsu's threshold."""
    from skimage.filters import frangi, threshold_otsu

    v = frangi(image, sigmas=(1.0, 1.5, 2.0, 3.0, 4.0), black_ridges=False)
    return v > threshold_otsu(v)


def predict_probability(net, image: np.ndarray) -> np.ndarray:
    """Vessel probability ``(H, W)`` of an OCTAVessel network for one normalised image."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
        return torch.sigmoid(net(x))[0, 0].numpy()


def octavessel_segmenter(model: str = "lite", threshold: float = 0.5) -> Callable[[Sample], np.ndarray]:
    from ..registry import load_model

    net, _ = load_model("octavessel", model)
    return lambda s: predict_probability(net, s.image) > threshold


def octadepth_segmenter(model: str = "lite", threshold: float = 0.5) -> Callable[[Sample], np.ndarray] | None:
    """OCTADepth's shipped vessel head (reads the raw 8-bit image), or None when it cannot load."""
    try:
        from ..octadepth.pipeline import predict
        from ..registry import load_model

        net, _ = load_model("octadepth", model)
    except Exception as exc:  # noqa: BLE001 - the row is optional
        log.warning("octadepth %s not available: %s", model, exc)
        return None
    return lambda s: predict(net, read_gray(s.raw_path))[0] > threshold if s.raw_path else None


def evaluate_rows(samples: list[Sample], rows: dict[str, Callable[[Sample], np.ndarray]]) -> dict[str, dict]:
    """Mean Dice, precision, recall and predicted vessel fraction per row."""
    from ..metrics import dice, precision, recall

    out = {}
    for name, fn in rows.items():
        d, p, r, f = [], [], [], []
        for s in samples:
            pred = fn(s)
            d.append(dice(pred, s.vessel))
            p.append(precision(pred, s.vessel))
            r.append(recall(pred, s.vessel))
            f.append(float(np.mean(pred)))
        out[name] = {"dice": float(np.mean(d)), "dice_sd": float(np.std(d)), "precision": float(np.mean(p)),
                     "recall": float(np.mean(r)), "vessel_fraction": float(np.mean(f)), "n": len(samples)}
    return out


def format_table(results: dict[str, dict], reference_fraction: float) -> str:
    lines = ["| method | Dice | precision | recall | vessel fraction |", "| --- | --- | --- | --- | --- |"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['dice']:.3f} ± {m['dice_sd']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"{m['vessel_fraction']:.3f} |")
    lines.append(f"| (expert labels) | | | | {reference_fraction:.3f} |")
    return "\n".join(lines)


def load_split(root: str | Path, split: str = "test", limit: int | None = None) -> list[Sample]:
    """A ROSSA split, each sample remembering its raw image path (for models with their own scaling)."""
    samples = load_folder(Path(root) / split, limit)
    for s in samples:
        s.raw_path = Path(root) / split / "image" / f"{s.name}.png"
    return samples


def error_overlay(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """RGB: true positives white, false positives red, false negatives blue, background black."""
    rgb = np.zeros(pred.shape + (3,), np.float32)
    rgb[pred & ref] = 1.0
    rgb[pred & ~ref] = (1.0, 0.2, 0.2)
    rgb[~pred & ref] = (0.2, 0.4, 1.0)
    return rgb


def save_transfer_figure(path: str | Path, samples: list[Sample], segment: Callable[[Sample], np.ndarray],
                         width_px: int = 900) -> Path:
    """One row per sample: angiogram | prediction | expert label | errors (white TP, red FP, blue FN)."""
    from PIL import Image

    rows = []
    for s in samples:
        pred = np.asarray(segment(s), bool)
        gray = lambda a: np.repeat(np.clip(np.asarray(a, np.float32), 0, 1)[..., None], 3, -1)  # noqa: E731
        tiles = [gray(s.image), gray(pred), gray(s.vessel), error_overlay(pred, s.vessel)]
        sep = np.ones((s.image.shape[0], 4, 3), np.float32)
        rows.append(np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], 1))
        rows.append(np.ones((4, rows[-1].shape[1], 3), np.float32))
    panel = np.concatenate(rows[:-1], 0)
    img = Image.fromarray((panel * 255).astype(np.uint8))
    if img.width > width_px:
        img = img.resize((width_px, round(img.height * width_px / img.width)), Image.LANCZOS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path

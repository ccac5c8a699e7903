"""Calibration of the quality grader on held-out real images (not the OCTAGON evaluation scans).

The calibration set is a folder of real OCTA images that training did not see (by default ROSSA
``val``: 100 images, MIT): each clean image (label: its source grade, outstanding) and its degradation
series (:mod:`.degradations`, every kind at the series severities 0.2..1, labelled by
:func:`.degradations.grade_for_severity`). Two things are fitted on it and folded into the linear
classification head, so the shipped weights carry them and nothing changes at inference:

- class offsets ``b`` (added to the logits; ``b_ungradable = 0``) chosen on a grid to maximise
  ``macro F1 + fraction of monotone series + fraction of series ending ungradable`` (the
  degradation-series test's two conditions, on the calibration images);
- a temperature ``T`` (logits divided by it) minimising the negative log-likelihood after the offsets.

With ``phantoms`` (a phantom *validation* set in the octa-quality layout, e.g. ``out/coips/val-r2``; never the
held-out set) the offsets maximise the ROSSA objective **plus** the phantom set's macro F1 (round 4: with
ROSSA alone, every fine-tuned grader traded the phantoms' outstanding class away), and the temperature
is kept at 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .degradations import KINDS, SERIES_SEVERITIES, grade_for_severity, series

OFFSET_GRID = np.round(np.arange(-3.0, 3.01, 0.25), 2)
TEMPERATURE_GRID = np.round(np.exp(np.linspace(np.log(0.5), np.log(4.0), 22)), 3)


@dataclass
class CalibrationSet:
    """Logits of the clean images and of their series: ``series_logits[i, k, s]`` (image, kind, severity)."""

    names: list[str]
    series_logits: np.ndarray          # (N, len(KINDS), len(SERIES_SEVERITIES), 3)
    source_grade: int = 2

    def labels(self) -> np.ndarray:
        grades = [grade_for_severity(s, self.source_grade) for s in SERIES_SEVERITIES]
        return np.broadcast_to(np.array(grades), self.series_logits.shape[:3])


def calibration_images(folder: str | Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """The images of ``folder`` (a ROSSA split: ``folder/image/*.png``, or a flat folder), normalised."""
    from ..enface_io import IMAGE_SUFFIXES, read_image

    folder = Path(folder)
    folder = folder / "image" if (folder / "image").is_dir() else folder
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    return {p.name: read_image(p, required=False).pixels for p in paths}


def collect_logits(model, images: dict[str, np.ndarray], device="cpu", seed: int = 3) -> CalibrationSet:
    """Raw logits of every image's degradation series (the same series as the real-scan test)."""
    from ..device import inference
    from ..enface_io import to_work_image
    from .data import fovea_of
    from .inference import resize

    device = torch.device(device)
    model = model.to(device).eval()
    out = np.zeros((len(images), len(KINDS), len(SERIES_SEVERITIES), 3), np.float32)
    for i, pixels in enumerate(images.values()):
        fovea = fovea_of(pixels)
        stack = [to_work_image(p, model.input_size) for kind in KINDS for p in series(pixels, kind, seed, fovea)]
        x = torch.from_numpy(np.stack(stack))[:, None].float().to(device) / 255.0
        with inference(device), torch.no_grad():
            logits = model(resize(x, model.input_size)).float().cpu().numpy()
        out[i] = logits.reshape(len(KINDS), len(SERIES_SEVERITIES), 3)
    return CalibrationSet(list(images), out)


def series_scores(grades: np.ndarray) -> tuple[float, float]:
    """Fractions of series ``(..., severity)`` that never rise and that end ungradable."""
    monotone = np.all(np.diff(grades, axis=-1) <= 0, axis=-1)
    return float(monotone.mean()), float((grades[..., -1] == 0).mean())


def _macro_f1(labels: np.ndarray, predicted: np.ndarray, n_classes: int = 3) -> float:
    scores = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (labels == c))
        denominator = np.sum(predicted == c) + np.sum(labels == c)
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def objective(calibration: CalibrationSet, offsets: np.ndarray) -> dict:
    """Macro F1 (every series image once, the clean image once per kind), monotone and worst-ungradable
    fractions of the calibration series under class ``offsets``."""
    grades = (calibration.series_logits + offsets).argmax(-1)
    labels = calibration.labels()
    monotone, worst = series_scores(grades)
    f1 = _macro_f1(labels.ravel(), grades.ravel())
    clean = np.bincount(grades[:, 0, 0], minlength=3)
    return {"macro_f1": f1, "monotone": monotone, "worst_ungradable": worst, "score": f1 + monotone + worst,
            "clean_grades": clean.tolist()}


def fit_offsets(calibration: CalibrationSet, phantom_labels=None, phantom_logits=None) -> tuple[np.ndarray, dict]:
    """Grid search of the gradable/outstanding offsets (ties: the smallest change); with phantom labels and
    logits their macro F1 is added to the objective (``result["phantom_macro_f1"]``)."""
    best = None
    for b1 in OFFSET_GRID:
        for b2 in OFFSET_GRID:
            offsets = np.array([0.0, b1, b2], np.float32)
            result = objective(calibration, offsets)
            total = result["score"]
            if phantom_labels is not None:
                result["phantom_macro_f1"] = _macro_f1(phantom_labels, (phantom_logits + offsets).argmax(1))
                total += result["phantom_macro_f1"]
            key = (round(total, 6), -abs(b1) - abs(b2))
            if best is None or key > best[0]:
                best = (key, offsets, result)
    return best[1], best[2]


def fit_temperature(calibration: CalibrationSet, offsets: np.ndarray) -> float:
    """The temperature minimising the NLL of ``(logits + offsets) / T`` (grid)."""
    logits = (calibration.series_logits + offsets).reshape(-1, 3)
    labels = calibration.labels().ravel()

    def nll(t):
        z = logits / t
        z = z - z.max(1, keepdims=True)
        return float(-(z[np.arange(len(z)), labels] - np.log(np.exp(z).sum(1))).mean())

    return float(min(TEMPERATURE_GRID, key=nll))


def fold_into_head(model, offsets: np.ndarray, temperature: float) -> None:
    """Fold ``logits' = (logits + offsets) / T`` into the linear head (its argmax is that of
    ``logits + offsets``)."""
    head = model.backbone.get_classifier()
    with torch.no_grad():
        head.bias.add_(torch.as_tensor(offsets, dtype=head.bias.dtype))
        head.weight.div_(temperature)
        head.bias.div_(temperature)


def phantom_logits(model, data: str | Path, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Labels and log-probabilities (logits up to a per-image constant) of a phantom set's images."""
    from .evaluation import quality_predictions

    labels, probabilities = quality_predictions(model.eval(), data, torch.device(device))
    return labels, np.log(np.clip(probabilities, 1e-12, 1.0))


def calibrate(model, folder: str | Path, device="cpu", limit: int | None = None,
              phantoms: str | Path | None = None) -> dict:
    """Fit offsets and temperature on ``folder``'s real images (and, with ``phantoms``, a phantom validation
    set's macro F1; temperature then 1) and fold them into ``model``'s head."""
    calibration = collect_logits(model, calibration_images(folder, limit), device)
    before = objective(calibration, np.zeros(3, np.float32))
    labels = logits = None
    if phantoms is not None:
        labels, logits = phantom_logits(model, phantoms, device)
        before["phantom_macro_f1"] = _macro_f1(labels, logits.argmax(1))
    offsets, after = fit_offsets(calibration, labels, logits)
    temperature = 1.0 if phantoms is not None else fit_temperature(calibration, offsets)
    fold_into_head(model, offsets, temperature)
    result = {"images": len(calibration.names), "folder": str(folder), "offsets": [float(o) for o in offsets],
              "temperature": temperature, "before": before, "after": after}
    if phantoms is not None:
        result["phantoms"] = str(phantoms)
    return result

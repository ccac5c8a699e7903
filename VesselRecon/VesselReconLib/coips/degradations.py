"""Image-quality degradations of en face OCTA images at a severity in ``[0, 1]`` (numpy only).

Used twice: to make the quality grader's training data (phantoms and real ROSSA images degraded on the
fly, labelled by :func:`grade_for_severity`) and for the degradation-series test on real scans
(``SERIES_SEVERITIES``: six levels per kind; the grade must never rise and the last must be ungradable).

Kinds (all sizes relative to the image width ``W``, so 3x3 and 6x6 mm scans degrade alike):

- ``blur``: defocus, Gaussian blur with sigma ``0.03 * W * s`` (4.8 px at 320 px and ``s = 0.5``:
  capillaries gone; strong enough to be seen at the grader's 128 px input);
- ``motion``: up to 6 horizontal motion bands: a dark band (signal lost while the eye moved) whose
  depth grows with ``s``, the strip below displaced sideways, a bright decorrelation line at its top;
- ``low_signal``: the flow signal fades into speckle noise (``(1 - 0.95 s)`` signal, noise ``1.2 s``),
  the picture of a weak OCT signal (cataract, small pupil) after the device's normalisation;
- ``decentration``: the fovea moves from the centre towards an edge by ``0.5 * W * s`` with no empty
  border: the content shifts and the uncovered side is filled by mirroring the periphery.

Severities below ``OUTSTANDING_BELOW`` keep the source's grade, up to ``UNGRADABLE_FROM`` are gradable,
beyond ungradable (the degradation-series levels 0, 0.2, ..., 1 sit 0.1 away from both thresholds).
"""

from __future__ import annotations

import numpy as np

KINDS = ("blur", "motion", "low_signal", "decentration")
SERIES_SEVERITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
OUTSTANDING_BELOW, UNGRADABLE_FROM = 0.1, 0.5
MAX_MOTION_BANDS = 6


def grade_for_severity(severity: float, source_grade: int = 2) -> int:
    """The quality label (0 ungradable, 1 gradable, 2 outstanding) of an image degraded at ``severity``."""
    if severity >= UNGRADABLE_FROM:
        return 0
    if severity >= OUTSTANDING_BELOW:
        return min(1, source_grade)
    return source_grade


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def blur(pixels: np.ndarray, severity: float, seed=0) -> np.ndarray:
    from scipy import ndimage

    sigma = 0.03 * pixels.shape[1] * severity
    return ndimage.gaussian_filter(pixels, sigma) if sigma > 0 else pixels.copy()


def motion(pixels: np.ndarray, severity: float, seed=0) -> np.ndarray:
    """Bands are placed by ``seed`` alone; ``severity`` adds bands and deepens them (monotone series)."""
    rng = _rng(seed)
    height, width = pixels.shape
    rows = rng.uniform(0.1, 0.9, MAX_MOTION_BANDS) * height
    heights = rng.uniform(0.02, 0.05, MAX_MOTION_BANDS) * height
    shifts = rng.choice([-1, 1], MAX_MOTION_BANDS) * rng.uniform(0.005, 0.02, MAX_MOTION_BANDS) * width
    out = pixels.copy()
    active = severity * MAX_MOTION_BANDS
    for index in range(MAX_MOTION_BANDS):
        weight = float(np.clip(active - index, 0.0, 1.0))
        if weight <= 0:
            break
        top = int(rows[index])
        bottom = min(height, top + max(2, int(heights[index] * (0.5 + severity))))
        shift = int(round(shifts[index] * (0.5 + severity)))
        out[top:] = np.roll(out[top:], shift, axis=1)
        depth = weight * min(0.95, 0.55 + 0.4 * severity)
        out[top:bottom] *= 1.0 - depth
        out[top:top + 1] = np.maximum(out[top:top + 1], weight * 0.8)
    return out


def speckle_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Mean-1 speckle of an OCTA noise floor: gamma noise (2 looks), slightly correlated (sigma 0.7 px)."""
    from scipy import ndimage

    speckle = ndimage.gaussian_filter(rng.gamma(2.0, 0.5, shape), 0.7)
    return speckle / speckle.mean()


def low_signal(pixels: np.ndarray, severity: float, seed=0) -> np.ndarray:
    if severity <= 0:
        return pixels.copy()
    rng = _rng(seed)
    noise = speckle_noise(rng, pixels.shape) * float(np.mean(pixels))
    signal = 1.0 - 0.95 * severity
    return np.clip(signal * pixels + severity * 1.2 * noise, 0.0, 1.0)


def decentration(pixels: np.ndarray, severity: float, seed=0, fovea_rc=None) -> np.ndarray:
    """Shift the content so that the fovea moves ``0.5 * W * severity`` from the centre towards an edge
    (direction from ``seed``), the uncovered side filled by mirroring (no black border)."""
    rng = _rng(seed)
    height, width = pixels.shape
    angle = rng.uniform(0, 2 * np.pi)
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    fovea = centre if fovea_rc is None else np.asarray(fovea_rc, float)
    target = centre + 0.5 * severity * np.array([height * np.sin(angle), width * np.cos(angle)])
    dy, dx = np.round(target - fovea).astype(int)
    dy, dx = int(np.clip(dy, -height + 1, height - 1)), int(np.clip(dx, -width + 1, width - 1))
    padded = np.pad(pixels, ((abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="symmetric")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[top:top + height, left:left + width].copy()


DEGRADATIONS = {"blur": blur, "motion": motion, "low_signal": low_signal, "decentration": decentration}


def degrade(pixels: np.ndarray, kind: str, severity: float, seed=0, fovea_rc=None) -> np.ndarray:
    """``pixels`` (float in ``[0, 1]``) degraded by ``kind`` at ``severity`` in ``[0, 1]`` (float32)."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"Unknown degradation {kind!r}; choose one of {', '.join(KINDS)}.")
    pixels = np.asarray(pixels, np.float32)
    if kind == "decentration":
        out = decentration(pixels, severity, seed, fovea_rc)
    else:
        out = DEGRADATIONS[kind](pixels, float(severity), seed)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def series(pixels: np.ndarray, kind: str, seed=0, fovea_rc=None) -> list[np.ndarray]:
    """The six-level degradation series of one image. Level 0 is the image itself, except for
    ``decentration``, whose levels are measured from the fovea: level 0 is the image shifted so that
    ``fovea_rc`` lies at the centre (the image itself when no fovea is given or it is centred)."""
    return [degrade(pixels, kind, s, seed, fovea_rc) for s in SERIES_SEVERITIES]

"""OCTADepth on real scans: vessel Dice on labelled real images (ROSSA) and depth validity on
superficial/deep slab pairs of the same eye (OCTAGON).

Depth validity (:func:`evaluate_pair`). A device exports the superficial and the deep slab of one
scan as two en face images. Their pixel-wise maximum is an en face angiogram of the whole inner
retina (what OCTADepth takes), and for each bright pixel of it the slab it came from says whether the
vessel there is superficial or deep. Steps:

1. register the deep slab to the superficial one by phase correlation of the two images blurred with
   a Gaussian (sigma 4 px, so the foveal avascular zone and large-vessel projection tails, which both
   slabs share, carry the match) and Hann-windowed; crop both to their overlap (the OCTAGON 3 mm pair
   is offset by about 40 x 13 px, the 6 mm pair by about 7 x 7 px);
2. composite ``C = max(S, D)`` of the slabs' intensities as exported (8-bit / 255; the device
   scales both slabs alike, so their intensities compare);
3. **vessel pixels**: ``C >= Otsu(C)``. **Deep-dominant**: vessel pixels with ``D >= 1.5 S``;
   **superficial-dominant**: vessel pixels with ``S >= 1.5 D``; pixels in between are left out;
4. AUC of the predicted relative depth (higher = deeper) for deep-dominant (positives) against
   superficial-dominant (negatives) pixels, beside the naive cue "dimmer is deeper" (score ``-C``)
   on the same pixels. AUC 0.5 is chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics
from ..errors import InputError
from .pipeline import predict

DEEP_TOKENS = ("prof", "deep", "dcp")
SUPERFICIAL_TOKENS = ("superficial", "superf", "svp", "scp")
REGISTRATION_SIGMA_PX = 4.0
DOMINANCE_RATIO = 1.5


@dataclass
class SlabPair:
    """A superficial and a deep slab of the same scan (intensities 0..1, same shape)."""

    name: str
    superficial: np.ndarray
    deep: np.ndarray


def _pair_key(name: str, tokens: tuple[str, ...]) -> str | None:
    lower = name.lower()
    for token in tokens:
        if token in lower:
            return lower.replace(token, "*", 1)
    return None


def find_pairs(folder: str | Path) -> list[SlabPair]:
    """Superficial/deep slab pairs in ``folder``, matched by file name (``...superf...``/``...prof...``,
    ``superficial``/``deep``, ``svp``/``dcp``)."""
    from ..enface_io import list_images, read_image

    files = list_images(folder)
    superficial = {_pair_key(p.stem, SUPERFICIAL_TOKENS): p for p in files if _pair_key(p.stem, SUPERFICIAL_TOKENS)}
    deep = {_pair_key(p.stem, DEEP_TOKENS): p for p in files if _pair_key(p.stem, DEEP_TOKENS)}
    pairs = []
    for key in sorted(set(superficial) & set(deep)):
        # the field of view does not enter this check; 3.0 only satisfies the reader
        s = read_image(superficial[key], 3.0).pixels
        d = read_image(deep[key], 3.0).pixels
        if s.shape != d.shape:
            raise InputError(f"{superficial[key].name} {s.shape} and {deep[key].name} {d.shape} differ in size.")
        pairs.append(SlabPair(key.replace("*", "").strip("_- ") or key, s, d))
    if not pairs:
        raise InputError(f"No superficial/deep slab pairs in {folder}: name them like "
                         "'<scan>_superficial.png' and '<scan>_deep.png' (or OCTAGON's 'superf'/'prof').")
    return pairs


def registration_shift(superficial: np.ndarray, deep: np.ndarray) -> tuple[int, int]:
    """Integer (row, column) shift that moves ``deep`` onto ``superficial`` (phase correlation of the
    blurred, Hann-windowed slabs)."""
    from scipy import ndimage
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation

    hann = window("hann", superficial.shape)
    prepared = []
    for image in (superficial, deep):
        blurred = ndimage.gaussian_filter(np.asarray(image, np.float64), REGISTRATION_SIGMA_PX)
        prepared.append((blurred - blurred.mean()) * hann)
    shift = phase_cross_correlation(prepared[0], prepared[1], normalization=None)[0]
    return int(round(shift[0])), int(round(shift[1]))


def overlap(superficial: np.ndarray, deep: np.ndarray, shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Both slabs cropped to their overlap once ``deep`` is moved by ``shift``."""
    height, width = superficial.shape
    dy, dx = shift
    s = superficial[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)]
    d = deep[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return s, d


def dominance_masks(superficial: np.ndarray, deep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite and the deep-dominant and superficial-dominant vessel pixels (module docstring, step 3)."""
    from skimage.filters import threshold_otsu

    composite = np.maximum(superficial, deep)
    vessel = composite >= threshold_otsu(composite)
    deep_dominant = vessel & (deep >= DOMINANCE_RATIO * superficial)
    superficial_dominant = vessel & (superficial >= DOMINANCE_RATIO * deep)
    return composite, deep_dominant, superficial_dominant


def auc(score: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` against ``negative`` pixels (ties count half)."""
    from scipy.stats import rankdata

    pos, neg = score[positive].ravel(), score[negative].ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = rankdata(np.r_[pos, neg])
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def prepare_pair(pair: SlabPair) -> dict:
    """Registration, composite and dominance masks of one pair."""
    shift = registration_shift(pair.superficial, pair.deep)
    s, d = overlap(pair.superficial, pair.deep, shift)
    composite, deep_dominant, superficial_dominant = dominance_masks(s, d)
    return {"name": pair.name, "shift": shift, "composite": composite, "deep": deep_dominant,
            "superficial": superficial_dominant}


def evaluate_pair(prepared: dict, nets: dict, device: str = "cpu") -> dict:
    """AUCs of each network's depth and of the naive cue on one prepared pair."""
    row = {"pair": prepared["name"], "shift_px": list(prepared["shift"]), "deep_px": int(prepared["deep"].sum()),
           "superficial_px": int(prepared["superficial"].sum()),
           "naive_dimmer_is_deeper": auc(-prepared["composite"], prepared["deep"], prepared["superficial"])}
    for name, net in nets.items():
        _, depth = predict(net, prepared["composite"], device)
        row[name] = auc(depth, prepared["deep"], prepared["superficial"])
    return row


def depth_pair_rows(folder: str | Path, nets: dict, device: str = "cpu") -> list[dict]:
    """One row per slab pair: shift, pixel counts, AUC per network and of the naive cue."""
    return [evaluate_pair(prepare_pair(pair), nets, device) for pair in find_pairs(folder)]


# ------------------------------------------------------------------ vessel Dice on labelled real images


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """Classical baseline: intensity above Otsu's threshold."""
    from skimage.filters import threshold_otsu

    from .pipeline import normalize_image

    normalized = normalize_image(image)
    return normalized >= threshold_otsu(normalized)


def vessel_dice_rows(samples: list, nets: dict, device: str = "cpu", threshold: float = 0.5) -> list[dict]:
    """Mean Dice (and vessel fraction) on labelled real images: each network, Frangi + Otsu, Otsu."""
    from .eval import frangi_mask

    methods = {name: (lambda s, net=net: predict(net, s.image, device)[0] > threshold) for name, net in nets.items()}
    methods["Frangi+Otsu (classical)"] = lambda s: frangi_mask(s.image, s.pixel_mm)
    methods["intensity > Otsu (classical)"] = lambda s: otsu_mask(s.image)
    rows = []
    for name, method in methods.items():
        masks = [method(s) for s in samples]
        rows.append({"method": name, "dice": float(np.mean([metrics.dice(m, s.vessel) for m, s in zip(masks, samples)])),
                     "vessel_fraction": float(np.mean([m.mean() for m in masks])),
                     "true_fraction": float(np.mean([s.vessel.mean() for s in samples]))})
    return rows


def format_rows(rows: list[dict], columns: list[str], first: str) -> str:
    """Plain-text table of ``rows``."""
    header = f"{first:32}" + "".join(f"{c[:22]:>24}" for c in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "-")
            cells.append(f"{value:24.4f}" if isinstance(value, float) else f"{str(value):>24}")
        lines.append(f"{str(row[first])[:32]:32}" + "".join(cells))
    return "\n".join(lines)

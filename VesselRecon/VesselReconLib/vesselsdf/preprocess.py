"""Bringing a CT into the model's domain: HU detection, liver ROI, liver-relative normalisation, checks.

The network never sees raw HU. It sees ``z = (v − m) / s`` where ``m`` and ``s`` are the median and
the robust standard deviation (1.4826 · MAD) of the CT *inside the liver ROI*, clipped to
``[−5, 10]`` and divided by 5, with everything outside the ROI set to −1
(:func:`normalise_ct`). The statistics come from the whole ROI, never from the crop or window the
network runs on, so the answer does not depend on the crop; and they make the input independent
of the display window, of uint8 conversion and of the contrast level: on real CT the portal-venous
vessels sit 1-3 parenchyma standard deviations above the parenchyma (3D-IRCADb-01 1.7: 120 vs 144
HU with s = 13 HU; LVSD uint8 slabs: 75 vs 170 with s = 38), whatever the units.

When no ROI is given, :func:`auto_liver_roi` finds one *classically* (no learning): for input that
is already liver-masked (a large share of voxels at the minimum value, like the LVSD slabs) the ROI
is the non-background part; otherwise the largest soft-tissue component (60-200 HU after
smoothing, 90-200 HU, separated from its neighbours by a 10 mm opening) on the patient's right side,
hole-filled per slice and closed (:func:`auto_liver_roi`; Dice 0.82 against the reference liver of
3D-IRCADb-01 1.7).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

Z_CLIP = (-5.0, 10.0)
Z_SCALE = 5.0
OUTSIDE = -1.0
"""Network input outside the ROI (= the lowest in-ROI value)."""
MIN_SLICES = 2
MIN_IN_PLANE = 16
HU_LIKE = {"liver": 110.0, "sigma": 20.0}
"""Windowed input is mapped so that its liver median is 110 HU and its robust SD 20 HU."""


@dataclass
class Canonical:
    """A CT mapped into the model's domain and what was done to get there."""

    hu: np.ndarray
    roi: np.ndarray
    roi_source: str
    median: float
    sigma: float
    windowed: bool
    notes: list[str] = field(default_factory=list)
    seen: np.ndarray | None = None
    """Release 5: with a given ROI, the automatic liver ROI whose statistics were used; the network
    also sees it (the given ROI only adds to what it sees and sets where the output is kept)."""

    def normalised(self) -> np.ndarray:
        return normalise_with(self.hu, self.roi, self.median_hu, self.sigma_hu)

    @property
    def median_hu(self) -> float:
        return HU_LIKE["liver"] if self.windowed else self.median

    @property
    def sigma_hu(self) -> float:
        return HU_LIKE["sigma"] if self.windowed else self.sigma


def looks_like_hu(volume: np.ndarray) -> bool:
    """False for windowed input: uint8, values within 0..255, or normalised (a span of at most 2)."""
    volume = np.asarray(volume)
    if volume.dtype in (np.uint8, np.bool_):
        return False
    low, high = float(np.min(volume)), float(np.max(volume))
    return not ((low >= 0.0 and high <= 255.0) or high - low <= 2.0)


def lacks_intercept(volume: np.ndarray) -> bool:
    """Stored CT values without the −1024 rescale intercept: all non-negative with a median above 500."""
    volume = np.asarray(volume)
    return float(np.min(volume)) >= 0.0 and float(np.median(volume)) > 500.0


def premasked_roi(volume: np.ndarray, share: float = 0.3) -> np.ndarray | None:
    """The non-background voxels of a volume already masked to an organ (≥ ``share`` at the minimum)."""
    volume = np.asarray(volume)
    low = volume.min()
    background = volume == low
    if background.mean() < share or background.all():
        return None
    return _fill_and_close(~background, 1)


def _fill_and_close(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy import ndimage

    structure = np.zeros((1, 2 * radius + 1, 2 * radius + 1), bool)
    structure[0] = _disk(radius)
    closed = ndimage.binary_closing(mask, structure, border_value=0) | mask
    return np.stack([ndimage.binary_fill_holes(s) for s in closed])


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def auto_liver_roi(hu: np.ndarray, ijk_to_ras: np.ndarray, tissue_hu: tuple[float, float] = (90.0, 200.0),
                   opening_mm: float = 10.0, cell_mm: float = 3.0) -> np.ndarray:
    """A classical liver mask of a HU CT (KJI): largest right-sided enhancing soft-tissue component.

    On a grid coarsened in-plane to about ``cell_mm``: smooth, keep ``tissue_hu`` (enhanced liver in
    the portal-venous phase), open with a ``opening_mm`` ball to cut the bridges to neighbouring
    organs, take the largest 3D component (components on the patient's left count 5x less: spleen,
    stomach), dilate back, fill holes (the vessels) and close per slice. On 3D-IRCADb-01 1.7
    (every 3rd slice) it overlaps the reference liver with Dice 0.82.
    """
    from scipy import ndimage

    hu = np.asarray(hu, np.float32)
    spacing = np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)
    f = max(1, int(round(cell_mm / spacing[0])))
    nk, nj, ni = hu.shape
    pj, pi = (-nj) % f, (-ni) % f
    padded = np.pad(hu, ((0, 0), (0, pj), (0, pi)), mode="edge")
    small = padded.reshape(nk, (nj + pj) // f, f, (ni + pi) // f, f).mean(axis=(2, 4))
    small = ndimage.gaussian_filter(small, (0.0, 1.0, 1.0))
    tissue = (small > tissue_hu[0]) & (small < tissue_hu[1])
    radius = max(1, int(round(opening_mm / (spacing[0] * f))))
    ball = np.zeros((3, 2 * radius + 1, 2 * radius + 1), bool)
    ball[1] = _disk(radius)
    ball[0] = ball[2] = np.pad(_disk(max(radius - 1, 1)), radius - max(radius - 1, 1))
    if nk < 3:
        ball = ball[1:2]
    opened = ndimage.binary_opening(tissue, ball)
    labels, count = ndimage.label(opened)
    if count == 0:
        return np.ones(hu.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    centres = ndimage.center_of_mass(opened, labels, range(1, count + 1))
    body_i = np.flatnonzero((small > -300).any(axis=(0, 1)))
    mid_i = 0.5 * (body_i[0] + body_i[-1]) if body_i.size else small.shape[2] / 2
    right_is_low_i = np.asarray(ijk_to_ras)[0, 0] < 0  # RAS x (towards the patient's right) falls with i
    scores = [size * (1.0 if (centre[2] < mid_i) == right_is_low_i else 0.2) for size, centre in zip(sizes, centres)]
    liver = ndimage.binary_dilation(labels == int(np.argmax(scores)) + 1, ball) & (small > tissue_hu[0])
    liver = np.stack([ndimage.binary_fill_holes(ndimage.binary_closing(s, _disk(radius)) | s) for s in liver])
    full = np.repeat(np.repeat(liver, f, axis=1), f, axis=2)
    return full[:, :nj, :ni]


TRIM_SIGMAS = 3.0
"""Statistics of the ROI keep the voxels within this many robust SDs of the median (iterated)."""


def roi_statistics(volume: np.ndarray, roi: np.ndarray, trim: float = TRIM_SIGMAS, iterations: int = 3
                   ) -> tuple[float, float]:
    """Median and robust SD (1.4826 · MAD) of the liver parenchyma inside the ROI.

    Two things make them depend less on how tightly the ROI outlines the liver:

    * **dequantised**: integer CT (HU, uint8) gets a fixed uniform dither of ±0.5 before the median,
      otherwise the MAD is an integer and the SD jumps in steps of 1.48 HU (≈ 10 % of a liver's SD:
      3D-IRCADb 1.7 gives 13.3 HU inside the reference liver and 14.8 HU inside the automatic ROI);
    * **trimmed**: voxels more than ``trim`` SDs from the median (neighbouring organs, fat, bone in a
      loose ROI) are dropped and the statistics recomputed, ``iterations`` times. On a liver-only
      phantom this changes the SD by 1-5 % (a Gaussian trimmed at 3 SD: < 1 %).
    """
    values = np.asarray(volume, np.float32)[roi]
    if values.size < 32:
        values = np.asarray(volume, np.float32).ravel()
    values = values.astype(np.float64)
    if np.array_equal(values, np.round(values)):
        values = values + (np.random.default_rng(0).random(values.size) - 0.5)
    median = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - median)))
    for _ in range(iterations if trim else 0):
        kept = values[np.abs(values - median) <= trim * sigma]
        if kept.size < 32 or sigma <= 0:
            break
        median = float(np.median(kept))
        sigma = 1.4826 * float(np.median(np.abs(kept - median)))
    return median, max(sigma, 1e-3 * max(abs(median), 1.0), 1e-6)


def normalise_with(volume: np.ndarray, roi: np.ndarray | None, median: float, sigma: float) -> np.ndarray:
    """``clip((v − median) / sigma, −5, 10) / 5`` inside the ROI, −1 outside (float32)."""
    z = np.clip((np.asarray(volume, np.float32) - median) / sigma, *Z_CLIP) / Z_SCALE
    if roi is not None:
        z = np.where(roi, z, OUTSIDE)
    return z.astype(np.float32)


def normalise_ct(volume: np.ndarray, roi: np.ndarray | None = None) -> np.ndarray:
    """Liver-relative normalisation with the statistics of the whole ROI (module docs)."""
    roi = None if roi is None else np.asarray(roi).astype(bool)
    median, sigma = roi_statistics(volume, roi if roi is not None else np.ones(np.shape(volume), bool))
    return normalise_with(volume, roi, median, sigma)


def check_shape(shape) -> None:
    """Refuse volumes too thin to reconstruct in 3D."""
    if len(shape) != 3 or shape[0] < MIN_SLICES:
        raise InputError(f"The CT has {shape[0] if len(shape) == 3 else 'no'} slice(s): VesselSDF reconstructs "
                         f"between slices and needs at least {MIN_SLICES}. Load the whole series.")
    if min(shape[1:]) < MIN_IN_PLANE:
        raise InputError(f"The CT slices are {shape[1]}x{shape[2]} pixels: too small to find vessels "
                         f"(at least {MIN_IN_PLANE}x{MIN_IN_PLANE}).")


def spacing_warnings(spacing, shape) -> list[str]:
    """Messages for implausible CT voxel spacings (x, y, z in mm)."""
    dx, dy, dz = (float(s) for s in spacing)
    notes = []
    if not (0.3 <= dx <= 1.5 and 0.3 <= dy <= 1.5):
        notes.append(f"in-plane spacing {dx:.3g} x {dy:.3g} mm is unusual for abdominal CT (0.3-1.5 mm)")
    if not 0.5 <= dz <= 10.0:
        notes.append(f"slice spacing {dz:.3g} mm is unusual for CT (0.5-10 mm)")
    if abs(dx - 1) < 1e-6 and abs(dy - 1) < 1e-6 and abs(dz - 1) < 1e-6 and shape[1] >= 256:
        notes.append("spacing is exactly 1 x 1 x 1 mm on a large slice: the file probably has no spacing "
                     "in its header; set the real spacing (distances and meshes are scaled by it)")
    return notes


def canonicalise(volume: np.ndarray, ijk_to_ras: np.ndarray, roi: np.ndarray | None = None) -> Canonical:
    """Detect windowed input, find the ROI, measure the liver statistics, check spacing.

    :param volume: CT ``[k, j, i]``: HU, or windowed/uint8 intensities.
    :param roi: liver/organ mask; found by :func:`auto_liver_roi` (or the pre-masked area) when None.
    :returns: a :class:`Canonical` whose ``hu`` is HU (or HU-like for windowed input: liver median
        mapped to 110 HU, robust SD to 20 HU) and whose ``notes`` say what was assumed.
    """
    volume = np.asarray(volume)
    check_shape(volume.shape)
    if not np.isfinite(volume).all():
        raise InputError("The CT contains NaN or infinite values.")
    spacing = np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)
    notes = spacing_warnings(spacing, volume.shape)
    windowed = not looks_like_hu(volume)
    if not windowed and lacks_intercept(volume):
        volume = np.asarray(volume, np.float32) - 1024.0
        notes.append("values are all positive with a median above 500: assumed stored values without the "
                     "-1024 HU rescale intercept, subtracted 1024")
    source, seen = "given", None
    if roi is None and windowed:
        roi, source = premasked_roi(volume), "pre-masked input"
        if roi is None:
            roi, source = np.ones(volume.shape, bool), "whole image"
        check_windowed_roi(roi, spacing, source)
    elif roi is None:
        roi, source = auto_liver_roi(volume, ijk_to_ras), "automatic (classical)"
        notes.extend(auto_roi_notes(roi, spacing))
    roi = np.asarray(roi).astype(bool)
    if source == "given" and not windowed:
        seen = statistics_roi(volume, ijk_to_ras, roi, notes)
    median, sigma = roi_statistics(volume, roi if seen is None else seen)
    hu = np.asarray(volume, np.float32)
    if windowed:
        hu = HU_LIKE["liver"] + (hu - median) * (HU_LIKE["sigma"] / sigma)
        notes.append(f"input is not in HU (range {float(volume.min()):.4g}..{float(volume.max()):.4g}, "
                     f"{volume.dtype}): treated as windowed; liver median {median:.4g} -> {HU_LIKE['liver']:.0f} HU")
    for note in notes:
        log.warning(note)
    return Canonical(hu=hu, roi=roi, roi_source=source, median=median, sigma=sigma, windowed=windowed, notes=notes,
                     seen=seen)


LIVER_LITRES = (0.5, 4.0)
"""An automatic liver ROI outside this volume (L; a liver is typically 1-3 L) is reported as implausible."""


def roi_cm3(roi: np.ndarray, spacing) -> float:
    """Volume (cm³) of a KJI mask with voxel ``spacing`` (mm)."""
    return float(np.count_nonzero(roi)) * float(np.prod(spacing)) / 1000.0


REGION_NAMES = {"pre-masked input": "non-background part", "whole image": "whole image"}


def check_windowed_roi(roi: np.ndarray, spacing, source: str) -> None:
    """Refuse windowed input whose pre-masked part (or whole image) is larger than a liver: it is not liver-masked,
    and the automatic liver ROI needs HU, so the output would fill the body (round 9: a windowed IRCADb, 17.6 L)."""
    litres = roi_cm3(roi, spacing) / 1000.0
    if litres > LIVER_LITRES[1]:
        raise InputError(f"The CT is windowed (not in HU) and not liver-masked: its {REGION_NAMES[source]} is {litres:.1f} L, "
                         f"more than a liver (at most {LIVER_LITRES[1]:g} L), and the liver cannot be found in windowed "
                         "values. Give a liver mask (--roi, or the module's ROI mask) or the CT in Hounsfield units.")


def auto_roi_notes(roi: np.ndarray, spacing) -> list[str]:
    """Warnings for an automatic liver ROI: always its source and volume (the output is kept inside it,
    and it can hold the vessels and organs next to the liver); and when it is empty, the whole image or
    of an implausible volume for a liver (:data:`LIVER_LITRES`)."""
    roi = np.asarray(roi, bool)
    litres = roi_cm3(roi, spacing) / 1000.0
    if not roi.any() or roi.all():
        return ["no liver ROI given and none found automatically (no enhancing soft tissue on the patient's "
                "right): the whole image is used and the output is not confined to a liver; give a liver mask (--roi)"]
    notes = [f"no liver ROI given: the output is kept inside the automatic (classical) liver ROI of "
             f"{1000 * litres:.0f} cm³, which can include vessels and organs next to the liver; give a liver mask "
             "(--roi) to keep the liver only"]
    if not LIVER_LITRES[0] <= litres <= LIVER_LITRES[1]:
        notes.append(f"the automatic liver ROI is {litres:.2g} L, implausible for a liver (typically 1-3 L): it "
                     "probably missed the liver or took in other organs; check it or give a liver mask (--roi)")
    return notes


REFERENCE_OUTSIDE_SHARE = 0.1
"""A reference with more than this share of its voxels outside the ROI gets a warning (they can only be missed)."""


def reference_outside_note(reference: np.ndarray, roi: np.ndarray, spacing) -> str | None:
    """A warning when much of a reference lies outside the ROI (the output is background there), else None."""
    reference = np.asarray(reference) > 0
    outside = reference & ~np.asarray(roi, bool)
    share = np.count_nonzero(outside) / max(1, np.count_nonzero(reference))
    if share <= REFERENCE_OUTSIDE_SHARE:
        return None
    return (f"{100 * share:.0f} % of the reference ({roi_cm3(outside, spacing):.0f} cm³) lies outside the liver ROI, "
            "where the output is background: the scores count it as missed; to score the liver only, mask the "
            "reference with the liver ROI")


MIN_AUTO_COVER = 0.5
"""A given ROI keeps its own statistics when the automatic liver ROI covers less than this share of it."""


def statistics_roi(volume: np.ndarray, ijk_to_ras: np.ndarray, roi: np.ndarray, notes: list[str]
                   ) -> np.ndarray | None:
    """The automatic liver ROI, whose statistics a given ROI uses (release 5), or None.

    The liver statistics set the network's sensitivity (``z = (v − m)/s``). Taken from the given ROI,
    they depend on how tightly it was drawn (3D-IRCADb-01 1.7: robust SD 12.3 HU inside the reference
    liver, 13.2 HU inside the automatic ROI), so adding a ROI changed the answer *inside* the liver.
    Taking them from the automatic ROI, which depends on the image only, makes the given ROI change
    only where the output is kept (and add what the automatic ROI missed to what the network sees).
    When the automatic ROI covers less than :data:`MIN_AUTO_COVER` of the given ROI (it did not find
    this organ: no contrast, another organ), the given ROI's own statistics are used.
    """
    auto = auto_liver_roi(volume, ijk_to_ras)
    cover = float((auto & roi).sum()) / max(int(roi.sum()), 1)
    if cover < MIN_AUTO_COVER or auto.all():
        why = ("no liver was found automatically (the automatic ROI is the whole image)" if auto.all() else
               f"the automatic liver ROI covers {100 * cover:.0f} % of the given ROI")
        notes.append(f"{why}: liver statistics from the given ROI")
        return None
    return auto

"""FAZ quantification, mask post-processing and the classical segmentation baseline (numpy only).

Area follows the paper: ``S = N_mask * a**2 / z**2`` mm^2 with ``a`` the scan width in mm and ``z``
the image width in pixels, i.e. square pixels of ``a / z`` mm (also for non-square images). Perimeter (Crofton estimate,
within ~1 % of the true length for digital disks and ellipses, where the chain-code estimate is 4-5 %
long) and axis lengths come from :func:`skimage.measure.regionprops`.
"""

from __future__ import annotations

import math

import numpy as np

FAZ_METRIC_UNITS = {"faz_area_mm2": "mm2", "faz_perimeter_mm": "mm", "faz_circularity": "",
                    "faz_acircularity_index": "", "faz_axis_ratio": "", "faz_pixels": "px"}
# A FAZ outside these is flagged as implausible and kept out of study summaries.
PLAUSIBLE_FAZ_AREA_MM2 = (0.05, 1.5)
MAX_FAZ_AXIS_RATIO = 3.0
MIN_FAZ_CIRCULARITY = 0.3
# COIPS is made for square macular 3x3 and 6x6 mm scans; others are reported as unsuitable.
SUITABLE_FOV_MM = (2.5, 6.5)
MAX_ASPECT_RATIO = 1.1


def faz_metrics(mask: np.ndarray, field_of_view_mm: float, image_width: int | None = None) -> dict[str, float]:
    """Area (mm^2), perimeter (mm), circularity 4*pi*A/P^2, acircularity index P/(2*sqrt(pi*A))
    and major/minor axis ratio of a binary FAZ mask; NaN shape metrics for an empty mask.

    :param mask: 2D boolean mask (the FAZ), or a crop of it.
    :param field_of_view_mm: scan width ``a`` in mm (3 or 6 for OCTA-25K).
    :param image_width: the whole image's width ``z`` when ``mask`` is a crop (default: its own width).
    """
    from skimage.measure import perimeter_crofton

    mask = np.asarray(mask, dtype=bool)
    width = int(image_width or mask.shape[1])
    pixel_mm = field_of_view_mm / width
    count = int(mask.sum())
    area = count * field_of_view_mm ** 2 / width ** 2
    result = {"faz_area_mm2": area, "faz_perimeter_mm": math.nan, "faz_circularity": math.nan,
              "faz_acircularity_index": math.nan, "faz_axis_ratio": math.nan, "faz_pixels": float(count)}
    if count == 0:
        return result
    crop = bounding_crop(mask)
    perimeter = float(perimeter_crofton(crop, 4)) * pixel_mm
    major, minor = axis_lengths(crop)
    result["faz_perimeter_mm"] = perimeter
    if perimeter > 0:
        result["faz_circularity"] = 4 * math.pi * area / perimeter ** 2
        result["faz_acircularity_index"] = perimeter / (2 * math.sqrt(math.pi * area))
    if minor > 0:
        result["faz_axis_ratio"] = major / minor
    return result


def axis_lengths(mask: np.ndarray) -> tuple[float, float]:
    """Major and minor axis lengths (px) of a non-empty binary mask: ``4 sqrt(eigenvalue)`` of its inertia
    tensor, as :func:`skimage.measure.regionprops` (``axis_major_length``/``axis_minor_length``) computes
    them, from the pixel coordinates' second central moments (no third-order moments, no einsum)."""
    rows, cols = np.nonzero(mask)
    rows = rows - rows.mean()
    cols = cols - cols.mean()
    mu20, mu02, mu11 = float(np.dot(rows, rows)), float(np.dot(cols, cols)), float(np.dot(rows, cols))
    count = rows.size
    tensor = np.array([[mu02, -mu11], [-mu11, mu20]]) / count
    eigenvalues = np.clip(np.linalg.eigvalsh(tensor), 0, None)
    return 4 * math.sqrt(eigenvalues[1]), 4 * math.sqrt(eigenvalues[0])


def unsuitable_reason(height: int, width: int, field_of_view_mm: float | None) -> str:
    """Why an image cannot be graded and segmented by COIPS ("" when it can): non-square or wide-field."""
    ratio = max(height, width) / max(min(height, width), 1)
    if ratio > MAX_ASPECT_RATIO:
        return (f"unsuitable: non-square image ({width}x{height} px, aspect ratio {ratio:.2f}); COIPS needs a square "
                "3x3 or 6x6 mm macular OCTA scan")
    if field_of_view_mm is not None and not SUITABLE_FOV_MM[0] <= field_of_view_mm <= SUITABLE_FOV_MM[1]:
        kind = "wide-field" if field_of_view_mm > SUITABLE_FOV_MM[1] else "narrow-field"
        return (f"unsuitable: {kind} scan ({field_of_view_mm:g} mm); COIPS is made for 3x3 and 6x6 mm "
                "macular OCTA scans")
    return ""


def faz_flags(metrics: dict) -> list[str]:
    """Reasons a measured FAZ is implausible: area outside 0.05-1.5 mm^2, axis ratio above 3, circularity
    below 0.3 (empty list: plausible; an empty mask is flagged too)."""
    area = metrics.get("faz_area_mm2", math.nan)
    ratio, circularity = metrics.get("faz_axis_ratio", math.nan), metrics.get("faz_circularity", math.nan)
    flags = []
    if not metrics.get("faz_pixels"):
        return ["no FAZ found"]
    low, high = PLAUSIBLE_FAZ_AREA_MM2
    if not low <= area <= high:
        flags.append(f"area {area:.3f} mm2 outside {low:g}-{high:g}")
    if ratio > MAX_FAZ_AXIS_RATIO:
        flags.append(f"axis ratio {ratio:.1f} > {MAX_FAZ_AXIS_RATIO:g}")
    if circularity < MIN_FAZ_CIRCULARITY:
        flags.append(f"circularity {circularity:.2f} < {MIN_FAZ_CIRCULARITY:g}")
    return flags


def select_faz(mask: np.ndarray, field_of_view_mm: float | None = None) -> np.ndarray:
    """The FAZ among a network's components: the one at, or nearest to, the image centre (the fovea).

    Rule (neither the paper nor its code keeps only the largest component): rank the 8-connected
    components by the distance from the image centre to their nearest pixel (0 when they hold it) and keep
    the first whose shape is plausible (:func:`faz_flags`) among those within a quarter of the image width
    of the centre; when none is plausible, the nearest one (then flagged by the caller). Holes are filled.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    any_rows, any_cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if any_rows.size == 0:
        return mask
    top, left = int(any_rows[0]), int(any_cols[0])
    region = (slice(top, int(any_rows[-1]) + 1), slice(left, int(any_cols[-1]) + 1))
    labels, count = ndimage.label(mask[region], structure=np.ones((3, 3)))
    out = np.zeros_like(mask)
    if count == 1:                                   # one component: kept whatever its shape
        out[region] = ndimage.binary_fill_holes(labels > 0)
        return out
    boxes = ndimage.find_objects(labels)
    cy, cx = (np.asarray(mask.shape) - 1) / 2.0 - np.array([top, left])
    rows, cols = np.nonzero(labels)
    distance = np.hypot(rows - cy, cols - cx)
    nearest = ndimage.minimum(distance, labels[rows, cols], index=np.arange(1, count + 1))
    order = np.argsort(nearest, kind="stable") + 1
    chosen = order[0]
    if field_of_view_mm is not None:
        for label in order:
            if nearest[label - 1] > 0.25 * mask.shape[1]:
                break
            box = boxes[label - 1]
            if not faz_flags(faz_metrics(ndimage.binary_fill_holes(labels[box] == label), field_of_view_mm,
                                         mask.shape[1])):
                chosen = label
                break
    box = boxes[chosen - 1]
    out[region][box] = ndimage.binary_fill_holes(labels[box] == chosen)
    return out


# Boundary refinement (an ablation, not the default: selected on a phantom validation set, out/coips/val-r2,
# where it helps; on the real OCTAGON scans it hurts, see the module README).
REFINE_BAND_MM, REFINE_SIGMA_MM, REFINE_LEVEL = 0.06, 0.01, 0.4


def refine_faz(mask: np.ndarray, pixels: np.ndarray, pixel_mm: float, band_mm: float = REFINE_BAND_MM,
               sigma_mm: float = REFINE_SIGMA_MM, level: float = REFINE_LEVEL) -> np.ndarray:
    """Boundary refinement of a FAZ mask at the image's own resolution.

    The U-Net sees a resampled window; its boundary is redrawn on the image's pixels: smooth with
    ``sigma_mm``, take the median inside the mask eroded by ``band_mm`` (the FAZ floor) and in the
    ring out to ``2 * band_mm`` beyond it (the capillaries around it), and within ``band_mm`` of the
    boundary keep the pixels darker than ``level`` of the way from the floor to the ring. The result
    is the part connected to the eroded core, holes filled. ``mask`` and ``pixels`` have one shape (the
    whole image or any crop of it); ``pixel_mm`` is the pixel size. Masks too thin for a core are kept.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return mask
    radius = max(1, int(round(band_mm / pixel_mm)))
    sigma = sigma_mm / pixel_mm
    pad = 2 * radius + int(np.ceil(3 * sigma)) + 2
    top, left = max(0, rows.min() - pad), max(0, cols.min() - pad)
    bottom, right = min(mask.shape[0], rows.max() + pad + 1), min(mask.shape[1], cols.max() + pad + 1)
    crop = mask[top:bottom, left:right]
    smooth = ndimage.gaussian_filter(np.asarray(pixels[top:bottom, left:right], np.float32), sigma)
    cross = ndimage.generate_binary_structure(2, 1)
    core = ndimage.binary_erosion(crop, cross, radius)
    near = ndimage.binary_dilation(crop, cross, radius)
    ring = ndimage.binary_dilation(crop, cross, 2 * radius) & ~crop
    if not core.any() or not ring.any():
        return mask
    floor, around = float(np.median(smooth[core])), float(np.median(smooth[ring]))
    redrawn = core | (near & (smooth < floor + level * (around - floor)))
    labels, _ = ndimage.label(redrawn)
    kept = np.isin(labels, np.unique(labels[core]))
    out = mask.copy()
    out[top:bottom, left:right] = ndimage.binary_fill_holes(kept & (labels > 0))
    return out


# Round-7 ablation (not the default): chosen on val-r2 among band widths 1 / 2 / 4 logits and smoothing 0 /
# 0.01 mm, vetoed on the real scans (module README, "Round 7 status").
BAND_DELTA, BAND_RING_MM = 2.0, 0.1


def redecide_uncertain_band(margin: np.ndarray, pixels: np.ndarray, pixel_mm: float, delta: float = BAND_DELTA,
                            ring_mm: float = BAND_RING_MM) -> np.ndarray:
    """A FAZ mask from the U-Net's margin map (FAZ minus background logit) whose uncertain band is decided
    by the image itself, at its own resolution.

    Pixels with ``|margin| < delta`` are FAZ when darker than the midpoint between the median intensity
    of the confident FAZ (``margin >= delta``) and that of the confident background within ``ring_mm``
    outside the band; the part connected (4-connectivity) to the confident FAZ is kept, holes filled.
    Without a confident FAZ or background it is ``margin > 0``. ``margin`` and ``pixels`` share one shape.
    """
    from scipy import ndimage

    margin = np.asarray(margin, np.float32)
    near = margin > -delta
    rows, cols = np.nonzero(near)
    core = margin >= delta
    if not core.any():
        return margin > 0
    pad = int(np.ceil(ring_mm / pixel_mm)) + 1
    top, left = max(0, rows.min() - pad), max(0, cols.min() - pad)
    crop = (slice(top, min(margin.shape[0], rows.max() + pad + 1)),
            slice(left, min(margin.shape[1], cols.max() + pad + 1)))
    near, core, values = near[crop], core[crop], np.asarray(pixels, np.float32)[crop]
    outside = ~near & (ndimage.distance_transform_edt(~near) * pixel_mm <= ring_mm)
    if not outside.any():
        return margin > 0
    level = 0.5 * (float(np.median(values[core])) + float(np.median(values[outside])))
    labels, _ = ndimage.label(core | (near & ~core & (values < level)))
    out = np.zeros(margin.shape, bool)
    out[crop] = ndimage.binary_fill_holes(np.isin(labels, np.unique(labels[core])) & (labels > 0))
    return out


def open_faz(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Morphological opening of a FAZ mask by a disk of ``fraction`` times its equivalent radius
    ``sqrt(area / pi)`` (removes protrusions narrower than the disk); the component holding the most of
    the original is kept, holes filled. A mask the opening would empty is returned unchanged."""
    from scipy import ndimage
    from skimage.morphology import disk

    mask = np.asarray(mask, dtype=bool)
    radius = int(round(fraction * math.sqrt(mask.sum() / math.pi)))
    if radius < 1:
        return mask
    rows, cols = np.nonzero(mask)
    pad = radius + 1
    top, left = max(0, rows.min() - pad), max(0, cols.min() - pad)
    bottom, right = min(mask.shape[0], rows.max() + pad + 1), min(mask.shape[1], cols.max() + pad + 1)
    crop = mask[top:bottom, left:right]
    opened = ndimage.binary_opening(np.pad(crop, pad), structure=disk(radius))[pad:-pad, pad:-pad]
    if not opened.any():
        return mask
    out = np.zeros_like(mask)
    out[top:bottom, left:right] = ndimage.binary_fill_holes(largest_component(opened))
    return out


def radial_profile(mask: np.ndarray, centre: tuple[float, float], angles: int = 256, step: float = 0.25) -> np.ndarray:
    """Radius of a star-shaped mask along ``angles`` rays from ``centre``: the distance to the first
    pixel outside the mask on each ray (nearest-pixel sampling every ``step`` px)."""
    from scipy import ndimage

    theta = np.linspace(0, 2 * np.pi, angles, endpoint=False)
    reach = float(np.hypot(*mask.shape))
    radii = np.arange(0, reach, step)
    rows = centre[0] + radii[None, :] * np.sin(theta)[:, None]
    cols = centre[1] + radii[None, :] * np.cos(theta)[:, None]
    inside = ndimage.map_coordinates(mask.astype(np.uint8), [rows.ravel(), cols.ravel()], order=0,
                                     mode="constant", cval=0).reshape(rows.shape).astype(bool)
    first_out = np.argmax(~inside, axis=1)
    first_out[inside.all(axis=1)] = len(radii) - 1
    return radii[first_out]


def fourier_smooth_faz(mask: np.ndarray, harmonics: int, angles: int = 256) -> np.ndarray:
    """A FAZ outline as a smooth star-shaped curve: the radius ``r(theta)`` around the mask's centroid
    (:func:`radial_profile`) keeps its Fourier harmonics ``0..harmonics`` and is drawn as a polygon."""
    from skimage.draw import polygon

    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(mask)
    if rows.size < 8:
        return mask
    centre = (float(rows.mean()), float(cols.mean()))
    if not mask[int(round(centre[0])), int(round(centre[1]))]:
        return mask                                     # not star-shaped around its centroid: kept
    radius = radial_profile(mask, centre, angles)
    spectrum = np.fft.rfft(radius)
    spectrum[harmonics + 1:] = 0
    smooth = np.clip(np.fft.irfft(spectrum, n=angles), 0, None)
    theta = np.linspace(0, 2 * np.pi, angles, endpoint=False)
    rr, cc = polygon(centre[0] + smooth * np.sin(theta), centre[1] + smooth * np.cos(theta), mask.shape)
    out = np.zeros_like(mask)
    out[rr, cc] = True
    return out


def bounding_crop(mask: np.ndarray) -> np.ndarray:
    """The smallest crop of ``mask`` that holds all of its pixels (for fast metrics)."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return mask
    r0, r1 = np.flatnonzero(rows)[[0, -1]]
    c0, c1 = np.flatnonzero(cols)[[0, -1]]
    return mask[r0:r1 + 1, c0:c1 + 1]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of a binary mask (nnU-Net's post-processing)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def central_component(mask: np.ndarray) -> np.ndarray:
    """Keep the component that holds the image centre, else the one whose nearest pixel is closest."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count <= 1:
        return labels > 0
    cy, cx = (np.asarray(mask.shape) - 1) / 2.0
    at_centre = labels[int(round(cy)), int(round(cx))]
    if at_centre:
        return labels == at_centre
    rows, cols = np.nonzero(labels)
    nearest = np.argmin((rows - cy) ** 2 + (cols - cx) ** 2)
    return labels == labels[rows[nearest], cols[nearest]]


def classical_faz(pixels: np.ndarray, sigma_fraction: float = 0.01, threshold_fraction: float = 0.5,
                  opening_fraction: float = 0.01) -> np.ndarray:
    """Classical FAZ segmentation: Gaussian smoothing, a low-intensity threshold, the central component.

    The FAZ is the capillary-free (dark) area at the fovea: smooth with ``sigma = sigma_fraction * width``,
    keep pixels darker than the level ``threshold_fraction`` of the way from the darkest central level
    (1st percentile within 0.15 widths of the centre) to the median of the smoothed image, open with a
    disk of ``opening_fraction * width``, keep the central component and fill its holes.

    :param pixels: 2D grayscale image (any range).
    :returns: boolean mask.
    """
    from scipy import ndimage
    from skimage.morphology import disk

    pixels = np.asarray(pixels, dtype=np.float32)
    width = pixels.shape[1]
    smooth = ndimage.gaussian_filter(pixels, sigma=max(sigma_fraction * width, 0.5))
    rows, cols = np.mgrid[:pixels.shape[0], :width]
    central = np.hypot(rows - (pixels.shape[0] - 1) / 2, cols - (width - 1) / 2) < 0.15 * width
    floor = float(np.percentile(smooth[central], 1))
    dark = smooth < floor + threshold_fraction * (float(np.median(smooth)) - floor)
    radius = int(round(opening_fraction * width))
    if radius >= 1:
        dark = ndimage.binary_opening(dark, structure=disk(radius))
    if not dark.any():
        return dark
    return ndimage.binary_fill_holes(central_component(dark))

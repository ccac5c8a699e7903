"""Realism of OCTA phantoms measured against real scans (``vesselrecon phantoms realism``).

Statistics per image, pooled over a batch:

* ``histogram``: intensity histogram (64 bins on [0, 1]);
* ``spectrum``: radially averaged power spectrum (log10 power of the mean-subtracted image, on 32
  radial frequency bins in cycles/pixel, each curve normalised to sum 1 in linear power);
* ``vessel_fraction``: fraction of labelled vessel pixels (from the labels);
* ``calibre``: vessel calibre distribution, ``2 x`` the distance-to-background on the label's
  skeleton, in pixels (histogram on 1..16 px);
* ``faz_area``: FAZ area in mm^2 by the same classical estimate on both sides (the dark, smooth
  region nearest the image centre), at the phantom's pixel size and, for real scans whose field is
  not stated (ROSSA), an assumed 3 mm field.

Distances: the 1-Wasserstein distance between the pooled histograms (``histogram``, ``calibre``,
``vessel_fraction``, ``faz_area``), in the statistic's own unit, and the mean absolute difference of
the mean log spectra (``spectrum``, in decades). A baseline row ("real vs real", two halves of the
real folder) shows the scale of sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ImageStats", "image_stats", "summary", "real_folder_stats", "phantom_stats", "compare",
           "realism_table", "radial_spectrum", "calibres_px"]

N_SPECTRUM_BINS = 32
HIST_BINS = np.linspace(0.0, 1.0, 65)
CALIBRE_BINS = np.arange(0.5, 17.0, 1.0)


@dataclass
class ImageStats:
    """Pooled statistics of a batch of images."""

    histograms: list = field(default_factory=list)
    spectra: list = field(default_factory=list)
    vessel_fractions: list = field(default_factory=list)
    calibres: list = field(default_factory=list)
    faz_areas: list = field(default_factory=list)

    def extend(self, other: "ImageStats") -> None:
        for name in ("histograms", "spectra", "vessel_fractions", "calibres", "faz_areas"):
            getattr(self, name).extend(getattr(other, name))


def radial_spectrum(image: np.ndarray, bins: int = N_SPECTRUM_BINS) -> np.ndarray:
    """Radially averaged power spectrum on ``bins`` frequency bins up to 0.5 cycles/pixel,
    normalised to sum 1 (log10 of that is compared)."""
    a = np.asarray(image, np.float64)
    a = a - a.mean()
    power = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    H, W = a.shape
    fy = np.fft.fftshift(np.fft.fftfreq(H))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(W))[None, :]
    rad = np.sqrt(fx**2 + fy**2)
    idx = np.clip((rad / 0.5 * bins).astype(int), 0, bins)
    total = np.bincount(idx.ravel(), power.ravel(), bins + 1)[1:bins + 1]
    count = np.bincount(idx.ravel(), minlength=bins + 1)[1:bins + 1]
    spec = total / np.maximum(count, 1)
    return spec / max(spec.sum(), 1e-12)


def calibres_px(mask: np.ndarray) -> np.ndarray:
    """Local vessel calibre (px) on the skeleton of a binary vessel mask: ``2 * EDT - 1``."""
    from scipy.ndimage import distance_transform_edt
    from skimage.morphology import skeletonize

    m = np.asarray(mask, bool)
    if not m.any():
        return np.zeros(0)
    d = distance_transform_edt(m)
    return 2.0 * d[skeletonize(m)] - 1.0


def _classical_faz_area(image: np.ndarray, pixel_mm: float) -> float:
    """Largest dark, smooth region connected to the image centre (mm^2); 0 when none."""
    from scipy.ndimage import gaussian_filter, label

    a = gaussian_filter(np.asarray(image, np.float64), 3.0)
    H, W = a.shape
    win = a[H // 4 : 3 * H // 4, W // 4 : 3 * W // 4]
    thr = np.percentile(a, 8)
    lab, _ = label(a <= thr)
    cy, cx = np.unravel_index(np.argmin(win), win.shape)
    k = lab[cy + H // 4, cx + W // 4]
    return float((lab == k).sum()) * pixel_mm**2 if k else 0.0


def image_stats(image: np.ndarray, vessels: np.ndarray | None = None, faz_area_mm2: float | None = None) -> ImageStats:
    """Statistics of one image in [0, 1] (and its vessel label, when given)."""
    img = np.clip(np.asarray(image, np.float64), 0, 1)
    st = ImageStats()
    st.histograms.append(np.histogram(img, HIST_BINS)[0] / img.size)
    st.spectra.append(radial_spectrum(img))
    if vessels is not None:
        st.vessel_fractions.append(float(np.mean(vessels)))
        st.calibres.append(calibres_px(vessels))
    if faz_area_mm2 is not None:
        st.faz_areas.append(float(faz_area_mm2))
    return st


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(path).convert("L"), np.float64)
    return a / 255.0


def _pairs(folder: Path):
    """(image, label-or-None) paths: ``<split>/image|label`` layout (ROSSA) or a flat image folder."""
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".bmp")
                    and p.parent.name in ("image", "images"))
    if not images:
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".bmp")
                        and "label" not in p.parent.name
                        and not any(t in p.name.lower() for t in ("mask", "label", "system", "faz")))
    for p in images:
        lab = None
        for cand in (p.parent.parent / "label" / p.name, p.parent.parent / "labels" / p.name):
            if cand.is_file():
                lab = cand
        yield p, lab


def real_folder_stats(folder: str | Path, limit: int = 100, field_mm: float = 3.0, seed: int = 0) -> ImageStats:
    """Statistics of up to ``limit`` real scans (a random, seeded subset) of a folder. The field of
    view comes from the file or folder name when it says (``angio6superf``, ``3x3``), else ``field_mm``."""
    pairs = list(_pairs(Path(folder)))
    if not pairs:
        from ..errors import InputError

        raise InputError(f"No images found under {folder}.")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(pairs))[:limit]
    st = ImageStats()
    for i in sorted(pick):
        ip, lp = pairs[i]
        from ..enface_io import fov_from_path

        img = _read_gray(ip)
        lab = _read_gray(lp) > 0.5 if lp is not None else None
        field = fov_from_path(ip) or field_mm
        st.extend(image_stats(img, lab, _classical_faz_area(img, field / img.shape[0])))
    return st


def phantom_stats(count: int = 32, seed: int = 0, size_px: int = 320, field_mm: float = 3.0, **options) -> ImageStats:
    """Statistics of ``count`` phantoms from :func:`~.octa.render_octa` (seeds ``seed + i``)."""
    from .octa import render_octa

    st = ImageStats()
    for i in range(count):
        c = render_octa(seed + i, size_px, field_mm, **options)
        st.extend(image_stats(c.image, c.vessel_mask, _classical_faz_area(c.image, c.pixel_mm)))
    return st


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")


def _w1_hist(ha: np.ndarray, hb: np.ndarray, centres: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(centres, centres, ha + 1e-12, hb + 1e-12))


def summary(st: ImageStats) -> dict:
    """Means of each statistic (for the table)."""
    hist = np.mean(st.histograms, 0)
    centres = 0.5 * (HIST_BINS[1:] + HIST_BINS[:-1])
    cal = np.concatenate(st.calibres) if st.calibres else np.zeros(0)
    return {
        "intensity_mean": float((hist * centres).sum()),
        "vessel_fraction": float(np.mean(st.vessel_fractions)) if st.vessel_fractions else float("nan"),
        "calibre_median_px": float(np.median(cal)) if len(cal) else float("nan"),
        "faz_area_mm2": float(np.median(st.faz_areas)) if st.faz_areas else float("nan"),
        "spectrum_slope": _spectrum_slope(np.mean(st.spectra, 0)),
    }


def _spectrum_slope(spec: np.ndarray) -> float:
    f = (np.arange(len(spec)) + 1.0) / len(spec) * 0.5
    return float(np.polyfit(np.log10(f), np.log10(spec + 1e-12), 1)[0])


def compare(a: ImageStats, b: ImageStats) -> dict:
    """Distance per statistic between two batches (see the module docstring)."""
    centres = 0.5 * (HIST_BINS[1:] + HIST_BINS[:-1])
    cal_a = np.concatenate(a.calibres) if a.calibres else np.zeros(0)
    cal_b = np.concatenate(b.calibres) if b.calibres else np.zeros(0)
    return {
        "histogram": _w1_hist(np.mean(a.histograms, 0), np.mean(b.histograms, 0), centres),
        "spectrum": float(np.mean(np.abs(np.log10(np.mean(a.spectra, 0) + 1e-12) - np.log10(np.mean(b.spectra, 0) + 1e-12)))),
        "vessel_fraction": _w1(a.vessel_fractions, b.vessel_fractions),
        "calibre": _w1(np.clip(cal_a, 0, 16), np.clip(cal_b, 0, 16)),
        "faz_area": _w1(a.faz_areas, b.faz_areas),
    }


def _split(st: ImageStats) -> tuple[ImageStats, ImageStats]:
    halves = (ImageStats(), ImageStats())
    for name in ("histograms", "spectra", "vessel_fractions", "calibres", "faz_areas"):
        items = getattr(st, name)
        getattr(halves[0], name).extend(items[0::2])
        getattr(halves[1], name).extend(items[1::2])
    return halves


def realism_table(real: ImageStats, phantoms: dict[str, ImageStats]) -> str:
    """A markdown table: one row per phantom batch and a real-vs-real baseline; distance columns,
    then the batch means."""
    cols = ["histogram", "spectrum", "vessel_fraction", "calibre", "faz_area"]
    rows = {"real (half) vs real (half)": compare(*_split(real))}
    rows.update({name: compare(st, real) for name, st in phantoms.items()})
    sums = {"real": summary(real), **{name: summary(st) for name, st in phantoms.items()}}
    lines = ["| batch vs real | " + " | ".join(f"{c} W1" if c != "spectrum" else "spectrum (decades)" for c in cols) + " |",
             "|" + " --- |" * (len(cols) + 1)]
    for name, d in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{d[c]:.4f}" for c in cols) + " |")
    keys = ["intensity_mean", "spectrum_slope", "vessel_fraction", "calibre_median_px", "faz_area_mm2"]
    lines += ["", "| batch | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for name, s in sums.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def run_realism(args) -> int:
    """``vesselrecon phantoms realism --real DIR [--real DIR2] [--count N] [--field-mm 3 6]``."""
    from ..errors import InputError

    if not args.real:
        raise InputError("phantoms realism needs --real FOLDER (e.g. ../shared/datasets/rossa).")
    for folder in args.real:
        if not Path(folder).is_dir():
            raise InputError(f"--real {folder} is not a folder.")
    batches = {f"phantoms {f:g} mm, {args.size_px} px (n={args.count})":
               phantom_stats(args.count, args.seed, args.size_px, f) for f in args.field_mm}
    for folder in args.real:
        real = real_folder_stats(folder, args.limit, seed=args.seed)
        print(f"Real: {folder} ({len(real.histograms)} scans; {len(real.vessel_fractions)} with vessel labels; "
              "field from the file name, else 3 mm)")
        print(realism_table(real, batches))
        print()
    return 0

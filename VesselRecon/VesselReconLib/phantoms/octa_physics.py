"""Dense capillary texture, OCTA acquisition physics and domain randomisation for en face phantoms.

Used by :func:`VesselReconLib.phantoms.octa.render_octa`. Everything works on 2D ``(H, W)`` float
arrays in pixel units and draws its randomness from the ``numpy.random.Generator`` it is given, so a
render stays a pure function of its seed.

* :func:`capillary_network`: a capillary bed as the zero-level lines of band-limited Gaussian noise
  (a connected, labyrinthine mesh of constant line width and a chosen intercapillary spacing), the
  image-space counterpart of the dense capillary simulation of Kreitner et al. (TMI 2024);
* :func:`sample_appearance` / :func:`acquire`: flow signal -> angiogram: per-plexus gains, calibre-
  and depth-dependent flow signal, multiplicative speckle, decorrelation noise, projection
  artefacts, optical blur, stripe noise, motion bands, vignetting, global signal loss, then device-like
  contrast curves (gamma, sigmoid, percentile saturation), smoothing / sharpening, resolution
  resampling and 8-bit quantisation. The sampled parameters are returned so a render documents itself.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

__all__ = ["capillary_network", "sample_appearance", "acquire", "motion_bands"]


def _g(img: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(img, sigma, mode="reflect") if sigma > 0 else img


def capillary_network(rng: np.random.Generator, shape, spacing_px: float, width_px: float = 1.0) -> np.ndarray:
    """A capillary mesh in [0, 1]: lines along the zero set of band-pass noise.

    :param spacing_px: typical distance between neighbouring capillaries (pixels, >= ~2).
    :param width_px: line width at half maximum (pixels).
    """
    white = rng.standard_normal(shape)
    lam = 2.0 * max(float(spacing_px), 2.0)  # zero crossings of a band at wavelength lam are ~lam/2 apart
    band = _g(white, lam / 6.0) - _g(white, lam / 3.0)
    gy, gx = np.gradient(band)
    grad = np.sqrt(gx * gx + gy * gy) + 1e-6 * band.std()
    dist = np.abs(band) / grad  # distance (px) to the zero line, first order
    return np.exp(-0.5 * (dist / (0.425 * width_px)) ** 2)


def _curve(x: np.ndarray, gamma: float, sigmoid_gain: float, sigmoid_mid: float) -> np.ndarray:
    y = np.clip(x, 0, 1) ** gamma
    if sigmoid_gain > 0:
        s = lambda v: 1.0 / (1.0 + np.exp(-sigmoid_gain * (v - sigmoid_mid)))  # noqa: E731
        y = (s(y) - s(0.0)) / (s(1.0) - s(0.0))
    return y


def sample_appearance(rng: np.random.Generator, randomize: bool = True) -> dict:
    """Acquisition and device parameters of one scan (wide ranges when ``randomize``)."""
    if not randomize:
        return dict(slab="superficial", cap_gain=[0.55, 0.45, 0.35], tree_gain=1.0, looks=4.0, speckle_grain=0.5,
                    noise_mean=0.06, noise_shape=2.0, tail=0.15, psf=0.5, stripe=0.02, motion=0, motion_shift=0.0,
                    vignette=0.1, dim=1.0, gamma=0.9, sigmoid_gain=0.0, sigmoid_mid=0.5, saturate_pct=1.5,
                    post_sigma=0.0, sharpen=0.0, resample=1.0, faz_floor=0.5)
    return dict(
        slab=str(rng.choice(["superficial", "superficial", "full", "inner"])),
        cap_gain=[float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.2, 0.7)), float(rng.uniform(0.15, 0.6))],
        tree_gain=float(rng.uniform(0.7, 1.2)),
        looks=float(rng.uniform(1.2, 6.0)),
        speckle_grain=float(rng.uniform(0.3, 0.9)),
        noise_mean=float(rng.uniform(0.01, 0.16)),
        noise_shape=float(rng.uniform(1.0, 4.0)),
        tail=float(rng.uniform(0.0, 0.35)),
        psf=float(rng.uniform(0.2, 0.9)),
        stripe=float(rng.uniform(0.0, 0.08)),
        motion=int(rng.choice([0, 0, 0, 1, 1, 2, 3])),
        motion_shift=float(rng.uniform(1.0, 6.0)),
        vignette=float(rng.uniform(0.0, 0.35)),
        dim=float(rng.uniform(0.5, 1.3)),
        gamma=float(np.exp(rng.uniform(math.log(0.5), math.log(1.8)))),
        sigmoid_gain=float(rng.choice([0.0, rng.uniform(3.0, 10.0)])),
        sigmoid_mid=float(rng.uniform(0.3, 0.6)),
        saturate_pct=float(rng.uniform(0.2, 5.0)),
        post_sigma=float(rng.choice([0.0, rng.uniform(0.3, 1.0)])),
        sharpen=float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.5)])),
        resample=float(rng.choice([1.0, 1.0, rng.uniform(0.6, 0.95)])),
        faz_floor=float(rng.uniform(0.45, 1.0)),
    )


def vignette(shape, strength: float, rng, centre=(0.3, 0.7)) -> np.ndarray:
    """Radial fall-off of ``strength`` around a random centre (fractions of the size within ``centre``)."""
    H, W = shape
    y, x = np.mgrid[0:H, 0:W]
    cx, cy = W * rng.uniform(*centre), H * rng.uniform(*centre)
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (0.5 * max(H, W)) ** 2
    return 1.0 - strength * np.clip(r2 / 2.0, 0, 1)


def displace_rows(arrays: list[np.ndarray], rows: slice, shift: int) -> None:
    """Shift ``rows`` of every array sideways by ``shift`` px in place, repeating the edge column."""
    for a in arrays:
        a[rows] = np.roll(a[rows], shift, axis=1)
        if shift > 0:
            a[rows, :shift] = a[rows, shift : shift + 1]
        elif shift < 0:
            a[rows, shift:] = a[rows, shift - 1 : shift]


def displace_random_band(arrays: list[np.ndarray], max_band: int, max_shift: float, rng) -> int:
    """Displace a band of random row, height (up to ``max_band``) and shift in every array; return its
    first row."""
    H = arrays[0].shape[0]
    row = int(rng.integers(int(0.05 * H), int(0.95 * H)))
    band = int(rng.integers(max(2, H // 40), max(3, max_band)))
    shift = int(np.round(rng.uniform(-max_shift, max_shift)))
    displace_rows(arrays, slice(row, min(H, row + band)), shift)
    return row


def motion_bands(arrays: list[np.ndarray], n: int, max_shift: float, rng) -> list[np.ndarray]:
    """Horizontal motion artefacts: the band below a line is displaced sideways (in every array,
    so labels stay aligned); the first array (the image) gets a bright or dark streak at the line."""
    H, W = arrays[0].shape
    out = [a.copy() for a in arrays]
    for _ in range(n):
        row = displace_random_band(out, H // 4, max_shift, rng)
        streak = slice(row, min(H, row + int(rng.integers(1, 3))))
        gain = rng.uniform(1.3, 2.5) if rng.random() < 0.7 else rng.uniform(0.3, 0.7)
        out[0][streak] = out[0][streak] * gain + (0.05 * gain if gain > 1 else 0.0)
    return out


def acquire(tree: np.ndarray, caps: list[np.ndarray], faz_soft: np.ndarray, rng: np.random.Generator,
            p: dict, labels: list[np.ndarray] | None = None):
    """Flow signal -> 8-bit-like angiogram in [0, 1].

    :param tree: flow signal of the large (superficial) vessels, calibre-dependent, in [0, 1].
    :param caps: capillary textures of the superficial, intermediate and deep plexus in [0, 1].
    :param faz_soft: 1 inside the FAZ, 0 outside (soft edge allowed).
    :param labels: arrays moved with the image by motion bands (returned displaced).
    :returns: ``(image, labels)``.
    """
    shape = tree.shape
    labels = list(labels or [])

    def speckle():
        s = _g(rng.gamma(p["looks"], 1.0 / p["looks"], shape), p["speckle_grain"])
        return s / s.mean()

    sup = np.maximum(tree * p["tree_gain"], caps[0] * p["cap_gain"][0]) * speckle()
    icp = caps[1] * p["cap_gain"][1] * speckle()
    dcp = caps[2] * p["cap_gain"][2] * speckle()
    tails = p["tail"] * _g(tree, 1.5) * speckle()  # projection artefact of the large vessels
    if p["slab"] == "superficial":
        flow = np.maximum(sup, 0.5 * icp)
    elif p["slab"] == "inner":
        flow = np.maximum(np.maximum(sup, icp), 0.6 * dcp + tails)
    else:  # full retina projection
        flow = np.maximum(np.maximum(sup, icp), dcp + tails)
    noise = rng.gamma(p["noise_shape"], p["noise_mean"] / p["noise_shape"], shape)
    img = flow + noise * (1.0 - (1.0 - p["faz_floor"]) * faz_soft)
    img = _g(img, p["psf"])
    img = img * (1.0 + p["stripe"] * rng.standard_normal((shape[0], 1)))
    img = img * vignette(shape, p["vignette"], rng) * p["dim"]
    if p["motion"]:
        img, *labels = motion_bands([img, *labels], p["motion"], p["motion_shift"], rng)
    img = _device(img, p)
    return img.astype(np.float32), labels


def _device(img: np.ndarray, p: dict) -> np.ndarray:
    """Device post-processing: resolution, contrast curve, saturation, smoothing/sharpening, 8 bit."""
    H, W = img.shape
    if p["resample"] < 1.0:
        small = zoom(img, p["resample"], order=1)
        img = zoom(small, (H / small.shape[0], W / small.shape[1]), order=1)[:H, :W]
    hi = np.percentile(img, 100.0 - p["saturate_pct"])
    img = np.clip(img / max(hi, 1e-6), 0, 1)
    img = _curve(img, p["gamma"], p["sigmoid_gain"], p["sigmoid_mid"])
    if p["post_sigma"] > 0:
        img = _g(img, p["post_sigma"])
    if p["sharpen"] > 0:
        img = img + p["sharpen"] * (img - _g(img, 1.0))
    return np.round(np.clip(img, 0, 1) * 255) / 255

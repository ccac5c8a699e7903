"""Two-view X-ray angiography phantoms: coronary-like trees seen by a C-arm (dataset kind ``xray``).

A case is a coronary-like :class:`~VesselReconLib.phantoms.tree.VascularTree` (a main vessel with side
branches and a focal stenosis of 30-90 % (:data:`LESION_RANGE`; any range on request) made with
:func:`~VesselReconLib.phantoms.tree.add_stenosis`)
placed around the isocentre, imaged from two C-arm views whose geometry is encoded exactly as DICOM XA
does (``PositionerPrimaryAngle`` LAO+/RAO-, ``PositionerSecondaryAngle`` CRA+/CAU-, SID, SOD,
``ImagerPixelSpacing``, 512x512 detector). Pixels are cone-beam line integrals: the chord of every
pixel ray through every round-cone vessel piece is computed analytically (closest approach of the ray
to the piece's axis, vectorised over padded pixel windows), weighted by the iodine attenuation, on top
of a body with the heart shadow, lungs with texture, the diaphragm, spine and ribs, neighbouring
arteries that overlap the SOI, a contrast-filled catheter, then blur, Poisson quantum noise at clinical
dose, log/linear transfer, edge enhancement and gamma (:func:`imaging_chain`); contrast, blur and
vessel/background ratio are randomised widely. :func:`render_run` makes a cine run with contrast inflow
and washout.

Ground truth per case folder: ``view_a.png``/``view_b.png`` (16-bit), ``vessels_a.png``/``vessels_b.png``
(all contrast-filled vessels), ``soi_a.png``/``soi_b.png`` (label 1 main SOI, 2.. side branches), ``soibits_{a,b}.png`` (bit b set
where branch b projects, overlaps included),
``geometry.json`` (DICOM-style geometry per view and the SOI start/end pixels per view and branch),
``centerline.json`` (3D centreline, 100 points + radii per branch, LPS mm, and the stenosis record),
``mesh.vtp`` (the SOI lumen surface from :func:`tree_to_mesh`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import register_dataset
from .tree import VascularTree, add_stenosis, node_path

CONTRAST_MU = 0.25      # 1/mm, diluted iodine
CATHETER_MU = 0.35      # 1/mm
PHOTONS = 3000.0        # mean photons per pixel behind the body
INTENSITY_SCALE = 20000.0
N_CENTERLINE = 100


# --------------------------------------------------------------------------------------------
# geometry helpers (kept here so the phantom does not depend on the angio3d package)
# --------------------------------------------------------------------------------------------


def _carm(tags: dict):
    from ..angio3d.geometry import CArmGeometry

    return CArmGeometry.from_dicom(tags)


def resample_polyline(points: np.ndarray, values: np.ndarray | None = None, n: int = N_CENTERLINE):
    """``n`` points equally spaced by arc length along a polyline (and values interpolated on them)."""
    points = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    keep = np.r_[True, seg > 1e-9]
    s, points = s[keep], points[keep]
    t = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(t, s, points[:, k]) for k in range(points.shape[1])], axis=1)
    if values is None:
        return out
    return out, np.interp(t, s, np.asarray(values, float)[keep])


# --------------------------------------------------------------------------------------------
# trees
# --------------------------------------------------------------------------------------------


def _smooth_walk(rng, start, direction, length, step=1.0, curvature=0.012):
    """A smooth random 3D curve: the direction drifts with a low-pass filtered random turn rate."""
    n = max(2, int(length / step) + 1)
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    turn = np.zeros(3)
    points = [np.asarray(start, float)]
    for _ in range(n - 1):
        turn = 0.9 * turn + curvature * rng.normal(size=3)
        d = d + turn - (turn @ d) * d
        d /= np.linalg.norm(d)
        points.append(points[-1] + step * d)
    return np.array(points)


def _branch_direction(rng, tangent, angle_deg):
    perp = rng.normal(size=3)
    perp -= (perp @ tangent) * tangent
    perp /= np.linalg.norm(perp)
    a = np.radians(angle_deg)
    return np.cos(a) * tangent + np.sin(a) * perp


def _throat_fraction(rng, first: int, last: int, branches: list, clearance_mm: float = 10.0) -> float:
    """Stenosis position (fraction of the SOI) at least ``clearance_mm`` from the SOI's bifurcations,
    so that QCA measures the lesion and not the branch point (main-vessel nodes are 1 mm apart)."""
    length = float(last - first)
    for _ in range(100):
        fraction = float(rng.uniform(0.25, 0.75))
        if all(abs(fraction * length - (b - first)) >= clearance_mm for b in branches):
            break
    return fraction


# The SOI lesion's % diameter stenosis range of every shipped model's training phantoms.
LESION_RANGE = (30.0, 90.0)


@dataclass
class CoronaryCase:
    """A phantom tree with its segment of interest (SOI) as node paths (main first, then side branches)."""

    tree: VascularTree
    soi_paths: list[np.ndarray]
    catheter: np.ndarray
    stenosis: dict = field(default_factory=dict)


def coronary_tree(rng: np.random.Generator, n_side: int = 3, soi_side_branches: int = 1,
                  lesion_range: tuple[float, float] = LESION_RANGE) -> CoronaryCase:
    """A main coronary vessel (~100 mm, radius 1.9 -> 1.2 mm) with side branches and one stenosis.

    The SOI is a 45-60 mm piece of the main vessel that holds ``soi_side_branches`` bifurcations; each
    such side branch contributes a side SOI of 18-25 mm starting at its bifurcation. The lesion's % diameter
    stenosis is drawn uniformly from ``lesion_range`` (one draw whatever the range, so the rest of a seed's case
    does not depend on it).
    """
    length = rng.uniform(95, 115)
    start = rng.uniform(-12, 12, 3) + np.array([0.0, 0.0, 0.0])
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    main = _smooth_walk(rng, start - direction * length / 2, direction, length)
    main -= main.mean(0) - rng.uniform(-6, 6, 3)
    n_main = len(main)
    radii_main = np.linspace(rng.uniform(1.7, 2.0), rng.uniform(1.1, 1.3), n_main)
    nodes, radii = [main], [radii_main]
    edges = [np.c_[np.arange(n_main - 1), np.arange(1, n_main)]]
    soi_first = int(rng.integers(int(0.12 * n_main), int(0.3 * n_main)))
    soi_last = min(n_main - 3, soi_first + int(rng.uniform(45, 60)))
    branch_at = list(np.sort(rng.choice(np.arange(soi_first + 12, soi_last - 12), soi_side_branches, replace=False)))
    others = rng.choice(np.r_[np.arange(5, soi_first), np.arange(soi_last + 5, n_main - 5)],
                        max(0, n_side - soi_side_branches), replace=False)
    side_soi = []
    offset = n_main
    for k, node in enumerate(branch_at + list(others)):
        tangent = main[min(node + 1, n_main - 1)] - main[max(node - 1, 0)]
        tangent /= np.linalg.norm(tangent)
        d = _branch_direction(rng, tangent, rng.uniform(45, 70))
        blen = rng.uniform(28, 40)
        pts = _smooth_walk(rng, main[node], d, blen, curvature=0.012)[1:]
        r0 = 0.75 * radii_main[node]
        nodes.append(pts)
        radii.append(np.linspace(r0, 0.7 * r0, len(pts)))
        edges.append(np.c_[np.r_[node, offset + np.arange(len(pts) - 1)], offset + np.arange(len(pts))])
        if k < soi_side_branches:
            side_soi.append((int(node), int(offset + min(len(pts) - 1, int(rng.uniform(18, 25))))))
        offset += len(pts)
    tree = VascularTree(np.concatenate(nodes), np.concatenate(radii), np.concatenate(edges),
                        labels=np.ones(offset, np.int32))
    tree.meta["kind"] = "coronary"
    percent = float(rng.uniform(*lesion_range))
    tree = add_stenosis(tree, (soi_first, soi_last), percent, float(rng.uniform(5, 9)),
                        center_fraction=_throat_fraction(rng, soi_first, soi_last, branch_at), resolution_mm=0.4)
    paths = [node_path(tree, soi_first, soi_last)] + [node_path(tree, a, b) for a, b in side_soi]
    ostium = tree.nodes[0]
    away = tree.nodes[0] - tree.nodes[min(10, n_main - 1)]
    away /= np.linalg.norm(away)
    catheter = _smooth_walk(rng, ostium, away, 120, step=2.0, curvature=0.004)
    return CoronaryCase(tree, paths, catheter, dict(tree.meta["stenoses"][-1]))


# --------------------------------------------------------------------------------------------
# projection
# --------------------------------------------------------------------------------------------


def _pieces(tree: VascularTree, paths: list[np.ndarray] | None = None):
    """Segment end points and radii ``(a, b, ra, rb)`` of the whole tree or of node paths."""
    if paths is None:
        e = tree.edges
        return tree.nodes[e[:, 0]], tree.nodes[e[:, 1]], tree.radii[e[:, 0]], tree.radii[e[:, 1]]
    pairs = np.concatenate([np.c_[p[:-1], p[1:]] for p in paths])
    return tree.nodes[pairs[:, 0]], tree.nodes[pairs[:, 1]], tree.radii[pairs[:, 0]], tree.radii[pairs[:, 1]]


def chord_image(geometry, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray,
                chunk: int = 256) -> np.ndarray:
    """Chord length (mm) of every pixel ray through a chain of round-cone pieces ``a -> b``.

    For each piece, the pixels of its projected bounding box (padded to a common window) are cast
    as rays from the source; the closest approach of each ray to the piece axis gives the distance
    ``d`` and the axial position ``t``; the chord is ``2 sqrt(r(t)^2 - d^2) / sin(theta)``. Chords
    are summed over pieces whose axial span holds ``t`` (so crossing vessels add up), and every ray
    that passes within ``r`` of a piece's capsule gets at least that capsule's chord (so the outer
    side of bends has no gaps).
    """
    rows, cols = geometry.rows, geometry.columns
    total = np.zeros(rows * cols)
    capsule = np.zeros(rows * cols)
    a, b = np.asarray(a, float), np.asarray(b, float)
    ra, rb = np.asarray(ra, float), np.asarray(rb, float)
    src = geometry.source
    pa, pb = geometry.project(a), geometry.project(b)
    scale = geometry.sid / np.minimum(geometry.depth(a), geometry.depth(b)) / min(geometry.pixel_spacing)
    pad = np.maximum(ra, rb) * scale + 1.5
    lo = np.floor(np.minimum(pa, pb) - pad[:, None]).astype(int)
    hi = np.ceil(np.maximum(pa, pb) + pad[:, None]).astype(int)
    for start in range(0, len(a), chunk):
        sl = slice(start, start + chunk)
        flat, chord, inside, capsule_chord, touched = _chords_chunk(
            geometry, src, a[sl], b[sl], ra[sl], rb[sl], lo[sl], hi[sl], rows, cols)
        total += np.bincount(flat[inside], chord[inside], minlength=rows * cols)
        np.maximum.at(capsule, flat[touched], capsule_chord[touched])
    return np.maximum(total, capsule).reshape(rows, cols)


def _chords_chunk(geometry, src, a, b, ra, rb, lo, hi, rows, cols):
    width = int(min(max((hi - lo).max(), 1) + 1, max(rows, cols)))
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(width), indexing="xy"), -1).reshape(-1, 2)
    pix = lo[:, None, :] + grid[None]                                  # (E, W*W, 2) = (col, row)
    valid = (pix <= hi[:, None, :]).all(-1) & (pix >= 0).all(-1) & (pix[..., 0] < cols) & (pix[..., 1] < rows)
    _, dirs = geometry.pixel_rays(pix.reshape(-1, 2))
    u = dirs.reshape(pix.shape[0], -1, 3)
    axis = b - a
    length = np.maximum(np.linalg.norm(axis, axis=1), 1e-9)
    v = axis / length[:, None]
    w0 = src[None] - a                                                 # (E, 3)
    bb = np.einsum("enk,ek->en", u, v)
    dd = np.einsum("enk,ek->en", u, w0)
    ee = (v * w0).sum(1)[:, None]
    denom = np.maximum(1.0 - bb ** 2, 1e-6)
    s = (bb * ee - dd) / denom
    t = (ee - bb * dd) / denom
    frac = t / length[:, None]
    sin_theta = np.sqrt(np.maximum(denom, 0.04))
    # infinite-cylinder chord, kept where the closest approach lies on this piece
    dist2 = ((w0[:, None] + s[..., None] * u - t[..., None] * v[:, None]) ** 2).sum(-1)
    radius = ra[:, None] + np.clip(frac, 0, 1) * (rb - ra)[:, None]
    chord = 2 * np.sqrt(np.maximum(radius ** 2 - dist2, 0)) / sin_theta
    chord = np.minimum(chord, length[:, None] / np.maximum(np.abs(bb), 1e-3) + 2 * radius)
    inside = valid & (frac >= 0) & (frac < 1) & (dist2 < radius ** 2)
    # capsule test: distance from the ray to the nearest point of the clamped axis
    q = -w0[:, None] + np.clip(t, 0, length[:, None])[..., None] * v[:, None]     # point - source
    along = (q * u).sum(-1)
    cap2 = (q * q).sum(-1) - along ** 2
    capsule_chord = 2 * np.sqrt(np.maximum(radius ** 2 - cap2, 0)) / sin_theta
    capsule_chord = np.minimum(capsule_chord, 2 * radius / sin_theta)
    touched = valid & (cap2 < radius ** 2)
    flat = (pix[..., 1] * cols + pix[..., 0]).clip(0, rows * cols - 1)
    return flat, chord, inside, capsule_chord, touched


def _tube_pieces(points: np.ndarray, radius: float):
    r = np.full(len(points) - 1, radius)
    return points[:-1], points[1:], r, r


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """Smooth step 0 -> 1 around x = 0 (logistic of width ``width``)."""
    return 1.0 / (1.0 + np.exp(-np.clip(x / width, -40, 40)))


def _texture(rng, shape, sigma: float) -> np.ndarray:
    """Band-pass random texture (unit std) with structures of about ``sigma`` pixels."""
    from scipy import ndimage

    noise = rng.normal(size=shape)
    band = ndimage.gaussian_filter(noise, sigma) - ndimage.gaussian_filter(noise, 3 * sigma)
    return band / max(band.std(), 1e-9)


def _background(rng, shape) -> np.ndarray:
    """Attenuation of the body behind the coronaries (line-integral units).

    A smooth body, the heart shadow (a soft ellipse), the lungs around it with band-pass lung texture,
    the diaphragm dome, the spine (a band with vertebral bodies), ribs (curved bands with cortical
    edges), blobs and, at random, a collimator field with a soft dark border like many real runs.
    """
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols] / max(shape)
    field = 1.6 + 0.3 * np.sin(2 * np.pi * (rng.uniform(0.2, 0.6) * x + rng.uniform(0, 1))) \
        * np.cos(2 * np.pi * (rng.uniform(0.2, 0.6) * y + rng.uniform(0, 1)))
    # heart shadow
    cy, cx, angle = rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.7), rng.uniform(0, np.pi)
    ay, ax = rng.uniform(0.25, 0.5), rng.uniform(0.3, 0.55)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    heart = _soft(1.0 - np.sqrt((u / ax) ** 2 + (v / ay) ** 2), rng.uniform(0.03, 0.12))
    field += rng.uniform(0.3, 0.9) * heart
    # lungs (outside the heart) with texture
    lung = 1.0 - heart
    field += lung * (-rng.uniform(0.1, 0.5) + rng.uniform(0.02, 0.08) * _texture(rng, shape, rng.uniform(2, 5)))
    # diaphragm dome
    if rng.random() < 0.7:
        y0, x0, curve = rng.uniform(0.6, 1.1), rng.uniform(0.2, 0.8), rng.uniform(0.5, 2.0)
        field += rng.uniform(0.4, 1.0) * _soft(y - (y0 + curve * (x - x0) ** 2), rng.uniform(0.005, 0.03))
    # spine with vertebral bodies
    if rng.random() < 0.8:
        sx, sw, tilt = rng.uniform(0.2, 0.8), rng.uniform(0.07, 0.14), rng.uniform(-0.2, 0.2)
        across = (x - sx - tilt * (y - 0.5)) / sw
        vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (rng.uniform(3.5, 7) * y + rng.uniform(0, 1)))
        field += rng.uniform(0.2, 0.6) * np.exp(-across ** 4) * vertebrae
    # ribs: curved bands, denser at their cortical edges
    spacing, bend, phase = rng.uniform(0.16, 0.3), rng.uniform(0.3, 1.5), rng.uniform(0, 1)
    position = (y + bend * (x - rng.uniform(0.3, 0.7)) ** 2) / spacing + phase
    rib_half = rng.uniform(0.15, 0.3)
    offset = np.abs(position - np.round(position))
    edge = np.exp(-((offset - rib_half) / 0.04) ** 2)
    field += rng.uniform(0.03, 0.15) * (_soft(rib_half - offset, 0.03) + 0.8 * edge) * (0.4 + 0.6 * lung)
    for _ in range(rng.integers(3, 8)):
        by, bx, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.02, 0.08)
        field += rng.uniform(0.05, 0.2) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s))
    # collimator / field edge
    if rng.random() < 0.4:
        margin, round_ = rng.uniform(0.0, 0.06), rng.uniform(0.02, 0.08)
        inside = np.minimum(np.minimum(x, 1 - x), np.minimum(y, 1 - y)) - margin
        field += rng.uniform(1.0, 2.5) * _soft(-inside, round_ / 4)
    return field


def chain_parameters(rng) -> dict:
    """Random detector and post-processing settings of one run (see :func:`imaging_chain`)."""
    return {"blur": rng.uniform(0.3, 1.2), "photons": 10 ** rng.uniform(2.3, 3.7), "log": rng.random() < 0.6,
            "unsharp": rng.uniform(0.0, 1.5), "unsharp_radius": rng.uniform(1.5, 8.0),
            "gamma": rng.uniform(0.6, 1.6), "gain": rng.uniform(0.5, 1.5), "offset": rng.uniform(200, 3000)}


def imaging_chain(rng, attenuation: np.ndarray, params: dict | None = None,
                  window: tuple[float, float] | None = None) -> np.ndarray:
    """Detector and device post-processing of a line-integral image -> uint16 display frame.

    Focal-spot/detector blur, Poisson quantum noise at clinical dose (200-5000 photons per pixel
    behind the body), then, as angiography systems do, a log or linear transfer, edge enhancement
    (unsharp masking) and a display gamma; vessels stay dark (MONOCHROME2). ``window`` fixes the
    display window (a cine run keeps one window for all frames).
    """
    from scipy import ndimage

    params = params or chain_parameters(rng)
    transmitted = ndimage.gaussian_filter(np.exp(-attenuation), params["blur"])
    photons = params["photons"]
    counts = rng.poisson(photons * transmitted) / photons
    signal = np.log(np.maximum(counts, 0.5 / photons)) if params["log"] else counts
    low, high = window if window is not None else np.percentile(signal, (0.5, 99.5))
    signal = np.clip((signal - low) / max(high - low, 1e-9), 0, 1)
    signal = signal + params["unsharp"] * (signal - ndimage.gaussian_filter(signal, params["unsharp_radius"]))
    signal = np.clip(signal, 0, 1) ** params["gamma"]
    return np.clip(signal * INTENSITY_SCALE * params["gain"] + params["offset"], 0, 65535).astype(np.uint16)


def neighbour_vessels(rng, case: "CoronaryCase", count: int) -> list[tuple]:
    """Round-cone pieces of other arteries (not in the SOI) running near the SOI, so that the views
    hold overlaps and crossings that the SOI target must ignore."""
    soi = case.tree.nodes[case.soi_paths[0]]
    pieces = []
    for _ in range(count):
        through = soi[rng.integers(len(soi))] + rng.normal(0, 12, 3)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        length = rng.uniform(60, 120)
        walk = _smooth_walk(rng, through - direction * length / 2, direction, length, curvature=0.015)
        radii = np.linspace(rng.uniform(0.9, 1.8), rng.uniform(0.6, 1.0), len(walk))
        pieces.append((walk[:-1], walk[1:], radii[:-1], radii[1:]))
    return pieces


def side_by_side_vessel(rng, centerline: dict, geometry, travel: float = 15.0) -> tuple:
    """A tube that runs beside a vessel in one view, its lumen overlapping the vessel's side by side, so
    that a tracker may follow the wrong one (another artery at another depth, parallel in projection).

    Over the middle three fifths of ``centerline`` (points, radii; LPS mm) the tube lies, in ``geometry``'s
    image, u (r + r') beside the vessel's projection (u in 0.5-0.9: the lumens overlap), 4-10 mm nearer or
    farther along the rays; outside that stretch it diverges by up to ``travel`` px more. Its radius is
    0.8-1.3 x the vessel's. Returns round-cone pieces as :func:`neighbour_vessels` does.
    """
    points, radii = centerline["points"], centerline["radii"]
    s = np.linspace(0, 1, len(points))
    depth = rng.uniform(4, 10) * rng.choice([-1, 1])
    side = rng.choice([-1, 1])
    overlap = rng.uniform(0.5, 0.9)
    radius_px = np.median(radii) / np.mean(geometry.pixel_spacing) * geometry.magnification
    factor = rng.uniform(0.8, 1.3)
    outside = np.clip(np.maximum(0.2 - s, s - 0.8) / 0.2, 0, 1)
    offset_px = side * (overlap * radius_px * (1 + factor) + travel * outside ** 2)
    pixels = geometry.project(points)
    tangent = np.gradient(pixels, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    target = pixels + offset_px[:, None] * np.c_[-tangent[:, 1], tangent[:, 0]]
    source, ray = geometry.pixel_rays(pixels)
    along = ((points - source) * ray).sum(1)
    _, target_ray = geometry.pixel_rays(target)
    walk = source + (along + depth)[:, None] * target_ray
    r = radii * factor
    return walk[:-1], walk[1:], r[:-1], r[1:]


def render_view(case: CoronaryCase, geometry, rng: np.random.Generator, neighbours: list | None = None) -> dict:
    """Image (uint16), all-vessel mask, SOI label mask and per-branch SOI bit mask of one view.

    The vessel/background contrast is randomised widely (diluted contrast x 0.25-1.2).
    """
    shape = (geometry.rows, geometry.columns)
    vessels = chord_image(geometry, *_pieces(case.tree))
    for piece in neighbours or []:
        vessels = vessels + chord_image(geometry, *piece)
    catheter = chord_image(geometry, *_tube_pieces(case.catheter, 0.9))
    soi = np.zeros(shape, np.uint8)
    bits = np.zeros(shape, np.uint8)
    for label, path in reversed(list(enumerate(case.soi_paths, start=1))):
        inside = chord_image(geometry, *_pieces(case.tree, [path])) > 0
        soi[inside] = label
        bits[inside] |= np.uint8(1 << (label - 1))
    contrast = CONTRAST_MU * rng.uniform(0.25, 1.2)
    attenuation = _background(rng, shape) + contrast * vessels + CATHETER_MU * rng.uniform(0.5, 1.2) * catheter
    image = imaging_chain(rng, attenuation)
    return {"image": image, "vessels": (vessels > 0).astype(np.uint8), "soi": soi, "soi_bits": bits}


def bolus_curve(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Relative iodine concentration per frame: a gamma-variate inflow and washout (peak 1)."""
    t = np.arange(n_frames, dtype=float)
    arrival, peak = rng.uniform(1, 3), rng.uniform(0.4, 0.6) * n_frames
    shape = np.clip(t - arrival, 0, None) / max(peak - arrival, 1.0)
    curve = shape ** 2 * np.exp(2 * (1 - shape))
    return curve / max(curve.max(), 1e-9)


def render_run(case: CoronaryCase, geometry, rng: np.random.Generator, n_frames: int = 12) -> np.ndarray:
    """A cine run (frames, rows, columns) uint16: contrast flows in from the ostium (distal vessels
    fill later) and washes out; one body, dose, post-processing and display window for the run."""
    shape = (geometry.rows, geometry.columns)
    distance = _path_distance(case.tree)
    pieces = _pieces(case.tree)
    along = 0.5 * (distance[case.tree.edges[:, 0]] + distance[case.tree.edges[:, 1]])
    bins = np.digitize(along, np.quantile(along, [0.25, 0.5, 0.75]))
    layers = [chord_image(geometry, *(p[bins == k] for p in pieces)) for k in range(4)]
    catheter = chord_image(geometry, *_tube_pieces(case.catheter, 0.9))
    body = _background(rng, shape) + CATHETER_MU * catheter
    curve = bolus_curve(n_frames, rng)
    params = chain_parameters(rng)
    transfer = np.log if params["log"] else (lambda v: v)
    window = (float(transfer(np.exp(-body.max() - 1.0))), float(transfer(np.exp(-body.min()))))
    frames, peak = [], int(np.argmax(curve))
    for k, level in enumerate(curve):
        front = 4.0 * min(1.0, (k + 1) / (peak + 1))           # filling reaches the distal quarter at the peak
        fill = np.clip(front - np.arange(4), 0, 1) * level
        vessels = sum(f * layer for f, layer in zip(fill, layers))
        frames.append(imaging_chain(rng, body + CONTRAST_MU * vessels, params, window))
    return np.stack(frames)


def _path_distance(tree: VascularTree) -> np.ndarray:
    """Distance (mm) from node 0 (the ostium) along the tree to every node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    e = tree.edges
    w = np.linalg.norm(tree.nodes[e[:, 0]] - tree.nodes[e[:, 1]], axis=1)
    graph = coo_matrix((w, (e[:, 0], e[:, 1])), shape=(tree.n_nodes, tree.n_nodes))
    return dijkstra(graph, directed=False, indices=0)


def random_views(rng: np.random.Generator, size: int = 512, spacing: float = 0.3) -> list[dict]:
    """Two DICOM-style geometries: typical coronary views at least 60 degrees apart in primary angle."""
    first = rng.uniform(-40, 10)
    second = first + rng.uniform(60, 90)
    sid = rng.uniform(1000, 1200)
    views = []
    for primary in (first, second):
        views.append({"PositionerPrimaryAngle": round(float(primary), 2),
                      "PositionerSecondaryAngle": round(float(rng.uniform(-25, 25)), 2),
                      "DistanceSourceToDetector": round(float(sid), 1),
                      "DistanceSourceToPatient": round(float(sid * rng.uniform(0.68, 0.74)), 1),
                      "ImagerPixelSpacing": [spacing, spacing], "Rows": size, "Columns": size})
    return views


# --------------------------------------------------------------------------------------------
# cases and datasets
# --------------------------------------------------------------------------------------------


def soi_centerlines(case: CoronaryCase, n: int = N_CENTERLINE) -> list[dict]:
    """Each SOI branch's 3D centreline resampled to ``n`` points with radii (LPS mm)."""
    out = []
    for path in case.soi_paths:
        points, radii = resample_polyline(case.tree.nodes[path], case.tree.radii[path], n)
        out.append({"points": points, "radii": radii})
    return out


def make_case(seed: int, size: int = 512, spacing: float = 0.3, side_branches: int = 1,
              side_by_side: int | None = None, lesion_range: tuple[float, float] = LESION_RANGE) -> dict:
    """Generate one phantom case in memory (images, masks, geometry, SOI points, 3D truth).

    ``lesion_range``: the % diameter stenosis range of the SOI's lesion (:data:`LESION_RANGE` by default; for
    example ``(0, 30)`` for lesion-free and mild vessels). The rest of the case is the same for any range.

    ``side_by_side``: a view (0 or 1) in which one more tube runs beside the SOI's main branch, overlapping it
    side by side (:func:`side_by_side_vessel`, drawn from its own generator so the rest of the case is
    unchanged); in the image, not in the SOI label.
    """
    rng = np.random.default_rng(seed)
    for _ in range(20):
        case = coronary_tree(rng, soi_side_branches=side_branches, lesion_range=lesion_range)
        tags = random_views(rng, size, spacing)
        geometries = [_carm(t) for t in tags]
        centerlines = soi_centerlines(case)
        pixels = [[g.project(c["points"][[0, -1]]) for c in centerlines] for g in geometries]
        margin, min_apart = 24, 40.0
        inside = all(((p >= margin) & (p < size - margin)).all() for view in pixels for p in view)
        apart = all(np.linalg.norm(p[1] - p[0]) >= min_apart for view in pixels for p in view)
        # like a clinician's view choice: no SOI foreshortened to less than half its chord length
        chords = [np.linalg.norm(c["points"][-1] - c["points"][0]) for c in centerlines]
        open_views = all(np.linalg.norm(p[1] - p[0]) >= 0.5 * chord * g.magnification / np.mean(g.pixel_spacing)
                         for g, view in zip(geometries, pixels) for p, chord in zip(view, chords))
        if inside and apart and open_views:
            break
    neighbours = neighbour_vessels(rng, case, int(rng.integers(1, 3)))
    if side_by_side is not None:
        neighbours = neighbours + [side_by_side_vessel(np.random.default_rng([seed, 13]), centerlines[0],
                                                       geometries[side_by_side])]
    views = [render_view(case, g, rng, neighbours) for g in geometries]
    return {"case": case, "tags": tags, "geometries": geometries, "views": views,
            "centerlines": centerlines, "soi_points": pixels}


def soi_mesh(case: CoronaryCase, spacing: float = 0.35):
    """Lumen surface of the SOI branches (main and side SOIs) from :func:`tree_to_mesh`."""
    from .geometry import tree_to_mesh

    nodes = np.unique(np.concatenate(case.soi_paths))
    index = -np.ones(case.tree.n_nodes, np.int64)
    index[nodes] = np.arange(len(nodes))
    keep = (index[case.tree.edges] >= 0).all(1)
    sub = VascularTree(case.tree.nodes[nodes], case.tree.radii[nodes], index[case.tree.edges[keep]])
    return tree_to_mesh(sub, spacing=spacing)


def write_case(data: dict, folder: Path, with_mesh: bool = True) -> Path:
    """Write one case folder (PNG 16-bit images, masks, geometry.json, centerline.json, mesh.vtp)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    for view, name in zip(data["views"], ("a", "b")):
        sitk.WriteImage(sitk.GetImageFromArray(view["image"]), str(folder / f"view_{name}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(view["vessels"]), str(folder / f"vessels_{name}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(view["soi"]), str(folder / f"soi_{name}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(view["soi_bits"]), str(folder / f"soibits_{name}.png"))
    geometry = {"frame": "DICOM patient LPS, isocentre at origin",
                "views": {"a": data["tags"][0], "b": data["tags"][1]},
                "soi": {name: [{"start": p[0].tolist(), "end": p[1].tolist()} for p in view]
                        for name, view in zip(("a", "b"), data["soi_points"])}}
    (folder / "geometry.json").write_text(json.dumps(geometry, indent=1), encoding="utf-8")
    centerline = {"frame": "LPS", "branches": [{"points": c["points"].round(4).tolist(),
                                                "radii": c["radii"].round(4).tolist()} for c in data["centerlines"]],
                  "stenosis": {k: v for k, v in data["case"].stenosis.items() if k != "nodes"},
                  "tree": data["case"].tree.to_dict()}
    (folder / "centerline.json").write_text(json.dumps(centerline), encoding="utf-8")
    if with_mesh:
        from ..meshes import RAS_TO_LPS, save_polydata_lps, transform

        # the tree is in LPS; the writer takes RAS and marks the file SPACE=LPS as Slicer does
        save_polydata_lps(transform(soi_mesh(data["case"]), RAS_TO_LPS), folder / "mesh.vtp")
    return folder


@dataclass
class XrayCase:
    """A case folder read back: images (float32), masks, geometries, SOI points and 3D truth."""

    images: list[np.ndarray]
    vessels: list[np.ndarray]
    soi_masks: list[np.ndarray]
    geometries: list
    soi_points: list[list[np.ndarray]]
    centerlines: list[dict]
    stenosis: dict
    folder: Path | None = None
    soi_bits: list[np.ndarray] | None = None

    def branch_mask(self, view: int, branch: int) -> np.ndarray:
        """Boolean mask of one SOI branch in one view (overlaps with other branches included)."""
        if self.soi_bits is not None:
            return (self.soi_bits[view] & (1 << branch)) > 0
        return self.soi_masks[view] == branch + 1


def load_case(folder: str | Path) -> XrayCase:
    """Read a case folder written by :func:`write_case`."""
    import SimpleITK as sitk

    folder = Path(folder)
    read = lambda name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))  # noqa: E731
    geometry = json.loads((folder / "geometry.json").read_text(encoding="utf-8"))
    centerline = json.loads((folder / "centerline.json").read_text(encoding="utf-8"))
    return XrayCase(
        images=[read(f"view_{v}.png").astype(np.float32) for v in "ab"],
        vessels=[read(f"vessels_{v}.png").astype(np.uint8) for v in "ab"],
        soi_masks=[read(f"soi_{v}.png").astype(np.uint8) for v in "ab"],
        geometries=[_carm(geometry["views"][v]) for v in "ab"],
        soi_points=[[np.array([b["start"], b["end"]]) for b in geometry["soi"][v]] for v in "ab"],
        centerlines=[{"points": np.array(b["points"]), "radii": np.array(b["radii"])} for b in centerline["branches"]],
        stenosis=centerline.get("stenosis", {}), folder=folder,
        soi_bits=[read(f"soibits_{v}.png").astype(np.uint8) for v in "ab"]
        if (folder / "soibits_a.png").is_file() else None)


@register_dataset("xray")
def write_xray_dataset(out: Path, count: int, seed: int = 0, progress=None, with_mesh: bool = True,
                       side_by_side: float = 0.0, lesion_range: tuple[float, float] = LESION_RANGE) -> Path:
    """``count`` case folders ``case_000 ...`` under ``out`` plus a ``dataset.json`` index.

    ``side_by_side``: the fraction of cases given a tube beside the SOI in one view (:func:`make_case`); the
    choice (case, view) is drawn from its own generator, so ``0`` writes the same cases as before.
    ``lesion_range``: the SOI lesions' % diameter stenosis range (:func:`make_case`).
    """
    from ..progress import as_reporter

    reporter = as_reporter(progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"case_{index:03d}"
        choice = np.random.default_rng([seed, index, 13])
        view = int(choice.integers(2)) if choice.uniform() < side_by_side else None
        write_case(make_case(seed * 100_003 + index, side_by_side=view, lesion_range=lesion_range), out / name, with_mesh)
        names.append(name)
        reporter((index + 1) / count, name)
    (out / "dataset.json").write_text(json.dumps(
        {"name": "VesselRecon X-ray two-view phantoms", "kind": "xray", "seed": seed, "cases": names,
         "side_by_side": side_by_side, "lesion_range_percent": list(lesion_range),
         "layout": "case_*/view_{a,b}.png, vessels_*, soi_*, geometry.json, centerline.json, mesh.vtp"}, indent=1), encoding="utf-8")
    return out


def list_cases(folder: str | Path) -> list[Path]:
    """Case folders of an ``xray`` dataset (or the folder itself when it is a case)."""
    folder = Path(folder)
    if (folder / "geometry.json").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "geometry.json").is_file())


def real_vs_phantom_figure(path: str | Path, shared: str | Path | None = None, seed: int = 0,
                           height: int = 256) -> Path:
    """README figure: the two real static-phantom frames (``samples/xa-phantom`` IM3, IM4, when the
    shared data are there) beside four phantom views, all windowed alike (1-99.5 percentiles)."""
    import logging

    from .gallery import _gray, _row, _save

    shared = Path(shared) if shared else Path(__file__).resolve().parents[3].parent / "shared"
    panels = []
    samples = shared / "samples" / "xa-phantom"
    if (samples / "IM3.dcm").is_file():
        from ..angio3d.dicom_io import default_frame, read_xa

        for name in ("IM3.dcm", "IM4.dcm"):
            run = read_xa(samples / name)[0]
            panels.append(_gray(run[default_frame(run)]))
    else:
        logging.getLogger(__name__).warning("no shared XA samples under %s: phantom frames only", shared)
    for k in range(4 if panels else 6):
        data = make_case(seed + k)
        panels.append(_gray(data["views"][k % 2]["image"].astype(float)))
    return _save(_row(panels, height=height), Path(path))

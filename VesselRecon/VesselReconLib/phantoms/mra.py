"""3D MRA (TOF), SWI (dark veins) and "micro" vessel phantoms for VC-Net.

A head ellipsoid (bright subcutaneous fat, scalp and a dark skull around a brain ellipsoid) fills
the field of view; the brain has a smooth grey/white-matter texture with dark CSF-like folds. For
TOF (``mra``) a circle of Willis is drawn with its topology and calibres (internal carotids 2.5-3
mm, basilar 3 mm, M1 2.4 mm, A1/P1 about 2 mm, communicating arteries about 1 mm, a PCom sometimes
missing) and space-colonisation forests (:func:`..tree.grow_tree`, Murray radii) grow from its M1,
A2 and P2 ends. Arterial signal falls with the path length from the slab entry (inflow
saturation: distal vessels are fainter). Venous sinuses (superior sagittal, transverse, straight)
are bright-ish unlabelled tubes (partly saturated venous inflow). Vessels are voxelised at the
(anisotropic) spacing (:func:`..geometry.tree_to_labelmap`) and blurred by a small point-spread
function (partial volume). A smooth multiplicative bias field and Rician noise finish the image.
Ground truth is the arterial labelmap.

Kinds: ``"mra"`` TOF as above; ``"swi"`` dark veins (SWI/MinIP-like) in bright tissue draining to
the surface; ``"micro"`` bright, dominated by 1-2 voxel vessels. The standard head (``shape=None``) is the same
in mm at any spacing (``full_shape(spacing)`` voxels, the slab's corners aligned): its head ellipsoid,
vessel tree and sinuses are laid out on the default grid, so a 0.3 mm rendering shows the same vessels as
the 0.5 x 0.5 x 0.8 mm one (voxel 0 lies ``(s - s_default) / 2`` from the default grid's voxel 0,
``meta["origin_mm"]`` of a crop); crops can be centred on the brain or on the circle of
Willis (``crop_centre="cow"``: small crops with no air, as real CoW crops are). Arrays are ``[k, j, i]``;
spacing ``(sx, sy, sz)`` mm; world position of voxel ``[k, j, i]`` is ``(i*sx, j*sy, k*sz)``.
Pure numpy (no torch): a numpy ``Generator`` for the noise fields, separable linear interpolation
(the same sample positions as trilinear resizing) and a small separable blur, so the phantoms (and
VCNet's Sample Data) work before PyTorch is installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import register_dataset, save_nifti, write_msd_dataset_json
from .geometry import tree_to_labelmap
from .tree import EllipsoidDomain, Root, TreeParams, VascularTree, grow_tree, merge_trees

FULL_SHAPE = (128, 448, 448)
FULL_SPACING = (0.5, 0.5, 0.8)
FIELD_OF_VIEW_MM = (224.0, 224.0, 102.4)  # (x, y, z) of the full slab
KINDS = ("mra", "swi", "micro")
BRAIN_SCALE = 0.86
INFLUENCE_MM = 20.0


@dataclass
class MRAPhantom:
    """A rendered case: image, vessel label and brain mask (``[k, j, i]``), spacing and tree."""

    image: np.ndarray
    label: np.ndarray
    brain_mask: np.ndarray
    spacing: tuple[float, float, float]
    kind: str
    seed: int
    tree: VascularTree
    meta: dict = field(default_factory=dict)

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return np.diag([*self.spacing, 1.0])


@dataclass
class KindStyle:
    """Contrast and tree settings of a phantom kind (intensities before bias and noise)."""

    dark: bool
    grey: float
    white: float
    scalp: float
    vessel_big: float
    vessel_small: float
    noise: float
    root_radius: float
    min_radius: float
    n_roots: int
    n_attractors: int
    roots_from: str  # "cow" (circle of Willis), "bottom" (arteries) or "surface" (veins / pial vessels)
    fat: float = 0.0  # subcutaneous fat (bright in TOF, T1-short); 0 = same as the scalp
    sinus: float = 0.0  # venous sinus intensity (0 = none)
    saturation_mm: float = 0.0  # inflow saturation length (0 = none)


STYLES = {
    "mra": KindStyle(False, 0.30, 0.26, 0.40, 1.0, 0.62, 0.045, 1.1, 0.27, 6, 3500, "cow", fat=0.85, sinus=0.55,
                     saturation_mm=140.0),
    "swi": KindStyle(True, 0.62, 0.55, 0.50, 0.08, 0.36, 0.045, 1.4, 0.3, 4, 3500, "surface"),
    "micro": KindStyle(False, 0.30, 0.26, 0.40, 0.85, 0.58, 0.04, 0.7, 0.28, 14, 5000, "surface", fat=0.85,
                       saturation_mm=200.0),
}
SATURATION_FLOOR = 0.5  # distal arterial signal never falls below this fraction
DISTAL_PATH_MM = 60.0  # inflow path (mm) of vessels that start away from the carotids and basilar


def _generator(seed: int) -> np.random.Generator:
    """The image-noise stream of a case (separate from the tree's ``default_rng(seed)`` stream)."""
    return np.random.default_rng([int(seed), 0x4D5241])


def resize_linear(volume: np.ndarray, size, align_corners: bool) -> np.ndarray:
    """Separable linear resize of a 3D float32 array to ``size``: the sample positions and edge clamping
    of trilinear interpolation with ``align_corners`` True (corner centres aligned) or False (half-pixel)."""
    out = np.asarray(volume, np.float32)
    for axis, n_out in enumerate(int(s) for s in size):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        if align_corners:
            pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
        else:
            pos = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        low = np.minimum(np.floor(pos).astype(np.intp), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        weight = (pos - low).astype(np.float32).reshape([-1 if d == axis else 1 for d in range(out.ndim)])
        first = np.take(out, low, axis=axis)
        out = first + (np.take(out, high, axis=axis) - first) * weight
    return out


def smooth_noise(shape, cell_mm: float, spacing, gen: np.random.Generator) -> np.ndarray:
    """Band-limited random field of unit scale: coarse Gaussian noise upsampled (linear, corners aligned)."""
    extent = np.asarray(shape) * np.asarray(spacing)[::-1]
    coarse = [max(2, int(np.ceil(e / cell_mm)) + 1) for e in extent]
    return resize_linear(gen.standard_normal(coarse, dtype=np.float32), shape, align_corners=True)


def _axes(shape, spacing, origin=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
    """World coordinates (mm) along k, j, i, broadcastable to ``shape``."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    return [k.reshape(-1, 1, 1) * np.float32(spacing[2]) + np.float32(origin[2]),
            j.reshape(1, -1, 1) * np.float32(spacing[1]) + np.float32(origin[1]),
            i.reshape(1, 1, -1) * np.float32(spacing[0]) + np.float32(origin[0])]


def full_shape(spacing) -> tuple[int, int, int]:
    """``(nk, nj, ni)`` of the full slab (the same head in mm) at ``spacing`` ``(sx, sy, sz)``."""
    return tuple(int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM[::-1], tuple(spacing)[::-1]))


def head_geometry(shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y, z mm) and semi-axes of the head ellipsoid fitted to the field of view."""
    fov = np.array([shape[2] * spacing[0], shape[1] * spacing[1], shape[0] * spacing[2]])
    centre = (fov - np.asarray(spacing)) / 2
    # The axial slab cuts through the head (as a TOF slab does): z semi-axis beyond the slab.
    radii = fov * np.array([0.40, 0.46, 0.75])
    return centre, radii


def ellipsoid_level(shape, spacing, centre, radii, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``sum(((x - c) / r)^2)`` on the grid (``<= 1`` inside), float32."""
    z, y, x = _axes(shape, spacing, origin)
    terms = [((a - np.float32(c)) / np.float32(r)) ** 2 for a, c, r in zip((x, y, z), centre, radii)]
    return (terms[0] + terms[1]) + terms[2]


def _roots(style: KindStyle, centre, radii, rng: np.random.Generator) -> list[Root]:
    roots = []
    for n in range(style.n_roots):
        angle = 2 * np.pi * (n / style.n_roots + 0.15 * rng.random())
        radius = style.root_radius * (0.8 + 0.4 * rng.random())
        if style.roots_from == "bottom":
            offset = 0.35 * np.array([np.cos(angle) * radii[0], np.sin(angle) * radii[1]])
            position = (centre[0] + offset[0], centre[1] + offset[1], 0.0)
            direction = (0.2 * np.cos(angle), 0.2 * np.sin(angle), 1.0)
        else:  # from the brain surface inwards (veins drain to the surface; pial micro vessels)
            polar = np.arccos(rng.uniform(-0.6, 0.6))
            unit = np.array([np.sin(polar) * np.cos(angle), np.sin(polar) * np.sin(angle), np.cos(polar)])
            position = tuple(centre + 0.97 * BRAIN_SCALE * radii * unit)
            direction = tuple(-unit)
        roots.append(Root(position, direction, radius))
    return roots


def cow_centre(centre, radii) -> np.ndarray:
    """Centre (x, y, z mm) of the circle of Willis: at the base of the brain, on the midline."""
    brain = np.asarray(radii) * BRAIN_SCALE
    return np.asarray(centre, float) + np.array([0.0, 0.05 * brain[1], -0.35 * brain[2]])


def _chain(points, radius: float, rng: np.random.Generator, step_mm: float = 1.0, wiggle_mm: float = 0.4):
    """A vessel polyline through control points, resampled every ``step_mm`` with a smooth wiggle."""
    points = np.asarray(points, float)
    out = [points[0]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step_mm)))
        out += [a + (b - a) * t for t in np.linspace(0, 1, n + 1)[1:]]
    out = np.asarray(out)
    if len(out) > 2:
        noise = np.cumsum(rng.normal(0, wiggle_mm * 0.3, out.shape), axis=0)
        noise -= np.linspace(noise[0], noise[-1], len(out))  # keep both ends in place
        out[1:-1] += noise[1:-1]
    radii = np.full(len(out), float(radius))
    edges = np.stack([np.arange(len(out) - 1), np.arange(1, len(out))], 1)
    return VascularTree(out, radii, edges)


def _path_from_start(tree: VascularTree) -> np.ndarray:
    """Path length (mm) of every node from its root along the tree."""
    dist = np.zeros(tree.n_nodes)
    parents = tree.parents()
    lengths = np.zeros(tree.n_nodes)
    if tree.n_edges:
        lengths[tree.edges[:, 1]] = np.linalg.norm(tree.nodes[tree.edges[:, 1]] - tree.nodes[tree.edges[:, 0]], axis=1)
    for node in tree.topological_order():
        if parents[node] >= 0:
            dist[node] = dist[parents[node]] + lengths[node]
    return dist


def circle_of_willis(centre, radii, rng: np.random.Generator) -> tuple[list[VascularTree], list[np.ndarray], list[Root]]:
    """Circle of Willis chains (ICA, basilar, M1, A1, ACom, A2, P1, PCom, P2), each chain's path
    offset from the slab entry, and the growth roots at the M1, A2 and P2 ends.

    Calibres (radius, mm): ICA 1.25-1.5, basilar 1.5, M1 1.2, A1/P1 0.95, A2/P2 0.9, ACom/PCom 0.5.
    """
    c = cow_centre(centre, radii)
    jitter = lambda scale=1.0: rng.normal(0, 1.5 * scale, 3)  # noqa: E731
    scale = lambda r: r * rng.uniform(0.88, 1.12)  # noqa: E731
    chains, offsets, roots = [], [], []

    def add(points, radius, offset):
        chain = _chain(points, scale(radius), rng)
        chains.append(chain)
        offsets.append(offset + _path_from_start(chain))
        return chain, offsets[-1][-1]

    top_basilar = c + np.array([0, -14, -1]) + jitter(0.5)
    _, basilar_len = add([c + np.array([0, -20, -c[2]]), c + np.array([0, -18, -12]) + jitter(), top_basilar], 1.5, 0.0)
    for side in (-1, 1):
        ica_top = c + np.array([side * 13, 4, 0]) + jitter(0.5)
        _, ica_len = add([c + np.array([side * 16, 2, -c[2]]), c + np.array([side * 18, 9, -12]) + jitter(),
                          c + np.array([side * 15, 8, -4]) + jitter(0.5), ica_top], rng.uniform(1.25, 1.5), 0.0)
        m1_end = c + np.array([side * 38, 6, 6]) + jitter()
        add([ica_top, c + np.array([side * 26, 5, 2]) + jitter(), m1_end], 1.2, ica_len)
        roots.append(Root(tuple(m1_end), (side * 1.0, 0.1, 0.4), scale(1.0)))
        a1_end = c + np.array([side * 2.5, 18, 3]) + jitter(0.5)
        _, a1_len = add([ica_top, c + np.array([side * 8, 13, 2]) + jitter(0.5), a1_end], 0.95, ica_len)
        a2_end = c + np.array([side * 3, 32, 22]) + jitter()
        add([a1_end, c + np.array([side * 3, 26, 10]) + jitter(0.5), a2_end], 0.9, ica_len + a1_len)
        roots.append(Root(tuple(a2_end), (0.0, 0.4, 1.0), scale(0.85)))
        p1_end = c + np.array([side * 9, -12, 0]) + jitter(0.5)
        _, p1_len = add([top_basilar, p1_end], 0.95, basilar_len)
        if rng.random() > 0.25:  # a PCom is missing in about a quarter of people
            add([p1_end, c + np.array([side * 12, -4, 0]) + jitter(0.3), ica_top], 0.5, basilar_len + p1_len)
        p2_end = c + np.array([side * 24, -32, 6]) + jitter()
        add([p1_end, c + np.array([side * 18, -22, 2]) + jitter(), p2_end], 0.9, basilar_len + p1_len)
        roots.append(Root(tuple(p2_end), (side * 0.4, -1.0, 0.3), scale(0.85)))
    acom = _chain([c + np.array([-2.5, 18, 3]), c + np.array([2.5, 18, 3])], 0.5, rng, wiggle_mm=0.1)
    chains.append(acom)
    offsets.append(DISTAL_PATH_MM + _path_from_start(acom))
    return chains, offsets, roots


def venous_sinuses(centre, radii, rng: np.random.Generator) -> VascularTree:
    """Superior sagittal, straight and transverse sinuses (radius 2.5-4 mm) on the brain surface."""
    brain = np.asarray(radii) * BRAIN_SCALE * 1.02
    c = np.asarray(centre, float)
    torcula = c + np.array([0.0, -brain[1] * 0.98, -0.2 * brain[2]])
    chains = []
    angles = np.linspace(np.deg2rad(20), np.deg2rad(100), 12)  # superior sagittal: over the top to the back
    sss = [c + np.array([0.0, -brain[1] * np.sin(a), brain[2] * np.cos(a)]) for a in angles]
    chains.append(_chain(sss + [torcula], rng.uniform(2.5, 3.5), rng, 2.0))
    chains.append(_chain([torcula, c + np.array([0.0, -0.4 * brain[1], 0.2 * brain[2]])], 2.2, rng, 2.0))
    for side in (-1, 1):
        arc = [c + np.array([side * brain[0] * np.sin(a), -brain[1] * np.cos(a), -0.2 * brain[2]])
               for a in np.linspace(0.05, np.deg2rad(75), 8)]
        sigmoid = arc[-1] + np.array([side * -4.0, 8.0, -0.6 * brain[2]])
        chains.append(_chain([torcula] + arc + [sigmoid], rng.uniform(2.8, 4.0), rng, 2.0))
    return merge_trees(*chains)


def grow_vessels(style: KindStyle, shape, spacing, seed: int) -> VascularTree:
    """The vessel forest of a case, grown inside the brain ellipsoid (from the circle of Willis for
    ``roots_from="cow"``). ``tree.generation`` holds each node's path length (mm) from the slab entry."""
    rng = np.random.default_rng(seed)
    centre, radii = head_geometry(shape, spacing)
    brain_radii = radii * BRAIN_SCALE
    scale = float(np.cbrt(np.prod(brain_radii) / np.prod(np.array([90.0, 103.0, 86.0]))))
    params = TreeParams(n_attractors=max(300, int(style.n_attractors * scale ** 1.5)),
                        step_mm=0.8 if style.min_radius < 0.3 else 1.0, influence_mm=INFLUENCE_MM * max(scale, 0.5),
                        kill_mm=1.8, root_radius=style.root_radius, min_radius=style.min_radius,
                        tortuosity=0.2, min_terminal_mm=2.0, seed=int(rng.integers(2**31)))
    if style.roots_from != "cow":
        tree = grow_tree(EllipsoidDomain(centre, brain_radii), _roots(style, centre, radii, rng), params)
        tree.generation = np.round(_path_from_start(tree)).astype(np.int32)
        return tree
    chains, offsets, roots = circle_of_willis(centre, radii, rng)
    forest = grow_tree(EllipsoidDomain(centre, brain_radii), roots, params)
    root_offsets = {}
    for root in roots:
        end = np.asarray(root.position)
        for chain, offset in zip(chains, offsets):
            if np.allclose(chain.nodes[-1], end):
                root_offsets[tuple(np.round(end, 6))] = float(offset[-1])
    forest_path = _path_from_start(forest)
    start_of = np.zeros(forest.n_nodes)
    parents = forest.parents()
    for node in forest.topological_order():
        parent = parents[node]
        if parent < 0:
            start_of[node] = root_offsets.get(tuple(np.round(forest.nodes[node], 6)), DISTAL_PATH_MM)
        else:
            start_of[node] = start_of[parent]
    for chain, offset in zip(chains, offsets):
        chain.generation = np.round(offset).astype(np.int32)
    forest.generation = np.round(start_of + forest_path).astype(np.int32)
    tree = merge_trees(*chains, forest)
    tree.meta["cow_chains"] = len(chains)
    return tree


def _blur3(volume: np.ndarray, sigma_vox) -> np.ndarray:
    """Small separable blur ``[a, 1-2a, a]`` per axis with ``a = sigma^2 / 2`` (same variance as a
    Gaussian of ``sigma`` voxels; for the sub-voxel point-spread function, sigma <= 0.8)."""
    out = np.array(volume, np.float32)
    for axis, sigma in enumerate(sigma_vox):
        a = np.float32(min(float(sigma) ** 2 / 2, 1 / 3))
        if a <= 0 or out.shape[axis] < 2:
            continue
        head = [slice(None)] * out.ndim
        tail = [slice(None)] * out.ndim
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        centre = out * (1 - 2 * a)
        centre[tuple(head)] += a * out[tuple(tail)]
        centre[tuple(tail)] += a * out[tuple(head)]
        out = centre
    return out


PSF_MM = 0.22


def vessel_contrast(tree: VascularTree, style: KindStyle, shape, spacing, origin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary label, the PSF-blurred vessel intensity map and the blurred vessel coverage.

    Intensity per node: radius-dependent (partial volume of thin vessels) times the inflow
    saturation ``floor + (1 - floor) exp(-path / saturation_mm)`` (path length in ``tree.generation``).
    """
    radius = np.asarray(tree.radii, np.float32)
    value = style.vessel_small + (style.vessel_big - style.vessel_small) * np.tanh(radius)
    if style.saturation_mm > 0 and tree.generation is not None:
        path = np.asarray(tree.generation, np.float32)
        value = value * (SATURATION_FLOOR + (1 - SATURATION_FLOOR) * np.exp(-path / style.saturation_mm))
    return _draw_tubes(tree, value, shape, spacing, origin)


def _draw_tubes(tree: VascularTree, value: np.ndarray, shape, spacing, origin, top: float = 1.25):
    """Voxelise tubes with per-node intensities (254 levels up to ``top``): label, blurred intensity
    and blurred coverage."""
    binned = tree.copy()
    binned.generation = np.clip(np.round(np.asarray(value) / top * 253), 0, 253).astype(np.int32)
    level = tree_to_labelmap(binned, shape, spacing, origin, label_by="generation")  # bin + 1, 0 outside
    label = (level > 0).astype(np.uint8)
    lut = np.maximum(np.arange(256, dtype=np.float32) - 1, 0) * (top / 253)
    lut[0] = 0.0
    both = np.stack([lut[level], label.astype(np.float32)])
    psf = (0, PSF_MM / spacing[2], PSF_MM / spacing[1], PSF_MM / spacing[0])
    blurred = _blur3(both, psf)
    return label, blurred[0], blurred[1]


def tissue(shape, spacing, origin, head, style: KindStyle, gen: np.random.Generator) -> np.ndarray:
    """Head tissue intensities: fat and scalp, skull and a grey/white-matter texture with CSF-like folds.

    Rendered at half in-plane resolution (the texture is smooth) and upsampled linearly (half-pixel).
    :param head: ``(centre, radii)`` of the head ellipsoid.
    """
    coarse = (shape[0], max(2, shape[1] // 2), max(2, shape[2] // 2))
    coarse_spacing = (spacing[0] * shape[2] / coarse[2], spacing[1] * shape[1] / coarse[1], spacing[2])
    shift = (np.asarray(coarse_spacing) - np.asarray(spacing)) / 2
    level = ellipsoid_level(coarse, coarse_spacing, head[0], head[1], np.asarray(origin) + shift)
    folds = smooth_noise(coarse, 6.0, coarse_spacing, gen)
    white = 1 / (1 + np.exp(-3.0 * (folds + 0.2)))
    matter = np.float32(style.grey) + np.float32(style.white - style.grey) * white
    matter *= 1 + np.float32(0.06) * smooth_noise(coarse, 2.0, coarse_spacing, gen)
    matter *= 1 - np.float32(0.3 if style.dark else 0.35) * np.exp(-((folds + 0.9) / 0.12) ** 2)
    inner = BRAIN_SCALE ** 2
    scalp = np.where(level > 0.93, np.float32(style.fat or style.scalp), np.float32(style.scalp))
    shell = np.where(level > (1 + inner) / 2, scalp, np.float32(0.06))
    image = np.where(level <= inner, matter, np.where(level <= 1, shell, np.float32(0.0))).astype(np.float32)
    return resize_linear(image, shape, align_corners=False)


def brain_mask(shape, spacing, origin, head) -> np.ndarray:
    """The brain ellipsoid as a ``uint8`` mask."""
    level = ellipsoid_level(shape, spacing, head[0], head[1] * BRAIN_SCALE, origin)
    return (level <= 1).astype(np.uint8)


def bias_field(shape, spacing, gen: np.random.Generator, strength: float = 0.18) -> np.ndarray:
    """Smooth multiplicative field ``exp(strength * noise)`` with ~60 mm correlation."""
    field = smooth_noise(shape, 60.0, spacing, gen)
    field *= np.float32(strength)
    return np.exp(field, out=field)


def add_rician_noise(image: np.ndarray, sigma: float, gen: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (Rician; Rayleigh where the signal is 0)."""
    real = gen.standard_normal(image.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += image
    imag = gen.standard_normal(image.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    return np.hypot(real, imag, out=real)


def edge_centre(centre, radii, rng: np.random.Generator) -> np.ndarray:
    """A point (x, y, z mm) on the skull at a random in-plane angle and height: crops around it hold air,
    bright fat, scalp, skull and the brain surface (hard negatives for training)."""
    angle = rng.uniform(0, 2 * np.pi)
    z = centre[2] + rng.uniform(-0.3, 0.3) * radii[2]
    scale = np.sqrt(max(1 - ((z - centre[2]) / radii[2]) ** 2, 0.0))  # the slab's cross-section at that height
    return np.array([centre[0] + 0.93 * scale * radii[0] * np.cos(angle),
                     centre[1] + 0.93 * scale * radii[1] * np.sin(angle), z])


def crop_start(full_shape, crop, rng: np.random.Generator, centre_kji=None) -> tuple[int, int, int]:
    """A random crop start inside the brain's central region (vessel-rich), or around ``centre_kji``
    (voxels; e.g. the circle of Willis), clipped to the volume."""
    starts = []
    for axis, (n, c, spread) in enumerate(zip(full_shape, crop, (0.1, 0.2, 0.2))):
        if centre_kji is None:
            centre = n / 2 + rng.uniform(-spread, spread) * n
        else:
            centre = centre_kji[axis] + rng.uniform(-0.15, 0.15) * c
        starts.append(int(np.clip(round(centre - c / 2), 0, max(n - c, 0))))
    return tuple(starts)


def render_mra(kind: str = "mra", shape=None, spacing=FULL_SPACING, seed: int = 0,
               crop: tuple[int, int, int] | None = None, start: tuple[int, int, int] | None = None,
               crop_centre: str = "brain") -> MRAPhantom:
    """Render one phantom case (or a crop of it).

    :param kind: ``mra`` (bright arteries), ``swi`` (dark veins) or ``micro`` (1-2 voxel vessels).
    :param shape: ``(nk, nj, ni)`` of the whole head slab; default ``full_shape(spacing)`` (the same
        224 x 224 x 102 mm head at any spacing: 448x448x128 at the default spacing).
    :param spacing: ``(sx, sy, sz)`` in mm (default 0.5 x 0.5 x 0.8, anisotropic).
    :param seed: makes the case reproducible.
    :param crop: render only a ``(nk, nj, ni)`` crop of the slab (same head, tree and spacing);
        ``start`` is its first voxel (default: a seeded random crop of the central brain, of the
        circle of Willis with ``crop_centre="cow"``, or across the head's edge with ``crop_centre="edge"``:
        air, bright fat, scalp, skull and the brain surface).
    """
    if kind not in STYLES:
        raise ValueError(f"Unknown MRA phantom kind {kind!r}; choose one of {', '.join(KINDS)}.")
    style = STYLES[kind]
    spacing = tuple(float(s) for s in spacing)
    full = tuple(int(s) for s in (shape or full_shape(spacing)))
    grid = tuple(int(s) for s in (crop or full))
    if shape is None:  # the standard head: the same head, tree and sinuses in mm at any spacing
        geometry_grid, geometry_spacing = FULL_SHAPE, FULL_SPACING
        shift = (np.asarray(spacing) - np.asarray(FULL_SPACING)) / 2  # voxel 0's centre when the slab corners align
    else:
        geometry_grid, geometry_spacing, shift = full, spacing, np.zeros(3)
    head = head_geometry(geometry_grid, geometry_spacing)
    if start is None:
        centre_kji = None
        if crop_centre in ("cow", "edge"):
            point = cow_centre(*head) if crop_centre == "cow" else edge_centre(*head, np.random.default_rng(seed + 13))
            point = point - shift
            centre_kji = (point[2] / spacing[2], point[1] / spacing[1], point[0] / spacing[0])
        start = crop_start(full, grid, np.random.default_rng(seed + 7), centre_kji) if crop else (0, 0, 0)
    origin = tuple(float(v) for v in np.array([start[2] * spacing[0], start[1] * spacing[1], start[0] * spacing[2]]) + shift)
    gen = _generator(seed)
    tree = grow_vessels(style, geometry_grid, geometry_spacing, seed)
    label, vessels, coverage = vessel_contrast(tree, style, grid, spacing, origin)
    brain = brain_mask(grid, spacing, origin, head)
    label *= brain
    image = tissue(grid, spacing, origin, head, style, gen)
    if style.sinus > 0:
        sinuses = venous_sinuses(*head, np.random.default_rng(seed + 11))
        _, sinus_value, sinus_cover = _draw_tubes(sinuses, np.full(sinuses.n_nodes, style.sinus), grid, spacing, origin)
        image *= 1 - np.clip(sinus_cover, 0, 1)
        image += sinus_value
    image *= 1 - np.clip(coverage, 0, 1)
    image += vessels
    image *= bias_field(grid, spacing, gen)
    image = add_rician_noise(image, style.noise, gen)
    image *= np.float32(1000.0)
    meta = {"kind": kind, "seed": seed, "shape": list(grid), "head_shape": list(full), "start": list(start),
            "origin_mm": [round(v, 4) for v in origin],
            "spacing": list(spacing), "vessel_fraction": float(label.mean()), "tree_nodes": int(tree.n_nodes),
            "dark_vessels": style.dark, "crop_centre": crop_centre}
    return MRAPhantom(image.astype(np.float32, copy=False), label, brain, spacing, kind, seed, tree, meta)


TRAIN_CROP = (48, 160, 160)


def write_case(phantom: MRAPhantom, out_dir: Path, case: str) -> dict:
    """Write image, label and brain mask NIfTI files of one case; return its dataset.json entry."""
    image = out_dir / "imagesTr" / f"{case}.nii.gz"
    label = out_dir / "labelsTr" / f"{case}.nii.gz"
    mask = out_dir / "masksTr" / f"{case}.nii.gz"
    save_nifti(phantom.image.astype(np.float32), phantom.spacing, (0, 0, 0), image)
    save_nifti(phantom.label.astype(np.uint8), phantom.spacing, (0, 0, 0), label)
    save_nifti(phantom.brain_mask.astype(np.uint8), phantom.spacing, (0, 0, 0), mask)
    return {"image": image, "label": label, "mask": mask, "seed": phantom.seed,
            "vessel_fraction": round(phantom.meta["vessel_fraction"], 6)}


def write_mra_dataset(out_dir: Path, count: int, seed: int, kind: str = "mra", progress=None,
                      crop=TRAIN_CROP, spacing=FULL_SPACING, micro_fraction: float = 0.34,
                      cow_fraction: float = 0.5, spacing_jitter: float = 0.0, edge_fraction: float = 0.0) -> Path:
    """Write an MSD-style dataset (imagesTr, labelsTr, dataset.json; plus masksTr brain masks).

    :param kind: ``mra`` (a ``micro_fraction`` of the cases use the micro variant) or ``swi``.
    :param crop: ``(nk, nj, ni)`` crop of the full slab written per case (small for CPU training);
        ``None`` writes the whole slab.
    :param cow_fraction: for ``mra``, the fraction of (non-micro) crops centred on the circle of
        Willis (no air in the crop) rather than on the brain.
    :param edge_fraction: for ``mra``, the fraction of (non-micro) crops taken across the head's edge
        (fat and scalp beside the brain surface; drawn before ``cow_fraction``).
    :param spacing_jitter: each case's spacing is ``spacing`` times a random factor in
        ``[1 - jitter, 1 + jitter]`` (in-plane and slice factors drawn separately).
    """
    out_dir = Path(out_dir)
    entries, kinds, spacings = [], [], []
    micro_every = max(1, round(1 / micro_fraction)) if kind == "mra" and micro_fraction > 0 else 0
    rng = np.random.default_rng(seed)
    for index in range(count):
        case_kind = "micro" if micro_every and index % micro_every == micro_every - 1 else kind
        case_seed = seed * 100_003 + index
        in_plane, through = rng.uniform(1 - spacing_jitter, 1 + spacing_jitter, 2)
        case_spacing = (spacing[0] * in_plane, spacing[1] * in_plane, spacing[2] * through)
        centre = "brain"
        if case_kind == "mra" and edge_fraction > 0 and rng.random() < edge_fraction:
            centre = "edge"
        elif case_kind == "mra" and rng.random() < cow_fraction:
            centre = "cow"
        kinds.append(case_kind if centre == "brain" else f"{case_kind}-{centre}")
        spacings.append([round(s, 4) for s in case_spacing])
        phantom = render_mra(case_kind, None, case_spacing, case_seed, crop=crop, crop_centre=centre)
        entries.append(write_case(phantom, out_dir, f"{kind}_{index:03d}"))
        if progress is not None:
            progress((index + 1) / count, f"{kind} case {index + 1}/{count}")
    write_msd_dataset_json(
        out_dir, f"VesselRecon-{kind.upper()}", {"0": "SWI" if kind == "swi" else "MRA-TOF"},
        {"0": "background", "1": "vessel"}, entries,
        description=f"Synthetic {kind} vessel phantoms (VesselReconLib.phantoms.mra); masksTr holds brain masks.",
        extra={"spacing": list(spacing), "seed": seed, "dark_vessels": kind == "swi"})
    (out_dir / "phantom.json").write_text(json.dumps({"kind": kind, "case_kinds": kinds, "count": count, "seed": seed,
                                                      "crop": list(crop) if crop else None, "spacing": list(spacing),
                                                      "case_spacings": spacings}, indent=2), encoding="utf-8")
    return out_dir


@register_dataset("mra")
def write_mra(out_dir: Path, count: int, seed: int, progress=None, **options) -> Path:
    """``vesselrecon phantoms mra``: bright-vessel TOF cases (a third of them micro-vessel cases, half
    of the others centred on the circle of Willis; spacing varied by +-10 %)."""
    options.setdefault("spacing_jitter", 0.1)
    return write_mra_dataset(out_dir, count, seed, "mra", progress, **options)


@register_dataset("swi")
def write_swi(out_dir: Path, count: int, seed: int, progress=None, **options) -> Path:
    """``vesselrecon phantoms swi``: dark-vein SWI cases."""
    return write_mra_dataset(out_dir, count, seed, "swi", progress, **options)

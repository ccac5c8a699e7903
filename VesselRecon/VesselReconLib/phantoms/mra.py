"""3D MRA (TOF), SWI (dark veins) and "micro" vessel phantoms for VC-Net.

A head ellipsoid (scalp and skull shell around a brain ellipsoid) fills the field of view; the brain
has a smooth grey/white-matter texture. A space-colonisation vessel forest grows inside the brain
(:func:`..tree.grow_tree`, Murray radii), is voxelised at the anisotropic spacing
(:func:`..geometry.tree_to_labelmap`) and drawn with a radius-dependent contrast blurred by a small
point-spread function (partial volume). A smooth multiplicative bias field and Rician noise finish
the image. Ground truth is the vessel labelmap.

Kinds: ``"mra"`` bright arteries entering from below; ``"swi"`` dark veins (SWI/MinIP-like) in
bright tissue; ``"micro"`` bright, dominated by 1-2 voxel vessels. Arrays are ``[k, j, i]``;
spacing ``(sx, sy, sz)`` mm; world position of voxel ``[k, j, i]`` is ``(i*sx, j*sy, k*sz)``.
Heavy voxel work runs as torch tensor ops (interpolation, separable convolution, noise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import register_dataset, save_nifti, write_msd_dataset_json
from .geometry import tree_to_labelmap
from .tree import EllipsoidDomain, Root, TreeParams, VascularTree, grow_tree

FULL_SHAPE = (128, 448, 448)
FULL_SPACING = (0.5, 0.5, 0.8)
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
    roots_from: str  # "bottom" (arteries) or "surface" (veins / pial micro vessels)


STYLES = {
    "mra": KindStyle(False, 0.30, 0.26, 0.45, 1.0, 0.62, 0.045, 1.8, 0.35, 3, 3500, "bottom"),
    "swi": KindStyle(True, 0.62, 0.55, 0.50, 0.08, 0.36, 0.045, 1.4, 0.3, 4, 3500, "surface"),
    "micro": KindStyle(False, 0.30, 0.26, 0.45, 0.85, 0.58, 0.04, 0.7, 0.28, 14, 5000, "surface"),
}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def smooth_noise(shape, cell_mm: float, spacing, gen: torch.Generator) -> torch.Tensor:
    """Band-limited random field of unit scale: coarse Gaussian noise upsampled trilinearly."""
    extent = np.asarray(shape) * np.asarray(spacing)[::-1]
    coarse = [max(2, int(np.ceil(e / cell_mm)) + 1) for e in extent]
    field = torch.randn(1, 1, *coarse, generator=gen)
    return F.interpolate(field, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0, 0]


def _axes(shape, spacing, origin=(0.0, 0.0, 0.0)) -> list[torch.Tensor]:
    """World coordinates (mm) along k, j, i, broadcastable to ``shape``."""
    k, j, i = (torch.arange(n, dtype=torch.float32) for n in shape)
    return [k.view(-1, 1, 1) * spacing[2] + origin[2], j.view(1, -1, 1) * spacing[1] + origin[1],
            i.view(1, 1, -1) * spacing[0] + origin[0]]


def head_geometry(shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y, z mm) and semi-axes of the head ellipsoid fitted to the field of view."""
    fov = np.array([shape[2] * spacing[0], shape[1] * spacing[1], shape[0] * spacing[2]])
    centre = (fov - np.asarray(spacing)) / 2
    # The axial slab cuts through the head (as a TOF slab does): z semi-axis beyond the slab.
    radii = fov * np.array([0.40, 0.46, 0.75])
    return centre, radii


def ellipsoid_level(shape, spacing, centre, radii, origin=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """``sum(((x - c) / r)^2)`` on the grid (``<= 1`` inside)."""
    z, y, x = _axes(shape, spacing, origin)
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


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


def grow_vessels(style: KindStyle, shape, spacing, seed: int) -> VascularTree:
    """The vessel forest of a case, grown inside the brain ellipsoid."""
    rng = np.random.default_rng(seed)
    centre, radii = head_geometry(shape, spacing)
    brain_radii = radii * BRAIN_SCALE
    scale = float(np.cbrt(np.prod(brain_radii) / np.prod(np.array([90.0, 103.0, 86.0]))))
    params = TreeParams(n_attractors=max(300, int(style.n_attractors * scale ** 1.5)),
                        step_mm=0.8 if style.min_radius < 0.3 else 1.0, influence_mm=INFLUENCE_MM * max(scale, 0.5),
                        kill_mm=1.8, root_radius=style.root_radius, min_radius=style.min_radius,
                        tortuosity=0.2, min_terminal_mm=2.0, seed=int(rng.integers(2**31)))
    return grow_tree(EllipsoidDomain(centre, brain_radii), _roots(style, centre, radii, rng), params)


def _blur3(volume: torch.Tensor, sigma_vox) -> torch.Tensor:
    """Small separable blur ``[a, 1-2a, a]`` per axis with ``a = sigma^2 / 2`` (same variance as a
    Gaussian of ``sigma`` voxels; for the sub-voxel point-spread function, sigma <= 0.8)."""
    out = volume.clone()
    for axis, sigma in enumerate(sigma_vox):
        a = min(float(sigma) ** 2 / 2, 1 / 3)
        if a <= 0 or out.shape[axis] < 2:
            continue
        centre = out * (1 - 2 * a)
        length = out.shape[axis]
        centre.narrow(axis, 1, length - 1).add_(out.narrow(axis, 0, length - 1), alpha=a)
        centre.narrow(axis, 0, length - 1).add_(out.narrow(axis, 1, length - 1), alpha=a)
        out = centre
    return out


PSF_MM = 0.22


def vessel_contrast(tree: VascularTree, style: KindStyle, shape, spacing, origin) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Binary label, the PSF-blurred vessel intensity map and the blurred vessel coverage."""
    binned = tree.copy()
    binned.generation = np.clip(np.round(tree.radii / 0.05), 1, 254).astype(np.int32)
    radius_bin = tree_to_labelmap(binned, shape, spacing, origin, label_by="generation")
    label = (radius_bin > 0).astype(np.uint8)
    radius = np.maximum(np.arange(256, dtype=np.float32) * 0.05 - 0.05, 0)
    lut = (style.vessel_small + (style.vessel_big - style.vessel_small) * np.tanh(radius)).astype(np.float32)
    lut[0] = 0.0
    both = torch.stack([torch.from_numpy(lut[radius_bin]), torch.from_numpy(label).float()])
    psf = (0, PSF_MM / spacing[2], PSF_MM / spacing[1], PSF_MM / spacing[0])
    blurred = _blur3(both, psf)
    return label, blurred[0], blurred[1]


def tissue(shape, spacing, origin, head, style: KindStyle, gen: torch.Generator) -> torch.Tensor:
    """Head tissue intensities: scalp, skull and a grey/white-matter texture with CSF-like folds.

    Rendered at half in-plane resolution (the texture is smooth) and upsampled trilinearly.
    :param head: ``(centre, radii)`` of the head ellipsoid.
    """
    coarse = (shape[0], max(2, shape[1] // 2), max(2, shape[2] // 2))
    coarse_spacing = (spacing[0] * shape[2] / coarse[2], spacing[1] * shape[1] / coarse[1], spacing[2])
    shift = (np.asarray(coarse_spacing) - np.asarray(spacing)) / 2
    level = ellipsoid_level(coarse, coarse_spacing, head[0], head[1], np.asarray(origin) + shift)
    folds = smooth_noise(coarse, 6.0, coarse_spacing, gen)
    white = torch.sigmoid(3.0 * (folds + 0.2))
    matter = style.grey + (style.white - style.grey) * white
    matter.mul_(1 + 0.06 * smooth_noise(coarse, 2.0, coarse_spacing, gen))
    matter.mul_(1 - (0.3 if style.dark else 0.35) * torch.exp(-((folds + 0.9) / 0.12) ** 2))
    inner = BRAIN_SCALE ** 2
    shell = torch.where(level > (1 + inner) / 2, torch.tensor(style.scalp), torch.tensor(0.06))
    image = torch.where(level <= inner, matter, torch.where(level <= 1, shell, torch.zeros(())))
    return F.interpolate(image[None, None], size=tuple(shape), mode="trilinear", align_corners=False)[0, 0]


def brain_mask(shape, spacing, origin, head) -> np.ndarray:
    """The brain ellipsoid as a ``uint8`` mask."""
    level = ellipsoid_level(shape, spacing, head[0], head[1] * BRAIN_SCALE, origin)
    return (level <= 1).numpy().astype(np.uint8)


def bias_field(shape, spacing, gen: torch.Generator, strength: float = 0.18) -> torch.Tensor:
    """Smooth multiplicative field ``exp(strength * noise)`` with ~60 mm correlation."""
    return smooth_noise(shape, 60.0, spacing, gen).mul_(strength).exp_()


def add_rician_noise(image: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Magnitude of the image plus complex Gaussian noise (Rician; Rayleigh where the signal is 0)."""
    real = torch.randn(image.shape, generator=gen).mul_(sigma).add_(image)
    imag = torch.randn(image.shape, generator=gen).mul_(sigma)
    return real.mul_(real).addcmul_(imag, imag).sqrt_()


def crop_start(full_shape, crop, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random crop start inside the brain's central region (vessel-rich), clipped to the volume."""
    starts = []
    for n, c, spread in zip(full_shape, crop, (0.1, 0.2, 0.2)):
        centre = n / 2 + rng.uniform(-spread, spread) * n
        starts.append(int(np.clip(round(centre - c / 2), 0, max(n - c, 0))))
    return tuple(starts)


def render_mra(kind: str = "mra", shape=FULL_SHAPE, spacing=FULL_SPACING, seed: int = 0,
               crop: tuple[int, int, int] | None = None, start: tuple[int, int, int] | None = None) -> MRAPhantom:
    """Render one phantom case (or a crop of it).

    :param kind: ``mra`` (bright arteries), ``swi`` (dark veins) or ``micro`` (1-2 voxel vessels).
    :param shape: ``(nk, nj, ni)`` of the whole head slab; default the full-size 448x448x128.
    :param spacing: ``(sx, sy, sz)`` in mm (default 0.5 x 0.5 x 0.8, anisotropic).
    :param seed: makes the case reproducible.
    :param crop: render only a ``(nk, nj, ni)`` crop of the slab (same head, tree and spacing);
        ``start`` is its first voxel (default: a seeded random crop of the central brain).
    """
    if kind not in STYLES:
        raise ValueError(f"Unknown MRA phantom kind {kind!r}; choose one of {', '.join(KINDS)}.")
    style = STYLES[kind]
    full = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    grid = tuple(int(s) for s in (crop or full))
    if start is None:
        start = crop_start(full, grid, np.random.default_rng(seed + 7)) if crop else (0, 0, 0)
    origin = (start[2] * spacing[0], start[1] * spacing[1], start[0] * spacing[2])
    head = head_geometry(full, spacing)
    gen = _generator(seed)
    tree = grow_vessels(style, full, spacing, seed)
    label, vessels, coverage = vessel_contrast(tree, style, grid, spacing, origin)
    brain = brain_mask(grid, spacing, origin, head)
    label *= brain
    image = tissue(grid, spacing, origin, head, style, gen)
    image.mul_(1 - coverage.clamp_(0, 1)).add_(vessels)
    image.mul_(bias_field(grid, spacing, gen))
    image = add_rician_noise(image, style.noise, gen).mul_(1000.0)
    meta = {"kind": kind, "seed": seed, "shape": list(grid), "head_shape": list(full), "start": list(start),
            "spacing": list(spacing), "vessel_fraction": float(label.mean()), "tree_nodes": int(tree.n_nodes),
            "dark_vessels": style.dark}
    return MRAPhantom(image.numpy(), label, brain, spacing, kind, seed, tree, meta)


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
                      crop=TRAIN_CROP, spacing=FULL_SPACING, micro_fraction: float = 0.34) -> Path:
    """Write an MSD-style dataset (imagesTr, labelsTr, dataset.json; plus masksTr brain masks).

    :param kind: ``mra`` (a ``micro_fraction`` of the cases use the micro variant) or ``swi``.
    :param crop: ``(nk, nj, ni)`` crop of the full 448 x 448 x 128 slab written per case (small
        for CPU training); ``None`` writes the whole slab.
    """
    out_dir = Path(out_dir)
    entries, kinds = [], []
    micro_every = max(1, round(1 / micro_fraction)) if kind == "mra" and micro_fraction > 0 else 0
    for index in range(count):
        case_kind = "micro" if micro_every and index % micro_every == micro_every - 1 else kind
        case_seed = seed * 100_003 + index
        kinds.append(case_kind)
        entries.append(write_case(render_mra(case_kind, FULL_SHAPE, spacing, case_seed, crop=crop), out_dir, f"{kind}_{index:03d}"))
        if progress is not None:
            progress((index + 1) / count, f"{kind} case {index + 1}/{count}")
    write_msd_dataset_json(
        out_dir, f"VesselRecon-{kind.upper()}", {"0": "SWI" if kind == "swi" else "MRA-TOF"},
        {"0": "background", "1": "vessel"}, entries,
        description=f"Synthetic {kind} vessel phantoms (VesselReconLib.phantoms.mra); masksTr holds brain masks.",
        extra={"spacing": list(spacing), "seed": seed, "dark_vessels": kind == "swi"})
    (out_dir / "phantom.json").write_text(json.dumps({"kind": kind, "case_kinds": kinds, "count": count, "seed": seed,
                                                      "crop": list(crop) if crop else None, "spacing": list(spacing)}, indent=2))
    return out_dir


@register_dataset("mra")
def write_mra(out_dir: Path, count: int, seed: int, progress=None, **options) -> Path:
    """``vesselrecon phantoms mra``: bright-vessel TOF cases (a third of them micro-vessel cases)."""
    return write_mra_dataset(out_dir, count, seed, "mra", progress, **options)


@register_dataset("swi")
def write_swi(out_dir: Path, count: int, seed: int, progress=None, **options) -> Path:
    """``vesselrecon phantoms swi``: dark-vein SWI cases."""
    return write_mra_dataset(out_dir, count, seed, "swi", progress, **options)

"""Contrast-enhanced (portal-venous) liver CT phantom with portal and hepatic venous trees, as thick slices.

Geometry: a smooth random ellipsoid-like organ blob (the "liver") fills most of the field of view;
two vessel trees are grown inside it by space colonisation (:func:`.tree.grow_tree` in a
:class:`.tree.MaskDomain`): a portal tree (label 1) entering at an inferior-medial hilum and a
hepatic venous tree (label 2) draining towards a superior outlet (the IVC side). Root calibres are
clinical: portal trunk radius 4-7 mm, hepatic vein 3.5-6 mm at the outlet, down to 0.7 mm leaves
(Murray's law in between). Zero to three tumours (hypodense, some with an enhancing rim) are
distractors.

Appearance (HU, portal-venous phase), drawn per case from ranges measured on real CT
(:data:`APPEARANCE`): inside the liver of 3D-IRCADb-01 patient 1.7 the parenchyma is 120 HU
(5-95 %: 97-141 HU) and the labelled vessels 144 HU (113-181 HU), i.e. a vessel/parenchyma
contrast of only 1-3 parenchyma standard deviations; the 20 LVSD slabs (windowed uint8) show the
same ratio (vessels 2-3 robust standard deviations above the parenchyma). So the phantom draws the
parenchyma level, a smooth two-scale texture, the portal and hepatic contrasts (15-110 HU above the
parenchyma, varying along the vessels), an in-plane point-spread blur and spatially correlated
noise (8-25 HU, clinical dose) per case. The old fixed 110/220/190 HU with 12 HU white noise gave a
contrast-to-noise ratio of 9, which real CT never has.

Partial volume: the scene is rendered on a high-resolution grid (same in-plane spacing, slices
``hires_z_mm`` thick) with a sub-voxel soft vessel occupancy ``clip(0.5 − sdf/Δx, 0, 1)`` from the
exact tree SDF, and each thick slice is the *mean* of the high-resolution slices of its slab. The
slab is the whole slice gap (contiguous 5 mm slices) or, with ``thin_slab``, a random part of it (a
thin slice kept every few slices, the 3D-IRCADb setting of 1.6 mm slices every 4.8 mm).

Ground truth at both resolutions: the binary vessel labelmap (voxel centre inside the vessel union)
and the exact signed distance (mm, negative inside), plus the surface mesh (:meth:`CTPhantom.mesh`).
Arrays are KJI (``[z, y, x]``); spacing and origin are (x, y, z) in RAS mm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .geometry import tree_to_labelmap, tree_to_mesh, tree_to_sdf
from .tree import MaskDomain, Root, TreeParams, VascularTree, grow_tree

HU = {"fat": -90.0, "soft_tissue": 50.0, "liver": 110.0, "portal": 220.0, "hepatic": 190.0}
"""Nominal levels (the ``fixed_appearance`` phantom of older releases and the outside tissues)."""
APPEARANCE = {"liver_hu": (90.0, 135.0), "portal_contrast_hu": (15.0, 110.0), "hepatic_ratio": (0.5, 1.1),
              "texture_hu": (3.0, 10.0), "texture_mm": (1.5, 4.0), "noise_hu": (8.0, 25.0),
              "psf_mm": (0.3, 0.7), "tumours": (0, 3), "tumour_radius_mm": (4.0, 16.0),
              "tumour_contrast_hu": (-60.0, -15.0), "root_scale": (0.9, 1.5)}
"""Per-case appearance ranges (uniform draws), measured on 3D-IRCADb-01 1.7 and the LVSD slabs (module docs)."""


@dataclass
class CTPhantomParams:
    """Size, sampling and appearance of one CT phantom.

    :param shape: thick-slice grid ``(slices, rows, columns)``; the paper's size is (16, 512, 512),
        tests and training use in-plane crops such as (16, 128, 128).
    :param spacing: thick-slice spacing ``(Δx, Δy, Δz)`` mm.
    :param hires_z_mm: slice spacing of the high-resolution rendering; must divide ``Δz``.
    :param fixed_appearance: the nominal HU levels and ``noise_hu`` white noise instead of per-case
        realistic draws from :data:`APPEARANCE`.
    :param thin_slab: thick slices average a random part of the slice gap (thin slices kept
        sparsely) instead of the whole gap.
    :param arteries: also render an **unlabelled hepatic arterial tree** (:data:`ARTERIES`): thin
        enhancing vessels from the hilum that real portal-venous CT shows and a portal ∪ venous
        reference (3D-IRCADb) does not label, i.e. realistic false-positive distractors. Off by
        default (earlier phantoms stay bit-identical); its draws use their own random stream.
    """

    shape: tuple[int, int, int] = (16, 128, 128)
    spacing: tuple[float, float, float] = (0.7, 0.7, 5.0)
    hires_z_mm: float = 1.0
    noise_hu: float = 12.0
    n_attractors: int = 350
    min_radius_mm: float = 0.7
    seed: int = 0
    fixed_appearance: bool = False
    thin_slab: bool = False
    arteries: bool = False

    def __post_init__(self):
        if len(self.shape) != 3 or min(self.shape) < 2:
            raise ValueError(f"shape={tuple(self.shape)} must be three sizes (slices, rows, columns) of at least 2.")
        if len(self.spacing) != 3 or not all(0 < s < float("inf") for s in self.spacing):
            raise ValueError(f"spacing={tuple(self.spacing)} must be three positive sizes in mm.")

    @property
    def factor(self) -> int:
        """High-resolution sub-slices per thick slice."""
        factor = self.spacing[2] / self.hires_z_mm
        if abs(factor - round(factor)) > 1e-6 or round(factor) < 1:
            raise ValueError(f"hires_z_mm={self.hires_z_mm} must divide the slice spacing {self.spacing[2]}.")
        return int(round(factor))


@dataclass
class CTPhantom:
    """One generated case: thick-slice CT and ground truth, plus the high-resolution versions."""

    image: np.ndarray
    labels: np.ndarray
    sdf: np.ndarray
    organ: np.ndarray
    hires_image: np.ndarray
    hires_labels: np.ndarray
    hires_sdf: np.ndarray
    spacing: tuple[float, float, float]
    hires_spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    hires_origin: tuple[float, float, float]
    tree: VascularTree
    params: dict = field(default_factory=dict)

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return _matrix(self.spacing, self.origin)

    @property
    def hires_ijk_to_ras(self) -> np.ndarray:
        return _matrix(self.hires_spacing, self.hires_origin)

    def mesh(self, spacing_mm: float | None = None):
        """Ground-truth vessel surface (closed ``vtkPolyData``, RAS mm) from the exact tree SDF."""
        return tree_to_mesh(self.tree, spacing=spacing_mm or min(0.35, 0.5 * self.spacing[0]))


def _matrix(spacing, origin) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def _grid_points(shape, spacing, origin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World x, y, z coordinates of a KJI grid (broadcastable open grids)."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    return (origin[0] + i * spacing[0])[None, None, :], (origin[1] + j * spacing[1])[None, :, None], \
        (origin[2] + k * spacing[2])[:, None, None]


def _smooth_field(shape, rng: np.random.Generator, sigma_vox: tuple[float, float, float]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise)."""
    from scipy.ndimage import gaussian_filter

    field_ = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return (field_ - field_.mean()) / max(float(field_.std()), 1e-6)


def organ_blob(shape, spacing, origin, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth random ellipsoid-like organ mask ``[k, j, i]``, its centre and semi-axes (mm)."""
    extent = np.array([shape[2] * spacing[0], shape[1] * spacing[1], shape[0] * spacing[2]])
    centre = np.asarray(origin) + extent / 2 + rng.uniform(-0.04, 0.04, 3) * extent
    axes = extent * np.array([rng.uniform(0.36, 0.42), rng.uniform(0.30, 0.38), rng.uniform(0.36, 0.42)])
    x, y, z = _grid_points(shape, spacing, origin)
    level = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2
    bumps = _smooth_field(shape, rng, tuple(0.18 * extent[::-1] / np.asarray(spacing)[::-1]))
    return (level + 0.18 * bumps < 1.0), centre, axes


ARTERIES = {"radius_mm": (1.0, 1.8), "ratio": (1.0, 1.4), "attractors": 0.35}
"""Hepatic arterial distractors: root radius (mm, hepatic artery proper), enhancement as a share of
the portal contrast, attractors as a share of the venous trees'. 3D-IRCADb-01 1.7 labels no artery
inside the liver (its artery mask is extrahepatic); there the arteries are 172 HU (5-95 %: 143-205)
against 157 HU (131-179) for the portal vein and 120 HU for the parenchyma: 1.4x the portal contrast,
less for thin partial-volumed branches, hence 1.0-1.4."""


def grow_arterial_tree(organ: np.ndarray, spacing, origin, centre, axes, params: CTPhantomParams,
                       rng: np.random.Generator) -> tuple[VascularTree, float]:
    """An unlabelled hepatic-artery-like tree from beside the portal inlet, and its enhancement ratio."""
    scale = _tree_scale(axes)
    portal = _roots(centre, axes, scale)[0]
    position = np.asarray(portal.position) + rng.uniform(-4.0, 4.0, 3)
    root = Root(position=position, direction=portal.direction, radius=float(rng.uniform(*ARTERIES["radius_mm"])),
                label=3)
    tree_params = _tree_params(scale, params.n_attractors * scale * ARTERIES["attractors"], 0.3, 0.5,
                               int(rng.integers(2**31)))
    return grow_tree(MaskDomain(organ, spacing, origin), [root], tree_params), float(rng.uniform(*ARTERIES["ratio"]))


def _tree_scale(axes: np.ndarray) -> float:
    """The vascular trees' length scale for an organ of these semi-axes (mm): 1 to 2.5."""
    return float(np.clip(axes[:2].mean() / 32.0, 1.0, 2.5))


def _tree_params(scale: float, n_attractors: float, tortuosity: float, min_radius: float, seed: int) -> TreeParams:
    """Space-colonisation settings of the liver's trees, their lengths scaled by ``scale``."""
    return TreeParams(n_attractors=int(n_attractors), step_mm=1.2 * scale, influence_mm=14.0 * scale,
                      kill_mm=3.0 * scale, tortuosity=tortuosity, min_radius=min_radius,
                      min_terminal_mm=3.0 * scale, seed=seed)


def _roots(centre: np.ndarray, axes: np.ndarray, scale: float, calibre: tuple[float, float] = (1.0, 1.0)
           ) -> list[Root]:
    """Portal inlet (inferior-medial hilum) and hepatic outlet (superior), pointing inwards."""
    portal = Root(position=centre + axes * np.array([-0.75, -0.35, -0.85]), direction=(0.6, 0.3, 0.75),
                  radius=2.8 * scale * calibre[0], label=1)
    hepatic = Root(position=centre + axes * np.array([0.2, 0.45, 0.95]), direction=(-0.2, -0.3, -0.95),
                   radius=2.4 * scale * calibre[1], label=2)
    return [portal, hepatic]


def grow_hepatic_tree(organ: np.ndarray, spacing, origin, centre, axes, params: CTPhantomParams,
                      rng: np.random.Generator) -> VascularTree:
    """Portal-like and hepatic-like trees grown by space colonisation inside the organ mask."""
    scale = _tree_scale(axes)
    tree_params = _tree_params(scale, params.n_attractors * scale, 0.15, params.min_radius_mm, int(rng.integers(2**31)))
    calibre = (1.0, 1.0) if params.fixed_appearance else tuple(rng.uniform(*APPEARANCE["root_scale"], 2))
    return grow_tree(MaskDomain(organ, spacing, origin), _roots(centre, axes, scale, calibre), tree_params)


def _background(shape, spacing, rng) -> np.ndarray:
    """Soft tissue with smooth fat patches (HU)."""
    fat = _smooth_field(shape, rng, tuple(np.array([12.0, 12.0, 12.0]) / np.asarray(spacing)[::-1])) > 0.9
    return np.where(fat, HU["fat"], HU["soft_tissue"]).astype(np.float32)


def draw_appearance(rng: np.random.Generator, fixed: bool = False) -> dict:
    """One case's appearance (HU levels, texture, noise, blur, tumours) from :data:`APPEARANCE`."""
    if fixed:
        return {"liver_hu": HU["liver"], "portal_hu": HU["portal"], "hepatic_hu": HU["hepatic"], "texture_hu": 4.0,
                "texture_mm": 3.0, "noise_hu": None, "psf_mm": 0.0, "tumours": 0}
    draw = {k: float(rng.uniform(*v)) for k, v in APPEARANCE.items() if k not in ("tumours",)}
    portal = draw["liver_hu"] + draw["portal_contrast_hu"]
    hepatic = draw["liver_hu"] + draw["portal_contrast_hu"] * draw["hepatic_ratio"]
    return {"liver_hu": draw["liver_hu"], "portal_hu": portal, "hepatic_hu": hepatic,
            "texture_hu": draw["texture_hu"], "texture_mm": draw["texture_mm"], "noise_hu": draw["noise_hu"],
            "psf_mm": draw["psf_mm"], "tumours": int(rng.integers(APPEARANCE["tumours"][0], APPEARANCE["tumours"][1] + 1))}


def tumours(organ: np.ndarray, spacing, origin, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` bumpy spherical lesions inside the organ: soft occupancy [0, 1] and rim weight [0, 1]."""
    from scipy.ndimage import gaussian_filter

    lesion = np.zeros(organ.shape, np.float32)
    rim = np.zeros(organ.shape, np.float32)
    inside = np.argwhere(organ)
    x, y, z = _grid_points(organ.shape, spacing, origin)
    for _ in range(count if len(inside) else 0):
        k, j, i = inside[rng.integers(len(inside))]
        centre = np.array([x[0, 0, i], y[0, j, 0], z[k, 0, 0]])
        radius = rng.uniform(*APPEARANCE["tumour_radius_mm"])
        dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
        soft = np.clip((radius - dist) / 1.0 + 0.5, 0.0, 1.0)
        lesion = np.maximum(lesion, soft)
        if rng.random() < 0.4:
            rim = np.maximum(rim, np.exp(-((dist - radius) / 1.2) ** 2))
    smooth = (0.6 / spacing[2], 0.6 / spacing[1], 0.6 / spacing[0])
    return gaussian_filter(lesion, smooth) * organ, rim * organ


def render_hires(organ: np.ndarray, tree: VascularTree, shape, spacing, origin, rng,
                 appearance: dict | None = None, distractor: tuple[VascularTree, float] | None = None
                 ) -> tuple[np.ndarray, ...]:
    """Noise-free high-resolution HU image, vessel labels (1 portal, 2 hepatic) and vessel SDF.

    :param distractor: an unlabelled tree and its enhancement (share of the portal contrast), drawn
        into the image outside the labelled vessels only (:func:`grow_arterial_tree`).
    """
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    look = appearance or draw_appearance(rng, fixed=True)
    sdf = tree_to_sdf(tree, shape, spacing, origin)
    kinds = tree_to_labelmap(tree, shape, spacing, origin, label_by="labels")
    soft = np.clip(0.5 - sdf / spacing[0], 0.0, 1.0)
    organ_soft = gaussian_filter(organ.astype(np.float32), (0.6 / spacing[2], 0.6 / spacing[1], 0.6 / spacing[0]))
    mm = np.asarray(spacing)[::-1]
    texture = look["texture_hu"] * _smooth_field(shape, rng, tuple(look["texture_mm"] / mm))
    if look["tumours"]:
        texture = texture + 0.5 * look["texture_hu"] * _smooth_field(shape, rng, tuple(8.0 / mm))
    liver = look["liver_hu"] + texture
    if look["tumours"]:
        lesion, rim = tumours(organ, spacing, origin, look["tumours"], rng)
        liver = liver + lesion * rng.uniform(*APPEARANCE["tumour_contrast_hu"]) + rim * rng.uniform(10.0, 40.0)
    image = _background(shape, spacing, rng) * (1 - organ_soft) + liver * organ_soft
    nearest = distance_transform_edt(kinds == 0, return_distances=False, return_indices=True)
    vessel_hu = np.where(kinds[tuple(nearest)] == 2, look["hepatic_hu"], look["portal_hu"]).astype(np.float32)
    if look["noise_hu"] is not None:  # enhancement varies along the vessels (inflow, mixing)
        vessel_hu = look["liver_hu"] + (vessel_hu - look["liver_hu"]) * (
            1.0 + 0.15 * _smooth_field(shape, rng, tuple(10.0 / mm)))
    image = image * (1 - soft) + vessel_hu * soft
    if distractor is not None:
        artery = np.clip(0.5 - tree_to_sdf(distractor[0], shape, spacing, origin) / spacing[0], 0.0, 1.0) * (1 - soft)
        artery_hu = look["liver_hu"] + distractor[1] * (look["portal_hu"] - look["liver_hu"])
        image = image * (1 - artery) + artery_hu * artery
    if look["psf_mm"]:
        image = gaussian_filter(image, (0.0, look["psf_mm"] / spacing[1], look["psf_mm"] / spacing[0]))
    return image.astype(np.float32), kinds, sdf


def ct_noise(shape, sigma_hu: float, rng: np.random.Generator, correlated: bool) -> np.ndarray:
    """Zero-mean CT noise of standard deviation ``sigma_hu`` (in-plane correlated like filtered back-projection)."""
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal(shape).astype(np.float32)
    if correlated:
        noise = gaussian_filter(noise, (0.0, 0.7, 0.7))
        noise /= max(float(noise.std()), 1e-6)
    return sigma_hu * noise


def make_ct_phantom(params: CTPhantomParams | None = None, progress=None) -> CTPhantom:
    """Generate one case (deterministic for ``params.seed``).

    :param params: size, spacing, noise and seed.
    :param progress: optional ``progress(fraction, message)``.
    """
    params = params or CTPhantomParams()
    report = progress or (lambda f, m: None)
    rng = np.random.default_rng(params.seed)
    factor = params.factor
    nk, nj, ni = params.shape
    hires_shape = (nk * factor, nj, ni)
    hires_spacing = (params.spacing[0], params.spacing[1], params.hires_z_mm)
    extent = np.array([ni * params.spacing[0], nj * params.spacing[1], nk * params.spacing[2]])
    origin = tuple(float(v) for v in (-extent / 2 + np.array([params.spacing[0], params.spacing[1],
                                                                   params.spacing[2]]) / 2))
    hires_origin = (origin[0], origin[1], origin[2] - (factor - 1) / 2 * params.hires_z_mm)
    report(0.05, "organ")
    organ_hr, centre, axes = organ_blob(hires_shape, hires_spacing, hires_origin, rng)
    report(0.15, "vessel tree")
    tree = grow_hepatic_tree(organ_hr, hires_spacing, hires_origin, centre, axes, params, rng)
    report(0.45, "rendering")
    look = draw_appearance(rng, params.fixed_appearance)
    distractor = None
    if params.arteries:
        distractor = grow_arterial_tree(organ_hr, hires_spacing, hires_origin, centre, axes, params,
                                        np.random.default_rng([params.seed, 3]))
    hires_image, kinds_hr, hires_sdf = render_hires(organ_hr, tree, hires_shape, hires_spacing, hires_origin, rng, look,
                                                    distractor)
    report(0.75, "thick slices")
    slab = factor if not params.thin_slab else int(rng.integers(1, factor + 1))
    first = (factor - slab) // 2
    image = hires_image.reshape(nk, factor, nj, ni)[:, first:first + slab].mean(axis=1)
    noise_hu = params.noise_hu if look["noise_hu"] is None else look["noise_hu"]
    correlated = look["noise_hu"] is not None
    image += ct_noise(image.shape, noise_hu, rng, correlated)
    hires_image = hires_image + ct_noise(hires_image.shape, noise_hu, rng, correlated)
    sdf = tree_to_sdf(tree, params.shape, params.spacing, origin)
    organ = organ_hr.reshape(nk, factor, nj, ni)[:, factor // 2]
    report(1.0, "done")
    return CTPhantom(image=image.astype(np.float32), labels=(sdf < 0).astype(np.uint8), sdf=sdf,
                     organ=organ.astype(np.uint8), hires_image=hires_image.astype(np.float32),
                     hires_labels=(kinds_hr > 0).astype(np.uint8), hires_sdf=hires_sdf,
                     spacing=tuple(float(s) for s in params.spacing), hires_spacing=hires_spacing,
                     origin=origin, hires_origin=hires_origin, tree=tree,
                     params={**asdict(params), "appearance": {k: (round(v, 2) if isinstance(v, float) else v)
                                                             for k, v in look.items()}, "slab_subslices": slab})


# ------------------------------------------------------------------------------ dataset writer

CT_FOLDERS = {
    "image": "imagesTr", "label": "labelsTr", "organ": "organTr", "sdf": "sdfTr",
    "hires_image": "hiresImagesTr", "hires_label": "hiresLabelsTr", "hires_sdf": "hiresSdfTr",
    "mesh": "meshesTr", "tree": "treesTr",
}
CT_FOLDER_DOC = {
    "imagesTr": "thick-slice CT in HU (int16)",
    "labelsTr": "vessel labelmap on the thick-slice grid (1 = vessel: voxel centre inside the vessel)",
    "organTr": "organ (liver-like blob) mask on the thick-slice grid",
    "sdfTr": "exact vessel signed distance (mm, negative inside, float32) on the thick-slice grid",
    "hiresImagesTr": "the same CT rendered at the high-resolution slice spacing (HU, int16)",
    "hiresLabelsTr": "vessel labelmap at high resolution (1 = portal-like, 2 = hepatic-like)",
    "hiresSdfTr": "exact vessel signed distance at high resolution (mm, float32)",
    "meshesTr": "ground-truth vessel surface (.vtp, RAS mm)",
    "treesTr": "the vessel tree graph (VascularTree JSON: nodes, radii, edges, labels)",
}


def _save(array, spacing, origin, path: Path) -> Path:
    """Save with RAS geometry: LPS origin/direction so SimpleITK readers recover RAS positions."""
    from .datasets import save_nifti

    lps_origin = (-origin[0], -origin[1], origin[2])
    return save_nifti(array, spacing, lps_origin, path, direction=np.diag([-1.0, -1.0, 1.0]))


def write_ct_case(case: CTPhantom, out_dir: Path, name: str) -> dict[str, str]:
    """Write one case into the dataset folders; returns its ``dataset.json`` entry."""
    import json

    from ..meshes import save_polydata

    paths = {key: out_dir / folder / f"{name}.nii.gz" for key, folder in CT_FOLDERS.items()}
    paths["mesh"], paths["tree"] = out_dir / "meshesTr" / f"{name}.vtp", out_dir / "treesTr" / f"{name}.json"
    thick, hires = (case.spacing, case.origin), (case.hires_spacing, case.hires_origin)
    _save(np.round(case.image).astype(np.int16), *thick, paths["image"])
    _save(case.labels, *thick, paths["label"])
    _save(case.organ, *thick, paths["organ"])
    _save(case.sdf.astype(np.float32), *thick, paths["sdf"])
    _save(np.round(case.hires_image).astype(np.int16), *hires, paths["hires_image"])
    _save(tree_to_labelmap(case.tree, case.hires_labels.shape, case.hires_spacing, case.hires_origin,
                           label_by="labels"), *hires, paths["hires_label"])
    _save(case.hires_sdf.astype(np.float32), *hires, paths["hires_sdf"])
    save_polydata(case.mesh(), paths["mesh"])
    paths["tree"].parent.mkdir(parents=True, exist_ok=True)
    paths["tree"].write_text(json.dumps(case.tree.to_dict()), encoding="utf-8")
    return {key: str(path) for key, path in paths.items()}


def _register():
    from .datasets import register_dataset, write_msd_dataset_json

    @register_dataset("ct")
    def write_ct_dataset(out_dir: Path, count: int, seed: int, progress=None,
                         shape: tuple[int, int, int] = (16, 128, 128),
                         spacing: tuple[float, float, float] = (0.7, 0.7, 5.0), **options) -> Path:
        """``count`` CT phantoms in Medical Segmentation Decathlon layout (+ SDF and high-res GT folders).

        Case ``n`` uses seed ``seed * 1000 + n``. Extra options go to :class:`CTPhantomParams`;
        ``slice_mm_choices`` (e.g. ``(2.5, 3.2, 4.0, 4.8, 5.0)``) draws each case's slice spacing from
        the list (high-resolution slices at a fifth of it).
        """
        choices = options.pop("slice_mm_choices", None)
        out_dir = Path(out_dir).resolve()
        report = progress or (lambda f, m: None)
        entries = []
        for index in range(count):
            case_spacing, case_options = tuple(spacing), dict(options)
            if choices:
                dz = float(np.random.default_rng(seed * 1000 + index).choice(choices))
                case_spacing, case_options["hires_z_mm"] = (spacing[0], spacing[1], dz), dz / 5
            params = CTPhantomParams(shape=tuple(shape), spacing=case_spacing, seed=seed * 1000 + index, **case_options)
            case = make_ct_phantom(params)
            entries.append(write_ct_case(case, out_dir, f"ct_{index:03d}"))
            report((index + 1) / count, f"case {index + 1}/{count}")
        write_msd_dataset_json(
            out_dir, "VesselRecon CT hepatic vessels", {"0": "CT"}, {"0": "background", "1": "vessel"}, entries,
            description="Synthetic portal-venous liver CT, thick slices "
                        f"{shape[0]}x{shape[1]}x{shape[2]} (KJI) at {spacing} mm (x, y, z)",
            extra={"folders": CT_FOLDER_DOC, "spacing": list(spacing), "seed": seed,
                   "hires_slice_mm": options.get("hires_z_mm", CTPhantomParams.hires_z_mm)})
        return out_dir

    return write_ct_dataset


write_ct_dataset = _register()

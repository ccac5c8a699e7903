"""End-to-end 3DAngioNet reconstruction of a coronary segment of interest from two views.

Arrays in, arrays and meshes out (no MRML): :func:`reconstruct` takes the two images, their
:class:`~.geometry.CArmGeometry` and the SOI start/end pixels of every branch in each view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..progress import as_reporter
from . import template
from .centerline import Centerline2D, extract_centerline
from .geometry import Calibration, CArmGeometry, refine_calibration
from .rasterizer import hard_silhouette
from .refinement import mesh_frame, refine_vertices, sr_images
from .segmentation import crop_affine, frangi_crops, invert_affine, paste_back, sample_crops, segment_crops

SEGMENTERS = ("net", "frangi")


@dataclass
class BranchReconstruction:
    """One branch (main or side) of the SOI."""

    centerlines_2d: list[Centerline2D]
    centerline: np.ndarray            # (100, 3) triangulated, patient LPS mm
    radii: np.ndarray                 # (100,) mm
    initial_vertices: np.ndarray      # (6000, 3) template mesh before SR
    vertices: np.ndarray              # (6000, 3) after SR (== initial without SR) and stitching
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def refined_centerline(self) -> tuple[np.ndarray, np.ndarray]:
        """Ring centres and mean ring radii of the final mesh."""
        return template.centerline_from_vertices(self.vertices)


@dataclass
class Reconstruction:
    """Everything :func:`reconstruct` produced."""

    branches: list[BranchReconstruction]
    probabilities: list[np.ndarray]
    masks: list[np.ndarray]
    geometries: list[CArmGeometry]
    calibration: Calibration
    mesh: object
    qca: dict
    timings: dict
    affines: np.ndarray = None          # (2, B, 2, 3) crop-to-image affines
    raw_crops: torch.Tensor = None      # (2B, 1, S, S) view A crops then view B crops
    crop_probabilities: torch.Tensor = None

    def silhouettes(self) -> list[np.ndarray]:
        """Binary reprojection of the final mesh onto each view (label = branch index + 1)."""
        faces = template.closed_triangles()
        out = []
        for geometry in self.geometries:
            labels = np.zeros((geometry.rows, geometry.columns), np.uint8)
            for index, branch in reversed(list(enumerate(self.branches))):
                pixels = geometry.project(template.closed_vertices(branch.vertices))
                labels[hard_silhouette(pixels, faces, labels.shape)] = index + 1
            out.append(labels)
        return out


MIN_VIEW_ANGLE_DEG = 10.0


def views_differ(geometry_a, geometry_b) -> float:
    """The angle (degrees) between the two beams; :class:`InputError` when the views are nearly the same
    (two identical views give no depth: triangulation is singular)."""
    cosine = float(np.clip(np.dot(geometry_a.direction, geometry_b.direction), -1.0, 1.0))
    angle = float(np.degrees(np.arccos(abs(cosine))))
    if angle < MIN_VIEW_ANGLE_DEG:
        raise InputError(f"The two views look along almost the same direction ({angle:.1f} degrees apart); "
                         f"3D reconstruction needs views at least {MIN_VIEW_ANGLE_DEG:g} degrees apart (30-90 is "
                         "best): choose a second projection, or check the C-arm angles.")
    return angle


def validate_inputs(images, geometries, soi_points) -> tuple[list[np.ndarray], np.ndarray]:
    """Check images, geometry and SOI points; returns float32 images and points (2, B, 2, 2)."""
    from ..errors import check_image

    if len(images) != 2 or len(geometries) != 2:
        raise InputError("3DAngioNet needs exactly two views (two images and two geometries).")
    checked = []
    for name, image, geometry in zip(("view A", "view B"), images, geometries):
        image = check_image(np.asarray(image), name, 2, min_size=32)
        if image.shape != (geometry.rows, geometry.columns):
            raise InputError(f"{name} is {image.shape[0]}x{image.shape[1]} pixels but its geometry says "
                             f"{geometry.rows}x{geometry.columns} (Rows x Columns): fix the geometry.")
        checked.append(image)
    views_differ(*geometries)
    points = [np.asarray(p, float).reshape(-1, 2, 2) for p in soi_points]
    if len(points) != 2 or points[0].shape != points[1].shape or len(points[0]) == 0:
        raise InputError("Give the SOI start and end point of every branch in both views, in the same order "
                         "(main branch first): 2 points per branch per view.")
    for name, view, image in zip(("view A", "view B"), points, checked):
        if not np.isfinite(view).all():
            raise InputError(f"The SOI points of {name} are not finite.")
        if (view < 0).any() or (view[..., 0] > image.shape[1] - 1).any() or (view[..., 1] > image.shape[0] - 1).any():
            raise InputError(f"An SOI point of {name} lies outside the image: place the points on the vessel.")
        if (np.linalg.norm(view[:, 1] - view[:, 0], axis=1) < 8).any():
            raise InputError(f"The SOI start and end points of {name} are less than 8 pixels apart.")
    return checked, np.stack(points)


def quantitative_coronary_analysis(centerline: np.ndarray, radii: np.ndarray, end_fraction: float = 0.15) -> dict:
    """QCA along a centreline: length, minimal lumen diameter (MLD), reference diameter, % stenosis.

    The reference diameter at the MLD position is interpolated linearly between the mean diameters of
    the proximal and distal ``end_fraction`` of the segment (the interpolated-reference method).
    """
    diameters = 2 * np.asarray(radii, float)
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(centerline, axis=0), axis=1))]
    n = max(2, int(round(end_fraction * len(diameters))))
    inner = slice(n, len(diameters) - n) if len(diameters) > 2 * n + 1 else slice(None)
    k = np.arange(len(diameters))[inner][np.argmin(diameters[inner])]
    proximal, distal = diameters[:n].mean(), diameters[-n:].mean()
    reference = proximal + (distal - proximal) * s[k] / max(s[-1], 1e-9)
    return {"length_mm": float(s[-1]), "mld_mm": float(diameters[k]), "reference_diameter_mm": float(reference),
            "percent_diameter_stenosis": float(100 * (1 - diameters[k] / max(reference, 1e-9))),
            "mld_position_mm": float(s[k])}


def _probabilities(net, segmenter: str, raw: torch.Tensor) -> torch.Tensor:
    if segmenter == "frangi":
        return frangi_crops(raw).to(raw.device)
    if net is None:
        raise InputError("The 'net' segmenter needs a model; load one or use segmenter='frangi'.")
    from ..device import inference

    with inference(raw.device):
        return segment_crops(net, raw).float()


def reconstruct(images, geometries, soi_points, net=None, device: str | torch.device = "cpu",
                segmenter: str = "net", refine: bool = True, calibrate: bool = True, stitch: bool = True,
                radius_fusion: str = "mean", progress=None, cancel=None) -> Reconstruction:
    """Reconstruct the SOI lumen mesh from two views.

    :param images: two 2D arrays (rows x columns) of the chosen frames.
    :param geometries: two :class:`CArmGeometry`.
    :param soi_points: per view, an array (branches, 2, 2): the (column, row) start and end pixel of each
        branch, main branch first; a side branch starts at its bifurcation.
    :param net: an :class:`~.network.Angio3DNet` (needed for ``segmenter="net"`` and for SR).
    :param segmenter: ``"net"`` (U-Net) or ``"frangi"`` (classical baseline).
    :param refine: run surface refinement (``False`` gives the "(-) SR" ablation).
    :param calibrate: refine view B's geometry with Levenberg-Marquardt on the SOI end points.
    :param stitch: union the branch meshes (``False`` leaves ``mesh`` as None; used in training).
    :param radius_fusion: ``"mean"`` (paper) or ``"min"`` of the two views' radii.
    """
    if segmenter not in SEGMENTERS:
        raise InputError(f"segmenter must be one of {', '.join(SEGMENTERS)}, not {segmenter!r}.")
    if radius_fusion not in ("mean", "min"):
        raise InputError(f"radius_fusion must be 'mean' or 'min', not {radius_fusion!r}.")
    if segmenter not in SEGMENTERS:
        raise InputError(f"Unknown segmenter {segmenter!r}; choose one of {', '.join(SEGMENTERS)}.")
    reporter = as_reporter(progress, cancel)
    images, points = validate_inputs(images, geometries, soi_points)
    device = torch.device(device)
    timings, clock = {}, time.perf_counter()

    def tick(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    reporter(0.02, "calibrating the two views")
    geometries = list(geometries)
    calibration = (refine_calibration(geometries[0], geometries[1], points[0].reshape(-1, 2), points[1].reshape(-1, 2))
                   if calibrate else Calibration(geometries[0], geometries[1], np.nan, np.nan, np.zeros(4)))
    geometries = [calibration.geometry_a, calibration.geometry_b]
    tick("calibration")

    reporter(0.1, "segmenting the SOI")
    size = net.crop_size if net is not None else 128
    n_branches = points.shape[1]
    affines = np.array([[crop_affine(p[0], p[1], size) for p in view] for view in points])     # (2, B, 2, 3)
    raw = torch.cat([sample_crops(torch.as_tensor(img, device=device), affines[v], size)
                     for v, img in enumerate(images)])                                        # (2B, 1, S, S)
    probs = _probabilities(net, segmenter, raw)
    probs_np = probs.float().cpu().numpy().reshape(2, n_branches, size, size)
    tick("segmentation")

    reporter(0.3, "extracting 2D centrelines")
    full_probs = [[paste_back(probs_np[v, b], affines[v, b], images[v].shape) for b in range(n_branches)]
                  for v in range(2)]
    lines = [[extract_centerline(full_probs[v][b], points[v, b, 0], points[v, b, 1], geometries[v])
              for b in range(n_branches)] for v in range(2)]
    tick("centerlines")

    reporter(0.5, "triangulating")
    from .triangulation import triangulate_centerline

    branches = []
    for b in range(n_branches):
        centerline, radii = triangulate_centerline(lines[0][b], lines[1][b], *geometries, radius_fusion=radius_fusion)
        vertices = template.template_vertices(centerline, radii)
        branches.append(BranchReconstruction([lines[0][b], lines[1][b]], centerline, radii, vertices, vertices.copy()))
    tick("triangulation")

    if refine and net is not None:
        reporter(0.6, "refining the surface")
        _refine(net, branches, raw, probs, affines, geometries, device)
    tick("refinement")

    mesh = None
    if stitch:
        reporter(0.8, "stitching branches")
        from .stitching import stitch as stitch_branches

        finals = [b.vertices for b in branches]
        centres = [template.centerline_from_vertices(v)[0] for v in finals]
        mesh, moved, offsets = stitch_branches(finals, centres)
        for branch, vertices, offset in zip(branches, moved, offsets):
            branch.vertices, branch.offset = vertices, offset
    tick("stitching")
    main_centres, main_radii = branches[0].refined_centerline()
    qca = quantitative_coronary_analysis(main_centres, main_radii)
    masks = [np.max([p > 0.5 for p in view], axis=0) for view in full_probs]
    reporter(1.0, "done")
    return Reconstruction(branches, [np.max(view, axis=0) for view in full_probs], masks, geometries, calibration,
                          mesh, qca, timings, affines, raw.cpu(), probs.cpu())


def _refine(net, branches, raw, probs, affines, geometries, device) -> None:
    from ..device import inference

    n = len(branches)
    images = sr_images(raw, probs)
    frames = [mesh_frame(b.centerline, b.initial_vertices) for b in branches]
    vertices = torch.as_tensor(np.stack([b.initial_vertices for b in branches]), dtype=torch.float32, device=device)
    mats = [torch.as_tensor(np.repeat(g.projection_matrix()[None], n, 0), dtype=torch.float32, device=device)
            for g in geometries]
    inverse = [torch.as_tensor(invert_affine(affines[v]), dtype=torch.float32, device=device) for v in range(2)]
    with inference(device, allow_half=False):
        world, _, _ = refine_vertices(net, images[:n], images[n:], mats[0], mats[1], inverse[0], inverse[1],
                                      vertices, frames)
    for branch, refined in zip(branches, world.float().cpu().numpy()):
        branch.vertices = refined.astype(float)

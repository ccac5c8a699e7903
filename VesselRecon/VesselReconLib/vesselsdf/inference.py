"""VesselSDF inference: input canonicalisation, network prediction, through-plane SDF interpolation, meshing.

The CT is first brought into the model's domain (:mod:`.preprocess`: HU or windowed input, liver
ROI given or found, liver-relative normalisation); the network then runs on the ROI's bounding
box only (batch-normalised networks give the same answer on the box as on the whole image).

The SDF predicted on the thick-slice grid is interpolated linearly between slices (torch, on the
device; :func:`interpolate_at`, also used by the training loss and the evaluation) to a finer
through-plane spacing before its zero level is extracted with VTK's threaded flying edges
(:func:`VesselReconLib.meshes.isosurface`) at full in-plane resolution. Interpolating the distance
field -- not a binary mask -- lets the surface bridge the gaps between slices.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import meshes
from ..device import inference, map_batches, scan_windows
from ..progress import as_reporter

from .preprocess import Canonical, canonicalise, normalise_with

PORTAL_VENOUS_WINDOW = (400.0, 100.0)
"""Display window (width, level) in HU of the portal-venous phase (the network no longer uses it)."""
WINDOW_VOXELS = 512 * 512 * 32
"""Inputs above this many voxels run in sliding windows (MONAI ``sliding_window_inference``)."""


@dataclass(frozen=True)
class Motion:
    """Settings of the displacement-following through-plane interpolation (:func:`interpolate_slices`)."""

    max_mm: float = 8.0
    """Largest in-plane displacement followed between two slices (mm); larger ones fall back to linear."""
    radius: int = 4
    """Window radius of the Lucas–Kanade flow, in coarse pixels."""
    coarse: int = 2
    """The flow is estimated on the field downsampled in-plane by this factor."""
    spacing: tuple[float, float] = (1.0, 1.0)
    """In-plane ``(Δx, Δy)`` mm of the field."""


@dataclass
class Prediction:
    """Network outputs on the input (thick-slice) grid, KJI float32."""

    occupancy: np.ndarray | None
    sdf: np.ndarray | None
    motion: Motion | None = None
    """When set, the field is interpolated between slices following its displacement (round 8)."""
    gap_mm: float = 0.0
    """> 0: the SDF is also carried through the slice gaps saturated at ± this (:func:`gap_filled`, round 11)."""

    def surface_field(self) -> np.ndarray:
        """The field whose zero level is the vessel wall: the SDF, else ``0.5 − occupancy``."""
        return self.sdf if self.sdf is not None else 0.5 - self.occupancy

    def mask(self) -> np.ndarray:
        """Vessel voxels: SDF < 0 (or occupancy > 0.5 for occupancy-only networks)."""
        return (self.surface_field() < 0).astype(np.uint8)


class _Stacked(torch.nn.Module):
    """The network's outputs as one ``(N, 2, ...)`` tensor [occupancy probability, sdf] (NaN if absent)."""

    def __init__(self, net, spacing=None):
        super().__init__()
        self.net, self.spacing = net, spacing

    def forward(self, x):
        out = self.net(x, self.spacing)
        nan = torch.full_like(x[:, :1], float("nan"))
        occ = torch.sigmoid(out["occupancy"]) if out["occupancy"] is not None else nan
        sdf = out["sdf"] if out["sdf"] is not None else nan
        return torch.cat([occ.to(x.dtype), sdf.to(x.dtype)], dim=1)


def _pad_to(x: torch.Tensor, divisor: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    k, j, i = x.shape[-3:]
    size = (math.ceil(k / divisor[0]) * divisor[0], math.ceil(j / divisor[1]) * divisor[1],
            math.ceil(i / divisor[1]) * divisor[1])
    pad = (0, size[2] - i, 0, size[1] - j, 0, size[0] - k)
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x, (k, j, i)


def predict_tensor(model, image: torch.Tensor, spacing=None, window_voxels: int = WINDOW_VOXELS,
                   progress=None) -> torch.Tensor:
    """``(1, 1, K, J, I)`` normalised image -> ``(1, 2, K, J, I)`` [occupancy, sdf] on its device.

    :param spacing: ``(Δx, Δy, Δz)`` mm (the refiner's occupancy distance needs it).
    :param progress: a ``progress`` callable or :class:`..progress.Reporter`: in sliding windows each
        window reports ``network window k/n`` and checks for cancel.
    """
    stacked = _Stacked(model, None if spacing is None else tuple(float(v) for v in spacing))
    divisor = model.divisor
    padded, (k, j, i) = _pad_to(image, divisor)
    if padded.numel() <= window_voxels:
        out = stacked(padded)
    else:
        from monai.inferers import sliding_window_inference

        side = 256 if padded.shape[-1] >= 256 else padded.shape[-1]
        roi = (padded.shape[2], side, side)
        step = as_reporter(progress).steps(len(scan_windows(padded.shape[2:], roi, OVERLAP)), "network window")
        out = sliding_window_inference(padded, roi, WINDOW_BATCH, _window_runner(stacked, padded.device, step),
                                       overlap=OVERLAP, mode="gaussian")
    return out[..., :k, :j, :i].float()


WINDOW_BATCH = 4
"""Windows handed over at once by ``sliding_window_inference``; each still runs alone (batch 1)."""
OVERLAP = 0.25
"""Overlap of the sliding windows (Gaussian blending)."""


def _window_runner(stacked, device: torch.device, step):
    """MONAI's predictor for a batch of windows: each window alone, in :func:`..device.map_batches`
    workers (2 cores: two one-thread workers), so the small operators of one window do not wait in
    OpenMP barriers while another process holds a core; the same numbers as one window at a time.
    ``step()`` is called (in this thread) as each window's answer arrives: progress and cancel."""
    def run(windows: torch.Tensor) -> torch.Tensor:
        outs = []
        with contextlib.closing(map_batches(lambda window: stacked(window[None]), list(windows), device)) as answers:
            for out in answers:  # closed on cancel: the workers' queued windows are dropped
                outs.append(out)
                step()
        return torch.cat(outs)
    return run


def predict(model, image01: np.ndarray, device: str | torch.device = "cpu", spacing=(0.7, 0.7, 5.0),
            window_voxels: int = WINDOW_VOXELS, progress=None) -> Prediction:
    """Occupancy probability and SDF (mm) of a normalised KJI volume.

    :param model: a :class:`.network.VesselSDFNet` (any variant), in eval mode.
    :param image01: normalised CT ``[k, j, i]`` (:func:`.preprocess.normalise_ct`).
    :param spacing: ``(Δx, Δy, Δz)`` mm.
    :param progress: reports each sliding window and checks for cancel (:func:`predict_tensor`).
    """
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None].to(device)
    with inference(device):
        out = predict_tensor(model, x, spacing, window_voxels, progress)[0].cpu().numpy()
    occ, sdf = out[0], out[1]
    return Prediction(occupancy=None if np.isnan(occ).all() else occ, sdf=None if np.isnan(sdf).all() else sdf)


def through_plane_factor(spacing, factor: int | None = None) -> int:
    """Sub-slices per slice gap: ``round(Δz / Δx)`` by default (about isotropic), at least 1."""
    if factor:
        return max(1, int(factor))
    return max(1, int(round(float(spacing[2]) / float(spacing[0]))))


def refine_through_plane(field: np.ndarray | torch.Tensor, factor: int, motion: Motion | None = None,
                         gap_mm: float = 0.0) -> torch.Tensor:
    """A KJI field at ``(K − 1)·factor + 1`` evenly spaced slices (end slices kept), :func:`interpolate_at`.

    Runs on the field's device when given a tensor; returns a ``(K', J, I)`` float tensor. With
    ``motion``, the slices in between follow the field's displacement (:func:`interpolate_slices`);
    with ``gap_mm`` > 0, :func:`gap_filled`.
    """
    t = field if isinstance(field, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(field, np.float32))
    t = t.float().reshape(t.shape[-3:])
    k, fine = t.shape[0], (t.shape[0] - 1) * factor + 1
    if factor <= 1 or k < 2:
        return t
    if motion is not None:
        return interpolate_slices(t.cpu().numpy(), np.arange(fine) / factor, motion, gap_mm).to(t.device)
    positions = torch.arange(fine, dtype=t.dtype, device=t.device) * ((k - 1) / (fine - 1))  # align_corners grid
    return gap_filled(interpolate_at(t[None, None], positions[None])[0, 0], t, positions, gap_mm)


def gap_filled(linear: torch.Tensor, field: torch.Tensor, positions: torch.Tensor, gap_mm: float) -> torch.Tensor:
    """``min(linear, lerp(clip(field, ±gap_mm)))`` at ``positions`` (``gap_mm`` ≤ 0: ``linear`` as it is).

    ``linear`` is the KJI SDF ``field`` interpolated to ``positions`` (fractional slices). Linear
    interpolation of a distance field carries a vessel of depth ``r`` only ``r / (r + d)`` into a gap
    whose other slice is ``d`` outside it (a 1 mm vessel, 5 mm: a sixth of the gap), so thin vessels
    seen on one slice, and thin vessels that move sideways, vanish between thick slices. The field
    saturated at ± ``gap_mm`` carries every vessel at least ``gap_mm`` deep to mid-gap, as the
    occupancy's probability (saturated a pixel from the wall) is carried. The union only adds volume in
    the gaps next to a vessel on a neighbouring slice: the sign on the thick slices, and the walls
    where both slices are within ``gap_mm`` of them, stay the linear interpolation's (round 11).
    """
    if not gap_mm or gap_mm <= 0:
        return linear
    c = float(gap_mm)
    saturated = interpolate_at(field.clamp(-c, c)[None, None], positions.reshape(1, -1))[0, 0]
    return torch.minimum(linear, saturated)


def interpolate_at(f: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(N, C, K, J, I)`` at fractional slice positions ``(N, M)`` (clipped to the field): ``(N, C, M, J, I)``,
    ``(1 − w)·a + w·b`` between the two neighbouring slices, rounded as torch's linear resampling (fused
    multiply-add); the weights ``w`` are computed in the positions' precision. Slice by slice: each output
    slice reads two input slices only (faster than a gather or ``F.interpolate``, and differentiable)."""
    n, k = f.shape[0], f.shape[2]
    pos = positions.reshape(n, -1).clamp(0, k - 1)
    k0 = pos.floor().long().clamp(0, max(k - 2, 0))
    k1 = (k0 + 1).clamp(max=k - 1)
    w = (pos - k0.to(pos.dtype)).to(f.dtype)
    if pos.shape[1] == 0:
        return f[:, :, :0]
    lower, upper = k0.tolist(), k1.tolist()
    return torch.stack([torch.stack([torch.addcmul(w[b, m] * f[b, :, upper[b][m]], 1 - w[b, m], f[b, :, lower[b][m]])
                                     for m in range(pos.shape[1])], 1) for b in range(n)])


def pair_flow(a: np.ndarray, b: np.ndarray, motion: Motion) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The trusted in-plane displacement ``u`` (pixels, rows then columns) with ``b(x + u(x)) ≈ a(x)``
    between two slices of a surface field, on the box around their vessels (None: nothing to follow).

    Lucas–Kanade (skimage ``optical_flow_ilk``, coarse-to-fine) on the field clipped to ±``max_mm`` and
    downsampled by ``coarse``. Trust ``w`` ∈ [0, 1] is how much warping ``b`` by ``u`` reduces the
    (smoothed) difference to ``a`` relative to no warp; ``u`` is scaled by it, so where the flow does
    not explain the change, or is longer than ``max_mm``, the interpolation stays the linear blend.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates
    from skimage.registration import optical_flow_ilk

    vessels = (a < 0) | (b < 0)
    if not vessels.any():
        return None
    c, sy, sx = max(1, int(motion.coarse)), float(motion.spacing[1]), float(motion.spacing[0])
    margin = (int(math.ceil(motion.max_mm / sy)) + c, int(math.ceil(motion.max_mm / sx)) + c)
    rows, cols = np.flatnonzero(vessels.any(1)), np.flatnonzero(vessels.any(0))
    box = (max(int(rows[0]) - margin[0], 0), min(int(rows[-1]) + margin[0] + 1, a.shape[0]),
           max(int(cols[0]) - margin[1], 0), min(int(cols[-1]) + margin[1] + 1, a.shape[1]))
    crop = [np.clip(x[box[0]:box[1], box[2]:box[3]], -motion.max_mm, motion.max_mm).astype(np.float32) for x in (a, b)]
    small = [x[c // 2::c, c // 2::c] for x in crop] if c > 1 else crop
    if min(small[0].shape) < 4:
        return None
    flow = optical_flow_ilk(small[0], small[1], radius=int(motion.radius), gaussian=True, prefilter=True)
    grid = np.mgrid[:small[0].shape[0], :small[0].shape[1]].astype(np.float32)
    warped = map_coordinates(small[1], grid + flow, order=1, mode="nearest")
    sigma = float(motion.radius)
    before = gaussian_filter(np.abs(small[0] - small[1]), sigma)
    after = gaussian_filter(np.abs(small[0] - warped), sigma)
    trust = np.clip((before - after) / (before + 1e-3), 0.0, 1.0)
    trust[np.hypot(flow[0] * c * sy, flow[1] * c * sx) > motion.max_mm] = 0.0
    flow = torch.from_numpy(np.ascontiguousarray(flow * trust * c, np.float32))
    full = F.interpolate(flow[None], size=crop[0].shape, mode="bilinear", align_corners=False)[0]
    return box, full.numpy()


def _warped_blend(a: torch.Tensor, b: torch.Tensor, flow: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(1 − t)·a(x − t·u) + t·b(x + (1 − t)·u)`` for each ``t`` (bilinear, border values outside)."""
    j, i = a.shape
    base = torch.stack(torch.meshgrid(torch.arange(j, dtype=torch.float32), torch.arange(i, dtype=torch.float32),
                                      indexing="ij"))
    tt = t[:, None, None, None]
    norm = torch.tensor([2.0 / max(j - 1, 1), 2.0 / max(i - 1, 1)])[None, :, None, None]

    def sample(image, points):
        xy = (points * norm - 1.0).flip(1).permute(0, 2, 3, 1)
        return F.grid_sample(image.expand(len(t), 1, j, i), xy, mode="bilinear", padding_mode="border",
                             align_corners=True)[:, 0]

    forward, backward = sample(a[None, None], base - tt * flow), sample(b[None, None], base + (1 - tt) * flow)
    return (1 - tt[:, 0]) * forward + tt[:, 0] * backward


def interpolate_slices(field: np.ndarray, positions, motion: Motion | None = None, gap_mm: float = 0.0) -> torch.Tensor:
    """A KJI field at fractional slice positions (clipped to the field), ``(len(positions), J, I)``.

    Linear between the two neighbouring slices; with ``motion``, between each pair of slices the
    field follows its in-plane displacement (:func:`pair_flow`: each slice warped towards the
    position, then blended linearly), so a vessel that moves sideways between thick slices is
    carried across the gap instead of fading out of one place and into another. With ``gap_mm`` > 0
    the result is united with the saturated field's linear interpolation (:func:`gap_filled`).
    """
    field = np.asarray(field, np.float32)
    source = torch.from_numpy(np.ascontiguousarray(field))
    k = np.clip(np.asarray(positions, float), 0, field.shape[0] - 1)
    out = interpolate_at(source[None, None], torch.from_numpy(k)[None])[0, 0]
    if motion is None:
        return gap_filled(out, source, torch.from_numpy(k), gap_mm)
    k0 = np.clip(np.floor(k).astype(int), 0, max(field.shape[0] - 2, 0))
    w = torch.from_numpy((k - k0).astype(np.float32))
    for pair in np.unique(k0):
        inside = np.flatnonzero((k0 == pair) & (w.numpy() > 0) & (w.numpy() < 1))
        found = pair_flow(field[pair], field[pair + 1], motion) if len(inside) and pair + 1 < field.shape[0] else None
        if found is None:
            continue
        (j0, j1, i0, i1), flow = found
        out[inside, j0:j1, i0:i1] = _warped_blend(source[pair, j0:j1, i0:i1], source[pair + 1, j0:j1, i0:i1],
                                                  torch.from_numpy(flow), w[inside])
    return gap_filled(out, source, torch.from_numpy(k), gap_mm)


def refined_geometry(ijk_to_ras: np.ndarray, factor: int) -> np.ndarray:
    """IJK-to-RAS of the refined grid (k axis divided by ``factor``, same origin)."""
    matrix = np.array(ijk_to_ras, dtype=float)
    matrix[:3, 2] /= factor
    return matrix


def closed_field(field: np.ndarray) -> np.ndarray:
    """Pad the field by one voxel of 'outside' so surfaces touching the border are closed."""
    outside = max(float(np.nanmax(field)), 1.0)
    return np.pad(field, 1, mode="constant", constant_values=outside)


def drop_small_pieces(surface, min_volume_mm3: float):
    """Remove closed surface components enclosing less than ``min_volume_mm3`` (divergence theorem)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkCleanPolyData, vtkPolyDataConnectivityFilter

    connectivity = vtkPolyDataConnectivityFilter()
    connectivity.SetInputData(meshes.triangulate(surface))
    connectivity.SetExtractionModeToAllRegions()
    connectivity.ColorRegionsOn()
    connectivity.Update()
    labelled = connectivity.GetOutput()
    points = meshes.points_of(labelled)
    triangles = numpy_support.vtk_to_numpy(labelled.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    region = numpy_support.vtk_to_numpy(labelled.GetPointData().GetArray("RegionId"))[triangles[:, 0]]
    p0, p1, p2 = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    volumes = np.bincount(region, np.einsum("ij,ij->i", p0, np.cross(p1, p2)) / 6.0)
    keep = np.abs(volumes)[region] >= min_volume_mm3
    cells = vtkCellArray()
    kept = np.ascontiguousarray(triangles[keep].astype(np.int64))
    offsets = np.arange(0, 3 * len(kept) + 1, 3, dtype=np.int64)
    cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=True),
                  numpy_support.numpy_to_vtkIdTypeArray(kept.ravel(), deep=True))
    result = vtkPolyData()
    result.SetPoints(labelled.GetPoints())
    result.SetPolys(cells)
    cleaner = vtkCleanPolyData()  # only drops the points no kept triangle uses
    cleaner.SetInputData(result)
    cleaner.PointMergingOff()
    cleaner.ConvertPolysToLinesOff()
    cleaner.ConvertLinesToPointsOff()
    cleaner.ConvertStripsToPolysOff()
    cleaner.Update()
    return cleaner.GetOutput()


def mesh_zero_level(field: np.ndarray, ijk_to_ras: np.ndarray, min_component_mm3: float = 0.0,
                    compute_normals: bool = True):
    """Zero level of a KJI field as a closed vtkPolyData in RAS mm (flying edges).

    :param min_component_mm3: drop connected components enclosing less volume (0 keeps all).
    """
    padded = closed_field(field)
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    surface = meshes.isosurface(padded, np.asarray(ijk_to_ras) @ shift, level=0.0, compute_normals=False)
    if min_component_mm3 and surface.GetNumberOfPoints():
        surface = drop_small_pieces(surface, min_component_mm3)
    if compute_normals and surface.GetNumberOfPoints():
        surface = meshes.normals(surface)
    return surface


@dataclass
class Reconstruction:
    """Everything one VesselSDF run produces (arrays KJI on the input grid unless noted)."""

    prediction: Prediction
    mask: np.ndarray
    surface: object
    fine_field: np.ndarray
    """The surface field interpolated through the slice gaps, on the ROI's in-plane box."""
    fine_ijk_to_ras: np.ndarray
    factor: int
    canonical: Canonical | None = None
    spacing: tuple[float, float, float] | None = None

    def fine_mask(self) -> np.ndarray:
        """Vessel mask on the refined slice grid (``fine_ijk_to_ras``): the interpolated field < 0."""
        return (self.fine_field < 0).astype(np.uint8)

    def mask_on_grid(self, ijk_to_ras: np.ndarray, ijk_to_ras_target: np.ndarray, shape) -> np.ndarray:
        """Vessel mask resampled to any target grid (e.g. the original fine slices), from the field."""
        return (resample_field(self.prediction.surface_field(), ijk_to_ras, ijk_to_ras_target, shape,
                               self.prediction.motion, self.prediction.gap_mm) < 0).astype(np.uint8)


def resample_field(field: np.ndarray, ijk_to_ras: np.ndarray, target_ijk_to_ras: np.ndarray, shape,
                   motion: Motion | None = None, gap_mm: float = 0.0) -> np.ndarray:
    """Linear interpolation of a KJI field onto another grid (outside the source: the field's maximum).

    When both grids share the in-plane axes it interpolates between slices only (fast path; with
    ``motion`` following the field's displacement and ``gap_mm`` filling the gaps,
    :func:`interpolate_slices`); otherwise trilinear (neither applies).
    """
    field = np.asarray(field, np.float32)
    source = np.asarray(ijk_to_ras, float)
    target = np.asarray(target_ijk_to_ras, float)
    to_source = np.linalg.inv(source) @ target
    outside = float(np.nanmax(field)) if field.size else 1.0
    if np.allclose(to_source[:3, :2], np.eye(3)[:, :2], atol=1e-4) and np.allclose(to_source[:2, 2:], 0, atol=1e-4) \
            and tuple(shape[1:]) == field.shape[1:]:
        k = to_source[2, 2] * np.arange(shape[0]) + to_source[2, 3]
        out = interpolate_slices(field, k, motion, gap_mm).numpy()
        out[(k < -1e-3) | (k > field.shape[0] - 1 + 1e-3)] = outside
        return out.astype(np.float32)
    from scipy.ndimage import map_coordinates

    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    points = to_source @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    values = map_coordinates(field, points[2::-1], order=1, mode="constant", cval=outside)
    return values.reshape(shape).astype(np.float32)


def reconstruct(model, volume: np.ndarray, ijk_to_ras: np.ndarray, device: str | torch.device = "cpu",
                window=None, roi_mask: np.ndarray | None = None,
                factor: int | None = None, min_component_mm3: float = 0.0, progress=None, cancel=None
                ) -> Reconstruction:
    """CT volume -> occupancy, SDF, vessel mask and smooth vessel surface.

    :param model: a VesselSDF network in eval mode on ``device``.
    :param volume: CT ``[k, j, i]`` in HU, or windowed/uint8 (detected, :mod:`.preprocess`).
    :param ijk_to_ras: the volume's geometry.
    :param window: unused (kept for callers of earlier releases: normalisation is liver-relative).
    :param roi_mask: optional liver/organ mask ``[k, j, i]``; found automatically when None. The
        network runs on its in-plane bounding box (plus a margin); outside the ROI is background.
    :param factor: sub-slices per slice gap for meshing (default ``round(Δz/Δx)``).
    :param min_component_mm3: remove surface components enclosing less volume (0 keeps all).
    """
    reporter = as_reporter(progress, cancel)
    spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0))
    reporter(0.02, "liver ROI and normalisation")
    canonical = canonicalise(volume, ijk_to_ras, roi_mask)
    reporter(0.15, "network")
    prediction = predict_in_roi(model, canonical, device, spacing, progress=reporter.sub(0.15, 0.6))
    reporter(0.6, "interpolating the SDF through the slice gaps")
    factor = through_plane_factor(spacing, factor)
    fine, fine_matrix = refine_in_box(prediction.surface_field(), ijk_to_ras, roi_box(canonical.roi, volume.shape),
                                      factor, device, prediction.motion, prediction.gap_mm)
    reporter(0.75, "meshing the zero level")
    surface = mesh_zero_level(fine, fine_matrix, min_component_mm3)
    reporter(1.0, "done")
    return Reconstruction(prediction, prediction.mask(), surface, fine, fine_matrix, factor, canonical, spacing)


def refine_in_box(field: np.ndarray, ijk_to_ras: np.ndarray, box, factor: int, device="cpu",
                  motion: Motion | None = None, gap_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The field interpolated through the slice gaps on the ROI box only, and that grid's IJK-to-RAS.

    Outside the box the field is positive (background), so the surface lies inside it: interpolating
    and meshing the box (about half of a 512² slice for a liver) gives the same surface for less work.
    """
    matrix = np.array(ijk_to_ras, dtype=float)
    if box is not None:
        field = field[:, box[0]:box[1], box[2]:box[3]]
        matrix[:3, 3] += matrix[:3, 0] * box[2] + matrix[:3, 1] * box[0]
    fine = refine_through_plane(torch.from_numpy(np.ascontiguousarray(field)).to(device), factor, motion, gap_mm).cpu().numpy()
    return fine, refined_geometry(matrix, factor)


CONTEXT_MM = 3.0
"""The network sees the CT this far (mm, in-plane) beyond the ROI; its output is kept inside the ROI only."""


def context_roi(roi: np.ndarray, spacing, context_mm: float = CONTEXT_MM) -> np.ndarray:
    """The ROI dilated in-plane by ``context_mm`` (a square, separably)."""
    from scipy.ndimage import binary_dilation

    rows, cols = (max(0, int(round(context_mm / float(s)))) for s in (spacing[1], spacing[0]))
    if not rows and not cols:
        return roi
    grown = binary_dilation(roi, np.ones((1, 2 * rows + 1, 1), bool)) if rows else roi
    return binary_dilation(grown, np.ones((1, 1, 2 * cols + 1), bool)) if cols else grown


def predict_in_roi(model, canonical: Canonical, device, spacing, context_mm: float = CONTEXT_MM,
                   progress=None) -> Prediction:
    """The network on the ROI's bounding box of the normalised CT; background outside the ROI.

    The network sees the CT ``context_mm`` beyond the ROI (−1 further out), so the ROI's own edge is
    not an image edge inside the kept region: with the input cut exactly at the ROI, the network
    answers the artificial liver/−1 edge, and its answers along it become false vessel pieces inside
    the scored liver. With a given ROI (release 5) it also sees the automatic liver ROI whose
    statistics were used (:func:`.preprocess.statistics_roi`), so inside both ROIs its input, and so
    its answer, is the one it gives without a ROI; the given ROI only sets where the output is kept.
    ``progress`` hears of each sliding window and may cancel between them (:func:`predict_tensor`).
    """
    seen = canonical.roi if canonical.seen is None else canonical.roi | canonical.seen
    seen = context_roi(seen, spacing, context_mm)
    image = normalise_with(canonical.hu, seen, canonical.median_hu, canonical.sigma_hu)
    box = roi_box(seen, image.shape)
    crop = image if box is None else image[:, box[0]:box[1], box[2]:box[3]]
    prediction = _uncrop(predict(model, crop, device, spacing, progress=progress), box, image.shape)
    prediction = _outside_is_background(prediction, canonical.roi, model)
    prediction.motion = motion_of(model, spacing)
    prediction.gap_mm = gap_of(model)
    return prediction


def gap_of(model) -> float:
    """The model's gap filling (config ``gap_fill_mm``, :func:`gap_filled`) for its SDF; 0 for occupancy-only
    networks, whose field (``0.5 − p``) already saturates."""
    return float(getattr(model, "gap_fill_mm", 0.0) or 0.0) if getattr(model, "has_sdf", False) else 0.0


def motion_of(model, spacing) -> Motion | None:
    """The model's displacement-following interpolation settings (config ``motion_mm`` > 0), else None."""
    max_mm = float(getattr(model, "motion_mm", 0.0) or 0.0)
    if max_mm <= 0:
        return None
    return Motion(max_mm, int(getattr(model, "motion_radius", 4)), spacing=(float(spacing[0]), float(spacing[1])))


def _outside_is_background(prediction: Prediction, roi: np.ndarray, model) -> Prediction:
    """Occupancy 0 and SDF at least the bound outside the ROI, dilated by 2 pixels in-plane and by one
    slice through-plane.

    The through-plane slice (release 5): the output is interpolated between the thick slices, and
    the organ's outline moves from one slice to the next. Cut at each slice's own outline, a vessel
    inside the organ on slice k + 1 but outside its outline on slice k was forced to background on
    slice k, so the interpolated surface was cut short on the fine slices in between, inside the
    organ; keeping the union of the neighbouring outlines lets the interpolation reach them.
    """
    from scipy.ndimage import binary_dilation

    keep = binary_dilation(binary_dilation(roi, np.ones((1, 5, 1), bool)), np.ones((1, 1, 5), bool))  # 1x5x5, separably
    keep = binary_dilation(keep, np.ones((3, 1, 1), bool))   # a single slice stays as it is
    occupancy = None if prediction.occupancy is None else np.where(keep, prediction.occupancy, 0.0).astype(np.float32)
    sdf = prediction.sdf
    if sdf is not None:
        bound = float(getattr(model, "sdf_bound_mm", 6.0))
        sdf = np.where(keep, sdf, np.maximum(sdf, bound)).astype(np.float32)
    return Prediction(occupancy=occupancy, sdf=sdf)


def roi_box(mask: np.ndarray, shape, margin: int = 8) -> tuple[int, int, int, int] | None:
    """In-plane bounding box ``(j0, j1, i0, i1)`` of a ROI mask plus a margin (None if empty)."""
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape) or not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    return (max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, shape[1]),
            max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, shape[2]))


def _uncrop(prediction: Prediction, box, shape) -> Prediction:
    if box is None:
        return prediction

    def paste(values: np.ndarray | None, fill: float) -> np.ndarray | None:
        if values is None:
            return None
        out = np.full(shape, fill, np.float32)
        out[:, box[0]:box[1], box[2]:box[3]] = values
        return out

    far = float(np.nanmax(prediction.sdf)) if prediction.sdf is not None else 0.0
    return Prediction(occupancy=paste(prediction.occupancy, 0.0), sdf=paste(prediction.sdf, max(far, 1.0)))

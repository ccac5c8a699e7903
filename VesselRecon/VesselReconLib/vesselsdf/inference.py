"""VesselSDF inference: CT normalisation, network prediction, through-plane SDF interpolation, meshing.

The SDF predicted on the thick-slice grid is interpolated (torch trilinear, on the device) to a
finer through-plane spacing before its zero level is extracted with VTK's threaded flying edges
(:func:`VesselReconLib.meshes.isosurface`) at full in-plane resolution. Interpolating the distance
field -- not a binary mask -- lets the surface bridge the gaps between slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import meshes
from ..device import inference
from ..progress import as_reporter

PORTAL_VENOUS_WINDOW = (400.0, 100.0)
"""(width, level) in HU: [-100, 300] HU maps to [0, 1] (liver ~110 HU, contrast vessels ~200 HU)."""
WINDOW_VOXELS = 512 * 512 * 32
"""Inputs above this many voxels run in sliding windows (MONAI ``sliding_window_inference``)."""


def normalise_ct(volume: np.ndarray, window: tuple[float, float] | None = PORTAL_VENOUS_WINDOW) -> np.ndarray:
    """Map a CT to [0, 1]: through a (width, level) HU window, or by 0.5/99.5 percentiles when None."""
    volume = np.asarray(volume, dtype=np.float32)
    if window is not None:
        width, level = window
        low = level - width / 2
        return np.clip((volume - low) / width, 0.0, 1.0).astype(np.float32)
    low, high = np.percentile(volume, [0.5, 99.5])
    return np.clip((volume - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


@dataclass
class Prediction:
    """Network outputs on the input (thick-slice) grid, KJI float32."""

    occupancy: np.ndarray | None
    sdf: np.ndarray | None

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


def predict_tensor(model, image: torch.Tensor, spacing=None, window_voxels: int = WINDOW_VOXELS) -> torch.Tensor:
    """``(1, 1, K, J, I)`` normalised image -> ``(1, 2, K, J, I)`` [occupancy, sdf] on its device.

    :param spacing: ``(Δx, Δy, Δz)`` mm (the refiner's occupancy distance needs it).
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
        out = sliding_window_inference(padded, roi, 1, stacked, overlap=0.25, mode="gaussian")
    return out[..., :k, :j, :i].float()


def predict(model, image01: np.ndarray, device: str | torch.device = "cpu", spacing=(0.7, 0.7, 5.0),
            window_voxels: int = WINDOW_VOXELS) -> Prediction:
    """Occupancy probability and SDF (mm) of a normalised KJI volume.

    :param model: a :class:`.network.VesselSDFNet` (any variant), in eval mode.
    :param image01: normalised CT ``[k, j, i]`` in [0, 1] (:func:`normalise_ct`).
    :param spacing: ``(Δx, Δy, Δz)`` mm.
    """
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None].to(device)
    with inference(device):
        out = predict_tensor(model, x, spacing, window_voxels)[0].cpu().numpy()
    occ, sdf = out[0], out[1]
    return Prediction(occupancy=None if np.isnan(occ).all() else occ, sdf=None if np.isnan(sdf).all() else sdf)


def through_plane_factor(spacing, factor: int | None = None) -> int:
    """Sub-slices per slice gap: ``round(Δz / Δx)`` by default (about isotropic), at least 1."""
    if factor:
        return max(1, int(factor))
    return max(1, int(round(float(spacing[2]) / float(spacing[0]))))


def refine_through_plane(field: np.ndarray | torch.Tensor, factor: int) -> torch.Tensor:
    """Trilinear interpolation of a KJI field to ``(K − 1)·factor + 1`` slices (end slices kept).

    Runs on the field's device when given a tensor; returns a ``(K', J, I)`` float tensor.
    """
    t = field if isinstance(field, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(field, np.float32))
    k = t.shape[-3]
    if factor <= 1 or k < 2:
        return t.float().reshape(t.shape[-3:])
    fine = F.interpolate(t.float().reshape(1, 1, *t.shape[-3:]), size=((k - 1) * factor + 1, *t.shape[-2:]),
                         mode="trilinear", align_corners=True)
    return fine[0, 0]


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
    fine_ijk_to_ras: np.ndarray
    factor: int


def reconstruct(model, volume: np.ndarray, ijk_to_ras: np.ndarray, device: str | torch.device = "cpu",
                window: tuple[float, float] | None = PORTAL_VENOUS_WINDOW, roi_mask: np.ndarray | None = None,
                factor: int | None = None, min_component_mm3: float = 0.0, progress=None, cancel=None
                ) -> Reconstruction:
    """CT volume -> occupancy, SDF, vessel mask and smooth vessel surface.

    :param model: a VesselSDF network in eval mode on ``device``.
    :param volume: CT ``[k, j, i]`` in HU (or any intensity with ``window=None``).
    :param ijk_to_ras: the volume's geometry.
    :param window: (width, level) HU window for normalisation; ``None`` = percentile normalisation.
    :param roi_mask: optional organ/ROI mask ``[k, j, i]``: only its in-plane bounding box (plus a
        margin) is processed; everything outside counts as background.
    :param factor: sub-slices per slice gap for meshing (default ``round(Δz/Δx)``).
    :param min_component_mm3: remove surface components enclosing less volume (0 keeps all).
    """
    reporter = as_reporter(progress, cancel)
    spacing = np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)
    reporter(0.05, "normalising")
    image = normalise_ct(volume, window)
    box = roi_box(roi_mask, volume.shape) if roi_mask is not None else None
    crop = image if box is None else image[:, box[0]:box[1], box[2]:box[3]]
    reporter(0.15, "network")
    prediction = _uncrop(predict(model, crop, device, spacing), box, volume.shape)
    reporter(0.6, "interpolating the SDF through the slice gaps")
    factor = through_plane_factor(spacing, factor)
    field = prediction.surface_field()
    fine = refine_through_plane(torch.from_numpy(field).to(device), factor).cpu().numpy()
    fine_matrix = refined_geometry(ijk_to_ras, factor)
    reporter(0.75, "meshing the zero level")
    surface = mesh_zero_level(fine, fine_matrix, min_component_mm3)
    reporter(1.0, "done")
    return Reconstruction(prediction, prediction.mask(), surface, fine, fine_matrix, factor)


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

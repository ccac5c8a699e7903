"""The real 3D check: the static coronary phantom (``../shared/datasets/xa_static_phantom``) seen in the
two real XA runs ``IM3.dcm`` and ``IM4.dcm`` (``../shared/samples/xa-phantom``).

The reference centrelines live in the dataset's own, arbitrary frame. One rigid transform brings them
into our frame (DICOM patient LPS, isocentre at the origin): it is fitted **to the images**, not to our
reconstruction (2D/3D registration: the reference centrelines projected with the recorded C-arm
geometry must fall on the vessels of both views, found by a classical black top-hat threshold); the fit
residual is reported in pixels. The branches whose projections lie on vessels in both views are then
reconstructed one by one, with start/end points where the registered reference's ends project (5 % in
from each end, as a reader would click), and compared in 3D: centreline mean and max distance (mm) to
the registered reference branch, and the radius ratio (our median radius over the reference mesh's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

RESIDUAL_CLIP_PX = 15.0
FINE_CLIP_PX = 5.0
FINE_SIGMA_PX = 1.0
VISIBLE_PX = 3.0
FINE_OPTIONS = {"xtol": 1e-8, "ftol": 1e-12, "maxfev": 20000}


@dataclass
class PhantomData:
    images: list[np.ndarray]
    geometries: list
    frames: list[int]
    branches: list[np.ndarray]      # reference centreline polylines, dataset frame (mm)
    mesh_points: object             # vtkPolyData of the reference lumen (dataset frame)


def shared_paths(shared: str | Path) -> tuple[Path, Path]:
    shared = Path(shared)
    return shared / "datasets" / "xa_static_phantom", shared / "samples" / "xa-phantom"


def load_phantom(shared: str | Path) -> PhantomData:
    """Both views (the default frame of each run), their geometry and the reference geometry."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    from .dicom_io import default_frame, read_xa, representative_frame

    dataset, samples = shared_paths(shared)
    images, geometries, frames = [], [], []
    for name in ("IM3.dcm", "IM4.dcm"):
        run, geometry, _ = read_xa(samples / name)
        frame = default_frame(run, representative_frame(samples / name))
        images.append(run[frame])
        geometries.append(geometry)
        frames.append(frame)
    reader = vtk.vtkUnstructuredGridReader()
    reader.SetFileName(str(dataset / "reference_centerlines.vtk"))
    reader.Update()
    grid = reader.GetOutput()
    points = vtk_to_numpy(grid.GetPoints().GetData()).astype(float)
    branches = []
    for c in range(grid.GetNumberOfCells()):
        cell = grid.GetCell(c)
        branches.append(points[[cell.GetPointId(k) for k in range(cell.GetNumberOfPoints())]])
    stl = vtk.vtkSTLReader()
    stl.SetFileName(str(dataset / "reference_mesh_coarse.stl"))
    stl.Update()
    return PhantomData(images, geometries, frames, branches, stl.GetOutput())


def vessel_mask(image: np.ndarray, size: int = 21, border: int = 24) -> np.ndarray:
    """Classical vessel mask of a real frame: black top-hat above Otsu's threshold inside the exposed
    field (``border`` pixels in from the edges, where the collimator edge is), small specks removed."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), 1.0)
    tophat = ndimage.black_tophat(smooth, size=(size, size))
    field = np.zeros(tophat.shape, bool)
    field[border:-border, border:-border] = True
    mask = (tophat > threshold_otsu(tophat[field])) & field
    return remove_small_objects(mask, max_size=60)


def _transform(params: np.ndarray, points: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(params[:3]).apply(points) + params[3:]


def _cost(params, points, geometries, distances, clip=RESIDUAL_CLIP_PX) -> float:
    total = 0.0
    for geometry, dist in zip(geometries, distances):
        pix = geometry.project(_transform(params, points))
        values = ndimage.map_coordinates(dist, [pix[:, 1], pix[:, 0]], order=1, mode="constant", cval=clip)
        total += np.minimum(values, clip).mean()
    return total / len(geometries)


def smooth_distance_maps(masks: list[np.ndarray], sigma: float = FINE_SIGMA_PX) -> list[np.ndarray]:
    """Cubic-spline coefficients of each mask's distance map, Gaussian-smoothed by ``sigma`` px: a fit cost
    that is smooth in the transform, so its minimum is one point, not a float-rounding-dependent place on a
    piecewise-linear plateau."""
    return [ndimage.spline_filter(ndimage.gaussian_filter(ndimage.distance_transform_edt(~m), sigma), order=3)
            for m in masks]


def smooth_cost(params, points, geometries, coefficients, clip: float = FINE_CLIP_PX) -> float:
    """Mean over both views of ``clip * tanh(d / clip)``, ``d`` the smoothed distance (px) of each projected point
    to the vessel mask: about ``d`` on the vessels, saturating at ``clip`` for reference tubes without contrast."""
    total = 0.0
    for geometry, coefficient in zip(geometries, coefficients):
        pix = geometry.project(_transform(params, points))
        values = ndimage.map_coordinates(coefficient, [pix[:, 1], pix[:, 0]], order=3, mode="nearest",
                                         prefilter=False)
        total += (clip * np.tanh(values / clip)).mean()
    return total / len(geometries)


def refine_fit(points, geometries, coefficients, starts: list[np.ndarray]) -> np.ndarray:
    """Tight Powell on :func:`smooth_cost` from every start; the fit with the lowest cost (rounded to 1e-6 px,
    ties to the earlier start) is kept. The choice is by the fit cost only."""
    from scipy.optimize import minimize

    fits = [minimize(smooth_cost, start, args=(points, geometries, coefficients), method="Powell",
                     options=FINE_OPTIONS) for start in starts]
    return min(enumerate(fits), key=lambda item: (round(float(item[1].fun), 6), item[0]))[1].x


def register_reference(points: np.ndarray, masks: list[np.ndarray], geometries, n_rotations: int = 2000,
                       seed: int = 1) -> tuple[np.ndarray, float]:
    """Rigid transform (rotation vector, translation) of the reference points into our frame that puts
    their projections on the vessel masks of both views; returns it and the mean residual (px).

    Coarse: ``n_rotations`` random rotations, each translated so that the reference centroid lands on
    the triangulated centroid of the two masks, then Powell on the 6 parameters from the best six; fine:
    :func:`refine_fit` from all six on a smooth cost, tightly converged, so that the fit does not depend on
    float roundings (BLAS kernel, a 1e-9 change of the input).
    """
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    from .geometry import triangulate_dlt

    distances = [ndimage.distance_transform_edt(~m) for m in masks]
    centroids = [np.argwhere(m).mean(0)[::-1] for m in masks]
    target = triangulate_dlt(geometries[0].projection_matrix(), geometries[1].projection_matrix(),
                             centroids[0][None], centroids[1][None])[0]
    sparse = points[::3]
    centre = points.mean(0)
    rotations = Rotation.concatenate([Rotation.identity(), Rotation.random(n_rotations, random_state=seed)])
    candidates = []
    for index, rotation in enumerate(rotations):
        params = np.r_[rotation.as_rotvec(), target - rotation.apply(centre)]
        candidates.append((round(_cost(params, sparse, geometries, distances), 9), index, params))
    candidates.sort(key=lambda c: c[:2])
    starts = [minimize(_cost, start, args=(sparse, geometries, distances), method="Powell",
                       options={"xtol": 1e-3, "ftol": 1e-4, "maxfev": 4000}).x for *_, start in candidates[:6]]
    params = refine_fit(points, geometries, smooth_distance_maps(masks), starts)
    residual = float(np.mean([ndimage.map_coordinates(d, [p[:, 1], p[:, 0]], order=1, mode="nearest").mean()
                              for d, p in ((d, g.project(_transform(params, points)))
                                           for d, g in zip(distances, geometries))]))
    return params, residual


def visible_branches(branches: list[np.ndarray], params, masks, geometries, margin: int = 30,
                     min_length_mm: float = 20.0) -> list[int]:
    """Branches whose projection lies on a vessel (within ``VISIBLE_PX``) for at least 85 % of their
    points, inside the field, in both views."""
    distances = [ndimage.distance_transform_edt(~m) for m in masks]
    keep = []
    for index, branch in enumerate(branches):
        if np.linalg.norm(np.diff(branch, axis=0), axis=1).sum() < min_length_mm:
            continue
        ok = True
        for geometry, dist in zip(geometries, distances):
            pix = geometry.project(_transform(params, branch))
            inside = ((pix >= margin) & (pix < np.array([geometry.columns, geometry.rows]) - margin)).all(1)
            on = ndimage.map_coordinates(dist, [pix[:, 1], pix[:, 0]], order=1, mode="nearest") <= VISIBLE_PX
            ok &= bool(inside.all() and on.mean() >= 0.85)
        if ok:
            keep.append(index)
    return keep


def projection_residual(branches: list[np.ndarray], params, masks, geometries) -> float:
    """Mean distance (px) of the registered branches' projections to the vessel masks, both views."""
    if not branches:
        return float("nan")
    points = np.concatenate(branches)
    values = []
    for mask, geometry in zip(masks, geometries):
        pix = geometry.project(_transform(params, points))
        dist = ndimage.distance_transform_edt(~mask)
        values.append(ndimage.map_coordinates(dist, [pix[:, 1], pix[:, 0]], order=1, mode="nearest").mean())
    return float(np.mean(values))


def _polyline_distance_3d(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    a, b = polyline[:-1], polyline[1:]
    ab = b - a
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(points[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1).min(1)


def reference_radius(branch: np.ndarray, mesh) -> float:
    """Median distance (mm) from a reference centreline to the reference lumen surface."""
    import vtk

    locator = vtk.vtkCellLocator()
    locator.SetDataSet(mesh)
    locator.BuildLocator()
    closest, cell, sub, dist2 = [0.0, 0.0, 0.0], vtk.mutable(0), vtk.mutable(0), vtk.mutable(0.0)
    values = []
    for point in branch[2:-2]:
        locator.FindClosestPoint(point.tolist(), closest, cell, sub, dist2)
        values.append(np.sqrt(float(dist2)))
    return float(np.median(values))


def click_points(branch_ours: np.ndarray, geometries, inset: float = 0.05) -> np.ndarray:
    """(2, 1, 2, 2) start/end pixels per view: the registered branch's points ``inset`` in from each end."""
    from ..phantoms.xray import resample_polyline

    line = resample_polyline(branch_ours, n=201)
    ends = line[[int(inset * 200), int((1 - inset) * 200)]]
    return np.stack([g.project(ends)[None] for g in geometries])


def evaluate_real_phantom(shared: str | Path, variants: list[tuple[str, object, str, bool]],
                          max_branches: int | None = None) -> dict:
    """Register the reference, reconstruct every branch visible in both views with each variant
    (name, net, segmenter, refine) and return the per-variant means and the per-branch rows."""
    from .pipeline import reconstruct

    data = load_phantom(shared)
    masks = [vessel_mask(image) for image in data.images]
    all_points = np.concatenate(data.branches)
    params, residual = register_reference(all_points, masks, data.geometries)
    visible = visible_branches(data.branches, params, masks, data.geometries)[:max_branches]
    out = {"registration_residual_px": round(residual, 3),
           "registration_residual_visible_px": round(projection_residual(
               [data.branches[i] for i in visible], params, masks, data.geometries), 3),
           "frames": data.frames, "branches": visible, "rows": [], "per_branch": []}
    for name, net, segmenter, refine in variants:
        rows = []
        for index in visible:
            registered = _transform(params, data.branches[index])
            clicks = click_points(registered, data.geometries)
            result = reconstruct(data.images, data.geometries, clicks, net=net, segmenter=segmenter, refine=refine,
                                 calibrate=True, stitch=False)
            branch = result.branches[0]
            centres, radii = branch.refined_centerline()
            distance = _polyline_distance_3d(centres, registered)
            ratio = float(np.median(radii) / reference_radius(data.branches[index], data.mesh_points))
            rows.append({"branch": index, "mean_mm": float(distance.mean()), "max_mm": float(distance.max()),
                         "radius_ratio": ratio, "calibration_deg": result.quality["calibration"]["delta_primary_deg"],
                         "reprojection_px": result.quality["reprojection_px"],
                         "uncertainty_mm": result.quality.get("uncertainty_mm", {}).get("main", {}),
                         "seconds": float(sum(result.timings.values()))})
        out["per_branch"].append({"method": name, "rows": rows})
        out["rows"].append({"method": name, **{k: float(np.mean([r[k] for r in rows])) for k in
                                               ("mean_mm", "max_mm", "radius_ratio", "seconds")},
                            "worst_max_mm": float(max(r["max_mm"] for r in rows))})
    return out


def format_real(report: dict) -> str:
    lines = [f"static phantom IM3 + IM4 (frames {report['frames']}), branches visible in both views: "
             f"{report['branches']}; reference fit residual {report['registration_residual_px']:.2f} px (all "
             f"points), {report['registration_residual_visible_px']:.2f} px (those branches)",
             f"{'method':22}{'mean mm':>10}{'max mm':>10}{'worst max':>11}{'radius ratio':>14}{'s/branch':>10}"]
    for row in report["rows"]:
        lines.append(f"{row['method']:22}{row['mean_mm']:10.3f}{row['max_mm']:10.3f}{row['worst_max_mm']:11.3f}"
                     f"{row['radius_ratio']:14.3f}{row['seconds']:10.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ floors: what 2D centrelines can reach here

FLOOR_CENTRES_PX = np.arange(-4.0, 4.001, 0.1)     # lateral search of the imaged vessel's centre (px)
FLOOR_REACH_PX = 10.0                               # half-length of the intensity profile across the vessel
FLOOR_MEDIAN_POINTS = 5                             # running median of the fitted centre offsets


def reference_paths(registered: np.ndarray, geometries, inset: float = 0.05, n: int = 100) -> list[np.ndarray]:
    """Per view, the exact projection of the registered reference branch between the clicked ends
    (:func:`click_points`), ``n`` points by 2D arc length: the 2D centrelines a perfect tracker would give
    if the reference lay exactly on the imaged vessels."""
    from ..phantoms.xray import resample_polyline

    line = resample_polyline(registered, n=201)
    section = line[int(inset * 200):int((1 - inset) * 200) + 1]
    return [resample_polyline(g.project(section), n=n) for g in geometries]


def imaged_centre_offsets(image: np.ndarray, path: np.ndarray, reach: float = FLOOR_REACH_PX) -> np.ndarray:
    """Lateral offset (px, along the path's normal as :func:`~.centerline.vessel_profiles` takes it) of the
    imaged vessel's centre at each point of ``path``: the centre of the module's QCA lumen model (a round
    lumen's blurred chord on a linear background, any radius, centres within +-4 px) least-squares fitted
    to the intensity profile across the path, then a running median over ``FLOOR_MEDIAN_POINTS``."""
    from .centerline import fitted_lumen_centres, vessel_profiles

    offsets, profiles = vessel_profiles(image, path, reach)
    centres = fitted_lumen_centres(profiles, offsets, FLOOR_CENTRES_PX)
    return ndimage.median_filter(centres, FLOOR_MEDIAN_POINTS, mode="nearest")


def centred_path(image: np.ndarray, path: np.ndarray) -> np.ndarray:
    """``path`` moved across the vessel onto the imaged vessel's centre (:func:`imaged_centre_offsets`),
    its two ends (the clicks) kept: a 2D centreline exactly on the imaged vessel with the same clicked ends."""
    tangent = np.gradient(np.asarray(path, float), axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    out = path + imaged_centre_offsets(image, path)[:, None] * np.c_[-tangent[:, 1], tangent[:, 0]]
    out[0], out[-1] = path[0], path[-1]
    return out


def triangulated_floor(paths: list[np.ndarray], clicks: np.ndarray, geometries, depth_refine: bool = True,
                       smooth: float = 1.5) -> np.ndarray:
    """3D centreline (100, 3) from two given 2D centrelines as the pipeline triangulates them: view B
    calibrated on the clicks (``clicks`` (2, 2, 2): per view start and end), epipolar match, DLT and the
    depth refit (``depth_refine=False, smooth=0``: the plain point-wise DLT, for comparison)."""
    from ..phantoms.xray import resample_polyline
    from .geometry import refine_calibration
    from .triangulation import triangulate_points

    calibration = refine_calibration(geometries[0], geometries[1], clicks[0], clicks[1])
    points, _ = triangulate_points(paths[0], paths[1], calibration.geometry_a, calibration.geometry_b,
                                   smooth=smooth, depth_refine=depth_refine)
    return resample_polyline(points, n=100)


def refit_registration(centrelines: dict, branches: list[np.ndarray], params: np.ndarray) -> np.ndarray:
    """The one rigid transform (from ``params``) that brings the reference branches closest to the given 3D
    centrelines ({branch index: (N, 3)}), minimising the mean over branches of the mean distance: the most
    any single rigid registration could give these centrelines (optimistic: it is fitted to them)."""
    from scipy.optimize import minimize

    def cost(p):
        return float(np.mean([_polyline_distance_3d(c, _transform(p, branches[i])).mean()
                              for i, c in centrelines.items()]))

    return minimize(cost, np.asarray(params, float), method="Powell",
                    options={"xtol": 1e-6, "ftol": 1e-9, "maxfev": 20000}).x


def _distance_row(centreline: np.ndarray, reference: np.ndarray) -> dict:
    distance = _polyline_distance_3d(centreline, reference)
    return {"mean_mm": float(distance.mean()), "max_mm": float(distance.max())}


def evaluate_floors(shared: str | Path, params: np.ndarray | None = None) -> dict:
    """How far 2D centrelines could take this check, per branch visible in both views, under the
    evaluation's own registration (fitted to the images, :func:`register_reference`): the registered
    reference's exact projections (``exact``) and the same moved onto the imaged vessels' centres
    (``centred``, :func:`centred_path`), each triangulated as the pipeline does and by the plain DLT
    (``_dlt``); and the centred ones against the reference re-registered to them (``_refit``,
    :func:`refit_registration`: optimistic, the transform is fitted to those centrelines). ``params``: a
    registration to use instead (rotation vector, translation mm), e.g. an older one."""
    data = load_phantom(shared)
    masks = [vessel_mask(image) for image in data.images]
    if params is None:
        params, residual = register_reference(np.concatenate(data.branches), masks, data.geometries)
    else:
        params, residual = np.asarray(params, float), float("nan")
    visible = visible_branches(data.branches, params, masks, data.geometries)
    lines, shifts = {name: {} for name in ("exact", "exact_dlt", "centred", "centred_dlt")}, {}
    for index in visible:
        registered = _transform(params, data.branches[index])
        clicks = click_points(registered, data.geometries)[:, 0]
        exact = reference_paths(registered, data.geometries)
        moved = [centred_path(image, path) for image, path in zip(data.images, exact)]
        shifts[index] = [float(np.linalg.norm(m - e, axis=1).mean()) for m, e in zip(moved, exact)]
        for name, paths in (("exact", exact), ("centred", moved)):
            lines[name][index] = triangulated_floor(paths, clicks, data.geometries)
            lines[name + "_dlt"][index] = triangulated_floor(paths, clicks, data.geometries, False, 0.0)
    rows = {name: {i: _distance_row(c, _transform(params, data.branches[i])) for i, c in found.items()}
            for name, found in lines.items()}
    refits = {}
    for name in ("centred", "centred_dlt"):
        refits[name] = refit_registration(lines[name], data.branches, params)
        rows[name + "_refit"] = {i: _distance_row(c, _transform(refits[name], data.branches[i]))
                                 for i, c in lines[name].items()}
    moved_mm = {name: {i: float(_polyline_distance_3d(_transform(p, data.branches[i]),
                                                      _transform(params, data.branches[i])).mean()) for i in visible}
                for name, p in refits.items()}
    return {"branches": visible, "registration": [float(v) for v in params], "registration_residual_px": residual,
            "refits": {name: [float(v) for v in p] for name, p in refits.items()},
            "refit_moves_reference_mm": moved_mm, "centring_shift_px": shifts, "rows": rows}


def format_floors(report: dict, target: tuple[float, float] = (0.8, 2.5)) -> str:
    """One line per floor: per branch mean / max mm, and which branches meet ``target``."""
    lines = [f"floors on branches {report['branches']} (mean / max mm; * meets {target[0]} / {target[1]} mm)"]
    for name, rows in report["rows"].items():
        cells = [f"{i}: {r['mean_mm']:.2f} / {r['max_mm']:.2f}{'*' if r['mean_mm'] <= target[0] and r['max_mm'] <= target[1] else ''}"
                 for i, r in rows.items()]
        lines.append(f"{name:19}" + ", ".join(cells))
    return "\n".join(lines)

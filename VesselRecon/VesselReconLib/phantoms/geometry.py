"""Exact conversions of a :class:`~VesselReconLib.phantoms.tree.VascularTree` to voxels, SDF,
surface mesh and centerlines.

Array conventions (read this first)
-----------------------------------
* Volumes are numpy arrays indexed ``[k, j, i] = [z, y, x]`` (Slicer's KJI order, what
  ``slicer.util.arrayFromVolume`` returns), so they go straight into Slicer volume nodes.
* ``shape`` is therefore ``(nk, nj, ni) = (nz, ny, nx)``, but ``spacing = (sx, sy, sz)`` and
  ``origin = (ox, oy, oz)`` are in x, y, z order (as ``vtkMRMLVolumeNode.GetSpacing/GetOrigin``).
* The centre of voxel ``[k, j, i]`` is at world ``(ox + i*sx, oy + j*sy, oz + k*sz)`` mm
  (axis-aligned grid). Alternatively pass a full 4x4 ``ijk_to_world`` matrix (world = M @ [i, j,
  k, 1]), e.g. from ``volumeNode.GetIJKToRASMatrix``; it overrides ``spacing``/``origin``.

Geometry primitive
------------------
Every edge ``(a, b)`` is the *round cone* = convex hull of the node spheres ``B(a, r_a)`` and
``B(b, r_b)``, i.e. the union of spheres whose centre and radius vary linearly along the edge (a
cone frustum closed by spherical caps, tangent-continuous). A node without edges is a sphere. The
vessel is the union of all primitives.

* :func:`tree_to_labelmap`: voxel is 1 iff its centre is strictly inside the union
  (``sdf < 0``).
* :func:`tree_to_sdf`: ``min`` over primitives of each primitive's exact (analytic) signed
  distance, evaluated in each primitive's bounding box grown by a narrow band ``band_mm``
  (default 2 x the largest voxel size). Outside the union this *is* the exact Euclidean distance
  to the union; inside it equals minus the depth in the deepest primitive (exact away from
  junctions, an under-estimate of the depth where primitives overlap); the zero level set is
  exact everywhere. Values are exact wherever ``sdf <= band_mm``. Farther voxels get a far-field
  value (``far_field=``):

  - ``"analytic"`` (default): the same analytic rasterisation, on a grid made of every ``f``-th
    voxel (``f = 1`` up to 1M voxels; ``f = 3`` for 448x448x128) with a band of two coarse
    voxels, tracking each voxel's nearest primitive. Coarse voxels beyond that band get the exact
    KD-tree query (:func:`sdf_at_points`) when few, otherwise the exact distance to the nearest
    of the candidate primitives found through ``scipy.ndimage.distance_transform_edt`` indices
    (nearest band voxels of the voxel and its 6 neighbours) -- an upper bound that is almost
    always exact. For ``f > 1`` fine voxels interpolate the coarse values trilinearly, clipped to
    ``[band_mm, box upper bound]``. Measured on a 448x448x128 tree: median error 0.06 mm,
    99th percentile 0.6 mm, worst ~1 mm (interpolation across medial surfaces); with ``f = 1``
    99 % of far voxels are exact to 1e-3 mm.
  - ``"edt"``: Hopf-Lax ``d(y) + |x - y|`` from the nearest fine voxel ``y`` of the exact band
    (``distance_transform_edt(sampling=spacing, return_indices=True)`` on the full grid; slower,
    an upper bound; vessels outside the volume are not seen).
  - ``"truncate"``: the constant ``band_mm`` (a truncated SDF).

  Labelmap and SDF come from the same float64 evaluation, so ``labelmap == (sdf < 0)`` holds
  exactly (negative values are kept negative in float32).
* :func:`tree_to_mesh`: flying edges (``vtkFlyingEdges3D``) on a fine SDF at level 0, returning a
  closed, manifold ``vtkPolyData`` in world mm with outward normals.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .tree import VascularTree

__all__ = [
    "ijk_to_world_matrix",
    "world_to_ijk",
    "ijk_to_world",
    "fit_grid",
    "tree_primitives",
    "sdf_at_points",
    "tree_to_labelmap",
    "tree_to_sdf",
    "tree_to_mesh",
    "tree_to_centerlines",
    "mesh_is_watertight",
    "mesh_volume",
    "sample_volume",
]

_F32_TINY = float(np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------------------------
# Grid helpers
# --------------------------------------------------------------------------------------------


def ijk_to_world_matrix(
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    ijk_to_world: np.ndarray | None = None,
) -> np.ndarray:
    """4x4 matrix mapping ``[i, j, k, 1]`` (x-fastest voxel indices) to world mm."""
    if ijk_to_world is not None:
        m = np.asarray(ijk_to_world, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError("ijk_to_world must be 4x4")
        return m
    m = np.eye(4)
    m[:3, :3] = np.diag(np.asarray(spacing, dtype=np.float64))
    m[:3, 3] = np.asarray(origin, dtype=np.float64)
    return m


def ijk_to_world(ijk: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), ijk_to_world=None) -> np.ndarray:
    """Map ``(n, 3)`` continuous ``(i, j, k)`` indices to world mm."""
    m = ijk_to_world_matrix(spacing, origin, ijk_to_world)
    return np.asarray(ijk, float) @ m[:3, :3].T + m[:3, 3]


def world_to_ijk(points: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), ijk_to_world=None) -> np.ndarray:
    """Map ``(n, 3)`` world mm to continuous ``(i, j, k)``; the array element is ``[k, j, i]``."""
    m = ijk_to_world_matrix(spacing, origin, ijk_to_world)
    return np.linalg.solve(m[:3, :3], (np.asarray(points, float) - m[:3, 3]).T).T


def fit_grid(
    tree: VascularTree, spacing: Sequence[float], margin_mm: float = 2.0
) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape_kji, origin_xyz)`` of an axis-aligned grid with ``spacing`` covering the tree.

    The grid contains the tree's bounding box (radii included) grown by ``margin_mm``.
    """
    lo, hi = tree.bounds()
    sp = np.asarray(spacing, float)
    lo = lo - margin_mm
    hi = hi + margin_mm
    n = np.maximum(np.ceil((hi - lo) / sp).astype(int) + 1, 1)
    return (int(n[2]), int(n[1]), int(n[0])), lo


def sample_volume(volume_kji: np.ndarray, points: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                  ijk_to_world=None, order: int = 1, cval: float = np.nan) -> np.ndarray:
    """Interpolate a ``[k, j, i]`` volume at world points (trilinear by default)."""
    from scipy.ndimage import map_coordinates

    ijk = world_to_ijk(points, spacing, origin, ijk_to_world)
    return map_coordinates(np.asarray(volume_kji, np.float64), ijk[:, ::-1].T, order=order, mode="constant", cval=cval)


# --------------------------------------------------------------------------------------------
# Primitives and their analytic SDF
# --------------------------------------------------------------------------------------------


def tree_primitives(tree: VascularTree) -> dict[str, np.ndarray]:
    """Round-cone parameters of every edge (and sphere of every isolated node).

    Returns arrays ``a (P,3), b (P,3), ra, rb, edge (P,)`` (``edge = -1 - node`` for isolated
    nodes) plus the precomputed ``u`` (unit axis), ``L``, ``sin``/``cos`` of the cone half-angle.
    Degenerate edges (one sphere inside the other, ``L <= |ra - rb|``) become the larger sphere.
    """
    e = tree.edges
    a = tree.nodes[e[:, 0]] if len(e) else np.zeros((0, 3))
    b = tree.nodes[e[:, 1]] if len(e) else np.zeros((0, 3))
    ra = tree.radii[e[:, 0]] if len(e) else np.zeros(0)
    rb = tree.radii[e[:, 1]] if len(e) else np.zeros(0)
    ids = np.arange(len(e), dtype=np.int64)
    connected = np.zeros(tree.n_nodes, bool)
    if len(e):
        connected[e.ravel()] = True
    iso = np.flatnonzero(~connected)
    if len(iso):
        a = np.vstack([a, tree.nodes[iso]])
        b = np.vstack([b, tree.nodes[iso]])
        ra = np.concatenate([ra, tree.radii[iso]])
        rb = np.concatenate([rb, tree.radii[iso]])
        ids = np.concatenate([ids, -1 - iso])
    return _prepare(a, b, ra, rb, ids)


def _prepare(a, b, ra, rb, ids) -> dict[str, np.ndarray]:
    a = np.asarray(a, np.float64).reshape(-1, 3).copy()
    b = np.asarray(b, np.float64).reshape(-1, 3).copy()
    ra = np.asarray(ra, np.float64).copy()
    rb = np.asarray(rb, np.float64).copy()
    d = b - a
    L = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])
    degen = L <= np.abs(ra - rb) + 1e-12
    # degenerate: the larger sphere
    big_b = degen & (rb > ra)
    a[big_b] = b[big_b]
    ra[big_b] = rb[big_b]
    rb[degen] = ra[degen]
    b[degen] = a[degen]
    L = np.where(degen, 0.0, L)
    u = np.zeros_like(a)
    u[:, 0] = 1.0
    nd = ~degen
    u[nd] = d[nd] / L[nd, None]
    sin = np.zeros_like(L)
    sin[nd] = (ra[nd] - rb[nd]) / L[nd]
    cos = np.sqrt(np.maximum(1.0 - sin * sin, 0.0))
    return {"a": a, "b": b, "ra": ra, "rb": rb, "u": u, "L": L, "sin": sin, "cos": cos, "edge": np.asarray(ids)}


def _round_cone_sdf(px, py, pz, ax, ay, az, ux, uy, uz, L, r1, r2, sn, cs):
    """Exact signed distance from points to round cones (all args broadcastable arrays).

    In the (t, q) half-plane (t along the axis from ``a``, q radial), the round cone is the
    convex hull of circles ``(0, r1)`` and ``(L, r2)``; with ``sin = (r1 - r2) / L`` the tangent
    side has outward normal ``(sin, cos)``. A point whose side coordinate ``t cos - q sin`` is
    below 0 is nearest sphere ``a``, above ``L cos`` nearest sphere ``b``, otherwise the side.
    Written with explicit element-wise arithmetic (no BLAS/pairwise sums), so identical inputs
    give bit-identical outputs regardless of array shape or batching.
    """
    dx = px - ax
    dy = py - ay
    dz = pz - az
    t = dx * ux
    t += dy * uy
    t += dz * uz
    pa2 = dx * dx
    pa2 += dy * dy
    pa2 += dz * dz
    # radial vector (dx, dy, dz) - t * u, computed in place
    dx -= t * ux
    dy -= t * uy
    dz -= t * uz
    dx *= dx
    dy *= dy
    dz *= dz
    dx += dy
    dx += dz
    q = np.sqrt(dx, out=dx)
    s = t * cs
    s -= q * sn
    d = t * sn
    d += q * cs
    d -= r1  # side distance
    np.sqrt(pa2, out=pa2)
    pa2 -= r1  # distance to sphere a
    np.copyto(d, pa2, where=s < 0.0)
    t -= L
    t *= t
    q *= q
    t += q
    np.sqrt(t, out=t)
    t -= r2  # distance to sphere b
    np.copyto(d, t, where=s > L * cs)
    return d


def _prim_sdf(prim: dict, ci: np.ndarray, p: np.ndarray) -> np.ndarray:
    a, u = prim["a"][ci], prim["u"][ci]
    return _round_cone_sdf(p[:, 0], p[:, 1], p[:, 2], a[:, 0], a[:, 1], a[:, 2], u[:, 0], u[:, 1], u[:, 2],
                           prim["L"][ci], prim["ra"][ci], prim["rb"][ci], prim["sin"][ci], prim["cos"][ci])


def _sdf_points_prim(prim: dict, pts: np.ndarray, k: int = 12, piece_mm: float = 2.0, chunk: int = 1 << 20) -> np.ndarray:
    """Exact min-over-primitives SDF at points: k nearest primitive pieces (KD tree on piece
    centres), certified by the bound ``sdf_j(x) >= |x - c_j| - R_j``; uncertified points fall back
    to a ball query that provably contains every primitive that could be nearer."""
    from scipy.spatial import cKDTree

    P = len(prim["L"])
    out = np.full(len(pts), np.inf)
    if not P or not len(pts):
        return out
    L = prim["L"]
    npc = np.maximum(1, np.ceil(L / piece_mm).astype(np.int64))
    pid = np.repeat(np.arange(P), npc)
    j = np.arange(len(pid)) - np.repeat(np.cumsum(npc) - npc, npc)
    f = (j + 0.5) / npc[pid]
    cen = prim["a"][pid] + f[:, None] * (prim["b"][pid] - prim["a"][pid])
    rad = 0.5 * L[pid] / npc[pid] + np.maximum(prim["ra"][pid], prim["rb"][pid])
    R = float(rad.max())
    tree = cKDTree(cen)
    k = int(min(k, len(pid)))
    for s in range(0, len(pts), chunk // max(k, 1)):
        x = pts[s : s + chunk // max(k, 1)]
        dd, ii = tree.query(x, k=k)
        dd = dd.reshape(len(x), k)
        ii = ii.reshape(len(x), k)
        cand = pid[ii]
        d = _prim_sdf(prim, cand.reshape(-1), np.repeat(x, k, axis=0)).reshape(len(x), k)
        best = d.min(1)
        if k < len(pid):
            bad = np.flatnonzero(dd[:, -1] - R < best)
            if len(bad):
                lists = tree.query_ball_point(x[bad], best[bad] + R + 1e-9, return_sorted=False)
                lens = np.fromiter((len(l) for l in lists), np.int64, len(lists))
                if lens.sum():
                    q = np.repeat(np.arange(len(bad)), lens)
                    c = pid[np.concatenate([np.asarray(l, np.int64) for l in lists if len(l)])]
                    dv = _prim_sdf(prim, c, x[bad][q])
                    b2 = best[bad].copy()
                    np.minimum.at(b2, q, dv)
                    best[bad] = b2
        out[s : s + len(x)] = best
    return out


def sdf_at_points(tree: VascularTree, points: np.ndarray) -> np.ndarray:
    """Exact signed distance (mm, negative inside) of world ``points`` to the tree.

    Same definition as :func:`tree_to_sdf` inside its band (min over primitives of the analytic
    round-cone SDF), exact at any distance.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    return _sdf_points_prim(tree_primitives(tree), pts)


# --------------------------------------------------------------------------------------------
# Rasterisation kernel
# --------------------------------------------------------------------------------------------

_NICE = np.array([1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
                  160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 2048, 4096, 8192])


def _round_up_nice(n: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(_NICE, n)
    big = idx >= len(_NICE)
    out = _NICE[np.minimum(idx, len(_NICE) - 1)].copy()
    out[big] = n[big]
    return out


def _work_items(prim: dict, shape_kji, M: np.ndarray, pad_mm: float, max_piece_vox: float = 8.0):
    """Split primitives into pieces with small ijk boxes. Returns (prim_index, lo_ijk, hi_ijk)."""
    A = M[:3, :3]
    Ainv = np.linalg.inv(A)
    t = M[:3, 3]
    rown = np.sqrt((Ainv * Ainv).sum(1))  # ijk half-extent per mm of world radius
    n_ijk = np.array([shape_kji[2], shape_kji[1], shape_kji[0]], dtype=np.int64)
    a, b, ra, rb, L = prim["a"], prim["b"], prim["ra"], prim["rb"], prim["L"]
    # piece length ~ max_piece_vox voxels of the smallest spacing, but at least the radius
    vox = 1.0 / rown.max()
    piece = np.maximum(max_piece_vox * vox, np.maximum(ra, rb))
    npieces = np.maximum(1, np.ceil(L / piece).astype(np.int64))
    pidx = np.repeat(np.arange(len(L)), npieces)
    first = np.repeat(np.cumsum(npieces) - npieces, npieces)
    k = np.arange(len(pidx)) - first
    n_rep = npieces[pidx].astype(np.float64)
    f0 = k / n_rep
    f1 = (k + 1) / n_rep
    ab = b[pidx] - a[pidx]
    c0 = a[pidx] + f0[:, None] * ab
    c1 = a[pidx] + f1[:, None] * ab
    r0 = ra[pidx] + f0 * (rb[pidx] - ra[pidx]) + pad_mm
    r1 = ra[pidx] + f1 * (rb[pidx] - ra[pidx]) + pad_mm
    i0 = (c0 - t) @ Ainv.T
    i1 = (c1 - t) @ Ainv.T
    e0 = r0[:, None] * rown[None]
    e1 = r1[:, None] * rown[None]
    eps = 1e-6
    lo = np.ceil(np.minimum(i0 - e0, i1 - e1) - eps).astype(np.int64)
    hi = np.floor(np.maximum(i0 + e0, i1 + e1) + eps).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, n_ijk - 1)
    ok = np.all(hi >= lo, axis=1)
    return pidx[ok], lo[ok], hi[ok]


def _rasterize(tree: VascularTree, shape_kji, M: np.ndarray, pad_mm: float, mode: str,
               values: np.ndarray | None = None, out: np.ndarray | None = None,
               chunk_elems: int = 1 << 17) -> np.ndarray:
    """Evaluate primitives in their boxes. mode 'min' -> float32 min-SDF (+inf where uncovered);
    mode 'inside' -> writes ``values[primitive]`` (or 1) into ``out`` where sdf < 0."""
    shape_kji = tuple(int(s) for s in shape_kji)
    prim = tree_primitives(tree)
    nk, nj, ni = shape_kji
    if out is None:
        if mode == "min":
            out = np.full(shape_kji, np.inf, dtype=np.float32)
        elif mode == "minarg":
            out = np.full(shape_kji, np.iinfo(np.int64).max, dtype=np.int64)
        else:
            out = np.zeros(shape_kji, dtype=np.uint8)
    flat = out.reshape(-1)
    if not len(prim["L"]):
        return out
    pidx, lo, hi = _work_items(prim, shape_kji, M, pad_mm)
    if not len(pidx):
        return out
    dims = hi - lo + 1
    rd = np.stack([_round_up_nice(dims[:, c]) for c in range(3)], 1)
    key = (rd[:, 0] * 10007 + rd[:, 1]) * 10007 + rd[:, 2]
    order = np.argsort(key, kind="stable")
    key_s = key[order]
    bounds = np.flatnonzero(np.diff(key_s)) + 1
    groups = np.split(order, bounds)
    A = M[:3, :3]
    T = M[:3, 3]
    diagonal = not np.any(A - np.diag(np.diag(A)))
    if diagonal:  # per-axis coordinate tables (same values as the general formula)
        xs = A[0, 0] * np.arange(ni, dtype=np.float64) + T[0]
        ys = A[1, 1] * np.arange(nj, dtype=np.float64) + T[1]
        zs = A[2, 2] * np.arange(nk, dtype=np.float64) + T[2]
    for grp in groups:
        bi, bj, bk = (int(x) for x in rd[grp[0]])
        V = bi * bj * bk
        ok_, oj, oi = np.meshgrid(np.arange(bk), np.arange(bj), np.arange(bi), indexing="ij")
        oi, oj, ok_ = oi.reshape(-1), oj.reshape(-1), ok_.reshape(-1)
        per = max(1, chunk_elems // V)
        for s in range(0, len(grp), per):
            g = grp[s : s + per]
            # indices beyond a box's true extent are clamped onto its last row: duplicates are
            # harmless for both min and set
            ii = np.minimum(lo[g, 0:1] + oi[None], hi[g, 0:1])
            jj = np.minimum(lo[g, 1:2] + oj[None], hi[g, 1:2])
            kk = np.minimum(lo[g, 2:3] + ok_[None], hi[g, 2:3])
            if diagonal:
                px, py, pz = xs[ii], ys[jj], zs[kk]
            else:
                fi = ii.astype(np.float64)
                fj = jj.astype(np.float64)
                fk = kk.astype(np.float64)
                px = A[0, 0] * fi + A[0, 1] * fj + A[0, 2] * fk + T[0]
                py = A[1, 0] * fi + A[1, 1] * fj + A[1, 2] * fk + T[1]
                pz = A[2, 0] * fi + A[2, 1] * fj + A[2, 2] * fk + T[2]
            p = pidx[g]
            ua = prim["a"][p]
            uu = prim["u"][p]
            d = _round_cone_sdf(px, py, pz, ua[:, 0:1], ua[:, 1:2], ua[:, 2:3], uu[:, 0:1], uu[:, 1:2], uu[:, 2:3],
                                prim["L"][p][:, None], prim["ra"][p][:, None], prim["rb"][p][:, None],
                                prim["sin"][p][:, None], prim["cos"][p][:, None])
            kk *= nj
            kk += jj
            kk *= ni
            kk += ii
            lin = kk
            if mode == "min":
                # keep strictly negative values negative after the float32 cast
                neg = d < 0.0
                np.minimum(d, -_F32_TINY, out=d, where=neg)
                np.minimum.at(flat, lin.reshape(-1), d.astype(np.float32).reshape(-1))
            elif mode == "minarg":
                np.minimum.at(flat, lin.reshape(-1), _encode_min_arg(d, p).reshape(-1))
            else:
                m = d < 0.0
                if values is None:
                    flat[lin[m]] = 1
                else:
                    vals = np.broadcast_to(values[p][:, None], d.shape)
                    flat[lin[m]] = vals[m]
    return out


def _encode_min_arg(d: np.ndarray, prim_index: np.ndarray) -> np.ndarray:
    """int64 keys ordering like the float32 value first, then the primitive index."""
    neg = d < 0.0
    np.minimum(d, -_F32_TINY, out=d, where=neg)
    b = d.astype(np.float32).view(np.int32)
    b = np.where(b < 0, b ^ np.int32(0x7FFFFFFF), b).astype(np.int64)
    return (b << 32) | np.broadcast_to(prim_index.reshape(-1, 1), d.shape).astype(np.int64)


def _decode_min_arg(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_encode_min_arg`: (float32 value (+inf when unset), primitive index (-1))."""
    unset = key == np.iinfo(np.int64).max
    b = (key >> 32).astype(np.int32)
    b = np.where(b < 0, b ^ np.int32(0x7FFFFFFF), b)
    val = b.view(np.float32).copy()
    idx = (key & 0xFFFFFFFF).astype(np.int64)
    val[unset] = np.inf
    idx[unset] = -1
    return val, idx


def _grid_args(shape, spacing, origin, ijk_to_world):
    if len(shape) != 3:
        raise ValueError("shape must be (nk, nj, ni)")
    return tuple(int(s) for s in shape), ijk_to_world_matrix(spacing, origin, ijk_to_world)


def tree_to_labelmap(
    tree: VascularTree,
    shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    ijk_to_world: np.ndarray | None = None,
    label_by: str | None = None,
) -> np.ndarray:
    """Voxelise the tree: ``uint8`` array ``[k, j, i]``, 1 where the voxel centre is inside.

    Args:
        shape: ``(nk, nj, ni)``; spacing ``(sx, sy, sz)`` mm; origin ``(ox, oy, oz)`` mm (see module
            docstring) or a 4x4 ``ijk_to_world``.
        label_by: ``None`` (binary), ``"labels"`` (``tree.labels`` of each edge's child node) or
            ``"generation"`` (+1) -- where vessels of different labels overlap, the last edge wins.
    """
    shape, M = _grid_args(shape, spacing, origin, ijk_to_world)
    values = None
    if label_by is not None:
        src = {"labels": tree.labels, "generation": None if tree.generation is None else tree.generation + 1}[label_by]
        if src is None:
            raise ValueError(f"tree has no {label_by}")
        prim = tree_primitives(tree)
        node = np.where(prim["edge"] >= 0, tree.edges[np.maximum(prim["edge"], 0), 1] if tree.n_edges else 0,
                        -1 - prim["edge"])
        values = np.clip(np.asarray(src)[node], 0, 255).astype(np.uint8)
    return _rasterize(tree, shape, M, 0.0, "inside", values=values)


def tree_to_sdf(
    tree: VascularTree,
    shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    ijk_to_world: np.ndarray | None = None,
    band_mm: float | None = None,
    far_field: str = "analytic",
) -> np.ndarray:
    """Signed distance (mm, negative inside) to the vessel union: ``float32`` ``[k, j, i]``.

    Analytic within ``band_mm`` of every primitive (default 2 x the largest voxel size),
    far field per ``far_field`` (``"edt"`` or ``"truncate"``; see the module docstring).
    ``tree_to_labelmap(...) == (tree_to_sdf(...) < 0)`` exactly.
    """
    shape, M = _grid_args(shape, spacing, origin, ijk_to_world)
    if tree.n_nodes == 0:
        return np.full(shape, np.inf, dtype=np.float32)
    vox = np.sqrt((M[:3, :3] ** 2).sum(0))  # mm per index step along i, j, k
    band = float(band_mm) if band_mm is not None else 2.0 * float(vox.max())
    sdf = _rasterize(tree, shape, M, band, "min")
    # values <= band are exact (every primitive within band of a voxel evaluated it); larger values
    # (box corners, +inf outside all boxes) are only upper bounds and are replaced below
    unc = ~(sdf <= band)
    if not unc.any():
        return sdf
    if far_field == "truncate":
        sdf[unc] = band
    elif far_field == "analytic":
        _far_field_fill(sdf, unc, M, tree, band)
    elif far_field == "edt":
        _far_field_edt(sdf, unc, M, band)
    else:
        raise ValueError("far_field must be 'analytic', 'edt' or 'truncate'")
    return sdf


def _far_field_nearest_primitive(C: np.ndarray, arg: np.ndarray, far: np.ndarray, M: np.ndarray, B: float,
                                 prim: dict) -> None:
    """Fill ``far`` voxels with the exact distance to the nearest of a few candidate primitives:
    those nearest to the band voxels that are nearest (``distance_transform_edt`` indices) to the
    voxel and to its six face neighbours. An upper bound that is exact unless yet another
    primitive is closer; for orthogonal axes also capped by the Hopf-Lax bound."""
    from scipy.ndimage import distance_transform_edt

    A = M[:3, :3]
    G = A.T @ A
    src = (C <= B) & (arg >= 0)
    orthogonal = np.abs(G - np.diag(np.diag(G))).max() <= 1e-9 * np.abs(G).max()
    vox = np.sqrt(np.diag(G))
    dist, inds = distance_transform_edt(~src, sampling=(vox[2], vox[1], vox[0]), return_indices=True)
    kk, jj, ii = np.nonzero(far)
    w = np.stack([ii, jj, kk], 1).astype(np.float64) @ A.T + M[:3, 3]
    shape = np.array(C.shape)
    best = np.full(len(kk), np.inf)
    offsets = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    for ok_, oj, oi in offsets:
        qk = np.clip(kk + ok_, 0, shape[0] - 1)
        qj = np.clip(jj + oj, 0, shape[1] - 1)
        qi = np.clip(ii + oi, 0, shape[2] - 1)
        sk, sj, si = inds[0][qk, qj, qi], inds[1][qk, qj, qi], inds[2][qk, qj, qi]
        pid = arg[sk, sj, si]
        for s in range(0, len(kk), 1 << 20):
            sl = slice(s, s + (1 << 20))
            np.minimum(best[sl], _prim_sdf(prim, pid[sl], w[sl]), out=best[sl])
        if (ok_, oj, oi) == (0, 0, 0) and orthogonal:
            best = np.minimum(best, C[sk, sj, si].astype(np.float64) + dist[kk, jj, ii])
    C[kk, jj, ii] = np.maximum(best, B).astype(np.float32)


def _far_field_edt(sdf: np.ndarray, unc: np.ndarray, M: np.ndarray, band: float) -> None:
    """Hopf-Lax fill ``d(x) = d(y) + |x - y|`` with ``y`` the nearest voxel of the analytic tube
    ``{sdf <= band}`` from ``scipy.ndimage.distance_transform_edt(sampling=spacing)`` (an upper
    bound, typically within a fraction of a voxel). Needs orthogonal voxel axes."""
    from scipy.ndimage import distance_transform_edt

    A = M[:3, :3]
    G = A.T @ A
    if np.abs(G - np.diag(np.diag(G))).max() > 1e-9 * np.abs(G).max():
        raise ValueError("far_field='edt' needs orthogonal voxel axes; use 'analytic'")
    vox = np.sqrt(np.diag(G))
    src = sdf <= band
    if not src.any():
        sdf[unc] = band
        return
    dist, inds = distance_transform_edt(~src, sampling=(vox[2], vox[1], vox[0]), return_indices=True)
    near = sdf[inds[0], inds[1], inds[2]]
    del inds
    sdf[unc] = np.maximum(near[unc].astype(np.float64) + dist[unc], band).astype(np.float32)


def _far_field_fill(sdf: np.ndarray, unc: np.ndarray, M: np.ndarray, tree: VascularTree, band: float,
                    max_coarse: float = 1e6, max_exact: int = 60000) -> int:
    """Fill the voxels ``unc`` (farther than ``band`` from every primitive) in place.

    A coarse grid made of every ``f``-th voxel (``f`` = 1 up to ``max_coarse`` voxels, else the
    smallest ``f`` giving at most that many) is rasterised analytically with a band
    ``B = 2 f * max(spacing)``, tracking the nearest primitive of every voxel. Coarse voxels
    beyond ``B`` get the exact KD-tree SDF when at most ``max_exact`` of them, otherwise the exact
    distance to the nearest primitive of their nearest band voxel (capped by the Hopf-Lax bound).
    Fine voxels take the trilinear (separable) interpolation of the coarse values, clipped to
    ``[band, the upper bound already stored]``. Returns ``f``.
    """
    nk, nj, ni = sdf.shape
    f = 1
    while math.ceil((nk - 1) / f + 1) * math.ceil((nj - 1) / f + 1) * math.ceil((ni - 1) / f + 1) > max_coarse:
        f += 1
    Kc, Jc, Ic = (-(-(n - 1) // f) + 1 for n in (nk, nj, ni))
    Mc = M @ np.diag([f, f, f, 1.0])
    vox_c = np.sqrt((Mc[:3, :3] ** 2).sum(0))
    B = float(band) if f == 1 else max(float(band), 2.0 * float(vox_c.max()))
    C, arg = _decode_min_arg(_rasterize(tree, (Kc, Jc, Ic), Mc, B, "minarg"))
    cu = ~(C <= B)
    n_far = int(cu.sum())
    prim = tree_primitives(tree)
    if n_far and (n_far <= max_exact or not ((C <= B) & (arg >= 0)).any()):
        kk, jj, ii = np.nonzero(cu)
        w = np.stack([ii, jj, kk], 1).astype(np.float64) @ Mc[:3, :3].T + Mc[:3, 3]
        C[kk, jj, ii] = _sdf_points_prim(prim, w)
    elif n_far:
        _far_field_nearest_primitive(C, arg, cu, Mc, B, prim)
    bandf = np.float32(band)
    if f == 1:
        sdf[unc] = np.minimum(np.maximum(C[unc], bandf), sdf[unc])
        return 1

    def lin(n, nc):
        idx = np.arange(n)
        i0 = idx // f
        return i0, np.minimum(i0 + 1, nc - 1), ((idx % f) / f).astype(np.float32)

    i0, i1, wi = lin(ni, Ic)
    C = C[:, :, i0] * (1 - wi) + C[:, :, i1] * wi
    j0, j1, wj = lin(nj, Jc)
    C = C[:, j0, :] * (1 - wj)[:, None] + C[:, j1, :] * wj[:, None]
    k0, k1, wk = lin(nk, Kc)
    v = np.empty((nj, ni), np.float32)
    tmp = np.empty((nj, ni), np.float32)
    for k in range(nk):
        if not unc[k].any():
            continue
        # the true value lies in [band, upper bound already stored]; exact voxels (<= band) are
        # left unchanged by min(max(v, band), sdf)
        np.multiply(C[k0[k]], 1 - wk[k], out=v)
        np.multiply(C[k1[k]], wk[k], out=tmp)
        v += tmp
        np.maximum(v, bandf, out=v)
        np.minimum(sdf[k], v, out=sdf[k])
    return f


# --------------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------------


def tree_to_mesh(
    tree: VascularTree,
    spacing: float | Sequence[float] | None = None,
    margin_mm: float | None = None,
    max_voxels: int = 60_000_000,
    shape: Sequence[int] | None = None,
    origin: Sequence[float] | None = None,
    ijk_to_world: np.ndarray | None = None,
):
    """Watertight triangle surface of the vessel union as ``vtkPolyData`` (world mm).

    Flying edges (``vtkFlyingEdges3D``) extracts the zero level of the analytic SDF sampled on a
    grid, padded by one voxel of positive values so the surface is always closed. Grid:

    * default: axis-aligned, ``spacing`` (default ``min(0.5 * min radius, 0.5 mm)``, coarsened if
      the grid would exceed ``max_voxels``) covering the tree bounds grown by ``margin_mm``;
    * with ``shape`` (``(nk, nj, ni)``) and ``spacing``/``origin`` or ``ijk_to_world``: exactly the
      grid of a labelmap/SDF volume, so the mesh is the zero level of :func:`tree_to_sdf` on that
      grid (vessels leaving the volume are capped at its border).

    Vertices lie on grid edges at the linearly interpolated zero crossing, i.e. between a voxel
    with ``sdf < 0`` (labelmap 1) and one with ``sdf >= 0`` (labelmap 0). Normals point outwards.
    """
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkPolyDataNormals, vtkReverseSense

    if shape is None:
        if ijk_to_world is not None:
            raise ValueError("ijk_to_world needs shape")
        if spacing is None:
            rmin = float(tree.radii.min()) if tree.n_nodes else 1.0
            spacing = min(0.5 * rmin, 0.5)
        sp = np.broadcast_to(np.asarray(spacing, np.float64), (3,)).copy()
        lo, hi = tree.bounds()
        for _ in range(50):
            m = float(margin_mm) if margin_mm is not None else 2.0 * float(sp.max())
            n = np.ceil((hi - lo + 2 * m) / sp).astype(int) + 1
            if np.prod(n.astype(np.float64)) <= max_voxels:
                break
            sp *= (np.prod(n.astype(np.float64)) / max_voxels) ** (1 / 3) * 1.01
        shape = (int(n[2]), int(n[1]), int(n[0]))
        M = ijk_to_world_matrix(sp, lo - m)
    else:
        shape = tuple(int(x) for x in shape)
        M = ijk_to_world_matrix(
            np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, np.float64), (3,)),
            (0.0, 0.0, 0.0) if origin is None else origin,
            ijk_to_world,
        )
    vox = np.sqrt((M[:3, :3] ** 2).sum(0))
    band = 2.0 * float(vox.max())
    sdf = tree_to_sdf(tree, shape, ijk_to_world=M, band_mm=band, far_field="truncate")
    # one voxel of "outside" around the grid closes vessels cut by the border; nudge exact zeros
    sdf = np.pad(sdf, 1, mode="constant", constant_values=np.float32(band))
    sdf[sdf == 0] = np.float32(_F32_TINY)
    nk, nj, ni = sdf.shape
    img = vtkImageData()
    img.SetDimensions(ni, nj, nk)
    img.SetSpacing(1.0, 1.0, 1.0)
    img.SetOrigin(-1.0, -1.0, -1.0)
    arr = numpy_to_vtk(np.ascontiguousarray(sdf).reshape(-1), deep=True)
    arr.SetName("sdf")
    img.GetPointData().SetScalars(arr)
    fe = vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.0)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    poly = fe.GetOutput()
    if poly.GetNumberOfPoints():
        ijk = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
        world = ijk @ M[:3, :3].T + M[:3, 3]
        poly.GetPoints().SetData(numpy_to_vtk(np.ascontiguousarray(world), deep=True))
    if poly.GetNumberOfCells() and _signed_volume(poly) < 0:
        rs = vtkReverseSense()
        rs.SetInputData(poly)
        rs.ReverseCellsOn()
        rs.ReverseNormalsOn()
        rs.Update()
        poly = rs.GetOutput()
    nf = vtkPolyDataNormals()
    nf.SetInputData(poly)
    nf.SplittingOff()
    nf.ConsistencyOff()
    nf.AutoOrientNormalsOff()
    nf.ComputePointNormalsOn()
    nf.ComputeCellNormalsOff()
    nf.Update()
    return nf.GetOutput()


def mesh_volume(poly) -> float:
    """Enclosed volume (mm^3) of a closed, consistently oriented triangle mesh."""
    return abs(_signed_volume(poly))


def _poly_arrays(poly) -> tuple[np.ndarray, np.ndarray]:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    pts = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64) if poly.GetNumberOfPoints() else np.zeros((0, 3))
    polys = poly.GetPolys()
    if polys.GetNumberOfCells() == 0:
        return pts, np.zeros((0, 3), np.int64)
    conn = vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
    offs = vtk_to_numpy(polys.GetOffsetsArray()).astype(np.int64)
    if not np.all(np.diff(offs) == 3):
        raise ValueError("mesh is not all triangles")
    return pts, conn.reshape(-1, 3)


def _signed_volume(poly) -> float:
    pts, tri = _poly_arrays(poly)
    if not len(tri):
        return 0.0
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def mesh_is_watertight(poly) -> bool:
    """True when ``vtkFeatureEdges`` finds no boundary and no non-manifold edges."""
    from vtkmodules.vtkFiltersCore import vtkFeatureEdges

    fe = vtkFeatureEdges()
    fe.SetInputData(poly)
    fe.BoundaryEdgesOn()
    fe.NonManifoldEdgesOn()
    fe.FeatureEdgesOff()
    fe.ManifoldEdgesOff()
    fe.Update()
    return fe.GetOutput().GetNumberOfLines() == 0 and poly.GetNumberOfCells() > 0


# --------------------------------------------------------------------------------------------
# Centerlines
# --------------------------------------------------------------------------------------------


def tree_to_centerlines(tree: VascularTree) -> list[dict[str, Any]]:
    """One dict per segment (see :meth:`VascularTree.segments`): ``points (n,3)`` mm,
    ``radii (n,)`` mm, ``nodes (n,)`` node indices, ``label`` and ``generation`` (of the segment's
    last node, or None)."""
    out = []
    for seg in tree.segments():
        last = int(seg[-1])
        out.append(
            {
                "points": tree.nodes[seg].copy(),
                "radii": tree.radii[seg].copy(),
                "nodes": seg.copy(),
                "label": None if tree.labels is None else int(tree.labels[last]),
                "generation": None if tree.generation is None else int(tree.generation[last]),
            }
        )
    return out

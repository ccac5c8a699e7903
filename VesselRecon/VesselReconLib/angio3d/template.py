"""The 3DAngioNet template mesh: 100 rings of 60 vertices around the 3D centreline.

Ring ``i`` lies in the plane normal to the centreline at ``P_i`` with radius ``R_i``; ring frames are
rotation-minimising frames computed by the double-reflection method (Wang, Juettler, Zheng & Liu,
"Computation of rotation minimizing frames", ACM TOG 2008). Vertex ``i * 60 + j`` is at angle
``2 pi j / 60`` of ring ``i``. The open tube has 6,000 vertices, 11,940 edges (6,000 around the rings,
5,940 along the vessel) and 5,940 quads; :func:`closed_triangles` caps it for watertight output.
"""

from __future__ import annotations

import numpy as np

N_RINGS = 100
N_AROUND = 60


def tangents(points: np.ndarray) -> np.ndarray:
    """Unit tangents of a polyline (central differences, one-sided at the ends)."""
    t = np.gradient(np.asarray(points, float), axis=0)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def initial_normal(tangent: np.ndarray) -> np.ndarray:
    """A reproducible normal at the first point: the world axis least aligned with the tangent,
    made orthogonal to it (so truth and prediction share the ring phase)."""
    axis = np.eye(3)[int(np.argmin(np.abs(tangent)))]
    normal = axis - (axis @ tangent) * tangent
    return normal / np.linalg.norm(normal)


def rotation_minimizing_frames(points: np.ndarray, normal0: np.ndarray | None = None):
    """Tangents, normals and binormals (each (N, 3)) by double reflection."""
    points = np.asarray(points, float)
    t = tangents(points)
    r = np.empty_like(points)
    r[0] = initial_normal(t[0]) if normal0 is None else normal0
    for i in range(len(points) - 1):
        v1 = points[i + 1] - points[i]
        c1 = v1 @ v1
        if c1 < 1e-18:
            r[i + 1] = r[i]
            continue
        r_l = r[i] - (2 / c1) * (v1 @ r[i]) * v1
        t_l = t[i] - (2 / c1) * (v1 @ t[i]) * v1
        v2 = t[i + 1] - t_l
        c2 = v2 @ v2
        r[i + 1] = r_l if c2 < 1e-18 else r_l - (2 / c2) * (v2 @ r_l) * v2
    return t, r, np.cross(t, r)


def template_vertices(points: np.ndarray, radii: np.ndarray, n_around: int = N_AROUND,
                      normal0: np.ndarray | None = None) -> np.ndarray:
    """(len(points) * n_around, 3) ring vertices around a centreline.

    :param normal0: direction of vertex 0 of the first ring (projected onto the normal plane);
        by default :func:`initial_normal`. Pass another mesh's first normal to align ring phases.
    """
    if normal0 is not None:
        t0 = tangents(points)[0]
        normal0 = np.asarray(normal0, float) - (np.asarray(normal0, float) @ t0) * t0
        normal0 = normal0 / np.linalg.norm(normal0) if np.linalg.norm(normal0) > 1e-9 else None
    _, normal, binormal = rotation_minimizing_frames(points, normal0)
    angles = 2 * np.pi * np.arange(n_around) / n_around
    ring = np.cos(angles)[None, :, None] * normal[:, None] + np.sin(angles)[None, :, None] * binormal[:, None]
    return (np.asarray(points, float)[:, None] + np.asarray(radii, float)[:, None, None] * ring).reshape(-1, 3)


def quad_faces(n_rings: int = N_RINGS, n_around: int = N_AROUND) -> np.ndarray:
    """(n_rings - 1) * n_around quads (vertex indices, counter-clockwise seen from outside)."""
    i, j = np.meshgrid(np.arange(n_rings - 1), np.arange(n_around), indexing="ij")
    a = i * n_around + j
    b = i * n_around + (j + 1) % n_around
    return np.stack([a, b, b + n_around, a + n_around], axis=-1).reshape(-1, 4)


def edges(n_rings: int = N_RINGS, n_around: int = N_AROUND) -> np.ndarray:
    """Unique undirected edges: around every ring, then along the vessel."""
    i, j = np.meshgrid(np.arange(n_rings), np.arange(n_around), indexing="ij")
    around = np.stack([i * n_around + j, i * n_around + (j + 1) % n_around], -1).reshape(-1, 2)
    i, j = np.meshgrid(np.arange(n_rings - 1), np.arange(n_around), indexing="ij")
    along = np.stack([i * n_around + j, (i + 1) * n_around + j], -1).reshape(-1, 2)
    return np.concatenate([around, along])


def triangles(n_rings: int = N_RINGS, n_around: int = N_AROUND) -> np.ndarray:
    """Each quad split into two triangles (for rasterising and normals)."""
    q = quad_faces(n_rings, n_around)
    return np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])


def coarse_triangles(step: int = 2, n_rings: int = N_RINGS, n_around: int = N_AROUND) -> np.ndarray:
    """Triangles over every ``step``-th ring and vertex (full-mesh indices): a cheaper silhouette."""
    rings = np.r_[np.arange(0, n_rings, step)[: -1 if (n_rings - 1) % step else None], n_rings - 1]
    rings = np.unique(rings)
    around = np.arange(0, n_around, step)
    local = triangles(len(rings), len(around))
    ring_of, pos_of = np.divmod(local, len(around))
    return rings[ring_of] * n_around + around[pos_of]


def closed_triangles(n_rings: int = N_RINGS, n_around: int = N_AROUND) -> np.ndarray:
    """Triangles of the capped tube: vertices ``n`` and ``n + 1`` are the start and end cap centres."""
    n = n_rings * n_around
    j = np.arange(n_around)
    start = np.stack([np.full(n_around, n), (j + 1) % n_around, j], -1)
    last = (n_rings - 1) * n_around
    end = np.stack([np.full(n_around, n + 1), last + j, last + (j + 1) % n_around], -1)
    return np.concatenate([triangles(n_rings, n_around), start, end])


def closed_vertices(vertices: np.ndarray, n_around: int = N_AROUND) -> np.ndarray:
    """Append the cap centres (mean of the first and last rings)."""
    v = np.asarray(vertices, float)
    return np.concatenate([v, v[:n_around].mean(0, keepdims=True), v[-n_around:].mean(0, keepdims=True)])


def template_polydata(vertices: np.ndarray, closed: bool = True, point_arrays: dict | None = None):
    """The mesh as vtkPolyData: capped triangles (watertight) or the open quad tube.

    :param point_arrays: per-vertex arrays (6,000 values; the cap centres copy the end rings' first value).
    """
    from ..meshes import add_point_array, polydata_from_arrays

    if closed:
        polydata = polydata_from_arrays(closed_vertices(vertices), closed_triangles())
    else:
        polydata = polydata_from_arrays(np.asarray(vertices, float), quad_faces())
    for name, values in (point_arrays or {}).items():
        values = np.asarray(values, float)
        if closed:
            values = np.concatenate([values, values[[0, -1]]])
        add_point_array(polydata, name, values)
    return polydata


def first_normal(vertices: np.ndarray, n_around: int = N_AROUND) -> np.ndarray:
    """Unit direction from the first ring's centre to its vertex 0 (the ring phase)."""
    ring = np.asarray(vertices, float)[:n_around]
    d = ring[0] - ring.mean(0)
    return d / max(np.linalg.norm(d), 1e-12)


def centerline_from_vertices(vertices: np.ndarray, n_around: int = N_AROUND):
    """Ring centres and mean ring radii of a (refined) template mesh."""
    rings = np.asarray(vertices, float).reshape(-1, n_around, 3)
    centres = rings.mean(1)
    return centres, np.linalg.norm(rings - centres[:, None], axis=2).mean(1)

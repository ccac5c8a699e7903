"""Bifurcation stitching: side branches moved onto the main branch, then one Boolean union (manifold3d)."""

from __future__ import annotations

import numpy as np

from . import template


def attach_offsets(main_centerline: np.ndarray, side_centerlines: list[np.ndarray]) -> list[np.ndarray]:
    """Translation of each side branch so that its start meets the nearest main-centreline point."""
    main = np.asarray(main_centerline, float)
    offsets = []
    for side in side_centerlines:
        start = np.asarray(side, float)[0]
        nearest = main[np.argmin(np.linalg.norm(main - start, axis=1))]
        offsets.append(nearest - start)
    return offsets


def to_manifold(vertices: np.ndarray):
    """A capped template mesh as a ``manifold3d.Manifold``."""
    import manifold3d

    mesh = manifold3d.Mesh(vert_properties=template.closed_vertices(vertices).astype(np.float32),
                           tri_verts=template.closed_triangles().astype(np.uint32))
    manifold = manifold3d.Manifold(mesh)
    if manifold.status() != manifold3d.Error.NoError:
        raise ValueError(f"branch mesh is not a manifold ({manifold.status()})")
    return manifold


def union_polydata(vertex_sets: list[np.ndarray]):
    """Boolean union of capped template meshes as one watertight vtkPolyData."""
    import manifold3d

    from ..meshes import polydata_from_arrays

    if len(vertex_sets) == 1:          # one branch: the capped template mesh is watertight as it is
        polydata = polydata_from_arrays(template.closed_vertices(vertex_sets[0]).astype(float))
        polydata.SetPolys(triangle_cells(template.closed_triangles()))
        return polydata
    manifolds = [to_manifold(v) for v in vertex_sets]
    union = manifolds[0] if len(manifolds) == 1 else manifold3d.Manifold.batch_boolean(manifolds, manifold3d.OpType.Add)
    mesh = union.to_mesh()
    polydata = polydata_from_arrays(np.asarray(mesh.vert_properties)[:, :3].astype(float))
    polydata.SetPolys(triangle_cells(np.asarray(mesh.tri_verts)))
    return polydata


def triangle_cells(triangles: np.ndarray):
    """A vtkCellArray of triangles (T, 3), built from numpy arrays at once (not cell by cell)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkCellArray

    triangles = np.ascontiguousarray(triangles, dtype=np.int64)
    offsets = numpy_support.numpy_to_vtk(np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64), deep=True)
    connectivity = numpy_support.numpy_to_vtk(triangles.ravel(), deep=True)
    cells = vtkCellArray()
    cells.SetData(offsets, connectivity)
    return cells


def stitch(branch_vertices: list[np.ndarray], branch_centerlines: list[np.ndarray]):
    """Translate side branches (index >= 1) onto the main branch (index 0) and union all meshes.

    :returns: (watertight vtkPolyData, translated vertex arrays, offsets applied per branch).
    """
    offsets = [np.zeros(3)] + attach_offsets(branch_centerlines[0], branch_centerlines[1:])
    moved = [np.asarray(v, float) + o for v, o in zip(branch_vertices, offsets)]
    return union_polydata(moved), moved, offsets

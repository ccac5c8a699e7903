"""Synthetic vascular phantoms: space-colonisation vessel trees and exact voxel/SDF/mesh conversions.

Arrays are indexed ``[k, j, i] = [z, y, x]`` (Slicer KJI order); spacing/origin are ``(x, y, z)``.
See :mod:`.tree` (growth, edits), :mod:`.geometry` (conversions) and :mod:`.datasets` (writers).
Only numpy is imported eagerly; scipy/vtk/SimpleITK are imported inside the functions using them.
"""

from .geometry import (
    fit_grid,
    ijk_to_world,
    ijk_to_world_matrix,
    mesh_is_watertight,
    mesh_volume,
    sample_volume,
    sdf_at_points,
    tree_to_centerlines,
    tree_to_labelmap,
    tree_to_mesh,
    tree_to_sdf,
    world_to_ijk,
)
from .tree import (
    BoxDomain,
    EllipsoidDomain,
    MaskDomain,
    Root,
    SlabDomain,
    TreeParams,
    VascularTree,
    add_crossing_vessel,
    add_kissing_vessel,
    add_stenosis,
    apply_murray_radii,
    grow_tree,
    merge_trees,
    node_path,
)

__all__ = [
    "VascularTree",
    "TreeParams",
    "Root",
    "BoxDomain",
    "EllipsoidDomain",
    "SlabDomain",
    "MaskDomain",
    "grow_tree",
    "apply_murray_radii",
    "merge_trees",
    "node_path",
    "add_stenosis",
    "add_kissing_vessel",
    "add_crossing_vessel",
    "tree_to_labelmap",
    "tree_to_sdf",
    "tree_to_mesh",
    "tree_to_centerlines",
    "sdf_at_points",
    "mesh_is_watertight",
    "mesh_volume",
    "sample_volume",
    "fit_grid",
    "ijk_to_world",
    "ijk_to_world_matrix",
    "world_to_ijk",
]

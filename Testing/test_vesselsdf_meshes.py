"""LPS mesh writer: files marked the way Slicer's model storage node marks them, binary STL, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from VesselReconLib import meshes


@pytest.fixture(scope="module")
def tube_ras():
    return meshes.tube(np.c_[np.linspace(10, 20, 5), np.full(5, 30.0), np.linspace(0, 10, 5)], 2.0)


@pytest.mark.parametrize("suffix", [".stl", ".vtk", ".vtp", ".ply", ".obj"])
def test_lps_writer_marks_flips_and_round_trips(tube_ras, tmp_path, suffix):
    path = meshes.save_polydata_lps(tube_ras, tmp_path / f"vessels.seg{suffix}")
    assert meshes.mesh_coordinate_system(path) == "LPS"
    ras = meshes.points_of(tube_ras).mean(0)
    on_disk = meshes.points_of(meshes.load_polydata(path)).mean(0)
    np.testing.assert_allclose(on_disk, ras * [-1, -1, 1], atol=1e-3)
    np.testing.assert_allclose(meshes.points_of(meshes.load_polydata_ras(path)).mean(0), ras, atol=1e-3)


def test_stl_is_binary_with_slicer_header(tube_ras, tmp_path):
    path = meshes.save_polydata_lps(tube_ras, tmp_path / "v.stl")
    raw = path.read_bytes()
    assert raw[:80].rstrip(b"\0") == b"3D Slicer output. SPACE=LPS"
    triangles = int(np.frombuffer(raw[80:84], "<u4")[0])
    assert len(raw) == 84 + 50 * triangles and triangles == tube_ras.GetNumberOfCells()


def test_unmarked_files_read_as_lps_like_slicer(tube_ras, tmp_path):
    path = meshes.save_polydata(tube_ras, tmp_path / "plain.vtk")
    assert meshes.mesh_coordinate_system(path) is None
    np.testing.assert_allclose(meshes.points_of(meshes.load_polydata_ras(path)).mean(0),
                               meshes.points_of(tube_ras).mean(0) * [-1, -1, 1], atol=1e-3)

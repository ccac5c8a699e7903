"""The real-phantom floors (``angio3d.real_phantom.evaluate_floors``): what 2D centrelines can reach on the static
phantom. Synthetic checks of each step (no shared data), then the measured floors on ../shared (skips without it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from VesselReconLib.angio3d import real_phantom
from VesselReconLib.angio3d.geometry import CArmGeometry

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GEOMETRIES = [CArmGeometry(30, 0, 1100, 760), CArmGeometry(-35, 25, 1100, 760)]


def _curve(n: int = 120) -> np.ndarray:
    """A smooth 3D vessel centreline (mm) round the isocentre."""
    t = np.linspace(0, 1, n)[:, None]
    return np.c_[60 * t - 30, 25 * np.sin(3 * t), 20 * t ** 2 - 10]


def test_reference_paths_run_between_the_clicks():
    curve = _curve()
    paths = real_phantom.reference_paths(curve, GEOMETRIES)
    clicks = real_phantom.click_points(curve, GEOMETRIES)[:, 0]
    for path, click in zip(paths, clicks):
        assert path.shape == (100, 2)
        np.testing.assert_allclose(path[[0, -1]], click, atol=1e-6)


def test_exact_projections_triangulate_back_onto_the_curve():
    # with perfect 2D centrelines the plain DLT recovers the 3D curve; the pipeline's depth refit nearly so
    curve = _curve()
    paths = real_phantom.reference_paths(curve, GEOMETRIES)
    clicks = real_phantom.click_points(curve, GEOMETRIES)[:, 0]
    plain = real_phantom.triangulated_floor(paths, clicks, GEOMETRIES, depth_refine=False, smooth=0.0)
    shipped = real_phantom.triangulated_floor(paths, clicks, GEOMETRIES)
    assert real_phantom._polyline_distance_3d(plain, curve).max() < 0.05
    assert real_phantom._polyline_distance_3d(shipped, curve).mean() < 0.2
    # the rows compare the same thing the evaluation does
    assert real_phantom._distance_row(plain, curve)["max_mm"] < 0.05


@pytest.mark.parametrize("offset", [-1.5, 0.0, 2.0])
def test_imaged_centre_offsets_find_a_dark_tube_beside_the_path(offset):
    # a straight path along rows 100; a blurred dark tube (radius 3 px) ``offset`` px along the path's normal
    path = np.c_[np.linspace(40, 160, 100), np.full(100, 100.0)]
    normal_row = 1.0                                   # normal (-t_y, t_x) of a path along +x is +y (rows)
    rows = np.arange(200)[:, None] - (100 + offset * normal_row)
    image = 1000.0 - 300.0 * 2 * np.sqrt(np.clip(9.0 - rows ** 2, 0, None)) * np.ones((1, 200))
    image = ndimage.gaussian_filter(image + 0.2 * np.arange(200)[:, None], 1.0)   # and a linear background
    found = real_phantom.imaged_centre_offsets(image, path)
    np.testing.assert_allclose(np.median(found), offset, atol=0.15)
    moved = real_phantom.centred_path(image, path)
    np.testing.assert_allclose(moved[[0, -1]], path[[0, -1]])                        # the clicks stay
    np.testing.assert_allclose(np.median(moved[5:-5, 1]), 100 + offset, atol=0.15)


def test_refit_registration_recovers_a_small_rigid_offset():
    branches = [_curve(), _curve()[::-1] * [1.0, -1.0, 0.5] + [0.0, 10.0, 5.0]]
    truth = np.r_[Rotation.from_euler("xyz", [2, -1, 3], degrees=True).as_rotvec(), 1.5, -2.0, 0.8]
    centrelines = {i: real_phantom._transform(truth, b)[10:-10] for i, b in enumerate(branches)}
    fit = real_phantom.refit_registration(centrelines, branches, np.zeros(6))
    for i, b in enumerate(branches):
        moved = real_phantom._transform(fit, b)
        assert real_phantom._polyline_distance_3d(centrelines[i], moved).max() < 0.05


@pytest.mark.skipif(not (SHARED / "datasets" / "xa_static_phantom").is_dir()
                    or not (SHARED / "samples" / "xa-phantom" / "IM3.dcm").is_file(),
                    reason="needs ../shared/datasets/xa_static_phantom and ../shared/samples/xa-phantom")
def test_real_phantom_floors(tmp_path):
    """Through `vesselrecon eval angio3d --floors --json` (JSON keys are strings: branches as "0", "1", ...)."""
    from VesselReconLib.cli import main

    target = tmp_path / "floors.json"
    assert main(["eval", "angio3d", "--floors", "--ablation", "", "--shared", str(SHARED), "--json", str(target)]) == 0
    report = json.loads(target.read_text(encoding="utf-8"))["real_phantom_floors"]
    rows = {name: {int(i): row for i, row in found.items()} for name, found in report["rows"].items()}
    assert report["branches"] == [0, 1, 3, 4, 5, 6, 8]
    # measured (round 13, the round-12 registration): the reference's exact projections meet the target
    # (0.8 / 2.5 mm) on every branch by the plain DLT (worst 0.51 / 1.88 mm, branch 1); the shipped depth
    # refit misses branch 4's max (2.64 mm)
    assert all(r["mean_mm"] <= 0.8 and r["max_mm"] <= 2.5 for r in rows["exact_dlt"].values())
    assert 2.5 < rows["exact"][4]["max_mm"] < 2.8
    # 2D centrelines on the imaged vessels' centres miss branch 1 however triangulated and even with the
    # reference re-registered to them (2.05 / 3.78, DLT 2.06 / 4.37, refit 1.59 / 3.31 mm) ...
    for name in ("centred", "centred_dlt", "centred_refit", "centred_dlt_refit"):
        assert rows[name][1]["max_mm"] > 3.0 and rows[name][1]["mean_mm"] > 1.4
    # ... and meet it on branches 5, 6 and 8 (registered as the evaluation registers)
    assert all(rows["centred"][i]["mean_mm"] <= 0.8 and rows["centred"][i]["max_mm"] <= 2.5 for i in (5, 6, 8))


def test_floors_without_the_shared_data_are_refused(tmp_path, capsys):
    from VesselReconLib.cli import main

    assert main(["eval", "angio3d", "--floors", "--ablation", "", "--shared", str(tmp_path)]) == 2
    assert "No static phantom data" in capsys.readouterr().err

"""Two-view X-ray phantom: DICOM XA geometry, analytic line integrals, ground truth alignment, dataset layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from VesselReconLib.angio3d.geometry import CArmGeometry
from VesselReconLib.phantoms import xray


@pytest.fixture(scope="module")
def case():
    return xray.make_case(11)


def test_centerline_projections_land_on_masks_within_one_pixel(case):
    for geometry, view in zip(case["geometries"], case["views"]):
        distance_to_mask = ndimage.distance_transform_edt(view["soi"] == 0)
        for centerline in case["centerlines"]:
            pixels = geometry.project(centerline["points"])
            d = ndimage.map_coordinates(distance_to_mask, [pixels[:, 1], pixels[:, 0]], order=1)
            assert d.max() <= 1.0
        # the all-vessel mask contains the SOI mask
        assert (view["vessels"][view["soi"] > 0] == 1).all()


def test_soi_points_are_projections_of_the_3d_ends(case):
    for geometry, view_points in zip(case["geometries"], case["soi_points"]):
        for centerline, (start, end) in zip(case["centerlines"], view_points):
            np.testing.assert_allclose(geometry.project(centerline["points"][[0, -1]]), [start, end], atol=1e-9)


def test_stenosis_and_side_branch_truth(case):
    stenosis = case["case"].stenosis
    assert 30 <= stenosis["percent_diameter"] <= 90
    radii = case["centerlines"][0]["radii"]
    assert radii.min() < 0.8 * radii.max()                 # the stenosis is on the main SOI
    main, side = (c["points"] for c in case["centerlines"])
    assert np.linalg.norm(main - side[0], axis=1).min() < 0.5   # the side SOI starts on the main vessel


def test_chord_of_a_cylinder_through_the_isocentre_is_its_diameter():
    geometry = CArmGeometry(0, 0, 1000, 700, (0.3, 0.3), 128, 128)
    # a cylinder of radius 1 mm along x (perpendicular to the AP beam) through the isocentre
    a, b = np.array([[-20.0, 0, 0]]), np.array([[20.0, 0, 0]])
    chords = xray.chord_image(geometry, a, b, np.array([1.0]), np.array([1.0]))
    centre = geometry.project(np.zeros((1, 3)))[0]
    # the central ray is almost perpendicular to the axis: chord ~ 2 r
    assert chords[int(round(centre[1])), int(round(centre[0]))] == pytest.approx(2.0, rel=0.02)
    # the projected width is 2 r x magnification / pixel size
    width = (chords[:, int(round(centre[0]))] > 0).sum()
    assert abs(width - 2 * 1.0 * geometry.magnification / 0.3) <= 2


def test_images_have_vessels_darker_than_their_surroundings_and_noise(case):
    for view in case["views"]:
        image = view["image"].astype(float)
        vessels = view["vessels"] == 1
        # a ring 3-6 px around the vessels is their local background (heart shadow, ribs, spine vary slowly)
        distance = ndimage.distance_transform_edt(~vessels)
        ring = (distance >= 3) & (distance <= 6)
        core = ndimage.binary_erosion(vessels, iterations=1)
        assert np.median(image[core]) < np.median(image[ring])
        assert image.std() > 0 and view["image"].dtype == np.uint16


def test_soi_bits_hold_each_branch_and_neighbours_are_not_soi(case):
    for view in case["views"]:
        bits = view["soi_bits"]
        assert ((bits & 1) > 0).sum() > 100 and ((bits & 2) > 0).sum() > 50
        assert ((bits > 0) == (view["soi"] > 0)).all()
        assert (view["vessels"].astype(bool) & (bits == 0)).sum() > 500      # other vessels in the image


def test_cine_run_fills_and_washes_out():
    from VesselReconLib.angio3d.dicom_io import contrast_scores

    data = xray.make_case(12)
    run = xray.render_run(data["case"], data["geometries"][0], np.random.default_rng(3), n_frames=12)
    assert run.shape == (12, 512, 512) and run.dtype == np.uint16
    scores = contrast_scores(run)
    peak = int(np.argmax(scores))
    assert 0 < peak < 11 and scores[peak] > scores[0] + 0.05 and scores[peak] > scores[-1]
    curve = xray.bolus_curve(12, np.random.default_rng(0))
    assert curve[0] == 0 and curve.max() == pytest.approx(1.0)


def test_dataset_writer_layout(tmp_path):
    from VesselReconLib.phantoms.datasets import write_dataset

    out = write_dataset("xray", tmp_path / "xray", 1, seed=5)
    folder = out / "case_000"
    for name in ("view_a.png", "view_b.png", "vessels_a.png", "soi_b.png", "geometry.json", "centerline.json", "mesh.vtp"):
        assert (folder / name).is_file()
    geometry = json.loads((folder / "geometry.json").read_text())
    tags = geometry["views"]["a"]
    for key in ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "DistanceSourceToDetector",
                "DistanceSourceToPatient", "ImagerPixelSpacing", "Rows", "Columns"):
        assert key in tags
    loaded = xray.load_case(folder)
    assert loaded.images[0].shape == (512, 512) and loaded.images[0].max() > 1000
    assert len(loaded.centerlines[0]["points"]) == 100
    from VesselReconLib import meshes

    assert meshes.is_watertight(meshes.load_polydata(folder / "mesh.vtp"))
    # the mesh is in LPS (like the centreline) and says so in the file, as Slicer writes it
    assert meshes.mesh_coordinate_system(folder / "mesh.vtp") == "LPS"
    lps = meshes.points_of(meshes.load_polydata(folder / "mesh.vtp"))
    assert np.abs(lps.mean(0) - loaded.centerlines[0]["points"].mean(0)).max() < 15


def test_real_vs_phantom_figure(tmp_path):
    from PIL import Image

    shared = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared"
    path = xray.real_vs_phantom_figure(tmp_path / "real.png", shared=shared, height=64)
    image = np.asarray(Image.open(path))
    assert image.shape[0] == 64 and image.shape[1] > 6 * 60          # six panels side by side


def test_side_by_side_tube_overlaps_the_soi_in_its_view_only_in_the_image(case):
    """Round 13 (issue 14): ``make_case(seed, side_by_side=view)`` adds a tube running beside the SOI's main branch
    in that view, its lumen overlapping the SOI's side by side, in the image but not in the SOI label; the rest
    of the case is the plain case's."""
    sbs = xray.make_case(11, side_by_side=1)
    for view in range(2):
        assert np.array_equal(sbs["views"][view]["soi"], case["views"][view]["soi"])
        assert np.array_equal(sbs["views"][view]["soi_bits"], case["views"][view]["soi_bits"])
    assert np.array_equal(sbs["soi_points"][1], case["soi_points"][1])
    g = sbs["geometries"][1]
    centreline = sbs["centerlines"][0]
    walk, _, radii, _ = xray.side_by_side_vessel(np.random.default_rng([11, 13]), centreline, g)
    soi_px, tube_px = g.project(centreline["points"])[25:75], g.project(walk)[25:75]
    gap = np.linalg.norm(tube_px - soi_px, axis=1)
    to_px = g.magnification / np.mean(g.pixel_spacing)
    reach = (np.median(centreline["radii"]) + np.median(radii)) * to_px   # the two lumens' radii in px (no lesion)
    assert np.all(gap < 0.95 * reach) and np.all(gap > 0.45 * reach)      # overlapping side by side, not coinciding
    in_a = np.linalg.norm(sbs["geometries"][0].project(walk)[25:75] - sbs["geometries"][0].project(
        centreline["points"])[25:75], axis=1)
    assert np.median(in_a) > 2 * np.median(gap)                          # apart in the other view (this case)
    # the tube is imaged (more vessel outside the SOI, darker there), not labelled
    extra = sbs["views"][1]["vessels"].astype(bool) & ~case["views"][1]["vessels"].astype(bool)
    assert extra.sum() > 500
    assert sbs["views"][1]["image"][extra].mean() < case["views"][1]["image"][extra].mean()


def test_dataset_writer_side_by_side_fraction(tmp_path):
    from VesselReconLib.cli import main

    assert main(["phantoms", "xray", "--count", "3", "--seed", "5", "--side-by-side", "1", "--out",
                 str(tmp_path / "sbs")]) == 0
    plain = xray.write_xray_dataset(tmp_path / "plain", 3, seed=5, with_mesh=False)
    assert json.loads((tmp_path / "sbs" / "dataset.json").read_text())["side_by_side"] == 1.0
    for index in range(3):
        a, b = xray.load_case(tmp_path / "sbs" / f"case_{index:03d}"), xray.load_case(plain / f"case_{index:03d}")
        assert all(np.array_equal(m, n) for m, n in zip(a.soi_masks, b.soi_masks))
        assert not all(np.array_equal(m, n) for m, n in zip(a.images, b.images))     # a tube was added
    for wrong in (["xray", "--side-by-side", "1.5"], ["octa", "--side-by-side", "0.5"]):
        assert main(["phantoms", *wrong, "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    # fraction 0 writes the plain cases (the choice has its own generator)
    again = xray.write_xray_dataset(tmp_path / "zero", 1, seed=5, with_mesh=False, side_by_side=0.0)
    assert np.array_equal(xray.load_case(again / "case_000").images[1], xray.load_case(plain / "case_000").images[1])


def test_lesion_range_sets_the_lesion_and_leaves_the_rest_of_the_case(case):
    """Round 15 (issue 14): ``make_case(seed, lesion_range=(lo, hi))`` draws the lesion from that range with the same
    draw as the default's (30-90 %), so the tree's course, the views and the SOI clicks stay the seed's; a 0 % lesion
    leaves the vessel at its tapering radius."""
    mild = xray.make_case(11, lesion_range=(0, 30))
    default, drawn = case["case"].stenosis["percent_diameter"], mild["case"].stenosis["percent_diameter"]
    assert 0 <= drawn <= 30
    assert drawn / 30 == pytest.approx((default - 30) / 60, abs=1e-9)
    for a, b in zip(mild["soi_points"], case["soi_points"]):
        np.testing.assert_allclose(a, b, atol=1e-9)
    assert mild["tags"] == case["tags"]
    mild_radii, radii = mild["centerlines"][0]["radii"], case["centerlines"][0]["radii"]
    assert mild_radii.min() > radii.min()                                 # a milder throat
    free = xray.make_case(11, lesion_range=(0, 0))["case"].stenosis
    assert free["percent_diameter"] == 0 and free["min_radius"] > 0.95 * free["reference_radius"]   # the taper only


def test_dataset_writer_lesion_range(tmp_path):
    """``vesselrecon phantoms xray --lesion-range LO HI`` writes cases whose lesions lie in that range and records it;
    a range outside 0-100 or on another kind is refused before anything is written."""
    from VesselReconLib.cli import main

    assert main(["phantoms", "xray", "--count", "2", "--seed", "5", "--lesion-range", "0", "30", "--out",
                 str(tmp_path / "mild")]) == 0
    assert json.loads((tmp_path / "mild" / "dataset.json").read_text())["lesion_range_percent"] == [0.0, 30.0]
    for index in range(2):
        stenosis = xray.load_case(tmp_path / "mild" / f"case_{index:03d}").stenosis
        assert 0 <= stenosis["percent_diameter"] <= 30
    for wrong in (["xray", "--lesion-range", "40", "20"], ["xray", "--lesion-range", "0", "100"],
                  ["ct", "--lesion-range", "0", "30"]):
        assert main(["phantoms", *wrong, "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()

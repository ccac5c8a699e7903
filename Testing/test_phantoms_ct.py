"""CT sparse-slice phantom: geometry, intensities, partial volume, ground truth and the MSD writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from VesselReconLib.phantoms.ct import APPEARANCE, HU, CTPhantomParams, make_ct_phantom


@pytest.fixture(scope="module")
def case():
    return make_ct_phantom(CTPhantomParams(shape=(16, 96, 96), seed=3))


def test_grids_and_ground_truth(case):
    assert case.image.shape == case.labels.shape == case.sdf.shape == (16, 96, 96)
    assert case.hires_image.shape == case.hires_labels.shape == (80, 96, 96)
    assert case.spacing == (0.7, 0.7, 5.0) and case.hires_spacing == (0.7, 0.7, 1.0)
    np.testing.assert_array_equal(case.labels, case.sdf < 0)
    np.testing.assert_array_equal(case.hires_labels, case.hires_sdf < 0)
    # thick slice k is centred on hires slices 5k..5k+4: the centre sub-slice has the same z
    assert case.hires_ijk_to_ras[2, 3] + 2 * 1.0 == pytest.approx(case.ijk_to_ras[2, 3])
    assert 0.001 < case.labels.mean() < 0.05


def test_intensities_are_portal_venous(case):
    """Per-case realistic appearance: liver level, low vessel contrast, clinical noise (module docs)."""
    look = case.params["appearance"]
    assert APPEARANCE["liver_hu"][0] <= look["liver_hu"] <= APPEARANCE["liver_hu"][1]
    assert APPEARANCE["noise_hu"][0] <= look["noise_hu"] <= APPEARANCE["noise_hu"][1]
    core = ndimage.binary_erosion(case.hires_sdf < -1.0)
    liver = ndimage.binary_erosion(case.organ > 0, iterations=3) & (case.sdf > 3)
    assert abs(np.median(case.image[liver]) - look["liver_hu"]) < 15
    assert np.median(case.hires_image[core]) > look["liver_hu"] + 10
    assert HU["fat"] < np.median(case.image[case.organ == 0]) < look["liver_hu"]


def test_fixed_appearance_keeps_the_nominal_levels():
    fixed = make_ct_phantom(CTPhantomParams(shape=(16, 64, 64), seed=3, fixed_appearance=True))
    core = ndimage.binary_erosion(fixed.hires_sdf < -1.0)
    assert 180 < np.median(fixed.hires_image[core]) < 250


def test_tumours_and_thin_slabs_are_drawn_per_case():
    looks = [make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=s, thin_slab=True)).params for s in range(4)]
    assert any(p["appearance"]["tumours"] > 0 for p in looks)
    assert all(1 <= p["slab_subslices"] <= 5 for p in looks)
    assert len({p["appearance"]["noise_hu"] for p in looks}) == 4


def test_thick_slices_average_the_high_resolution_rendering(case):
    # partial volume: thin vessels lose contrast in thick slices, so the thick max is below the hires max
    assert case.image[case.labels > 0].mean() < case.hires_image[case.hires_labels > 0].mean()
    # thick-slice ground truth breaks thin vessels into more pieces than the high-res one
    assert ndimage.label(case.labels)[1] > ndimage.label(case.hires_labels)[1]
    assert ndimage.label(case.hires_labels, np.ones((3, 3, 3)))[1] <= 4


def test_deterministic_per_seed():
    a = make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=9))
    b = make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=9))
    np.testing.assert_array_equal(a.image, b.image)
    c = make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=10))
    assert not np.array_equal(a.labels, c.labels)


def test_mesh_matches_the_sdf(case):
    from VesselReconLib import meshes
    from VesselReconLib.phantoms.geometry import sdf_at_points

    mesh = case.mesh()
    assert meshes.is_watertight(mesh)
    points = meshes.points_of(mesh)[::50]
    assert np.abs(sdf_at_points(case.tree, points)).max() < 0.1


def test_msd_writer_round_trip(tmp_path):
    import SimpleITK as sitk

    from VesselReconLib.phantoms.datasets import write_dataset
    from VesselReconLib.volume_io import read_volume

    out = write_dataset("ct", tmp_path / "ct", 1, seed=4, shape=(16, 48, 48))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and meta["labels"] == {"0": "background", "1": "vessel"}
    entry = meta["training"][0]
    for key in ("image", "label", "sdf", "organ", "hires_image", "hires_label", "hires_sdf", "mesh", "tree"):
        assert (out / entry[key]).is_file(), key
    image, matrix = read_volume(out / entry["image"])
    case = make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=4000))
    np.testing.assert_allclose(matrix, case.ijk_to_ras, atol=1e-6)
    np.testing.assert_array_equal(image, np.round(case.image).astype(np.int16))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / entry["label"])))
    np.testing.assert_array_equal(label, case.labels)


def test_arterial_distractors_change_the_image_not_the_truth():
    """``arteries=True`` draws an unlabelled arterial tree: labels, SDF and organ are unchanged."""
    plain = make_ct_phantom(CTPhantomParams(shape=(8, 96, 96), seed=5))
    arteries = make_ct_phantom(CTPhantomParams(shape=(8, 96, 96), seed=5, arteries=True))
    np.testing.assert_array_equal(plain.labels, arteries.labels)
    np.testing.assert_array_equal(plain.hires_labels, arteries.hires_labels)
    np.testing.assert_array_equal(plain.organ, arteries.organ)
    brighter = arteries.hires_image - plain.hires_image
    assert brighter.max() > 20 and 0 < (np.abs(brighter) > 1).mean() < 0.05  # thin, enhancing, sparse


@pytest.mark.parametrize("options", [{"shape": (0, 8, 8)}, {"shape": (16, 64)}, {"spacing": (0.7, 0.7, 0.0)},
                                     {"spacing": (0.7, float("nan"), 5.0)}])
def test_bad_sizes_are_refused_before_any_rendering(options):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty grid used to reach numpy first ("Mean of empty slice")
        with pytest.raises(ValueError, match="shape|spacing"):
            make_ct_phantom(CTPhantomParams(**options))

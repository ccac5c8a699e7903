"""MRA / SWI / micro phantoms: contrast, noise, anisotropic geometry, determinism and dataset layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VesselReconLib.phantoms.datasets import load_nifti, write_dataset
from VesselReconLib.phantoms.mra import STYLES, render_mra

CROP = (24, 96, 96)


@pytest.fixture(scope="module")
def cases():
    return {kind: render_mra(kind, seed=11, crop=CROP) for kind in ("mra", "swi", "micro")}


def test_shapes_spacing_and_masks(cases):
    for phantom in cases.values():
        assert phantom.image.shape == phantom.label.shape == phantom.brain_mask.shape == CROP
        assert phantom.spacing == (0.5, 0.5, 0.8)
        assert phantom.label.any()
        assert not (phantom.label & ~phantom.brain_mask.astype(bool)).any()  # vessels only in the brain
        np.testing.assert_allclose(phantom.ijk_to_ras, np.diag([0.5, 0.5, 0.8, 1.0]))


def test_bright_and_dark_vessel_contrast(cases):
    for kind, phantom in cases.items():
        brain = phantom.brain_mask.astype(bool)
        vessel = np.median(phantom.image[phantom.label > 0])
        tissue = np.median(phantom.image[brain & (phantom.label == 0)])
        if STYLES[kind].dark:
            assert vessel < 0.8 * tissue, kind
        else:
            assert vessel > 1.5 * tissue, kind


def test_rician_background_noise():
    phantom = render_mra("mra", seed=3, crop=(16, 40, 40), start=(0, 0, 0))  # a corner of the slab: air
    corner = phantom.image
    sigma = STYLES["mra"].noise * 1000
    # Rayleigh (Rician with zero signal): mean sigma*sqrt(pi/2), never negative
    assert corner.min() >= 0
    assert corner.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.1)
    assert phantom.meta["head_shape"] == [128, 448, 448]


def test_micro_variant_is_dominated_by_thin_vessels(cases):
    from scipy import ndimage

    def thickness(label):  # in-plane distance to background at vessel voxels (voxels)
        return np.median(ndimage.distance_transform_edt(label)[label > 0])

    assert np.median(cases["micro"].tree.radii) <= 0.35
    assert thickness(cases["micro"].label) <= thickness(cases["mra"].label)


def test_deterministic_and_seed_dependent():
    a = render_mra("micro", seed=5, crop=(16, 48, 48))
    b = render_mra("micro", seed=5, crop=(16, 48, 48))
    c = render_mra("micro", seed=6, crop=(16, 48, 48))
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_msd_dataset_writer(tmp_path):
    out = write_dataset("swi", tmp_path / "swi", 2, seed=4, crop=(16, 48, 48))
    index = json.loads((out / "dataset.json").read_text())
    assert index["numTraining"] == 2 and index["labels"] == {"0": "background", "1": "vessel"}
    entry = index["training"][0]
    image, spacing, _ = load_nifti(out / entry["image"])
    label, _, _ = load_nifti(out / entry["label"])
    assert image.shape == label.shape == (16, 48, 48)
    np.testing.assert_allclose(spacing, (0.5, 0.5, 0.8), rtol=1e-6)
    assert set(np.unique(label)) <= {0, 1}
    assert (out / entry["mask"]).is_file()
    assert json.loads((out / "phantom.json").read_text())["case_kinds"] == ["swi", "swi"]


def test_tof_realism_circle_of_willis_fat_sinuses_and_saturation():
    from VesselReconLib.phantoms.mra import STYLES, cow_centre, full_shape, head_geometry, vessel_contrast

    assert full_shape((0.3, 0.3, 0.3)) == (341, 747, 747) and full_shape((0.5, 0.5, 0.8)) == (128, 448, 448)
    p = render_mra("mra", seed=12, spacing=(0.3, 0.3, 0.3), crop=(40, 150, 160), crop_centre="cow")
    tree = p.tree
    assert tree.meta["cow_chains"] >= 13  # ICA x2, basilar, M1/A1/A2/P1/P2 x2, ACom (+ PComs)
    assert 1.2 <= tree.radii.max() <= 1.75  # internal carotid / basilar calibre (2.5-3.5 mm)
    assert (p.image < 150).mean() < 0.05 and p.label.mean() > 0.01  # a circle-of-Willis crop: no air
    # inflow saturation: the same calibre is fainter far from the slab entry
    style = STYLES["mra"]
    far, near = tree.copy(), tree.copy()
    far.generation = np.full(tree.n_nodes, 300)
    near.generation = np.zeros(tree.n_nodes, np.int32)
    grid, origin = (40, 150, 160), tuple(p.meta["origin_mm"])
    assert vessel_contrast(far, style, grid, p.spacing, origin)[1].max() < \
        0.8 * vessel_contrast(near, style, grid, p.spacing, origin)[1].max()
    # bright subcutaneous fat and bright, unlabelled venous sinuses in a whole slab
    whole = render_mra("mra", seed=12, shape=(32, 112, 112), spacing=(2.0, 2.0, 3.2))
    centre, radii = head_geometry((32, 112, 112), (2.0, 2.0, 3.2))
    brain = whole.brain_mask > 0
    tissue = np.median(whole.image[brain & (whole.label == 0)])
    assert np.percentile(whole.image[~brain], 99) > 2 * tissue  # fat is brighter than the brain
    assert np.percentile(whole.image[brain & (whole.label == 0)], 99.9) > 1.5 * tissue  # sinuses, not labelled
    assert cow_centre(centre, radii)[2] < centre[2]  # the circle sits at the base of the brain


def test_the_same_head_and_vessels_at_any_spacing():
    """A 0.3 mm rendering of the standard head shows the vessels of the 0.5 x 0.5 x 0.8 mm one: the same
    tree, and over the same box in mm the same vessel volume within 5 %, so Dice compares across spacings."""
    near_cow = render_mra("mra", seed=5, crop=(12, 48, 48), crop_centre="cow").meta["start"]
    start = tuple(3 * (int(v) // 3) for v in near_cow)  # box corners on both grids: k * 0.8 = k' * 0.3, j * 0.5 = j' * 0.3
    coarse = render_mra("mra", seed=5, crop=(12, 48, 48), start=start)
    fine = render_mra("mra", seed=5, spacing=(0.3, 0.3, 0.3), crop=(32, 80, 80),
                      start=(start[0] * 8 // 3, start[1] * 5 // 3, start[2] * 5 // 3))
    np.testing.assert_allclose(fine.tree.nodes, coarse.tree.nodes)
    np.testing.assert_allclose(fine.tree.radii, coarse.tree.radii)
    corner = lambda p: np.asarray(p.meta["origin_mm"]) - np.asarray(p.spacing) / 2  # noqa: E731
    np.testing.assert_allclose(corner(fine), corner(coarse), atol=1e-4)
    coarse_mm3, fine_mm3 = coarse.label.sum() * 0.2, fine.label.sum() * 0.027
    assert coarse_mm3 > 20 and abs(fine_mm3 - coarse_mm3) < 0.05 * coarse_mm3


def test_dataset_mixes_cow_crops_and_spacings(tmp_path):
    from VesselReconLib.phantoms.mra import write_mra_dataset

    out = write_mra_dataset(tmp_path / "mra", 3, seed=3, crop=(16, 48, 48), micro_fraction=0, cow_fraction=1.0,
                            spacing_jitter=0.1)
    info = json.loads((out / "phantom.json").read_text())
    assert info["case_kinds"] == ["mra-cow"] * 3
    spacings = np.array(info["case_spacings"])
    assert np.all(np.abs(spacings / [0.5, 0.5, 0.8] - 1) <= 0.1 + 1e-6) and len({tuple(s) for s in spacings}) == 3


@pytest.mark.parametrize("align_corners", [True, False])
def test_numpy_resize_matches_torch_trilinear(align_corners):
    """The phantom is numpy (no torch for Sample Data); its linear resize samples where torch's trilinear does."""
    torch = pytest.importorskip("torch")
    from VesselReconLib.phantoms.mra import resize_linear

    volume = np.random.default_rng(0).standard_normal((5, 7, 9)).astype(np.float32)
    for size in [(16, 20, 30), (3, 7, 4)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(volume)[None, None], size=size, mode="trilinear",
                                                   align_corners=align_corners)[0, 0].numpy()
        np.testing.assert_allclose(resize_linear(volume, size, align_corners), expected, atol=1e-5)

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

"""VC-Net without a mask on a whole head: the search region leaves out the bright fat and scalp,
keeps the brain (also when the field of view cuts the skull) and every voxel of a crop with no air;
windows outside the region are skipped; training draws hard negatives from the fat and ordinary
negatives inside the brain mask."""

from __future__ import annotations

import numpy as np
import pytest

from VesselReconLib.phantoms.mra import ellipsoid_level, head_geometry, render_mra
from VesselReconLib.vcnet.data import Case, PatchSampler, hard_negatives, intracranial_region, normalize

HEAD_SHAPE, HEAD_SPACING = (64, 224, 224), (1.0, 1.0, 1.6)


@pytest.fixture(scope="module")
def whole_head():
    return render_mra("mra", seed=12, shape=HEAD_SHAPE, spacing=HEAD_SPACING)


def test_region_leaves_out_fat_and_scalp_and_keeps_the_brain(whole_head):
    region = intracranial_region(whole_head.image, whole_head.spacing)
    centre, radii = head_geometry(HEAD_SHAPE, HEAD_SPACING)
    level = ellipsoid_level(HEAD_SHAPE, HEAD_SPACING, centre, radii)
    fat = (level <= 1) & (level > 0.93)  # the bright outer shell of the phantom's head
    assert region[whole_head.brain_mask > 0].mean() > 0.999
    assert region[whole_head.label > 0].all()
    assert region[fat].mean() < 0.02  # (only where the slab's top and bottom faces cut the fat obliquely)
    assert not region[2:-2][fat[2:-2]].any() or region[2:-2][fat[2:-2]].mean() < 1e-3


def test_crop_without_air_keeps_every_voxel():
    crop = render_mra("mra", seed=8, crop=(24, 96, 96), crop_centre="cow")
    assert intracranial_region(crop.image, crop.spacing).all()


def test_skull_cut_by_the_field_of_view_is_not_air():
    edge = render_mra("mra", seed=501, crop=(24, 120, 120), crop_centre="edge")
    region = intracranial_region(edge.image, edge.spacing)
    assert 0.05 < region.mean() < 0.95  # air and fat are left out...
    assert region[edge.brain_mask > 0].mean() > 0.97  # ...the brain is not eroded from the cut skull


def test_windows_outside_the_region_are_skipped():
    import torch

    from VesselReconLib.vcnet.inference import predict_probability
    from VesselReconLib.vcnet.network import build_model

    torch.manual_seed(0)
    net = build_model("lite").eval()
    volume = np.random.default_rng(0).standard_normal((16, 128, 128)).astype(np.float32)
    region = np.zeros(volume.shape, bool)
    region[:, 10:20, 70:80] = True  # inside the window at j 0-63, i 64-127 only
    full, _ = predict_probability(net, volume, torch.device("cpu"), batch_size=2)
    part, _ = predict_probability(net, volume, torch.device("cpu"), batch_size=2, region=region)
    np.testing.assert_allclose(part[:, :64, 64:], full[:, :64, 64:], atol=1e-5)
    assert not part[:, 64:].any() and not part[:, :64, :64].any()


def test_sampler_draws_hard_negatives_from_bright_fat(whole_head):
    image = normalize(whole_head.image, whole_head.brain_mask)
    case = Case("head", image, whole_head.label, whole_head.brain_mask, whole_head.spacing)
    hard = hard_negatives(case)
    assert hard.size and not whole_head.brain_mask.ravel()[hard].any()
    sampler = PatchSampler([case], (8, 16, 16), pos_fraction=0.75, seed=0, hard_fraction=1.0)
    patches = [sampler.sample() for _ in range(5)]
    assert all(p[0].max() > 0.8 and not p[1].any() for p in patches)  # bright, and no vessel label there


def test_sampler_draws_ordinary_negatives_inside_the_brain_mask():
    """The paper's negatives: non-vessel patches centred inside the brain mask (here j >= 24 only)."""
    image = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None], (8, 32, 32)).copy()  # value = row j
    label = np.zeros((8, 32, 32), np.uint8)
    label[4, 28, 4] = 1
    mask = np.zeros((8, 32, 32), np.uint8)
    mask[:, 24:] = 1
    sampler = PatchSampler([Case("head", image, label, mask, (0.5, 0.5, 0.8))], (4, 8, 8), pos_fraction=0.0, seed=0)
    starts = [sampler.sample()[0].min() for _ in range(20)]  # first row of each patch
    assert min(starts) >= 20, starts  # a centre at j >= 24 starts its 8-row patch at j >= 20
    anywhere = PatchSampler([Case("head", image, label, None, (0.5, 0.5, 0.8))], (4, 8, 8), pos_fraction=0.0, seed=0)
    assert min(anywhere.sample()[0].min() for _ in range(20)) < 20  # without a mask: anywhere

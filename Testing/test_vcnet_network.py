"""VC-Net building blocks: MIP composition/unprojection vs slow reference loops, network shapes, loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from VesselReconLib.vcnet import mip
from VesselReconLib.vcnet.losses import VCNetLoss
from VesselReconLib.vcnet.network import PRESETS, build_model, count_parameters, plain_unet3d


def reference_compose(volume: np.ndarray, size=5, step=2):
    """Pixel loops: composited MIP (rows*H, 2W) and source slices (m, H, W) of a (D, H, W) volume."""
    depth, h, w = volume.shape
    m = (depth - size) // step + 1
    starts = [i * step for i in range(m - 1)] + [depth - size]  # the last window ends at the last slice
    rows = -(-m // 2)
    image = np.zeros((rows * h, 2 * w), volume.dtype)
    source = np.zeros((m, h, w), np.int64)
    for i, first in enumerate(starts):
        r, c = divmod(i, 2)
        for y in range(h):
            for x in range(w):
                column = volume[first:first + size, y, x]
                image[r * h + y, c * w + x] = column.max()
                source[i, y, x] = first + int(np.argmax(column))
    return image, source


def reference_unproject(features: np.ndarray, source: np.ndarray, depth: int):
    """Pixel loops: scatter (C, rows*H, 2W) features to (C, depth, H, W) with channel-wise max."""
    channels = features.shape[0]
    m, h, w = source.shape
    out = np.zeros((channels, depth, h, w), features.dtype)
    for i in range(m):
        r, c = divmod(i, 2)
        for y in range(h):
            for x in range(w):
                k = source[i, y, x]
                out[:, k, y, x] = np.maximum(out[:, k, y, x], features[:, r * h + y, c * w + x])
    return out


def test_mip_count_and_paper_layout():
    assert mip.mip_count(16) == 6
    assert mip.window_starts(16) == [0, 2, 4, 6, 8, 11]  # the authors' Unproject layer pads the last MIP by [11, 0]
    image, source = mip.compose(torch.rand(1, 1, 16, 128, 128))
    assert image.shape == (1, 1, 384, 256)  # 0.5 m K1 x 2 K2
    assert source.shape == (1, 6, 128, 128)


@pytest.mark.parametrize("depth", [16, 11])  # m = 6 (even) and m = 4; 7 slices -> m = 2
def test_compose_matches_reference_loop(depth):
    rng = np.random.default_rng(depth)
    volume = rng.random((depth, 5, 7)).astype(np.float32)
    image, source = mip.compose(torch.from_numpy(volume)[None, None])
    ref_image, ref_source = reference_compose(volume)
    np.testing.assert_array_equal(image[0, 0].numpy(), ref_image)
    np.testing.assert_array_equal(source[0].numpy(), ref_source)


def test_odd_mip_count_pads_last_tile_and_roundtrips():
    volume = torch.rand(2, 3, 9, 4, 6)  # m = 3 -> 2 rows, last tile empty
    stack, _ = mip.sliding_mips(volume)
    tiled = mip.tile(stack)
    assert tiled.shape == (2, 3, 8, 12)
    assert torch.all(tiled[:, :, 4:, 6:] == 0)
    torch.testing.assert_close(mip.untile(tiled, 3), stack)


@pytest.mark.parametrize("grad", [True, False])  # scatter_reduce (training) and the window loop (inference)
def test_unproject_matches_reference_loop_with_overlaps(grad):
    rng = np.random.default_rng(3)
    volume = rng.random((16, 6, 5)).astype(np.float32)
    _, source = mip.compose(torch.from_numpy(volume)[None, None])
    features = np.maximum(rng.normal(size=(4, 18, 10)), 0).astype(np.float32)  # ReLU features
    with torch.set_grad_enabled(grad):
        out = mip.unproject(torch.from_numpy(features)[None], source, 16)[0].numpy()
    expected = reference_unproject(features, source[0].numpy(), 16)
    np.testing.assert_array_equal(out, expected)


def test_last_slice_of_a_patch_receives_mip_features():
    volume = torch.zeros(1, 1, 16, 4, 4)
    volume[0, 0, 15, 1, 2] = 1.0  # a vessel voxel in the last slice only
    _, source = mip.compose(volume)
    assert source[0, -1, 1, 2].item() == 15  # the last window (11..15) sees it
    features = torch.ones(1, 3, 3 * 4, 2 * 4)
    out = mip.unproject(features, source, 16)
    assert torch.all(out[0, :, 15, 1, 2] == 1)
    # in a trained-size network, the 2D stream's features reach slice 15 of the patch
    net = build_model("lite").eval()
    image, indices = mip.compose(torch.rand(1, 1, 16, 32, 32))
    feat2d, _ = net.mip_stream(image)
    assert mip.unproject(feat2d, indices, 16)[:, :, 15].abs().sum() > 0


def test_unproject_takes_max_where_mips_overlap():
    # A single bright voxel at slice 4 is the argmax of MIPs 0 (0..4) and 1 (2..6) and 2 (4..8).
    volume = torch.zeros(1, 1, 9, 1, 1)
    volume[0, 0, 4] = 1.0
    image, source = mip.compose(volume)
    assert source[0, :, 0, 0].tolist() == [4, 4, 4]
    features = torch.tensor([[[[0.2, 0.7], [0.5, 0.0]]]])  # tiles: MIP0=0.2, MIP1=0.7, MIP2=0.5
    out = mip.unproject(features, source, 9)
    assert out[0, 0, 4, 0, 0].item() == pytest.approx(0.7)
    assert out.sum().item() == pytest.approx(0.7)


def test_label_mip_is_the_mip_of_the_label():
    label = torch.zeros(1, 1, 16, 4, 4)
    label[0, 0, 7, 1, 2] = 1  # in MIP windows 2 (4..8) and 3 (6..10)
    tiled = mip.label_mip(label)
    stack = mip.untile(tiled, 6)[0, 0]
    assert [int(stack[i, 1, 2]) for i in range(6)] == [0, 0, 1, 1, 0, 0]
    assert tiled.sum().item() == 2


def test_loss_against_hand_computed_case():
    label = torch.zeros(1, 1, 5, 2, 2)
    label[0, 0, 2, 0, 1] = 1
    output = {"prob": torch.full((1, 1, 5, 2, 2), 0.5), "mip_prob": torch.full((1, 1, 2, 4), 0.25)}
    loss = VCNetLoss()
    terms = loss.terms(output, label)
    eps = 1e-5
    dice3d = 1 - (2 * 0.5 + eps) / (20 * 0.5 + 1 + eps)  # = 10/11
    dice_mip = 1 - (2 * 0.25 + eps) / (8 * 0.25 + 1 + eps)  # = 5/6 (MIP gt has one pixel)
    assert terms["dice3d"].item() == pytest.approx(dice3d, rel=1e-6)
    assert terms["dice_mip"].item() == pytest.approx(dice_mip, rel=1e-6)
    assert loss(output, label).item() == pytest.approx(dice3d + 0.2 * dice_mip, rel=1e-6)
    assert loss(output, label, "unet3d").item() == pytest.approx(dice3d, rel=1e-6)


@pytest.mark.parametrize("preset", ["lite", "lite-fast", "unet3d-lite", "unet2d-lite", "slice2d-lite"])
def test_lite_shapes_and_ranges(preset):
    torch.manual_seed(0)
    net = build_model(preset).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 16, 64, 64))
        odd = net(torch.rand(1, 1, 13, 40, 36))  # padded internally, cropped back
    assert out["prob"].shape == (2, 1, 16, 64, 64)
    assert odd["prob"].shape == (1, 1, 13, 40, 36)
    assert 0 <= out["prob"].min() and out["prob"].max() <= 1
    if preset in ("lite", "lite-fast", "unet2d-lite"):
        assert out["mip_prob"].shape == (2, 1, 192, 128)
        assert odd["mip_prob"].shape == (1, 1, 3 * 40, 2 * 36)


def test_lite_fast_runs_the_2d_stream_on_the_max_pooled_mip_image():
    net, full = build_model("lite-fast").eval(), build_model("lite").eval()
    assert net.mip_scale == 2 and full.mip_scale == 1
    # the same 2D U-Net (widths, parameters up to the C1 head), on a quarter of the pixels
    assert count_parameters(net.stream2d.conv_0) == count_parameters(full.stream2d.conv_0)
    assert abs(count_parameters(net) - count_parameters(full)) < 200
    seen = []
    net.stream2d.register_forward_hook(lambda module, args, out: seen.append((args[0].shape, out.shape)))
    image = torch.zeros(1, 1, 192, 128)
    image[0, 0, 70, 3:120] = 1.0  # a one-pixel-thin bright vessel
    with torch.no_grad():
        feat2d, prob = net.mip_stream(image)
    assert seen[0][0] == (1, 1, 96, 64) and seen[0][1] == (1, PRESETS["lite-fast"]["c1"], 96, 64)
    assert feat2d.shape == (1, PRESETS["lite-fast"]["c1"], 192, 128) and prob.shape == (1, 1, 192, 128)
    assert feat2d.min() >= 0  # ReLU features: zero stays the neutral element of the unprojection maximum
    pooled = torch.nn.functional.max_pool2d(image, 2)
    assert pooled[0, 0, 35].sum() == pooled[0, 0].sum() > 50  # max pooling keeps the thin vessel
    # the fusion is 1x1x1 only and gets the 3D stream's full width and the C1 2D features
    fusion = [m for m in net.joint.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [m.kernel_size for m in fusion] == [(1, 1, 1), (1, 1, 1)]
    assert fusion[0].in_channels == PRESETS["lite-fast"]["channels3d"][0] + PRESETS["lite-fast"]["c1"]


def test_paper_preset_matches_the_authors_layout():
    net = build_model("paper").eval()
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.InstanceNorm3d))
                   for m in net.modules())
    assert net.stream2d.final_conv.out_channels == PRESETS["paper"]["c1"] == 32
    assert 7.6e6 < count_parameters(net.stream2d) < 8.0e6  # the authors' 2D U-Net, 32..512 channels: 7.8 M
    # the 3D stream's full top-level width (32) and the 2D features go into a 1x1x1 fusion, nothing else
    fusion = [m for m in net.joint.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [m.kernel_size for m in fusion] == [(1, 1, 1), (1, 1, 1)]
    assert fusion[0].in_channels == 32 + 32 and fusion[0].out_channels == 32
    with torch.no_grad():
        out = net(torch.rand(1, 1, 16, 32, 32))
    assert out["prob"].shape == (1, 1, 16, 32, 32) and out["mip_prob"].shape == (1, 1, 96, 64)
    assert 18e6 < count_parameters(plain_unet3d("paper")) < 20e6


def test_gradients_reach_both_streams():
    net = build_model("lite")
    label = (torch.rand(1, 1, 16, 32, 32) > 0.9).float()
    VCNetLoss()(net(torch.rand(1, 1, 16, 32, 32)), label).backward()
    assert next(net.stream2d.parameters()).grad.abs().sum() > 0
    assert net.stream3d.model[0].conv.unit0.conv.weight.grad.abs().sum() > 0


def test_normalize_is_scale_free_and_inverts_dark_vessels_inside_the_mask():
    from VesselReconLib.vcnet.data import normalize

    rng = np.random.default_rng(0)
    volume = rng.normal(300, 10, (8, 32, 32)).astype(np.float32)
    volume[:, :, :4] = 5.0  # air outside the mask
    mask = np.zeros(volume.shape, bool)
    mask[:, :, 4:] = True
    volume[4, 10, 10] = 900.0  # a bright vessel voxel: 3x the tissue
    a = normalize(volume, mask)
    np.testing.assert_allclose(normalize(3 * volume, mask), a, rtol=1e-5, atol=1e-5)
    assert abs(np.median(a[mask])) < 1e-3 and a[4, 10, 10] == pytest.approx(2.0, rel=0.05)
    dark = normalize(volume, mask, dark=True)
    np.testing.assert_allclose(dark[mask], -a[mask])
    np.testing.assert_allclose(dark[~mask], a[~mask])
    # without a mask the statistics come from the whole volume's tissue mode (the air is ignored)
    assert abs(np.median(normalize(volume)[mask])) < 0.01


def test_tissue_level_ignores_air_vessels_and_bright_fat():
    from VesselReconLib.vcnet.data import tissue_level

    rng = np.random.default_rng(1)
    tissue = rng.normal(108, 12, 60_000)
    vessels = rng.uniform(250, 700, 4_000)  # ~5 % vessels, as in circle-of-Willis crops
    fat = rng.normal(280, 30, 12_000)  # bright fat and scalp
    air = rng.rayleigh(25, 150_000)  # most of a whole-head field of view
    crop = np.concatenate([tissue, vessels, fat]).astype(np.float32).reshape(1, 1, -1)
    head = np.concatenate([tissue, vessels, fat, air]).astype(np.float32).reshape(1, 1, -1)
    assert tissue_level(crop) == pytest.approx(108, rel=0.05)  # the crop: median above Otsu/2 was 292
    assert tissue_level(head) == pytest.approx(108, rel=0.05)


def test_no_mask_normalisation_on_a_no_air_phantom_crop():
    from VesselReconLib.phantoms.mra import render_mra
    from VesselReconLib.vcnet.data import normalize

    p = render_mra("mra", seed=21, spacing=(0.3, 0.3, 0.3), crop=(34, 123, 140), crop_centre="cow")
    assert (p.image < 150).mean() < 0.05 and p.brain_mask.mean() > 0.95  # no air, no background
    tissue = (p.brain_mask > 0) & (p.label == 0)
    without = normalize(p.image)
    with_mask = normalize(p.image, p.brain_mask)
    assert abs(np.median(without[tissue])) < 0.05
    assert abs(np.median(without[tissue]) - np.median(with_mask[tissue])) < 0.03
    assert np.median(without[p.label > 0]) > 0.5  # vessels stay bright


def test_sliding_window_helpers():
    from VesselReconLib.vcnet.inference import scan_windows, slab_starts

    assert slab_starts(40, 16) == [0, 16, 24] and slab_starts(10, 16) == [0] and slab_starts(32, 16) == [0, 16]
    assert len(scan_windows((128, 448, 448), (16, 128, 128), 0.0)) == 8 * 4 * 4
    assert len(scan_windows((16, 64, 64), (16, 64, 64), 0.5)) == 1


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_window_loop_matches_monai_sliding_window(overlap, threads):
    """predict_probability's own window loop (region skipping, dense batches; with 2 threads the
    batches run in 2 worker threads, ``device.map_batches``) gives MONAI's result."""
    from monai.inferers import sliding_window_inference

    from VesselReconLib.vcnet.inference import predict_probability

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model("lite").eval()
    volume = np.random.default_rng(1).standard_normal((20, 70, 66)).astype(np.float32)
    counts = {}
    mine, _ = predict_probability(net, volume, torch.device("cpu"), overlap, batch_size=2, counts=counts)
    assert torch.get_num_threads() == threads  # restored after the worker threads
    with torch.inference_mode():
        ref = sliding_window_inference(torch.from_numpy(volume)[None, None], net.patch, 2, lambda x: net(x)["prob"],
                                       overlap=overlap, mode="gaussian" if overlap > 0 else "constant")[0, 0].numpy()
    np.testing.assert_allclose(mine, ref, atol=1e-5)
    assert counts["windows_run"] == counts["windows_total"] == 8


def test_channels_last_keeps_the_output():
    from VesselReconLib.vcnet.network import channels_last

    torch.manual_seed(0)
    net = build_model("lite").eval()
    x = torch.rand(2, 1, 16, 64, 64)
    with torch.inference_mode():
        before = net(x)["prob"]
        after = channels_last(net)(x)["prob"]
    assert net.stream3d.model[0].conv.unit0.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_forward_without_mip_outputs_gives_the_same_probability():
    torch.manual_seed(0)
    net = build_model("lite").eval()
    x = torch.rand(2, 1, 16, 64, 64)
    with torch.inference_mode():
        full, lean = net(x), net(x, mips=False)
    assert set(lean) == {"prob"} and {"mip_prob", "mip_image"} <= set(full)
    assert torch.equal(full["prob"], lean["prob"])


def test_finite_output_check_finds_nan_and_inf_but_accepts_a_sum_that_overflows():
    from VesselReconLib.errors import InferenceError, check_finite_output

    big = torch.full((4, 4), 3e38)  # finite values whose sum overflows: the exact check accepts them
    check_finite_output({"prob": big}, "test")
    for bad in (float("nan"), float("inf"), -float("inf")):
        values = torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
        values[1, 2, 3, 1] = bad
        with pytest.raises(InferenceError):
            check_finite_output({"prob": values}, "test")


def test_sparse_and_dense_boundary_rules_give_the_same_labels(monkeypatch):
    """The refinement's box maximum gathered at the band's voxels (sparse vessels) equals the dense one."""
    from VesselReconLib.vcnet import inference

    rng = np.random.default_rng(1)
    image = rng.normal(0, 0.2, (24, 60, 60)).astype(np.float32)
    prob = np.zeros(image.shape, np.float32)
    for k, j, i in rng.integers(3, 57, (12, 3)):  # short bright vessels, sparse in the volume
        k = k % 21
        image[k:k + 3, j - 1:j + 2, i - 2:i + 2] += rng.uniform(0.8, 2.0)
        prob[k:k + 3, j - 2:j + 3, i - 3:i + 3] = rng.uniform(0.2, 1.0, (3, 5, 6))
    for spacing in ((0.5, 0.5, 0.8), (0.3, 0.3, 0.3)):
        dense = inference._dense_rule
        monkeypatch.setattr(inference, "_sparse_rule", lambda v, c, p, s, f: dense(v, c, p, s, f, torch.device("cpu")))
        forced_dense = inference.refine_boundary(prob, image, spacing, 0.5, torch.device("cpu"))
        monkeypatch.undo()
        sparse = inference._sparse_rule
        monkeypatch.setattr(inference, "_dense_rule", lambda v, c, p, s, f, d: sparse(v, c, p, s, f))
        forced_sparse = inference.refine_boundary(prob, image, spacing, 0.5, torch.device("cpu"))
        monkeypatch.undo()
        assert forced_dense.any() and np.array_equal(forced_dense, forced_sparse)
        assert np.array_equal(inference.refine_boundary(prob, image, spacing, 0.5, torch.device("cpu")), forced_dense)


def test_skeleton_by_component_equals_the_whole_skeleton():
    from skimage.morphology import skeletonize

    from VesselReconLib.vcnet.inference import _skeleton_points

    k, j, i = np.mgrid[:20, :50, :50]
    labels = (np.hypot(j - 12.0, i - 12.0) <= 3) | (np.hypot(k - 10.0, j - 35.0) <= 2.5)  # two tubes
    labels |= (np.abs(k - 5) <= 1) & (np.abs(j - 40) <= 1) & (i > 8)  # touches the second tube
    labels[15:17, 2:4, 40:42] = True  # a speck
    assert np.array_equal(_skeleton_points(labels), np.argwhere(skeletonize(labels)))


def test_boundary_refinement_restores_the_calibre_on_the_input_grid():
    """A 0.3 mm tube whose probability came back from the coarse model grid too thin (and blurred) gets
    its calibre from the image (half-maximum rule); bright tissue away from detected vessels stays out."""
    from VesselReconLib import metrics
    from VesselReconLib.vcnet.inference import refine_boundary

    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[:20, :40, :40]
    distance = np.hypot(j - 20.0, i - 20.0)
    tube = distance <= 4.0  # 1.2 mm radius at 0.3 mm
    image = np.where(tube, 1.4, 0.0) + rng.normal(0, 0.15, tube.shape)
    image[:, 2:6, 2:6] = 2.0  # a bright, fat-like blob far from the vessel
    prob = np.clip(1.2 - distance / 4.0, 0, 1).astype(np.float32)  # >= 0.5 only within 2.8 voxels: too thin
    plain = metrics.dice(prob >= 0.5, tube)
    refined = refine_boundary(prob, image.astype(np.float32), (0.3, 0.3, 0.3), 0.5, torch.device("cpu"))
    assert plain < 0.7 and metrics.dice(refined, tube) > 0.95
    assert not refined[:, 2:6, 2:6].any()
    assert not refine_boundary(prob * 0.4, image.astype(np.float32), (0.3, 0.3, 0.3), 0.5, torch.device("cpu")).any()

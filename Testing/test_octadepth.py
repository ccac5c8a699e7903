"""OCTADepth: network shapes, loss terms by hand, reconstruction geometry, Logic + scene, shipped weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from VesselReconLib import meshes, metrics, mrml, registry
from VesselReconLib.errors import CheckpointError, InputError
from VesselReconLib.octadepth import data, losses, network, pipeline, reconstruction
from VesselReconLib.octadepth.logic import NAMES, OCTADepthLogic

HELD_OUT_SEEDS = (7001, 7002)  # training used the dataset seed 100 (case seeds drawn from it)


# ------------------------------------------------------------------ network


@pytest.mark.parametrize("preset", ["lite", "unet-lite"])
def test_lite_presets_output_two_maps_in_unit_range(preset):
    net = network.build_model(preset).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 48))
    assert out.shape == (2, 2, 64, 48)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert network.parameter_megabytes(net) < 2.5


def test_paper_preset_has_five_levels_and_four_scbs():
    net = network.build_model("paper").eval()
    assert len(net.encoders) == 5 and len(net.scbs) == 4
    assert net.encoders[0].conv1.conv.out_channels == 64
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    plain = network.build_model("unet-paper")
    assert plain.plain and not hasattr(plain, "scbs")


def test_scb_output_is_upsampled_encoder_features_gated_keeping_their_channels():
    block = network.StructureConstraintBlock(encoder_channels=16, structure_channels=8).eval()
    encoder = torch.rand(1, 16, 4, 4) + 0.1
    structure = network.GatedFeatures(torch.rand(1, 8, 16, 16))
    with torch.no_grad():
        out = block(encoder, structure, (16, 16))
        gated = out.at((16, 16))
        up = torch.nn.functional.interpolate(encoder, size=(16, 16), mode="bilinear")
        attention = block.gate(encoder, structure, (16, 16))
    assert gated.shape == (1, 16, 16, 16)  # e_t's channels, the branch's resolution
    torch.testing.assert_close(gated, up * attention)
    assert float(attention.min()) > 0.0 and float(attention.max()) < 1.0
    # the factored projection equals the 1x1 convolution of the materialised output
    conv = torch.nn.Conv2d(16, 3, 1, bias=False)
    with torch.no_grad():
        torch.testing.assert_close(out.project(conv, (16, 16)), conv(gated), atol=1e-5, rtol=1e-4)


def test_paper_and_lite_presets_run_the_structure_branch_at_full_resolution():
    for preset in ("paper", "lite"):
        assert network.build_model(preset).structure_stride == 1
    net = network.build_model("lite").eval()
    with torch.no_grad():
        features = net.encode(torch.rand(1, 1, 64, 64))
        outputs = net.structure_branch(features)
    assert [o.attention.shape[-2:] for o in outputs] == [(64, 64)] * 4
    assert [o.at((64, 64)).shape[1] for o in outputs] == [16, 32, 64, 128]  # e_2..e_5 channels


@pytest.mark.parametrize("stride", [1, 2])
def test_inference_folds_batchnorm_into_the_scb_and_vessel_head_without_changing_the_function(stride):
    """In eval mode the SCB attention and the vessel head's 3x3 conv run with their BatchNorm folded
    in (fewer full-resolution passes); the maps equal the unfolded modules' with the same statistics."""
    torch.manual_seed(0)
    net = network.build_model("lite", structure_stride=stride)
    with torch.no_grad():
        for module in net.modules():  # non-trivial running statistics and affine parameters
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        folded = net.eval()(image)
        net.train()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()  # the unfolded path with the running statistics
        unfolded = net(image)
    torch.testing.assert_close(folded, unfolded, atol=1e-5, rtol=1e-4)


def test_vessel_map_is_fed_by_the_last_scb_only():
    torch.manual_seed(0)
    net = network.build_model("lite").train()  # batch statistics: untrained activations are not tiny
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        before = net(image)
        for parameter in net.head.parameters():  # the depth head: no effect on the vessel map
            parameter.add_(1.0)
        after_head = net(image)
        for parameter in net.scbs[-1].attention[-2].parameters():  # the last SCB's attention conv
            parameter.mul_(-3.0)
        after_scb = net(image)
    torch.testing.assert_close(after_head[:, 0], before[:, 0])
    assert not torch.allclose(after_head[:, 1], before[:, 1])
    assert float((after_scb[:, 0] - after_head[:, 0]).abs().max()) > 1e-3


def test_scb_outputs_replace_the_skips_at_their_own_scale_as_wide_as_the_plain_unet():
    torch.manual_seed(0)
    net, plain = network.build_model("lite").eval(), network.build_model("unet-lite")
    widths = [d.block.conv1.conv.in_channels for d in net.decoders]
    assert widths == [d.block.conv1.conv.in_channels for d in plain.decoders]  # not thinner, not wider
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        features = net.encode(image)
        outputs = net.structure_branch(features)
        skip = outputs[0].at(features[1].shape[-2:])  # s_2 at e_2's scale: e_2 gated by a_1
        a1 = torch.nn.functional.avg_pool2d(outputs[0].attention, 2)
        torch.testing.assert_close(skip, features[1] * a1)
        net.train()  # batch statistics: untrained activations are not tiny
        batch = torch.rand(2, 1, 64, 64)
        before = net(batch)
        net.scbs[0].attention[-2].weight.mul_(-3.0)  # the first SCB gates the depth decoder's skips
        after = net(batch)
    assert float((after[:, 1] - before[:, 1]).abs().max()) > 1e-3


def test_threshold_selected_on_val_is_folded_into_the_vessel_logit():
    from VesselReconLib.octadepth import train

    for preset in ("lite", "unet-lite"):
        net = network.build_model(preset).eval()
        image = torch.rand(1, 1, 32, 32)
        with torch.no_grad():
            before = net(image)[:, 0]
            train.fold_threshold(net, 0.35)
            after = net(image)[:, 0]
        assert torch.equal(before > 0.35, after > 0.5)


def test_prediction_averages_the_maps_over_the_image_flips():
    torch.manual_seed(0)
    net = network.build_model("lite").eval()
    image = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    vessels, depth = pipeline.predict(net, image, normalized=True)
    with torch.no_grad():
        x = torch.from_numpy(image)[None, None]
        maps = [net(x.flip(d)).flip(d) if d else net(x) for d in ((), (-1,), (-2,), (-2, -1))]
    expected = torch.stack(maps).mean(0)[0].numpy()
    np.testing.assert_allclose(vessels, expected[0], atol=1e-5)
    np.testing.assert_allclose(depth, expected[1], atol=1e-5)
    net.flip_average = False  # one pass
    np.testing.assert_allclose(pipeline.predict(net, image, normalized=True)[1], maps[0][0, 1].numpy(), atol=1e-5)


def test_flip_passes_run_side_by_side_on_one_thread_each_with_the_one_thread_maps():
    """With 2 torch threads the four flip passes run in two one-thread workers (round 7c); the maps equal
    the 1-thread path's and the thread count is restored, after an error too."""
    import threading

    torch.manual_seed(0)
    net = network.build_model("lite").eval()
    image = np.random.default_rng(1).random((64, 80)).astype(np.float32)
    seen = []
    net.register_forward_pre_hook(lambda *_: seen.append((threading.current_thread().name, torch.get_num_threads())))
    torch.set_num_threads(1)
    single = pipeline.predict(net, image, normalized=True)
    assert len(seen) == 4 and all(name == threading.current_thread().name for name, _ in seen)
    seen.clear()
    torch.set_num_threads(2)
    split = pipeline.predict(net, image, normalized=True)
    assert torch.get_num_threads() == 2
    assert len(seen) == 4 and {n for _, n in seen} == {1}
    assert all(name.startswith("vesselrecon-batch") for name, _ in seen)
    for one, two in zip(single, split):
        np.testing.assert_allclose(two, one, atol=1e-5)
    np.testing.assert_array_equal(split[0] > 0.5, single[0] > 0.5)
    net.register_forward_pre_hook(lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pipeline.predict(net, image, normalized=True)
    assert torch.get_num_threads() == 2


class _TwoMaps(torch.nn.Module):
    """A one-layer stand-in for the network (two maps in 0..1), cheap on large images."""

    flip_average = False

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


def test_a_large_image_reports_progress_and_can_be_cancelled_while_its_windows_run():
    """Above 2 x 512 px the windows took minutes without a word (2048 px: 48 s silent on one thread) and
    Cancel waited for all of them; now every batch of windows reports and checks for cancel."""
    from VesselReconLib.progress import Cancelled, Reporter

    image = np.random.default_rng(2).random((1040, 1040)).astype(np.float32)
    reports = []
    vessels, _ = pipeline.predict(_TwoMaps().eval(), image, normalized=True,
                                  progress=lambda fraction, message: reports.append((fraction, message)))
    assert vessels.shape == image.shape
    assert len(reports) == 3 and reports[-1] == (1.0, "predicting window batch 3/3")   # 9 windows, 4 per batch
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)
    net = _TwoMaps().eval()
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(Cancelled):
        pipeline.predict(net, image, normalized=True, progress=Reporter(cancel=lambda: bool(calls)))
    assert len(calls) == 1


def test_network_refuses_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        network.build_model("lite")(torch.rand(1, 1, 40, 40))


# ------------------------------------------------------------------ losses (hand-computed)


def test_segmentation_loss_is_mse_plus_soft_dice_over_weighted_pixels():
    pred = torch.tensor([0.2, 0.8, 0.6, 0.0]).view(1, 1, 2, 2)
    gt = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 2)
    mse = (0.04 + 0.04 + 0.16 + 0.0) / 4
    assert float(losses.segmentation_loss(pred, gt, dice_weight=0)) == pytest.approx(mse)
    dice = (2 * 1.4 + 1) / (1.6 + 2 + 1)
    assert float(losses.segmentation_loss(pred, gt)) == pytest.approx(mse + 1 - dice, rel=1e-5)
    weight = torch.tensor([0.0, 1.0, 1.0, 1.0]).view(1, 1, 2, 2)  # the first pixel's label does not count
    assert float(losses.segmentation_loss(pred, gt, weight, dice_weight=0)) == pytest.approx((0.04 + 0.16) / 3)


def test_accuracy_loss_weights_depth_by_the_predicted_vessel_map():
    pred_seg = torch.tensor([0.9, 0.7, 0.1, 0.2], requires_grad=True)
    pred_depth = torch.tensor([0.5, 0.3, 0.2, 0.0]).view(1, 1, 2, 2)
    gt_depth = torch.tensor([0.4, 0.6, 0.0, 0.0]).view(1, 1, 2, 2)
    p, err = [0.9, 0.7, 0.1, 0.2], [0.01, 0.09, 0.04, 0.0]
    inside = sum(a * b for a, b in zip(p, err)) / sum(p)
    outside = sum((1 - a) * b for a, b in zip(p, err)) / sum(1 - a for a in p)
    loss = losses.accuracy_loss(pred_depth, gt_depth, pred_seg.view(1, 1, 2, 2))
    assert float(loss) == pytest.approx(0.8 * inside + 0.2 * outside, rel=1e-5)
    loss.backward()
    assert float(pred_seg.grad.abs().sum()) > 0  # a soft weight: gradient reaches the vessel map
    # pixels with a known depth (phantom capillaries outside the expert-style vessel map) count as inside
    support = torch.tensor([0.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    q = [0.9, 0.7, 1.0, 0.2]
    inside = sum(a * b for a, b in zip(q, err)) / sum(q)
    outside = sum((1 - a) * b for a, b in zip(q, err)) / sum(1 - a for a in q)
    with_support = losses.accuracy_loss(pred_depth, gt_depth, pred_seg.detach().view(1, 1, 2, 2), support)
    assert float(with_support) == pytest.approx(0.8 * inside + 0.2 * outside, rel=1e-5)


def test_real_images_without_depth_train_only_the_vessel_head():
    torch.manual_seed(0)
    net = network.build_model("lite")
    image, vessel = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.7).float()
    depth = torch.rand(2, 1, 32, 32)
    terms = losses.octadepth_loss(net(image), vessel, depth, has_depth=torch.zeros(2))
    assert float(terms.accuracy) == 0.0 and float(terms.structure) == 0.0
    terms.total.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in net.head.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.vessel_head.parameters())
    mixed = losses.octadepth_loss(net(image), vessel, depth, has_depth=torch.tensor([1.0, 0.0]))
    alone = losses.octadepth_loss(net(image)[:1], vessel[:1], depth[:1])
    assert float(mixed.structure) == pytest.approx(float(alone.structure), rel=1e-4)


def test_background_depth_target_is_the_nearest_known_depth_and_the_support_stays_the_truth():
    depth = np.zeros((5, 5), np.float32)
    depth[0, 0], depth[4, 4] = 0.2, 0.8
    filled = data.fill_background_depth(depth)
    assert filled[1, 0] == pytest.approx(0.2) and filled[3, 4] == pytest.approx(0.8) and (filled > 0).all()
    assert data.fill_background_depth(np.zeros((3, 3), np.float32)).max() == 0  # real images: no depth
    pred = torch.full((1, 2, 5, 5), 0.5)
    pred[:, 1] = torch.from_numpy(filled)  # a depth map equal to the filled target
    gt, support = torch.from_numpy(filled)[None, None], torch.from_numpy(depth > 0)[None, None].float()
    seg = torch.zeros(1, 1, 5, 5)
    terms = losses.octadepth_loss(pred, seg, gt, depth_support=support)
    assert float(terms.accuracy) == pytest.approx(0.0, abs=1e-7)
    zero_target = losses.octadepth_loss(pred, seg, torch.from_numpy(depth)[None, None])
    assert float(zero_target.accuracy) > 0.01  # the paper's 0 background penalises the same map


def test_structure_loss_of_constant_images_matches_ssim_formula():
    a, b = 0.2, 0.6
    c1 = (0.01 * 1.0) ** 2
    ssim = (2 * a * b + c1) / (a * a + b * b + c1)  # contrast/structure term is C2/C2 = 1
    pred, gt = torch.full((1, 1, 24, 24), a), torch.full((1, 1, 24, 24), b)
    assert float(losses.structure_loss(pred, gt)) == pytest.approx(1 - ssim, abs=2e-4)
    assert float(losses.structure_loss(gt, gt)) == pytest.approx(0.0, abs=1e-6)


def test_total_loss_is_the_sum_of_the_terms_and_trains():
    torch.manual_seed(0)
    net = network.build_model("lite")
    image, vessel = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    depth = vessel * 0.4
    terms = losses.octadepth_loss(net(image), vessel, depth)
    assert float(terms.total.detach()) == pytest.approx(float((terms.seg + terms.accuracy + terms.structure).detach()))
    terms.total.backward()
    assert all(p.grad is not None for p in net.scbs.parameters())


# ------------------------------------------------------------------ reconstruction


def _crossing_phantom():
    """A thick shallow horizontal vessel crossing a thin deep vertical one, plus a shallow branch."""
    mask = np.zeros((128, 128), bool)
    depth = np.zeros((128, 128), np.float32)
    mask[62:67, 10:120], depth[62:67, 10:120] = True, 0.2
    mask[10:120, 40:43], depth[10:120, 40:43] = True, 0.8
    for t in range(30):
        mask[63 - t:66 - t, 90 + t:93 + t], depth[63 - t:66 - t, 90 + t:93 + t] = True, 0.2
    return mask, depth


def test_reconstruction_splits_at_junctions_and_relinks_by_depth():
    mask, depth = _crossing_phantom()
    pixel = 0.01
    net = reconstruction.reconstruct(mask, depth, pixel, depth_range_mm=0.25)
    # the deep vessel is brighter-on-top at the crossing, so the shallow one is cut there (a depth step)
    # and re-linked across it into one continuous polyline; the shallow branch makes the one junction,
    # whose three ends stay joined by two-point bridges
    assert net.junctions == 1
    assert net.segment_count == 4 and net.link_count == 2
    lines = [line for line, is_bridge in zip(net.polylines(), net.bridge) if not is_bridge]
    horizontal = [line for line in lines if np.allclose(line[:, 1], 0.64, atol=0.02) and np.ptp(line[:, 0]) > 0.7]
    assert len(horizontal) == 1  # merged across the crossing at x = 0.41
    assert horizontal[0][:, 0].min() < 0.3 < 0.5 < horizontal[0][:, 0].max()
    bridges = [line for line, is_bridge in zip(net.polylines(), net.bridge) if is_bridge]
    for bridge in bridges:  # no link joins the shallow vessel to the deep one
        assert abs(bridge[0, 2] - bridge[1, 2]) < 0.01
    deep = net.points[np.abs(net.points[:, 0] - 0.41) < 0.005]
    assert np.allclose(deep[:, 2], 0.8 * 0.25, atol=1e-4)  # x = column 41 * 0.01 mm, z = 0.8 * range
    horizontal = net.points[(np.abs(net.points[:, 1] - 0.64) < 1e-6) & (net.points[:, 0] < 0.35)]
    assert np.allclose(horizontal[:, 2], 0.05, atol=1e-4)
    radii = net.radii[(np.abs(net.points[:, 1] - 0.64) < 1e-6) & (net.points[:, 0] < 0.35)]
    assert np.median(radii) == pytest.approx(0.025, abs=0.006)  # 5 px wide vessel -> 2.5 px radius


def test_tube_radius_is_capped_at_a_retinal_calibre():
    mask = np.zeros((96, 96), bool)
    mask[20:76, 5:90] = True  # a 56 px wide band: 0.56 mm at 0.01 mm/px, no retinal vessel is that wide
    depth = np.where(mask, 0.3, 0).astype(np.float32)
    # the largest retinal vessels, at the disc, are under 0.2 mm wide: the default radius stays <= 0.1 mm
    assert reconstruction.reconstruct(mask, depth, 0.01).radii.max() <= 0.1
    assert reconstruction.reconstruct(mask, depth, 0.01, max_radius_mm=0.05).radii.max() == pytest.approx(0.05)
    assert reconstruction.reconstruct(mask, depth, 0.01, max_radius_mm=1.0).radii.max() > 0.2   # half the band


def test_tube_mesh_carries_depth_and_sits_on_the_image_geometry():
    mask, depth = _crossing_phantom()
    net = reconstruction.reconstruct(mask, depth, 0.01)
    ijk_to_ras = mrml.ijk_to_ras_matrix((0.01, 0.01, 0.01), (5.0, -3.0, 2.0), np.diag([-1.0, -1.0, 1.0]))
    tubes = reconstruction.tube_mesh(net, ijk_to_ras)
    assert meshes.is_watertight(tubes)    # every capped tube closed: its caps share its end rings' points
    depth_range = tubes.GetPointData().GetArray("depth").GetRange()
    assert depth_range == pytest.approx((0.05, 0.2), abs=1e-4)
    bounds = np.array(tubes.GetBounds())
    assert bounds[0] > 5.0 - 1.28 and bounds[1] < 5.0 + 0.01   # R = 5 - column * 0.01
    assert bounds[4] >= 2.0 - 0.2 - 0.03 and bounds[5] <= 2.0 - 0.05 + 0.03  # deeper = along -K
    rows = reconstruction.depth_band_rows(net)
    assert rows[-1]["segments"] == 4
    assert sum(r["length_mm"] for r in rows[:-1]) == pytest.approx(rows[-1]["length_mm"])
    assert rows[0]["length_mm"] > 0 and rows[3]["length_mm"] > 0 and rows[1]["length_mm"] == 0
    assert np.isnan(rows[1]["mean_depth_mm"])    # an empty band has no mean depth (it read as "at 0 mm")
    assert rows[0]["depth_from_mm"] <= rows[0]["mean_depth_mm"] <= rows[0]["depth_to_mm"]


def test_reconstruction_of_phantom_truth_matches_its_3d_centerlines():
    sample = data.render_samples([4242])[0]
    net = reconstruction.reconstruct(sample.vessel, sample.depth, sample.pixel_mm, sample.depth_range_mm)
    points = net.centerline_points()
    from scipy.spatial import cKDTree

    distance, index = cKDTree(sample.centerlines[:, :2]).query(points[:, :2])
    assert np.median(distance) < sample.pixel_mm
    assert np.median(np.abs(points[:, 2] - sample.centerlines[index, 2])) < 0.01
    flat = reconstruction.reconstruct(sample.vessel, np.full_like(sample.depth, 0.5), sample.pixel_mm)
    assert metrics.chamfer_distance(points, sample.centerlines) < metrics.chamfer_distance(
        flat.centerline_points(), sample.centerlines)


# ------------------------------------------------------------------ Logic and scene


def _node_names(scene):
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


def test_logic_outputs_sit_on_input_geometry_and_survive_mrb(scene, tmp_path):
    logic = OCTADepthLogic(scene)
    sample = logic.load_sample(seed=HELD_OUT_SEEDS[0])
    volume = sample.inputVolume
    shifted = mrml.ijk_to_ras_matrix([0.01] * 3, (12.0, -4.0, 3.0), np.diag([-1.0, -1.0, 1.0]))
    volume.SetIJKToRASMatrix(mrml.vtk_matrix(shifted))
    result = logic.process(volume, device="cpu")
    _, depth_geometry = mrml.volume_to_array(result.outputDepthVolume)
    assert np.allclose(depth_geometry, shifted)
    bounds = np.array(result.outputModel.GetPolyData().GetBounds())
    assert 12.0 - 3.1 < bounds[0] < bounds[1] < 12.0 + 0.05 and -4.0 - 3.1 < bounds[2] < bounds[3] < -4.0 + 0.05
    assert bounds[5] <= 3.0 + 0.05 and bounds[4] >= 3.0 - 0.25 - 0.05
    assert result.outputModel.GetPolyData().GetPointData().GetArray("depth") is not None
    assert result.outputModel.GetDisplayNode().GetActiveScalarName() == "depth"
    rows = mrml.table_to_rows(result.outputTable)
    assert rows[-1]["band"] == "all" and rows[-1]["segments"] > 10 and rows[-1]["length_mm"] > 1.0
    labels, label_geometry = mrml.segmentation_to_labelmap(result.outputSegmentation, volume)
    assert labels.sum() > 0 and np.allclose(label_geometry, shifted)
    depth_before, _ = mrml.volume_to_array(result.outputDepthVolume)
    mrml.save_scene(tmp_path / "octadepth.mrb", scene)
    mrml.load_scene(tmp_path / "octadepth.mrb", scene)
    loaded = scene.GetFirstNodeByName(NAMES["depth"])
    depth_after, geometry_after = mrml.volume_to_array(loaded)
    assert np.allclose(depth_after, depth_before) and np.allclose(geometry_after, shifted)
    for key in ("segmentation", "model", "centerlines", "table"):
        assert scene.GetFirstNodeByName(NAMES[key]) is not None


def test_the_most_superficial_tubes_are_drawn_red_not_in_the_maps_black_background(scene):
    """Tubes and centrelines shared the depth map's colour table, whose entry 0 is black for the map's background:
    every point shallower than 1/256 of the depth range was drawn black in 3D (1.3 % of the tube points of the
    OCTAGON 6 mm superficial scan). The models' table is the ramp alone; the map keeps its black background."""
    from VesselReconLib.octadepth.logic import depth_ramp

    logic = OCTADepthLogic(scene)
    result = logic.process(logic.load_sample(seed=HELD_OUT_SEEDS[0]).inputVolume, device="cpu")

    def first_entry(node):
        rgba = [0.0] * 4
        node.GetDisplayNode().GetColorNode().GetColor(0, rgba)
        return rgba[:3]

    assert first_entry(result.outputDepthVolume) == [0.0, 0.0, 0.0]
    for model in (result.outputModel, result.outputCenterlines):
        assert np.allclose(first_entry(model), depth_ramp()[0]), model.GetName()


def test_outputs_follow_an_input_placed_under_a_transform(scene, under_registration):
    """An image under a linear transform (a registration): depth map, vessels, tubes and centrelines were written
    on the image's own IJK-to-RAS but outside its transform, 50 mm off the image in Slicer's views."""
    logic = OCTADepthLogic(scene)
    volume = logic.load_sample(seed=HELD_OUT_SEEDS[0]).inputVolume
    moved = under_registration(volume)
    result = logic.process(volume, device="cpu")
    outputs = (result.outputDepthVolume, result.outputSegmentation, result.outputModel, result.outputCenterlines)
    assert [node.GetTransformNodeID() for node in outputs] == [moved.GetID()] * 4
    volume.SetAndObserveTransformNodeID(None)   # a re-run without it takes them back out
    again = logic.process(volume, device="cpu")
    assert [node.GetTransformNodeID() for node in (again.outputDepthVolume, again.outputModel)] == [None, None]


def test_saved_tubes_say_lps_and_load_in_slicer_on_the_image(scene, tmp_path):
    from VesselReconLib import meshes

    logic = OCTADepthLogic(scene)
    volume = logic.load_sample(seed=HELD_OUT_SEEDS[0]).inputVolume
    shifted = mrml.ijk_to_ras_matrix([0.01] * 3, (12.0, -4.0, 3.0), np.diag([-1.0, -1.0, 1.0]))
    volume.SetIJKToRASMatrix(mrml.vtk_matrix(shifted))
    result = logic.process(volume, device="cpu")
    tubes = next(path for path in result.save_files(tmp_path / "scan") if path.name.endswith("_tubes.vtp"))
    assert meshes.mesh_coordinate_system(tubes) == "LPS"
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")   # as Slicer's Add Data reads the file
    storage.SetFileName(str(tubes))
    model = scene.AddNewNodeByClass("vtkMRMLModelNode")
    assert storage.ReadData(model)
    assert np.allclose(model.GetPolyData().GetBounds(), result.outputModel.GetPolyData().GetBounds(), atol=1e-4)


def test_unknown_field_of_view_is_refused_and_a_given_one_is_shown_with_its_source(scene):
    logic = OCTADepthLogic(scene)
    sample = data.render_samples([HELD_OUT_SEEDS[1]])[0]
    volume = mrml.array_to_volume(sample.image[None], np.eye(4), "png-like", scene=scene)
    before = _node_names(scene)
    for choice in (None, "auto (from the image)"):
        with pytest.raises(InputError, match="field of view .* is unknown.*--fov"):
            logic.process(volume, fieldOfViewMm=choice, device="cpu")
    for choice in (0, "20 mm", "six"):  # the panel/console choice is parsed as COIPS parses it (enface_io.fov_choice)
        with pytest.raises(InputError, match="field of view \\(fieldOfViewMm\\) = .*(not a plausible OCTA scan width|not a number)"):
            logic.process(volume, fieldOfViewMm=choice, device="cpu")
    assert _node_names(scene) == before
    result = logic.process(volume, fieldOfViewMm="6 mm", device="cpu")
    assert result.spacingAssumed and result.fovSource == "user" and result.fieldOfViewMm == pytest.approx(6.0)
    assert result.pixelMm == pytest.approx(6.0 / 304)
    _, geometry = mrml.volume_to_array(result.outputDepthVolume)
    assert mrml.spacing_of(geometry)[:2] == pytest.approx([6.0 / 304] * 2)
    rows = mrml.table_to_rows(result.outputTable)
    assert all(float(r["field_of_view_mm"]) == pytest.approx(6.0) and r["fov_source"] == "user" for r in rows)
    summary = result.summary()
    assert summary["field_of_view_mm"] == pytest.approx(6.0) and summary["fov_source"] == "user"


def test_shape_and_plausibility_warnings():
    from VesselReconLib.octadepth.logic import plausibility_warnings, shape_warnings

    assert shape_warnings((304, 304), 3.0) == []
    montage = shape_warnings((157, 320), 12.0)  # the wide-field 320 x 157 montage of the issue
    assert len(montage) == 2 and "not square" in montage[0] and "wide-field" in montage[1]
    rng = np.random.default_rng(0)
    depth = rng.random((100, 100)).astype(np.float32)
    plausible = rng.random((100, 100)) < 0.15
    assert plausibility_warnings(plausible, depth) == []
    too_much = plausibility_warnings(rng.random((100, 100)) < 0.9, depth)
    assert len(too_much) == 1 and "marked as vessel" in too_much[0]
    flat = plausibility_warnings(plausible, np.full((100, 100), 0.4, np.float32))
    assert len(flat) == 1 and "collapsed" in flat[0]


def test_bad_inputs_are_refused_before_any_scene_change(scene, tmp_path):
    logic = OCTADepthLogic(scene)
    noise = np.random.default_rng(0).random((5, 96, 96)).astype(np.float32)
    good = mrml.array_to_volume(noise[:1], mrml.ijk_to_ras_matrix([0.01] * 3), "good", scene=scene)
    stack = mrml.array_to_volume(noise, np.eye(4), "stack", scene=scene)
    flat = mrml.array_to_volume(np.ones((1, 96, 96), np.float32), np.eye(4), "flat", scene=scene)
    nan = mrml.array_to_volume(np.full((1, 96, 96), np.nan, np.float32), np.eye(4), "nan", scene=scene)
    wrong = tmp_path / "other.safetensors"
    registry.save_model(torch.nn.Linear(2, 2), wrong, "vesselsdf", "lite")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    before = _node_names(scene)
    cases = [(None, {}), (stack, {}), (flat, {}), (nan, {}), (good, {"model": str(wrong)}),
             (good, {"model": str(garbage)}), (good, {"model": "no-such-preset"}), (good, {"depthRangeMm": -1})]
    for volume, kwargs in cases:
        with pytest.raises(InputError):
            logic.process(volume, device="cpu", **kwargs)
        assert _node_names(scene) == before
    with pytest.raises(CheckpointError):
        logic.process(good, device="cpu", model=str(garbage))


# ------------------------------------------------------------------ depth-realistic phantoms


def test_depth_realistic_phantoms_show_every_labelled_plexus_and_no_dimmer_is_deeper_cue():
    """Real slab composites (OCTAGON): the deep plexus is as bright as the superficial capillaries and
    visible wherever it is labelled. The default renderer can label an invisible deep plexus."""
    from VesselReconLib.phantoms.octa import render_octa

    for seed in (5, 6):
        case = render_octa(seed, 256, 3.0, depth_realism=True)
        assert case.meta["appearance"]["slab"] == "full"
        capillary = (case.depth > 0) & ~case.vessel_mask
        deep, superficial = capillary & (case.depth > 0.6), capillary & (case.depth < 0.45)
        assert deep.sum() > superficial.sum() > 1000  # the deep mesh fills the space between vessels
        assert case.image[deep].mean() > 0.9 * case.image[superficial].mean()
        assert case.image[deep].mean() > 1.15 * case.image[case.depth == 0].mean()


def test_svp_branches_are_thin_superficial_twigs_attached_to_the_tree_and_off_by_default():
    """``svp_branches``: the superficial plexus's small branches leave the labelled tree at the
    superficial depth (not in the expert-style vessel mask); without it the render is unchanged."""
    from scipy import ndimage

    from VesselReconLib.phantoms.octa import _svp_branches, render_octa

    plain = render_octa(5, 256, 3.0, depth_realism=True)
    again = render_octa(5, 256, 3.0, depth_realism=True, svp_branches=False)
    np.testing.assert_array_equal(plain.image, again.image)
    np.testing.assert_array_equal(plain.depth, again.depth)
    twigs = render_octa(5, 256, 3.0, depth_realism=True, svp_branches=True)
    np.testing.assert_array_equal(twigs.vessel_mask, plain.vessel_mask)
    superficial = lambda c: ((c.depth > 0) & (c.depth < 0.45) & ~c.vessel_mask).sum()  # noqa: E731
    assert superficial(twigs) > 1.2 * superficial(plain)
    tree = plain.vessel_mask
    drawn = _svp_branches(np.random.default_rng(0), tree, plain.pixel_mm, np.zeros_like(tree)) > 0.3
    assert drawn.sum() > 500 and (drawn & ndimage.binary_erosion(tree)).sum() < 0.05 * drawn.sum()  # outside it
    labels, _ = ndimage.label(drawn | tree, structure=np.ones((3, 3)))
    attached = np.isin(labels[drawn], np.unique(labels[tree]))
    assert attached.mean() > 0.95  # the twigs hang off the tree


def test_distinct_beds_draw_a_loop_rich_deep_mesh_and_tree_to_tree_superficial_links():
    """``distinct_beds``: the deep bed is a closed polygonal mesh (many cells per mm^2), the superficial
    bed long links that leave the tree and end on it (few loops of their own), the deep plexus is
    labelled and visible over a large area; without it the render is unchanged."""
    from scipy import ndimage

    from VesselReconLib.phantoms.octa import _dcp_mesh, _svp_links, render_octa

    plain = render_octa(5, 256, 3.0, depth_realism=True, svp_branches=True)
    again = render_octa(5, 256, 3.0, depth_realism=True, svp_branches=True, distinct_beds=False)
    np.testing.assert_array_equal(plain.image, again.image)
    np.testing.assert_array_equal(plain.depth, again.depth)
    beds = render_octa(5, 256, 3.0, depth_realism=True, svp_branches=True, distinct_beds=True)
    np.testing.assert_array_equal(beds.vessel_mask, plain.vessel_mask)
    tree, pixel = plain.vessel_mask, plain.pixel_mm
    area = (256 * pixel) ** 2
    mesh = _dcp_mesh(np.random.default_rng(0), 256, pixel, 1.0) > 0.3
    assert ndimage.label(~mesh)[1] / area > 120  # closed cells of 45-75 um
    links = _svp_links(np.random.default_rng(0), tree, pixel, np.zeros_like(tree)) > 0.3
    assert 0.01 < links.mean() < 0.15
    labels, _ = ndimage.label(links | tree, structure=np.ones((3, 3)))
    assert np.isin(labels[links], np.unique(labels[tree])).mean() > 0.95  # they start and end on the tree
    assert ndimage.label(~(links | tree))[1] / area < 0.3 * ndimage.label(~mesh)[1] / area  # far fewer loops
    deep = (beds.depth > 0.6) & beds.flow_mask
    superficial_capillaries = (beds.depth > 0) & (beds.depth < 0.4) & ~tree
    assert deep.mean() > 0.1 and deep.sum() > superficial_capillaries.sum()
    assert np.median(beds.image[deep]) > 0.8 * np.median(beds.image[superficial_capillaries])


def test_svp_mesh_spreads_the_superficial_bed_and_flattens_its_share_near_the_tree():
    """``svp_mesh`` (round 5): the real slabs' share of deep-dominant pixels does not change with the
    distance to the large vessels, so the superficial bed is faded out right beside the tree and spread
    over the tissue as a faint open mesh; without it the ``distinct_beds`` render is unchanged."""
    from scipy import ndimage

    from VesselReconLib.phantoms.octa import render_octa

    kw = dict(depth_realism=True, svp_branches=True, distinct_beds=True)
    beds = render_octa(5, 256, 3.0, **kw)
    np.testing.assert_array_equal(beds.image, render_octa(5, 256, 3.0, svp_mesh=False, **kw).image)
    mesh = render_octa(5, 256, 3.0, svp_mesh=True, **kw)
    np.testing.assert_array_equal(mesh.vessel_mask, beds.vessel_mask)
    distance = ndimage.distance_transform_edt(~beds.vessel_mask)

    def superficial_capillaries(case, near):
        band = (distance > 0) & (distance <= 2) if near else distance > 6
        return ((case.depth > 0) & (case.depth < 0.4) & band).sum()

    near_to_far = [superficial_capillaries(c, True) / superficial_capillaries(c, False) for c in (beds, mesh)]
    assert near_to_far[1] < 0.25 * near_to_far[0]  # no superficial excess beside the tree
    assert superficial_capillaries(mesh, near=False) > 0.5 * superficial_capillaries(beds, near=False)
    assert ((mesh.depth > 0.6) & mesh.flow_mask).mean() > 0.1  # the deep plexus stays labelled and wide


def test_resolution_augmentation_keeps_the_shape_and_softens_the_grain():
    rng = np.random.default_rng(0)
    image = rng.random((96, 96)).astype(np.float32)
    outs = [data.augment_resolution(image, np.random.default_rng(seed)) for seed in range(12)]
    assert all(o.shape == image.shape and o.dtype == np.float32 for o in outs)
    changed = [o for o in outs if not np.array_equal(o, image)]
    assert changed and all(np.diff(o, axis=1).std() < np.diff(image, axis=1).std() for o in changed)


# ------------------------------------------------------------------ shipped weights vs baselines


def test_shipped_model_segments_held_out_phantoms_far_better_than_frangi():
    """The vessel side holds on held-out phantoms. The depth side does not beat a constant depth on
    phantoms (README: an honest miss of this CPU budget), so no depth floor is asserted here."""
    from VesselReconLib.octadepth import eval as evaluation

    entry = registry.find_entry("octadepth", "lite")
    assert entry.status() == "ok"
    assert "ROSSA" in entry.training["data"] and "53e87f8" in entry.training["data"]
    net, _ = registry.load_model("octadepth", "lite")
    samples = data.render_samples(HELD_OUT_SEEDS, 320)
    constant = float(entry.training["mean_vessel_depth"])
    ours = evaluation.evaluate_model(net, samples)
    classical = evaluation.evaluate_constant_depth(samples, constant, [evaluation.frangi_mask(s.image, s.pixel_mm)
                                                                       for s in samples])
    assert ours["dice"] > 0.75 and ours["dice"] > classical["dice"] + 0.2
    assert ours["chamfer_mm"] < classical["chamfer_mm"]
    assert 0.0 < ours["rmse"] < 0.5


@pytest.mark.gpu
def test_pipeline_on_cuda_matches_cpu():
    net, _ = registry.load_model("octadepth", "lite")
    sample = data.render_samples([HELD_OUT_SEEDS[0]], 512, 6.0)[0]
    cpu_prob, cpu_depth = pipeline.predict(net, sample.image, "cpu")
    result = pipeline.run_pipeline(sample.image, sample.pixel_mm, net, "cuda")
    assert result.tubes.GetNumberOfPoints() > 0
    assert np.mean(np.abs(result.depth - cpu_depth)[sample.vessel]) < 0.02
    assert metrics.dice(result.vessel_mask, cpu_prob > 0.5) > 0.95


# ------------------------------------------------------------------ command line and demo


def test_cli_writes_files_and_scene_from_a_png(tmp_path, capsys):
    from PIL import Image

    from VesselReconLib.cli import main

    sample = data.render_samples([HELD_OUT_SEEDS[1]])[0]
    png = tmp_path / "scan.png"
    Image.fromarray((sample.image * 255).astype(np.uint8)).save(png)
    assert main(["octadepth", str(png), "--device", "cpu", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "--fov" in err and "nothing was written" in err and not (tmp_path / "refused").exists()
    assert main(["octadepth", str(tmp_path), "--fov", "3", "--device", "cpu", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err     # a folder is named once and said to be one
    assert f"error: {tmp_path.name} is a folder" in err and err.count(tmp_path.name + ":") == 0
    if not torch.cuda.is_available():   # refused once, before any input is read
        assert main(["octadepth", str(png), str(png), "--device", "cuda", "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "CUDA" in err and not (tmp_path / "refused").exists()
    assert main(["octadepth", str(png), "--fov", "3", "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    line = json.loads([ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")][-1])
    assert line["field_of_view_mm"] == 3.0 and line["fov_source"] == "config" and "warnings" in line
    for suffix in ("_depth.png", "_depth_rgb.png", "_vessels.png", "_tubes.vtp", "_tubes.png", "_depth_bands.csv",
                   ".mrb"):
        assert (tmp_path / "out" / f"scan{suffix}").stat().st_size > 100
    bands = list(csv.DictReader((tmp_path / "out" / "scan_depth_bands.csv").open(encoding="utf-8")))
    assert bands[-1]["band"] == "all" and int(bands[-1]["segments"]) == sum(int(b["segments"]) for b in bands[:-1])


def test_demo_hook_adds_nodes_renders_and_metrics(tmp_path):
    from VesselReconLib import runtime
    from VesselReconLib.demo import DemoContext
    from VesselReconLib.octadepth.cli import demo

    context = DemoContext(scene=runtime.new_scene(), out=tmp_path, device="cpu")
    demo(context)
    summary = context.summary["octadepth"]
    assert summary["segments"] > 10 and 0.0 < summary["delta1"] <= 1.0
    # the vessel side on the demo phantom (measured: Dice 0.925, centreline Chamfer 0.032 mm, ~3 px); the depth
    # side is the README's honest miss and gets no floor here
    assert summary["dice"] > 0.85 and 0 < summary["chamfer_mm"] < 0.1
    assert all(path.stat().st_size > 1000 for path in context.renders)
    assert context.scene.GetFirstNodeByName(NAMES["model"]) is not None


def test_a_field_of_view_chosen_at_process_keeps_the_vessel_segmentation_on_its_grid(tmp_path, scene):
    """A PNG loaded without a field of view (Slicer's 1 mm placeholder) and given "3 mm" in the panel, as the
    folder batch does: the vessels were written on the 3 mm grid but referenced the input's 1 mm geometry, so the
    saved .seg.nrrd came out resampled (ROSSA 320 px: 7040 x 7040 x 22 voxels holding a 67 px wide blob, saved in
    25-50 s instead of 0.1 s). The segmentation now references the grid its labels are on (the depth map's)."""
    from PIL import Image

    from VesselReconLib.phantoms.octa import render_octa

    png = tmp_path / "scan.png"
    Image.fromarray((render_octa(3, 128, 3.0).image * 255).astype(np.uint8)).save(png)
    logic = OCTADepthLogic(scene)
    result = logic.process(logic.load_image(png), fieldOfViewMm=3, device="cpu")
    assert result.outputSegmentation.GetSegmentation().GetNumberOfSegments() == 1
    mrml.save_scene(tmp_path / "scan.mrb", scene)
    mrml.load_scene(tmp_path / "scan.mrb", scene)
    labels, ijk_to_ras = mrml.segmentation_to_labelmap(scene.GetFirstNodeByName(NAMES["segmentation"]),
                                                       scene.GetFirstNodeByName(NAMES["depth"]))
    np.testing.assert_allclose(mrml.spacing_of(ijk_to_ras)[:2], 3 / 128)
    expected = mrml.volume_to_array(scene.GetFirstNodeByName(NAMES["depth"]))[0] > 0
    assert expected.sum() > 100
    np.testing.assert_array_equal(labels.reshape(expected.shape) > 0, expected)


def test_loading_a_second_image_of_the_same_name_keeps_the_first(tmp_path, scene):
    """Two scans both called scan_3x3.png (two patients' folders): the second load_image overwrote the first
    image node, under the outputs computed from it; each load now gets its own node, named as Slicer names it."""
    from PIL import Image

    for folder, value in (("a", 60), ("b", 200)):
        (tmp_path / folder).mkdir()
        pixels = (np.arange(64 * 64).reshape(64, 64) % value).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / folder / "scan_3x3.png")
    logic = OCTADepthLogic(scene)
    first = logic.load_image(tmp_path / "a" / "scan_3x3.png")
    second = logic.load_image(tmp_path / "b" / "scan_3x3.png")
    assert first is not second and first.GetName() == "scan_3x3" and second.GetName() != "scan_3x3"
    assert [round(float(mrml.volume_to_array(n)[0].max()) * 255) for n in (first, second)] == [59, 199]


def test_load_image_reads_jpeg_compressed_tiff_with_a_field_token(tmp_path, scene):
    """JPEG-in-TIFF (common for exported OCTA) goes through the shared en face reader, not ITK."""
    from PIL import Image

    from VesselReconLib import mrml
    from VesselReconLib.octadepth.logic import OCTADepthLogic

    pixels = (np.add.outer(np.arange(64), np.arange(80)) % 50 * 5).astype(np.uint8)
    path = tmp_path / "scan_6x6.tif"
    Image.fromarray(pixels).save(path, compression="jpeg")
    node = OCTADepthLogic().load_image(path)
    array, ijk_to_ras = mrml.volume_to_array(node)
    assert array.shape == (1, 64, 80)
    np.testing.assert_allclose(mrml.spacing_of(ijk_to_ras)[:2], [6.0 / 80, 6.0 / 80])
    assert abs(np.corrcoef(array[0].ravel(), pixels.ravel())[0, 1]) > 0.95


def test_cli_keeps_freed_memory_for_the_next_window(tmp_path, monkeypatch):
    """Without glibc keeping freed memory every window's activations were page-faulted afresh: a 2048 px
    scan spent 20.6 s in the kernel of 49 s CPU (network 47.9 s; 3.0 s and 26.8 s with it), as VC-Net's and
    Angio3D's commands already avoid."""
    from PIL import Image

    from VesselReconLib import device
    from VesselReconLib.cli import main

    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda: calls.append(1))
    png = tmp_path / "scan.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(png)
    assert main(["octadepth", str(png), "--device", "cpu", "--out", str(tmp_path / "out")]) == 2   # no field of view
    assert calls == [1]


def test_cli_refuses_a_one_pixel_strip_a_multi_page_tiff_and_a_binary_mask(scene, tmp_path, capsys):
    """Round 10 bad-input audit: a 320 x 1 image slipped past the size check (its 1-pixel axis was skipped as a
    singleton) and crashed in the network's padding; a two-page TIFF and a 1-bit (mask) PNG were processed as if
    they were one angiogram. Each is now one error line, no output folder, the file untouched."""
    from PIL import Image

    from VesselReconLib.cli import main

    pixels = (data.render_samples([HELD_OUT_SEEDS[1]])[0].image * 255).astype(np.uint8)
    Image.fromarray(pixels[:, :1].copy()).save(tmp_path / "strip_3x3.png")
    second_page = Image.fromarray(pixels.T.copy())
    Image.fromarray(pixels).save(tmp_path / "pages_3x3.tif", save_all=True, append_images=[second_page])
    Image.fromarray(pixels > 128).save(tmp_path / "mask_3x3.png")
    logic = OCTADepthLogic(scene)
    for name, words in (("strip_3x3.png", "too small"), ("pages_3x3.tif", "2 frames"), ("mask_3x3.png", "two values")):
        content = (tmp_path / name).read_bytes()
        out = tmp_path / "out"
        assert main(["octadepth", str(tmp_path / name), "--device", "cpu", "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert words in err and "internal error" not in err and not out.exists(), err
        assert (tmp_path / name).read_bytes() == content
        count = scene.GetNumberOfNodes()
        with pytest.raises(InputError, match=words):
            logic.load_image(tmp_path / name)
        assert scene.GetNumberOfNodes() == count


def test_a_compressed_multi_frame_angiogram_is_named_as_such_not_as_a_missing_codec():
    """An XA run given to OCTADepth was refused with pydicom's 'all plugins are missing dependencies': the frame
    count is now read from the header first."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "xa-phantom" / "IM3.dcm"
    if not path.is_file():
        pytest.skip("../shared/samples/xa-phantom is absent")
    from VesselReconLib.enface_io import read_image

    with pytest.raises(InputError, match="multi-frame"):
        read_image(path, 3.0)


# ------------------------------------------------------------------ real data (../shared; skipped without it)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROSSA = SHARED / "datasets" / "rossa"
OCTAGON = SHARED / "samples" / "octa-octagon"


@pytest.mark.skipif(not (ROSSA / "test").is_dir(), reason="../shared/datasets/rossa is absent")
def test_shipped_default_segments_real_rossa_images_like_the_experts():
    from VesselReconLib.octadepth import real_eval

    samples = data.load_rossa(ROSSA, "test", limit=12)
    net, _ = registry.load_model("octadepth", "lite")
    rows = {r["method"]: r for r in real_eval.vessel_dice_rows(samples, {"ours": net})}
    assert rows["ours"]["dice"] > 0.8  # README: full test split; 12 images keep the test fast
    assert rows["ours"]["dice"] > rows["Frangi+Otsu (classical)"]["dice"] + 0.1
    assert rows["ours"]["vessel_fraction"] < 2 * rows["ours"]["true_fraction"]


@pytest.mark.skipif(not OCTAGON.is_dir(), reason="../shared/samples/octa-octagon is absent")
def test_octagon_slab_pairs_register_and_give_depth_aucs():
    from VesselReconLib.octadepth import real_eval

    pairs = {p.name: p for p in real_eval.find_pairs(OCTAGON)}
    assert set(pairs) == {"octagon_angio3", "octagon_angio6"}
    prepared = real_eval.prepare_pair(pairs["octagon_angio3"])
    dy, dx = prepared["shift"]
    assert abs(dy + 40) <= 4 and abs(dx + 13) <= 4  # the 3 mm pair's known offset
    assert prepared["deep"].sum() > 5000 and prepared["superficial"].sum() > 5000
    assert not (prepared["deep"] & prepared["superficial"]).any()
    net, _ = registry.load_model("octadepth", "lite")
    row = real_eval.evaluate_pair(prepared, {"ours": net})
    assert 0.0 <= row["ours"] <= 1.0 and 0.0 <= row["naive_dimmer_is_deeper"] <= 1.0


@pytest.fixture(scope="module")
def octagon_depth_rows():
    from VesselReconLib.octadepth import real_eval

    net, _ = registry.load_model("octadepth", "lite")
    return {row["pair"]: row for row in real_eval.depth_pair_rows(OCTAGON, {"ours": net})}


@pytest.mark.skipif(not OCTAGON.is_dir(), reason="../shared/samples/octa-octagon is absent")
def test_shipped_depth_beats_the_naive_cue_on_both_octagon_pairs(octagon_depth_rows):
    for row in octagon_depth_rows.values():  # README: 0.682 / 0.691 against naive 0.540 / 0.632
        assert row["ours"] > row["naive_dimmer_is_deeper"] + 0.03
        assert row["ours"] > 0.65


@pytest.mark.skipif(not OCTAGON.is_dir(), reason="../shared/samples/octa-octagon is absent")
@pytest.mark.xfail(strict=True, reason="missed target (issue 12, VesselRecon/OCTADepth/README.md): deep-against-"
                   "superficial depth AUC of the shipped default on the OCTAGON pairs is 0.682 (3 mm) / 0.691 (6 mm) "
                   "against >= 0.85; round 6's segment pooling lowered it on phantoms and was not shipped")
def test_shipped_depth_meets_the_real_scan_target(octagon_depth_rows):
    for row in octagon_depth_rows.values():
        assert row["ours"] >= 0.85 and row["ours"] > row["naive_dimmer_is_deeper"]


def test_auc_of_known_scores():
    from VesselReconLib.octadepth import real_eval

    score = np.array([0.1, 0.4, 0.35, 0.8])
    positive, negative = np.array([False, False, True, True]), np.array([True, True, False, False])
    assert real_eval.auc(score, positive, negative) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert real_eval.auc(np.ones(4), positive, negative) == pytest.approx(0.5)


def test_the_run_message_names_where_the_field_of_view_came_from(tmp_path, scene):
    """`vesselrecon octadepth scan.png --fov 3` logged "pixel size ... mm from the image (config)", though the
    value came from the command line; each source now has its own words."""
    from PIL import Image

    pixels = (np.add.outer(np.arange(64), np.arange(64)) % 40 * 6).astype(np.uint8)
    for name in ("scan.png", "scan_6x6.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    logic = OCTADepthLogic(scene)
    given = logic.load_image(tmp_path / "scan.png", fieldOfViewMm=3)
    named = logic.load_image(tmp_path / "scan_6x6.png")
    messages = {}
    for node in (given, named):
        _, geometry = mrml.volume_to_array(node)
        messages[node.GetName()] = logic._geometry(geometry, 64, None, None, node.GetName(),
                                                   node.GetAttribute("VesselRecon.fovSource"))[3]
    assert messages["scan"] == f"pixel size {3 / 64:.5f} mm from the field of view given (--fov or the module's choice)"
    assert messages["scan_6x6"] == f"pixel size {6 / 64:.5f} mm from the file name"

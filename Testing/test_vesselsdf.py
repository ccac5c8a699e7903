"""VesselSDF networks, loss terms (hand-computed cases) and SDF interpolation/meshing geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from VesselReconLib.vesselsdf import losses as L
from VesselReconLib.vesselsdf.network import VARIANTS, build_model, parameter_count

SPACING = (0.7, 0.7, 5.0)


def grid_mm(shape=(16, 48, 48), spacing=SPACING):
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return i * spacing[0], j * spacing[1], k * spacing[2]


def as_tensor(array):
    return torch.tensor(np.asarray(array), dtype=torch.float32)[None, None]


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("variant", VARIANTS)
def test_lite_variants_output_shapes(variant):
    preset = "lite" if variant == "full" else f"lite-{variant}"
    net = build_model(preset).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 16, 32, 40))
    has_occ, has_sdf = variant != "sdfonly", variant in ("full", "nogauss", "sdfonly")
    assert (out["occupancy"] is not None) == has_occ and (out["sdf"] is not None) == has_sdf
    for value in out.values():
        if value is not None:
            assert value.shape == (1, 1, 16, 32, 40)
    if has_sdf:
        assert out["sdf"].abs().max() <= net.sdf_bound_mm


def test_paper_preset_shapes_and_sizes():
    net = build_model("paper").eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 16, 32, 32))
    assert out["occupancy"].shape == out["sdf"].shape == (1, 1, 16, 32, 32)
    assert parameter_count(build_model("paper-unet")) == pytest.approx(19.2e6, rel=0.01)
    assert parameter_count(build_model("lite")) * 4 < 2 * 1024**2  # lite < 2 MB in float32


@pytest.mark.parametrize("size", ["lite", "paper"])
def test_sdfonly_ablation_is_capacity_matched(size):
    full, sdfonly = parameter_count(build_model(size)), parameter_count(build_model(f"{size}-sdfonly"))
    assert abs(sdfonly - full) / full < 0.02


def test_output_does_not_depend_on_the_crop():
    """Batch norm at inference: a voxel's output is the same on a crop and on the whole input."""
    torch.manual_seed(0)
    net = build_model("lite-occ").eval()
    image = torch.rand(1, 1, 4, 256, 256)
    with torch.no_grad():
        whole = net(image)["occupancy"][..., 112:144, 112:144]
        crop = net(image[..., 64:192, 64:192])["occupancy"][..., 48:80, 48:80]
    # a 48-pixel margin from the crop's edge covers the receptive field
    np.testing.assert_allclose(whole.numpy(), crop.numpy(), atol=1e-4)


def test_refiner_sees_detached_occupancy():
    net = build_model("lite")
    out = net(torch.rand(1, 1, 16, 32, 32))
    out["sdf"].sum().backward()
    assert all(p.grad is None for p in net.occupancy.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.refiner.parameters())


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="Unknown VesselSDF preset"):
        build_model("huge")


# ------------------------------------------------------------------ loss terms


def test_eikonal_zero_for_exact_anisotropic_sdfs():
    x, y, z = grid_mm()
    normal = np.array([0.3, 0.5, np.sqrt(1 - 0.34)])
    plane = normal[0] * x + normal[1] * y + normal[2] * z
    assert L.eikonal_loss(as_tensor(plane), SPACING).item() < 1e-8
    sphere = np.sqrt((x - 16) ** 2 + (y - 16) ** 2 + (z - 150) ** 2) - 20.0  # smooth on the grid
    assert L.eikonal_loss(as_tensor(sphere), SPACING).item() < 1e-4
    # the same field with the spacing ignored (isotropic convention) is far from eikonal
    assert L.eikonal_loss(as_tensor(sphere), (0.7, 0.7, 0.7)).item() > 10


def test_eikonal_hand_computed_and_banded():
    # f = 2x: |grad f| = 2 -> (4 - 1)^2 = 9 everywhere
    x, _, _ = grid_mm((4, 5, 6))
    assert L.eikonal_loss(as_tensor(2 * x), SPACING).item() == pytest.approx(9.0, rel=1e-5)
    # f = z / 2: gamma * f_z = df/dz = 0.5 -> (0.25 - 1)^2 = 0.5625
    _, _, z = grid_mm((4, 5, 6))
    assert L.eikonal_loss(as_tensor(z / 2), SPACING).item() == pytest.approx(0.5625, rel=1e-5)
    band = torch.zeros(1, 1, 4, 5, 6, dtype=torch.bool)
    assert L.eikonal_loss(as_tensor(2 * x), SPACING, band).item() == 0.0


def test_gaussian_term():
    assert L.gaussian_loss(torch.full((1, 1, 8, 16, 16), 3.0), SPACING).item() == 0.0
    f = torch.zeros(1, 1, 8, 16, 16)
    f[0, 0, 4, 8, 8] = 2.0  # a spike: |f| (f - G f)^2 only at the spike
    blurred = L.gaussian_blur(f, SPACING, 1.0)[0, 0, 4, 8, 8].item()
    expected = 2.0 * (2.0 - blurred) ** 2 / f.numel()
    assert L.gaussian_loss(f, SPACING).item() == pytest.approx(expected, rel=1e-5)


def test_surface_sdf_and_occupancy_terms():
    assert L.surface_loss(torch.zeros(1, 1, 4, 4, 4)).item() == 1.0
    assert L.surface_loss(torch.full((1, 1, 2, 2, 2), 2.0), beta=0.5).item() == pytest.approx(np.exp(-1.0))
    assert L.sdf_loss(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.0)
    logits, mask = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    expected = (np.log(2) + np.log(1 + np.exp(2.0))) / 2
    assert L.occupancy_loss(logits, mask).item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_is_the_weighted_sum_and_nogauss_drops_a_term():
    torch.manual_seed(0)
    f = torch.randn(1, 1, 6, 8, 8)
    outputs = {"occupancy": torch.randn(1, 1, 6, 8, 8), "sdf": f}
    mask = (torch.rand(1, 1, 6, 8, 8) > 0.8).float()
    target = torch.randn(1, 1, 6, 8, 8) * 3
    config = L.LossConfig(sdf_truncation_mm=None)
    total, terms = L.vesselsdf_loss(outputs, mask, target, SPACING, config)
    weights = {"sdf": 0.1, "occ": 0.01, "dice": 0.01, "eik": 0.01, "gauss": 0.1, "sur": 0.1}
    assert total.item() == pytest.approx(sum(weights[k] * v for k, v in terms.items()), rel=1e-5)
    # the Gaussian term on f in mm, the paper's scale (not on f / 5 mm)
    assert terms["gauss"] == pytest.approx(L.gaussian_loss(f, SPACING).item(), rel=1e-5)
    from VesselReconLib.vesselsdf.train import loss_config_for

    _, terms = L.vesselsdf_loss(outputs, mask, target, SPACING, loss_config_for("lite-nogauss", config))
    assert "gauss" not in terms and set(terms) == {"sdf", "occ", "dice", "eik", "sur"}


def test_signed_distance_uses_anisotropic_spacing():
    mask = np.zeros((5, 9, 9), bool)
    mask[2, 4, 4] = True
    sdf = L.signed_distance(mask, SPACING)
    assert sdf[2, 4, 4] < 0
    assert sdf[2, 4, 6] == pytest.approx(2 * 0.7 - 0.35)  # two in-plane steps
    assert sdf[4, 4, 4] == pytest.approx(2 * 5.0 - 0.35)  # two slices


# ------------------------------------------------------------------ interpolation and meshing


def test_refine_through_plane_is_trilinear_with_end_slices_kept():
    from VesselReconLib.vesselsdf.inference import refine_through_plane, refined_geometry

    field = np.stack([np.full((4, 4), v, np.float32) for v in (0.0, 7.0, -7.0)])
    fine = refine_through_plane(field, 7).numpy()
    assert fine.shape == (15, 4, 4)
    np.testing.assert_allclose(fine[:, 0, 0], np.r_[np.arange(8.0), np.arange(5, -8, -2.0)], atol=1e-5)
    matrix = refined_geometry(np.diag([0.7, 0.7, 5.0, 1.0]), 7)
    assert matrix[2, 2] == pytest.approx(5.0 / 7)



def test_one_between_slice_interpolation_matches_trilinear_resampling_and_backpropagates():
    """Round 10: ``interpolate_at`` serves inference (``refine_through_plane``), the evaluation and the fine-grid
    loss; on the evenly spaced grid it rounds as ``F.interpolate(trilinear, align_corners)`` did (bit-identical on
    the round-10 CPU), and the loss gets each fine slice's gradient on its two thick slices only."""
    import torch.nn.functional as F

    from VesselReconLib.vesselsdf.inference import interpolate_at, refine_through_plane

    field = torch.randn(9, 13, 11) * 6
    trilinear = F.interpolate(field[None, None], size=(41, 13, 11), mode="trilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(refine_through_plane(field, 5), trilinear, rtol=1e-6, atol=1e-6)
    f = field[None, None].repeat(2, 1, 1, 1, 1).requires_grad_(True)
    out = interpolate_at(f, torch.tensor([[2.25, 8.0], [0.0, -3.0]]))
    assert out.shape == (2, 1, 2, 13, 11) and interpolate_at(f, torch.zeros(2, 0)).shape == (2, 1, 0, 13, 11)
    out.sum().backward()
    per_slice = f.grad.sum((1, 3, 4)) / (13 * 11)
    torch.testing.assert_close(per_slice, torch.tensor([[0, 0, 0.75, 0.25, 0, 0, 0, 0, 1], [2.0, 0, 0, 0, 0, 0, 0, 0, 0]]))


def test_sdf_interpolation_bridges_slice_gaps_on_a_phantom():
    """Exact thick-slice SDF, interpolated through the gaps, beats interpolating the binary mask."""
    from VesselReconLib import meshes, metrics
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom
    from VesselReconLib.vesselsdf.evaluation import hires_field
    from VesselReconLib.vesselsdf.inference import Prediction, mesh_zero_level, refine_through_plane, refined_geometry

    case = make_ct_phantom(CTPhantomParams(shape=(16, 64, 64), seed=21))
    matrix = refined_geometry(case.ijk_to_ras, 7)
    sdf_surface = mesh_zero_level(refine_through_plane(case.sdf, 7).numpy(), matrix)
    assert meshes.is_watertight(sdf_surface)
    assert metrics.chamfer_distance(sdf_surface, case.mesh()) < 1.0

    def hires_dice(prediction):
        field = hires_field(prediction, case.labels.shape, case.ijk_to_ras[2, 3], 5.0, case.hires_labels.shape,
                            case.hires_ijk_to_ras[2, 3], 1.0)
        return metrics.dice(field < 0, case.hires_labels)

    from_sdf = hires_dice(Prediction(occupancy=None, sdf=case.sdf))
    from_mask = hires_dice(Prediction(occupancy=case.labels.astype(np.float32), sdf=None))
    assert from_sdf > from_mask + 0.01


def _moving_disc_sdf(centres, shape=(64, 64), radius=2.5, bound=6.0):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return np.stack([np.minimum(np.hypot(rows - 32, cols - c) - radius, bound) for c in centres]).astype(np.float32)


def test_motion_interpolation_carries_a_disc_that_moves_sideways_between_slices():
    """A 5 mm disc moving 6 mm sideways between two slices: the linear blend pinches it off in the gap;
    the displacement-following interpolation keeps it, whole, at the interpolated position."""
    from VesselReconLib.vesselsdf.inference import Motion, interpolate_slices

    field = _moving_disc_sdf((24, 30))
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    linear = interpolate_slices(field, t).numpy()
    moving = interpolate_slices(field, t, Motion(8.0, 4, 2, (1.0, 1.0))).numpy()
    np.testing.assert_array_equal(moving[[0, -1]], field)  # the thick slices stay as they are
    assert (linear[2] < 0).sum() == 0  # pinched off halfway
    cols = np.mgrid[:64, :64][1]
    for fine, tt in zip(moving[1:-1], t[1:-1]):
        inside = fine < 0
        assert inside.sum() >= 0.7 * (field[0] < 0).sum()
        assert cols[inside].mean() == pytest.approx(24 + 6 * tt, abs=0.6)


def test_motion_interpolation_falls_back_to_linear_without_flow_and_keeps_the_grid():
    """Nothing to follow (a disc that stays; empty slices; a far jump beyond max_mm): the linear blend
    exactly; the refined grid and the resampling keep their shapes and geometry."""
    from VesselReconLib.vesselsdf.inference import Motion, interpolate_slices, refine_through_plane, resample_field

    motion = Motion(8.0, 4, 2, (1.0, 1.0))
    t = np.linspace(0, 2, 9)
    for field in (_moving_disc_sdf((30, 30, 30)), np.full((3, 64, 64), 6.0, np.float32)):
        np.testing.assert_allclose(interpolate_slices(field, t, motion).numpy(), interpolate_slices(field, t).numpy(),
                                   atol=1e-4)
    far = _moving_disc_sdf((12, 50))  # 38 mm > max_mm: two vessels, not one that moved: no vessel is carried
    np.testing.assert_array_equal(interpolate_slices(far, t[:5], motion).numpy() < 0,
                                  interpolate_slices(far, t[:5]).numpy() < 0)
    field = _moving_disc_sdf((24, 30, 36))
    fine = refine_through_plane(field, 7, motion)
    assert tuple(fine.shape) == (15, 64, 64)
    np.testing.assert_array_equal(fine.numpy()[::7], field)
    matrix = np.diag([1.0, 1.0, 4.9, 1.0])
    target = np.diag([1.0, 1.0, 0.7, 1.0])
    resampled = resample_field(field, matrix, target, (15, 64, 64), motion)
    np.testing.assert_allclose(resampled, fine.numpy(), atol=1e-4)
    assert (resampled < 0).any(axis=(1, 2)).all()  # the moving disc is on every fine slice


def test_motion_interpolation_is_a_model_setting_reaching_the_prediction():
    from VesselReconLib.vesselsdf.inference import predict_in_roi
    from VesselReconLib.vesselsdf.preprocess import canonicalise

    volume = np.random.default_rng(0).normal(100, 10, (4, 32, 32)).astype(np.float32)
    canonical = canonicalise(volume, np.diag([0.7, 0.7, 5.0, 1.0]), np.ones(volume.shape, bool))
    assert predict_in_roi(build_model("lite").eval(), canonical, "cpu", SPACING).motion is None
    motion = predict_in_roi(build_model("lite", motion_mm=6.0).eval(), canonical, "cpu", SPACING).motion
    assert motion.max_mm == 6.0 and motion.spacing == (0.7, 0.7)


def test_gap_filling_carries_thin_vessels_to_mid_gap_and_keeps_the_thick_slices():
    """Round 11: a 1 mm vessel on one slice only reaches a sixth of the gap linearly, mid-gap gap-filled;
    the sign on the thick slices, a vessel present on both slices and empty gaps stay the linear answer;
    the setting reaches the prediction of SDF models only (occupancy-only fields already saturate)."""
    from VesselReconLib.vesselsdf.inference import (interpolate_slices, predict_in_roi, refine_through_plane,
                                                    resample_field)
    from VesselReconLib.vesselsdf.preprocess import canonicalise

    one_slice = np.stack([_moving_disc_sdf((30,), radius=1.0)[0], np.full((64, 64), 6.0, np.float32)])
    factor = 12
    linear = refine_through_plane(one_slice, factor).numpy()[:, 32, 30]
    filled = refine_through_plane(one_slice, factor, gap_mm=0.5).numpy()[:, 32, 30]
    assert (linear < 0).sum() == 2  # t < 1/7: slices 0 and 1 of 12
    assert (filled < 0).sum() == 6  # t < 1/2 (a 1 mm deep core saturated at 0.5 mm: mid-gap)
    both = refine_through_plane(one_slice, factor, gap_mm=0.5).numpy()
    np.testing.assert_array_equal(both[[0, -1]] < 0, one_slice < 0)  # the thick slices keep their sign
    assert (both <= refine_through_plane(one_slice, factor).numpy() + 1e-6).all()  # it only adds
    grown = _moving_disc_sdf((30, 30), radius=2.5)  # the same vessel on both slices: walls unchanged
    grown[1] = _moving_disc_sdf((30,), radius=2.9)[0]
    np.testing.assert_array_equal(refine_through_plane(grown, factor, gap_mm=1.0).numpy() < 0,
                                  refine_through_plane(grown, factor).numpy() < 0)
    t = np.linspace(0, 1, 9)  # every entry point: positions, refined grid, resampling
    np.testing.assert_allclose(interpolate_slices(one_slice, t, gap_mm=0.5).numpy(),
                               refine_through_plane(one_slice, 8, gap_mm=0.5).numpy(), atol=1e-5)
    np.testing.assert_allclose(resample_field(one_slice, np.diag([1.0, 1.0, 8.0, 1.0]), np.eye(4), (9, 64, 64),
                                              gap_mm=0.5), refine_through_plane(one_slice, 8, gap_mm=0.5).numpy(),
                               atol=1e-5)
    volume = np.random.default_rng(0).normal(100, 10, (4, 32, 32)).astype(np.float32)
    canonical = canonicalise(volume, np.diag([0.7, 0.7, 5.0, 1.0]), np.ones(volume.shape, bool))
    assert predict_in_roi(build_model("lite").eval(), canonical, "cpu", SPACING).gap_mm == 0.0
    assert predict_in_roi(build_model("lite", gap_fill_mm=0.5).eval(), canonical, "cpu", SPACING).gap_mm == 0.5
    assert predict_in_roi(build_model("lite-occ", gap_fill_mm=0.5).eval(), canonical, "cpu", SPACING).gap_mm == 0.0


def test_predict_pads_odd_sizes_and_roi_crop():
    from VesselReconLib.vesselsdf.inference import predict, reconstruct

    net = build_model("lite").eval()
    pred = predict(net, np.random.rand(13, 30, 27).astype(np.float32))
    assert pred.occupancy.shape == pred.sdf.shape == (13, 30, 27)
    volume = np.random.normal(100, 10, (16, 40, 40)).astype(np.float32)
    roi = np.zeros_like(volume, bool)
    roi[:, 10:20, 12:22] = True
    recon = reconstruct(net, volume, np.diag([0.7, 0.7, 5.0, 1.0]), roi_mask=roi)
    assert recon.prediction.sdf.shape == volume.shape
    assert (recon.prediction.sdf[:, :1, :] > 0).all()  # outside the ROI box: background


def test_sliding_window_matches_whole_volume():
    from VesselReconLib.vesselsdf.inference import predict

    torch.manual_seed(0)
    net = build_model("lite-occ").eval()
    image = np.random.rand(16, 32, 32).astype(np.float32)
    whole = predict(net, image).occupancy
    windowed = predict(net, image, window_voxels=1000).occupancy
    assert windowed.shape == whole.shape and np.isfinite(windowed).all()



def test_windows_run_in_one_thread_workers_with_the_one_thread_numbers():
    """With 2 torch threads the sliding windows run in map_batches workers (one thread each): the same
    output as at 1 thread (float rounding only, same mask), and the thread count is restored."""
    import threading

    from VesselReconLib.vesselsdf.inference import predict

    torch.manual_seed(0)
    net = build_model("lite").eval()
    image = np.random.rand(8, 256, 320).astype(np.float32)
    names = []
    net.register_forward_hook(lambda *_: names.append(threading.current_thread().name))
    torch.set_num_threads(1)
    serial = predict(net, image, window_voxels=1000)
    serial_names, names[:] = list(names), []
    torch.set_num_threads(2)
    threaded = predict(net, image, window_voxels=1000)
    assert torch.get_num_threads() == 2
    assert len(serial_names) == len(names) == 2  # two windows across i
    assert not any(n.startswith("vesselrecon-batch") for n in serial_names)
    assert all(n.startswith("vesselrecon-batch") for n in names)
    np.testing.assert_allclose(threaded.sdf, serial.sdf, atol=1e-5)
    np.testing.assert_allclose(threaded.occupancy, serial.occupancy, atol=1e-5)
    assert np.array_equal(threaded.mask(), serial.mask())

@pytest.mark.gpu
def test_gpu_pipeline_paper_preset():
    from VesselReconLib.vesselsdf.bench import pipeline

    net = build_model("paper").cuda().eval()
    volume = np.random.normal(100, 20, (16, 128, 128)).astype(np.float32)
    result = pipeline(net, volume, np.diag([0.7, 0.7, 5.0, 1.0]), torch.device("cuda"), 7)
    assert result["points"] >= 0


def test_occupancy_distance_is_the_exact_truncated_edt():
    from VesselReconLib.vesselsdf.network import occupancy_distance

    mask = np.zeros((5, 30, 30), bool)
    mask[2, 10:13, 10:20] = True
    start = occupancy_distance(as_tensor(mask.astype(np.float32)), SPACING)[0, 0].numpy()
    exact = np.clip(L.signed_distance(mask, SPACING), -5, 5)
    np.testing.assert_allclose(start, exact, atol=1e-5)
    assert start[2, 5, 15] == pytest.approx(5 * 0.7 - 0.35)  # 5 pixels above the bar
    empty = occupancy_distance(torch.zeros(1, 1, 4, 8, 8), SPACING)
    assert (empty == 5.0).all()


@pytest.mark.parametrize("spacing", [(0.78, 0.78, 4.8), (0.7, 0.7, 2.5), (1.0, 1.0, 1.0)])
def test_slice_wise_truncated_distance_equals_the_3d_edt(spacing):
    from VesselReconLib.vesselsdf.network import truncated_signed_distance

    rng = np.random.default_rng(0)
    mask = ndimage.gaussian_filter(rng.random((12, 40, 40)), (0.5, 2, 2)) > 0.53
    mask[3], mask[5] = False, True  # an empty and a full slice
    exact = np.clip(L.signed_distance(mask, spacing), -5, 5)
    np.testing.assert_allclose(truncated_signed_distance(mask, spacing, 5.0), exact, atol=1e-5)


def test_sdf_dice_term_and_calibrated_level():
    f = torch.full((1, 1, 4, 8, 8), 3.0)
    mask = torch.zeros_like(f)
    mask[..., 2:5, 2:5] = 1
    f[mask > 0] = -3.0
    assert float(L.sdf_dice_loss(f, mask)) < 0.01 and float(L.sdf_dice_loss(-f, mask)) > 0.99
    total, terms = L.vesselsdf_loss({"occupancy": None, "sdf": f}, mask, f, SPACING, L.LossConfig(lambda_sdf_dice=0.1))
    assert "sdf_dice" in terms
    net = build_model("lite", level_mm=0.5).eval()
    base = build_model("lite").eval()
    base.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 4, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(net(x, SPACING)["sdf"].numpy(), base(x, SPACING)["sdf"].numpy() - 0.5, atol=1e-6)


def test_soft_skeleton_is_an_in_plane_centreline_inside_the_mask():
    mask = torch.zeros(1, 1, 2, 32, 32)
    mask[..., 0, 10:17, 4:28] = 1  # a 7-pixel-wide bar on the first slice only
    mask[..., 24, 2:30] = 1  # a 1-pixel-wide vessel on both slices
    skeleton = L.soft_skeleton(mask)
    assert float((skeleton * (1 - mask)).sum()) == 0.0  # inside the mask
    assert float(skeleton[0, 0, 0, 24, 2:30].min()) == 1.0  # a thin vessel is its own centreline
    # the bar's middle row only, though no other slice has it (3D pooling would keep the whole bar)
    bar = skeleton[0, 0, 0, 10:17, 8:24]
    assert float(bar[3].min()) == 1.0 and float(bar[[0, 1, 5, 6]].sum()) == 0.0
    np.testing.assert_array_equal(skeleton[0, 0, 1].numpy(), mask[0, 0, 1].numpy())  # per slice


def test_cldice_term_weights_thin_vessels_by_length():
    trunk = torch.zeros(1, 1, 2, 40, 40)
    trunk[..., 4:20, 4:36] = 1  # a wide vessel
    thin = torch.zeros_like(trunk)
    thin[..., 30, 4:36] = 1  # a thin branch of the same length
    label = ((trunk + thin) > 0).float()
    f_miss_thin = torch.where(trunk > 0, -2.0, 2.0)
    f_all = torch.where(label > 0, -2.0, 2.0)
    assert float(L.cldice_loss(f_all, label)) < 0.01
    # missing the thin branch costs about half the centreline, but only a few % of the volume
    assert float(L.cldice_loss(f_miss_thin, label)) > 0.3 > 0.1 > float(L.sdf_dice_loss(f_miss_thin, label))
    total, terms = L.vesselsdf_loss({"occupancy": None, "sdf": f_miss_thin}, label, f_all, SPACING,
                                    L.LossConfig(lambda_cldice=0.2))
    assert "cldice" in terms and terms["cldice"] == pytest.approx(float(L.cldice_loss(f_miss_thin, label)))


def test_agreement_hinge_charges_only_vessels_the_occupancy_found_and_the_refiner_erased():
    """Round 7: ``L_agree`` is > 0 only where p > 0.5, the label agrees and f > -margin; it is normalised
    by the agreeing voxels, so erasing one thin vessel costs as much per voxel as erasing a trunk."""
    label = torch.zeros(1, 1, 2, 40, 40)
    label[..., 4:20, 4:36] = 1  # trunk
    label[..., 30, 4:36] = 1  # thin vessel
    false_occ = torch.zeros_like(label)
    false_occ[..., 36, 4:36] = 1  # the occupancy's false positive: the label does not agree
    prob = torch.where((label + false_occ) > 0, 0.8, 0.1)
    f_ok = torch.where(label > 0, -1.0, 2.0)
    assert float(L.agreement_loss(f_ok, prob, label)) == 0.0  # false positives and background are free
    f_erased = f_ok.clone()
    f_erased[..., 30, 4:36] = 1.0  # the thin vessel erased by 1 mm (+ 0.25 mm margin)
    agree = float(((prob > 0.5) & (label > 0)).sum())
    assert float(L.agreement_loss(f_erased, prob, label)) == pytest.approx(2 * 32 * 1.25 / agree)
    low = torch.where(label > 0, 0.2, 0.1)  # the occupancy missed everything: nothing to agree with
    assert float(L.agreement_loss(f_erased, low, label)) == 0.0
    logits = torch.log(prob / (1 - prob))
    _, terms = L.vesselsdf_loss({"occupancy": logits, "sdf": f_erased}, label, f_ok, SPACING,
                                L.LossConfig(lambda_agree=0.1))
    assert terms["agree"] == pytest.approx(float(L.agreement_loss(f_erased, prob, label)), rel=1e-5)
    assert "agree" not in L.vesselsdf_loss({"occupancy": logits, "sdf": f_erased}, label, f_ok, SPACING)[1]


def test_wall_term_is_the_truth_to_surface_distance_on_the_true_wall_both_ways():
    """Round 11b: ``L_wall`` is ``|f − f*|`` averaged over the true wall only: an erased thin vessel
    costs its wall's distance to the predicted surface, an inflated wall costs the same, the far field
    nothing; the weight switches the term on in the total loss."""
    label = np.zeros((2, 48, 48), bool)
    label[:, 24, 10:40] = True  # a thin vessel, one pixel wide
    target = torch.from_numpy(L.signed_distance(label, (0.7, 0.7, 5.0)))[None, None].float()
    wall = target.abs() <= 0.35
    assert 0 < int(wall.sum()) < 0.2 * target.numel()
    assert float(L.wall_loss(target, target)) == 0.0
    erased = target + 1.0  # every wall point 1 mm outside the predicted surface
    assert float(L.wall_loss(erased, target)) == pytest.approx(1.0)
    assert float(L.wall_loss(target - 1.0, target)) == pytest.approx(1.0)  # inflated by 1 mm: same cost
    far = torch.where(wall, target, target + 3.0)  # only the far field wrong: no cost
    assert float(L.wall_loss(far, target)) == 0.0
    f = erased.clone().requires_grad_(True)
    L.wall_loss(f, target).backward()
    assert (f.grad[~wall] == 0).all() and (f.grad[wall] > 0).all()
    mask = torch.from_numpy(label)[None, None].float()
    _, terms = L.vesselsdf_loss({"occupancy": None, "sdf": erased}, mask, target, SPACING, L.LossConfig(lambda_wall=0.3))
    assert terms["wall"] == pytest.approx(1.0)
    assert "wall" not in L.vesselsdf_loss({"occupancy": None, "sdf": erased}, mask, target, SPACING)[1]


def test_fine_grid_skeleton_recall_charges_a_vessel_lost_between_slices():
    """Round 9: ``L_skel`` scores the field *as inference interpolates it* (``interpolate_at`` = the linear
    ``interpolate_slices``) against the fine truth's skeleton: a vessel ending between two thick slices is charged
    when the blend drops it early, although the field is right on every thick slice."""
    from VesselReconLib.vesselsdf.inference import interpolate_slices

    field = torch.randn(3, 16, 20)
    positions = np.array([0.0, 0.25, 1.5, 2.0, 0.999])
    expected = interpolate_slices(field.numpy(), positions)
    got = L.interpolate_at(field[None, None].repeat(2, 1, 1, 1, 1), torch.from_numpy(positions).float()[None].repeat(2, 1))
    assert torch.allclose(got[1, 0], expected, atol=1e-6)

    # a vessel that ends between thick slices 1 and 2 (4 fine slices per gap): the fine truth has it on fine
    # slices 0-6, the thick label on slices 0 and 1. Both fields are right on every thick slice (inside on 0 and 1,
    # outside on 2); the shallow one loses it after a tenth of the gap, the deep one carries it to 6/7 of it.
    fine_pos = torch.arange(9, dtype=torch.float32)[None] / 4
    skeleton = torch.zeros(1, 1, 9, 16, 20)
    skeleton[:, :, :7, 8, 2:18] = 1
    deep = torch.full((1, 1, 3, 16, 20), 3.0)
    deep[:, :, :2, 7:10, 2:18] = -3.0
    deep[:, :, 2, 7:10, 2:18] = 0.5
    shallow = deep.clone()
    shallow[:, :, 1, 7:10, 2:18] = -0.3
    shallow[:, :, 2, 7:10, 2:18] = 3.0
    tight = L.skeleton_recall_loss(deep, fine_pos, skeleton, tau_mm=0.05)
    lost = L.skeleton_recall_loss(shallow, fine_pos, skeleton, tau_mm=0.05)
    assert ((deep < 0) == (shallow < 0)).all() and float(tight) < 0.01
    assert float(lost) == pytest.approx(1 - (5 * 16 + 1) / (7 * 16 + 1), abs=0.01)  # fine slices 5, 6 lost
    padded = torch.cat([fine_pos, torch.zeros(1, 3)], 1)  # padding rows (empty skeleton) change nothing
    assert float(L.skeleton_recall_loss(shallow, padded, torch.cat([skeleton, torch.zeros(1, 1, 3, 16, 20)], 2),
                                        tau_mm=0.05)) == pytest.approx(float(lost))
    f = shallow.clone().requires_grad_(True)
    _, terms = L.vesselsdf_loss({"occupancy": None, "sdf": f}, (deep < 0).float(), deep, SPACING,
                                L.LossConfig(lambda_skel=0.3), fine=(fine_pos, skeleton))
    assert terms["skel"] == pytest.approx(float(L.skeleton_recall_loss(shallow, fine_pos, skeleton)), rel=1e-5)
    L.skeleton_recall_loss(f, fine_pos, skeleton).backward()
    assert float(f.grad[0, 0, 2, 8, 10]) > 0 and float(f.grad[0, 0, 1, 8, 10]) > 0  # deeper inside / nearer: lower
    with pytest.raises(ValueError, match="fine truth"):
        L.vesselsdf_loss({"occupancy": None, "sdf": f}, (deep < 0).float(), deep, SPACING, L.LossConfig(lambda_skel=0.3))


def test_training_crops_carry_the_fine_truth_between_their_thick_slices(tmp_path):
    """Round 9: a case loaded with ``fine=True`` carries the high-resolution label's tubed skeleton and each fine
    slice's position in thick-slice units; a crop gets the fine slices between its first and last thick slice,
    positions relative to the crop, padded with empty rows; flips move the skeleton with the image."""
    from VesselReconLib.phantoms.datasets import write_dataset
    from VesselReconLib.vesselsdf.data import FINE_SLICES_PER_CROP, batches, flip, load_dataset, random_crop

    folder = write_dataset("ct", tmp_path / "ct", 1, seed=5, shape=(8, 48, 48), thin_slab=True)
    (case,) = load_dataset(folder, fine=True)
    assert load_dataset(folder)[0].fine_skeleton is None  # off unless asked for
    per_gap = round(1 / float(np.diff(case.fine_positions).mean()))
    assert per_gap >= 2 and case.fine_skeleton.any() and case.fine_skeleton.shape[1:] == case.image.shape[1:]
    for m in np.flatnonzero(np.abs(case.fine_positions - np.round(case.fine_positions)) < 1e-3):
        k = int(round(case.fine_positions[m]))
        if 0 <= k < case.label.shape[0]:  # a native slice: its skeleton lies inside the thick label
            assert not (case.fine_skeleton[m] & ~case.label[k].astype(bool)).any()
    rng = np.random.default_rng(0)
    crop = random_crop(case, (32, 32), rng, slices=4)
    rows = int((crop["fine_pos"] > 0).sum()) + 1
    assert rows == 3 * per_gap + 1 and crop["fine_pos"][0] == 0 and crop["fine_pos"][rows - 1] == pytest.approx(3)
    assert crop["fine_skel"].shape == (FINE_SLICES_PER_CROP, 32, 32) and not crop["fine_skel"][rows:].any()
    flipped = flip({k: v.copy() for k, v in crop.items()}, np.random.default_rng(3))
    assert (flipped["fine_pos"] == crop["fine_pos"]).all()
    changed = not np.array_equal(flipped["image"], crop["image"])
    assert changed == (not np.array_equal(flipped["fine_skel"], crop["fine_skel"]))
    batch = next(batches([case], (32, 32), 2, 1, 0, slices=4))
    assert batch["fine_pos"].shape == (2, 1, FINE_SLICES_PER_CROP) and batch["fine_skel"].shape[2] == FINE_SLICES_PER_CROP


def test_topology_validation_prefers_the_level_that_keeps_a_thin_vessel(monkeypatch):
    """``--topology-val``: the epoch score is the best level's mean of Dice and clDice, which keeps a thin
    branch at the cost of a few false-positive voxels where the Dice alone would drop it."""
    from types import SimpleNamespace

    from VesselReconLib import metrics
    from VesselReconLib.vesselsdf import train as T

    k, j, i = np.mgrid[:16, :40, :40]
    along = (i >= 4) & (i < 36)
    trunk, thin = along & ((k - 8) ** 2 + (j - 12) ** 2 <= 16), along & ((k - 8) ** 2 + (j - 30) ** 2 <= 1)
    field = np.full(trunk.shape, 3.0)
    field[trunk], field[thin], field[along & ((k - 8) ** 2 + (j - 21) ** 2 <= 4)] = 0.1, 1.1, 1.2  # FP tube last
    case = SimpleNamespace(label=trunk | thin, spacing=(1.0, 1.0, 1.0), normalised=lambda: None)
    monkeypatch.setattr(T, "predict", lambda model, image, device, spacing: SimpleNamespace(sdf=field))
    best = T.validation_topology([case], "cpu", levels=(0.5, 1.0, 1.5))(None)
    trunk_only = metrics.dice(field < 0.5, case.label)
    assert best["level_mm"] == 1.5 and best["cl_recall"] == 1.0 and best["dice"] < trunk_only
    assert best["objective"] == pytest.approx(0.5 * (best["dice"] + best["cldice"]))
    assert T._monitor(T.TrainConfig(topology=True), [case]) == "val_objective"
    assert T._monitor(T.TrainConfig(), [case]) == "val_dice" and T._monitor(T.TrainConfig(), []) == "loss"


def test_refiner_is_conditioned_on_image_and_occupancy():
    torch.manual_seed(0)
    net = build_model("lite").eval()
    first = net.refiner[0].model[0].conv.unit0.conv
    assert first.in_channels == 3  # image, occupancy probability, its distance
    image = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        a = net.refine(image, torch.zeros_like(image), SPACING)
        b = net.refine(image, torch.ones_like(image), SPACING)
        c = net.refine(torch.rand_like(image), torch.zeros_like(image), SPACING)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    assert a.abs().max() <= net.sdf_bound_mm


def test_distance_start_refiner_begins_at_the_occupancy_distance():
    """``correction_mm``: the SDF is the occupancy's exact distance plus a bounded learned correction."""
    from VesselReconLib.vesselsdf.network import occupancy_distance

    torch.manual_seed(0)
    net = build_model("lite", correction_mm=3.0).eval()
    image = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        out = net(image, SPACING)
        start = occupancy_distance(torch.sigmoid(out["occupancy"]), SPACING)
    np.testing.assert_allclose(out["sdf"].numpy(), start.numpy(), atol=1e-6)  # zero-initialised correction
    with torch.no_grad():
        net.refiner[-1].bias.fill_(10.0)
        shifted = net(image, SPACING)["sdf"]
    assert torch.all(shifted - start <= 3.0 + 1e-5) and shifted.abs().max() <= net.sdf_bound_mm


def test_occupancy_union_adds_confident_occupancy_and_keeps_a_distance_field():
    """min(SDF, distance of p > τ) is the union; ``connected`` adds only pieces touching the SDF's vessels."""
    from VesselReconLib.vesselsdf.network import occupancy_union, truncated_signed_distance

    tube = np.zeros((6, 40, 40), bool)
    tube[:, 10:14, 5:20] = True
    sdf = as_tensor(truncated_signed_distance(tube, SPACING))
    prob = np.zeros(tube.shape, np.float32)
    prob[:, 11:13, 19:30] = 0.95  # continues the tube
    prob[:, 30:32, 30:33] = 0.95  # an isolated piece
    prob[:, 25:27, 5:10] = 0.6  # not confident at τ = 0.9
    both = occupancy_union(sdf, as_tensor(prob), SPACING, 0.9, connected=False)[0, 0].numpy()
    linked = occupancy_union(sdf, as_tensor(prob), SPACING, 0.9, connected=True)[0, 0].numpy()
    assert (both[tube] < 0).all() and (both[:, 11:13, 25] < 0).all() and (both[:, 31, 31] < 0).all()
    assert (both[:, 26, 7] > 0).all()
    assert (linked[:, 11:13, 25] < 0).all() and (linked[:, 31, 31] > 0).all()
    np.testing.assert_allclose(both, np.minimum(sdf[0, 0].numpy(), truncated_signed_distance(prob > 0.9, SPACING)))
    net = build_model("lite", union_threshold=0.9).eval()
    base = build_model("lite").eval()
    base.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 4, 16, 16)
    with torch.no_grad():
        assert torch.all(net(x, SPACING)["sdf"] <= base(x, SPACING)["sdf"] + 1e-6)


def test_fusion_keeps_every_occupancy_piece_and_lets_the_refiner_place_surfaces_within_the_band():
    """Round 8: the refiner moves the occupancy's surface at most ``b`` mm; pieces it lost come back with the
    occupancy's own surface; refiner-only pieces beyond the band are dropped."""
    from VesselReconLib.vesselsdf.network import fuse_with_occupancy, truncated_signed_distance

    jj, ii = np.meshgrid(np.arange(40) * SPACING[1], np.arange(40) * SPACING[0], indexing="ij")
    disc = lambda j, i, r: np.repeat(((jj - j) ** 2 + (ii - i) ** 2 < r * r)[None], 8, axis=0)  # noqa: E731
    trunk, thin, speck = disc(7, 7, 3.0), disc(20, 22, 0.8), disc(4, 24, 1.5)
    refined = np.minimum(truncated_signed_distance(disc(7, 7, 2.5), SPACING), truncated_signed_distance(speck, SPACING))
    prob = as_tensor(np.where(trunk | thin, 0.8, 0.1).astype(np.float32))
    fused = fuse_with_occupancy(as_tensor(refined), prob, SPACING, 1.0)[0, 0].numpy()
    np.testing.assert_array_equal(fused[trunk] < 0, disc(7, 7, 2.5)[trunk])  # shrunk by 0.5 mm < band: refiner's
    assert (fused[thin] < 0).all() and not (fused[speck] < 0).any()  # thin vessel restored, far speck dropped
    start = truncated_signed_distance(trunk | thin, SPACING)
    assert (fused <= start + 1.0 + 1e-6).all()  # never more than the band outside the occupancy
    narrow = fuse_with_occupancy(as_tensor(refined), prob, SPACING, 0.3)[0, 0].numpy()
    np.testing.assert_array_equal(narrow < 0, trunk | thin)  # band < half a pixel: the occupancy on every slice
    wide = fuse_with_occupancy(as_tensor(truncated_signed_distance(disc(7, 7, 1.0), SPACING)), prob, SPACING, 1.0)
    assert (wide[0, 0][trunk] < 0).sum() > disc(7, 7, 1.0).sum()  # shrunk by 2 mm > band: only 1 mm of it
    net = build_model("lite", fusion_band_mm=0.5, union_threshold=0.9).eval()
    x = torch.randn(1, 1, 4, 16, 16)
    with torch.no_grad():
        out = net(x, SPACING)
        raw = net.refine(x, torch.sigmoid(out["occupancy"]), SPACING)
    expected = fuse_with_occupancy(raw, torch.sigmoid(out["occupancy"]), SPACING, 0.5)  # the fusion, not the union
    np.testing.assert_allclose(out["sdf"].numpy(), expected.numpy(), atol=1e-5)


def test_occupancy_union_on_the_bounding_box_equals_the_whole_volume_union():
    """The union's distance is computed on the occupancy's grown bounding box only; the field is the same."""
    from VesselReconLib.vesselsdf.network import _union_with, truncated_signed_distance

    occ = np.zeros((12, 120, 140), bool)
    occ[2:6, 30:40, 40:44] = True
    occ[8:12, 100:119, 0:6] = True
    field = np.random.default_rng(3).normal(0.0, 8.0, occ.shape).astype(np.float32)
    for spacing in (SPACING, (0.5, 0.6, 1.0)):
        whole = np.minimum(field, truncated_signed_distance(occ, spacing))
        np.testing.assert_array_equal(_union_with(field, occ, spacing), whole)


def test_network_sees_context_beyond_the_roi_but_answers_inside_it_only():
    from VesselReconLib.vesselsdf.inference import CONTEXT_MM, context_roi, predict_in_roi
    from VesselReconLib.vesselsdf.preprocess import canonicalise

    roi = np.zeros((4, 40, 40), bool)
    roi[:, 10:30, 10:30] = True
    grown = context_roi(roi, SPACING, CONTEXT_MM)
    pad = int(round(CONTEXT_MM / SPACING[0]))
    assert grown[0, 10 - pad, 20] and not grown[0, 9 - pad, 20] and grown.sum() > roi.sum()
    torch.manual_seed(0)
    net = build_model("lite").eval()
    volume = np.random.default_rng(0).normal(110, 15, roi.shape).astype(np.float32)
    canonical = canonicalise(volume, np.diag([0.7, 0.7, 5.0, 1.0]), roi)
    with_context = predict_in_roi(net, canonical, "cpu", SPACING)
    without = predict_in_roi(net, canonical, "cpu", SPACING, context_mm=0.0)
    assert (with_context.occupancy[:, :7, :] == 0).all() and (with_context.sdf[:, :7, :] >= net.sdf_bound_mm).all()
    assert not np.allclose(with_context.occupancy[:, 10:12, 10:30], without.occupancy[:, 10:12, 10:30])


def test_small_isolated_pieces_are_removed_by_volume_and_vanish_between_slices():
    """Pieces of ``field < 0`` below the volume (mm³, 26-connected) get ``|f|``; larger ones are unchanged."""
    from VesselReconLib.vesselsdf.inference import refine_through_plane
    from VesselReconLib.vesselsdf.network import remove_small_pieces, truncated_signed_distance

    mask = np.zeros((8, 40, 40), bool)
    mask[1:7, 10:14, 5:30] = True  # a vessel: 6 x 4 x 25 voxels x 2.45 mm³ = 1470 mm³
    mask[3, 30:32, 30:32] = True  # an isolated piece of 4 voxels = 9.8 mm³
    field = truncated_signed_distance(mask, SPACING)
    kept = remove_small_pieces(as_tensor(field), SPACING, 20.0)[0, 0].numpy()
    assert (kept[3, 30:32, 30:32] > 0).all() and (kept[mask & (np.arange(40)[None, :, None] < 20)] < 0).all()
    np.testing.assert_array_equal(np.abs(kept), np.abs(field))
    assert (refine_through_plane(kept, 5).numpy()[10:20, 30:32, 30:32] > 0).all()  # gone between slices too
    np.testing.assert_array_equal(remove_small_pieces(as_tensor(field), SPACING, 5.0)[0, 0].numpy(), field)
    net = build_model("lite", union_threshold=0.9, min_piece_mm3=20.0)
    assert net.min_piece_mm3 == 20.0 and build_model("lite").min_piece_mm3 == 0.0


def test_small_pieces_that_are_confident_or_near_the_tree_are_kept():
    """Release 5: a small piece survives when its peak occupancy reaches ``keep_prob`` or when it lies
    within ``keep_near_mm`` of a piece of at least the minimum volume; other small pieces go."""
    from VesselReconLib.vesselsdf.network import remove_small_pieces, truncated_signed_distance

    mask = np.zeros((8, 40, 40), bool)
    mask[1:7, 10:14, 5:30] = True  # the tree (1470 mm³)
    mask[3, 15:17, 10:12] = True  # 2 pixels (1.4 mm) beside the tree, 9.8 mm³
    mask[3, 30:32, 30:32] = True  # far from the tree, 9.8 mm³
    field = as_tensor(truncated_signed_distance(mask, SPACING))
    prob = np.where(mask, 0.6, 0.0).astype(np.float32)
    prob[3, 30, 30] = 0.95
    near_kept = remove_small_pieces(field, SPACING, 20.0, keep_near_mm=2.0)[0, 0].numpy()
    assert (near_kept[3, 15:17, 10:12] < 0).all() and (near_kept[3, 30:32, 30:32] > 0).all()
    confident = remove_small_pieces(field, SPACING, 20.0, as_tensor(prob), keep_prob=0.9)[0, 0].numpy()
    assert (confident[3, 30:32, 30:32] < 0).all() and (confident[3, 15:17, 10:12] > 0).all()
    both = remove_small_pieces(field, SPACING, 20.0, as_tensor(prob), 0.9, 2.0)[0, 0].numpy()
    np.testing.assert_array_equal(both, field[0, 0].numpy())
    net = build_model("lite", min_piece_mm3=20.0, piece_keep_prob=0.9, piece_keep_near_mm=2.0)
    assert (net.piece_keep_prob, net.piece_keep_near_mm) == (0.9, 2.0)


def test_given_roi_changes_only_where_the_output_is_kept():
    """Release 5: with a given ROI the statistics (and the input the network sees) come from the
    automatic liver ROI, so inside both ROIs the answer is the one without a ROI."""
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom
    from VesselReconLib.vesselsdf.inference import predict_in_roi
    from VesselReconLib.vesselsdf.preprocess import canonicalise
    from scipy.ndimage import binary_erosion

    case = make_ct_phantom(CTPhantomParams(shape=(4, 96, 96), seed=3))
    auto = canonicalise(case.image, case.ijk_to_ras)
    given_roi = binary_erosion(auto.roi, np.ones((1, 9, 9), bool))
    given = canonicalise(case.image, case.ijk_to_ras, given_roi)
    assert given.seen is not None and (given.median, given.sigma) == (auto.median, auto.sigma)
    torch.manual_seed(0)
    net = build_model("lite", union_threshold=0.9, min_piece_mm3=5.0).eval()
    a, g = (predict_in_roi(net, c, "cpu", case.spacing) for c in (auto, given))
    np.testing.assert_allclose(g.sdf[given_roi], a.sdf[given_roi], atol=1e-5)
    np.testing.assert_allclose(g.occupancy[given_roi], a.occupancy[given_roi], atol=1e-6)
    elsewhere = np.zeros(auto.roi.shape, bool)
    elsewhere[:, :8] = True  # a ROI the automatic one does not cover: its own statistics
    assert canonicalise(case.image, case.ijk_to_ras, elsewhere).seen is None


def test_surface_calibration_choice_rules():
    """Release 3's objective among settings with Dice >= the occupancy's; ``surface`` also demands lower
    Chamfer and HD95 and no more pieces than the occupancy stage whenever some setting has them."""
    from VesselReconLib.vesselsdf.train import select_surface

    def row(name, dice, objective, chamfer, hd95, pieces):
        return {"name": name, "dice": dice, "objective": objective, "chamfer_mm": chamfer, "hd95_mm": hd95,
                "pieces": pieces}

    occupancy = {"dice": 0.55, "chamfer_mm": 1.5, "hd95_mm": 5.4, "pieces": 140.0}
    table = [row("best objective, low Dice", 0.54, 0.60, 1.4, 5.0, 100), row("connected", 0.56, 0.54, 1.7, 7.8, 42),
             row("surface", 0.556, 0.52, 1.48, 5.2, 138), row("many pieces", 0.56, 0.51, 1.4, 5.0, 150)]
    assert select_surface(table, occupancy)["name"] == "connected"
    assert select_surface(table, occupancy, surface=True)["name"] == "surface"
    assert select_surface(table[:2], occupancy, surface=True)["name"] == "connected"  # none beats it: Dice rule only
    tied = table + [row("surface, fewer pieces", 0.556, 0.519, 1.49, 5.3, 90)]  # within 0.002: fewer pieces win
    assert select_surface(tied, occupancy, surface=True)["name"] == "surface, fewer pieces"
    assert select_surface(tied[:2] + [row("tied, fewer pieces", 0.56, 0.539, 1.8, 8.0, 30)], occupancy,
                          surface=True)["name"] == "connected"  # no tie-break when none beats the occupancy


@pytest.mark.parametrize("surface", [False, True])
def test_surface_calibration_runs_on_a_phantom(surface):
    """``calibrate_surface`` end to end on one small phantom: its choice is a row of its table."""
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom
    from VesselReconLib.registry import load_model
    from VesselReconLib.vesselsdf.evaluation import EvalCase
    from VesselReconLib.vesselsdf.train import calibrate_surface

    case = make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=424242))
    eval_case = EvalCase("phantom", case.image, case.labels > 0, case.ijk_to_ras, case.hires_labels > 0,
                         case.hires_ijk_to_ras, case.mesh(), case.organ)
    result = calibrate_surface(load_model("vesselsdf", "lite", "cpu")[0], [eval_case], levels=(0.5,),
                               unions=((0.0, True), (0.7, True)), min_pieces=(0.0, 20.0), surface=surface,
                               piece_rules=((0.0, 0.0), (0.9, 2.0)), bands=(0.0, 0.5))
    assert len(result["table"]) == 12 and {k: result[k] for k in result["table"][0]} in result["table"]
    assert {r["fusion_band_mm"] for r in result["table"]} == {0.0, 0.5}  # round 8: the fusion bands
    assert {(r["piece_keep_prob"], r["piece_keep_near_mm"]) for r in result["table"] if r["min_piece_mm3"]} == {
        (0.0, 0.0), (0.9, 2.0)}  # the piece rules only with a minimum volume
    assert ("pieces" in result["occupancy"] and "hd95_mm" in result) == surface



@pytest.fixture(scope="module")
def heldout_phantom_table(tmp_path_factory):
    """The shipped full model and occupancy-only on the README's 6 held-out phantoms (seed 17)."""
    from VesselReconLib.phantoms.datasets import write_dataset
    from VesselReconLib.registry import load_model
    from VesselReconLib.vesselsdf.evaluation import evaluate_methods, load_eval_cases

    folder = tmp_path_factory.mktemp("heldout17")
    write_dataset("ct", folder, 6, seed=17, shape=(16, 160, 160), thin_slab=True,
                  slice_mm_choices=(2.5, 3.2, 4.0, 4.8, 5.0))
    models = {name: load_model("vesselsdf", name, "cpu")[0] for name in ("lite", "lite-occ")}
    return evaluate_methods(load_eval_cases(folder), models, "cpu")


@pytest.mark.slow
def test_full_model_is_not_below_occupancy_only_on_dice_and_pieces(heldout_phantom_table):
    full, occ = heldout_phantom_table["lite"], heldout_phantom_table["lite-occ"]
    assert full["dice"] >= occ["dice"]  # release 5 (rounds 6, 7 re-measured): 0.588 vs 0.579
    assert full["components"] < occ["components"]  # release 5: 66 vs 128


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="target missed: on the 6 held-out phantoms (seed 17) the shipped full model "
                   "loses to occupancy-only on Chamfer (1.43 vs 1.36 mm) and HD95 (5.83 vs "
                   "5.42 mm) (release 5, re-measured in rounds 6 and 7: its truth->surface distance is 1.79 vs "
                   "1.38 mm, surface->truth 1.07 vs 1.35 mm: it misses thin vessels; the round-7 "
                   "agreement-hinge ablation lite-agree7 was not kept; round 8: same numbers, and the "
                   "occupancy-fusion ablation lite-fuse8, 1.32 / 5.31 mm, failed its rule and its real-data vetoes; "
                   "round 9: the fine-grid skeleton-recall ablation lite-skel9, 1.38 / 5.58 mm at Dice 0.571 < 0.579; "
                   "round 9b: the same weights at level 0.125 mm, 1.375 / 5.64 mm at Dice 0.5788, not shipped; "
                   "round 11 (same numbers for lite): the gap-filling interpolation ablation lite-gap11, 1.46 / 5.87 mm; "
                   "round 11b: the truth->surface wall-term ablation lite-wall11, 1.305 / 5.075 mm (below "
                   "occupancy-only) at Dice 0.5784 < 0.5786 and worse on every real-data column, not shipped; "
                   "round 12 (lite again 1.43 / 5.83 vs 1.36 / 5.42 mm): the same wall term trained on phantoms "
                   "with unlabelled arteries, ablation lite-artwall12, 1.329 / 5.239 mm at Dice 0.57860 >= 0.57857, "
                   "failed its validation rule and its real-data vetoes (IRCADb + ROI Dice 0.578, LVSD 0.494))")
def test_full_model_beats_occupancy_only_on_surface_metrics(heldout_phantom_table):
    full, occ = heldout_phantom_table["lite"], heldout_phantom_table["lite-occ"]
    assert full["chamfer_mm"] < occ["chamfer_mm"] and full["hd95_mm"] < occ["hd95_mm"]


def test_a_large_ct_reports_each_network_window_and_can_be_cancelled_between_them(monkeypatch):
    """Round 11 scale pass: on a whole CT (IRCADb 1.7, 151 x 512 x 512) the network step sat 27-53 s on one
    message and Cancel waited for all of it; now each sliding window of predict_in_roi reports and checks
    for cancel (the reporter's steps, as OCTADepth's window batches)."""
    import functools

    from VesselReconLib.device import one_thread
    from VesselReconLib.progress import Cancelled, Reporter
    from VesselReconLib.vesselsdf import inference
    from VesselReconLib.vesselsdf.preprocess import canonicalise

    monkeypatch.setattr(inference, "predict", functools.partial(inference.predict, window_voxels=1000))
    volume = np.random.default_rng(0).normal(100, 10, (8, 256, 640)).astype(np.float32)
    canonical = canonicalise(volume, np.diag([0.7, 0.7, 5.0, 1.0]), np.ones(volume.shape, bool))
    net = build_model("lite").eval()
    reports = []
    with one_thread(torch.device("cpu")):
        inference.predict_in_roi(net, canonical, "cpu", SPACING, progress=lambda f, m: reports.append((f, m)))
        assert reports == [(k / 3, f"network window {k}/3") for k in (1, 2, 3)]   # 3 windows across i
        calls = []
        net.register_forward_pre_hook(lambda *_: calls.append(1))
        with pytest.raises(Cancelled):
            inference.predict_in_roi(net, canonical, "cpu", SPACING, progress=Reporter(cancel=lambda: bool(calls)))
    assert len(calls) == 1

"""Angio3D (3DAngioNet) building blocks: geometry, template mesh, losses, rasteriser, networks,
centrelines, triangulation, stitching, QCA and XA DICOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from VesselReconLib import meshes
from VesselReconLib.angio3d import geometry as geo
from VesselReconLib.angio3d import losses, template
from VesselReconLib.errors import InputError


# ------------------------------------------------------------------ geometry


def test_dicom_xa_conventions():
    ap = geo.CArmGeometry(0, 0, 1000, 700, (0.3, 0.3), 512, 512)
    np.testing.assert_allclose(ap.source, [0, 700, 0], atol=1e-9)          # source posterior (LPS +y)
    np.testing.assert_allclose(ap.project([[0, 0, 0]]), [[255.5, 255.5]])  # isocentre -> detector centre
    left, head = ap.project([[10, 0, 0], [0, 0, 10]])
    assert left[0] > 255.5 and head[1] < 255.5                               # patient left right, head up
    assert left[0] - 255.5 == pytest.approx(10 * 1000 / 700 / 0.3)          # magnification SID/SOD
    lao = geo.CArmGeometry(90, 0, 1000, 700)
    np.testing.assert_allclose(lao.direction, [1, 0, 0], atol=1e-12)        # LAO 90: detector at patient left
    cranial = geo.CArmGeometry(0, 30, 1000, 700)
    assert cranial.direction[2] == pytest.approx(np.sin(np.radians(30)))     # CRA: detector towards the head


def test_geometry_rejects_bad_distances_and_round_trips_dicom():
    with pytest.raises(InputError):
        geo.CArmGeometry(0, 0, 700, 900)
    g = geo.CArmGeometry(-25.5, 18, 1100, 760, (0.3, 0.31), 512, 480)
    assert geo.CArmGeometry.from_dicom(g.to_dicom()) == g
    with pytest.raises(InputError, match="PositionerPrimaryAngle"):
        geo.CArmGeometry.from_dicom({"Rows": 1})


def test_triangulation_fundamental_and_rays_are_exact():
    a, b = geo.CArmGeometry(-30, 10), geo.CArmGeometry(45, -20)
    points = np.random.default_rng(0).normal(0, 20, (20, 3))
    pa, pb = a.project(points), b.project(points)
    np.testing.assert_allclose(geo.triangulate_dlt(a.projection_matrix(), b.projection_matrix(), pa, pb), points, atol=1e-6)
    f = geo.fundamental_matrix(a.projection_matrix(), b.projection_matrix())
    assert geo.epipolar_distances(f, pa, pb).max() < 1e-6
    source, rays = a.pixel_rays(pa)
    t = ((points - source) * rays).sum(1)
    np.testing.assert_allclose(source + t[:, None] * rays, points, atol=1e-6)


def test_levenberg_marquardt_refinement_reduces_epipolar_error():
    a, b = geo.CArmGeometry(-30, 10), geo.CArmGeometry(45, -20)
    points = np.array([[-15.0, 5, 10], [20, -10, -5], [5, 25, 0]])
    recorded = b.with_changes(primary_angle=46.5, secondary_angle=-19.0)    # calibration error
    calibration = geo.refine_calibration(a, recorded, a.project(points), b.project(points))
    assert calibration.epipolar_error_before > 2.0
    assert calibration.epipolar_error_after < 0.2 * calibration.epipolar_error_before


# ------------------------------------------------------------------ template mesh


def helix(n=100):
    t = np.linspace(0, 3, n)
    return np.c_[20 * np.cos(t), 20 * np.sin(t), 5 * t]


def test_template_counts_and_rings():
    points, radii = helix(), np.linspace(2.0, 1.0, 100)
    vertices = template.template_vertices(points, radii)
    assert vertices.shape == (6000, 3)
    assert template.edges().shape == (11940, 2)
    assert len(np.unique(np.sort(template.edges(), 1), axis=0)) == 11940
    assert template.quad_faces().shape == (5940, 4)
    rings = vertices.reshape(100, 60, 3)
    np.testing.assert_allclose(np.linalg.norm(rings - points[:, None], axis=2), radii[:, None] * np.ones(60), atol=1e-9)
    tangents = template.tangents(points)
    assert np.abs(((rings - points[:, None]) * tangents[:, None]).sum(-1)).max() < 1e-9   # rings normal to the curve
    centres, mean_radii = template.centerline_from_vertices(vertices)
    np.testing.assert_allclose(centres, points, atol=1e-9)
    np.testing.assert_allclose(mean_radii, radii, atol=1e-9)


def test_rotation_minimising_frames_do_not_twist_on_a_planar_curve():
    t = np.linspace(0, np.pi, 100)
    arc = np.c_[30 * np.cos(t), 30 * np.sin(t), np.zeros_like(t)]
    _, normals, binormals = template.rotation_minimizing_frames(arc, normal0=np.array([0, 0, 1.0]))
    np.testing.assert_allclose(normals, np.tile([0, 0, 1.0], (100, 1)), atol=1e-9)
    assert np.allclose(np.linalg.norm(binormals, axis=1), 1)


def test_closed_template_is_watertight_with_outward_volume():
    import manifold3d

    points = np.c_[np.zeros(100), np.zeros(100), np.linspace(0, 30, 100)]
    vertices = template.template_vertices(points, np.full(100, 2.0))
    assert meshes.is_watertight(template.template_polydata(vertices))
    volume = manifold3d.Manifold(manifold3d.Mesh(
        vert_properties=template.closed_vertices(vertices).astype(np.float32),
        tri_verts=template.closed_triangles().astype(np.uint32))).volume()
    prism = 0.5 * 60 * np.sin(2 * np.pi / 60) * 4.0 * 30                      # 60-gon area x length
    assert volume == pytest.approx(prism, rel=1e-4)


# ------------------------------------------------------------------ losses


def test_loss_terms_against_hand_computed_values():
    edges = torch.tensor([[0, 1], [1, 2]])
    pred = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 2, 0]]])
    target = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 0, 0]]])
    assert losses.mse_loss(pred, target).item() == pytest.approx(4 / 9)              # one 2^2 over 9 values
    assert losses.edge_loss(pred, edges).item() == pytest.approx((1 + 4) / 2)
    normals = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 1, 0]]])
    # edge 0->1 is (1,0,0) . n0=(1,0,0) -> 1 ; edge 1->2 is (0,1,0) . n1=(0,1,0) -> 1
    assert losses.normal_loss(pred, normals, edges).item() == pytest.approx(1.0)
    assert losses.normal_loss(pred, torch.tensor([[[0.0, 0, 1]] * 3]), edges).item() == pytest.approx(0.0)
    # Laplacians: v0: v0-v1 = (-1,0,0); v1: v1-(v0+v2)/2 = (0.5,-1,0); v2: v2-v1 = (0,2,0)
    np.testing.assert_allclose(losses.laplacian(pred, edges)[0].numpy(), [[-1, 0, 0], [0.5, -1, 0], [0, 2, 0]])
    # against the ground truth's Laplacians: v0 (-1,0,0), v1 (0.5,0,0), v2 (0,0,0) -> differences 0, 1, 4
    assert losses.laplacian_loss(pred, target, edges).item() == pytest.approx((0 + 1 + 4) / 3)
    silhouettes = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    masks = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    # BCE + Dice: pixels (1|1), (0.5|1), (0|1), (0|0); the missed pixel costs -log(eps)
    seg = (np.log(2) - np.log(1e-6)) / 4 + 1 - 2 * 1.5 / (1.5 + 3)
    assert losses.silhouette_loss(silhouettes, masks).item() == pytest.approx(seg, rel=1e-4)
    assert losses.silhouette_loss(masks, masks).item() == pytest.approx(0.0, abs=1e-4)
    total, terms = losses.mesh_loss(pred, target, normals, edges, silhouettes, masks)
    expected = 4 / 9 + 0.01 * 1.0 + 2.5 * 2.5 + 100 * (5 / 3) + 0.0002 * seg
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert set(terms) == {"mse", "norm", "edge", "lap", "seg"}


def test_bce_dice_loss_is_small_for_a_confident_correct_prediction():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    logits = (target * 2 - 1) * 20
    assert losses.BCEDiceLoss()(logits, target).item() < 1e-3
    assert losses.BCEDiceLoss()(-logits, target).item() > 1.0


def test_vertex_normals_point_outwards_on_the_template():
    points = np.c_[np.zeros(100), np.zeros(100), np.linspace(0, 30, 100)]
    vertices = torch.as_tensor(template.template_vertices(points, np.full(100, 2.0))[None], dtype=torch.float32)
    normals = losses.vertex_normals(vertices, torch.as_tensor(template.triangles()))[0]
    radial = vertices[0] - torch.as_tensor(np.repeat(points, 60, 0), dtype=torch.float32)
    cosine = (normals * radial / radial.norm(dim=1, keepdim=True)).sum(1)
    assert cosine[120:-120].min() > 0.99


# ------------------------------------------------------------------ rasteriser


def test_soft_silhouette_of_a_triangle():
    from VesselReconLib.angio3d.rasterizer import hard_silhouette, soft_silhouette

    vertices = torch.tensor([[2.0, 2.0], [12.0, 2.0], [2.0, 12.0]], requires_grad=True)
    image = soft_silhouette(vertices, torch.tensor([[0, 1, 2]]), (16, 16), sigma=0.1)
    assert image[5, 5] > 0.99 and image[14, 14] < 1e-6
    assert image[2, 7].item() == pytest.approx(0.5, abs=1e-4)              # on an edge
    assert int((image > 0.5).sum()) == 36                                  # strictly inside pixel centres
    image.sum().backward()
    assert vertices.grad.abs().sum() > 0
    hard = hard_silhouette(np.array([[2.0, 2], [12, 2], [12, 12], [2, 12]]), np.array([[0, 1, 2], [0, 2, 3]]), (16, 16))
    assert hard[3:12, 3:12].all() and hard.sum() <= 121


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("preset, dim, size", [("lite", 243, 128), ("paper", 483, 64)])
def test_network_shapes(preset, dim, size):
    from VesselReconLib.angio3d.network import build_model

    torch.manual_seed(0)
    net = build_model(preset).eval()
    assert net.vertex_dim == dim
    with torch.no_grad():
        assert net.segment(torch.randn(2, 1, size, size)).shape == (2, 1, size, size)
        images = torch.randn(1, 3, size, size)
        grid = torch.rand(1, 6000, 2) * 2 - 1
        offsets = net(images, images, grid, grid, torch.rand(1, 6000, 3))
    assert offsets.shape == (1, 6000, 3)
    assert offsets.abs().max() == 0                                         # SR starts as the identity
    if preset == "lite":
        assert sum(p.numel() for p in net.parameters()) * 4 < 4e6


def test_graph_convolution_matches_dense_formula():
    from VesselReconLib.angio3d.network import GraphConv, normalized_adjacency

    edges = torch.tensor([[0, 1], [1, 2]])
    adjacency = normalized_adjacency(3, edges).to_dense()
    a_hat = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 1]])
    d = a_hat.sum(1).rsqrt()
    torch.testing.assert_close(adjacency, d[:, None] * a_hat * d[None])
    conv = GraphConv(2, 4)
    h = torch.randn(1, 3, 2)
    torch.testing.assert_close(conv(h, normalized_adjacency(3, edges)), adjacency @ conv.linear(h))


def test_inference_segmenter_folds_batchnorm_and_follows_weight_changes():
    """The U-Net used at inference (BatchNorm folded into the convolutions, symmetric "same" padding in the
    convolution) gives the trained U-Net's output; a change of the weights (in place as in training, or new
    tensors, buffers or segmenter) is picked up, and a training-mode segmenter is used as it is."""
    from VesselReconLib.angio3d.network import build_model
    from VesselReconLib.angio3d.segmentation import inference_segmenter, normalize_crops

    torch.manual_seed(0)
    net = build_model("lite").eval()
    for layer in net.segmenter.modules():            # non-trivial statistics, as after training
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.uniform_(-0.2, 0.2)
    x = normalize_crops(torch.randn(2, 1, 64, 96))
    folded = inference_segmenter(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert inference_segmenter(net) is folded                                 # cached
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.segment(x), rtol=1e-4, atol=1e-4)
        net.segmenter.decoder.blocks[0].conv1[1].running_mean.add_(1.0)     # in place, as training does
        refolded = inference_segmenter(net)
        assert refolded is not folded
        torch.testing.assert_close(refolded(x), net.segment(x), rtol=1e-4, atol=1e-4)
        other = build_model("lite").eval()
        replacements = (lambda: net.load_state_dict(other.state_dict(), assign=True),   # new tensors
                        lambda: setattr(net.segmenter.decoder.blocks[1].conv2[1], "running_var",
                                        torch.full_like(net.segmenter.decoder.blocks[1].conv2[1].running_var, 4.0)),
                        lambda: setattr(net, "segmenter", build_model("lite").segmenter.eval()))
        for replace in replacements:
            before = net.segment(x)
            replace()
            assert not torch.allclose(net.segment(x), before, atol=1e-3)
            torch.testing.assert_close(inference_segmenter(net)(x), net.segment(x), rtol=1e-4, atol=1e-4)
    net.segmenter.train()
    assert inference_segmenter(net) is net.segmenter
    net.segmenter.eval()
    with torch.inference_mode():                  # a copy made in inference mode also works outside it
        net.segmenter.decoder.blocks[0].conv1[1].running_mean.add_(1.0)
        folded = inference_segmenter(net)
    assert folded(x).shape == (2, 1, 64, 96)


def test_views_are_segmented_side_by_side_on_one_thread_each():
    """On two CPU threads the two views' strips run in two one-thread workers: each view's probabilities are
    those of a one-thread pass over that view alone, and the caller's thread count comes back (also after
    the one-thread stages and after an error)."""
    from VesselReconLib.angio3d.network import build_model
    from VesselReconLib.angio3d.pipeline import _probabilities, view_probabilities
    from VesselReconLib.device import one_thread

    torch.manual_seed(0)
    net = build_model("lite").eval()
    raw = torch.rand(4, 1, 128, 160) * 100       # 2 branches per view: view A's strips, then view B's
    torch.set_num_threads(2)
    both = view_probabilities(net, "net", raw)
    assert torch.get_num_threads() == 2
    with one_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
        alone = torch.cat([_probabilities(net, "net", raw[:2]), _probabilities(net, "net", raw[2:])])
    assert torch.get_num_threads() == 2
    with pytest.raises(InputError):        # a failing U-Net pass in a worker (no model)
        view_probabilities(None, "net", raw)
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), one_thread(torch.device("cpu")):
        raise RuntimeError("cancelled")
    assert torch.get_num_threads() == 2
    assert torch.equal(both, alone)


def test_profiles_at_a_larger_reach_are_reused_only_where_they_line_up():
    from VesselReconLib.angio3d.centerline import profiles_within, vessel_profiles

    rng = np.random.default_rng(1)
    image = rng.random((80, 80)).astype(np.float32)
    points = np.c_[np.linspace(20, 60, 30), np.linspace(30, 45, 30)]
    wide = vessel_profiles(image, points, 14.0)
    offsets, profiles = profiles_within(wide, 10.0)
    expected = vessel_profiles(image, points, 10.0)
    np.testing.assert_array_equal(offsets, expected[0])
    np.testing.assert_array_equal(profiles, expected[1])
    for reach, profiles_at in ((10.3, wide), (16.0, wide), (10.0, None)):     # off the grid, wider, none given
        assert profiles_within(profiles_at, reach) is None


def test_max3_at_equals_filtering_the_whole_map():
    from scipy import ndimage

    from VesselReconLib.angio3d.centerline import max3_at

    rng = np.random.default_rng(2)
    values = rng.random((60, 90))
    for mode in ("constant", "nearest"):
        for _ in range(20):
            points = np.c_[rng.uniform(0, 89, 15), rng.uniform(0, 59, 15)]
            points[:rng.integers(0, 3)] = [[0.0, 0.0]]          # at the map's edge too
            whole = ndimage.map_coordinates(ndimage.maximum_filter(values, 3), [points[:, 1], points[:, 0]],
                                            order=1, mode=mode)
            np.testing.assert_array_equal(max3_at(values, points, mode), whole)


def test_foreground_edt_equals_the_whole_image_transform():
    from scipy import ndimage

    from VesselReconLib.angio3d.centerline import foreground_edt

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = np.zeros(tuple(rng.integers(5, 60, 2)), bool)
        for _ in range(rng.integers(0, 4)):              # blobs, some touching the border
            r, c = rng.integers(0, mask.shape[0]), rng.integers(0, mask.shape[1])
            mask[r:r + rng.integers(1, 30), c:c + rng.integers(1, 30)] = True
        np.testing.assert_array_equal(foreground_edt(mask), ndimage.distance_transform_edt(mask))


def test_inference_adjacency_is_csr_with_the_same_products():
    from VesselReconLib.angio3d.network import build_model

    net = build_model("lite")
    h = torch.randn(net.adjacency(torch.device("cpu")).shape[0], 5)
    training = net.adjacency(torch.device("cpu"))
    with torch.inference_mode():
        inference = net.adjacency(torch.device("cpu"))
        assert inference.layout == torch.sparse_csr and training.layout == torch.sparse_coo
        torch.testing.assert_close(torch.sparse.mm(inference, h), torch.sparse.mm(training, h))


# ------------------------------------------------------------------ centrelines, triangulation, stitching, QCA


def test_centerline_and_radius_on_a_synthetic_band():
    from VesselReconLib.angio3d.centerline import extract_centerline

    probability = np.zeros((96, 128), np.float32)
    probability[40:51, 10:120] = 1.0                                          # 11 px wide: radius 5.5 px
    g = geo.CArmGeometry(0, 0, 1000, 800, (0.3, 0.3), 96, 128)
    line = extract_centerline(probability, np.array([15.0, 45]), np.array([110.0, 45]), g)
    assert line.points.shape == (100, 2)
    assert np.abs(line.points[:, 1] - 45).max() < 0.6
    assert np.median(line.radii_px[10:-10]) == pytest.approx(5.5, abs=0.5)
    assert np.median(line.radii_mm[10:-10]) == pytest.approx(5.5 * 0.3 * 800 / 1000, abs=0.15)


def test_depth_refinement_recovers_depth_where_the_vessel_runs_along_the_epipolar_lines():
    """Views that differ in the secondary angle only (as the shared real phantom's): a vessel running
    head-feet lies along the epipolar lines, where point-wise matching slides; the depths fitted to view
    B's whole centreline with a smoothness term bring a depth-perturbed curve back onto the truth."""
    from VesselReconLib.angio3d.triangulation import refine_depths

    a, b = geo.CArmGeometry(0, -25), geo.CArmGeometry(0, 28)
    s = np.linspace(-25, 25, 100)
    curve = np.c_[8 * np.sin(s / 12), 6 * np.cos(s / 15), s]                    # mostly along the z axis
    source, rays = a.pixel_rays(a.project(curve))
    t = ((curve - source) * rays).sum(1)
    noisy = source + (t + np.r_[0, 3 * np.sin(np.arange(98) / 3), 0])[:, None] * rays   # depth errors, same pixels in A
    match = np.arange(100.0)
    refined = refine_depths(noisy, a.project(curve), b.project(curve), a, b, match)
    assert np.linalg.norm(noisy - curve, axis=1).mean() > 1.5
    assert np.linalg.norm(refined - curve, axis=1).mean() < 0.25
    np.testing.assert_allclose(refined[[0, -1]], noisy[[0, -1]])               # the clicked ends are kept


def test_triangulated_centerline_recovers_a_3d_curve():
    from VesselReconLib.angio3d.centerline import Centerline2D
    from VesselReconLib.angio3d.triangulation import triangulate_centerline

    a, b = geo.CArmGeometry(-30, 15), geo.CArmGeometry(50, -10)
    curve = helix() - helix().mean(0)
    lines = [Centerline2D(g.project(curve), np.full(100, 5.0), np.full(100, 1.0)) for g in (a, b)]
    points, radii = triangulate_centerline(lines[0], lines[1], a, b, smooth=0)
    from VesselReconLib import metrics

    assert metrics.chamfer_distance(points, curve) < 0.1
    expected = 5.0 * 0.3 * a.depth(curve) / a.sid
    assert np.abs(radii - expected).max() < 0.05
    narrow_b = Centerline2D(lines[1].points, np.full(100, 2.0), np.full(100, 0.4))
    _, mean_radii = triangulate_centerline(lines[0], narrow_b, a, b, smooth=0)
    _, min_radii = triangulate_centerline(lines[0], narrow_b, a, b, smooth=0, radius_fusion="min")
    assert np.all(min_radii < mean_radii) and np.all(mean_radii < radii)
    assert np.abs(min_radii - 2.0 * 0.3 * b.depth(curve) / b.sid).max() < 0.05


def test_stitching_gives_one_watertight_mesh():
    from VesselReconLib.angio3d.stitching import stitch

    main = np.c_[np.linspace(-20, 20, 100), np.zeros(100), np.zeros(100)]
    side = np.c_[np.full(100, 0.3), np.linspace(0.5, 15, 100), np.linspace(0.5, 10, 100)]
    vertices = [template.template_vertices(main, np.full(100, 1.8)), template.template_vertices(side, np.full(100, 1.2))]
    mesh, moved, offsets = stitch(vertices, [main, side])
    np.testing.assert_allclose(side[0] + offsets[1], main[np.argmin(np.linalg.norm(main - side[0], axis=1))])
    assert meshes.is_watertight(mesh)
    assert len(meshes.component_sizes(mesh)) == 1


def test_qca_measures_a_known_stenosis():
    from VesselReconLib.angio3d.pipeline import quantitative_coronary_analysis

    s = np.linspace(0, 50, 100)
    centerline = np.c_[s, np.zeros(100), np.zeros(100)]
    reference = np.linspace(1.6, 1.2, 100)
    radii = reference * (1 - 0.6 * np.exp(-((s - 25) / 3) ** 2))
    qca = quantitative_coronary_analysis(centerline, radii)
    assert qca["length_mm"] == pytest.approx(50)
    assert qca["mld_mm"] == pytest.approx(2 * radii.min())
    assert qca["percent_diameter_stenosis"] == pytest.approx(60, abs=3)
    assert qca["reference_diameter_mm"] == pytest.approx(2 * 1.4, abs=0.1)


# ------------------------------------------------------------------ DICOM


def test_multiframe_xa_dicom_round_trip(tmp_path):
    from VesselReconLib.angio3d import dicom_io

    g = geo.CArmGeometry(-30.5, 22.25, 1100, 760, (0.3, 0.3), 48, 40)
    frames = np.random.default_rng(0).integers(0, 4000, (3, 48, 40))
    path = dicom_io.write_xa(tmp_path / "xa.dcm", frames, g)
    read, geometry, tags = dicom_io.read_xa(path)
    np.testing.assert_array_equal(read, frames)
    assert geometry == g and tags["ImagerPixelSpacing"] == [0.3, 0.3]
    inverted = dicom_io.write_xa(tmp_path / "mono1.dcm", frames, g, photometric="MONOCHROME1")
    np.testing.assert_array_equal(dicom_io.read_xa(inverted)[0], frames.max() + frames.min() - frames)


def test_xa_dicom_without_geometry_is_refused(tmp_path):
    import pydicom

    from VesselReconLib.angio3d import dicom_io

    path = dicom_io.write_xa(tmp_path / "xa.dcm", np.zeros((1, 16, 16)), geo.CArmGeometry(rows=16, columns=16))
    ds = pydicom.dcmread(path)
    del ds.DistanceSourceToPatient
    ds.save_as(path)
    _, geometry, tags = dicom_io.read_xa(path)
    assert geometry is None and tags["DistanceSourceToPatient"] is None
    with pytest.raises(InputError, match="DistanceSourceToPatient"):
        dicom_io.geometry_from_dataset(ds)

"""Synthetic vascular phantom core: space-colonisation trees and exact voxel/SDF/mesh conversions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from VesselReconLib.phantoms import (
    BoxDomain,
    EllipsoidDomain,
    MaskDomain,
    Root,
    SlabDomain,
    TreeParams,
    VascularTree,
    add_crossing_vessel,
    add_kissing_vessel,
    add_stenosis,
    fit_grid,
    grow_tree,
    mesh_is_watertight,
    mesh_volume,
    sample_volume,
    sdf_at_points,
    tree_to_centerlines,
    tree_to_labelmap,
    tree_to_mesh,
    tree_to_sdf,
    world_to_ijk,
)
from VesselReconLib.phantoms import datasets


def _small_params(**kw) -> TreeParams:
    base = dict(n_attractors=250, step_mm=1.0, influence_mm=8.0, kill_mm=2.0, min_radius=0.3,
                root_radius=1.2, tortuosity=0.3, seed=3)
    base.update(kw)
    return TreeParams(**base)


def _small_tree(seed: int = 3, **kw) -> VascularTree:
    dom = EllipsoidDomain((0.0, 0.0, 0.0), (12.0, 12.0, 8.0))
    return grow_tree(dom, [Root((0.0, -13.0, 0.0), (0.0, 1.0, 0.0), 1.2)], _small_params(seed=seed, **kw))


@pytest.fixture(scope="module")
def tree() -> VascularTree:
    return _small_tree()


def _vertices(poly) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)


def _grid_points(shape, spacing, origin) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], 1) * np.asarray(spacing) + np.asarray(origin)


# ------------------------------------------------------------------------------------------ growth


def test_growth_is_deterministic_and_seed_dependent(tree):
    again = _small_tree(seed=3)
    assert tree.n_nodes > 100 and len(tree.branch_points()) >= 5
    np.testing.assert_array_equal(tree.nodes, again.nodes)
    np.testing.assert_array_equal(tree.radii, again.radii)
    np.testing.assert_array_equal(tree.edges, again.edges)
    other = _small_tree(seed=4)
    assert other.n_nodes != tree.n_nodes or not np.array_equal(other.nodes, tree.nodes)


@pytest.mark.parametrize("gamma", [3.0, 2.7])
def test_murray_law_at_every_bifurcation(gamma):
    t = _small_tree(gamma=gamma) if gamma != 3.0 else _small_tree()
    children = t.children()
    bps = t.branch_points()
    assert len(bps) >= 5
    for b in bps:
        lhs = t.radii[b] ** gamma
        rhs = sum(t.radii[c] ** gamma for c in children[b])
        assert lhs == pytest.approx(rhs, rel=1e-9)
        # and not trivially: daughters are thinner than the parent
        assert all(t.radii[c] < t.radii[b] for c in children[b])


def test_radius_range_and_root_radius(tree):
    p = _small_params()
    assert tree.radii.min() >= p.min_radius - 1e-12
    root = tree.roots()
    assert len(root) == 1
    assert tree.radii[root[0]] == pytest.approx(1.2)
    assert tree.radii.max() == pytest.approx(1.2)
    # a tighter minimum radius prunes leaves instead of violating it
    t2 = _small_tree(min_radius=0.5)
    assert t2.radii.min() >= 0.5 - 1e-12
    assert len(t2.leaves()) <= (1.2 / 0.5) ** 3 + 1e-9
    assert len(t2.leaves()) < len(tree.leaves())


def test_max_generations_and_branch_order():
    t = _small_tree(max_generations=2)
    assert t.generation.max() <= 2
    assert _small_tree().generation.max() > 2


def test_branch_angle_bias_sets_bifurcation_angle():
    t = _small_tree(tortuosity=0.0, branch_angle_bias=1.0, branch_angle_deg=60.0, inertia=0.0)
    children = t.children()
    angles = []
    for b in t.branch_points():
        c0, c1 = children[b][:2]
        u = t.nodes[c0] - t.nodes[b]
        v = t.nodes[c1] - t.nodes[b]
        angles.append(math.degrees(math.acos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))
    assert len(angles) >= 5
    np.testing.assert_allclose(angles, 60.0, atol=1e-6)
    free = _small_tree(tortuosity=0.0, inertia=0.0)
    ch = free.children()
    free_angles = [math.degrees(math.acos(np.clip(
        (free.nodes[ch[b][0]] - free.nodes[b]) @ (free.nodes[ch[b][1]] - free.nodes[b]), -1, 1)))
        for b in free.branch_points()]
    assert np.std(free_angles) > 5.0


def test_growth_stays_in_domains():
    rng_mask = np.zeros((20, 40, 40), bool)
    rng_mask[5:15, 10:30, 10:30] = True
    dom = MaskDomain(rng_mask, spacing=(0.5, 0.5, 1.0), origin=(-10.0, -10.0, -10.0))
    pts = dom.sample(500, np.random.default_rng(0))
    assert dom.contains(pts).all()
    t = grow_tree(dom, [Root((0.0, -10.0, -0.5), (0.0, 1.0, 0.0), 0.8)],
                  TreeParams(n_attractors=300, step_mm=0.5, influence_mm=4, kill_mm=1, min_radius=0.2, seed=1))
    non_trunk = t.nodes[t.generation > 0]
    assert len(non_trunk) > 20
    assert dom.contains(non_trunk).mean() > 0.9
    slab = SlabDomain((0, 0, 0), (20, 20), 0.6, shape="disk")
    assert slab.contains(slab.sample(200, np.random.default_rng(1))).all()
    box = BoxDomain((0, 0, 0), (1, 2, 3))
    assert box.contains(box.sample(100, np.random.default_rng(2))).all()


def test_tree_structure_and_serialisation(tree):
    segs = tree.segments()
    covered = np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in segs if len(s) > 1])
    assert sorted(map(tuple, covered.tolist())) == sorted(map(tuple, tree.edges.tolist()))
    ends = {int(s[-1]) for s in segs}
    assert set(tree.leaves().tolist()) <= ends
    assert tree.total_length() == pytest.approx(tree.edge_lengths().sum())
    cl = tree_to_centerlines(tree)
    assert len(cl) == len(segs) and all(c["points"].shape == (len(c["radii"]), 3) for c in cl)
    d = json.loads(json.dumps(tree.to_dict()))
    back = VascularTree.from_dict(d)
    np.testing.assert_array_equal(back.nodes, tree.nodes)
    np.testing.assert_array_equal(back.edges, tree.edges)
    np.testing.assert_array_equal(back.labels, tree.labels)
    # rigid transform: lengths and radii preserved, bounds moved
    c, s = math.cos(0.3), math.sin(0.3)
    m = np.array([[c, -s, 0, 5], [s, c, 0, -2], [0, 0, 1, 1], [0, 0, 0, 1.0]])
    moved = tree.transform(m)
    assert moved.total_length() == pytest.approx(tree.total_length())
    np.testing.assert_allclose(moved.radii, tree.radii)
    np.testing.assert_allclose(moved.nodes[0], m[:3, :3] @ tree.nodes[0] + m[:3, 3])
    lo, hi = tree.bounds()
    assert np.all(tree.nodes >= lo) and np.all(tree.nodes <= hi)


# ------------------------------------------------------------------------ exact single primitive


def test_capsule_volume_and_exact_sdf():
    r = 1.13
    t = VascularTree([[0.02, -0.03, -4.0], [0.02, -0.03, 4.0]], [r, r], [[0, 1]])
    sp, org = (0.1, 0.12, 0.15), (-1.5, -1.6, -5.6)
    shape = (75, 27, 31)
    lab = tree_to_labelmap(t, shape, sp, org)
    vol = lab.sum() * np.prod(sp)
    exact = math.pi * r * r * 8.0 + 4.0 / 3.0 * math.pi * r ** 3
    assert vol == pytest.approx(exact, rel=0.02)
    # analytic SDF: -r on the axis, d - r at distance d from it, |p - end| - r beyond the caps
    axis = np.array([[0.02, -0.03, z] for z in (-3.0, 0.0, 2.5)])
    np.testing.assert_allclose(sdf_at_points(t, axis), -r, atol=1e-12)
    for d in (0.3, 1.13, 2.0, 7.0):
        p = np.array([[0.02 + d * 0.6, -0.03 + d * 0.8, 1.0]])
        assert sdf_at_points(t, p)[0] == pytest.approx(d - r, abs=1e-12)
    assert sdf_at_points(t, [[0.02, -0.03, 6.0]])[0] == pytest.approx(2.0 - r, abs=1e-12)
    # the SDF volume equals the closed-form capsule distance everywhere (band and far field)
    sdf = tree_to_sdf(t, shape, sp, org)
    p = _grid_points(shape, sp, org)
    z = np.clip(p[:, 2], -4.0, 4.0)
    ref = np.sqrt((p[:, 0] - 0.02) ** 2 + (p[:, 1] + 0.03) ** 2 + (p[:, 2] - z) ** 2) - r
    np.testing.assert_allclose(sdf.ravel(), ref, atol=2e-6)
    assert np.array_equal(lab == 1, sdf < 0)


def test_round_cone_sdf_matches_sphere_sweep():
    # round cone == union of spheres with linearly varying centre and radius
    a, b, ra, rb = np.array([0.3, -0.2, 0.1]), np.array([4.0, 2.5, -1.0]), 1.6, 0.5
    t = VascularTree([a, b], [ra, rb], [[0, 1]])
    rng = np.random.default_rng(0)
    pts = rng.uniform(-4, 8, size=(1200, 3))
    s = np.linspace(0, 1, 4001)
    c = a + s[:, None] * (b - a)
    rr = ra + s * (rb - ra)
    ref = np.empty(len(pts))
    for i in range(0, len(pts), 100):
        q = pts[i : i + 100]
        dd = (q[:, None, 0] - c[None, :, 0]) ** 2 + (q[:, None, 1] - c[None, :, 1]) ** 2 + (q[:, None, 2] - c[None, :, 2]) ** 2
        ref[i : i + 100] = np.min(np.sqrt(dd) - rr[None], axis=1)
    got = sdf_at_points(t, pts)
    outside = ref > 0
    assert outside.sum() > 500 and (~outside).sum() > 10
    np.testing.assert_allclose(got[outside], ref[outside], atol=1e-6)
    assert np.all(got[~outside] <= 1e-9)


# --------------------------------------------------------------- grown tree, anisotropic spacing


@pytest.fixture(scope="module")
def aniso(tree):
    sp = (0.31, 0.42, 0.57)
    shape, origin = fit_grid(tree, sp, margin_mm=1.5)
    lab = tree_to_labelmap(tree, shape, sp, origin)
    sdf = tree_to_sdf(tree, shape, sp, origin)
    return sp, shape, origin, lab, sdf


def test_labelmap_equals_sdf_sign_anisotropic(tree, aniso):
    sp, shape, origin, lab, sdf = aniso
    assert lab.dtype == np.uint8 and sdf.dtype == np.float32 and lab.shape == sdf.shape == shape
    assert lab.sum() > 500
    assert np.array_equal(lab == 1, sdf < 0)
    # index order [k, j, i]: the voxel of a node centre (axis inside the vessel) is labelled
    ijk = np.rint(world_to_ijk(tree.nodes, sp, origin)).astype(int)
    centre = tree.radii > 0.5 * np.linalg.norm(sp)
    assert lab[ijk[centre, 2], ijk[centre, 1], ijk[centre, 0]].all()


def test_sdf_volume_matches_analytic_everywhere(tree, aniso):
    sp, shape, origin, lab, sdf = aniso
    ref = sdf_at_points(tree, _grid_points(shape, sp, origin)).reshape(shape)
    band = sdf < 2 * max(sp) - 1e-6
    np.testing.assert_allclose(sdf[band], ref[band], atol=2e-6)
    far = ~band
    assert far.sum() > 1000
    err = sdf[far] - ref[far]
    assert err.min() > -1e-4  # far field is an upper bound ...
    assert np.percentile(err, 99) < 0.5 * min(sp) and err.max() < max(sp)  # ... and tight
    # alternative far fields: EDT (Hopf-Lax upper bound) and truncation at the band
    edt = tree_to_sdf(tree, shape, sp, origin, far_field="edt")
    e2 = edt[far] - ref[far]
    assert e2.min() > -1e-4 and np.percentile(e2, 99) < max(sp)
    np.testing.assert_array_equal(edt[band], sdf[band])
    tr = tree_to_sdf(tree, shape, sp, origin, far_field="truncate")
    np.testing.assert_array_equal(tr[band], sdf[band])
    assert np.all(tr[far] == np.float32(2 * max(sp)))


def test_far_field_on_large_grid_uses_coarse_interpolation(tree):
    sp = (0.12, 0.12, 0.12)
    shape, origin = fit_grid(tree, sp, margin_mm=0.5)
    assert np.prod(shape) > 1_000_000  # coarse (f >= 2) far-field path
    sdf = tree_to_sdf(tree, shape, sp, origin)
    assert np.isfinite(sdf).all()
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, n, 20000) for n in shape], 1)
    ref = sdf_at_points(tree, idx[:, ::-1] * np.asarray(sp) + origin)
    got = sdf[idx[:, 0], idx[:, 1], idx[:, 2]]
    err = np.abs(got - ref)
    band = got < 2 * max(sp) - 1e-6  # exact analytic band (far values are clipped to >= band)
    assert err[band].max() < 2e-6
    assert np.percentile(err[~band], 99) < 0.1 and err.max() < 0.5


def test_general_ijk_to_world_and_degenerate_inputs(tree, aniso):
    sp, shape, origin, lab, sdf = aniso
    # flipped i axis
    m = np.diag([-sp[0], sp[1], sp[2], 1.0])
    m[:3, 3] = origin
    m[0, 3] = origin[0] + (shape[2] - 1) * sp[0]
    np.testing.assert_array_equal(tree_to_labelmap(tree, shape, ijk_to_world=m), lab[:, :, ::-1])
    # swapped i/j axes (non-diagonal matrix -> general code path)
    p = np.zeros((4, 4))
    p[0, 1], p[1, 0], p[2, 2], p[3, 3] = sp[0], sp[1], sp[2], 1.0
    p[:3, 3] = origin
    shp = (shape[0], shape[2], shape[1])
    lp = tree_to_labelmap(tree, shp, ijk_to_world=p)
    np.testing.assert_array_equal(lp, lab.transpose(0, 2, 1))
    sp_ = tree_to_sdf(tree, shp, ijk_to_world=p)
    assert np.array_equal(lp == 1, sp_ < 0)
    band = sp_ < 2 * max(sp) - 1e-6
    np.testing.assert_allclose(sp_[band], sdf.transpose(0, 2, 1)[band], atol=1e-6)
    # empty tree and a tree entirely outside the grid
    empty = VascularTree(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)))
    assert np.isinf(tree_to_sdf(empty, (4, 5, 6))).all()
    assert tree_to_labelmap(empty, (4, 5, 6)).sum() == 0
    far = tree.transform(np.array([[1, 0, 0, 100.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    d = tree_to_sdf(far, (6, 7, 8), (1, 1, 1), (0, 0, 0))
    assert np.isfinite(d).all() and d.min() > 50


def test_labelmap_labels_and_generations(tree, aniso):
    sp, shape, origin, lab, _ = aniso
    two = tree.copy()
    two.labels = np.where(two.generation > 0, 2, 1).astype(np.int32)
    lab2 = tree_to_labelmap(two, shape, sp, origin, label_by="labels")
    assert set(np.unique(lab2).tolist()) == {0, 1, 2}
    assert np.array_equal(lab2 > 0, lab == 1)


def test_mesh_watertight_and_consistent_with_sdf_and_labelmap(tree, aniso):
    sp, shape, origin, lab, sdf = aniso
    # on the labelmap grid: the mesh is the zero level of the SDF volume
    mesh = tree_to_mesh(tree, spacing=sp, shape=shape, origin=origin)
    assert mesh_is_watertight(mesh)
    v = _vertices(mesh)
    half = 0.5 * min(sp)
    assert np.abs(sample_volume(sdf, v, sp, origin)).max() < 1e-3
    assert np.abs(sdf_at_points(tree, v)).max() < half
    # every vertex sits within half a voxel of a labelmap boundary (voxel in / voxel out)
    ijk = world_to_ijk(v, sp, origin)
    lo = np.floor(ijk + 1e-9).astype(int)
    lab_pad = np.pad(lab, 1)
    found = np.zeros(len(v), bool)
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                c = lo + [di, dj, dk]
                near = np.all(np.abs(ijk - c) <= 1.0 + 1e-9, axis=1)
                vals = lab_pad[c[:, 2] + 1, c[:, 1] + 1, c[:, 0] + 1]
                found |= near & (vals == 1)
    assert found.all()
    # enclosed volumes agree with the voxel count (marching cubes on a coarse grid shaves thin
    # vessels, the fine default mesh does not)
    lab_vol = lab.sum() * np.prod(sp)
    assert 0.75 * lab_vol < mesh_volume(mesh) < 1.02 * lab_vol
    # default fine mesh (own grid) is watertight, positioned in mm and on the analytic surface
    fine = tree_to_mesh(tree)
    assert mesh_is_watertight(fine)
    assert mesh_volume(fine) == pytest.approx(lab_vol, rel=0.05)
    vf = _vertices(fine)
    assert np.abs(sdf_at_points(tree, vf)).max() < 0.5 * min(0.5 * tree.radii.min(), 0.5)
    lo_b, hi_b = tree.bounds()
    assert np.all(vf.min(0) >= lo_b - 1e-6) and np.all(vf.max(0) <= hi_b + 1e-6)


# ---------------------------------------------------------------------------------- edits


def test_stenosis_exact_percent_diameter(tree):
    segs = tree.segments()
    seg = max(segs, key=len)
    ref = float(np.median(tree.radii[seg]))
    st = add_stenosis(tree, seg, 50.0, length_mm=4.0)
    rec = st.meta["stenoses"][-1]
    assert rec["percent_diameter"] == pytest.approx(50.0)
    assert rec["percent_area"] == pytest.approx(75.0)
    assert rec["reference_radius"] == pytest.approx(ref, rel=1e-9)
    region = np.asarray(rec["nodes"])
    assert len(region) >= 10
    assert st.radii[region].min() == pytest.approx(0.5 * ref, rel=0.01)
    assert st.radii[rec["throat_node"]] == pytest.approx(0.5 * ref, rel=1e-12)
    # smooth (cosine) profile along the path: radius decreases to the throat, then increases
    throat_pos = np.asarray(rec["center"])
    rr = st.radii[region]
    k = int(np.flatnonzero(region == rec["throat_node"])[0])
    assert 0 < k < len(region) - 1
    assert np.all(np.diff(rr[: k + 1]) <= 1e-12) and np.all(np.diff(rr[k:]) >= -1e-12)
    assert rr[0] > 0.9 * ref and rr[-1] > 0.9 * ref
    # untouched elsewhere, geometry unchanged
    assert st.total_length() == pytest.approx(tree.total_length())
    np.testing.assert_array_equal(st.radii[: tree.n_nodes][np.setdiff1d(np.arange(tree.n_nodes), region)],
                                  tree.radii[np.setdiff1d(np.arange(tree.n_nodes), region)])
    # and the analytic surface really narrows at the throat
    assert sdf_at_points(st, [throat_pos])[0] == pytest.approx(-0.5 * ref, abs=1e-9)
    # node-range form (start, end) works as well
    st2 = add_stenosis(tree, (int(seg[0]), int(seg[-1])), 30.0, length_mm=3.0)
    assert st2.meta["stenoses"][-1]["min_radius"] == pytest.approx(0.7 * st2.meta["stenoses"][-1]["reference_radius"])


def test_kissing_and_crossing_vessels():
    straight = VascularTree([[0, 0, -10], [0, 0, 0], [0, 0, 10]], [1.0, 1.0, 1.0], [[0, 1], [1, 2]],
                            labels=[1, 1, 1])
    k = add_kissing_vessel(straight, node=1, gap_mm=0.4, radius=0.6, length_mm=12.0, seed=2)
    rec = k.meta["crossings"][-1]
    new = np.arange(straight.n_nodes, k.n_nodes)
    assert len(new) > 3 and k.labels[new[0]] == 2
    assert len(k.roots()) == 2
    # closest approach between the two surfaces equals the gap
    surf_gap = sdf_at_points(straight, k.nodes[new]) - 0.6
    assert surf_gap.min() == pytest.approx(0.4, abs=1e-9)
    assert rec["offset_mm"] == pytest.approx(2.0)
    c = add_crossing_vessel(straight, node=1, radius=0.5, length_mm=8.0)
    newc = np.arange(straight.n_nodes, c.n_nodes)
    assert sdf_at_points(straight, c.nodes[newc]).min() == pytest.approx(-1.0, abs=1e-9)
    # touching vessels (gap 0) stay two objects only separated by the surface
    touch = add_kissing_vessel(straight, node=1, gap_mm=0.0, radius=1.0, length_mm=6.0)
    assert (sdf_at_points(straight, touch.nodes[straight.n_nodes:]) - 1.0).min() == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------- datasets


def test_dataset_registry_and_io(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setitem(datasets.DATASET_WRITERS, "unit-test-kind", None)   # removed again, pass or fail

    @datasets.register_dataset("unit-test-kind")
    def _writer(out_dir, count, seed, progress=None, **options):
        calls.update(out_dir=out_dir, count=count, seed=seed, **options)
        return out_dir / "done"

    out = datasets.write_dataset("unit-test-kind", tmp_path / "ds", 3, seed=7, flavour="x")
    assert out == tmp_path / "ds" / "done" and calls["count"] == 3 and calls["seed"] == 7
    assert calls["flavour"] == "x"
    with pytest.raises(KeyError) as e:
        datasets.write_dataset("no-such-kind", tmp_path, 1, 0)
    assert "octa" in str(e.value) and "xray" in str(e.value)

    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 2, 3] = 1
    p = datasets.save_nifti(arr, (0.5, 0.6, 0.7), (1.0, -2.0, 3.0), tmp_path / "imagesTr" / "a.nii.gz")
    back, sp, org = datasets.load_nifti(p)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(sp, (0.5, 0.6, 0.7), rtol=1e-6)
    np.testing.assert_allclose(org, (1.0, -2.0, 3.0))
    j = datasets.write_msd_dataset_json(tmp_path, "Synth", {"0": "OCTA"}, ["background", "vessel"],
                                        [(p, tmp_path / "labelsTr" / "a.nii.gz")])
    doc = json.loads(j.read_text())
    for key in ("name", "description", "tensorImageSize", "modality", "labels", "numTraining", "training"):
        assert key in doc
    assert doc["numTraining"] == 1 and doc["training"][0] == {"image": "./imagesTr/a.nii.gz",
                                                              "label": "./labelsTr/a.nii.gz"}
    assert doc["labels"] == {"0": "background", "1": "vessel"}


def test_read_msd_training_makes_paths_absolute_against_the_folder(tmp_path, monkeypatch):
    from VesselReconLib.errors import InputError

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "mask": "/abs/m.nii.gz", "seed": 3}]}))
    monkeypatch.chdir(tmp_path / "ds")  # relative paths are the folder's, not the working folder's
    entries = datasets.read_msd_training("../ds", "ct")
    folder = (tmp_path / "ds").resolve()
    assert entries == [{"image": str(folder / "imagesTr" / "a.nii.gz"), "label": str(folder / "labelsTr" / "a.nii.gz"),
                        "mask": "/abs/m.nii.gz", "seed": 3}]
    with pytest.raises(InputError, match="vesselrecon phantoms mra --out"):
        datasets.read_msd_training(tmp_path, "mra")
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(InputError, match="no training cases"):
        datasets.read_msd_training(tmp_path, "mra")

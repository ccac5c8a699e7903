"""OCTA phantom: geometry, ground truth consistency, quality labels and dataset writers."""

import json

import numpy as np
import pytest

from VesselReconLib.phantoms import octa
from VesselReconLib.phantoms.octa import (
    DEPTH_RAMP,
    OCTACase,
    degrade,
    depth_to_rgb,
    faz_area_mm2,
    render_octa,
    sharpness,
)


@pytest.fixture(scope="module")
def clean():
    """Fixed device-neutral appearance (no motion bands): labels align with the centrelines."""
    return render_octa(seed=3, size_px=304, field_mm=3.0, randomize=False)


@pytest.fixture(scope="module")
def graded():
    return {q: [render_octa(seed=s, quality=q) for s in range(3)] for q in (0, 1, 2)}


def test_deterministic_by_seed():
    a, b = render_octa(7, quality=1), render_octa(7, quality=1)
    for name in ("image", "depth", "vessel_mask", "faz_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.centerlines["points"], b.centerlines["points"])
    assert a.quality == b.quality == 1
    assert not np.array_equal(render_octa(8).image, a.image)


def test_ground_truth_types_and_ranges(clean):
    assert isinstance(clean, OCTACase)
    assert clean.image.dtype == np.float32 and 0.0 <= clean.image.min() and clean.image.max() <= 1.0
    assert clean.depth.dtype == np.float32
    assert clean.vessel_mask.dtype == bool and clean.faz_mask.dtype == bool
    assert clean.pixel_mm == pytest.approx(3.0 / 304)
    assert clean.depth_range_mm == (0.0, 0.25)
    assert clean.quality is None
    v, flow = clean.vessel_mask, clean.flow_mask
    assert flow.dtype == bool and not (v & ~flow).any()
    assert np.all(clean.depth[~flow] == 0.0)
    assert 0.0 < clean.depth[flow].min() and clean.depth[flow].max() < 1.0
    # the labelled large vessels are superficial; the capillary beds reach the deep plexus
    assert np.median(clean.depth[v]) < 0.35
    d = clean.depth[flow & ~v]
    assert (d < 0.35).mean() > 0.2 and (d > 0.55).mean() > 0.05
    # expert labelling convention (ROSSA): the vessel tree, not the capillary bed
    assert 0.05 < v.mean() < 0.25 and flow.mean() > v.mean() + 0.1
    c = clean.centerlines
    assert c["points"].shape[1] == 3 and len(c["radii"]) == len(c["points"])
    assert c["edges"].max() < len(c["points"]) and len(c["layer"]) == len(c["edges"])
    # capillary beds (layers 1, 2) are image-space textures; the graph holds the tree, diving
    # capillaries and the perifoveal ring
    assert set(np.unique(c["layer"])) == {0, 3, 4}


@pytest.mark.parametrize("field_mm,lo,hi", [(3.0, 0.1, 0.6), (6.0, 0.1, 0.6)])
def test_faz_area_and_no_vessels_inside(field_mm, lo, hi):
    for seed in range(4):
        case = render_octa(seed, size_px=304 if field_mm == 3.0 else 400, field_mm=field_mm)
        area = faz_area_mm2(case)
        assert lo <= area <= hi
        assert area == pytest.approx(case.faz_area_mm2, rel=0.05)
        assert not (case.flow_mask & case.faz_mask).any()
        # the FAZ sits at the field centre (clean) and is a single compact blob
        ys, xs = np.nonzero(case.faz_mask)
        centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) * case.pixel_mm
        assert np.allclose(centre, case.faz_center_mm, atol=0.05)
        assert np.allclose(case.faz_center_mm, field_mm / 2, atol=1e-9)


def _brute_force_depth(case: OCTACase, rows, cols):
    """Documented z-buffer rule re-evaluated from the large-vessel centrelines at the given pixels."""
    c = case.centerlines
    p, r = c["points"], c["radii"]
    edges = c["edges"][c["layer"] == 0]
    a, b = p[edges[:, 0]], p[edges[:, 1]]
    ra, rb = r[edges[:, 0]], r[edges[:, 1]]
    q = np.column_stack([(cols + 0.5) * case.pixel_mm, (rows + 0.5) * case.pixel_mm])
    d = b[:, :2] - a[:, :2]
    L2 = (d * d).sum(1)
    out = np.full(len(q), -1.0)
    for n, qq in enumerate(q):
        t = np.clip(((qq - a[:, :2]) * d).sum(1) / np.where(L2 > 0, L2, 1), 0, 1)
        dist = np.hypot(*(qq - a[:, :2] - t[:, None] * d).T)
        rt = ra + t * (rb - ra)
        hit = dist <= np.maximum(rt, octa.LABEL_MIN_PX * case.pixel_mm) + 1e-9
        if hit.any():
            z = (a[:, 2] + t * (b[:, 2] - a[:, 2]))[hit]
            best = np.lexsort((z, -rt[hit]))[0]
            out[n] = z[best] / (case.depth_range_mm[1] - case.depth_range_mm[0])
    return out


def test_depth_matches_3d_centerlines(clean):
    rng = np.random.default_rng(0)
    c = clean.centerlines
    e = rng.choice(np.flatnonzero(c["layer"] == 0), 150, replace=False)
    mid = 0.5 * (c["points"][c["edges"][e, 0]] + c["points"][c["edges"][e, 1]])
    cols = np.floor(mid[:, 0] / clean.pixel_mm).astype(int)
    rows = np.floor(mid[:, 1] / clean.pixel_mm).astype(int)
    inside = (cols >= 0) & (rows >= 0) & (cols < 304) & (rows < 304)
    rows, cols, mid = rows[inside], cols[inside], mid[inside]
    # every centreline point lands on a vessel pixel
    assert clean.vessel_mask[rows, cols].all()
    expected = _brute_force_depth(clean, rows, cols)
    assert np.abs(clean.depth[rows, cols] - expected).max() < 0.01
    # the large superficial vessels are the brightest voxels: depth = their own axis depth
    big = np.flatnonzero(c["radii"] > 0.02)
    pts = c["points"][rng.choice(big, 60, replace=False)]
    pc = np.floor(pts[:, :2] / clean.pixel_mm).astype(int)
    ok = (pc >= 0).all(1) & (pc < 304).all(1)
    own = pts[ok, 2] / 0.25
    got = clean.depth[pc[ok, 1], pc[ok, 0]]
    assert np.median(np.abs(got - own)) < 0.01
    # background pixels have no covering centreline edge
    bg = np.argwhere(~clean.vessel_mask)
    pick = bg[rng.choice(len(bg), 60, replace=False)]
    assert (_brute_force_depth(clean, pick[:, 0], pick[:, 1]) == -1).all()


def test_vessel_pixels_brighter(clean):
    v, flow, faz = clean.vessel_mask, clean.flow_mask, clean.faz_mask
    assert clean.image[v].mean() > 2 * clean.image[~v & ~faz].mean()
    # dense capillary texture: capillary pixels brighter than the gaps, the FAZ darkest
    assert clean.image[flow & ~v].mean() > 1.3 * clean.image[~flow & ~faz].mean()
    assert clean.image[faz].mean() < clean.image[~flow & ~faz].mean()


def test_quality_labels_reproducible_and_ordered(graded):
    for q, cases in graded.items():
        assert all(c.quality == q and c.quality_name == octa.QUALITY_NAMES[q] for c in cases)
        assert cases[0].meta["degradation"]["quality"] == q
    s = {q: np.mean([sharpness(c.image) for c in cases]) for q, cases in graded.items()}
    assert s[2] > s[1] > s[0]
    # the macula stays centred on gradable/outstanding images
    for q in (1, 2):
        for c in graded[q]:
            assert np.hypot(*(np.asarray(c.faz_center_mm) - 1.5)) < 0.2
    # degrade() applies the same label-specific ranges to an existing clean case
    case = render_octa(1)
    d0, d0b, d2 = degrade(case, 0, 5), degrade(case, 0, 5), degrade(case, 2, 5)
    np.testing.assert_array_equal(d0.image, d0b.image)
    assert d0.quality == 0 and d2.quality == 2
    assert sharpness(d2.image) > sharpness(d0.image)


@pytest.mark.parametrize("size_px,field_mm", [(304, 3.0), (320, 3.0), (400, 6.0), (512, 6.0)])
def test_sizes(size_px, field_mm):
    case = render_octa(2, size_px=size_px, field_mm=field_mm)
    for name in ("image", "depth", "vessel_mask", "faz_mask"):
        assert getattr(case, name).shape == (size_px, size_px)
    assert case.pixel_mm == pytest.approx(field_mm / size_px)
    assert case.centerlines["points"][:, :2].max() < field_mm + 0.3


def test_depth_to_rgb_ramp():
    depth = np.array([[0.0, 1e-6, 0.5, 1.0]], np.float32)
    rgb = depth_to_rgb(depth, depth > 0)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0, 0], 0.0)  # background black
    np.testing.assert_allclose(rgb[0, 1], DEPTH_RAMP[0], atol=1e-4)  # superficial red
    np.testing.assert_allclose(rgb[0, 3], DEPTH_RAMP[-1])  # deep blue
    assert rgb[0, 1, 0] > rgb[0, 1, 2] and rgb[0, 3, 2] > rgb[0, 3, 0]


def test_octa_dataset_layout(tmp_path):
    from PIL import Image

    from VesselReconLib.phantoms.datasets import write_dataset

    calls = []
    root = write_dataset("octa", tmp_path / "octa", 3, seed=4, progress=lambda f, m: calls.append(f))
    meta = json.loads((root / "cases.json").read_text())
    assert len(meta["cases"]) == 3 and calls and calls[-1] == 1.0
    for rec in meta["cases"]:
        img = np.asarray(Image.open(root / rec["image"]))
        depth = np.asarray(Image.open(root / rec["depth"]))
        vessels = np.asarray(Image.open(root / rec["vessels"]))
        faz = np.asarray(Image.open(root / rec["faz"]))
        assert img.dtype == np.uint8 and img.shape == (304, 304)
        assert depth.dtype == np.uint16 and depth.shape == (304, 304)
        assert set(np.unique(vessels)) <= {0, 255} and set(np.unique(faz)) <= {0, 255}
        assert rec["pixel_mm"] == pytest.approx(rec["field_mm"] / rec["size_px"])
        cl = json.loads((root / rec["centerlines"]).read_text())
        assert len(cl["points"][0]) == 3 and len(cl["radii"]) == len(cl["points"])
        # the stored depth is the renderer's depth (16-bit quantised)
        case = render_octa(rec["seed"], rec["size_px"], rec["field_mm"])
        np.testing.assert_allclose(depth / 65535.0, case.depth, atol=1.0 / 65535)
        flow = np.asarray(Image.open(root / rec["flow"]))
        assert ((depth > 0) == (flow > 0)).all() and not ((vessels > 0) & (flow == 0)).any()


def test_octa_quality_dataset_layout(tmp_path):
    import csv

    from VesselReconLib.phantoms.datasets import write_dataset

    root = write_dataset("octa-quality", tmp_path / "q", 3, seed=1)
    rows = list(csv.DictReader(open(root / "labels.csv")))
    assert [list(r) for r in rows][0] == ["image", "quality", "name", "field_mm"]
    assert sorted(int(r["quality"]) for r in rows) == [0, 1, 2]
    for r in rows:
        assert (root / "images" / r["image"]).exists()
        assert r["name"] == octa.QUALITY_NAMES[int(r["quality"])]
        has_faz = (root / "faz" / "masks" / r["image"]).exists()
        assert has_faz == (int(r["quality"]) >= 1) == (root / "faz" / "images" / r["image"]).exists()

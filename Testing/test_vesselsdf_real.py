"""VesselSDF inputs in the model's domain, real-data readers and metrics, and floors on real CT (../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from VesselReconLib.errors import InputError
from VesselReconLib.vesselsdf import preprocess, realdata

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IRCADB = SHARED / "datasets" / "ircadb_1.7"
LVSD = SHARED / "samples" / "liver-ct-lvsd"
RAS = np.diag([-0.7, -0.7, 5.0, 1.0])


def abdomen(seed=0, shape=(6, 96, 96)):
    """Air, a body at 40 HU, a right-sided liver at 110 HU with 180 HU vessels, a left spleen."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[(j - 48) ** 2 + (i - 48) ** 2 < 44 ** 2] = 40.0
    liver = (j - 48) ** 2 / 30 ** 2 + (i - 30) ** 2 / 22 ** 2 < 1  # low i = patient's right (RAS x falls with i)
    spleen = (j - 40) ** 2 + (i - 76) ** 2 < 8 ** 2
    hu[liver], hu[spleen] = 110.0, 115.0
    vessels = liver & (np.abs(j - 48) < 2)
    hu[vessels] = 180.0
    return (hu + rng.normal(0, 8, shape)).astype(np.float32), liver, vessels


def test_hu_windowed_and_intercept_detection():
    hu, _, _ = abdomen()
    assert preprocess.looks_like_hu(hu)
    windowed = np.clip((hu + 100) / 400 * 255, 0, 255).astype(np.uint8)
    assert not preprocess.looks_like_hu(windowed) and not preprocess.looks_like_hu(windowed / 255.0)
    assert preprocess.lacks_intercept(np.clip(hu + 1024, 0, None)) and not preprocess.lacks_intercept(hu)


def test_normalisation_is_window_and_crop_independent():
    hu, liver, _ = abdomen()
    windowed = np.clip((hu + 100) / 400 * 255, 0, 255)
    a = preprocess.canonicalise(hu, RAS, liver).normalised()
    b = preprocess.canonicalise(windowed, RAS, liver).normalised()
    assert preprocess.canonicalise(windowed, RAS, liver).windowed
    np.testing.assert_allclose(a[liver], b[liver], atol=0.05)  # the window does not matter inside the liver
    assert (a[~liver] == preprocess.OUTSIDE).all()
    z = np.median(a[..., 40:56, 20:40][liver[..., 40:56, 20:40] & (hu[..., 40:56, 20:40] > 150)])
    assert z > 0.5  # vessels: several liver SDs above the parenchyma


def test_auto_liver_roi_finds_the_right_sided_organ():
    hu, liver, _ = abdomen()
    roi = preprocess.canonicalise(hu, np.diag([-2.0, -2.0, 5.0, 1.0])).roi  # 2 mm pixels: a 19 cm body
    from VesselReconLib import metrics

    assert metrics.dice(roi, liver) > 0.8
    assert not roi[:, 40, 76].any()  # not the spleen


def test_statistics_roi_says_why_it_uses_the_given_roi():
    """The automatic ROI's statistics serve a given ROI; where it is unusable the note says which way: the
    liver of the synthetic abdomen is found (no note), an image of air gives the whole image ("no liver was
    found", not "covers 100 %"), a given ROI elsewhere is not covered."""
    hu, liver, _ = abdomen()
    ras = np.diag([-2.0, -2.0, 5.0, 1.0])
    notes = []
    assert preprocess.statistics_roi(hu, ras, liver, notes) is not None and notes == []
    air = np.full(hu.shape, -1000.0, np.float32)
    box = np.zeros_like(liver)
    box[:, 16:48, 16:48] = True
    assert preprocess.statistics_roi(air, ras, box, notes) is None
    assert notes[-1].startswith("no liver was found automatically")
    elsewhere = np.zeros_like(liver)
    elsewhere[:, :8, :8] = True
    assert preprocess.statistics_roi(hu, ras, elsewhere, notes) is None
    assert notes[-1].startswith("the automatic liver ROI covers 0 % of the given ROI")


def test_too_thin_volumes_and_odd_spacing():
    with pytest.raises(InputError, match="slice"):
        preprocess.canonicalise(np.zeros((1, 64, 64), np.float32), RAS)
    notes = preprocess.spacing_warnings((1.0, 1.0, 1.0), (7, 512, 512))
    assert any("header" in n for n in notes)
    assert preprocess.spacing_warnings((0.7, 0.7, 5.0), (16, 512, 512)) == []
    assert preprocess.spacing_warnings((3.0, 3.0, 5.0), (16, 512, 512))


def test_centreline_scores_and_surface_distances_on_known_masks():
    ref = np.zeros((5, 40, 40), bool)
    ref[:, 18:22, 5:35] = True
    assert realdata.centreline_scores(ref, ref) == (1.0, 1.0)
    half = ref.copy()
    half[:, :, 20:] = False
    cl_dice, recall = realdata.centreline_scores(half, ref)
    assert 0.35 < recall < 0.65 and cl_dice < 1.0
    chamfer, hd95 = realdata.surface_distances(ref, ref, (1.0, 1.0, 1.0))
    assert chamfer == 0.0 and hd95 == 0.0
    shifted = np.roll(ref, 2, axis=1)
    chamfer, hd95 = realdata.surface_distances(shifted, ref, (1.0, 0.5, 0.5))
    assert 0.3 < chamfer <= 1.0 and hd95 == pytest.approx(1.0, abs=0.01)  # a 2-pixel (1 mm) shift


def test_volume_metrics_score_only_labelled_slices():
    ref = np.zeros((7, 32, 32), bool)
    ref[3, 10:14, 4:28] = True
    pred = np.zeros_like(ref)
    pred[:, 10:14, 4:28] = True  # also "wrong" on unlabelled slices
    case = realdata.RealCase("slab", np.zeros((7, 32, 32), np.float32), RAS, ref, RAS, np.ones_like(ref),
                             labelled_slices=np.array([3]))
    scores = realdata.volume_metrics(pred, case)
    assert scores["dice"] == 1.0 and scores["fragments"] == 1.0 and scores["hd95_mm"] == 0.0


def test_volume_metrics_report_the_vessel_volume_outside_the_liver():
    """Round 8: the in-liver scores hid vessels put outside the liver (bone, vena cava); a column shows them."""
    spacing = np.diag([0.5, 0.5, 2.0, 1.0])
    ref = np.zeros((6, 20, 20), bool)
    ref[:, 5:8, 5:8] = True
    liver = np.zeros_like(ref)
    liver[:, :, :10] = True
    pred = ref.copy()
    pred[:, 10:12, 12:17] = True   # 6 x 2 x 5 voxels of 0.5 mm³ outside the liver
    case = realdata.RealCase("c", np.zeros((6, 20, 20), np.float32), spacing, ref, spacing, liver)
    scores = realdata.volume_metrics(pred, case)
    assert scores["dice"] == 1.0 and scores["outside_cm3"] == pytest.approx(60 * 0.5 / 1000)
    assert "outside_cm3" in realdata.format_real_table({"lite": scores}).splitlines()[0]


def test_recall_by_radius_and_the_kept_slice_oracle_on_known_tubes():
    """Round 8: centreline recall per calibre (the reference's distance map at its skeleton), and the oracle that
    interpolates the reference of the kept slices (a straight tube through the slices is kept whole)."""
    fine = np.diag([0.5, 0.5, 1.0, 1.0])
    k, j, i = np.meshgrid(np.arange(9), np.arange(40), np.arange(40), indexing="ij")
    thick, thin = (j - 10) ** 2 + (i - 10) ** 2 <= 36, (j - 28) ** 2 + (i - 28) ** 2 <= 2
    sparse = fine.copy()
    sparse[2, 2] = 4.0
    case = realdata.RealCase("tubes", np.zeros((3, 40, 40), np.float32), sparse, thick | thin, fine,
                             np.ones(thick.shape, bool))
    bins = realdata.recall_by_radius(thick, case, edges=(1.0, 2.0))
    assert bins["r <= 1.0"][0] == 0.0 and bins["r > 2.0"][0] == 1.0 and bins["r <= 1.0"][1] > 0
    for mode in ("sdf", "mask"):
        np.testing.assert_array_equal(realdata.kept_slice_oracle(case, 4, mode), thick | thin)


def test_layout_detection(tmp_path):
    (tmp_path / "PATIENT_DICOM.tar.gz").write_bytes(b"")
    assert realdata.detect_layout(tmp_path) == "ircadb"
    with pytest.raises(InputError):
        realdata.detect_layout(tmp_path / "missing")


@pytest.mark.skipif(not LVSD.is_dir(), reason="../shared/samples/liver-ct-lvsd is not available")
def test_lvsd_slabs_beat_the_classical_baseline():
    from VesselReconLib.registry import load_model

    cases = realdata.read_lvsd(LVSD)
    assert len(cases) == 20 and cases[0].image.shape == (7, 512, 512)
    net, _ = load_model("vesselsdf", "lite", "cpu")
    table = realdata.evaluate_real(cases[::4], {"lite": net})
    assert table["lite"]["dice"] > 0.55
    assert table["lite"]["dice"] > table["classical"]["dice"] + 0.1


@pytest.mark.skipif(not IRCADB.is_dir(), reason="../shared/datasets/ircadb_1.7 is not available")
def test_ircadb_reader_sparse_setting():
    cases = realdata.read_ircadb(IRCADB)
    case = cases[0]
    assert case.image.shape == (51, 512, 512) and case.reference.shape == (151, 512, 512)
    assert case.ijk_to_ras[2, 2] == pytest.approx(3 * case.reference_ijk_to_ras[2, 2])
    assert case.roi.shape == case.image.shape and case.region.sum() > 1e6
    assert 0.03 < case.reference[case.region].mean() < 0.1


@pytest.fixture(scope="module")
def ircadb_case():
    if not IRCADB.is_dir():
        pytest.skip("../shared/datasets/ircadb_1.7 is not available")
    return realdata.read_ircadb(IRCADB)[0]


@pytest.fixture(scope="module")
def ircadb_scores(ircadb_case):
    """The shipped default on IRCADb 1.7 (every 3rd slice) with the reference liver ROI and with the
    automatic one, and Otsu in the liver (one network run each, shared by the tests below)."""
    from VesselReconLib.registry import load_model

    case = ircadb_case
    net, _ = load_model("vesselsdf", "lite", "cpu")
    return {"roi": realdata.volume_metrics(realdata.model_fine(net, case, case.roi)[0], case),
            "auto": realdata.volume_metrics(realdata.model_fine(net, case, None)[0], case),
            "otsu": realdata.volume_metrics(realdata.otsu_baseline(case, case.roi), case)}


def test_ircadb_sparse_setting_floor_with_the_liver_roi(ircadb_scores):
    ours, otsu, auto = ircadb_scores["roi"], ircadb_scores["otsu"], ircadb_scores["auto"]
    assert ours["dice"] >= 0.58 and ours["dice"] >= otsu["dice"] + 0.10  # release 5 (rounds 6, 7): 0.605
    assert ours["cl_recall"] >= 0.55 and ours["cldice"] >= 0.60  # release 5 (rounds 6, 7): 0.572 and 0.641
    assert ours["chamfer_mm"] < otsu["chamfer_mm"] and ours["hd95_mm"] < otsu["hd95_mm"]
    assert ours["fragments"] < otsu["fragments"]
    # the ROI never makes it worse (release 5: it changes only where the output is kept)
    for key in ("dice", "cldice", "cl_recall"):
        assert ours[key] >= auto[key] - 1e-9, key
    for key in ("chamfer_mm", "hd95_mm", "fragments"):
        assert ours[key] <= auto[key] + 1e-9, key


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="target missed: centreline recall with the liver ROI 0.572 (release 5, re-measured "
                   "in rounds 6-8; target >= 0.60; neither a clDice-fine-tuned refiner nor the "
                   "round-7 agreement-hinge ablation lite-agree7, 0.592, was kept; round 8: the true mask of "
                   "the kept slices, distance-interpolated, reaches only 0.634; the displacement-following "
                   "interpolation ablation lite-motion8: 0.570; round 9: the fine-grid skeleton-recall "
                   "fine-tune lite-skel9, 0.5998, failed its rule on validation phantoms and costs Dice; round 9b: "
                   "the same weights at level 0.125 mm, 0.587, vetoed: the ROI raised Chamfer and HD95, "
                   "Dice IRCADb -0.017 and LVSD -0.045 against the default; round 11 (lite 0.572 again): the "
                   "gap-filling interpolation ablation lite-gap11 reaches 0.615 but at Dice 0.589 (-0.016) and "
                   "held-out Chamfer +0.026 mm, vetoed; round 11b: the wall-term ablation lite-wall11, 0.538; "
                   "round 12 (lite 0.572 again): the wall term trained with arterial distractors, lite-artwall12, "
                   "0.572 at Dice 0.578, vetoed)")
def test_ircadb_centreline_recall_target_with_the_liver_roi(ircadb_scores):
    assert ircadb_scores["roi"]["cl_recall"] >= 0.60


@pytest.mark.slow
def test_ircadb_recall_ceiling_of_a_perfect_segmentation_of_the_kept_slices(ircadb_case):
    """Round 8: the true mask of the 51 kept slices, distance-interpolated as VesselSDF interpolates, reaches a
    centreline recall of only 0.634 (the 0.60 target is 95 % of it); interpolated as a mask, 0.761 at equal Dice."""
    case = ircadb_case
    sdf, mask = (realdata.kept_slice_oracle(case, 3, mode) for mode in ("sdf", "mask"))
    by_sdf, by_mask = realdata.volume_metrics(sdf, case), realdata.volume_metrics(mask, case)
    assert 0.62 <= by_sdf["cl_recall"] <= 0.65 and by_mask["cl_recall"] >= by_sdf["cl_recall"] + 0.1
    assert abs(by_mask["dice"] - by_sdf["dice"]) < 0.01 and by_sdf["dice"] > 0.75  # 0.783 vs 0.779
    bins = realdata.recall_by_radius(sdf, case)
    total = sum(n for _, n in bins.values())
    assert sum(r * n for r, n in bins.values()) / total == pytest.approx(by_sdf["cl_recall"], abs=1e-9)
    assert bins["r > 3.0"][0] == 1.0 and bins["1.0 < r <= 1.5"][0] < 0.5  # thin vessels vanish between slices


def test_roi_statistics_are_dequantised_and_trimmed():
    """Integer CT gives a continuous SD, and a loose ROI's other tissue moves it little."""
    rng = np.random.default_rng(1)
    liver = np.round(rng.normal(120, 9.3, 200_000))
    median, sigma = preprocess.roi_statistics(liver, np.ones(liver.shape, bool))
    assert median == pytest.approx(120, abs=0.2) and sigma == pytest.approx(9.3, rel=0.03)
    plain = 1.4826 * np.median(np.abs(liver - np.median(liver)))
    assert plain == pytest.approx(1.4826 * round(plain / 1.4826))  # the plain MAD of integers is quantised
    loose = np.concatenate([liver, np.round(rng.normal(40, 15, 40_000))])  # + 17 % muscle/bowel
    loose_median, loose_sigma = preprocess.roi_statistics(loose, np.ones(loose.shape, bool))
    plain_loose = 1.4826 * np.median(np.abs(loose - np.median(loose)))
    assert abs(loose_sigma / sigma - 1) < 0.5 * abs(plain_loose / plain - 1)


@pytest.mark.skipif(not LVSD.is_dir(), reason="../shared/samples/liver-ct-lvsd is not available")
def test_lvsd_distance_start_equals_occupancy_on_native_slices():
    """Why the LVSD rows of lite-dstart and lite-occ are identical (not an eval bug): on a native
    slice the occupancy's distance is at least half a pixel from 0, and dstart's correction never
    flips its sign, although the two fields differ."""
    from VesselReconLib.registry import load_model
    from VesselReconLib.vesselsdf.inference import predict_in_roi
    from VesselReconLib.vesselsdf.network import truncated_signed_distance

    case = realdata.read_lvsd(LVSD)[0]
    spacing = tuple(float(v) for v in np.linalg.norm(case.ijk_to_ras[:3, :3], axis=0))
    canonical = preprocess.canonicalise(case.image, case.ijk_to_ras)
    dstart = predict_in_roi(load_model("vesselsdf", "lite-dstart", "cpu")[0], canonical, "cpu", spacing)
    occ = predict_in_roi(load_model("vesselsdf", "lite-occ", "cpu")[0], canonical, "cpu", spacing)
    start = truncated_signed_distance(occ.occupancy > 0.5, spacing)
    assert np.abs(start).min() == pytest.approx(0.5)  # half of a 1 mm pixel
    assert np.abs(dstart.sdf - start)[canonical.roi].max() > 0.5  # the fields differ ...
    np.testing.assert_array_equal(dstart.mask(), occ.mask())  # ... their masks do not


def test_the_automatic_liver_roi_is_reported_with_its_volume_and_an_implausible_one_is_warned():
    """Round 8: without --roi the output is kept inside the automatic liver ROI, which on 3D-IRCADb-01 1.7
    reaches 446 cm³ beyond the liver; the run said nothing of it. Now a warning names it and its volume."""
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom

    spacing = (1.0, 1.0, 5.0)
    roi = np.zeros((20, 200, 200), bool)
    roi[:, :150, :100] = True   # 1.5 L
    (note,) = preprocess.auto_roi_notes(roi, spacing)
    assert "automatic (classical) liver ROI of 1500 cm³" in note and "--roi" in note
    roi[:, :, :] = False
    roi[:, :100, :20] = True    # 0.2 L
    assert "implausible" in preprocess.auto_roi_notes(roi, spacing)[1]
    assert "whole image" in preprocess.auto_roi_notes(np.ones((4, 8, 8), bool), spacing)[0]
    case = make_ct_phantom(CTPhantomParams(shape=(4, 40, 40), seed=3))
    canonical = preprocess.canonicalise(case.image, case.ijk_to_ras)
    assert canonical.roi_source.startswith("automatic") and any("(--roi)" in n for n in canonical.notes)
    assert not any("(--roi)" in n for n in preprocess.canonicalise(case.image, case.ijk_to_ras, case.organ > 0).notes)

"""The QCA calibrator (angio3d/calibrator.py, opt-in): its features read what they name on a synthetic two-view
lesion, its training learns a known correction, it goes through the registry, and its training cache holds what the
pipeline reads."""
import numpy as np
import pytest
import torch

from VesselReconLib import registry
from VesselReconLib.angio3d.calibrator import (FEATURES, QCACalibrator, cached_features, calibrate, case_features, fit, main,
                                               shipped_calibrator)
from VesselReconLib.angio3d.fusion import shipped_fusion
from VesselReconLib.angio3d.lumen import phantom_run
from VesselReconLib.angio3d.pipeline import flag_lesion_apart, own_view_qca


def two_views(depth_a: float, at_a: float, depth_b: float, at_b: float, mm_per_px: float = 0.2) -> list[dict]:
    """A straight 50 mm branch, 1.6 mm radius, with one Gaussian lesion per view (fractional depth, position mm)."""
    s = np.linspace(0, 50, 100)
    pixels = np.c_[np.linspace(20, 270, 100), np.full(100, 100.0)]
    points = np.c_[s, np.zeros(100), np.zeros(100)]
    return [{"pixels": pixels, "points": points, "a_index": np.arange(100, dtype=float), "mm_per_px": mm_per_px,
             "radii": 1.6 * (1 - depth * np.exp(-((s - at) / 3) ** 2)), "floored": np.zeros(100, bool)}
            for depth, at in ((depth_a, at_a), (depth_b, at_b))]


def features_of(own: list[dict], **flags) -> dict:
    qca = flag_lesion_apart(own_view_qca({"points": own[0]["points"], "own": own}))
    return dict(zip(FEATURES, case_features(own, {**qca, **flags})))


def test_calibrator_features_read_the_two_views_lesions():
    same = features_of(two_views(0.5, 25, 0.6, 25))
    assert same["p3_R"] == pytest.approx(60, abs=3) and same["p3_O"] == pytest.approx(50, abs=3)
    assert same["other_here"] == pytest.approx(same["p3_O"], abs=0.5) and same["apart_mm"] < 1
    assert same["refpx_R"] == pytest.approx(3.2 / 0.2, rel=0.02) and same["length_mm"] == pytest.approx(50)
    assert same["floored_R"] == 0 and same["path_off"] == 0 and same["noise_R"] == pytest.approx(0, abs=1e-3)
    apart = features_of(two_views(0.5, 35, 0.6, 25), path_off_vessel=True)
    assert apart["apart_mm"] == pytest.approx(10, abs=0.6) and apart["other_here"] < 5     # A is wide at B's lesion
    assert apart["width_R"] == apart["width_O"] and apart["path_off"] == 1     # same lesion shape, 5 mm at half depth
    flank = [100 * 0.6 * np.exp(-((k * 50 / 99) / 3) ** 2) for k in (6.5, 5.0)]   # about 6 samples from the MLD
    assert flank[0] < apart["second_R"] < flank[1]                              # the lesion's own flank
    own = two_views(0.5, 35, 0.6, 25)
    own[1]["radii"] = own[1]["radii"] * (1 - 0.3 * np.exp(-((np.linspace(0, 50, 100) - 40) / 1.5) ** 2))
    assert features_of(own)["second_R"] == pytest.approx(30, abs=3)            # a second, milder lesion in B


def test_calibrator_training_learns_a_correction_and_loads_through_the_registry(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, len(FEATURES)))
    reported = rng.uniform(30, 90, 400)
    truth = reported + 4.0 + 3.0 * (features[:, 0] > 0)          # the reading is 4 or 7 points low
    model = fit(features, reported, truth, epochs=40, members=2)
    correction = model.correct(features)
    assert np.abs(correction - (truth - reported)).mean() < 0.8
    path = tmp_path / "calibrator.safetensors"
    registry.save_model(model, path, "angio3d", "calibrator", {"width": 32, "members": 2})
    loaded = registry.load_model("angio3d", str(path))[0]
    assert isinstance(loaded, QCACalibrator)
    assert torch.equal(loaded.members[1][0].weight, model.members[1][0].weight)
    assert np.allclose(loaded.correct(features[:5]), correction[:5], atol=1e-5)


def test_calibrate_corrects_the_reading_and_skips_a_reading_it_cannot_use():
    """A calibrator that adds 5 points moves the % and the MLD and keeps the reading; a non-finite feature (here the
    segment length) leaves the reading as it is, with a warning naming the feature."""
    own = two_views(0.5, 25, 0.6, 25)
    qca = flag_lesion_apart(own_view_qca({"points": own[0]["points"], "own": own}))
    model = QCACalibrator(members=1)
    torch.nn.init.constant_(model.members[0][-1].bias, 5.0)
    out = calibrate(qca, own, model=model)
    assert out["percent_diameter_stenosis"] == pytest.approx(qca["percent_diameter_stenosis"] + 5)
    assert out["percent_diameter_stenosis_raw"] == qca["percent_diameter_stenosis"] and out["mld_mm_raw"] == qca["mld_mm"]
    assert out["mld_mm"] == pytest.approx(qca["reference_diameter_mm"] * (1 - out["percent_diameter_stenosis"] / 100))
    skipped = calibrate({**qca, "length_mm": float("nan")}, own, model=model)
    assert skipped["percent_diameter_stenosis"] == qca["percent_diameter_stenosis"] and "percent_calibration" not in skipped
    assert any("calibrator was skipped" in w and "length_mm" in w for w in skipped["warnings"])


def test_calibrate_leaves_a_reading_below_its_training_lesions_alone():
    """Round 15: the shipped calibrator learned from 30-90 % lesions and pulled milder ones towards 30 %; a reading
    below 30 % (here a 12 % narrowing) is reported as read, with a warning, while a 31 % one is corrected."""
    model = QCACalibrator(members=1)
    torch.nn.init.constant_(model.members[0][-1].bias, 20.0)
    for depth, applied in ((0.12, False), (0.31, True)):
        own = two_views(depth, 25, depth - 0.02, 25)
        qca = flag_lesion_apart(own_view_qca({"points": own[0]["points"], "own": own}))
        assert qca["percent_diameter_stenosis"] == pytest.approx(100 * depth, abs=1.5)
        out = calibrate(qca, own, model=model)
        assert ("percent_calibration" in out) is applied
        assert out["percent_diameter_stenosis"] == pytest.approx(qca["percent_diameter_stenosis"] + 20 * applied)
        assert any("not applied" in w and "30-90 %" in w for w in out["warnings"]) is not applied


def test_collected_cases_give_the_pipelines_calibrated_reading(tmp_path):
    """Round 15: ``calibrator --collect`` (the training cache, here of a lesion-free-to-mild phantom) holds what the
    pipeline reads: its features through the shipped fusion and calibrator give the % the pipeline reports when asked
    to calibrate the same phantom."""
    import pickle

    model = shipped_calibrator()
    if model is None:
        pytest.skip("the QCA calibrator is not installed")
    cache = tmp_path / "cache.pkl"
    threads = torch.get_num_threads()
    try:
        assert main(["--collect", "--seeds", "100002-100002", "--lesion-range", "0", "30", "--cache", str(cache)]) == 0
    finally:
        torch.set_num_threads(threads)                         # the command runs on one thread
    case = pickle.loads(cache.read_bytes())[0]                 # a 3 % lesion read as 36 %
    net = registry.load_model("angio3d", "angio3d-lite", "cpu")[0]
    assert case["seed"] == 100002 and 0 <= case["truth"] <= 30 and case["lesion_range"] == (0, 30)
    assert len(case["views"]) == 2
    features, reported = cached_features([case], shipped_fusion())      # equal up to the thread count's rounding
    assert reported[0] == pytest.approx(case["qca"]["percent_diameter_stenosis"], abs=1e-3)
    qca = phantom_run(100002, net, (0, 30), qca_calibration=True)[2].qca
    assert qca["percent_diameter_stenosis_raw"] == pytest.approx(reported[0], abs=1e-3)
    assert qca["percent_diameter_stenosis"] == pytest.approx(reported[0] + model.correct(features)[0], abs=1e-3)

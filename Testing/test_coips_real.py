"""COIPS on real scans: FAZ selection and flags, slab pairs, unsuitable images, field-of-view reporting,
the degradation series (real OCTAGON scans when ../shared is present, phantoms otherwise) and real FAZ floors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from VesselReconLib.coips.degradations import KINDS, SERIES_SEVERITIES, degrade, grade_for_severity, series
from VesselReconLib.coips.faz import faz_flags, faz_metrics, select_faz, unsuitable_reason
from VesselReconLib.coips.pairs import pair_key, propagate_pair_grades, slab_of

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OCTAGON = SHARED / "samples" / "octa-octagon"


def _disk(size, radius, centre):
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


@pytest.fixture(scope="module")
def networks():
    from VesselReconLib import registry

    return (registry.load_model("coips", "lite", "cpu")[0], registry.load_model("coips", "faz-lite", "cpu")[0])


# ---------------------------------------------------------------- FAZ selection and flags


def test_faz_selection_keeps_the_central_component_not_the_largest_and_flags_bad_shapes():
    size, fov = 320, 6.0
    band = np.zeros((size, size), bool)
    band[100:118, :] = True                                  # a motion band: 1.2 mm^2, axis ratio ~18
    fovea = _disk(size, 18, (170, 168))                       # the real FAZ, 0.36 mm^2, just off the centre
    chosen = select_faz(band | fovea, fov)
    assert np.array_equal(chosen, fovea)
    band_metrics = faz_metrics(band, fov)
    assert band_metrics["faz_area_mm2"] > faz_metrics(fovea, fov)["faz_area_mm2"]
    flags = faz_flags(band_metrics)
    assert any("axis ratio" in f for f in flags) and any("circularity" in f for f in flags)
    assert faz_flags(faz_metrics(fovea, fov)) == []
    assert any("area" in f for f in faz_flags(faz_metrics(_disk(size, 3, (160, 160)), fov)))   # 0.004 mm^2
    # a band through the centre with no plausible alternative is kept, and flagged by the caller
    through = np.zeros((size, size), bool)
    through[150:168, :] = True
    assert np.array_equal(select_faz(through, fov), through) and faz_flags(faz_metrics(through, fov))


def test_unsuitable_images_are_named():
    assert "non-square" in unsuitable_reason(300, 900, None)
    assert "wide-field" in unsuitable_reason(320, 320, 12.0)
    assert unsuitable_reason(320, 320, 3.0) == unsuitable_reason(304, 304, 6.0) == ""


# ---------------------------------------------------------------- slab pairs


def test_slab_tokens_and_pair_propagation():
    assert slab_of("octagon_angio3superf.tif") == "superficial" and slab_of("octagon_angio6prof.tif") == "deep"
    assert slab_of("p7_SVP.png") == "superficial" and slab_of("p7_deep.png") == "deep" and slab_of("deeper.png") == ""
    assert pair_key("a/octagon_angio3superf.tif") == pair_key("a/octagon_angio3prof.tif") != pair_key("b/octagon_angio3prof.tif")
    rows = [{"image": "s1_superficial.png", "status": "ok", "grade": "ungradable"},
            {"image": "s1_deep.png", "status": "ok", "grade": "outstanding", "faz_centre_x": 0.5, "faz_centre_y": 0.5},
            {"image": "s2_superficial.png", "status": "ok", "grade": "gradable", "faz_centre_x": 0.3, "faz_centre_y": 0.5},
            {"image": "s2_deep.png", "status": "ok", "grade": "outstanding", "faz_centre_x": 0.5, "faz_centre_y": 0.5},
            {"image": "lone_deep.png", "status": "ok", "grade": "gradable"}]
    changed = propagate_pair_grades(rows)
    assert [r["image"] for r in changed] == ["s1_deep.png"]
    assert rows[1]["grade"] == "ungradable" and rows[1]["grade_own"] == "outstanding"
    assert rows[1]["grade_source"] == "paired superficial s1_superficial.png"
    assert rows[3]["grade"] == "outstanding" and "not one scan" in rows[3]["grade_source"]
    assert rows[4]["grade"] == "gradable" and rows[4]["grade_source"] == "own"


# ---------------------------------------------------------------- degradations


def test_degradations_grow_with_severity():
    from VesselReconLib.phantoms.octa import render_octa

    pixels = render_octa(5, 160, 3.0).image
    detail = [np.abs(np.diff(degrade(pixels, "blur", s), axis=1)).mean() for s in SERIES_SEVERITIES]
    assert all(b < a for a, b in zip(detail, detail[1:]))
    signal = [np.corrcoef(pixels.ravel(), degrade(pixels, "low_signal", s, seed=1).ravel())[0, 1]
              for s in SERIES_SEVERITIES]
    assert all(b < a for a, b in zip(signal, signal[1:]))
    moved = series(pixels, "decentration", seed=2)
    assert np.array_equal(moved[0], pixels.astype(np.float32)) and min(m.min() for m in moved) >= 0
    assert all((m > 0.02).mean() > 0.5 * (pixels > 0.02).mean() for m in moved)  # no empty border
    assert [grade_for_severity(s) for s in SERIES_SEVERITIES] == [2, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError):
        degrade(pixels, "rain", 0.5)


def _series_images() -> dict[str, np.ndarray]:
    """The OCTAGON scans when ../shared is present, else clean phantoms of both fields."""
    if OCTAGON.is_dir():
        from VesselReconLib.coips.realeval import octagon_images

        return octagon_images(OCTAGON)
    from VesselReconLib.phantoms.octa import render_octa

    return {f"phantom_{fov:g}mm": render_octa(40 + i, 320, fov).image for i, fov in enumerate((3.0, 6.0))}


@pytest.fixture(scope="module")
def series_rows(networks):
    from VesselReconLib.coips.realeval import degradation_series

    return degradation_series(networks[0], _series_images())


def test_degradation_series_ends_ungradable_for_every_kind(series_rows):
    assert len(series_rows) == len(_series_images()) * len(KINDS)
    assert not [(r["image"], r["kind"], r["grades"]) for r in series_rows if not r["worst_ungradable"]]


@pytest.mark.xfail(not OCTAGON.is_dir(), strict=True,
                   reason="missed on the phantom fallback (no ../shared): 6/8 phantom series monotone, both low-signal "
                          "series rise (3 mm [1, 1, 2, 1, 0, 0], 6 mm [1, 1, 1, 2, 0, 0]; gate on or off alike; "
                          "measured in the round-6 review, 22:00 UTC)")
def test_degradation_series_never_raises_the_grade(series_rows):
    """Round 6: 16/16 OCTAGON series monotone (the motion-band gate on the rows' mean keeps the 6 mm deep
    scan ungradable under mild blur; round 5: 15/16; without the gate the 6 mm deep blur series reads
    [0, 1, 1, 0, 0, 0] and this fails)."""
    assert not [(r["image"], r["kind"], r["grades"]) for r in series_rows if not r["monotone"]]


ROSSA_TEST = SHARED / "datasets" / "rossa" / "test"


@pytest.mark.skipif(not ROSSA_TEST.is_dir(), reason="needs ../shared/datasets/rossa")
def test_grader_on_held_out_real_rossa_images(networks):
    """ROSSA test images (neither trained nor calibrated on): clean ones are gradable or better, their
    series end ungradable and almost never rise (floors below the measured 94/100 not ungradable, 397/400,
    384/400 with the round-6 gate)."""
    from VesselReconLib.coips.realeval import rossa_grades

    result = rossa_grades(networks[0], ROSSA_TEST, limit=12)
    assert result["clean_grades"][0] <= 2, result
    assert result["series_worst_ungradable"] >= 0.85 and result["series_monotone"] >= 0.8, result


@pytest.mark.skipif(not OCTAGON.is_dir(), reason="needs ../shared/samples/octa-octagon")
def test_octagon_scans_without_artefact_are_gradable(networks):
    """Round 4 (spectral canonicalisation + joint calibration): the three OCTAGON scans without a visible
    artefact (3 mm superficial and deep, 6 mm superficial) are graded gradable or outstanding."""
    from VesselReconLib.coips.realeval import MOTION_BAND_SCAN, scan_rows

    rows = [r for r in scan_rows(*networks, OCTAGON) if r["scan"] != MOTION_BAND_SCAN]
    assert len(rows) == 3
    assert not [(r["scan"], r["grade"]) for r in rows if r["grade"] == "ungradable"]


@pytest.mark.xfail(reason="missed target (VesselRecon/COIPS/README.md): the 6 mm deep scan (with its motion band) is "
                          "graded ungradable; the other three are gradable or outstanding", strict=True)
@pytest.mark.skipif(not OCTAGON.is_dir(), reason="needs ../shared/samples/octa-octagon")
def test_clean_octagon_scans_are_not_ungradable(networks):
    """All four OCTAGON scans (superficial and deep, 3 and 6 mm) after the slab-pair rule, as the
    evaluation grades them; the 6 mm deep slab with its motion band must also stay below outstanding."""
    from VesselReconLib.coips.realeval import MOTION_BAND_SCAN, scan_rows

    rows = scan_rows(*networks, OCTAGON)
    assert len(rows) == 4
    assert not [(r["scan"], r["grade"], r["grade_source"]) for r in rows if r["grade"] == "ungradable"]
    assert {r["scan"]: r["grade"] for r in rows}[MOTION_BAND_SCAN] != "outstanding"


def test_slab_pair_rule_of_the_real_evaluation():
    """scan_rows applies the batch pipeline's pair rule: a deep scan takes its superficial partner's grade
    when the FAZ centres agree, and keeps its own (saying why) when they do not."""
    rows = [{"image": "eye_superf.tif", "status": "ok", "grade": "gradable", "faz_centre_x": 0.5, "faz_centre_y": 0.5},
            {"image": "eye_prof.tif", "status": "ok", "grade": "ungradable", "faz_centre_x": 0.51, "faz_centre_y": 0.5},
            {"image": "other_superf.tif", "status": "ok", "grade": "gradable", "faz_centre_x": 0.5, "faz_centre_y": 0.5},
            {"image": "other_prof.tif", "status": "ok", "grade": "ungradable", "faz_centre_x": 0.6, "faz_centre_y": 0.6}]
    propagate_pair_grades(rows)
    assert rows[1]["grade"] == "gradable" and rows[1]["grade_own"] == "ungradable"
    assert rows[3]["grade"] == "ungradable" and "not one scan" in rows[3]["grade_source"]


# ---------------------------------------------------------------- calibration and position


def test_calibration_folds_offsets_and_temperature_into_the_head():
    from VesselReconLib.coips.calibration import CalibrationSet, fit_offsets, fold_into_head, objective
    from VesselReconLib.coips.network import build_model

    torch.manual_seed(0)
    model = build_model("lite").eval()
    x = torch.rand(4, 1, 128, 128)
    with torch.no_grad():
        before = model(x)
    offsets = np.array([0.0, 0.5, -0.25], np.float32)
    fold_into_head(model, offsets, 2.0)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, (before + torch.from_numpy(offsets)) / 2.0, atol=1e-4)
    # series logits that rise with mild severity unless the outstanding offset lifts the clean image
    logits = np.zeros((2, len(KINDS), len(SERIES_SEVERITIES), 3), np.float32)
    logits[..., 0, :] = [0.0, 0.0, -0.5]                    # clean: ungradable by a hair (tie -> 0)
    logits[..., 1:3, 1] = 1.0                              # mild: gradable
    logits[..., 3:, 0] = 2.0                               # severe: ungradable
    calibration = CalibrationSet(["a", "b"], logits)
    assert objective(calibration, np.zeros(3))["monotone"] == 0.0
    fitted, result = fit_offsets(calibration)
    assert result["monotone"] == 1.0 and result["worst_ungradable"] == 1.0 and fitted[2] > 0.5
    # round 4: the phantom validation F1 joins the objective; phantoms whose outstanding images score 0.9
    # below gradable are called gradable under the ROSSA-only offsets; the joint fit lifts the outstanding
    # offset as far as the ROSSA series allow (their mild images stay gradable, ties go to the first class)
    phantom_labels = np.array([1, 2, 2, 0])
    phantom_logits = np.array([[0, 1, -2], [0, 1, 0.1], [0, 1, 0.1], [2, 0, 0]], np.float32)
    joint, joint_result = fit_offsets(calibration, phantom_labels, phantom_logits)
    assert (phantom_logits + fitted).argmax(1)[1] == 1                       # ROSSA-only: outstanding missed
    assert joint[2] - joint[1] > 0.9 and joint_result["phantom_macro_f1"] == 1.0
    assert joint_result["score"] == result["score"]                        # at no cost on the ROSSA series


def test_coordinate_channels_let_the_grader_see_position():
    from VesselReconLib.coips.network import build_model, coordinates

    grid = coordinates(torch.zeros(2, 1, 5, 7))
    assert grid.shape == (2, 2, 5, 7) and grid[0, 0, 0, 0] == -1 and grid[0, 1, 0, -1] == 1
    model = build_model("lite")
    assert model.coord_channels and model.backbone.conv1[0].in_channels == 3
    assert not build_model("paper-6mm").coord_channels


def test_boundary_refinement_redraws_a_loose_mask_on_the_image():
    from VesselReconLib.coips.faz import refine_faz

    size, pixel_mm = 200, 3.0 / 200
    truth = _disk(size, 30, (100, 100))
    rng = np.random.default_rng(0)
    image = np.where(truth, 0.05, 0.6) + rng.normal(0, 0.03, (size, size))
    loose = _disk(size, 34, (101, 99))
    refined = refine_faz(loose, image, pixel_mm)
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(refined, truth) > dice(loose, truth) and dice(refined, truth) > 0.97
    assert not refine_faz(np.zeros_like(truth), image, pixel_mm).any()


def test_uncertain_band_is_decided_by_the_image():
    from VesselReconLib.coips.faz import redecide_uncertain_band

    size, pixel_mm = 200, 3.0 / 200
    truth = _disk(size, 30, (100, 100))
    rng = np.random.default_rng(0)
    image = np.where(truth, 0.05, 0.6) + rng.normal(0, 0.03, (size, size))
    rows, cols = np.mgrid[:size, :size]
    margin = 0.5 * (33 - np.hypot(rows - 101, cols - 99))     # a loose U-Net: sure inside r 29, unsure to r 37
    loose = margin > 0
    band = redecide_uncertain_band(margin, image, pixel_mm)
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(band, truth) > dice(loose, truth) + 0.02 and dice(band, truth) > 0.97
    assert band[margin >= 2].all() and not band[margin <= -2].any()   # only the uncertain band changes
    unsure = np.clip(margin, -1, 1)                              # no confident FAZ: the sign of the margin
    assert (redecide_uncertain_band(unsure, image, pixel_mm) == (unsure > 0)).all()


# ---------------------------------------------------------------- real FAZ and the motion-band scan


@pytest.mark.skipif(not OCTAGON.is_dir(), reason="needs ../shared/samples/octa-octagon")
def test_real_octagon_faz_and_motion_band_scan(networks):
    from VesselReconLib.coips.realeval import MOTION_BAND_SCAN, faz_rows, scan_rows

    rows = {(r["scan"], r["method"]): r for r in faz_rows(networks[1], OCTAGON)}
    for scan in ("octagon_angio3superf.tif", "octagon_angio6superf.tif"):
        ours, classical = rows[(scan, "unet")], rows[(scan, "classical")]
        assert ours["dice"] >= 0.88 and abs(ours["area_error_pct"]) <= 12.0, ours   # floors, not the target
        assert ours["dice"] > classical["dice"]
    band = {r["scan"]: r for r in scan_rows(*networks, OCTAGON)}[MOTION_BAND_SCAN]
    assert band["grade"] != "outstanding"
    assert band["faz_area_mm2"] < 0.6 or band["faz_flags"] or math.isnan(band["faz_area_mm2"])
    from VesselReconLib.coips.evaluation import faz_method_masks
    from VesselReconLib.coips.faz import faz_metrics
    from VesselReconLib.enface_io import read_image

    image = read_image(OCTAGON / MOTION_BAND_SCAN)
    forced = faz_metrics(faz_method_masks(networks[1], image.pixels, 6.0, "cpu")["unet"], 6.0)
    assert forced["faz_area_mm2"] < 0.6 and forced["faz_axis_ratio"] < 3   # the FAZ, not the motion band


@pytest.mark.xfail(reason="missed target (VesselRecon/COIPS/README.md): FAZ Dice >= 0.92 and area error <= 5 % "
                          "on both OCTAGON scans; measured 0.904 / 0.890, +9.5 % / -5.1 % (round 7)", strict=True)
@pytest.mark.skipif(not OCTAGON.is_dir(), reason="needs ../shared/samples/octa-octagon")
def test_real_octagon_faz_target(networks):
    from VesselReconLib.coips.realeval import faz_rows

    for row in faz_rows(networks[1], OCTAGON):
        if row["method"] == "unet":
            assert row["dice"] >= 0.92 and abs(row["area_error_pct"]) <= 5.0, row


@pytest.mark.skipif(not OCTAGON.is_dir(), reason="needs ../shared/samples/octa-octagon")
def test_no_threshold_of_the_faz_network_reaches_the_target_dice(networks):
    """Round 13's ceiling: even the margin threshold chosen per scan on the device's own mask gives Dice 0.912 (3 mm,
    margin +1.0) and 0.897 (6 mm, margin -1.75), below 0.92, with the best thresholds on opposite sides of 0."""
    from VesselReconLib.coips.realeval import faz_ceiling, faz_rows

    ceiling = {r["scan"]: r for r in faz_ceiling(networks[1], OCTAGON)}
    shipped = {r["scan"]: r["dice"] for r in faz_rows(networks[1], OCTAGON) if r["method"] == "unet"}
    for scan, row in ceiling.items():
        assert shipped[scan] <= row["best_dice"] < 0.92, (scan, row)   # the sweep includes the shipped margin 0
    assert ceiling["octagon_angio3superf.tif"]["best_threshold"] > 0 > ceiling["octagon_angio6superf.tif"]["best_threshold"]


# ---------------------------------------------------------------- batch: fields of view, unsuitable, pairs


def test_batch_reports_fov_sources_unsuitable_images_and_pairs(networks, tmp_path):
    from PIL import Image

    from VesselReconLib.coips.batch import run_batch
    from VesselReconLib.coips.config import CoipsConfig
    from VesselReconLib.phantoms.octa import render_octa

    study = tmp_path / "study"
    study.mkdir()
    # fixed seeds (str hashes change from run to run); the two slabs of eye1 share one scan's FAZ
    for name, seed, fov in (("eye1_3x3_superf.png", 11, 3.0), ("eye1_3x3_deep.png", 11, 3.0),
                            ("angio6prof.png", 12, 6.0), ("plain.png", 13, 6.0)):
        Image.fromarray((render_octa(seed, 160, fov).image * 255).astype(np.uint8)).save(study / name)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 300), dtype=np.uint8)).save(study / "web_3x3.png")
    config = CoipsConfig(input=str(study), output=str(tmp_path / "out"), device="cpu", num_workers=0,
                         field_of_view_per_file={"plain.png": 6})
    result = run_batch(config, *networks)
    rows = {r["image"]: r for r in result.rows}
    assert rows["plain.png"]["fov_source"] == "config" and rows["angio6prof.png"]["fov_source"] == "filename"
    assert rows["angio6prof.png"]["field_of_view_mm"] == 6.0
    assert rows["web_3x3.png"]["status"] == "unsuitable" and "non-square" in rows["web_3x3.png"]["error"]
    assert not rows["web_3x3.png"]["faz_segmented"] and rows["web_3x3.png"]["grade"] == ""
    deep = rows["eye1_3x3_deep.png"]
    assert deep["grade"] == rows["eye1_3x3_superf.png"]["grade"]
    assert deep["grade_source"] == "paired superficial eye1_3x3_superf.png"
    csv_text, page = result.csv_path.read_text(), result.html_path.read_text()
    assert "fov_source" in csv_text.splitlines()[0] and ",filename," in csv_text and ",config," in csv_text
    assert "fov_source" in page and "By slab and field" in page and "unsuitable" in page
    p = [float(v) for line in csv_text.splitlines()[1:] for v in line.split(",")[3:6] if v]
    assert all(len(f"{v}".split(".")[-1]) <= 3 for v in p)
    assert result.summary["unsuitable"] == 1 and result.summary["groups"]


def test_widget_field_of_view_choice():
    from VesselReconLib.coips.logic import fov_choice
    from VesselReconLib.errors import InputError

    assert fov_choice("auto (from the image)") is None and fov_choice(None) is None
    assert fov_choice("3 mm") == 3.0 and fov_choice("6") == 6.0 and fov_choice(6) == 6.0
    with pytest.raises(InputError):
        fov_choice("0 mm")


# ---------------------------------------------------------------- ranking loss, pairs, deep-slab look


def test_ranking_loss_penalises_only_a_degraded_copy_that_scores_higher():
    from VesselReconLib.coips.losses import expected_grade, ranking_loss

    good, bad = torch.tensor([0.0, 0.0, 6.0]), torch.tensor([6.0, 0.0, 0.0])
    assert expected_grade(good[None]).item() == pytest.approx(2.0, abs=0.01)
    ordered, raised = torch.stack([good, bad])[None], torch.stack([bad, good])[None]
    assert ranking_loss(ordered, 0.05, torch.tensor([[2, 0]])).item() == 0.0
    assert ranking_loss(raised, 0.05, torch.tensor([[2, 0]])).item() > 1.9
    same = torch.stack([bad, bad])[None]          # equal labels: no margin, equal scores cost nothing
    assert ranking_loss(same, 0.05, torch.tensor([[0, 0]])).item() == 0.0


def test_pair_dataset_gives_two_severities_of_one_source_with_falling_labels(tmp_path):
    from PIL import Image

    from VesselReconLib.coips.data import QualityDataset, QualitySample
    from VesselReconLib.phantoms.octa import render_octa

    path = tmp_path / "src.png"
    Image.fromarray((render_octa(3, 160, 3.0).image * 255).astype(np.uint8)).save(path)
    dataset = QualityDataset([QualitySample(path, 2)], 64, train=True, degrade=0.7, pairs=True, composite=0.5)
    for _ in range(12):
        images, labels = dataset[0]
        assert images.shape == (2, 64, 64) and labels.shape == (2,)
        assert labels[1] <= labels[0]


def test_deep_slab_look_fills_the_large_vessels_with_capillary_texture():
    from VesselReconLib.coips.data import remove_large_vessels

    rng = np.random.default_rng(0)
    texture = rng.uniform(0.1, 0.4, (96, 96)).astype(np.float32)
    vessels = np.zeros((96, 96), bool)
    vessels[40:46, :] = True
    image = np.where(vessels, 1.0, texture).astype(np.float32)
    out = remove_large_vessels(image, vessels, np.random.default_rng(1))
    assert out[vessels].max() <= 0.4 + 1e-6 and abs(out[vessels].mean() - texture.mean()) < 0.05
    assert np.array_equal(out[:30], image[:30])


def test_outline_smoothing_keeps_a_disk_and_removes_a_thin_lobe():
    """Round 4's shape rules (ablations): a digital disk survives both; a thin lobe is removed by the opening
    and shrunk by the Fourier outline."""
    from skimage.draw import disk, rectangle

    from VesselReconLib.coips.faz import fourier_smooth_faz, open_faz

    mask = np.zeros((121, 121), bool)
    mask[disk((60, 60), 20)] = True
    for smoothed in (open_faz(mask, 0.3), fourier_smooth_faz(mask, 8)):
        dice = 2 * (smoothed & mask).sum() / (smoothed.sum() + mask.sum())
        assert dice > 0.98
    lobed = mask.copy()
    lobed[rectangle((58, 78), end=(61, 105))] = True          # a 4-px wide, 27-px long lobe
    opened = open_faz(lobed, 0.3)
    assert not opened[59, 100] and opened[60, 60] and abs(int(opened.sum()) - int(mask.sum())) < 0.03 * mask.sum()
    assert fourier_smooth_faz(lobed, 4)[59:61, 95:].sum() == 0


def test_spectral_canonicalisation_only_low_passes_images_finer_than_the_reference():
    """Images above the reference fine-to-mid power ratio are low-passed down to it; smoother ones untouched."""
    from VesselReconLib.coips.network import gaussian_blur, image_fine_ratio, spectral_canonical

    generator = torch.Generator().manual_seed(0)
    smooth = gaussian_blur(torch.rand(1, 1, 128, 128, generator=generator), 1.5)
    noisy = smooth + 0.05 * torch.randn(1, 1, 128, 128, generator=generator)
    x = torch.cat([smooth, noisy])
    ratios = image_fine_ratio(x)
    reference = float(ratios[0] * 2)
    assert ratios[1] > reference                               # the noisy one is finer than the reference
    out = spectral_canonical(x, reference)
    assert torch.allclose(out[0], x[0], atol=1e-5)             # smoother image unchanged
    after = float(image_fine_ratio(out[1:])[0])
    assert after <= reference and after > 0.5 * reference     # brought down to about the reference
    assert torch.allclose(out[1].mean(), x[1].mean(), atol=1e-4)


def _banded(band_rows=(60, 68), depth=0.9, seed=0):
    """A 128-px OCTA-like texture (bright vessels on a dark floor) with a dark horizontal band."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    image = 0.3 + 0.5 * (ndimage.gaussian_filter(rng.random((128, 128)), 1.0) > 0.56) + 0.05 * rng.random((128, 128))
    image[band_rows[0]:band_rows[1]] *= 1 - depth
    return torch.from_numpy(image.astype(np.float32))[None, None]


def test_motion_band_score_sees_tall_dark_bands_also_blurred_not_thin_lines_or_the_faz():
    from VesselReconLib.coips.network import gaussian_blur, motion_band_score

    band = _banded()
    assert float(motion_band_score(band)[0]) == pytest.approx(0.9, abs=0.08)
    assert float(motion_band_score(gaussian_blur(band, 1.5))[0]) > 0.75          # blur-robust for a tall band
    thin = _banded(band_rows=(60, 62))                                              # 2 rows: a line, not a band
    assert float(motion_band_score(thin)[0]) < 0.3
    faz = _banded(depth=0.0)
    yy, xx = np.mgrid[:128, :128]
    faz[0, 0][torch.from_numpy((yy - 64) ** 2 + (xx - 64) ** 2 < 14 ** 2)] = 0.05   # a dark central FAZ
    assert float(motion_band_score(faz)[0]) < 0.3


def test_mean_motion_band_score_keeps_a_band_under_a_blur_along_the_rows_the_median_does_not():
    """Round 6: in a band where the flow signal is lost (the capillaries dim, the background floor stays)
    the row mean drops whether or not a blur spreads the capillaries along the rows; the row median, which
    sits on the background, misses the sharp band and sees the blurred one."""
    from VesselReconLib.coips.network import motion_band_score

    rng = np.random.default_rng(1)
    image = np.where(rng.random((128, 128)) < 0.2, 1.0, 0.1).astype(np.float32)     # sparse bright capillaries
    image[50:60] = np.minimum(image[50:60], 0.3)                                      # band: capillaries dimmed
    band = torch.from_numpy(image)[None, None]
    along_rows = sum(torch.roll(band, shift, dims=-1) for shift in range(-3, 4)) / 7   # circular: row means kept
    mean_clean, mean_blurred = (float(motion_band_score(x, "mean")[0]) for x in (band, along_rows))
    assert mean_clean > 0.4 and mean_blurred == pytest.approx(mean_clean, abs=1e-5)
    median_clean, median_blurred = (float(motion_band_score(x, "median")[0]) for x in (band, along_rows))
    assert median_clean < 0.05 < 0.3 < median_blurred


def test_the_shipped_grader_file_grades_with_the_settings_of_its_registry_entry(networks):
    """Loading the .safetensors by path (its metadata) and by preset (the registry entry) give one grader:
    the same input settings and the same motion-band gate."""
    from VesselReconLib import registry

    by_path = registry.load_model("coips", str(registry.find_entry("coips", "lite").path), "cpu")[0]
    for key in ("canonical_fine_ratio", "motion_band_threshold", "motion_band_statistic"):
        assert getattr(by_path, key) == getattr(networks[0], key), key


def test_a_misspelt_motion_band_statistic_is_refused_when_the_grader_is_built():
    from VesselReconLib.coips.network import build_model
    from VesselReconLib.errors import CheckpointError

    for statistic in ("Mean", 0.75):   # 0.75: round 5's quantile candidate, no longer a statistic
        with pytest.raises(CheckpointError, match="motion_band_statistic must be one of 'median', 'mean'"):
            build_model("lite", motion_band_statistic=statistic)


def test_motion_band_gate_grades_a_banded_image_ungradable_only_at_inference():
    from VesselReconLib.coips.network import build_model

    torch.manual_seed(0)
    net = build_model("lite").eval()
    x = torch.cat([_banded(), _banded(depth=0.0)])
    with torch.no_grad():
        plain = net(x)
        net.motion_band_threshold = 0.6
        gated = net(x)
        assert torch.softmax(gated, 1)[0, 0] > 0.99 and torch.equal(gated[1], plain[1])
        net.train()
        assert torch.allclose(net(x[:1]), net(x[:1]))                              # no gate while training
    assert torch.allclose(plain[0, 0], gated[0, 0])


def test_fused_channels_last_classifier_matches_the_network():
    """The batch runs the classifier with its batch norms folded into the convolutions, channels-last."""
    from VesselReconLib.coips.network import build_model, fused_for_inference

    torch.manual_seed(0)
    net = build_model("lite", canonical_fine_ratio=0.1174, motion_band_threshold=0.6).eval()
    with torch.no_grad():   # give the batch norms non-trivial statistics
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    fused = fused_for_inference(net, channels_last=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.cat([_banded(), torch.rand(3, 1, 128, 128)])
    with torch.no_grad():
        assert torch.allclose(fused(x), net(x), atol=1e-4)


def test_faz_metrics_match_regionprops():
    from scipy import ndimage
    from skimage.measure import regionprops

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = ndimage.gaussian_filter(rng.random((40, 50)), rng.uniform(1, 5)) > 0.5
        if not mask.any():
            continue
        region = regionprops(mask.astype(np.uint8))[0]
        metrics = faz_metrics(mask, 3.0)
        assert metrics["faz_perimeter_mm"] == pytest.approx(region.perimeter_crofton * 3.0 / 50, rel=1e-12)
        if region.axis_minor_length > 0:
            assert metrics["faz_axis_ratio"] == pytest.approx(region.axis_major_length / region.axis_minor_length, rel=1e-9)

"""Angio3D Logic on the headless scene, shipped weights against the classical baseline, CLI, GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from VesselReconLib import mrml, registry
from VesselReconLib.angio3d.logic import LPS_TO_RAS, Angio3DLogic
from VesselReconLib.errors import CheckpointError, InputError

HELD_OUT_SEEDS = (9001, 9002)        # never used for training (training data: seeds 1 and 2)


def scene_state(scene):
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


@pytest.fixture(scope="module")
def processed():
    from VesselReconLib import runtime

    scene = runtime.private_scene()   # not the global scene, which the CLI test here clears
    logic = Angio3DLogic(scene)
    sample = logic.load_sample(seed=HELD_OUT_SEEDS[0])
    result = logic.process(sample.viewA, sample.viewB, sample.pointsA, sample.pointsB, device="cpu")
    return scene, logic, sample, result


def test_outputs_are_placed_in_patient_space(processed):
    scene, logic, sample, result = processed
    from VesselReconLib import meshes
    from VesselReconLib.phantoms.xray import make_case

    case = make_case(HELD_OUT_SEEDS[0])
    mesh = result.outputModel.GetPolyData()
    assert meshes.is_watertight(mesh)
    lps = meshes.points_of(mesh) * np.array([-1, -1, 1])
    truth = np.concatenate([c["points"] for c in case["centerlines"]])
    from scipy.spatial import cKDTree

    # every mesh point lies near the true centreline, within a vessel radius plus the reconstruction error
    assert np.percentile(cKDTree(truth).query(lps)[0], 95) < 4.0
    # the curve carries the radius measurement and follows the true main centreline
    curve_points = np.array([result.outputCenterline.GetNthControlPointPositionWorld(i)
                             for i in range(result.outputCenterline.GetNumberOfControlPoints())])
    assert len(curve_points) == 100 and mrml.curve_radii(result.outputCenterline).shape == (100,)
    assert np.median(cKDTree(case["centerlines"][0]["points"]).query(curve_points * [-1, -1, 1])[0]) < 1.5
    # the reprojection shares the view's IJK-to-RAS and overlaps the true SOI mask
    rep, rep_matrix = mrml.volume_to_array(result.outputReprojectionA)
    _, view_matrix = mrml.volume_to_array(sample.viewA)
    np.testing.assert_allclose(rep_matrix, view_matrix)
    from VesselReconLib import metrics

    assert metrics.dice(rep[0] > 0, case["views"][0]["soi"] > 0) > 0.5
    # the view volume sits on the detector plane: the isocentre projects onto the principal point
    geometry = case["geometries"][0]
    ijk = np.linalg.inv(view_matrix) @ LPS_TO_RAS @ np.r_[geometry.source + geometry.sid * geometry.direction, 1]
    np.testing.assert_allclose(ijk[:2], [(geometry.columns - 1) / 2, (geometry.rows - 1) / 2], atol=1e-6)


def test_qca_table_and_evaluation(processed):
    scene, logic, sample, result = processed
    rows = mrml.table_to_rows(result.outputTable)
    assert [r["branch"] for r in rows] == ["main", "side 1"]
    assert float(rows[0]["length_mm"]) > 30
    assert abs(float(rows[0]["percent_diameter_stenosis"]) - sample.stenosisPercent) < 30
    table = logic.evaluate(result.outputModel, sample.referenceModel,
                           reprojections=[result.outputReprojectionA, result.outputReprojectionB],
                           referenceMasks=[sample.referenceMaskA, sample.referenceMaskB])
    metrics = {r["metric"]: float(r["value"]) for r in mrml.table_to_rows(table)}
    assert metrics["hausdorff_mm"] < 6 and metrics["fscore_1mm"] > 0.5 and metrics["dice_view_A"] > 0.5


def test_scene_round_trip(processed, tmp_path):
    from VesselReconLib import runtime

    scene, logic, sample, result = processed
    path = mrml.save_scene(tmp_path / "angio3d.mrb", scene)
    loaded = mrml.load_scene(path, runtime.new_scene())
    for name in ("Angio3D lumen mesh", "Angio3D centerline", "Angio3D QCA", "Angio3D view A segmentation",
                 "Angio3D view B mesh reprojection", "Angio3D sample view A"):
        assert loaded.GetFirstNodeByName(name) is not None, name
    radii = mrml.curve_radii(loaded.GetFirstNodeByName("Angio3D centerline"))
    np.testing.assert_allclose(radii, mrml.curve_radii(result.outputCenterline), rtol=1e-5)
    view = loaded.GetFirstNodeByName("Angio3D sample view A")
    assert float(view.GetAttribute("DICOM.PositionerPrimaryAngle")) == pytest.approx(sample.primaryAngleA)


def test_a_run_of_frames_keeps_its_frame_order_through_a_saved_scene(tmp_path):
    """A multi-frame view saved in a scene (.mrb) and reloaded holds the same frame at the same index: the volume's
    IJK-to-RAS was left-handed (K along the beam), Slicer's reader flipped K, and frame 6 came back as frame 5."""
    from VesselReconLib import runtime
    from VesselReconLib.angio3d.geometry import CArmGeometry

    logic = Angio3DLogic(runtime.new_scene())
    frames = np.stack([np.full((32, 40), 10.0 * k, np.float32) + np.arange(40, dtype=np.float32) for k in range(4)])
    view = logic.add_view(frames, CArmGeometry(-0.8, -23.2, 891, 720, (0.4, 0.4), 32, 40), "run")
    before, matrix = mrml.volume_to_array(view)
    loaded = mrml.load_scene(mrml.save_scene(tmp_path / "run.mrb", logic.scene), runtime.new_scene())
    after, loaded_matrix = mrml.volume_to_array(loaded.GetFirstNodeByName("run"))
    np.testing.assert_allclose(loaded_matrix, matrix, atol=1e-4)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(Angio3DLogic.frame_of(loaded.GetFirstNodeByName("run"), 2, "view A")[0], frames[2])


def test_loading_a_second_run_of_the_same_name_keeps_the_first(tmp_path):
    """Two runs both called IM3.dcm (two studies): the second load_xa overwrote the first view's frames and geometry
    (the points placed on it then lay on another angiogram); each load is a new node, named as Slicer names it."""
    from pathlib import Path

    from VesselReconLib import runtime

    source = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "xa-phantom"
    if not (source / "IM3.dcm").is_file():
        pytest.skip("../shared/samples/xa-phantom is not present")
    for folder, name in (("a", "IM3.dcm"), ("b", "IM4.dcm")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "IM3.dcm").symlink_to(source / name)
    logic = Angio3DLogic(runtime.new_scene())
    first, second = (logic.load_xa(tmp_path / folder / "IM3.dcm") for folder in "ab")
    assert first is not second and first.GetName() == "IM3" and second.GetName() != "IM3"
    assert [v.GetAttribute("DICOM.PositionerSecondaryAngle") for v in (first, second)] == ["-23.2", "28.7"]


def test_a_rerun_with_fewer_branches_leaves_no_side_branch_of_the_first_run():
    """Re-run on the main branch only (the side branch's points deleted): the first run's 'Angio3D centerline
    branch 2' stayed in the scene beside a QCA table and mesh that no longer had that branch."""
    from VesselReconLib import runtime

    scene = runtime.new_scene()
    logic = Angio3DLogic(scene)
    sample = logic.load_sample(seed=HELD_OUT_SEEDS[0])
    args = (sample.viewA, sample.viewB, sample.pointsA, sample.pointsB)
    assert len(logic.process(*args, device="cpu", refine=False).sideCenterlines) == 1
    for points in args[2:]:
        points.RemoveNthControlPoint(3)
        points.RemoveNthControlPoint(2)
    result = logic.process(*args, device="cpu", refine=False)
    curves = scene.GetNodesByClass("vtkMRMLMarkupsCurveNode")
    assert [curves.GetItemAsObject(i).GetName() for i in range(curves.GetNumberOfItems())] == ["Angio3D centerline"]
    assert result.sideCenterlines == [] and len(mrml.table_to_rows(result.outputTable)) == 1


def test_bad_inputs_leave_the_scene_untouched(processed, tmp_path):
    """Every refusal, each checked on its own (the test's own input nodes are made first)."""
    scene, logic, sample, result = processed
    args = [sample.viewA, sample.viewB, sample.pointsA, sample.pointsB]
    flat = mrml.array_to_volume(np.ones((1, 64, 64), np.float32), np.eye(4), "flat", scene=scene)
    odd = mrml.output_node("vtkMRMLMarkupsFiducialNode", "odd", scene=scene)
    odd.AddControlPoint(0.0, 0.0, 0.0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    geometry = dict(primaryAngleA=0, secondaryAngleA=0, sidA=1000, sodA=700, pixelSpacingA=0.3)
    refusals = [("missing", InputError, lambda: logic.process(None, *args[1:])),
                ("frame", InputError, lambda: logic.process(*args, frameA=5)),
                ("constant", InputError, lambda: logic.process(flat, *args[1:], **geometry)),
                ("lacks", InputError, lambda: logic.process(flat, *args[1:])),
                ("SOI points", InputError, lambda: logic.process(args[0], args[1], odd, args[3])),
                (None, CheckpointError, lambda: logic.process(*args, model=str(bad)))]
    before = scene_state(scene)
    for match, error, call in refusals:
        with pytest.raises(error, match=match):
            call()
        assert scene_state(scene) == before, match


def test_shipped_weights_beat_the_classical_baseline():
    from VesselReconLib.angio3d.eval import case_metrics
    from VesselReconLib.phantoms.xray import make_case, write_case, load_case

    entry = registry.find_entry("angio3d", "angio3d-lite")
    assert entry.status() == "ok"
    net = registry.load_model("angio3d", "angio3d-lite", "cpu")[0]
    ours, classical = [], []
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for seed in HELD_OUT_SEEDS:
            case = load_case(write_case(make_case(seed), Path(tmp) / str(seed), with_mesh=False))
            ours.append(case_metrics(case, net, "net", True))
            classical.append(case_metrics(case, None, "frangi", False))
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    assert mean(ours, "mae_mm") < mean(classical, "mae_mm")
    assert mean(ours, "dice") > mean(classical, "dice")


def test_cli_run_on_a_case_folder(tmp_path, capsys):
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.xray import make_case, write_case

    folder = write_case(make_case(HELD_OUT_SEEDS[1]), tmp_path / "case", with_mesh=False)
    out = tmp_path / "out"
    assert main(["angio3d", "--case", str(folder), "--out", str(out), "--device", "cpu"]) == 0
    for name in ("mesh.vtp", "mesh.stl", "centerline.json", "qca.json", "segmentation_a.png", "reprojection_b.png",
                 "angio3d.mrb"):
        assert (out / name).is_file(), name
    centerline = json.loads((out / "centerline.json").read_text())
    assert len(centerline["branches"]) == 2 and "LPS" in centerline["frame"]
    from VesselReconLib import meshes

    # the mesh files are in LPS, like the centreline, and say so as Slicer writes it
    assert meshes.mesh_coordinate_system(out / "mesh.vtp") == "LPS" == meshes.mesh_coordinate_system(out / "mesh.stl")
    mesh_lps = meshes.points_of(meshes.load_polydata(out / "mesh.vtp"))
    line = np.array(centerline["branches"][0]["points_lps"])
    assert np.abs(np.median(mesh_lps, 0) - np.median(line, 0)).max() < 10
    # overlays show the angiogram under the masks
    from PIL import Image

    overlay = np.asarray(Image.open(out / "segmentation_a.png"))
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and len(np.unique(overlay[..., 0])) > 50
    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads((out / "qca.json").read_text(), parse_constant=strict)     # round 15: strict JSON
    assert summary["qca"][0]["percent_diameter_stenosis_raw"] is None               # not calibrated: null, not NaN
    assert summary["qca"][0]["radius_view"] in ("A", "B", "A+B") and "calibration" in summary["quality"]
    assert summary["qca"][0]["radius_fusion"] == "two-view fusion (angio3d-fusion)"     # round 11: the table names it
    assert summary["qca_radius"] == "regressor" and isinstance(summary["qca"][0]["unreliable"], bool)
    # round 8: the stdout JSON line carries the run's warnings, as qca.json does
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1], parse_constant=strict)
    assert printed["run_warnings"] == summary["warnings"] and printed["warnings"] == summary["qca"][0]["warnings"]
    refused = tmp_path / "refused"
    assert main(["angio3d", "--view-a", str(folder / "view_a.png"), "--view-b", str(folder / "view_a.png"),
                 "--geometry-a", "30,0,1000,750,0.3", "--geometry-b", "30,0,1000,750,0.3",
                 "--points-a", "10,10 100,100", "--points-b", "10,10 100,100", "--out", str(refused)]) == 2
    assert not refused.exists()   # round 8: a refused run left an empty output folder


@pytest.fixture(scope="module")
def qca_errors():
    """Signed QCA % diameter stenosis errors against the phantom truth on held-out cases (never trained on)."""
    from VesselReconLib.angio3d.pipeline import reconstruct
    from VesselReconLib.phantoms.xray import make_case

    net = registry.load_model("angio3d", "angio3d-lite", "cpu")[0]
    errors = []
    with torch.no_grad():
        for seed in QCA_SEEDS:
            case = make_case(seed)
            result = reconstruct([v["image"].astype(np.float32) for v in case["views"]], case["geometries"],
                                 [np.array(p) for p in case["soi_points"]], net=net, refine=False, stitch=False)
            errors.append(result.qca["percent_diameter_stenosis"] - case["case"].stenosis["percent_diameter"])
    return np.array(errors)


def test_qca_on_held_out_phantoms(qca_errors):
    errors = qca_errors
    assert np.median(np.abs(errors)) <= QCA_MEDIAN_ERROR
    assert np.mean(np.abs(errors) <= 10) >= 0.6
    assert np.abs(errors).mean() <= QCA_MEAN_ERROR and abs(errors.mean()) <= QCA_BIAS


@pytest.mark.xfail(strict=True, reason="issue 14 target not met on these seeds (rounds 11-14: mean 7.1, bias -4.7, median 3.1 "
                   "with the two-view fusion, the default; the opt-in QCA calibrator 7.6 / -5.0 / 3.5; round 10 6.9 / -4.1 with the strip reader alone; rounds 4-9: 12.0 / -8.0): "
                   "an 85 % lesion hidden by another vessel in both views (-27) and an 89 % sub-resolution throat "
                   "under-read in both views (-13); on fresh phantoms 5.1 / -0.8 (27501-28500) and 5.4 / -0.3 "
                   "(28501-29000; the gated opt-in calibrator 4.8 / -0.5) in round 15, 4.9 / -0.7 (26501-27500; the opt-in "
                   "calibrator 4.2 / -0.4 there), 5.0 / -0.5 on 21501-22500, 5.1 / -0.8 on 17501-18500 and 5.1 / +0.2 on 18501-19500) in round "
                   "14, 5.7 / -0.2 (15601-15900), 5.7 / -1.4 "
                   "(15901-16000 + 16601-16900) and 5.2 / -1.0 (16901-17500) in round 13, 5.1 / -1.0 (13001-13300, "
                   "round 12), 4.8 / -0.3 (12701-13000, round 11); 5.2 / -0.7 on 7001-7900; see the README")
def test_qca_meets_the_issue_target(qca_errors):
    assert np.abs(qca_errors).mean() <= 4.0 and abs(qca_errors.mean()) <= 2.0


QCA_SEEDS = tuple(range(9101, 9109))
# Measured floors (shipped lite + the angio3d-lumen regressor, each view's QCA along its own path, the tighter
# view reported; round 4, measured once after every choice was made on other seeds): errors -27.2, +5.6, +8.9,
# -37.4, -3.9, +1.4, -5.4, -5.9 -> median 5.8, mean 12.0, bias -8.0 (round 3: median 6.3, mean 14.3, bias -5.5).
# The two gross misses (round 3: -22, -47): 9104, an 85 % lesion with another vessel across its throat in both
# views (0.5 px from the throat centre in each), and 9101, an 89 % lesion (throat radius 0.18 mm, < 1 px) that no
# other vessel comes near (28 / 37 px away) but that both views read milder (46 %, 62 %): a per-view measurement
# miss, not a two-view limit (round 5; rounds 3-4 called both "hidden"). The other six average +0.1. On fresh
# phantoms the same code gives mean 7.6, bias -0.2, median 5.4 (seeds 7001-7260) and 6.5, +0.6, 4.1 (7301-7460);
# a perfect choice of view would give 5.6 / 4.6 (and 11.0 here): the per-view lumen measure, not the choice of
# view, keeps the issue's target (mean absolute error <= 4, |bias| <= 2) out of reach; see the README. Round 8: a
# learned throat refiner over the regressor's radii with context along the vessel (trained on seeds 8001-8600)
# reads 6.80 / -0.26 (7001-7260) and 6.13 / +0.24 (7301-7460), below the round's ship rule (>= 0.5 points better
# on 7301-7460, median not higher): not shipped; 12.64 / -8.60 here (measured once). The round-8 "unreliable"
# flag (overlap in both views) fires on none of these eight (9104's crossing vessel escapes the overlap flags).
# Round 10: the angio3d-strip reader (a 1D-convolutional network over each view's whole strip, trained on 2300
# phantoms 8001-9000 and 10001-11300, shipped under a rule written first: fresh seeds 7701-7900 6.91 / +0.72 /
# median 4.21 against the regressor's 7.73 / +0.60 / 4.80) reads here, measured once after the decision: -15.1,
# +1.6, +8.3, -25.0, -0.3, +1.3, -0.1, -3.6 -> median 2.6, mean 6.9, bias -4.1; 9101 and 9104 are still the misses.
# Round 11: the angio3d-fusion (each view's radii read from both views' strips, aligned through the epipolar match;
# trained on 3500 phantoms 8001-9000 and 10001-12500) shipped under a rule written first: fresh seeds 12701-13000
# 4.83 / -0.33 / median 3.36 against the strip reader's 5.54 / +0.52 / 4.00 (a first candidate on 2300 phantoms
# missed the rule on 7901-8000 + 12501-12700, 5.83 vs 6.28). Here (cache, read once): -12.9, +0.7, +8.6, -27.4,
# -1.5, -0.5, +0.3, -4.7 -> median 3.1, mean 7.1, bias -4.7: within the floors below, which are unchanged.
# Round 12: no reading lever reached the ship rule on 7001-7900 (path-confidence view choice, QCA on the re-routed
# paths, learned soft choice: all worse or <= 0.09 better); the path-off-the-vessel flag (reading unchanged) shipped
# under a rule written first (fresh seeds 13001-13300: 3 of 300 flagged, mean |error| 29.3 there vs 4.9; shipped QCA
# there 5.14 / -0.98 / median 2.69). Here (read once after the decision): the same errors, none flagged.
# Round 14: the round-13 fusion retrained through a median-free rule failed a confirmatory check sized for its
# earlier gain (fresh 17501-18500: +0.05, 95 % -0.08 ... +0.18; rule >= 0.10 with the interval above 0); the
# lesion-location flag (the views' narrowest points > 2 mm apart) shipped under a rule written first (fresh
# 18501-19500: 10.4 % flagged, 11.8 points there against 4.3 elsewhere). Here it flags 9101 (-12.9; the views'
# narrowest points 3.7 mm apart) and 9107 (+0.3, 21 mm apart), not 9104 (-27.4, one lesion hidden alike in both).
# Round 14 also made the QCA calibrator (calibrator.py; a per-case correction of the fused reading) under a rule
# written first, on 1000 fresh phantoms 21501-22500: 4.96 / -0.49 / median 2.95 -> 4.60 / -0.47 / 2.96 (after two
# earlier checks of its recipe trained on fewer phantoms had failed by a clause each). Here, read once after that
# decision, it is worse: -15.2, +0.7, +8.8, -26.4, -3.9, +0.3, -3.5, -4.2 -> median 4.06, mean 7.88, bias -5.43 (the
# fusion's reading 3.12 / 7.07 / -4.69). Its successor (v2, the same recipe on 11800 phantoms; shipped after beating
# it on fresh 26501-27500, 4.30 -> 4.21) reads here, once after its decision: -14.5, +1.5, +8.4, -26.1, -2.7, +0.4,
# -2.7, -4.2 -> median 3.45, mean 7.56, bias -4.99. Then the calibrator was made opt-in (qca_calibration=True): on the
# real static phantom it moved a 4 % reading to 31 % (its phantoms' lesions are all 30-90 %), so this default
# loop reads the fusion again (the errors of round 11). The floors below are unchanged.
QCA_MEDIAN_ERROR, QCA_MEAN_ERROR, QCA_BIAS = 4.0, 9.0, 6.0


@pytest.mark.gpu
def test_pipeline_on_gpu_matches_cpu():
    from VesselReconLib.angio3d.pipeline import reconstruct
    from VesselReconLib.phantoms.xray import make_case

    case = make_case(HELD_OUT_SEEDS[0])
    images = [v["image"].astype(np.float32) for v in case["views"]]
    points = [np.array(p) for p in case["soi_points"]]
    results = []
    for device in ("cpu", "cuda"):
        net = registry.load_model("angio3d", "angio3d-lite", device)[0]
        results.append(reconstruct(images, case["geometries"], points, net=net, device=device))
    cpu, gpu = (r.branches[0].vertices for r in results)
    assert np.linalg.norm(cpu - gpu, axis=1).mean() < 0.3


def test_cli_refuses_broken_case_folders_and_views_in_one_line(tmp_path, capsys):
    """Round 10 bad-input audit: a case folder with a damaged geometry.json and a cut-off XA DICOM ended as internal
    errors (JSONDecodeError, SimpleITK RuntimeError); a folder given as a view was called a DICOM file that 'does not
    exist'; the vessel mask chosen as a view was reconstructed like an angiogram; an unreadable view file was told to
    be a NIfTI, NRRD or MHA file."""
    from VesselReconLib.angio3d.dicom_io import write_xa
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.xray import load_case, make_case, write_case

    folder = write_case(make_case(HELD_OUT_SEEDS[0]), tmp_path / "case", with_mesh=False)
    case = load_case(folder)
    dicom = write_xa(tmp_path / "view.dcm", np.stack([case.images[0]] * 2), case.geometries[0])
    (tmp_path / "cut.dcm").write_bytes(dicom.read_bytes()[: dicom.stat().st_size // 2])
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("view_a.png", "view_b.png", "centerline.json"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "geometry.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "notes.png").write_text("not an image", encoding="utf-8")
    views = ["--view-b", str(folder / "view_b.png"), "--points-a", "10,10 100,100", "--points-b", "10,10 100,100"]
    cases = {"broken case": (["--case", str(broken)], "not a readable xray case folder"),
             "cut DICOM": (["--view-a", str(tmp_path / "cut.dcm"), *views], "cannot be decoded"),
             "folder as view": (["--view-a", str(broken), *views], "is a folder"),
             "text as view": (["--view-a", str(tmp_path / "notes.png"), *views], "give an XA DICOM or a 2D image"),
             "mask as view": (["--view-a", str(folder / "vessels_a.png"), *views, "--geometry-a", "30,0,1000,750,0.3",
                               "--geometry-b", "-30,0,1000,750,0.3"], "two values")}
    for label, (argv, words) in cases.items():
        out = tmp_path / "out"
        assert main(["angio3d", *argv, "--out", str(out), "--device", "cpu"]) == 2, label
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and "internal error" not in err, (label, err)
        assert not out.exists(), label

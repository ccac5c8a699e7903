"""VesselSDF Logic on the headless scene, CLI, shipped weights vs the classical baseline, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VesselReconLib import meshes, mrml
from VesselReconLib.errors import CheckpointError, InputError
from VesselReconLib.vesselsdf.logic import VesselSDFLogic


@pytest.fixture(scope="module")
def held_out():
    """Two held-out phantoms (seeds never used for training: training used 0..13, held-out eval 7000..)."""
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom

    return [make_ct_phantom(CTPhantomParams(shape=(16, 96, 96), seed=seed)) for seed in (424242, 535353)]


def node_names(scene):
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


def test_process_sample_places_nodes_and_survives_mrb(scene, tmp_path):
    logic = VesselSDFLogic(scene)
    sample = logic.load_sample(seed=77, shape=(16, 48, 48))
    result = logic.process(sample.inputVolume, roiMask=sample.roiMask, device="cpu", createOccupancy=True,
                           referenceSegmentation=sample.referenceSegmentation)
    ct, ijk_to_ras = mrml.volume_to_array(sample.inputVolume)
    sdf, sdf_matrix = mrml.volume_to_array(result.outputSdfVolume)
    np.testing.assert_allclose(sdf_matrix, ijk_to_ras)
    assert sdf.shape == ct.shape and result.outputOccupancyVolume is not None
    labels, _ = mrml.segmentation_to_labelmap(result.outputSegmentation, reference_volume=sample.inputVolume)
    np.testing.assert_array_equal(labels > 0, sdf < 0)
    surface = result.outputModel.GetPolyData()
    assert surface.GetNumberOfPoints() > 100
    bounds = np.array(surface.GetBounds()).reshape(3, 2)
    corners = ijk_to_ras @ np.array([[0, 0, 0, 1], [47, 47, 15, 1]]).T
    assert (bounds[:, 0] >= corners[:3].min(1) - 1).all() and (bounds[:, 1] <= corners[:3].max(1) + 1).all()
    # the surface sits on the SDF's zero level: interpolated SDF at mesh points is ~0
    from VesselReconLib.phantoms.geometry import sample_volume

    at_surface = sample_volume(sdf, meshes.points_of(surface)[::20], ijk_to_world=ijk_to_ras)
    assert np.nanmedian(np.abs(at_surface)) < 0.5
    rows = {r["Metric"]: r["Value"] for r in mrml.table_to_rows(result.outputTable)}
    assert {"Vessel volume", "Surface area", "Connected components", "Dice", "Chamfer distance x100",
            "Hausdorff distance"} <= set(rows)
    table = logic.evaluate(result.outputSegmentation, sample.referenceSegmentation, inputVolume=sample.inputVolume,
                           predictionModel=result.outputModel, referenceModel=sample.referenceModel)
    assert [r["Method"] for r in mrml.table_to_rows(table)][1].startswith("classical")
    # a second run updates the same nodes instead of adding new ones; without createOccupancy it removes the
    # first run's occupancy (and its display), which no longer matches the new outputs
    count, occupancy_name = scene.GetNumberOfNodes(), result.outputOccupancyVolume.GetName()
    logic.process(sample.inputVolume, device="cpu")
    assert scene.GetNumberOfNodes() == count - 2 and scene.GetFirstNodeByName(occupancy_name) is None
    path = mrml.save_scene(tmp_path / "vesselsdf.mrb", scene)
    mrml.load_scene(path, scene)
    loaded = scene.GetFirstNodeByName(result.outputSdfVolume.GetName())
    loaded_array, loaded_matrix = mrml.volume_to_array(loaded)
    np.testing.assert_allclose(loaded_matrix, ijk_to_ras, atol=1e-5)
    assert loaded.GetDisplayNode().GetColorNode().GetName() == "VesselSDF diverging"
    assert scene.GetFirstNodeByName(result.outputModel.GetName()).GetPolyData().GetNumberOfPoints() > 100


def test_outputs_follow_a_ct_placed_under_a_transform(scene, under_registration):
    """A CT under a linear transform (a registration): the mesh, segmentation, SDF and occupancy go under the same
    transform, or Slicer draws them 50 mm off the CT; a re-run into the same nodes puts them back under it (the
    writing transaction's follow, round 11)."""
    logic = VesselSDFLogic(scene)
    sample = logic.load_sample(seed=78, shape=(16, 48, 48))
    moved = under_registration(sample.inputVolume)
    result = logic.process(sample.inputVolume, roiMask=sample.roiMask, device="cpu", createOccupancy=True)
    outputs = (result.outputModel, result.outputSegmentation, result.outputSdfVolume, result.outputOccupancyVolume)
    assert [n.GetTransformNodeID() for n in outputs] == [moved.GetID()] * 4
    for node in outputs:   # a re-run into the same nodes, moved off the registration meanwhile, puts them back
        node.SetAndObserveTransformNodeID(None)
    again = logic.process(sample.inputVolume, roiMask=sample.roiMask, device="cpu", outputModel=result.outputModel,
                          outputSegmentation=result.outputSegmentation, outputSdfVolume=result.outputSdfVolume,
                          outputOccupancyVolume=result.outputOccupancyVolume)
    assert [n.GetID() for n in (again.outputModel, again.outputSegmentation, again.outputSdfVolume,
                                again.outputOccupancyVolume)] == [n.GetID() for n in outputs]
    assert [n.GetTransformNodeID() for n in outputs] == [moved.GetID()] * 4


def test_bad_inputs_leave_the_scene_untouched(scene, tmp_path):
    logic = VesselSDFLogic(scene)
    good = mrml.array_to_volume(np.random.normal(100, 20, (16, 32, 32)).astype(np.float32),
                                np.diag([0.7, 0.7, 5.0, 1.0]), "ct", scene=scene)
    constant = mrml.array_to_volume(np.zeros((16, 32, 32), np.float32), np.eye(4), "flat", scene=scene)
    nans = np.full((16, 32, 32), np.nan, np.float32)
    with_nan = mrml.array_to_volume(nans, np.eye(4), "nan", scene=scene)
    small_roi = mrml.array_to_volume(np.ones((4, 8, 8), np.uint8), np.eye(4), "roi", scene=scene, labelmap=True)
    slab = np.random.default_rng(0).integers(0, 255, (8, 32, 32)).astype(np.uint8)
    slab[0] = (slab[0] > 200) * 255   # the LVSD layout: slice 0 the vessel label, 7 CT slices
    lvsd = mrml.array_to_volume(slab, np.diag([0.7, 0.7, 5.0, 1.0]), "lvsd slab", scene=scene)
    before = node_names(scene)
    bad_checkpoint = tmp_path / "other.pt"
    bad_checkpoint.write_bytes(b"not a checkpoint")
    cases = [(dict(inputVolume=None), InputError), (dict(inputVolume=constant), InputError),
             (dict(inputVolume=with_nan), InputError), (dict(inputVolume=good, roiMask=small_roi), InputError),
             (dict(inputVolume=good, model="huge"), CheckpointError),
             (dict(inputVolume=good, model=str(bad_checkpoint)), CheckpointError),
             (dict(inputVolume=lvsd, portalVenousWindow=False), InputError)]
    for kwargs, error in cases:
        with pytest.raises(error) as refused:
            logic.process(**{"device": "cpu", **kwargs})
        assert node_names(scene) == before
    assert "LVSD slab" in str(refused.value)   # named as such, not as a non-HU CT to run anyway
    with pytest.raises(InputError):
        logic.evaluate(None, None)


def test_shipped_model_beats_the_classical_baseline(held_out):
    """On held-out phantoms the shipped lite model beats the classical baseline on Dice and surface
    accuracy, and its refiner leaves fewer surface pieces than its own occupancy stage (lite-occ).

    (On these small nominal phantoms it has a few more pieces than the classical threshold: 24 vs 20.)
    """
    from VesselReconLib.registry import find_entry, load_model
    from VesselReconLib.vesselsdf.evaluation import EvalCase, classical_baseline, evaluate_prediction
    from VesselReconLib.vesselsdf.inference import predict_in_roi
    from VesselReconLib.vesselsdf.preprocess import canonicalise

    assert find_entry("vesselsdf", "lite").status() == "ok"
    nets = {name: load_model("vesselsdf", name, "cpu")[0] for name in ("lite", "lite-occ")}
    rows = {"lite": [], "lite-occ": [], "classical": []}
    for case in held_out:
        eval_case = EvalCase("held-out", case.image, case.labels > 0, case.ijk_to_ras, case.hires_labels > 0,
                             case.hires_ijk_to_ras, case.mesh())
        canonical = canonicalise(case.image, case.ijk_to_ras, case.organ > 0)
        for name, net in nets.items():
            rows[name].append(evaluate_prediction(predict_in_roi(net, canonical, "cpu", case.spacing), eval_case))
        rows["classical"].append(evaluate_prediction(classical_baseline(case.image, case.spacing, case.organ > 0),
                                                     eval_case))
    mean = lambda name, key: float(np.mean([r[key] for r in rows[name]]))  # noqa: E731
    assert mean("lite", "dice") > mean("classical", "dice")
    assert mean("lite", "cd_x100") < 0.9 * mean("classical", "cd_x100")
    assert mean("lite", "hd95_mm") < 0.9 * mean("classical", "hd95_mm")
    # release 5 keeps every piece (its phantom calibration chose no piece removal): 28.5 vs 46.5 here,
    # 0.52x / 0.55x on the two 6-case held-out sets (release 4, with the 20 mm³ removal: < 0.6x)
    assert mean("lite", "components") < 0.65 * mean("lite-occ", "components")


def test_cli_run_writes_files_and_scene(tmp_path, capsys):
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom
    from VesselReconLib.phantoms.datasets import save_nifti

    case = make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=12))
    image = save_nifti(case.image, case.spacing, (-case.origin[0], -case.origin[1], case.origin[2]),
                       tmp_path / "ct.v1.nii.gz", direction=np.diag([-1.0, -1.0, 1.0]))
    reference = save_nifti(case.labels, case.spacing, (-case.origin[0], -case.origin[1], case.origin[2]),
                           tmp_path / "ref.nii.gz", direction=np.diag([-1.0, -1.0, 1.0]))
    out = tmp_path / "out"
    assert main(["vesselsdf", str(image), "--out", str(out), "--device", "cpu", "--reference", str(reference),
                 "--min-component-mm3", "1", "--fine-slice-mm", "1.0"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert "dice" in printed and printed["components"] >= 1 and printed["spacing_z_mm"] == pytest.approx(5.0)
    assert "spacing used: 0.7 x 0.7 x 5 mm" in captured.err
    for name in ("ct.v1_vessels.vtp", "ct.v1_vessels.stl", "ct.v1_vessels.nii.gz", "ct.v1_sdf.nii.gz",
                 "ct.v1_measurements.csv", "ct.v1_vesselsdf.mrb", "ct.v1_vessels_fine.nii.gz"):
        assert (out / name).is_file(), name  # the full input stem, dots included
    stl = (out / "ct.v1_vessels.stl").read_bytes()
    assert stl[:80].rstrip(b"\0") == b"3D Slicer output. SPACE=LPS" and not stl.startswith(b"solid")
    assert meshes.mesh_coordinate_system(out / "ct.v1_vessels.vtp") == "LPS"
    # the mesh read back into RAS lies where the CT is
    bounds = meshes.points_of(meshes.load_polydata_ras(out / "ct.v1_vessels.stl"))
    corners = case.ijk_to_ras @ np.array([[0, 0, 0, 1], [47, 47, 15, 1]]).T
    assert (bounds.min(0) >= corners[:3].min(1) - 1).all() and (bounds.max(0) <= corners[:3].max(1) + 1).all()
    from VesselReconLib.volume_io import read_volume

    fine, fine_matrix = read_volume(out / "ct.v1_vessels_fine.nii.gz")
    assert fine.shape == (76, 48, 48) and fine_matrix[2, 2] == pytest.approx(1.0)
    thick, _ = read_volume(out / "ct.v1_vessels.nii.gz")
    np.testing.assert_array_equal(fine[::5], thick)  # every 5th fine slice is a thick slice
    assert main(["vesselsdf", str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 2


def test_bench_reports_one_json_line_on_a_small_input():
    from VesselReconLib.vesselsdf.bench import bench

    result = bench(shape=(16, 32, 32), repeats=1)
    json.dumps(result)
    cpu = result["cpu"]
    assert cpu["preset"] == "lite" and cpu["baseline"].startswith("plain MONAI UNet")
    assert abs(cpu["baseline_params"] - cpu["params"]) / cpu["params"] < 0.15
    assert cpu["pipeline_s"] > 0 and cpu["network_vs_baseline"] > 0 and result["mesh_slices"] == 106
    assert cpu["weights"] == "shipped" and cpu["mesh_exact_sdf_points"] > 0
    assert cpu["network_cpu_s"] > 0 and cpu["baseline_network_cpu_s"] > 0 and len(cpu["load_avg_1min"]) == 2


def test_cli_eval_prints_the_ablation_table(tmp_path, capsys):
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.datasets import write_dataset

    data = write_dataset("ct", tmp_path / "heldout", 1, seed=99, shape=(16, 48, 48))
    assert main(["eval", "vesselsdf", "--data", str(data), "--models", "lite", "lite-occ",
                 "--device", "cpu", "--json", str(tmp_path / "table.json")]) == 0
    printed = capsys.readouterr().out
    for row in ("VesselSDF (ours)", "occupancy only", "classical"):
        assert row in printed
    table = json.loads((tmp_path / "table.json").read_text())
    assert set(table) == {"lite", "occ", "classical"}
    assert all(0 <= row["dice"] <= 1 and row["cd_x100"] > 0 for row in table.values())


def test_an_roi_of_the_same_shape_on_another_grid_is_refused(scene):
    """Round 8: a ROI with the CT's shape but its origin moved 80 mm was used as if it lay on the CT."""
    logic = VesselSDFLogic(scene)
    matrix = np.diag([-0.7, -0.7, 5.0, 1.0])
    ct = mrml.array_to_volume(np.random.default_rng(0).normal(100, 20, (4, 32, 32)).astype(np.float32), matrix, "ct",
                              scene=scene)
    moved = matrix.copy()
    moved[:3, 3] = (80.0, -60.0, 3.0)
    roi = mrml.array_to_volume(np.ones((4, 32, 32), np.uint8), moved, "roi", scene=scene, labelmap=True)
    with pytest.raises(InputError, match="resample it onto the CT"):
        logic._mask_array(roi, ct, (4, 32, 32))
    same = mrml.array_to_volume(np.ones((4, 32, 32), np.uint8), matrix, "roi same", scene=scene, labelmap=True)
    assert logic._mask_array(same, ct, (4, 32, 32)).all()


def test_cli_refusal_leaves_no_folder_and_warnings_are_printed_once(tmp_path):
    """Round 8: a refused run left an empty output folder; each warning was printed twice."""
    import os
    import subprocess
    import sys

    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom
    from VesselReconLib.phantoms.datasets import save_nifti

    text = tmp_path / "notes.txt"
    text.write_text("not a volume")
    assert main(["vesselsdf", str(text), "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()   # nothing written, not even an empty folder
    case = make_ct_phantom(CTPhantomParams(shape=(4, 40, 40), seed=3))
    path = save_nifti(case.image, (2.0, 2.0, 5.0), (0, 0, 0), tmp_path / "coarse.nii.gz")   # unusual in-plane spacing
    run = subprocess.run([sys.executable, "-m", "VesselReconLib.cli", "vesselsdf", str(path), "--out",
                          str(tmp_path / "out"), "--device", "cpu"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-800:]
    assert run.stderr.count("in-plane spacing 2 x 2 mm") == 1, run.stderr[-800:]
    assert "warning: in-plane spacing 2 x 2 mm" in run.stderr
    # round 9: each warning on a line of its own, not glued to the progress bar drawn on the same stream
    assert any(line.startswith("warning: in-plane spacing 2 x 2 mm") for line in run.stderr.replace("\r", "\n")
               .splitlines()), run.stderr[-800:]


def test_cli_refuses_an_lvsd_slab_read_as_ct(tmp_path, capsys):
    """Round 8: an LVSD slab (slice 0 = binary vessel label) given to the run command ran as an 8-slice CT."""
    import SimpleITK as sitk

    from VesselReconLib.cli import main
    from VesselReconLib.vesselsdf import realdata

    rng = np.random.default_rng(0)
    slab = rng.integers(0, 256, (8, 32, 32)).astype(np.uint8)
    slab[0] = 0
    slab[0, 10:14, 4:28] = 255
    path = tmp_path / "slab.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(slab), str(path))
    assert main(["vesselsdf", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "LVSD slab" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert not realdata.is_lvsd_slab(slab[1:]) and not realdata.is_lvsd_slab(np.concatenate([slab[1:2], slab[1:]]))


def test_a_reference_reaching_outside_the_roi_is_warned_about(scene, caplog):
    """Round 9 user pass: IRCADb's portal vein + venous system as --reference with --roi liver scored Dice 0.39 and
    HD 148 mm, without a word that 64 % of that reference lies outside the liver, where the output is background."""
    import logging

    logic = VesselSDFLogic(scene)
    sample = logic.load_sample(seed=77, shape=(16, 48, 48))
    ct, ijk_to_ras = mrml.volume_to_array(sample.inputVolume)
    reference = mrml.array_to_volume(np.ones(ct.shape, np.uint8), ijk_to_ras, "reference everywhere", scene=scene,
                                     labelmap=True)
    with caplog.at_level(logging.WARNING):
        result = logic.process(sample.inputVolume, roiMask=sample.roiMask, device="cpu",
                               referenceSegmentation=reference)
    notes = [r.getMessage() for r in caplog.records if "of the reference" in r.getMessage()]
    assert len(notes) == 1 and "outside the liver ROI" in notes[0] and "mask the reference" in notes[0], notes
    assert notes[0] in result.reconstruction.canonical.notes
    assert notes[0] in result.warnings   # what the Slicer panel lists under "Processing finished with ..."
    caplog.clear()
    with caplog.at_level(logging.WARNING):   # the phantom's own vessels lie inside its liver: no note
        logic.process(sample.inputVolume, roiMask=sample.roiMask, device="cpu",
                      referenceSegmentation=sample.referenceSegmentation)
    assert not [r for r in caplog.records if "of the reference" in r.getMessage()]


def test_refusal_of_a_thin_ct_names_slices_and_pixels(scene):
    """Round 9 user pass: a 12-pixel-wide crop was refused as 'The CT is 51 x 512 x 12 voxels' (numpy order),
    which reads as 51 columns; the message now says slices and pixels."""
    logic = VesselSDFLogic(scene)
    ct = mrml.array_to_volume(np.random.default_rng(0).normal(100, 20, (51, 512, 12)).astype(np.float32), np.diag([-0.78, -0.78, 4.8, 1.0]), "narrow",
                              scene=scene)
    with pytest.raises(InputError, match=r"51 slices of 12 x 512 pixels"):
        logic.process(ct, device="cpu")


def test_a_windowed_whole_abdomen_without_roi_is_refused(scene):
    """Round 9 user pass: IRCADb 1.7 exported windowed as uint8 (-60..240 HU -> 0..255) and run without --roi was
    taken as liver-masked input (the air at 0) with a 17.6 L 'liver': 719 cm³ of vessels, Dice 0.006 inside the
    liver, no warning. A windowed input whose non-background part is far larger than a liver is refused."""
    logic = VesselSDFLogic(scene)
    rng = np.random.default_rng(1)
    body = rng.integers(40, 200, (12, 128, 128)).astype(np.uint8)   # 5.1 L of body on 3 x 3 x 5 mm voxels
    jj, ii = np.mgrid[:128, :128]
    body[:, (jj - 64) ** 2 / 60 ** 2 + (ii - 64) ** 2 / 50 ** 2 > 1] = 0        # air around an abdomen
    ct = mrml.array_to_volume(body, np.diag([-3.0, -3.0, 5.0, 1.0]), "abdomen windowed", scene=scene)
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"not liver-masked.*liver mask"):
        logic.process(ct, portalVenousWindow=False, device="cpu")
    assert scene.GetNumberOfNodes() == count


def test_label_as_ct_and_bad_fine_slice_spacing_are_refused_before_any_work(scene, tmp_path, capsys):
    """Round 10 bad-input audit: a vessel label map chosen as the CT ran and failed as an internal error while writing
    the STL; --fine-slice-mm -1, nan or 0.0001 failed as internal errors (SimpleITK, int(nan), a 10^10-voxel
    allocation) after the whole reconstruction. Both are refused up front, leaving the scene and the files alone."""
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.ct import CTPhantomParams, make_ct_phantom
    from VesselReconLib.phantoms.datasets import save_nifti

    case = make_ct_phantom(CTPhantomParams(shape=(16, 48, 48), seed=12))
    label = mrml.array_to_volume((case.labels > 0).astype(np.uint8), np.diag([*case.spacing, 1.0]), "labels",
                                 scene=scene)
    before, voxels = node_names(scene), mrml.volume_to_array(label)[0].copy()
    with pytest.raises(InputError, match="two values"):
        VesselSDFLogic(scene).process(label, device="cpu", portalVenousWindow=False)
    assert node_names(scene) == before
    np.testing.assert_array_equal(mrml.volume_to_array(label)[0], voxels)
    image = save_nifti(case.image, case.spacing, (0, 0, 0), tmp_path / "ct.nii.gz")
    content = image.read_bytes()
    for value, words in (("-1", ">"), ("nan", ">"), ("0.0001", "voxels")):
        out = tmp_path / f"out{value}"
        assert main(["vesselsdf", str(image), "--out", str(out), "--device", "cpu", "--fine-slice-mm", value]) == 2
        err = capsys.readouterr().err
        assert "--fine-slice-mm" in err and words in err and "Traceback" not in err, err
        assert "%|" not in err and not out.exists()   # refused before the reconstruction and its progress bar
    assert image.read_bytes() == content


def test_cli_keeps_a_whole_ct_windows_freed_activations_for_the_next_window(tmp_path, monkeypatch):
    """Round 11 scale pass: on a whole CT (IRCADb 1.7) the command page-faulted every sliding window's
    activations afresh (4.7 M faults, 14 s of kernel time in the network step): it did not keep freed memory
    as VC-Net's, Angio3D's and OCTADepth's commands do, and the shared 32 MB mmap threshold is below a
    152 x 256 x 256 window's largest activation. Now it keeps blocks up to that size (1.1 s of kernel time)."""
    import torch

    from VesselReconLib import device
    from VesselReconLib.cli import main
    from VesselReconLib.vesselsdf.network import build_model

    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda *mb: calls.append(mb))
    assert main(["vesselsdf", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "out")]) == 2
    assert len(calls) == 1
    sizes = []
    net = build_model("lite").eval()
    for module in net.modules():
        module.register_forward_hook(lambda m, i, out: sizes.extend(t.numel() for t in
                                                                    (out if isinstance(out, (tuple, list)) else [out])
                                                                    if isinstance(t, torch.Tensor)))
    with torch.inference_mode():
        net(torch.zeros(1, 1, 8, 64, 64), (0.78, 0.78, 1.6))
    window_mb = max(sizes) * (152 * 256 * 256) / (8 * 64 * 64) * 4 / 2**20
    assert window_mb > 32 and calls[0][0] >= window_mb


def test_keep_freed_memory_reuses_blocks_below_the_threshold_it_is_given():
    """keep_freed_memory(mb): a freed block below ``mb`` is reused without fresh page faults (the shared
    32 MB default page-faults a 64 MB block afresh)."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("a glibc heap policy")
    script = ("import resource, sys, numpy as np\n"
              "from VesselReconLib.device import keep_freed_memory\n"
              "keep_freed_memory(*[int(a) for a in sys.argv[1:]])\n"
              "a = np.ones(16 * 2**20, np.float32); del a\n"
              "f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
              "for _ in range(4):\n"
              "    a = np.ones(16 * 2**20, np.float32); del a\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)\n")
    faults = [int(subprocess.run([sys.executable, "-c", script, *mb], capture_output=True, text=True,
                                 check=True).stdout) for mb in ([], ["256"])]
    assert faults[0] > 500 and faults[1] * 10 < faults[0]

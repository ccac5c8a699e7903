"""VCNet Logic on the headless scene: placement (IJK-to-RAS), outputs, .mrb round trip, refusals, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VesselReconLib import mrml
from VesselReconLib.errors import CheckpointError, InputError
from VesselReconLib.phantoms.mra import render_mra
from VesselReconLib.vcnet.inference import centerline_length
from VesselReconLib.vcnet.logic import VCNetLogic

CROP = (20, 64, 80)


@pytest.fixture(scope="module")
def phantom():
    return render_mra("mra", seed=2024, crop=CROP)


def oblique_matrix(spacing, origin=(-30.0, 12.0, 7.5)):
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return mrml.ijk_to_ras_matrix(spacing, origin, rotation)


def node_names(scene):
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


def test_process_places_outputs_on_the_input_geometry(scene, phantom, tmp_path):
    matrix = oblique_matrix(phantom.spacing)
    volume = mrml.array_to_volume(phantom.image, matrix, "MRA", scene=scene)
    truth = mrml.array_to_volume(phantom.label, matrix, "Truth", scene=scene, labelmap=True)
    logic = VCNetLogic(scene)
    result = logic.process(volume, referenceLabelmap=truth, device="cpu", outputProbability=True, outputMip=True)
    prob, prob_matrix = mrml.volume_to_array(result.outputProbabilityVolume)
    np.testing.assert_allclose(prob_matrix, matrix, atol=1e-9)
    assert prob.shape == CROP and 0 <= prob.min() and prob.max() <= 1
    exported, _ = mrml.segmentation_to_labelmap(result.outputSegmentation, volume)
    np.testing.assert_array_equal(exported > 0, result.labels > 0)
    assert result.outputSegmentation.GetSegmentation().ContainsRepresentation("Closed surface")
    # composited MIPs: one 16-slice slab -> 2 slabs for 20 slices, 3 rows x 2 columns of MIPs
    mips, mip_matrix = mrml.volume_to_array(result.outputMipVolume)
    assert mips.shape == (2, 3 * CROP[1], 2 * CROP[2])
    np.testing.assert_allclose(mip_matrix[:3, 2], matrix[:3, 2] * 16)
    metrics = result.metrics
    assert metrics["dice"] > 0.3  # shipped lite model on a held-out phantom
    assert 0 <= metrics["fpr"] < 0.02
    voxel = np.prod(phantom.spacing)
    assert metrics["vessel_volume_mm3"] == pytest.approx(result.labels.sum() * voxel)
    rows = {r["Measurement"]: r["Value"] for r in mrml.table_to_rows(result.outputTable)}
    assert rows["dice"] == pytest.approx(metrics["dice"])
    assert rows["centerline_length_mm"] > 0
    # .mrb round trip
    path = mrml.save_scene(tmp_path / "vcnet.mrb", scene)
    names = node_names(scene)
    mrml.load_scene(path, scene)
    assert node_names(scene) == names
    segmentation = scene.GetFirstNodeByName("MRA VCNet vessels")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    reloaded, reloaded_matrix = mrml.volume_to_array(scene.GetFirstNodeByName("MRA VCNet probability"))
    np.testing.assert_allclose(reloaded_matrix, matrix, atol=1e-6)
    np.testing.assert_allclose(reloaded, prob, atol=1e-6)


def test_rerun_updates_outputs_and_keeps_user_nodes(scene, phantom):
    volume = mrml.array_to_volume(phantom.image, np.diag([*phantom.spacing, 1.0]), "MRA", scene=scene)
    user_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "MRA VCNet measurements")  # a user's node
    logic = VCNetLogic(scene)
    first = logic.process(volume, device="cpu")
    count = scene.GetNumberOfNodes()
    second = logic.process(volume, device="cpu", minComponentMm3=5.0)
    assert scene.GetNumberOfNodes() == count
    assert second.outputSegmentation is first.outputSegmentation
    assert first.outputTable is not user_table and user_table.GetTable().GetNumberOfColumns() == 0


def test_dark_vessels_with_brain_mask(scene):
    sample = VCNetLogic(scene).load_sample("swi", seed=77, crop=(20, 64, 64))
    logic = VCNetLogic(scene)
    result = logic.process(sample.inputVolume, maskVolume=sample.maskNode, darkVessels=True, device="cpu",
                           referenceSegmentation=sample.referenceSegmentation)
    plain = logic.process(sample.inputVolume, maskVolume=sample.maskNode, darkVessels=False, device="cpu",
                          referenceSegmentation=sample.referenceSegmentation,
                          outputSegmentation=scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "plain"))
    assert result.metrics["dice"] > plain.metrics["dice"] + 0.1
    evaluation = logic.evaluate(result.outputSegmentation, sample.referenceSegmentation, sample.inputVolume)
    assert evaluation.metrics["dice"] == pytest.approx(result.metrics["dice"])
    assert evaluation.evaluationTable.GetTable().GetNumberOfRows() >= 4


@pytest.mark.parametrize("case", ["missing", "single_slice", "constant", "nan", "mask_shape", "checkpoint",
                                  "overlap"])
def test_bad_input_leaves_scene_untouched(scene, phantom, tmp_path, case):
    matrix = np.diag([*phantom.spacing, 1.0])
    image = phantom.image.copy()
    kwargs = {"device": "cpu"}
    if case == "single_slice":
        image = image[:1]
    elif case == "constant":
        image = np.full_like(image, 7.0)
    elif case == "nan":
        image[3, 4, 5] = np.nan
    volume = mrml.array_to_volume(image, matrix, "input", scene=scene) if case != "missing" else None
    if case == "mask_shape":
        kwargs["maskVolume"] = mrml.array_to_volume(np.ones((4, 8, 8), np.uint8), matrix, "mask", scene=scene,
                                                    labelmap=True)
    elif case == "checkpoint":
        bad = tmp_path / "broken.safetensors"
        bad.write_bytes(b"not a model")
        kwargs["model"] = str(bad)
    elif case == "overlap":
        kwargs["overlap"] = 1.5
    before = node_names(scene)
    error = CheckpointError if case == "checkpoint" else InputError
    with pytest.raises(error):
        VCNetLogic(scene).process(volume, **kwargs)
    assert node_names(scene) == before


def test_centerline_length_of_known_lines():
    spacing = (0.5, 0.5, 0.8)  # (x, y, z)
    straight = np.zeros((9, 9, 60), np.uint8)
    straight[3:6, 3:6, 5:55] = 1  # a 3-voxel-thick bar along i: 50 voxels of 0.5 mm
    assert centerline_length(straight, spacing) == pytest.approx(49 * 0.5, abs=2.0)
    diagonal = np.zeros((40, 8, 40), np.uint8)
    for n in range(5, 35):
        diagonal[n, 3:5, n] = 1  # along k and i together: steps of sqrt(0.8^2 + 0.5^2)
    assert centerline_length(diagonal, spacing) == pytest.approx(29 * np.hypot(0.8, 0.5), rel=0.12)


def test_cli_run_writes_files_and_scene(tmp_path, phantom):
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.datasets import save_nifti

    path = save_nifti(phantom.image, phantom.spacing, (0, 0, 0), tmp_path / "mra.nii.gz")
    ref = save_nifti(phantom.label, phantom.spacing, (0, 0, 0), tmp_path / "ref.nii.gz")
    out = tmp_path / "out"
    assert main(["vcnet", str(path), "--out", str(out), "--device", "cpu", "--reference", str(ref)]) == 0
    for name in ("vcnet_vessels.nii.gz", "vcnet_probability.nii.gz", "vcnet_measurements.csv", "vcnet.mrb"):
        assert (out / name).is_file(), name
    from VesselReconLib.phantoms.datasets import load_nifti

    labels, spacing, _ = load_nifti(out / "vcnet_vessels.nii.gz")
    assert labels.shape == CROP and np.allclose(spacing, phantom.spacing, atol=1e-5)
    assert "dice" in (out / "vcnet_measurements.csv").read_text()
    assert main(["vcnet", str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 2


@pytest.mark.gpu
def test_gpu_matches_cpu(phantom):
    import torch

    from VesselReconLib import registry
    from VesselReconLib.vcnet.inference import segment

    net, _ = registry.load_model("vcnet", "lite", "cpu")
    cpu = segment(phantom.image, phantom.spacing, net, device="cpu")
    gpu = segment(phantom.image, phantom.spacing, net.to("cuda"), device="cuda")
    from VesselReconLib.metrics import dice

    assert dice(gpu.labels, cpu.labels) > 0.9  # bf16 autocast on the GPU
    assert torch.cuda.max_memory_allocated() < 6 * 2**30


def test_cancel_stops_before_any_scene_change(scene, phantom):
    from VesselReconLib.progress import Cancelled

    volume = mrml.array_to_volume(phantom.image, np.diag([*phantom.spacing, 1.0]), "MRA", scene=scene)
    seen = []
    before = node_names(scene)
    with pytest.raises(Cancelled):
        VCNetLogic(scene).process(volume, device="cpu", progress=lambda f, m: seen.append(m),
                                  cancel=lambda: len(seen) >= 2)
    assert node_names(scene) == before

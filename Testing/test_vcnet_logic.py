"""VCNet Logic on the headless scene: placement (IJK-to-RAS), outputs, .mrb round trip, refusals, CLI."""

from __future__ import annotations

import os

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
    """Names of the scene's nodes except the subject hierarchy, which reading a .mrb adds when the
    headless scene had none: scene infrastructure, not an output."""
    nodes = (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    return sorted(node.GetName() or "" for node in nodes if not node.IsA("vtkMRMLSubjectHierarchyNode"))


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
    assert metrics["dice"] > 0.3  # the default shipped model (lite-fast) on a held-out phantom
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


def test_loading_a_second_volume_of_the_same_name_keeps_the_first(scene, tmp_path):
    """load_volume(path, "TOF") of a second scan replaced the first one's node (and the mask loaded as 'mask'
    replaced an earlier 'mask'): each load is a new node, named uniquely as Slicer names a second file."""
    import SimpleITK as sitk

    logic = VCNetLogic(scene)
    nodes = []
    for index, value in enumerate((1.0, 2.0)):
        path = tmp_path / f"tof{index}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 7, 8), value, np.float32)), str(path))
        nodes.append(logic.load_volume(str(path), "TOF"))
    assert nodes[0] is not nodes[1] and [n.GetName() for n in nodes][0] == "TOF"
    assert [float(mrml.volume_to_array(n)[0].max()) for n in nodes] == [1.0, 2.0]


def test_outputs_follow_an_input_placed_under_a_transform(scene, phantom, under_registration):
    """A scan under a linear transform (a registration): segmentation and probability were written on the scan's
    own IJK-to-RAS but outside its transform, 50 mm off the scan in Slicer's views."""
    volume = mrml.array_to_volume(phantom.image, np.diag([*phantom.spacing, 1.0]), "MRA", scene=scene)
    moved = under_registration(volume)
    result = VCNetLogic(scene).process(volume, device="cpu", outputProbability=True)
    assert [n.GetTransformNodeID() for n in (result.outputSegmentation, result.outputProbabilityVolume)] == [
        moved.GetID()] * 2


def test_dark_vessels_with_brain_mask(scene):
    sample = VCNetLogic(scene).load_sample("swi", seed=77, crop=(20, 64, 64))
    logic = VCNetLogic(scene)
    result = logic.process(sample.inputVolume, maskVolume=sample.maskNode, darkVessels=True, device="cpu",
                           model="vcnet-swi-lite", referenceSegmentation=sample.referenceSegmentation)
    plain = logic.process(sample.inputVolume, maskVolume=sample.maskNode, darkVessels=False, device="cpu",
                          referenceSegmentation=sample.referenceSegmentation,
                          outputSegmentation=scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "plain"))
    assert result.metrics["dice"] > plain.metrics["dice"] + 0.1
    assert not any("trained on" in w for w in result.warnings + plain.warnings)
    evaluation = logic.evaluate(result.outputSegmentation, sample.referenceSegmentation, sample.inputVolume)
    assert evaluation.metrics["dice"] == pytest.approx(result.metrics["dice"])
    assert evaluation.evaluationTable.GetTable().GetNumberOfRows() >= 4


def _swi_checkpoint_shipped_elsewhere(tmp_path) -> str:
    """The SWI model re-shipped by `ship_model` into another registry folder: a user's dark-trained checkpoint."""
    from VesselReconLib import registry
    from VesselReconLib.training import ship_model

    net, metadata = registry.load_model("vcnet", "vcnet-swi-lite")
    entry = ship_model(net, "vcnet", metadata["preset"], name="my-swi", command="test", data="test", seed=0,
                       metrics={}, input_spec={}, config=metadata["config"], extra_training={"dark": True},
                       directory=tmp_path)
    return str(entry.path)


@pytest.mark.parametrize("model, dark, words", [("lite-fast", True, "trained on bright-vessel TOF-MRA only"),
                                                ("vcnet-swi-lite", False, "tick Dark vessels (--dark)"),
                                                ("shipped file", True, "vcnet-lite-fast.safetensors (vcnet-lite-fast)"),
                                                ("own checkpoint", False, "my-swi.safetensors was trained on dark")])
def test_a_model_of_the_other_vessel_contrast_is_warned_about(scene, tmp_path, model, dark, words):
    """`vcnet --dark` with the default TOF model (or the SWI model without --dark) ran without a word; so did a
    shipped file given by its path and a dark-trained checkpoint of one's own (round 13)."""
    from VesselReconLib import registry

    if model == "shipped file":
        model = str(registry.find_entry("vcnet", "lite-fast").path)
    elif model == "own checkpoint":
        model = _swi_checkpoint_shipped_elsewhere(tmp_path)
    sample = VCNetLogic(scene).load_sample("swi", seed=77, crop=(20, 64, 64))
    result = VCNetLogic(scene).process(sample.inputVolume, maskVolume=sample.maskNode, darkVessels=dark,
                                       device="cpu", model=model)
    assert any(words in w for w in result.warnings), result.warnings
    agreeing = VCNetLogic(scene).process(sample.inputVolume, maskVolume=sample.maskNode, darkVessels=not dark,
                                         device="cpu", model=model)
    assert not any("trained on" in w for w in agreeing.warnings), agreeing.warnings


@pytest.mark.parametrize("case", ["missing", "single_slice", "constant", "nan", "mask_shape", "mask_grid", "mask_is_scan",
                                  "checkpoint", "overlap", "label_as_scan", "empty_reference", "spacing_50mm",
                                  "tiny"])
def test_bad_input_leaves_scene_untouched(scene, phantom, tmp_path, case):
    matrix = np.diag([*phantom.spacing, 1.0])
    image = phantom.image.copy()
    kwargs = {"device": "cpu"}
    words = {"label_as_scan": "two values", "empty_reference": "empty", "spacing_50mm": "spacing",
             "tiny": "4 x 4 x 6.4 mm .* at least 8 mm in-plane"}.get(case, "")
    if case == "single_slice":
        image = image[:1]
    elif case == "constant":
        image = np.full_like(image, 7.0)
    elif case == "nan":
        image[3, 4, 5] = np.nan
    elif case == "label_as_scan":   # the reference labelmap chosen as the MRA
        image = phantom.label.astype(np.uint8)
    elif case == "spacing_50mm":    # a header in cm read as mm, x 500: the model grid would need 10^10 voxels
        matrix = np.diag([50.0, 50.0, 50.0, 1.0])
    elif case == "tiny":   # 8 x 8 x 8 voxels ran without a word and gave a meaningless segmentation
        image = np.ascontiguousarray(image[:8, 28:36, 36:44])
    volume = mrml.array_to_volume(image, matrix, "input", scene=scene) if case != "missing" else None
    if case == "mask_shape":
        kwargs["maskVolume"] = mrml.array_to_volume(np.ones((4, 8, 8), np.uint8), matrix, "mask", scene=scene,
                                                    labelmap=True)
    elif case == "mask_grid":   # the input's shape, another place and orientation (an oblique scan's mask)
        kwargs["maskVolume"] = mrml.array_to_volume(np.ones(image.shape, np.uint8), oblique_matrix(phantom.spacing),
                                                    "mask", scene=scene, labelmap=True)
    elif case == "mask_is_scan":   # the scan itself chosen as the mask (same grid)
        kwargs["maskVolume"] = mrml.array_to_volume(image, matrix, "mask", scene=scene)
    elif case == "checkpoint":
        bad = tmp_path / "broken.safetensors"
        bad.write_bytes(b"not a model")
        kwargs["model"] = str(bad)
    elif case == "overlap":
        kwargs["overlap"] = 1.5
    elif case == "empty_reference":   # an all-zero reference gave Dice 0 and FPR without a word
        kwargs["referenceLabelmap"] = mrml.array_to_volume(np.zeros(image.shape, np.uint8), matrix, "reference",
                                                           scene=scene, labelmap=True)
    before = node_names(scene)
    voxels = mrml.volume_to_array(volume)[0].copy() if volume is not None else None
    error = CheckpointError if case == "checkpoint" else InputError
    with pytest.raises(error, match=words or None):
        VCNetLogic(scene).process(volume, **kwargs)
    assert node_names(scene) == before
    if volume is not None:
        np.testing.assert_array_equal(mrml.volume_to_array(volume)[0], voxels)


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


def _write_dicom_slice(path, pixels: np.ndarray, series: str, index: int) -> None:
    """One MR slice with pydicom (SimpleITK's DICOM writer switches the process locale to ASCII)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = "1.2.826.0.1.3680043.2.1125.7", series, index
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(index)], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_volume_reader_says_what_to_give_and_refuses_a_folder_of_two_series(tmp_path, phantom):
    from VesselReconLib.volume_io import read_image

    (tmp_path / "notes.txt").write_text("not a volume")
    with pytest.raises(InputError, match=r"Unable to determine ImageIO reader.*give a NIfTI, NRRD or MHA") as error:
        read_image(tmp_path / "notes.txt")
    assert "sitkImageReaderBase" not in str(error.value)
    folder = tmp_path / "two_series"
    folder.mkdir()
    for series in (1, 2):   # two series of two slices each, as a scanner export of two scans
        for k in range(2):
            _write_dicom_slice(folder / f"s{series}_{k}.dcm", phantom.image[k], f"1.2.826.0.1.3680043.2.1125.8.{series}", k)
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        read_image(folder)
    for path in folder.glob("s2_*.dcm"):
        path.unlink()
    assert read_image(folder).GetSize()[2] == 2


def test_cli_prints_each_warning_once_as_a_warning_line(tmp_path, phantom):
    import subprocess
    import sys

    from VesselReconLib.phantoms.datasets import save_nifti

    path = save_nifti(phantom.image, phantom.spacing, (0, 0, 0), tmp_path / "mra.nii.gz")
    run = subprocess.run([sys.executable, "-m", "VesselReconLib.cli", "vcnet", str(path), "--out", str(tmp_path / "out"),
                          "--device", "cpu"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-500:]
    lines = [line for line in run.stderr.splitlines() if "No brain mask given" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: No brain mask given"), run.stderr[-800:]
    # the files are announced once the bar is done (a 512 x 512 x 200 run wrote them for 19 s without a word)
    assert run.stderr.rstrip().endswith(f"{tmp_path / 'out'}: writing the outputs"), run.stderr[-800:]


def test_cli_refusal_prints_no_empty_progress_bar(tmp_path, phantom, capsys):
    """A volume refused by the Logic's checks gives one error line, with no progress bar drawn before it."""
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.datasets import save_nifti

    path = save_nifti(np.full(phantom.image.shape, 7.0, np.float32), phantom.spacing, (0, 0, 0), tmp_path / "flat.nii.gz")
    assert main(["vcnet", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "constant" in err.lower() and "%|" not in err and "vcnet:" not in err, err
    assert not (tmp_path / "out").exists()   # nothing written, not even an empty folder


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["lite-fast", "lite"])  # the default and the previous default
def test_gpu_matches_cpu(phantom, model):
    import torch

    from VesselReconLib import registry
    from VesselReconLib.vcnet.inference import segment

    net, _ = registry.load_model("vcnet", model, "cpu")
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


def test_thin_slab_is_padded_and_runs(scene, phantom):
    volume = mrml.array_to_volume(phantom.image[:7], np.diag([*phantom.spacing, 1.0]), "thin", scene=scene)
    result = VCNetLogic(scene).process(volume, device="cpu", outputProbability=True, outputMip=True)
    prob, _ = mrml.volume_to_array(result.outputProbabilityVolume)
    assert result.labels.shape == prob.shape == (7, CROP[1], CROP[2])
    assert np.isfinite(prob).all() and 0 <= prob.min() and prob.max() <= 1


def test_spacing_path_resamples_to_the_model_grid_and_back():
    import torch

    from VesselReconLib.vcnet.inference import fine_grid, model_grid, resample, segment, trained_spacing
    from VesselReconLib.vcnet.network import build_model

    assert model_grid((20, 64, 80), (0.5, 0.5, 0.8), (0.5, 0.5, 0.8)) is None
    assert model_grid((20, 64, 80), (0.52, 0.52, 0.75), (0.5, 0.5, 0.8)) is None  # within 10 %: native grid
    # to the nearest trained spacing (model spacing +- 10 %): 0.3 mm -> 0.45 x 0.45 x 0.72 mm
    np.testing.assert_allclose(trained_spacing((0.3, 0.3, 0.3), (0.5, 0.5, 0.8)), (0.45, 0.45, 0.72))
    np.testing.assert_allclose(trained_spacing((1.0, 0.5, 0.8), (0.5, 0.5, 0.8)), (0.55, 0.5, 0.8))
    assert model_grid((40, 100, 120), (0.3, 0.3, 0.3), (0.5, 0.5, 0.8)) == (17, 67, 80)
    # an input finer than the trained band also runs on a second grid: 0.6x the model spacing, never
    # finer than the input (0.3 mm -> 0.3 x 0.3 x 0.48 mm); none for inputs at or above the band
    assert fine_grid((40, 100, 120), (0.3, 0.3, 0.3), (0.5, 0.5, 0.8)) == (25, 100, 120)
    assert fine_grid((40, 100, 120), (0.5, 0.5, 0.4), (0.5, 0.5, 0.8)) == (33, 100, 120)
    assert fine_grid((20, 64, 80), (0.45, 0.45, 0.72), (0.5, 0.5, 0.8)) is None
    assert fine_grid((20, 64, 80), (1.0, 0.5, 0.8), (0.5, 0.5, 0.8)) is None
    assert fine_grid((100, 100, 100), (0.3, 0.3, 0.8), (0.5, 0.5, 0.8)) == (100, 100, 100)  # fine in-plane only
    assert fine_grid((100, 100, 100), (0.449, 0.449, 0.8), (0.5, 0.5, 0.8)) is None  # the trained grid's shape
    field = np.fromfunction(lambda k, j, i: np.sin(j / 9.0) + np.cos(i / 11.0) + k / 20.0, (40, 100, 120))
    back = resample(resample(field, (17, 67, 80), torch.device("cpu")), field.shape, torch.device("cpu"))
    assert np.abs(back - field)[3:-3, 3:-3, 3:-3].max() < 0.1  # smooth fields survive the round trip
    torch.manual_seed(0)
    net = build_model("lite").eval()
    p = render_mra("mra", seed=5, spacing=(0.3, 0.3, 0.3), crop=(30, 90, 100), crop_centre="cow")
    seen = []
    result = segment(p.image, p.spacing, net, device="cpu", with_mips=True, progress=lambda f, m: seen.append((f, m)))
    assert result.info["resampled_kji"] == [12, 60, 67]
    assert result.info["fine_grid_kji"] == [19, 90, 100] and result.info["fine_windows_run"] >= 1
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    windows = [f for f, m in seen if "window" in m]  # both grids report their windows, one after the other
    assert min(windows) < 0.3 <= max(windows) < 0.85
    assert result.probability.shape == result.labels.shape == p.image.shape
    assert result.mip_image.shape[1:] == (3 * 60, 2 * 67)  # composited MIPs on the model grid
    np.testing.assert_allclose(result.info["mip_spacing"], (0.45, 0.45, 0.72 * 16))
    mask = np.ones((7, 90, 100), np.uint8)
    mask[:, :, :40] = 0
    thin = segment(p.image[:7], p.spacing, net, mask, device="cpu", with_mips=True)  # both grids padded, masked
    assert thin.info["fine_grid_kji"] == [4, 90, 100] and thin.labels.shape == (7, 90, 100)
    assert not thin.probability[:, :, :40].any() and thin.probability[:, :, 40:].any()
    native = segment(p.image, p.spacing, net, device="cpu", resample_to_model=False)
    assert native.info["resampled_kji"] is None and native.info["fine_grid_kji"] is None
    assert native.probability.shape == p.image.shape


def test_warnings_for_no_mask_and_an_implausible_slice_axis(phantom):
    import torch

    from VesselReconLib.vcnet.inference import NO_MASK_WARNING, check_slice_axis, segment
    from VesselReconLib.vcnet.network import build_model

    torch.manual_seed(0)
    net = build_model("lite").eval()
    assert NO_MASK_WARNING in segment(phantom.image, phantom.spacing, net, device="cpu").info["warnings"]
    masked = segment(phantom.image, phantom.spacing, net, phantom.brain_mask, device="cpu")
    assert masked.info["warnings"] == []
    assert check_slice_axis((60, 200, 200), (0.5, 0.5, 0.8)) is None
    assert check_slice_axis((60, 200, 200), (0.3, 0.3, 0.3)) is None  # isotropic is fine
    assert "slice axis" in check_slice_axis((200, 60, 60), (0.8, 0.8, 0.4))  # K finer than in-plane
    assert "slice axis" in check_slice_axis((200, 60, 200), (0.85, 0.53, 0.53))  # I the coarse axis
    assert check_slice_axis((60, 200, 200), (0.4, 0.5, 0.8)) is None  # rectangular in-plane pixels
    assert "slice axis" in check_slice_axis((400, 60, 60), (0.5, 0.5, 0.5))  # a long thin K
    small = segment(phantom.image[:10, :40, :40], phantom.spacing, net, phantom.brain_mask[:10, :40, :40], device="cpu")
    assert len(small.info["warnings"]) == 1 and "20 x 20 x 8 mm (40 x 40 x 10 voxels)" in small.info["warnings"][0]
    assert "larger crop" in small.info["warnings"][0]


def test_a_volume_too_small_in_plane_for_the_network_is_refused_on_its_grid():
    """8 x 8 x 8 voxels at the model's spacing ran without a word; the size counts in mm on the model's grid, so a
    coarse scan needs fewer voxels and a fine one more."""
    from VesselReconLib.errors import InputError
    from VesselReconLib.vcnet.inference import check_extent

    model = (0.5, 0.5, 0.8)
    with pytest.raises(InputError, match=r"4 x 4 x 6.4 mm \(8 x 8 x 8 voxels\): VC-Net needs at least 8 mm in-plane"):
        check_extent((8, 8, 8), model, model)
    with pytest.raises(InputError, match="larger crop or the whole scan"):
        check_extent((40, 200, 20), (0.3, 0.3, 0.3), model)   # 6 mm wide
    assert check_extent((8, 8, 8), (1.0, 1.0, 1.0), model) is not None   # 8 mm: run, with a warning
    assert check_extent((12, 64, 64), model, model) is None
    assert check_extent((11, 64, 64), model, model) is not None and check_extent((12, 63, 64), model, model) is not None


def test_last_window_batch_is_padded_and_mips_come_from_the_main_pass():
    import torch

    from VesselReconLib.vcnet import mip
    from VesselReconLib.vcnet.inference import predict_probability, segment
    from VesselReconLib.vcnet.network import build_model

    torch.manual_seed(0)
    net = build_model("lite").eval()
    seen = []
    original = net.forward
    net.forward = lambda x, **options: seen.append(x.shape[0]) or original(x, **options)
    volume = np.random.default_rng(0).random((16, 64, 192)).astype(np.float32)  # 3 windows, batch 2
    batched, _ = predict_probability(net, volume, torch.device("cpu"), batch_size=2)
    single, _ = predict_probability(net, volume, torch.device("cpu"), batch_size=1)
    assert seen[:2] == [2, 2]  # the last window was padded to a full batch
    np.testing.assert_allclose(batched, single, atol=1e-5)
    net.forward = original
    result = segment(volume * 100 + 100, (0.5, 0.5, 0.8), net, device="cpu", with_mips=True)
    with torch.no_grad():
        window = torch.from_numpy(result.mip_image[0][:, :64].copy())  # first window's tiles (3 rows x 2)
        stack = mip.untile(torch.from_numpy(result.mip_image[:1])[None], 6)[0, 0]
        direct = net.mip_stream(mip.tile(stack[:, :, :64][None, None]))[1]
    expected = (mip.untile(direct, 6)[0, 0] >= 0.5).numpy()
    got = mip.untile(torch.from_numpy(result.mip_labels[:1].astype(np.float32))[None], 6)[0, 0][:, :, :64].numpy()
    np.testing.assert_array_equal(got > 0, expected)
    assert window.shape[0] == 3 * 64


def test_model_list_and_csv_report(tmp_path, scene, phantom):
    logic = VCNetLogic(scene)
    models = logic.shipped_models()
    assert len(models) == len(set(models)) and models[0] == "lite-fast"
    assert {"lite", "vcnet-swi-lite"} <= set(models)
    volume = mrml.array_to_volume(phantom.image, np.diag([*phantom.spacing, 1.0]), "MRA", scene=scene)
    result = logic.process(volume, device="cpu")
    csv = (logic.write_outputs(result, tmp_path)[-1]).read_text().splitlines()
    assert csv[0] == "measurement,value,unit"
    assert "nan" not in "\n".join(csv) and "device,cpu," in csv
    for line in csv[1:]:
        value = line.split(",")[1]
        if value != "cpu":
            assert len(value.split(".")[-1].split("e")[0]) <= 4, line


def test_every_default_loads_the_same_model_and_lite_is_unchanged():
    """The Logic, the CLI, ``eval vcnet``, the Slicer parameter node and the model box (its first entry)
    all load the same shipped model (issue 15: ``lite-fast`` since round 5, checked by
    ``test_model_list_and_csv_report``); ``lite`` and the SWI model keep their presets and weights."""
    import argparse
    import ast
    import inspect
    from pathlib import Path

    from VesselReconLib import registry
    from VesselReconLib.vcnet import cli
    from VesselReconLib.vcnet import eval as vcnet_eval

    defaults = {"logic": inspect.signature(VCNetLogic.process).parameters["model"].default,
                "model box": VCNetLogic().shipped_models()[0],
                "evaluate_cases": inspect.signature(vcnet_eval.evaluate_cases).parameters["model"].default}
    for add_arguments in (cli.add_arguments, cli.add_eval_arguments):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        defaults[add_arguments.__name__] = parser.get_default("model")
    # the parameter node's default, evaluated with the module's own VesselReconLib.vcnet imports (no Slicer here)
    tree = ast.parse((Path(__file__).resolve().parents[1] / "VesselRecon" / "VCNet" / "VCNet.py").read_text())
    namespace = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("VesselReconLib.vcnet"):
            exec(compile(ast.Module([node], []), "VCNet.py", "exec"), namespace)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VCNetParameterNode")
    field = next(f.value for f in node.body if isinstance(f, ast.AnnAssign) and f.target.id == "model")
    defaults["parameter node"] = eval(compile(ast.Expression(field), "VCNet.py", "eval"), namespace)
    loaded = {where: registry.find_entry("vcnet", model).name for where, model in defaults.items()}
    assert len(set(loaded.values())) == 1, loaded
    # ``lite`` is the round-4 network and weights (its 2D stream on the full-size MIP image), and the SWI model
    # is a ``lite`` network too: their shipped files load into today's ``lite`` network (a changed preset fails)
    for name in ("lite", "vcnet-swi-lite"):
        net, metadata = registry.load_model("vcnet", name, "cpu")
        assert metadata["preset"] == "lite" and net.mip_scale == 1, name
    assert registry.find_entry("vcnet", "lite").name == "vcnet-lite"


def test_cli_refuses_truncated_and_vector_files_and_saves_an_int8_volume(tmp_path, phantom, capsys):
    """Round 10 bad-input audit: ITK read a cut-off .nii.gz (or .nii) without a word, zero-filling the missing voxels,
    and VC-Net segmented the remainder (NaN voxels of a NIfTI it reads as 0 likewise); a 2-component (vector) NIfTI
    reached the Logic as a garbled grid ('reload the image'); an int8 volume was segmented and then failed as an
    internal error when the .mrb was saved."""
    import SimpleITK as sitk

    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.datasets import save_nifti

    path = save_nifti(phantom.image, phantom.spacing, (0, 0, 0), tmp_path / "mra.nii.gz")
    data = path.read_bytes()
    raw = tmp_path / "raw.nii"
    sitk.WriteImage(sitk.ReadImage(str(path)), str(raw))
    cut = {"cut.nii.gz": data[: len(data) // 2], "cut.nii": raw.read_bytes()[:-1000]}
    vector = sitk.GetImageFromArray(np.stack([phantom.image] * 2, -1), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "vector.nii.gz"))
    with_nan = phantom.image.astype(np.float32)
    with_nan[3, 4, 5] = np.nan   # on disk as NaN; ITK's NIfTI reader returns it as 0
    sitk.WriteImage(sitk.GetImageFromArray(with_nan), str(tmp_path / "nan.nii.gz"))
    for name, content in cut.items():
        (tmp_path / name).write_bytes(content)
    for name, words in (("cut.nii.gz", ("damaged", "copy it again")), ("cut.nii", ("truncated", "copy it again")),
                        ("vector.nii.gz", ("2 components", "scalar")), ("nan.nii.gz", ("1 NaN", "fix or mask"))):
        before = (tmp_path / name).read_bytes()
        assert main(["vcnet", str(tmp_path / name), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2, name
        err = capsys.readouterr().err
        assert all(word in err for word in words), err
        assert "Traceback" not in err and (tmp_path / name).read_bytes() == before
        assert not (tmp_path / "out").exists()
    small = sitk.GetImageFromArray(np.clip(phantom.image / phantom.image.max() * 120, -128, 127).astype(np.int8))
    small.SetSpacing(tuple(float(s) for s in phantom.spacing))
    sitk.WriteImage(small, str(tmp_path / "int8.nii.gz"))
    assert main(["vcnet", str(tmp_path / "int8.nii.gz"), "--out", str(tmp_path / "int8"), "--device", "cpu"]) == 0
    assert (tmp_path / "int8" / "vcnet.mrb").stat().st_size > 0

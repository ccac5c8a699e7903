"""COIPS units: configuration, format conversion, networks, losses, FAZ metrics, reports, training setup."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from VesselReconLib import enface_io as io
from VesselReconLib.coips import GRADES
from VesselReconLib.coips.config import CoipsConfig, load_config
from VesselReconLib.coips.faz import central_component, classical_faz, faz_metrics, largest_component
from VesselReconLib.errors import CheckpointError, InputError


def _disk(size: int, radius: float, centre=None) -> np.ndarray:
    cy, cx = centre or ((size - 1) / 2, (size - 1) / 2)
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


# ---------------------------------------------------------------- configuration


def test_config_yaml_overrides_and_refusals(tmp_path, monkeypatch):
    path = tmp_path / "cfg.yaml"
    path.write_text("input: /data/in\noutput: /data/out\nfield_of_view_mm: 6\nbatch_size: 8\n")
    config = load_config(path, batch_size=4, device=None)
    assert (config.input, config.field_of_view_mm, config.batch_size, config.device) == ("/data/in", 6, 4, "auto")
    for cores, workers in ((1, 1), (16, 2), (None, 1)):   # two decoding workers at most, one per core
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert load_config(path).num_workers == workers, cores
    assert load_config(path, num_workers=0).num_workers == 0
    path.write_text("inputs: /x\n")
    with pytest.raises(InputError, match="Unknown configuration keys: inputs"):
        load_config(path)
    for bad in (0, -3, float("nan"), 1e6, 300, "wide"):
        with pytest.raises(InputError, match="plausible|not a number"):
            CoipsConfig(field_of_view_mm=bad)
    path.write_text("default_field_of_view_mm: 3\n")
    with pytest.raises(InputError, match="never assumed"):
        load_config(path)
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- format conversion


def _write_dicom(path, pixels: np.ndarray, spacing=None, photometric="MONOCHROME2", frames: int = 1):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OPT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if spacing:
        ds.PixelSpacing = [spacing, spacing]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_read_png_jpeg_bmp_tiff_and_dicom(tmp_path):
    from PIL import Image

    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    Image.fromarray(gradient).save(tmp_path / "a_6x6.png")
    image = io.read_image(tmp_path / "a_6x6.png")
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (64, 64)
    assert np.allclose(image.pixels, gradient / 255.0) and (image.field_of_view_mm, image.fov_source) == (6.0, "filename")
    rgb = np.stack([gradient] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    assert np.allclose(io.read_image(tmp_path / "c.bmp", 3).pixels, gradient / 255.0, atol=1 / 255)
    with pytest.raises(InputError, match=r"b\.jpg.*--fov"):
        io.read_image(tmp_path / "b.jpg")
    unknown = io.read_image(tmp_path / "b.jpg", required=False)
    assert (unknown.field_of_view_mm, unknown.fov_source, unknown.pixel_size_mm) == (None, "unknown", None)
    assert io.read_image(tmp_path / "b.jpg", 6).field_of_view_mm == 6.0
    for bad in (0, -3, float("nan"), 1e6):
        with pytest.raises(InputError, match="plausible"):
            io.read_image(tmp_path / "b.jpg", bad)
    # 16-bit TIFF, 304 px at 1013.333 px/cm -> 3.0 mm field of view from the metadata
    wide = np.tile(np.arange(304, dtype=np.uint16) * 100, (304, 1))
    Image.fromarray(wide).save(tmp_path / "d.tif", resolution=1013.333, resolution_unit=3)
    tiff = io.read_image(tmp_path / "d.tif")
    assert tiff.fov_source == "metadata" and tiff.field_of_view_mm == pytest.approx(3.0, rel=1e-3)
    assert tiff.pixels.min() == 0 and tiff.pixels.max() == 1
    dicom = io.read_image(_write_dicom(tmp_path / "e.dcm", wide, spacing=6.0 / 304))
    assert dicom.fov_source == "metadata" and dicom.field_of_view_mm == pytest.approx(6.0)
    assert io.read_image(tmp_path / "e.dcm", field_of_view_mm=3).fov_source == "config"
    inverted = io.read_image(_write_dicom(tmp_path / "f.dcm", wide, photometric="MONOCHROME1"), 6)
    assert np.allclose(inverted.pixels, 1.0 - dicom.pixels, atol=1e-6)
    assert sorted(p.name for p in io.list_images(tmp_path)) == ["a_6x6.png", "b.jpg", "c.bmp", "d.tif", "e.dcm", "f.dcm"]


def test_read_refuses_bad_files(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(InputError, match="constant"):
        io.read_image(tmp_path / "flat.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="not a readable image"):
        io.read_image(tmp_path / "broken.png")
    with pytest.raises(InputError, match="unsupported format"):
        io.read_image(tmp_path / "scan.nii")
    frames = np.random.default_rng(0).integers(0, 999, (2, 16, 16))
    with pytest.raises(InputError, match="multi-frame"):
        io.read_image(_write_dicom(tmp_path / "multi.dcm", frames, frames=2))
    with pytest.raises(InputError, match="does not exist"):
        io.list_images(tmp_path / "nowhere")


def test_fov_tokens_and_work_image():
    assert io.fov_from_path("sOCTA-6x6-14k/img.png") == 6.0
    assert io.fov_from_path("/data/3 x 3 mm/img.png") == 3.0
    assert io.fov_from_path("img_33x3.png") is None
    assert io.fov_from_path("octagon_angio3superf.tif") == 3.0 and io.fov_from_path("octagon_angio6prof.tif") == 6.0
    assert io.fov_from_path("area6superf_system.png") == 6.0 and io.fov_from_path("p1_angio6deep.png") == 6.0
    assert io.fov_from_path("scan_6mm.png") == 6.0 and io.fov_from_path("scan12.png") is None
    assert io.fov_from_path("scan_3x3_6mm.png") is None and io.fov_from_path("6mm/scan_3x3_6mm.png") is None
    assert io.fov_from_path("6x6mm_scan.png") == 6.0 and io.fov_from_path("3x3_angio3superf.tif") == 3.0
    assert io.fov_from_path("study_3x6.png") is None and io.fov_from_path("img_1000mm.png") is None
    assert io.resolve_fov(None, 250.0, "x.png", required=False) == (None, "unknown")  # 72-dpi TIFF default
    assert io.resolve_fov(None, 250.0, "x_6x6.png") == (6.0, "filename")
    assert io.resolve_fov(3, 6.0, "x_6x6.png") == (3.0, "config")
    work = io.to_work_image(np.linspace(0, 1, 100 * 80, dtype=np.float32).reshape(100, 80), 64)
    assert work.shape == (64, 64) and work.dtype == np.uint8 and work.flags.writeable


# ---------------------------------------------------------------- networks


def test_presets_follow_the_paper_input_sizes():
    from VesselReconLib.coips.network import FAZ_PRESETS, QUALITY_PRESETS

    sizes = {name: (spec["backbone"], spec["input_size"]) for name, spec in QUALITY_PRESETS.items()}
    assert sizes["resnet101"] == ("resnet101", 224) and sizes["inception_v3"] == ("inception_v3", 299)
    assert sizes["efficientnet_b7"] == ("efficientnet_b7", 600)
    assert sizes["seresnext101"] == sizes["paper"] == ("seresnext101_32x4d", 224)
    assert sizes["swin_large"] == sizes["paper-3mm"] == ("swin_large_patch4_window12_384", 384)
    assert sizes["paper-6mm"] == ("seresnext101_32x4d", 224)
    assert all(len(spec["filters"]) >= 5 for spec in FAZ_PRESETS.values())
    paper = FAZ_PRESETS["faz-paper"]
    assert paper["input_size"] == 512 and paper["deep_supervision"] and paper["mirror_axes"] == (2, 3)
    assert FAZ_PRESETS["faz-lite"]["window_mm"] == 2.0


def test_network_shapes_both_kinds_and_presets():
    from VesselReconLib.coips.network import FAZUNet, QualityClassifier, build_model, parameter_count

    lite, faz_lite = build_model("lite").eval(), build_model("faz-lite").eval()
    assert isinstance(lite, QualityClassifier) and isinstance(faz_lite, FAZUNet)
    assert parameter_count(lite) * 4 < 2e6 and parameter_count(faz_lite) * 4 < 2e6
    paper = build_model("paper").eval()
    faz_paper = build_model("faz-paper", input_size=128).eval()
    with torch.no_grad():
        assert lite(torch.rand(2, 1, 128, 128)).shape == (2, 3)
        assert paper(torch.rand(1, 1, 224, 224)).shape == (1, 3)
        assert faz_lite(torch.rand(2, 1, 64, 64)).shape == (2, 2, 64, 64)
        assert faz_paper(torch.rand(1, 1, 128, 128)).shape == (1, 2, 128, 128)   # mirrored average
    faz_paper.train()
    assert faz_paper(torch.rand(1, 1, 128, 128)).shape == (1, 3, 2, 128, 128)    # deep supervision heads
    strides = [tuple(s) for s in faz_paper.strides]
    assert strides[0] == (1, 1) and set(strides[1:]) == {(2, 2)} and len(strides) == 7
    assert all(tuple(k) == (3, 3) for k in faz_paper.kernel_size)
    with pytest.raises(CheckpointError, match="Unknown COIPS preset"):
        build_model("resnet9000")


def test_networks_zscore_each_image():
    from VesselReconLib.coips.network import build_model

    torch.manual_seed(0)
    net = build_model("lite").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), net(3.0 * x + 0.25), atol=1e-4)


# ---------------------------------------------------------------- losses


def test_class_weights_and_weighted_cross_entropy():
    from VesselReconLib.coips.losses import class_weights, quality_loss

    labels = [0, 0, 0, 1, 2, 2]  # counts 3, 1, 2; sum 6; N = 3
    assert torch.allclose(class_weights(labels), torch.tensor([6 / 9, 6 / 3, 6 / 6]))
    assert class_weights([0, 2])[1] == 0.0
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1])
    log_p = torch.log_softmax(logits, 1)
    w = class_weights(labels)
    expected = -(w[0] * log_p[0, 0] + w[1] * log_p[1, 1]) / (w[0] + w[1])
    assert torch.isclose(quality_loss(labels)(logits, targets), expected)


def test_faz_loss_is_half_ce_plus_half_dice():
    from VesselReconLib.coips.losses import faz_loss

    logits = torch.tensor([[[[2.0, -1.0], [0.0, 1.0]], [[-2.0, 1.0], [0.5, 0.0]]]])  # (1, 2, 2, 2)
    target = torch.tensor([[[[0, 1], [1, 0]]]])
    p = torch.softmax(logits, 1)
    ce = -torch.log(torch.stack([p[0, 0, 0, 0], p[0, 1, 0, 1], p[0, 1, 1, 0], p[0, 0, 1, 1]])).mean()
    fg, t = p[0, 1], target[0, 0].float()
    eps = 1e-5
    dice_loss = 1 - (2 * (fg * t).sum() + eps) / (fg.sum() + t.sum() + eps)
    assert torch.isclose(faz_loss()(logits, target), 0.5 * ce + 0.5 * dice_loss, atol=1e-6)


# ---------------------------------------------------------------- FAZ metrics


def test_faz_metrics_on_a_disk_match_hand_computed_values():
    mask = _disk(256, 30)
    metrics = faz_metrics(mask, 3.0)
    assert metrics["faz_area_mm2"] == pytest.approx(mask.sum() * 3.0 ** 2 / 256 ** 2)  # S = N a^2 / z^2
    assert metrics["faz_area_mm2"] == pytest.approx(math.pi * (30 * 3 / 256) ** 2, rel=0.01)
    assert metrics["faz_perimeter_mm"] == pytest.approx(2 * math.pi * 30 * 3 / 256, rel=0.02)
    assert metrics["faz_circularity"] == pytest.approx(1.0, abs=0.04)
    assert metrics["faz_acircularity_index"] == pytest.approx(1 / math.sqrt(metrics["faz_circularity"]))
    assert metrics["faz_axis_ratio"] == pytest.approx(1.0, abs=0.01)


def test_faz_metrics_on_an_ellipse_and_empty_mask():
    yy, xx = np.mgrid[:200, :300]
    a, b = 40.0, 20.0  # semi-axes in pixels (x, y)
    mask = ((xx - 150) / a) ** 2 + ((yy - 100) / b) ** 2 <= 1
    metrics = faz_metrics(mask, 6.0)
    assert metrics["faz_area_mm2"] == pytest.approx(mask.sum() * 6.0 ** 2 / 300 ** 2)  # z = image width
    assert metrics["faz_axis_ratio"] == pytest.approx(a / b, rel=0.02)
    h = ((a - b) / (a + b)) ** 2
    ramanujan = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h))) * 6.0 / 300
    assert metrics["faz_perimeter_mm"] == pytest.approx(ramanujan, rel=0.02)
    assert metrics["faz_circularity"] == pytest.approx(4 * math.pi * math.pi * a * b / (ramanujan * 300 / 6) ** 2,
                                                       rel=0.05)
    empty = faz_metrics(np.zeros((32, 32), bool), 3.0)
    assert empty["faz_area_mm2"] == 0.0 and math.isnan(empty["faz_circularity"])


def test_components_and_classical_baseline():
    from VesselReconLib.metrics import dice
    from VesselReconLib.phantoms.octa import render_octa

    mask = _disk(64, 12) | _disk(64, 4, centre=(5, 5))
    assert largest_component(mask).sum() == _disk(64, 12).sum()
    off = _disk(64, 3, centre=(10, 10)) | _disk(64, 8, centre=(50, 50))
    assert central_component(off).sum() == _disk(64, 8, centre=(50, 50)).sum()
    case = render_octa(31, 304, 3.0, quality=2)
    assert dice(classical_faz(case.image), case.faz_mask) > 0.8


# ---------------------------------------------------------------- reports


def test_reports_csv_html_and_svg(tmp_path):
    from VesselReconLib.coips.reports import read_csv, summarise, svg_histogram, write_csv, write_html

    rows = [{"image": f"im{i}.png", "status": "ok", "grade": GRADES[i % 3], "faz_segmented": i % 3 != 0,
             "faz_area_mm2": 0.2 + 0.01 * i if i % 3 else math.nan, "p_ungradable": 0.1} for i in range(9)]
    rows.append({"image": "bad.png", "status": "error", "grade": "", "error": "unreadable"})
    summary = summarise(rows)
    assert summary["grades"] == {"ungradable": 3, "gradable": 3, "outstanding": 3} and summary["errors"] == 1
    assert summary["faz_area_mm2"]["n"] == 6
    assert summary["faz_area_mm2"]["mean"] == pytest.approx(np.mean([0.2 + 0.01 * i for i in range(9) if i % 3]))
    svg = svg_histogram([0.1, 0.2, 0.2, 0.3], bins=4)
    assert svg.count("<rect") == 4 and svg.startswith("<svg")
    html = write_html(rows, tmp_path / "r.html").read_text()
    assert "Rejected images (4)" in html and "bad.png" in html and "im0.png" in html and "<svg" in html
    back = read_csv(write_csv(rows, tmp_path / "r.csv"))
    assert len(back) == 10 and back[1]["grade"] == "gradable" and back[0]["faz_area_mm2"] == ""
    assert summary["faz_area_mm2"]["sd"] == pytest.approx(np.std([0.2 + 0.01 * i for i in range(9) if i % 3], ddof=1))
    single = write_html(rows[1:2], tmp_path / "one.html").read_text()   # one FAZ: a mean, no SD (not "SD 0.000")
    assert "over 1 segmented images" in single and "mean 0.210" in single and "SD" not in single.split("<table")[0]


# ---------------------------------------------------------------- training setup


def test_optimisers_follow_the_paper():
    from VesselReconLib.coips.network import build_model
    from VesselReconLib.coips.train import TrainSettings, faz_optimiser, quality_optimiser

    net = build_model("lite")
    optimiser, scheduler = quality_optimiser(net, TrainSettings())
    assert isinstance(optimiser, torch.optim.Adam) and optimiser.param_groups[0]["lr"] == 1e-3
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 5
    swin = build_model("lite")
    swin.backbone_name = "swin_large_patch4_window12_384"
    optimiser, scheduler = quality_optimiser(swin, TrainSettings())
    assert isinstance(optimiser, torch.optim.AdamW) and isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR)
    assert optimiser.param_groups[0]["lr"] == pytest.approx(5e-7)  # the paper's warm-up: from 5e-7 ...
    for _ in range(20):
        optimiser.step()
        scheduler.step()
    assert optimiser.param_groups[0]["lr"] == pytest.approx(5e-4, rel=1e-3)  # ... to 5e-4 over 20 epochs
    optimiser, _ = quality_optimiser(build_model("lite"), TrainSettings(preset="paper-6mm"))
    assert isinstance(optimiser, torch.optim.AdamW) and optimiser.param_groups[0]["lr"] == pytest.approx(5e-7)
    head = build_model("lite")
    quality_optimiser(head, TrainSettings(finetune="head"))
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.fc.weight", "backbone.fc.bias"}
    optimiser, scheduler = faz_optimiser(build_model("faz-lite"), TrainSettings(epochs=10))
    group = optimiser.param_groups[0]
    assert isinstance(optimiser, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.99
    assert group["lr"] == 0.01 and isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR)
    assert scheduler.power == 0.9


def test_an_oversized_image_is_refused_in_plain_words_without_pils_warning(tmp_path, monkeypatch):
    """A 12000 x 12000 px scan in a COIPS study printed PIL's 'DecompressionBombWarning ... could be decompression
    bomb DOS attack' and a source line before the refusal; the refusal alone is said now (PIL's limit made small)."""
    import warnings

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    Image.new("L", (80, 80), 128).save(tmp_path / "scan_3x3.png")   # between PIL's warning and its error sizes
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="claims 80 x 80 pixels"):
            io.read_raster(tmp_path / "scan_3x3.png")
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]

"""Transfer test of the OCTA phantom engine: OCTAVessel, trained on phantoms only, on real ROSSA scans."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from VesselReconLib import cli, registry
from VesselReconLib.octavessel import data, evaluate, network, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROSSA = SHARED / "datasets" / "rossa"


def _shipped() -> bool:
    try:
        return registry.find_entry("octavessel", "lite").status() == "ok"
    except Exception:  # noqa: BLE001
        return False


def test_network_shapes_any_size():
    net = network.build_model("lite").eval()
    with torch.no_grad():
        for h, w in ((64, 64), (70, 90)):
            assert net(torch.zeros(1, 1, h, w)).shape == (1, 1, h, w)
    with pytest.raises(ValueError):
        network.build_model("huge")


def test_loss_and_one_training_step_on_phantoms():
    rng = np.random.default_rng(0)
    sample = data.render_phantom(5, rng, sizes=(96,), field_mm=(3.0, 3.0))
    assert sample.image.dtype == np.float32 and sample.vessel.dtype == bool
    assert 0.03 < sample.vessel.mean() < 0.3
    img, lab = data.augment_crop(sample.image, sample.vessel, 64, rng)
    assert img.shape == lab.shape == (64, 64) and set(np.unique(lab)) <= {0.0, 1.0}
    y = torch.from_numpy(lab)[None, None]
    perfect = train.dice_bce_loss(torch.where(y > 0, 20.0, -20.0), y)
    wrong = train.dice_bce_loss(torch.where(y > 0, -20.0, 20.0), y)
    assert float(perfect) < 0.01 < 1.5 < float(wrong)


def test_classical_baselines_on_a_drawn_vessel():
    img = np.full((64, 64), 0.1, np.float32)
    img[30:34, :] = 0.9
    ref = img > 0.5
    assert evaluate.otsu_mask(img).sum() == ref.sum()
    from VesselReconLib.metrics import dice

    assert dice(evaluate.frangi_mask(img), ref) > 0.6


def _fake_rossa(root: Path, n: int = 2) -> Path:
    from VesselReconLib.phantoms.octa import render_octa

    for i in range(n):
        case = render_octa(200 + i, 96, 3.0)
        for sub, arr in (("image", case.image), ("label", case.vessel_mask.astype(float))):
            (root / "test" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray((arr * 255).astype(np.uint8)).save(root / "test" / sub / f"{i + 1}.png")
    return root


@pytest.mark.skipif(not _shipped(), reason="octavessel-lite is not in the registry")
def test_eval_command_prints_the_table(tmp_path, capsys):
    root = _fake_rossa(tmp_path / "rossa")
    assert cli.main(["eval", "octavessel", "--rossa", str(root), "--no-octadepth"]) == 0
    out = capsys.readouterr().out
    assert "octavessel-lite (phantoms only)" in out and "intensity > Otsu" in out and "Frangi > Otsu" in out
    assert cli.main(["eval", "octavessel", "--rossa", str(tmp_path / "none")]) == 2


@pytest.mark.skipif(not _shipped(), reason="octavessel-lite is not in the registry")
def test_segment_command_reads_16_bit_tiffs_and_skips_a_bad_file(tmp_path, capsys):
    """`vesselrecon octavessel`: a 16-bit TIFF gives the 8-bit PNG's mask (it was clipped to white), and an
    unreadable file is one error line (exit 2) while the others are written."""
    from VesselReconLib.phantoms.octa import render_octa

    image = (render_octa(31, 160, 3.0).image * 255).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "scan.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "scan16.tif")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    inputs = [str(tmp_path / name) for name in ("broken.png", "scan.png", "scan16.tif")]
    assert cli.main(["octavessel", *inputs, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "broken.png is not a readable image" in err
    masks = [np.array(Image.open(out / f"{stem}_vessels.png")) for stem in ("scan", "scan16")]
    assert masks[0].any() and np.array_equal(masks[0], masks[1])


@pytest.mark.skipif(not (ROSSA / "test").is_dir(), reason="needs ../shared/datasets/rossa")
@pytest.mark.skipif(not _shipped(), reason="octavessel-lite is not in the registry")
def test_phantom_only_segmenter_on_20_real_rossa_test_images():
    from VesselReconLib.metrics import dice

    samples = evaluate.load_split(ROSSA, "test", limit=20)
    seg = evaluate.octavessel_segmenter("lite")
    scores = [dice(seg(s), s.vessel) for s in samples]
    otsu = [dice(evaluate.otsu_mask(s.image), s.vessel) for s in samples]
    assert np.mean(scores) >= 0.70
    assert np.mean(scores) > np.mean(otsu) + 0.1


@pytest.mark.skipif(not _shipped(), reason="octavessel-lite is not in the registry")
def test_finetune_keeps_the_best_validation_weights(tmp_path):
    """A known case: the shipped weights as the start and a learning rate (0.5) that wrecks them in two
    steps, so the best validation Dice is the start's; those weights come back, with their Dice."""
    from VesselReconLib.metrics import dice

    rng = np.random.default_rng(1)
    real = [data.render_phantom(40 + i, rng, sizes=(96,), field_mm=(3.0, 3.0)) for i in range(2)]
    init = {k: v.clone() for k, v in registry.load_model("octavessel", "lite", "cpu")[0].state_dict().items()}
    model, record = train.finetune(tmp_path, init, real, real[:1], steps=2, batch=2, crop=64, pool_size=1,
                                   validate_every=1, lr=0.5)
    assert record["steps_done"] == 2 and record["best_step"] == 0 and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in init.items())
    start = dice(evaluate.predict_probability(model, real[0].image) > 0.5, real[0].vessel)
    assert start > 0.8 and record["best_val_dice"] == pytest.approx(start, abs=1e-4)
    assert json.loads((tmp_path / "finetune.json").read_text())["best_step"] == 0

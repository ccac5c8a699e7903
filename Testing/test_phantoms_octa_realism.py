"""OCTA phantom realism statistics and the ``vesselrecon phantoms realism`` command."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from VesselReconLib import cli
from VesselReconLib.phantoms import realism
from VesselReconLib.phantoms.octa import render_octa

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROSSA = SHARED / "datasets" / "rossa"


def test_radial_spectrum_of_known_images():
    rng = np.random.default_rng(0)
    white = realism.radial_spectrum(rng.normal(size=(128, 128)))
    assert white.shape == (realism.N_SPECTRUM_BINS,) and white.sum() == pytest.approx(1.0)
    assert white[4:].max() / white[4:].min() < 1.6  # white noise: flat (low bins hold few samples)
    smooth = realism.radial_spectrum(np.cumsum(np.cumsum(rng.normal(size=(128, 128)), 0), 1))
    assert smooth[0] > 100 * smooth[-1]  # integrated noise: power falls with frequency


def test_calibres_of_drawn_bars():
    mask = np.zeros((64, 64), bool)
    mask[10:13, 5:60] = True  # 3 px wide bar
    mask[30:37, 5:60] = True  # 7 px wide bar
    cal = realism.calibres_px(mask)
    # two bars of equal length: half the skeleton reads 3 px, half 7 px (bar ends aside)
    assert np.percentile(cal, 25) == pytest.approx(3.0) and np.percentile(cal, 75) == pytest.approx(7.0)


def test_identical_batches_have_zero_distance_and_phantoms_differ_from_noise():
    st = realism.phantom_stats(3, seed=1, size_px=160, field_mm=3.0)
    d = realism.compare(st, st)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in d.values())
    rng = np.random.default_rng(0)
    noise = realism.ImageStats()
    for _ in range(3):
        noise.extend(realism.image_stats(rng.random((160, 160)), rng.random((160, 160)) > 0.5, 1.0))
    far = realism.compare(st, noise)
    assert far["histogram"] > 0.1 and far["vessel_fraction"] > 0.3 and far["faz_area"] > 0.4


def _fake_real_folder(root: Path, n: int = 4) -> Path:
    for split in ("test",):
        for i in range(n):
            case = render_octa(100 + i, 160, 3.0)
            for sub, arr in (("image", case.image), ("label", case.vessel_mask.astype(float))):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(root / split / sub / f"{i}.png")
    return root


def test_realism_command_prints_distance_table(tmp_path, capsys):
    folder = _fake_real_folder(tmp_path / "real")
    assert cli.main(["phantoms", "realism", "--real", str(folder), "--count", "2", "--size-px", "160",
                     "--field-mm", "3"]) == 0
    out = capsys.readouterr().out
    for column in ("histogram W1", "spectrum (decades)", "vessel_fraction W1", "calibre W1", "faz_area W1"):
        assert column in out
    assert "real (half) vs real (half)" in out and "phantoms 3 mm, 160 px" in out


def test_realism_command_needs_a_real_folder(tmp_path, capsys):
    assert cli.main(["phantoms", "realism"]) == 2
    assert cli.main(["phantoms", "realism", "--real", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not ROSSA.is_dir(), reason="needs ../shared/datasets/rossa")
def test_phantoms_match_rossa_vessel_fraction_and_beat_noise():
    real = realism.real_folder_stats(ROSSA / "test", limit=20)
    ph = realism.phantom_stats(6, seed=0, size_px=320, field_mm=4.5)
    s_real, s_ph = realism.summary(real), realism.summary(ph)
    assert 0.08 < s_real["vessel_fraction"] < 0.13  # ROSSA labels: vessel tree only, ~10 %
    assert abs(s_ph["vessel_fraction"] - s_real["vessel_fraction"]) < 0.06
    d = realism.compare(ph, real)
    assert d["histogram"] < 0.15 and d["spectrum"] < 0.3

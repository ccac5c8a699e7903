"""`vesselrecon eval <module> --json PATH` as the module READMEs give it: PATH's folder need not exist yet
(the READMEs write to out/<module>/..., absent on a fresh clone), and a PATH that cannot be written is
refused before the evaluation starts, not after minutes of work."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


def test_octadepth_eval_writes_its_json_into_a_new_folder(tmp_path):
    from VesselReconLib.cli import main

    target = tmp_path / "out" / "octadepth" / "eval.json"
    assert main(["eval", "octadepth", "--no-phantoms", "--json", str(target)]) == 0
    assert json.loads(target.read_text(encoding="utf-8")) == {}


def test_coips_eval_writes_its_json_into_a_new_folder(tmp_path):
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.datasets import write_dataset

    data = write_dataset("octa-quality", tmp_path / "data", 3, seed=5, size_px=128)
    target = tmp_path / "out" / "coips" / "eval.json"
    assert main(["eval", "coips", "--data", str(data), "--real", "none", "--device", "cpu",
                 "--json", str(target)]) == 0
    written = json.loads(target.read_text(encoding="utf-8"))
    assert written["n_quality"] == 3 and written["quality"][0]["method"] == "COIPS lite"


def test_angio3d_eval_writes_its_phantom_rows_as_json(tmp_path):
    from VesselReconLib.cli import main
    from VesselReconLib.phantoms.datasets import write_dataset

    data = write_dataset("xray", tmp_path / "data", 1, seed=5)
    target = tmp_path / "out" / "angio3d" / "eval.json"
    assert main(["eval", "angio3d", "--data", str(data), "--ablation", "", "--json", str(target)]) == 0
    written = json.loads(target.read_text(encoding="utf-8"))
    assert written["cases"] == 1 and "real_phantom" not in written
    shipped = written["rows"][0]
    assert 0 < shipped["mae_mm"] < 5 and 0 < shipped["dice"] <= 1
    # the opt-in calibrator's column beside the default reading's, from the same run; it corrects the U-Net only
    frangi = next(row for row in written["rows"] if row["method"].startswith("Frangi"))
    assert frangi["cal_error_pct"] == frangi["ds_error_pct"] and frangi["cal_bias_pct"] == frangi["ds_bias_pct"]
    assert shipped["cal_error_pct"] == pytest.approx(abs(shipped["cal_bias_pct"]))


@pytest.mark.parametrize("module,data", [("octadepth", "--data"), ("coips", "--data"), ("vesselsdf", "--data"),
                                         ("octavessel", "--rossa"), ("angio3d", "--data"), ("vcnet", "--data")])
def test_a_json_path_under_a_file_is_refused_before_the_evaluation(tmp_path, module, data, capsys):
    from VesselReconLib.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x", encoding="utf-8")
    assert main(["eval", module, data, str(tmp_path / "missing"), "--json", str(blocker / "eval.json")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_reports_are_strict_json_with_null_for_what_was_not_measured(tmp_path):
    """Round 15: NaN and inf ("not measured") are written as null; Python's default NaN is not JSON."""
    from VesselReconLib.cli import finite_json, json_report

    data = {"a": float("nan"), "rows": [{"b": float("inf"), "c": 1.5}, (2, float("-inf"))], "d": "x"}
    assert json.loads(finite_json(data)) == {"a": None, "rows": [{"b": None, "c": 1.5}, [2, None]], "d": "x"}
    json_report(tmp_path / "r.json")(data)
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["rows"][0] == {"b": None, "c": 1.5}

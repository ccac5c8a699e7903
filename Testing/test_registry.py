"""Registry schema, checksums and checkpoint loading errors, on a tiny stand-in network package."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from VesselReconLib import METHODS, cli, registry, training
from VesselReconLib.errors import CheckpointError


class TinyNet(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, width, 3, padding=1)
        self.head = torch.nn.Conv2d(width, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


class OtherNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)


@pytest.fixture
def tiny_method(monkeypatch):
    """Register ``VesselReconLib.tinymethod.network.build_model`` for the duration of a test."""
    package = types.ModuleType("VesselReconLib.tinymethod")
    network = types.ModuleType("VesselReconLib.tinymethod.network")
    def build_model(preset, **config):
        net = TinyNet(width=8 if preset == "paper" else config.get("width", 4))
        net.level = config.get("level", 0.0)  # a setting that is not a weight (like a calibrated level)
        return net

    network.build_model = build_model
    package.network = network
    monkeypatch.setitem(sys.modules, "VesselReconLib.tinymethod", package)
    monkeypatch.setitem(sys.modules, "VesselReconLib.tinymethod.network", network)
    return "tinymethod"


def ship(tmp_path, model=None, preset="lite"):
    torch.manual_seed(0)
    return training.ship_model(model or TinyNet(), "tinymethod", preset, command="vesselrecon train tinymethod",
                               data="phantoms seed 1", seed=1, metrics={"dice": 0.5},
                               input_spec={"channels": 1}, directory=tmp_path)


def test_ship_and_load_round_trip(tmp_path, tiny_method):
    entry = ship(tmp_path)
    assert entry.status() == "ok"
    assert json.loads((tmp_path / "tinymethod-lite.json").read_text())["training"]["seed"] == 1
    net, metadata = registry.load_model("tinymethod", "lite", directory=tmp_path)
    torch.manual_seed(0)
    reference = TinyNet()   # the shipped network's weights (ship() seeds 0 before building it)
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(net(x), reference(x))
    assert metadata["preset"] == "lite" and not net.training


def test_corrupt_file_is_a_checksum_mismatch(tmp_path, tiny_method):
    entry = ship(tmp_path)
    data = bytearray(entry.path.read_bytes())
    data[-10] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    assert registry.load_registry(tmp_path)[0].status() == "checksum mismatch"
    with pytest.raises(CheckpointError, match="Checksum mismatch"):
        registry.load_model("tinymethod", "lite", directory=tmp_path)


def test_missing_file_and_unknown_preset(tmp_path, tiny_method):
    entry = ship(tmp_path)
    entry.path.unlink()
    assert registry.load_registry(tmp_path)[0].status() == "missing file"
    with pytest.raises(CheckpointError, match="No shipped tinymethod model named 'huge'"):
        registry.load_model("tinymethod", "huge", directory=tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        registry.load_model("tinymethod", str(tmp_path / "nothing.safetensors"))


def test_wrong_architecture_wrong_preset_and_garbage(tmp_path, tiny_method):
    other = tmp_path / "other.pt"
    torch.save(OtherNet().state_dict(), other)
    with pytest.raises(CheckpointError, match="does not match the TinyNet architecture"):
        registry.load_model("tinymethod", str(other))
    wide = tmp_path / "wide.safetensors"
    registry.save_model(TinyNet(width=8), wide, "tinymethod", "paper")
    net, metadata = registry.load_model("tinymethod", str(wide))
    assert metadata["preset"] == "paper" and net.conv.out_channels == 8
    mislabelled = tmp_path / "mislabelled.safetensors"
    registry.save_model(TinyNet(width=8), mislabelled, "othermethod", "paper")
    with pytest.raises(CheckpointError, match="othermethod model, not a tinymethod"):
        registry.load_model("tinymethod", str(mislabelled))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        registry.load_model("tinymethod", str(garbage))


def test_pt_checkpoints_load_with_weights_only(tmp_path, tiny_method):
    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": TinyNet().state_dict(), "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="corrupt"):
        registry.load_model("tinymethod", str(evil))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": TinyNet().state_dict()}, wrapped)
    net, _ = registry.load_model("tinymethod", str(wrapped))
    assert isinstance(net, TinyNet)


def test_schema_rejects_incomplete_entries(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "module": "x"}))
    with pytest.raises(registry.RegistryError, match="preset"):
        registry.load_registry(tmp_path)


def test_models_command_empty_and_corrupt(tmp_path, tiny_method, capsys):
    assert cli.main(["models", "--registry", str(tmp_path)]) == 0
    assert "No models" in capsys.readouterr().out
    entry = ship(tmp_path)
    entry.path.write_bytes(b"corrupted")
    assert cli.main(["models", "--registry", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "tinymethod-lite" in out and "checksum mismatch" in out


def test_shipped_registry_is_valid_and_intact():
    for entry in registry.load_registry():
        assert entry.status() == "ok", entry.name
        assert entry.module in METHODS
        assert entry.path.stat().st_size < 8 * 2**20, f"{entry.name} is too large to ship"


def test_find_entry_prefers_the_presets_own_entry_over_an_ablation(tmp_path, tiny_method):
    ship(tmp_path)
    training.ship_model(TinyNet(), "tinymethod", "lite", name="tinymethod-ablation-lite", command="c", data="d",
                        seed=2, metrics={}, input_spec={}, directory=tmp_path)
    # "tinymethod-ablation-lite" sorts first, yet "lite" must resolve to "tinymethod-lite".
    assert registry.find_entry("tinymethod", "lite", tmp_path).name == "tinymethod-lite"
    assert registry.find_entry("tinymethod", "tinymethod-ablation-lite", tmp_path).training["seed"] == 2


def test_a_shipped_file_loaded_by_path_takes_its_registry_settings(tmp_path, tiny_method):
    entry = ship(tmp_path)
    record = json.loads((tmp_path / "tinymethod-lite.json").read_text())
    record["config"] = {"level": 0.625}  # calibrated after the file was written: in the entry only
    (tmp_path / "tinymethod-lite.json").write_text(json.dumps(record))
    by_name, _ = registry.load_model("tinymethod", "lite", directory=tmp_path)
    by_path, metadata = registry.load_model("tinymethod", str(entry.path), directory=tmp_path)
    assert by_name.level == by_path.level == 0.625 and metadata["source"].endswith("(tinymethod-lite)")
    own = tmp_path / "own.safetensors"  # a user's checkpoint: the settings written into the file
    registry.save_model(TinyNet(), own, "tinymethod", "lite", config={"level": 0.1})
    assert registry.load_model("tinymethod", str(own), directory=tmp_path)[0].level == 0.1


@pytest.mark.parametrize("module", sorted({e.module for e in registry.load_registry()}))
def test_every_shipped_model_is_one_model_box_choice_that_loads_it(module):
    """The model box lists each shipped model once, by a name that loads that very entry (VesselSDF's
    eight ablations of preset ``lite`` were listed as ``lite`` eight times, all loading the default)."""
    choices = registry.model_choices(module)
    loaded = [registry.find_entry(module, name).name for name in choices]
    assert len(set(loaded)) == len(choices)
    parts = {"faz-lite", "lumen", "strip", "fusion", "calibrator"}  # COIPS's FAZ U-Net, Angio3D's QCA networks: parts
    wanted = {e.name for e in registry.load_registry() if e.module == module and e.preset not in parts}
    assert set(loaded) == wanted
    assert not parts & set(choices)


def test_angio3d_model_box_offers_segmentation_networks_only():
    """Angio3D ships QCA networks beside its segmenter (the lumen regressor, the strip reader); choosing one
    as the model would fail at Apply, so every choice has the default's architecture."""
    entries = {e.name: e for e in registry.load_registry() if e.module == "angio3d"}
    default = registry.find_entry("angio3d", "lite").architecture
    choices = registry.model_choices("angio3d")
    assert len(entries) > len(choices)
    assert {registry.find_entry("angio3d", name).architecture for name in choices} == {default}

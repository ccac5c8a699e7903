"""Model registry: shipped ``safetensors`` weights with checksums, provenance and metrics.

Each shipped model has ``models/<name>.json`` beside its weights file. Entry fields (all required
unless marked optional)::

    name          unique model name, e.g. "octadepth-lite"
    module        method package: one of VesselReconLib.METHODS (octadepth, angio3d, coips, vcnet, vesselsdf, octavessel)
    preset        network preset passed to ``<module>.network.build_model`` (e.g. "lite")
    architecture  model class name, checked against checkpoint metadata
    file          weights file name, relative to the registry folder
    sha256        hex digest of the weights file
    input_spec    dict describing the expected input (channels, size, spacing, intensity)
    training      dict with at least "command", "data" and "seed"
    metrics       dict of held-out metrics
    config        optional dict of keyword overrides for ``build_model``
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .vcnet.defaults import DEFAULT_MODEL as VCNET_DEFAULT_MODEL

REGISTRY_DIR = Path(__file__).resolve().parent / "models"
REQUIRED_FIELDS = {"name": str, "module": str, "preset": str, "architecture": str, "file": str,
                   "sha256": str, "input_spec": dict, "training": dict, "metrics": dict}
REQUIRED_TRAINING = ("command", "data", "seed")


class RegistryError(ValueError):
    """A registry entry does not follow the schema."""


@dataclass
class ModelEntry:
    """One shipped model."""

    name: str
    module: str
    preset: str
    architecture: str
    file: str
    sha256: str
    input_spec: dict
    training: dict
    metrics: dict
    config: dict = field(default_factory=dict)
    directory: Path = REGISTRY_DIR

    @property
    def path(self) -> Path:
        return self.directory / self.file

    def status(self) -> str:
        """``ok``, ``missing file`` or ``checksum mismatch``."""
        if not self.path.is_file():
            return "missing file"
        return "ok" if sha256_file(self.path) == self.sha256 else "checksum mismatch"

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("directory")
        return data


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_entry(data: dict, source: str = "entry") -> None:
    """Raise :class:`RegistryError` unless ``data`` follows the schema."""
    for key, kind in REQUIRED_FIELDS.items():
        if not isinstance(data.get(key), kind):
            raise RegistryError(f"{source}: field {key!r} must be a {kind.__name__}.")
    missing = [k for k in REQUIRED_TRAINING if k not in data["training"]]
    if missing:
        raise RegistryError(f"{source}: training provenance lacks {', '.join(missing)}.")
    if len(data["sha256"]) != 64:
        raise RegistryError(f"{source}: sha256 must be 64 hex digits.")


def load_registry(directory: str | Path | None = None) -> list[ModelEntry]:
    """All entries of a registry folder, sorted by name (an empty folder gives an empty list)."""
    directory = Path(directory) if directory else REGISTRY_DIR
    entries = []
    for json_path in sorted(directory.glob("*.json")):
        data = json.loads(json_path.read_text(encoding="utf-8"))
        validate_entry(data, str(json_path))
        known = {k: data[k] for k in ModelEntry.__dataclass_fields__ if k in data and k != "directory"}
        entries.append(ModelEntry(**known, directory=directory))
    return entries


# Entries that are parts of another model, never chosen on their own: COIPS's FAZ U-Net (picked with its
# grader) and Angio3D's lumen regressor, strip reader, two-view fusion and QCA calibrator (used by the QCA).
COMPONENT_PRESETS = {"coips": ("faz-",), "angio3d": ("lumen", "strip", "fusion", "calibrator")}


def _lookup(candidates: list[ModelEntry], module: str, model: str) -> ModelEntry | None:
    """The entry named ``model`` or ``<module>-<model>``, else the first with preset ``model``."""
    for wanted in (model, f"{module}-{model}"):  # an exact name first, then the preset's own entry
        for entry in candidates:
            if entry.name == wanted:
                return entry
    return next((entry for entry in candidates if entry.preset == model), None)


# Each module's default model, the model box's first choice: ``lite`` unless named here.
DEFAULT_MODELS = {"vcnet": VCNET_DEFAULT_MODEL}


def model_choices(module: str, directory: str | Path | None = None) -> list[str]:
    """Each shipped model of ``module`` once, by the name that loads it (its preset when the preset
    loads it, else its registry name), parts of other models left out: the module's default
    (:data:`DEFAULT_MODELS`) first, then registry order. The model box lists exactly this, with or without torch."""
    candidates = [e for e in load_registry(directory) if e.module == module]
    hidden = COMPONENT_PRESETS.get(module, ())
    names = (e.preset if _lookup(candidates, module, e.preset) is e else e.name
             for e in candidates if not e.preset.startswith(hidden))
    default = DEFAULT_MODELS.get(module, "lite")
    return sorted(dict.fromkeys(names), key=lambda name: name != default)


def find_entry(module: str, model: str, directory: str | Path | None = None) -> ModelEntry:
    """The entry of ``module`` named ``model`` or ``<module>-<model>``, else the first with preset ``model``."""
    entry = _lookup([e for e in load_registry(directory) if e.module == module], module, model)
    if entry is not None:
        return entry
    shipped = ", ".join(model_choices(module, directory)) or "none"
    raise CheckpointError(
        f"No shipped {module} model named {model!r} (shipped models: {shipped}). Train one with "
        f"`vesselrecon train {module} --preset {model}` and load the checkpoint file instead.")


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    """State dict and string metadata of a ``.safetensors`` or ``.pt`` checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist: check the path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                state = {key: handle.get_tensor(key) for key in handle.keys()}
            return state, metadata
        import torch

        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        reason = f"{exc.__class__.__name__}: {str(exc)[:200]}"
        if "Weights only load failed" in str(exc):   # torch's own text advises weights_only=False: unsafe, never ours
            if "Unsupported global" in str(exc):
                raise CheckpointError(f"Checkpoint {path.name} is refused as corrupt or unsafe: it holds pickled "
                                      "Python objects besides tensors, which are never loaded (they can run code). "
                                      "Save the weights alone, torch.save(model.state_dict(), path), or as "
                                      ".safetensors.") from exc
            reason = "not a PyTorch checkpoint"
        raise CheckpointError(f"Checkpoint {path.name} is corrupt or not a model file ({reason}).") from exc
    return _unwrap_torch_checkpoint(loaded, path)


def _unwrap_torch_checkpoint(loaded: Any, path: Path) -> tuple[dict, dict]:
    if not isinstance(loaded, dict):
        raise CheckpointError(f"Checkpoint {path.name} holds a {type(loaded).__name__}, not a state dict.")
    metadata = {k: str(v) for k, v in loaded.get("metadata", {}).items()} if isinstance(loaded.get("metadata"), dict) else {}
    for key in ("state_dict", "model"):
        if isinstance(loaded.get(key), dict):
            return loaded[key], metadata
    return loaded, metadata


def read_checkpoint(path: str | Path, expected_sha256: str | None = None) -> tuple[dict, dict]:
    """Read a checkpoint, verifying its checksum first when one is given.

    :param path: ``.safetensors`` or ``.pt`` (loaded with ``weights_only=True``).
    :param expected_sha256: registry checksum to verify.
    :raises CheckpointError: missing, corrupt or checksum mismatch.
    """
    path = Path(path)
    if expected_sha256 and path.is_file() and sha256_file(path) != expected_sha256:
        raise CheckpointError(f"Checksum mismatch for {path.name}: the file is corrupt or was replaced. "
                              "Reinstall the extension or retrain the model.")
    return _read_checkpoint(path)


def _check_metadata(metadata: dict, module: str, preset: str | None, architecture: str) -> None:
    if metadata.get("module") and metadata["module"] != module:
        raise CheckpointError(f"This checkpoint is a {metadata['module']} model, not a {module} model.")
    if metadata.get("architecture") and metadata["architecture"] != architecture:
        raise CheckpointError(f"Wrong architecture: checkpoint has {metadata['architecture']}, expected {architecture}.")
    if preset and metadata.get("preset") and metadata["preset"] != preset:
        raise CheckpointError(f"Wrong preset: checkpoint was trained as {metadata['preset']!r}, "
                              f"but {preset!r} was requested.")


def build_model(module: str, preset: str, config: dict | None = None):
    """Build an untrained network through ``VesselReconLib.<module>.network.build_model``."""
    network = importlib.import_module(f"{__package__}.{module}.network")
    return network.build_model(preset, **(config or {}))


def check_finite_weights(state: dict, source: str) -> None:
    """Refuse a state dict holding NaN or infinite weights (a corrupt or diverged checkpoint).

    :raises CheckpointError: naming the file and the first bad tensor.
    """
    for key, tensor in state.items():
        if hasattr(tensor, "is_floating_point") and tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise CheckpointError(f"Checkpoint {source} holds NaN or infinite weights (first in {key!r}); "
                                  "the training diverged or the file is corrupt: retrain or load another model.")


def _finite_output_hook(step: str):
    """A forward hook refusing NaN/inf outputs of ``step`` before any post-processing sees them."""
    from .errors import check_finite_output

    def hook(module, inputs, output):
        check_finite_output(output, f"The output of {step}",
                            "the input may lie far outside what the model was trained on")

    return hook


def guard_outputs(model, source: str) -> None:
    """Make the network and each of its direct parts (encoder, heads, segmenter...) refuse NaN/inf
    outputs with an :class:`~VesselReconLib.errors.InferenceError` naming the part; idempotent."""
    if getattr(model, "_vesselrecon_guarded", False):
        return
    model.register_forward_hook(_finite_output_hook(f"the {source} network"))
    for name, child in model.named_children():
        child.register_forward_hook(_finite_output_hook(f"the {source} network's {name}"))
    model._vesselrecon_guarded = True


def load_into(model, state: dict, source: str) -> None:
    """Strictly load ``state`` into ``model``, turning key/shape mismatches and NaN weights into a clear
    error, and make every later forward pass refuse NaN/inf outputs (:class:`InferenceError`)."""
    check_finite_weights(state, source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][:4]
        raise CheckpointError(f"{source} does not match the {type(model).__name__} architecture: "
                              + " ".join(lines)[:600]) from exc
    guard_outputs(model, source)


def shipped_entry(module: str, path: str | Path, directory: str | Path | None = None) -> ModelEntry | None:
    """The registry entry of ``module`` whose weights file has this file's sha256, else None. A shipped
    file keeps the settings calibrated after it was written (a surface level, a gate) in its entry only."""
    digest = sha256_file(path)
    return next((e for e in load_registry(directory) if e.module == module and e.sha256 == digest), None)


def load_model(module: str, model: str = "lite", device: str = "cpu", directory: str | Path | None = None):
    """Build a network and load weights: a shipped model (name or preset) or a checkpoint path.

    :param module: method package name, e.g. ``"octadepth"``.
    :param model: a shipped preset/name (``"lite"``) or a path to ``.safetensors``/``.pt`` (a copy of a
        shipped file takes its registry entry's settings, :func:`shipped_entry`).
    :param device: torch device to move the model to.
    :returns: the network in eval mode and its metadata (preset, config, source, and ``training``: the registry
        entry's training record, or the one a checkpoint carries, else empty).
    """
    if Path(model).suffix in (".safetensors", ".pt", ".pth"):
        state, metadata = read_checkpoint(model)
        shipped = shipped_entry(module, model, directory)
        if shipped is not None:  # a shipped file by path: its registry settings, as when loaded by name
            preset, config, source = shipped.preset, shipped.config, f"{Path(model).name} ({shipped.name})"
            training = shipped.training
        else:
            preset = metadata.get("preset", "lite")
            config = json.loads(metadata.get("config", "{}"))
            source = Path(model).name
            training = json.loads(metadata.get("training", "{}"))
    else:
        entry = find_entry(module, model, directory)
        state, metadata = read_checkpoint(entry.path, entry.sha256)
        preset, config, source, training = entry.preset, entry.config, entry.name, entry.training
    net = build_model(module, preset, config)
    _check_metadata(metadata, module, preset, type(net).__name__)
    load_into(net, state, source)
    from .pointwise import use_matmul_pointwise

    use_matmul_pointwise(net)   # oneDNN's small 1×1 convolutions stall on 2 CPU threads (pointwise.py)
    metadata = {**metadata, "preset": preset, "config": config, "source": source, "training": training}
    return net.to(device).eval(), metadata


def load_installed(module: str, model: str, device: str = "cpu"):
    """The network of a shipped model (:func:`load_model`), or ``None`` when it is not installed or its file fails
    its checks: for optional parts, such as Angio3D's QCA readers."""
    try:
        return load_model(module, model, device)[0]
    except CheckpointError:
        return None


def save_model(model, path: str | Path, module: str, preset: str, config: dict | None = None,
               extra: dict | None = None) -> str:
    """Save a network as ``safetensors`` with identifying metadata; return its sha256."""
    from safetensors.torch import save_file

    metadata = {"module": module, "preset": preset, "architecture": type(model).__name__,
                "config": json.dumps(config or {}), **{k: str(v) for k, v in (extra or {}).items()}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return sha256_file(path)


def write_entry(entry: ModelEntry) -> Path:
    """Validate and write ``<name>.json`` for an entry into its registry folder."""
    data = entry.to_json()
    validate_entry(data, entry.name)
    out = entry.directory / f"{entry.name}.json"
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out

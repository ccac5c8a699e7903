"""Training: random augmented crops of phantoms (vessel + depth labels) mixed with real ROSSA images
(vessel labels only; the depth terms are masked off for them), L_total, Adam + cosine decay, shipping.

The paper's optimiser settings are not given in the text we follow, so we use Adam with a per-step
cosine decay to 1 % of the initial rate, flips and 90-degree rotations. Checkpoint selection uses
``val_score = phantom depth RMSE + (1 - ROSSA val Dice)`` (``val`` split; ``test`` is for reporting).
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import training
from ..device import resolve_device
from . import data, losses, network

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run depends on."""

    data_dir: Path
    out_dir: Path
    preset: str = "lite"
    plain: bool = False
    epochs: int = 10
    steps_per_epoch: int = 20
    batch: int = 6
    crop: int = 128
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    mean_vessel_depth: float | None = None
    rossa_dir: Path | None = None
    real_per_batch: int = 0
    val_real: int = 40
    init: Path | None = None
    """Start from these weights (a ``.safetensors``/``.pt`` file or a shipped name): every tensor whose
    name and shape match is copied (warm start), the rest keep their fresh initialisation."""
    intensity_augmentation: bool = False
    speckle_augmentation: bool = False
    resolution_augmentation: bool = False
    """:func:`data.augment_resolution` (blur and down-sampling drawn from a range) on the training crops."""
    structure_stride: int | None = None
    """Override of the preset's structure-branch resolution (1 full, 2 half); recorded in the registry config."""
    hidden: int | None = None
    """Override of the preset's SCB attention width; recorded in the registry config."""
    vessel_hidden: int | None = None
    """Override of the preset's vessel-head width; recorded in the registry config."""
    background_depth: str = "zero"
    """Depth target on the background: ``zero`` (the paper) or ``nearest`` (the nearest known depth,
    :func:`data.fill_background_depth`; the loss module explains why)."""
    select_threshold: bool = False
    """After training, pick the vessel threshold with the best ROSSA ``val`` Dice and fold it into the
    vessel head's bias (so the shipped model's 0.5 is that threshold)."""
    phantom_vessels: str = "all"
    """``all``: the phantom's vessel mask (which follows the expert, ROSSA, convention: the arteriole/
    venule tree, no capillary bed); ``large``: only its vessels about 3 px wide and up
    (:func:`data.large_vessel_target`, thinner ones ignored)."""

    @property
    def network_config(self) -> dict:
        """``build_model`` overrides (empty: the preset as it is)."""
        overrides = {"structure_stride": self.structure_stride, "hidden": self.hidden,
                     "vessel_hidden": self.vessel_hidden}
        return {name: int(value) for name, value in overrides.items() if value is not None}

    @property
    def model_preset(self) -> str:
        """The ``build_model`` preset: ``--plain`` turns ``lite``/``paper`` into ``unet-lite``/``unet-paper``."""
        return f"unet-{self.preset}" if self.plain and not self.preset.startswith("unet-") else self.preset


def split(samples: list, val_fraction: float) -> tuple[list, list]:
    """Last ``val_fraction`` of the cases (at least one) are held out for validation."""
    n_val = max(1, int(round(len(samples) * val_fraction))) if len(samples) > 1 else 0
    return samples[: len(samples) - n_val] or samples, samples[len(samples) - n_val:]


def batch_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    if not isinstance(batch, data.Batch):
        image, vessel, depth = batch
        batch = data.Batch(image, vessel, torch.ones_like(vessel), depth, torch.ones(len(image)))
    batch = batch.to(next(model.parameters()).device)
    return losses.octadepth_loss(model(batch.image), batch.vessel, batch.depth, batch.vessel_weight,
                                 batch.has_depth, batch.depth_support).total


def _forward_whole(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    from .pipeline import _pad, normalize_image

    device = next(model.parameters()).device
    tensor = torch.from_numpy(normalize_image(image))[None, None].to(device)
    padded, (height, width) = _pad(tensor)
    return model(padded)[0, :, :height, :width].float().cpu().numpy()


def make_validate(val_samples: list[data.OCTASample], real_samples: list[data.OCTASample] | None = None):
    """``model -> {loss, rmse, dice, real_dice, score}`` on whole held-out images.

    ``rmse``: relative depth on the phantoms' vessel pixels; ``dice``: phantom vessel Dice (against
    the training target); ``real_dice``: Dice on the real validation images; ``score`` (lower is
    better) = ``rmse + (1 - real_dice)`` (``rmse + (1 - dice)`` without real images).
    """
    from .. import metrics

    def validate(model: torch.nn.Module) -> dict:
        totals, rmses, dices = [], [], []
        for sample in val_samples:
            out = _forward_whole(model, sample.image)
            tensors = [torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]
                       for a in (sample.vessel, sample.depth)]
            totals.append(float(losses.octadepth_loss(torch.from_numpy(out)[None], *tensors).total))
            rmses.append(metrics.rmse(out[1], sample.depth, sample.depth > 0))
            weight = np.ones_like(sample.vessel) if sample.vessel_weight is None else sample.vessel_weight
            dices.append(metrics.dice((out[0] > 0.5) & weight, sample.vessel & weight))
        result = {"loss": float(np.mean(totals)) if totals else 0.0,
                  "rmse": float(np.mean(rmses)) if rmses else 0.0, "dice": float(np.mean(dices)) if dices else 0.0}
        if real_samples:
            result["real_dice"] = float(np.mean([metrics.dice(_forward_whole(model, s.image)[0] > 0.5, s.vessel)
                                                 for s in real_samples]))
        result["score"] = result["rmse"] + 1.0 - result.get("real_dice", result["dice"])
        return result

    return validate


def load_training_data(config: TrainConfig) -> tuple[list, list, list, list]:
    """Phantom train/validation cases and real (ROSSA) train/validation images."""
    phantoms = data.load_dataset(config.data_dir)
    if config.phantom_vessels == "large":
        phantoms = data.with_large_vessel_targets(phantoms)
    train_samples, val_samples = split(phantoms, config.val_fraction)
    real_train, real_val = [], []
    if config.rossa_dir and config.real_per_batch > 0:
        real_train = data.load_rossa(config.rossa_dir, data.ROSSA_TRAIN)
        real_val = data.load_rossa(config.rossa_dir, "val", limit=config.val_real)
    return train_samples, val_samples, real_train, real_val


def train(config: TrainConfig, progress=None, cancel=None) -> tuple[torch.nn.Module, training.Trainer, list]:
    """Train a network; returns it (best validation weights), the trainer and the held-out phantoms."""
    training.seed_everything(config.seed)
    train_samples, val_samples, real_train, real_val = load_training_data(config)
    crop = min(config.crop, *(min(s.image.shape) // 16 * 16 for s in train_samples + real_train))
    device = resolve_device(config.device)
    model = network.build_model(config.model_preset, **config.network_config)
    if config.init:
        warm_start(model, config.init)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    total_steps = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    trainer = training.Trainer(model, optimizer, batch_loss, config.out_dir, scheduler=scheduler, device=device,
                               monitor="val_score", step_scheduler_per_batch=True)
    if config.resume:
        trainer.resume()
    real = min(config.real_per_batch, config.batch) if real_train else 0
    groups, counts = [train_samples, real_train], [config.batch - real, real]

    def make_batches(epoch: int):
        rng = np.random.default_rng([config.seed, epoch])
        for _ in range(config.steps_per_epoch):
            yield data.mixed_crop_batch(groups if real else groups[:1], counts if real else counts[:1], crop, rng,
                                        intensity=config.intensity_augmentation,
                                        fill_background=config.background_depth == "nearest",
                                        speckle=config.speckle_augmentation,
                                        resolution=config.resolution_augmentation)

    log.info("training %s on %d phantoms (%d held out) + %d real images (%d per batch; %d real held out), "
             "%d epochs x %d steps", config.model_preset, len(train_samples), len(val_samples), len(real_train),
             real, len(real_val), config.epochs, config.steps_per_epoch)
    trainer.fit(make_batches, config.epochs, make_validate(val_samples, real_val) if val_samples else None,
                config.steps_per_epoch, progress, cancel)
    trainer.load_best()
    config.mean_vessel_depth = eval_mean_depth(train_samples)
    return model.eval(), trainer, val_samples


def warm_start(model: torch.nn.Module, source: str | Path) -> list[str]:
    """Copy every tensor of ``source`` whose name and shape match ``model``'s; returns the copied names."""
    from .. import registry

    path = Path(source)
    if path.suffix in (".safetensors", ".pt", ".pth") and path.is_file():
        state = registry.read_checkpoint(path)[0] if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)["model"]
    else:
        state = registry.load_model("octadepth", str(source))[0].state_dict()
    own = model.state_dict()
    copied = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    model.load_state_dict({**own, **{k: state[k] for k in copied}})
    log.info("warm start from %s: %d of %d tensors copied", source, len(copied), len(own))
    return copied


def vessel_logit_layer(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """The layer whose output channel is the vessel logit, and that channel."""
    if model.plain:
        return model.head.conv, 0
    return model.vessel_head[-1].conv, 0


def select_threshold(model: torch.nn.Module, samples: list[data.OCTASample],
                     candidates=tuple(np.round(np.arange(0.3, 0.71, 0.05), 2))) -> tuple[float, float]:
    """Vessel threshold with the best mean Dice on ``samples``; returns ``(threshold, dice)``."""
    from .. import metrics

    with torch.no_grad():
        maps = [_forward_whole(model, s.image)[0] for s in samples]
    scores = {t: float(np.mean([metrics.dice(m > t, s.vessel) for m, s in zip(maps, samples)])) for t in candidates}
    best = max(scores, key=scores.get)
    log.info("val Dice by threshold: %s", {k: round(v, 4) for k, v in scores.items()})
    return float(best), scores[best]


def fold_threshold(model: torch.nn.Module, threshold: float) -> None:
    """Shift the vessel logit by ``-logit(threshold)``: the model's probability 0.5 becomes ``threshold``."""
    layer, channel = vessel_logit_layer(model)
    with torch.no_grad():
        layer.bias[channel] -= math.log(threshold / (1 - threshold))


def eval_mean_depth(samples: list) -> float:
    from .eval import mean_vessel_depth

    return mean_vessel_depth(samples)


def real_dice(model: torch.nn.Module, samples: list[data.OCTASample], threshold: float = 0.5) -> float:
    """Mean vessel Dice over real labelled images."""
    from .. import metrics

    with torch.no_grad():
        return float(np.mean([metrics.dice(_forward_whole(model, s.image)[0] > threshold, s.vessel) for s in samples]))


def ship(model: torch.nn.Module, config: TrainConfig, val_samples: list, data_command: str) -> Path:
    """Evaluate on the held-out phantoms (full truth) and, with ROSSA, on its ``val`` and ``test``
    splits; write ``models/octadepth-<preset>.{safetensors,json}``."""
    from .eval import evaluate_model

    model = model.cpu().eval()
    threshold = None
    if config.select_threshold and config.rossa_dir:
        threshold, _ = select_threshold(model, data.load_rossa(config.rossa_dir, "val"))
        fold_threshold(model, threshold)
    held_out_ids = {s.name for s in val_samples}
    phantoms = [s for s in data.load_dataset(config.data_dir) if s.name in held_out_ids]
    held_out = {k: round(v, 5) for k, v in evaluate_model(model, phantoms).items()}
    sources = [f"phantoms: {data_command}"]
    if config.rossa_dir and config.real_per_batch > 0:
        held_out["rossa_val_dice"] = round(real_dice(model, data.load_rossa(config.rossa_dir, "val")), 5)
        held_out["rossa_test_dice"] = round(real_dice(model, data.load_rossa(config.rossa_dir, "test")), 5)
        sources.append(f"real: {data.ROSSA_SOURCE}, splits train_manual + train_sam (vessel labels only; "
                       "selected on val, reported on test)")
    entry = training.ship_model(
        model, "octadepth", config.model_preset,
        command="vesselrecon train octadepth " + " ".join(shlex.quote(a) for a in sys.argv[3:]),
        data="; ".join(sources), seed=config.seed, metrics=held_out, config=config.network_config,
        input_spec={"channels": 1, "kind": "en face OCTA angiogram (superficial+deep slab)",
                    "size": "304-512 px (any multiple of 16 after padding)", "field_mm": [3.0, 6.0],
                    "intensity": "any; scaled by the 0.5/99.5 percentiles",
                    "outputs": ["vessel probability (vessels about 3 px wide and up, as expert labels)",
                                "relative depth 0 (near) .. 1 (far)"]},
        extra_training={"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch, "batch": config.batch,
                        "crop": config.crop, "lr": config.lr, "optimizer": "Adam + per-step cosine decay",
                        "real_per_batch": config.real_per_batch, "phantom_vessels": config.phantom_vessels,
                        "held_out_cases": len(val_samples), "mean_vessel_depth": config.mean_vessel_depth,
                        "init": str(config.init) if config.init else None,
                        "intensity_augmentation": config.intensity_augmentation,
                        "background_depth": config.background_depth,
                        "speckle_augmentation": config.speckle_augmentation,
                        "resolution_augmentation": config.resolution_augmentation,
                        "vessel_threshold_selected_on_val": threshold,
                        "vessel_threshold_note": "folded into the vessel logit bias; the shipped model's 0.5 is it"
                        if threshold is not None else None},
        name=f"octadepth-{config.model_preset}")
    return entry.path


def narrow_state(state: dict, hidden: int, vessel_hidden: int) -> dict:
    """A ``lite`` state dict cut to a narrower SCB attention (``hidden``) and vessel head
    (``vessel_hidden``) for a warm start: each block keeps the channels that contribute most to its
    one-channel output (|last conv weight| x |BatchNorm gain / std|); everything else is copied."""
    import re

    out = dict(state)

    def contribution(prefix_norm: str, last_weight: torch.Tensor) -> torch.Tensor:
        gain = state[f"{prefix_norm}.weight"].abs() / torch.sqrt(state[f"{prefix_norm}.running_var"] + 1e-5)
        return last_weight.abs().reshape(-1) * gain

    def cut_norm(prefix: str, keep: torch.Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{name}"] = state[f"{prefix}.{name}"][keep].clone()

    for index in sorted({int(m.group(1)) for key in state if (m := re.match(r"scbs\.(\d+)\.", key))}):
        p = f"scbs.{index}"
        keep = contribution(f"{p}.attention.0", state[f"{p}.attention.2.weight"]).argsort(descending=True)[:hidden]
        keep = keep.sort().values
        out[f"{p}.from_structure.weight"] = state[f"{p}.from_structure.weight"][keep].clone()
        out[f"{p}.from_encoder.weight"] = state[f"{p}.from_encoder.weight"][keep].clone()
        out[f"{p}.from_encoder.bias"] = state[f"{p}.from_encoder.bias"][keep].clone()
        cut_norm(f"{p}.attention.0", keep)
        out[f"{p}.attention.2.weight"] = state[f"{p}.attention.2.weight"][:, keep].clone()
    if "vessel_reduce.weight" in state:
        conv = state["vessel_head.0.conv.weight"]
        keep_out = contribution("vessel_head.0.adn.N", state["vessel_head.1.conv.weight"]).argsort(descending=True)
        keep_out = keep_out[:vessel_hidden].sort().values
        keep_in = conv[keep_out].abs().sum(dim=(0, 2, 3)).argsort(descending=True)[:vessel_hidden].sort().values
        out["vessel_reduce.weight"] = state["vessel_reduce.weight"][keep_in].clone()
        out["vessel_head.0.conv.weight"] = conv[keep_out][:, keep_in].clone()
        out["vessel_head.0.conv.bias"] = state["vessel_head.0.conv.bias"][keep_out].clone()
        cut_norm("vessel_head.0.adn.N", keep_out)
        out["vessel_head.1.conv.weight"] = state["vessel_head.1.conv.weight"][:, keep_out].clone()
    return out

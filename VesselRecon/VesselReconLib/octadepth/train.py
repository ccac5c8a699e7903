"""Training: random augmented crops of an ``octa`` dataset, L_total, Adam + cosine decay, shipping.

The paper's optimiser settings are not given in the text we follow, so we use Adam (lr 1e-3) with a
per-step cosine decay to 1 % of the initial rate, batch 6 of 128x128 crops, flips and 90-degree rotations.
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

    @property
    def model_preset(self) -> str:
        """The ``build_model`` preset: ``--plain`` turns ``lite``/``paper`` into ``unet-lite``/``unet-paper``."""
        return f"unet-{self.preset}" if self.plain and not self.preset.startswith("unet-") else self.preset


def split(samples: list, val_fraction: float) -> tuple[list, list]:
    """Last ``val_fraction`` of the cases (at least one) are held out for validation."""
    n_val = max(1, int(round(len(samples) * val_fraction))) if len(samples) > 1 else 0
    return samples[: len(samples) - n_val] or samples, samples[len(samples) - n_val:]


def batch_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    image, vessel, depth = (t.to(next(model.parameters()).device) for t in batch)
    return losses.octadepth_loss(model(image), vessel, depth).total


def make_validate(val_samples: list[data.OCTASample]):
    """``model -> {loss, rmse, dice}`` on whole held-out images."""
    from .. import metrics
    from .pipeline import _pad, normalize_image

    def validate(model: torch.nn.Module) -> dict:
        device = next(model.parameters()).device
        totals, rmses, dices = [], [], []
        for sample in val_samples:
            image = torch.from_numpy(normalize_image(sample.image))[None, None].to(device)
            padded, (height, width) = _pad(image)
            out = model(padded)[..., :height, :width].float()
            vessel = torch.from_numpy(sample.vessel.astype(np.float32))[None, None].to(device)
            depth = torch.from_numpy(sample.depth.astype(np.float32))[None, None].to(device)
            totals.append(float(losses.octadepth_loss(out, vessel, depth).total))
            pred = out[0].cpu().numpy()
            rmses.append(metrics.rmse(pred[1], sample.depth, sample.vessel))
            dices.append(metrics.dice(pred[0] > 0.5, sample.vessel))
        return {"loss": float(np.mean(totals)), "rmse": float(np.mean(rmses)), "dice": float(np.mean(dices))}

    return validate


def train(config: TrainConfig, progress=None, cancel=None) -> tuple[torch.nn.Module, training.Trainer, list]:
    """Train a network; returns it (best validation weights), the trainer and the held-out cases."""
    training.seed_everything(config.seed)
    samples = data.load_dataset(config.data_dir)
    train_samples, val_samples = split(samples, config.val_fraction)
    crop = min(config.crop, *(min(s.image.shape) // 16 * 16 for s in train_samples))
    device = resolve_device(config.device)
    model = network.build_model(config.model_preset).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    total_steps = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    trainer = training.Trainer(model, optimizer, batch_loss, config.out_dir, scheduler=scheduler, device=device,
                               monitor="val_loss", step_scheduler_per_batch=True)
    if config.resume:
        trainer.resume()

    def make_batches(epoch: int):
        rng = np.random.default_rng([config.seed, epoch])
        for _ in range(config.steps_per_epoch):
            yield data.random_crop_batch(train_samples, config.batch, crop, rng)

    log.info("training %s on %d cases (%d held out), %d epochs x %d steps", config.model_preset,
             len(train_samples), len(val_samples), config.epochs, config.steps_per_epoch)
    trainer.fit(make_batches, config.epochs, make_validate(val_samples) if val_samples else None,
                config.steps_per_epoch, progress, cancel)
    trainer.load_best()
    config.mean_vessel_depth = eval_mean_depth(train_samples)
    return model.eval(), trainer, val_samples


def eval_mean_depth(samples: list) -> float:
    from .eval import mean_vessel_depth

    return mean_vessel_depth(samples)


def ship(model: torch.nn.Module, config: TrainConfig, val_samples: list, data_command: str) -> Path:
    """Evaluate on the held-out cases and write ``models/octadepth-<preset>.{safetensors,json}``."""
    from .eval import evaluate_model

    held_out = evaluate_model(model, val_samples)
    entry = training.ship_model(
        model.cpu(), "octadepth", config.model_preset,
        command="vesselrecon train octadepth " + " ".join(shlex.quote(a) for a in sys.argv[3:]),
        data=data_command, seed=config.seed, metrics={k: round(v, 5) for k, v in held_out.items()},
        input_spec={"channels": 1, "kind": "en face OCTA angiogram (superficial+deep slab)",
                    "size": "304-512 px (any multiple of 16 after padding)", "field_mm": [3.0, 6.0],
                    "intensity": "any; scaled by the 0.5/99.5 percentiles",
                    "outputs": ["vessel probability", "relative depth 0 (near) .. 1 (far)"]},
        extra_training={"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch, "batch": config.batch,
                        "crop": config.crop, "lr": config.lr, "optimizer": "Adam + per-step cosine decay",
                        "held_out_cases": len(val_samples), "mean_vessel_depth": config.mean_vessel_depth},
        name=f"octadepth-{config.model_preset}")
    return entry.path

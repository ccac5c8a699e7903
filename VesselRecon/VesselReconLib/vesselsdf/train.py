"""Joint training of both VesselSDF stages (Adam, lr 5e-4, no augmentation) with the shared Trainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..device import resolve_device
from ..training import Trainer, seed_everything
from .data import Case, batches, load_dataset
from .inference import predict
from .losses import LossConfig, vesselsdf_loss
from .network import VARIANT_LOSS, build_model, parse_preset

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """What ``vesselrecon train vesselsdf`` runs (paper: 100 epochs of whole volumes, lr 5e-4).

    :param crop: in-plane crop ``(rows, columns)``; all slices are always used.
    :param steps_per_epoch: batches per epoch (crops are drawn at random from the training cases).
    :param val_cases: the last cases of the folder held out for per-epoch validation (Dice).
    """

    preset: str = "lite"
    epochs: int = 100
    steps_per_epoch: int = 20
    batch_size: int = 2
    crop: tuple[int, int] = (64, 64)
    lr: float = 5e-4
    seed: int = 0
    val_cases: int = 2
    device: str = "auto"
    loss: LossConfig = field(default_factory=LossConfig)


def loss_config_for(preset: str, base: LossConfig | None = None) -> LossConfig:
    """The loss settings of a preset (``*-nogauss`` switches the Gaussian term off)."""
    config = LossConfig(**(base or LossConfig()).to_dict())
    for key, value in VARIANT_LOSS.get(parse_preset(preset)[1], {}).items():
        setattr(config, key, value)
    return config


def make_loss_fn(loss_config: LossConfig, device: torch.device):
    def loss_fn(model, batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(batch["image"], tuple(float(v) for v in batch["spacing"][0]))
        total, _ = vesselsdf_loss(outputs, batch["mask"], batch["sdf"], batch["spacing"], loss_config)
        return total
    return loss_fn


def validation_dice(cases: list[Case], device: torch.device):
    def validate(model) -> dict:
        return {"dice": float(np.mean([metrics.dice(predict(model, c.normalised(), device, c.spacing).mask(), c.label)
                                       for c in cases]))}
    return validate


def train_model(data_dir: str | Path, out_dir: str | Path, config: TrainConfig, progress=None, cancel=None,
                resume: bool = True) -> tuple[torch.nn.Module, Trainer]:
    """Train a preset on a dataset folder; returns the best-validation model and the trainer.

    Checkpoints go to ``out_dir`` (``last.pt``, ``best.pt``); an interrupted run resumes.
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    cases = load_dataset(data_dir)
    if len(cases) <= config.val_cases:
        raise ValueError(f"{data_dir} has {len(cases)} cases; need more than --val-cases={config.val_cases}.")
    train_cases, val_cases = cases[:len(cases) - config.val_cases], cases[len(cases) - config.val_cases:]
    model = build_model(config.preset).to(device)
    loss_config = loss_config_for(config.preset, config.loss)
    trainer = Trainer(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
                      loss_fn=make_loss_fn(loss_config, device), out_dir=Path(out_dir), device=device,
                      monitor="val_dice" if val_cases else "loss", mode="max" if val_cases else "min")
    if resume:
        trainer.resume()
    trainer.fit(lambda epoch: batches(train_cases, config.crop, config.batch_size, config.steps_per_epoch,
                                      config.seed * 100003 + epoch),
                config.epochs, validate=validation_dice(val_cases, device) if val_cases else None,
                batches_per_epoch=config.steps_per_epoch, progress=progress, cancel=cancel)
    trainer.load_best()
    return model.eval(), trainer

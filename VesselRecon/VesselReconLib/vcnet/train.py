"""Training VC-Net (and its ablation baselines) on MSD-style MRA/SWI datasets.

Paper settings: Adam (lr 1e-4), ReduceLROnPlateau (factor 0.5, patience 10), batch size 4,
random overlapping foreground-focused patches at the native anisotropic grid, loss
Dice_3D + 0.2 Dice_MIP. Fine-tuning (SWI, micro vessels) starts from existing weights (``init``),
with intensities inverted inside the brain mask for dark vessels (``dark``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import metrics, registry
from ..device import resolve_device
from ..training import Trainer, seed_everything
from .data import Case, PatchSampler, load_cases
from .inference import predict_probability
from .losses import VCNetLoss
from .network import build_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    preset: str = "lite"
    epochs: int = 40
    steps: int = 16
    batch: int = 4
    lr: float = 1e-4
    val_fraction: float = 0.25
    out: str = "runs/vcnet"
    seed: int = 0
    dark: bool = False
    init: str | None = None
    resume: bool = False
    device: str = "auto"
    patience: int | None = None
    pos_fraction: float = 0.75
    hard_fraction: float = 0.1  # patches centred on bright fat/scalp outside the brain (hard negatives)


def split_cases(cases: list[Case], val_fraction: float) -> tuple[list[Case], list[Case]]:
    """Last ``val_fraction`` of the cases (at least one) are held out for validation."""
    n_val = max(1, int(round(len(cases) * val_fraction))) if len(cases) > 1 else 0
    return cases[: len(cases) - n_val], cases[len(cases) - n_val:]


def validation_metrics(model, cases: list[Case], device: torch.device) -> dict:
    """Mean Dice, precision and FPR of thresholded whole-volume predictions (inside the mask)."""
    reports = []
    for case in cases:
        prob, _ = predict_probability(model, case.image, device)
        if case.mask is not None:
            prob = prob * (case.mask > 0)
        reports.append(metrics.segmentation_report(prob >= 0.5, case.label))
    return {key: float(np.mean([r[key] for r in reports])) for key in ("dice", "precision", "fpr")} if reports else {}


def load_initial_weights(model, init: str) -> None:
    """Fine-tuning: copy weights from a shipped model name/preset or a checkpoint path. A checkpoint
    file of another layout (e.g. an earlier VC-Net version) gives every tensor whose name and shape
    match (for instance the 3D stream); the rest keeps its initialisation."""
    if Path(init).suffix in (".safetensors", ".pt", ".pth"):
        state, _ = registry.read_checkpoint(init)
        own = model.state_dict()
        matching = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if len(matching) < len(own):
            log.warning("initialised %d of %d tensors from %s (name and shape match)", len(matching), len(own), init)
            model.load_state_dict(matching, strict=False)
            return
    source, _ = registry.load_model("vcnet", init, "cpu")
    registry.load_into(model, source.state_dict(), init)


def train(config: TrainConfig, progress=None, cancel=None) -> tuple[torch.nn.Module, dict]:
    """Train and return the best model and its held-out metrics."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    cases = load_cases(config.data, dark=config.dark)
    train_cases, val_cases = split_cases(cases, config.val_fraction)
    model = build_model(config.preset)
    if config.init:
        load_initial_weights(model, config.init)
    model.to(device)
    criterion = VCNetLoss()
    sampler = PatchSampler(train_cases, model.patch, config.pos_fraction, config.seed, config.hard_fraction)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=10)

    def loss_fn(net, batch):
        image, label = (t.to(device) for t in batch)
        return criterion(net(image), label, net.variant)

    def make_batches(epoch: int):
        return (sampler.batch(config.batch) for _ in range(config.steps))

    def validate(net):
        return validation_metrics(net, val_cases, device)

    trainer = Trainer(model, optimizer, loss_fn, Path(config.out), scheduler=scheduler, device=device,
                      monitor="val_dice" if val_cases else "loss", mode="max" if val_cases else "min",
                      patience=config.patience)
    if config.resume:
        trainer.resume()
    trainer.fit(make_batches, config.epochs, validate if val_cases else None, config.steps, progress, cancel)
    trainer.load_best()
    model.eval()
    held_out = validation_metrics(model, val_cases, device) if val_cases else {}
    held_out.update({"n_val_cases": len(val_cases), "n_train_cases": len(train_cases), "epochs": trainer.epoch})
    return model, held_out

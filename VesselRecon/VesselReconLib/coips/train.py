"""Training of the quality classifier and the FAZ U-Net with the paper's optimisers and schedules.

Quality: class-weighted CE, Adam lr 1e-3, CosineAnnealingLR ``T_max=5``, early stopping patience 20;
the paper presets (``paper-3mm`` Swin-L, ``paper-6mm`` SE-ResNeXt-101) and Swin backbones use AdamW 5e-4
after the paper's warm-up: linear from 5e-7 over the first 20 epochs. ``finetune="head"`` trains only
the classification head. Training images are degraded on the fly (``degrade`` probability, see
:class:`.data.QualityDataset`); real ROSSA images may be added as sources (``rossa``).
FAZ: 0.5 CE + 0.5 Dice with deep supervision (weights 1, 1/2, 1/4 normalised, nnU-Net), SGD lr 0.01 with
Nesterov momentum 0.99, poly LR decay (exponent 0.9), on the U-Net's window (:class:`.data.FazWindowDataset`).
With ``rank_weight`` the grader trains on pairs of one source degraded by one kind at two severities and
adds a ranking loss (:func:`.losses.ranking_loss`): the more degraded copy must not score a higher
expected grade than the less degraded one (the degradation-series test's condition, learnt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import FazWindowDataset, QualityDataset, faz_samples, quality_samples, rossa_samples, split
from .losses import faz_loss, quality_loss, ranking_loss
from .network import build_model
from ..errors import InputError
from ..training import Trainer, seed_everything

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Hyper-parameters of one training run (defaults are the paper's)."""

    preset: str = "lite"
    epochs: int = 100
    batch_size: int = 16
    lr: float | None = None
    finetune: str = "all"
    patience: int = 20
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 0
    warmup_epochs: int = 20
    warmup_start_lr: float = 5e-7
    patch: int | None = None
    device: str = "auto"
    degrade: float = 0.7
    rossa: str | None = None
    zoom_min: float = 0.6
    rank_weight: float = 0.0
    rank_margin: float = 0.05
    deep_look: float = 0.0
    composite: float = 0.0
    device_look: float = 0.0
    init: str | None = None
    canonical: float | None = None


def _loader(dataset, batch_size: int, workers: int, shuffle: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=generator, drop_last=False)


def quality_optimiser(model, settings: TrainSettings):
    """Adam 1e-3 + cosine (T_max 5), or for Swin / the paper presets AdamW 5e-4 after a linear warm-up
    from ``warmup_start_lr`` (5e-7) over ``warmup_epochs`` (20), then cosine."""
    if settings.finetune == "head":
        model.freeze_backbone()
    elif settings.finetune != "all":
        raise InputError("finetune must be 'head' or 'all'.")
    parameters = [p for p in model.parameters() if p.requires_grad]
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)  # noqa: E731
    if model.backbone_name.startswith("swin") or settings.preset.startswith("paper"):
        lr = settings.lr or 5e-4
        optimiser = torch.optim.AdamW(parameters, lr=lr)
        warmup = torch.optim.lr_scheduler.LinearLR(optimiser, start_factor=settings.warmup_start_lr / lr,
                                                   end_factor=1.0, total_iters=settings.warmup_epochs)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimiser, [warmup, cosine(optimiser)],
                                                          milestones=[settings.warmup_epochs])
        return optimiser, scheduler
    optimiser = torch.optim.Adam(parameters, lr=settings.lr or 1e-3)
    return optimiser, cosine(optimiser)


def faz_optimiser(model, settings: TrainSettings):
    """nnU-Net's SGD (lr 0.01, Nesterov momentum 0.99, weight decay 3e-5) with poly decay 0.9."""
    optimiser = torch.optim.SGD(model.parameters(), lr=settings.lr or 0.01, momentum=0.99, nesterov=True,
                                weight_decay=3e-5)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=max(settings.epochs, 1), power=0.9)
    return optimiser, scheduler


def _to_input(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device).float() / 255.0


def evaluate_quality(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities over a loader."""
    model.eval()
    labels, probabilities = [], []
    with torch.no_grad():
        for images, targets in loader:
            probabilities.append(torch.softmax(model(_to_input(images, device)).float(), 1).cpu().numpy())
            labels.append(np.asarray(targets))
    return np.concatenate(labels), np.concatenate(probabilities)


def deep_supervision_loss(criterion, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """nnU-Net's deep-supervision loss: heads weighted 1, 1/2, 1/4 (normalised); plain loss otherwise."""
    if logits.ndim == 4:
        return criterion(logits.float(), masks)
    weights = torch.tensor([0.5 ** i for i in range(logits.shape[1])])
    weights = weights / weights.sum()
    return sum(w * criterion(logits[:, i].float(), masks) for i, w in enumerate(weights.tolist()))


def evaluate_faz(model, loader, device) -> float:
    """Mean per-image Dice of the FAZ over a loader."""
    from ..metrics import dice

    model.eval()
    scores = []
    with torch.no_grad():
        for images, masks in loader:
            logits = model(_to_input(images, device))
            predicted = (logits[:, 1] > logits[:, 0]).cpu().numpy()
            scores.extend(dice(p, m[0].numpy() > 0) for p, m in zip(predicted, masks))
    return float(np.mean(scores))


def train_quality(data: str | Path, out: str | Path, settings: TrainSettings, progress=None, cancel=None):
    """Train a quality classifier on ``data`` (labels.csv + images); returns ``(model, history)``."""
    from ..device import resolve_device
    from ..metrics import classification_report

    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    samples = quality_samples(data)
    if settings.rossa:
        samples += rossa_samples(settings.rossa)
    labels = [s.label for s in samples]
    train_idx, val_idx = split(len(samples), settings.val_fraction, settings.seed, labels)
    config = {} if settings.canonical is None else {"canonical_fine_ratio": settings.canonical}
    model = build_model(settings.preset, **config).to(device)
    size = model.input_size
    if settings.init:
        load_initial_weights(model, settings.init)
    pairs = settings.rank_weight > 0
    train_set = QualityDataset([samples[i] for i in train_idx], size, train=True, degrade=settings.degrade,
                               seed=settings.seed, zoom_min=settings.zoom_min, pairs=pairs,
                               deep_look=settings.deep_look, composite=settings.composite)
    val_set = QualityDataset([samples[i] for i in val_idx], size, degrade=settings.degrade)
    val_loader = _loader(val_set, settings.batch_size, settings.workers, False)
    train_loader = _loader(train_set, settings.batch_size, settings.workers, True, settings.seed)
    criterion = quality_loss([labels[i] for i in train_idx]).to(device)
    optimiser, scheduler = quality_optimiser(model, settings)

    def loss_fn(net, batch):
        images, targets = batch
        if not pairs:
            return criterion(net(_to_input(images, device)).float(), targets.to(device))
        logits = net(_to_input(images.flatten(0, 1)[:, None], device)).float()
        targets = targets.to(device)
        loss = criterion(logits, targets.flatten())
        return loss + settings.rank_weight * ranking_loss(logits.view(-1, 2, logits.shape[-1]), settings.rank_margin,
                                                          targets)

    def validate(net):
        y, p = evaluate_quality(net, val_loader, device)
        report = classification_report(y, p, n_classes=3)
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    trainer = Trainer(model, optimiser, loss_fn, Path(out), scheduler=scheduler, device=device,
                      monitor="val_macro_f1", mode="max", patience=settings.patience)
    trainer.resume()
    trainer.fit(lambda epoch: train_loader, settings.epochs, validate if len(val_idx) else None,
                batches_per_epoch=len(train_loader), progress=progress, cancel=cancel)
    trainer.load_best()
    return model.eval(), trainer.history


def load_initial_weights(model, checkpoint: str | Path) -> None:
    """Start from a checkpoint's weights (a registry name, ``.safetensors`` or ``.pt``); the optimiser starts afresh."""
    from .. import registry

    source, _ = registry.load_model("coips", str(checkpoint), "cpu")
    model.load_state_dict(source.state_dict())


def train_faz(data: str | Path, out: str | Path, settings: TrainSettings, progress=None, cancel=None):
    """Train a FAZ U-Net on ``data/faz`` (images + masks); returns ``(model, history)``."""
    from ..device import resolve_device

    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    samples = faz_samples(data)
    train_idx, val_idx = split(len(samples), settings.val_fraction, settings.seed)
    model = build_model(settings.preset).to(device)
    if settings.init:
        load_initial_weights(model, settings.init)
    size, window = model.input_size, model.window_mm
    train_set = FazWindowDataset([samples[i] for i in train_idx], size, window, train=True, seed=settings.seed,
                                 device_look=settings.device_look)
    train_loader = _loader(train_set, settings.batch_size, settings.workers, True, settings.seed)
    val_loader = _loader(FazWindowDataset([samples[i] for i in val_idx], size, window), settings.batch_size,
                         settings.workers, False)
    criterion = faz_loss()
    optimiser, scheduler = faz_optimiser(model, settings)

    def loss_fn(net, batch):
        images, masks = batch
        return deep_supervision_loss(criterion, net(_to_input(images, device)), masks.to(device))

    trainer = Trainer(model, optimiser, loss_fn, Path(out), scheduler=scheduler, device=device,
                      monitor="val_dice", mode="max", patience=settings.patience, grad_clip=12.0)
    trainer.resume()
    trainer.fit(lambda epoch: train_loader, settings.epochs,
                (lambda net: {"dice": evaluate_faz(net, val_loader, device)}) if len(val_idx) else None,
                batches_per_epoch=len(train_loader), progress=progress, cancel=cancel)
    trainer.load_best()
    return model.eval(), trainer.history

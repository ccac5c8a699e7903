"""One training loop for every method: checkpoints, resume, per-epoch validation, progress bar, shipping.

Checkpoints are plain dicts of tensors and numbers, saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``. :func:`ship_model` turns a trained network into a registry entry.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import registry
from .progress import Reporter, as_reporter

log = logging.getLogger(__name__)
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
ValidateFn = Callable[[torch.nn.Module], dict]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Trainer:
    """Runs epochs of ``loss_fn(model, batch)``, validates, schedules, checkpoints and early-stops.

    :param monitor: validation metric that drives ``ReduceLROnPlateau``, best-checkpointing and
        early stopping; ``mode`` says whether it should go ``min`` or ``max``.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    out_dir: Path
    scheduler: Any = None
    device: torch.device = torch.device("cpu")
    monitor: str = "loss"
    mode: str = "min"
    patience: int | None = None
    amp: bool = True
    grad_clip: float | None = None
    step_scheduler_per_batch: bool = False
    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    best: float = math.nan

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def train_epoch(self, batches: Iterable, reporter: Reporter, total: int | None = None) -> float:
        """One pass over ``batches``; returns the mean loss."""
        self.model.train()
        losses = []
        for index, batch in enumerate(batches):
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss_fn(self.model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Loss became {loss.item()} at epoch {self.epoch + 1}; lower the learning rate.")
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            if self.step_scheduler_per_batch and self.scheduler is not None:
                self.scheduler.step()
            losses.append(float(loss.detach()))
            reporter((index + 1) / total if total else 0.0, f"epoch {self.epoch + 1} loss {np.mean(losses):.4f}")
        return float(np.mean(losses)) if losses else math.nan

    def _improved(self, value: float) -> bool:
        if math.isnan(self.best):
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def _schedule(self, metrics: dict) -> None:
        if self.scheduler is None or self.step_scheduler_per_batch:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def fit(self, make_batches: Callable[[int], Iterable], epochs: int, validate: ValidateFn | None = None,
            batches_per_epoch: int | None = None, progress=None, cancel=None) -> list[dict]:
        """Train until ``epochs`` (counting resumed ones) or early stopping.

        :param make_batches: ``epoch -> iterable of batches`` (a DataLoader, or a generator).
        :param validate: ``model -> {metric: value}`` run after every epoch (in eval mode, no grad).
        :param batches_per_epoch: for the progress bar.
        """
        reporter = as_reporter(progress, cancel)
        stale = 0
        for epoch in range(self.epoch, epochs):
            self.epoch = epoch
            span = reporter.sub(epoch / epochs, (epoch + 1) / epochs)
            metrics = {"epoch": epoch + 1, "loss": self.train_epoch(make_batches(epoch), span, batches_per_epoch),
                       "lr": self.optimizer.param_groups[0]["lr"]}
            metrics.update(self._validate(validate))
            self._schedule(metrics)
            self.history.append(metrics)
            self.epoch = epoch + 1
            log.info("epoch %d: %s", epoch + 1, json.dumps({k: _round(v) for k, v in metrics.items()}))
            stale = self._checkpoint(metrics, stale)
            if self.patience is not None and stale >= self.patience:
                log.info("early stopping: %s did not improve for %d epochs", self.monitor, self.patience)
                break
        return self.history

    def _validate(self, validate: ValidateFn | None) -> dict:
        if validate is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast():
            return {f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in validate(self.model).items()}

    def _checkpoint(self, metrics: dict, stale: int) -> int:
        value = metrics.get(self.monitor, metrics["loss"])
        improved = self._improved(value)
        if improved:
            self.best = value
        self.save(self.last_path)
        if improved:
            self.save(self.best_path)
            return 0
        return stale + 1

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "epoch": self.epoch, "best": self.best, "history": json.dumps(self.history)}

    def save(self, path: Path) -> None:
        torch.save(self.state(), path)

    def resume(self, path: Path | None = None) -> bool:
        """Continue from ``path`` (default ``last.pt``); returns False when there is none."""
        path = Path(path or self.last_path)
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best = int(state["epoch"]), float(state["best"])
        self.history = json.loads(state["history"])
        log.info("resumed from %s at epoch %d", path, self.epoch)
        return True

    def load_best(self) -> None:
        """Put the best checkpoint's weights into the model."""
        if self.best_path.is_file():
            state = torch.load(self.best_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])


def _round(value):
    return round(value, 5) if isinstance(value, float) else value


def ship_model(model: torch.nn.Module, module: str, preset: str, *, command: str, data: str, seed: int,
               metrics: dict, input_spec: dict, config: dict | None = None, name: str | None = None,
               extra_training: dict | None = None, directory: Path | None = None) -> registry.ModelEntry:
    """Save ``model`` as ``<name>.safetensors`` in the registry folder and write its entry.

    :param command: the exact command that trained it.
    :param data: the data it was trained on (e.g. the phantom command and seed).
    :param metrics: held-out metrics.
    """
    name = name or f"{module}-{preset}"
    directory = Path(directory or registry.REGISTRY_DIR)
    file_name = f"{name}.safetensors"
    training = {"command": command, "data": data, "seed": seed, "torch": torch.__version__, **(extra_training or {})}
    digest = registry.save_model(model, directory / file_name, module, preset, config,
                                 extra={"training": json.dumps(training, default=str)})
    entry = registry.ModelEntry(
        name=name, module=module, preset=preset, architecture=type(model).__name__, file=file_name,
        sha256=digest, input_spec=input_spec, metrics=metrics, config=config or {}, training=training,
        directory=directory)
    registry.write_entry(entry)
    return entry

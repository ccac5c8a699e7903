"""Phantom-only training of OCTAVessel (no real pixel is seen)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .data import PhantomPool, augment_crop
from .network import build_model

log = logging.getLogger(__name__)


def _step(model, opt, sched, x, y) -> float:
    """One optimiser step on the Dice + BCE loss; returns the loss."""
    loss = dice_bce_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (per batch)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1.0 - (2 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


def batch_from_pool(pool: PhantomPool, batch: int, crop: int, rng: np.random.Generator, real: list = (),
                    real_fraction: float = 0.0):
    """``batch`` augmented crops with their labels, each from ``real`` with probability ``real_fraction`` (when
    ``real`` is given), else from the phantom pool."""
    images, labels = [], []
    for _ in range(batch):
        items = real if real and rng.random() < real_fraction else pool.items
        s = items[int(rng.integers(len(items)))]
        img, lab = augment_crop(s.image, s.vessel, crop, rng)
        images.append(img)
        labels.append(lab)
    as_t = lambda a: torch.from_numpy(np.stack(a)[:, None])  # noqa: E731
    return as_t(images), as_t(labels)


def train_phantoms(out: str | Path, steps: int = 1500, batch: int = 8, crop: int = 128, lr: float = 2e-3,
                   seed: int = 0, pool_size: int = 48, refresh_every: int = 3, preset: str = "lite",
                   minutes: float | None = None, checkpoint_every: int = 100, randomize: bool = True):
    """Train on a rolling phantom pool; save ``last.pt`` every ``checkpoint_every`` steps and at the end.

    :param minutes: stop early after this wall time (the step count still sets the LR schedule).
    :returns: the trained network (eval mode) and a training record.
    """
    from ..training import seed_everything

    seed_everything(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    t0 = time.time()
    pool = PhantomPool(pool_size, seed, randomize=randomize)
    log.info("pool of %d phantoms in %.0f s", pool_size, time.time() - t0)
    model = build_model(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    history, done = [], 0
    model.train()
    for step in range(steps):
        history.append(_step(model, opt, sched, *batch_from_pool(pool, batch, crop, rng)))
        done = step + 1
        if step % refresh_every == 0:
            pool.refresh()
        if done % 25 == 0:
            log.info("step %d loss %.4f (%.0f s)", done, np.mean(history[-25:]), time.time() - t0)
        if done % checkpoint_every == 0:
            torch.save(model.state_dict(), out / "last.pt")
        if minutes is not None and time.time() - t0 > 60 * minutes:
            log.info("time limit reached at step %d", done)
            break
    torch.save(model.state_dict(), out / "last.pt")
    record = {"steps_done": done, "steps": steps, "batch": batch, "crop": crop, "lr": lr, "seed": seed,
              "pool_size": pool_size, "refresh_every": refresh_every, "randomize": randomize, "phantoms_seen": pool.next_seed - 1_000_000 - 10_000 * seed,
              "final_loss": float(np.mean(history[-50:])), "wall_s": round(time.time() - t0)}
    (out / "train.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return model.eval(), record


def held_out_phantoms(count: int = 8):
    """Fixed held-out phantoms (seeds 9000-9007, never in a training pool)."""
    from .data import render_phantom

    rng = np.random.default_rng(9000)
    return [render_phantom(9000 + i, rng) for i in range(count)]


def finetune(out: str | Path, init_state: dict, real: list, val: list, steps: int = 300, batch: int = 8,
             crop: int = 128, lr: float = 5e-4, seed: int = 0, pool_size: int = 24, real_fraction: float = 0.5,
             validate_every: int = 50, preset: str = "lite", minutes: float | None = None):
    """Fine-tune a phantom-trained network on phantoms + real labelled scans; keep the weights with
    the best mean Dice on ``val`` (checked every ``validate_every`` steps and at the end)."""
    import copy

    from ..metrics import dice
    from ..training import seed_everything
    from .evaluate import predict_probability

    seed_everything(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 8])
    t0 = time.time()
    pool = PhantomPool(pool_size, seed + 1)
    model = build_model(preset)
    model.load_state_dict(init_state)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    def val_dice() -> float:
        model.eval()
        score = float(np.mean([dice(predict_probability(model, s.image) > 0.5, s.vessel) for s in val]))
        model.train()
        return score

    best, best_state, best_step, history, done = val_dice(), copy.deepcopy(model.state_dict()), 0, [], 0
    log.info("step 0 val Dice %.4f", best)
    model.train()
    for step in range(steps):
        history.append(_step(model, opt, sched, *batch_from_pool(pool, batch, crop, rng, real, real_fraction)))
        done = step + 1
        if step % 4 == 0:
            pool.refresh()
        stop = minutes is not None and time.time() - t0 > 60 * minutes
        if done % validate_every == 0 or done == steps or stop:
            score = val_dice()
            log.info("step %d loss %.4f val Dice %.4f (%.0f s)", done, np.mean(history[-validate_every:]), score,
                     time.time() - t0)
            if score > best:
                best, best_state, best_step = score, copy.deepcopy(model.state_dict()), done
                torch.save(best_state, out / "best.pt")
        if stop:
            break
    model.load_state_dict(best_state)
    record = {"steps_done": done, "steps": steps, "batch": batch, "crop": crop, "lr": lr, "seed": seed,
              "real_fraction": real_fraction, "real_images": len(real), "val_images": len(val),
              "best_step": best_step, "best_val_dice": round(best, 4), "wall_s": round(time.time() - t0)}
    (out / "finetune.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return model.eval(), record

"""Training losses: class-weighted cross-entropy and the severity ranking loss (quality), 0.5 CE + 0.5 Dice (FAZ)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import GRADES


def class_weights(labels, n_classes: int = len(GRADES)) -> torch.Tensor:
    """``weight_i = sum(X) / (N * X_i)``: X_i samples of class i, N classes (absent classes get 0)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    weights = np.divide(counts.sum(), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return torch.as_tensor(weights, dtype=torch.float32)


def quality_loss(labels, n_classes: int = len(GRADES)) -> nn.CrossEntropyLoss:
    """Cross-entropy weighted by :func:`class_weights` of the training labels."""
    return nn.CrossEntropyLoss(weight=class_weights(labels, n_classes))


def faz_loss(lambda_ce: float = 0.5, lambda_dice: float = 0.5) -> nn.Module:
    """nnU-Net's loss: ``0.5 * CE + 0.5 * soft Dice`` (Dice over the FAZ channel, batch-wise).

    Takes logits ``(B, 2, H, W)`` and integer targets ``(B, 1, H, W)``.
    """
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                      lambda_ce=lambda_ce, lambda_dice=lambda_dice)


def expected_grade(logits: torch.Tensor) -> torch.Tensor:
    """The ordinal quality score ``sum_k k * p_k`` (0 ungradable .. 2 outstanding) of logits ``(..., 3)``."""
    grades = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    return (torch.softmax(logits, -1) * grades).sum(-1)


def ranking_loss(pair_logits: torch.Tensor, margin: float = 0.05, pair_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Hinge on pairs ``(B, 2, 3)`` (less, more degraded copy of one source):
    ``mean(relu(q(more) - q(less) + m))`` with ``q`` the expected grade: a degraded copy must not score
    higher quality than its source. ``m`` is ``margin`` where the labels ``(B, 2)`` fall, else 0 (without
    labels, ``margin`` everywhere)."""
    scores = expected_grade(pair_logits)
    m = margin if pair_labels is None else margin * (pair_labels[:, 1] < pair_labels[:, 0]).to(scores.dtype)
    return torch.relu(scores[:, 1] - scores[:, 0] + m).mean()

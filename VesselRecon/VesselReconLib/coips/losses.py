"""Training losses: class-weighted cross-entropy (quality) and 0.5 CE + 0.5 Dice (FAZ)."""

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

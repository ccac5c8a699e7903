"""OCTADepth losses: L_total = L_seg + L_accuracy + L_structure (ISBI 2021).

* ``L_seg = MSE(pred_seg, gt_seg)``
* ``L_accuracy = 0.8 * MSE(v, v~) + 0.2 * MSE(b, b~)``: predicted depth inside (``v``) and outside
  (``b``) the predicted vessel mask (``pred_seg > 0.5``, not differentiated) against the true depth there.
* ``L_structure = 1 - SSIM(pred_depth, gt_depth)`` (``pytorch_msssim``, data range 1).

Tensors are ``(B, 1, H, W)`` in 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

INSIDE_WEIGHT = 0.8
OUTSIDE_WEIGHT = 0.2
MASK_THRESHOLD = 0.5


def segmentation_loss(pred_seg: torch.Tensor, gt_seg: torch.Tensor) -> torch.Tensor:
    """``MSE(pred_seg, gt_seg)``."""
    return F.mse_loss(pred_seg, gt_seg)


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the pixels of ``mask`` (0 when the mask is empty)."""
    count = mask.sum()
    return ((pred - target) ** 2 * mask).sum() / count.clamp_min(1.0)


def accuracy_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor, pred_seg: torch.Tensor) -> torch.Tensor:
    """``0.8 * MSE(v, v~) + 0.2 * MSE(b, b~)`` split by the predicted vessel mask."""
    inside = (pred_seg.detach() > MASK_THRESHOLD).to(pred_depth.dtype)
    return (INSIDE_WEIGHT * _masked_mse(pred_depth, gt_depth, inside)
            + OUTSIDE_WEIGHT * _masked_mse(pred_depth, gt_depth, 1.0 - inside))


def structure_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM(pred_depth, gt_depth)`` with an 11-pixel Gaussian window (7 on small crops)."""
    win = 11 if min(pred_depth.shape[-2:]) > 11 else 7
    return 1.0 - ssim(pred_depth.float(), gt_depth.float(), data_range=1.0, win_size=win)


@dataclass
class LossTerms:
    """The three terms and their sum."""

    seg: torch.Tensor
    accuracy: torch.Tensor
    structure: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.seg + self.accuracy + self.structure


def octadepth_loss(prediction: torch.Tensor, gt_seg: torch.Tensor, gt_depth: torch.Tensor) -> LossTerms:
    """All terms for a network output ``(B, 2, H, W)`` (vessel map, depth map)."""
    pred_seg, pred_depth = prediction[:, :1].float(), prediction[:, 1:2].float()
    return LossTerms(seg=segmentation_loss(pred_seg, gt_seg),
                     accuracy=accuracy_loss(pred_depth, gt_depth, pred_seg),
                     structure=structure_loss(pred_depth, gt_depth))

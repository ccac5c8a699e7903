"""VC-Net loss: ``L = Dice_3D + 0.2 * Dice_MIP`` (MONAI soft Dice on probabilities).

The Dice sums run over the whole batch (``batch=True``): with highly sparse vessels many patches
hold few or no vessel voxels, and a per-patch Dice would be dominated by them.

Dice_MIP compares the 2D stream's MIP probability with the composited MIP of the 3D label in the
same tiling (:func:`..mip.label_mip`). The ``unet3d`` variant uses Dice_3D only and ``unet2d``
Dice_MIP only (weight 1).
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss

from . import mip

MIP_WEIGHT = 0.2


class VCNetLoss(torch.nn.Module):
    """:param mip_weight: weight of the MIP term (paper: 0.2)."""

    def __init__(self, mip_weight: float = MIP_WEIGHT, mip_size: int = mip.MIP_SIZE, mip_step: int = mip.MIP_STEP):
        super().__init__()
        self.dice = DiceLoss(sigmoid=False, batch=True)
        self.mip_weight, self.mip_size, self.mip_step = mip_weight, mip_size, mip_step

    def terms(self, output: dict[str, torch.Tensor], label: torch.Tensor) -> dict[str, torch.Tensor]:
        """``dice3d`` and ``dice_mip`` loss terms (those the output supports)."""
        terms = {"dice3d": self.dice(output["prob"].float(), label.float())}
        if "mip_prob" in output:
            target = mip.label_mip(label.float(), self.mip_size, self.mip_step)
            terms["dice_mip"] = self.dice(output["mip_prob"].float(), target)
        return terms

    def forward(self, output: dict[str, torch.Tensor], label: torch.Tensor, variant: str = "vcnet") -> torch.Tensor:
        terms = self.terms(output, label)
        if variant == "unet2d":
            return terms["dice_mip"]
        if variant == "unet3d" or "dice_mip" not in terms:
            return terms["dice3d"]
        return terms["dice3d"] + self.mip_weight * terms["dice_mip"]

"""OCTAVessel network: a small 2D U-Net (MONAI ``BasicUNet``) giving a vessel logit per pixel."""

from __future__ import annotations

import torch
from torch import nn

PRESETS = {"lite": (16, 16, 32, 64, 128, 16)}


class OCTAVesselNet(nn.Module):
    """``(B, 1, H, W)`` normalised angiogram -> ``(B, 1, H, W)`` vessel logits (any H, W: padded to /16)."""

    def __init__(self, features=PRESETS["lite"]):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.unet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=tuple(features),
                              act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), norm=("instance", {"affine": True}),
                              dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = (-H) % 16, (-W) % 16
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.unet(x)[..., :H, :W]


def build_model(preset: str = "lite", **config) -> OCTAVesselNet:
    """An untrained network of a preset (``lite``: about 0.5 M parameters)."""
    if preset not in PRESETS and "features" not in config:
        raise ValueError(f"unknown octavessel preset {preset!r}; known: {', '.join(PRESETS)}")
    return OCTAVesselNet(config.get("features", PRESETS.get(preset)))

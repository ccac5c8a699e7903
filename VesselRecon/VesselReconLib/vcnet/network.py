"""VC-Net: a 3D U-Net stream on the patch, a half-width 2D U-Net stream on its composited sliding
MIPs, 2D-to-3D unprojection and a joint 3D embedding (Wang et al., IEEE VIS 2020 / TVCG 2021).

Both streams are MONAI ``UNet`` s with ReLU and no normalisation (``norm=None``). Their outputs are
linear feature maps passed through ReLU; the 2D stream also has a 1x1 head with a sigmoid (the MIP
segmentation supervised by the Dice_MIP term). The unprojected 2D features (``c1`` channels) are
concatenated with the 3D stream's features and fed to the joint embedding: an optional 1x1x1
channel mix (``joint_mix``), ``joint_layers`` 3x3x3 convolutions (ReLU) and a 1x1x1 convolution with
a sigmoid: the final vessel probability.

Variants (for the paper's ablations): ``"vcnet"`` (both streams), ``"unet3d"`` (the same network
without the MIP stream), ``"unet2d"`` (the 2D stream alone; its 3D output is the unprojected MIP
probability).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from . import mip

PRESETS: dict[str, dict] = {
    # Paper: 128x128x16 patches, 19 M-parameter 3D U-Net, half-width 2D U-Net with C1 = 32 features.
    "paper": dict(variant="vcnet", channels3d=(32, 64, 128, 256, 512), channels2d=(16, 32, 64, 128, 256),
                  res_units=2, feat3d=8, c1=32, joint=16, joint_layers=1, joint_mix=True, patch=(16, 128, 128)),
    # CPU preset: base 8 channels, 64x64x16 training patches.
    "lite": dict(variant="vcnet", channels3d=(8, 16, 32, 64), channels2d=(4, 8, 16, 32),
                 res_units=1, feat3d=8, c1=8, joint=8, joint_layers=1, patch=(16, 64, 64)),
}
for _size in ("lite", "paper"):
    for _variant in ("unet3d", "unet2d"):
        PRESETS[f"{_variant}-{_size}"] = {**PRESETS[_size], "variant": _variant}
VARIANTS = ("vcnet", "unet3d", "unet2d")
PRIOR_LOGIT = -2.0


def _unet(dims: int, out_channels: int, channels, res_units: int) -> UNet:
    return UNet(spatial_dims=dims, in_channels=1, out_channels=out_channels, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=res_units, act="relu", norm=None)


class VCNet(nn.Module):
    """Volume-composition network. ``forward`` returns a dict:

    ``prob`` (B,1,K3,K1,K2) final probability; ``mip_prob`` (B,1,rows*K1,2*K2) 2D-stream MIP
    probability (absent for ``unet3d``); ``mip_image`` the composited input MIPs.
    """

    def __init__(self, variant: str = "vcnet", channels3d=(8, 16, 32, 64), channels2d=(4, 8, 16, 32),
                 res_units: int = 1, feat3d: int = 8, c1: int = 8, joint: int = 8, joint_layers: int = 2,
                 joint_mix: bool = False, mip_size: int = mip.MIP_SIZE, mip_step: int = mip.MIP_STEP,
                 patch=(16, 64, 64)):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown VC-Net variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
        self.variant, self.mip_size, self.mip_step = variant, mip_size, mip_step
        self.patch = tuple(patch)
        self.multiple3d = 2 ** (len(channels3d) - 1)
        self.multiple2d = 2 ** (len(channels2d) - 1)
        if variant != "unet2d":
            self.stream3d = _unet(3, feat3d, channels3d, res_units)
        if variant != "unet3d":
            self.stream2d = _unet(2, c1, channels2d, res_units)
            self.head2d = nn.Conv2d(c1, 1, kernel_size=1)
        if variant != "unet2d":
            width = feat3d + (c1 if variant == "vcnet" else 0)
            layers: list[nn.Module] = []
            if joint_mix:  # a 1x1x1 channel mix first keeps the full-resolution 3x3x3 layers narrow
                layers += [nn.Conv3d(width, joint, kernel_size=1), nn.ReLU(inplace=True)]
                width = joint
            for _ in range(joint_layers):
                layers += [nn.Conv3d(width, joint, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                width = joint
            layers.append(nn.Conv3d(width, 1, kernel_size=1))
            self.joint = nn.Sequential(*layers)
        self._init_output_bias()

    def _init_output_bias(self) -> None:
        """Start both sigmoid heads at a low vessel prior (p = 0.12): vessels fill ~1% of a volume."""
        for head in (getattr(self, "head2d", None), self.joint[-1] if hasattr(self, "joint") else None):
            if head is not None:
                nn.init.constant_(head.bias, PRIOR_LOGIT)

    def forward(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        """:param volume: ``(B, 1, K3, K1, K2)`` normalised intensities (vessels bright)."""
        depth, height, width = volume.shape[2:]
        plane = math.lcm(self.multiple3d, self.multiple2d)
        padded = _pad_to(volume, (self.multiple3d, plane, plane))
        out = self._forward_padded(padded)
        out["prob"] = out["prob"][:, :, :depth, :height, :width]
        if "mip_prob" in out:
            out["mip_prob"] = _crop_tiles(out["mip_prob"], padded.shape[3:], (height, width), self._m(depth))
            out["mip_image"] = _crop_tiles(out["mip_image"], padded.shape[3:], (height, width), self._m(depth))
        return out

    def _m(self, depth: int) -> int:
        return mip.mip_count(depth, self.mip_size, self.mip_step)

    def _forward_padded(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        features = []
        if self.variant != "unet2d":
            features.append(F.relu(self.stream3d(volume)))
        if self.variant != "unet3d":
            image, indices = mip.compose(volume, self.mip_size, self.mip_step)
            feat2d = F.relu(self.stream2d(image))
            out["mip_image"] = image
            out["mip_prob"] = torch.sigmoid(self.head2d(feat2d))
            if self.variant == "unet2d":
                out["prob"] = mip.unproject(out["mip_prob"], indices, volume.shape[2])
                return out
            features.append(mip.unproject(feat2d, indices, volume.shape[2]))
        out["prob"] = torch.sigmoid(self.joint(torch.cat(features, dim=1)))
        return out


def _pad_to(volume: torch.Tensor, multiples) -> torch.Tensor:
    """Zero-pad the three spatial axes at their ends up to the given multiples."""
    pads = []
    for size, multiple in zip(reversed(volume.shape[2:]), reversed(multiples)):
        pads += [0, (-size) % multiple]
    return F.pad(volume, pads) if any(pads) else volume


def _crop_tiles(image: torch.Tensor, padded_hw, hw, m: int) -> torch.Tensor:
    """Crop every tile of a composited image from the padded to the original in-plane size."""
    if tuple(padded_hw) == tuple(hw):
        return image
    stack = mip.untile(image, m)[..., : hw[0], : hw[1]]
    return mip.tile(stack)


def build_model(preset: str = "lite", **config) -> VCNet:
    """Build VC-Net.

    :param preset: ``lite`` | ``paper`` | ``unet3d-lite`` | ``unet2d-lite`` | ``unet3d-paper`` | ``unet2d-paper``.
    :param config: overrides of the preset's keyword arguments.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown VC-Net preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return VCNet(**{**PRESETS[preset], **config})


def plain_unet3d(preset: str = "paper") -> nn.Module:
    """The plain MONAI 3D U-Net of the same size (bench baseline: 19.2 M parameters for ``paper``)."""
    spec = PRESETS[preset]
    return _unet(3, 1, spec["channels3d"], spec["res_units"])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["VCNet", "build_model", "PRESETS", "plain_unet3d", "count_parameters"]

"""OCTADepth network: a five-level U-Net with a structure branch of Structure Constraint Blocks (SCB).

Input ``(B, 1, H, W)`` en face angiogram (H, W multiples of 16); output ``(B, 2, H, W)``: channel 0 the
vessel map (sigmoid), channel 1 the relative depth map (sigmoid, 0 = nearest, 1 = deepest).

Shape choices where the paper is silent (see the module README):

* The structure branch runs at half resolution (``structure_stride=2``, the size of ``e_2``); it starts
  from the first encoder block's output, average-pooled 2x and projected by a 1x1 convolution. Each SCB
  projects ``e_t`` to the branch's width with a 1x1 convolution (cheap at low resolution), then
  upsamples it bilinearly by ``2^(t-2)`` to the branch's size (identity for ``t = 2``).
  ``structure_stride=1`` keeps the branch at full size (about 2.4x slower on a CPU than the plain U-Net).
* SCB ``t`` (``t = 2..5``) replaces U-Net's skip connection at decoder scale ``t - 1`` (where the
  plain U-Net concatenates ``e_{t-1}``); its output is resized (bilinear up / average pool) to that scale.
* The vessel map is the last SCB output upsampled 2x to full size, then convolved (3x3 conv + BN + ReLU,
  1x1 conv) together with the first encoder block's full-size features (the features the branch
  starts from), so capillaries one or two pixels wide survive the half-resolution branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UnetBasicBlock
from torch import nn

LEVELS = 5
PRESETS = {
    "paper": {"base": 64, "plain": False},
    "lite": {"base": 8, "plain": False},
    "unet-paper": {"base": 64, "plain": True},
    "unet-lite": {"base": 8, "plain": True},
}
NORM = ("batch", {"affine": True})
ACT = ("relu", {"inplace": True})


def _conv_block(in_channels: int, out_channels: int) -> nn.Module:
    """Two 3x3 conv + BatchNorm + ReLU layers (MONAI's U-Net basic block)."""
    return UnetBasicBlock(2, in_channels, out_channels, kernel_size=3, stride=1, norm_name=NORM, act_name=ACT)


class StructureConstraintBlock(nn.Module):
    """Gate an encoder feature map with an attention map computed from it and the structure branch.

    ``s_t = up(e_t) * sigmoid(f([s_{t-1}, up(e_t)]))`` where ``f`` is conv+BN+ReLU then a 1x1 conv.
    """

    def __init__(self, encoder_channels: int, structure_channels: int):
        super().__init__()
        self.project = Convolution(2, encoder_channels, structure_channels, kernel_size=1, conv_only=True)
        self.attention = nn.Sequential(
            Convolution(2, 2 * structure_channels, structure_channels, kernel_size=3, norm=NORM, act=ACT,
                        adn_ordering="NA"),
            Convolution(2, structure_channels, 1, kernel_size=1, conv_only=True),
            nn.Sigmoid())

    def forward(self, encoder_features: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.project(encoder_features), size=structure.shape[-2:], mode="bilinear",
                           align_corners=False)
        attention = self.attention(torch.cat([structure, up], dim=1))
        return up * attention


class UpBlock(nn.Module):
    """2x transposed-conv upsampling, concatenation with a skip map, then a basic conv block."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = Convolution(2, in_channels, out_channels, strides=2, kernel_size=2, is_transposed=True,
                              conv_only=True, padding=0, output_padding=0)
        self.block = _conv_block(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class OCTADepthNet(nn.Module):
    """U-Net encoder/decoder (five levels) with an SCB structure branch; ``plain=True`` is the ablation.

    :param base: channels of the first level (doubling per level).
    :param structure_channels: width of the structure branch (default ``base // 2``, at least 4).
    :param plain: plain U-Net with ordinary skips and both heads on the decoder (the paper's ablation).
    """

    def __init__(self, in_channels: int = 1, base: int = 8, structure_channels: int | None = None,
                 plain: bool = False, structure_stride: int = 2):
        super().__init__()
        self.plain = plain
        self.structure_stride = structure_stride
        widths = [base * 2**level for level in range(LEVELS)]
        self.encoders = nn.ModuleList(
            [_conv_block(in_channels if level == 0 else widths[level - 1], widths[level]) for level in range(LEVELS)])
        width = structure_channels or max(4, base // 2)
        if plain:
            skips = widths[:-1]
        else:
            self.structure_start = Convolution(2, widths[0], width, kernel_size=1, conv_only=True)
            self.scbs = nn.ModuleList([StructureConstraintBlock(widths[t], width) for t in range(1, LEVELS)])
            self.vessel_head = nn.Sequential(
                Convolution(2, width + widths[0], width, kernel_size=3, norm=NORM, act=ACT, adn_ordering="NA"),
                Convolution(2, width, 1, kernel_size=1, conv_only=True))
            skips = [width] * (LEVELS - 1)
        self.decoders = nn.ModuleList(
            [UpBlock(widths[level + 1], skips[level], widths[level]) for level in range(LEVELS - 1)])
        self.head = Convolution(2, widths[0], 2 if plain else 1, kernel_size=1, conv_only=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features

    def structure_skips(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """SCB outputs pooled to decoder scales 1..4, and the last (full-size) SCB output."""
        stride = self.structure_stride
        structure = self.structure_start(features[0] if stride == 1 else F.avg_pool2d(features[0], stride))
        skips = []
        for level, scb in enumerate(self.scbs):
            structure = scb(features[level + 1], structure)
            skips.append(_rescale(structure, stride / 2**level))
        return skips, structure

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"OCTADepthNet needs H and W divisible by 16, got {tuple(x.shape[-2:])}.")
        features = self.encode(x)
        if self.plain:
            skips, structure = features[:-1], None
        else:
            skips, structure = self.structure_skips(features)
        decoded = features[-1]
        for level in reversed(range(LEVELS - 1)):
            decoded = self.decoders[level](decoded, skips[level])
        if self.plain:
            return torch.sigmoid(self.head(decoded))
        vessels = self.vessel_head(torch.cat([_rescale(structure, self.structure_stride), features[0]], dim=1))
        return torch.sigmoid(torch.cat([vessels, self.head(decoded)], dim=1))


def _rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear upsampling (factor > 1), average pooling (factor < 1) or identity."""
    if factor > 1:
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    if factor < 1:
        return F.avg_pool2d(x, round(1 / factor))
    return x


def build_model(preset: str = "lite", **config) -> OCTADepthNet:
    """Build the network for a preset (``lite``, ``paper``, ``unet-lite``, ``unet-paper``).

    :param config: overrides (``base``, ``structure_channels``, ``plain``, ``in_channels``).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown OCTADepth preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return OCTADepthNet(**{**PRESETS[preset], **config})


def parameter_megabytes(model: nn.Module) -> float:
    """float32 size of the model's parameters and buffers in MB."""
    count = sum(p.numel() for p in model.state_dict().values())
    return count * 4 / 2**20

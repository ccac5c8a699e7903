"""OCTADepth network: a five-level U-Net with a structure branch of Structure Constraint Blocks (SCB).

Input ``(B, 1, H, W)`` en face angiogram (H, W multiples of 16); output ``(B, 2, H, W)``: channel 0 the
vessel map (sigmoid), channel 1 the relative depth map (sigmoid, 0 = nearest, 1 = deepest).

As in the paper (ISBI 2021):

* SCB ``t`` (``t = 2..5``) outputs ``s_t = up(e_t) * a_{t-1}``, keeping ``e_t``'s channels, where the
  attention map ``a_{t-1} = sigmoid(f([s_{t-1}, up(e_t)]))`` and ``up`` resizes ``e_t`` bilinearly to
  the structure branch's resolution. The branch starts from the first encoder block, ``s_1 = e_1``.
* ``s_t`` replaces ``e_t`` in the U-Net at ``e_t``'s own scale (``skip_scale="own"``, the default):
  the skips are ``s_1 = e_1, s_2, s_3, s_4`` and ``s_5`` enters the decoder, each evaluated at that
  scale as ``e_t * resize(a_{t-1})`` (:class:`GatedFeatures`), so every skip is exactly as wide as the
  plain U-Net's. (``skip_scale="previous"``, the round-1 layout kept to load its weights, fed ``s_t``
  to decoder scale ``t - 1``: skips twice as wide, 2x the plain U-Net's CPU time.)
* The vessel map comes from the last SCB output only: a 1x1 conv, upsampled to full size, then a
  3x3 conv + BN + ReLU and a 1x1 conv (no bypass from other features).

Choices where the paper is silent: ``f`` is a 1x1 conv (to ``hidden`` channels) + BN + ReLU, then a
conv (``attention_kernel``, 1 or 3) to one channel; the 1x1 conv's ``e_t`` part runs before the
upsampling (both are linear, so the result is the same). Both presets run the branch at the first
block's full resolution (``structure_stride=1``). The issue allowed ``lite`` a half-resolution branch
for speed; trained that way the vessel map lost its one- and two-pixel vessels (ROSSA ``val`` Dice
0.82 against 0.86), so ``lite`` keeps full resolution and is cheap by width instead: ``hidden=2``, a
1x1 attention conv and a 4-channel vessel head (the extra full-resolution work of the structure
branch and the vessel head is memory traffic, proportional to these widths); ``paper`` uses
``base // 2`` and 3x3. In inference the BatchNorms of the attention and of the vessel head are folded
into the convolutions before them (the same function with fewer full-resolution passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UnetBasicBlock
from torch import nn

LEVELS = 5
PRESETS = {
    "paper": {"base": 64, "plain": False, "structure_stride": 1, "attention_kernel": 3, "skip_scale": "own"},
    "lite": {"base": 8, "plain": False, "structure_stride": 1, "hidden": 2, "attention_kernel": 1, "vessel_hidden": 4,
             "skip_scale": "own"},
    "unet-paper": {"base": 64, "plain": True},
    "unet-lite": {"base": 8, "plain": True},
}
NORM = ("batch", {"affine": True})
ACT = ("relu", {"inplace": True})


def _conv_block(in_channels: int, out_channels: int) -> nn.Module:
    """Two 3x3 conv + BatchNorm + ReLU layers (MONAI's U-Net basic block)."""
    return UnetBasicBlock(2, in_channels, out_channels, kernel_size=3, stride=1, norm_name=NORM, act_name=ACT)


@dataclass
class GatedFeatures:
    """An SCB output ``s_t = up(e_t) * a_{t-1}``, kept as its two factors.

    ``features`` is ``e_t`` at its own resolution, ``attention`` the one-channel map ``a_{t-1}`` at the
    structure branch's resolution (``None`` for ``s_1 = e_1``). :meth:`at` evaluates the product at
    any scale; at the branch's scale it is exactly ``up(e_t) * a_{t-1}`` with ``e_t``'s channels.
    Keeping the factors lets a 1x1 convolution act on ``e_t`` before the upsampling (:meth:`project`,
    exact because the attention is one scalar per pixel), so the wide product is only ever formed at
    the decoder scale that consumes it.
    """

    features: torch.Tensor
    attention: torch.Tensor | None = None

    def at(self, size) -> torch.Tensor:
        """``resize(e_t) * resize(a_{t-1})`` at ``size`` (all of ``e_t``'s channels)."""
        gated = _resize(self.features, size)
        return gated if self.attention is None else gated * _resize(self.attention, size)

    def project(self, conv: nn.Conv2d, size) -> torch.Tensor:
        """``conv(s_t)`` at ``size`` for a bias-free 1x1 ``conv``: ``resize(conv(e_t)) * resize(a)``."""
        projected = _resize(conv(self.features), size)
        return projected if self.attention is None else projected * _resize(self.attention, size)


class StructureConstraintBlock(nn.Module):
    """Gate an encoder feature map with an attention map computed from it and the structure branch.

    ``s_t = up(e_t) * a_{t-1}``, ``a_{t-1} = sigmoid(f([s_{t-1}, up(e_t)]))``; ``s_t`` keeps ``e_t``'s
    channels. ``f`` = 1x1 conv + BN + ReLU, 3x3 conv; its 1x1 conv is split into the part acting on
    ``s_{t-1}`` and the part acting on ``e_t`` (a 1x1 conv of a concatenation is their sum), and the
    latter runs before the upsampling (both linear: the same result, at far lower cost).
    """

    def __init__(self, encoder_channels: int, structure_channels: int, hidden: int = 4, kernel: int = 3):
        super().__init__()
        self.from_structure = nn.Conv2d(structure_channels, hidden, kernel_size=1, bias=False)
        self.from_encoder = nn.Conv2d(encoder_channels, hidden, kernel_size=1)
        self.attention = nn.Sequential(nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                       nn.Conv2d(hidden, 1, kernel_size=kernel, padding=kernel // 2), nn.Sigmoid())

    def gate(self, encoder_features: torch.Tensor, structure: GatedFeatures, size) -> torch.Tensor:
        """The attention map ``a_{t-1}`` at the structure branch's resolution ``size``."""
        if not self.training:
            return self._folded_gate(encoder_features, structure, size)
        mixed = structure.project(self.from_structure, size) + _resize(self.from_encoder(encoder_features), size)
        return self.attention(mixed)

    def _folded_gate(self, encoder_features: torch.Tensor, structure: GatedFeatures, size) -> torch.Tensor:
        """:meth:`gate` in inference: the BatchNorm (an affine map per channel with its running
        statistics) folded into the two 1x1 convolutions, which run before the upsampling, and the
        gating and the sum done in one ``addcmul``: the same function with fewer full-resolution passes."""
        norm, conv = self.attention[0], self.attention[2]
        scale, shift = _batchnorm_affine(norm)
        mixed = _resize(F.conv2d(encoder_features, self.from_encoder.weight * scale[:, None, None, None],
                                 self.from_encoder.bias * scale + shift), size)
        structural = _resize(F.conv2d(structure.features, self.from_structure.weight * scale[:, None, None, None]), size)
        if structure.attention is None:
            mixed = mixed + structural
        else:
            mixed = torch.addcmul(mixed, structural, _resize(structure.attention, size))
        return torch.sigmoid(conv(torch.relu(mixed)))

    def forward(self, encoder_features: torch.Tensor, structure: GatedFeatures, size) -> GatedFeatures:
        return GatedFeatures(encoder_features, self.gate(encoder_features, structure, size))


def _batchnorm_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An inference BatchNorm as the per-channel affine map ``x * scale + shift`` (running statistics)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling or average pooling (integer factors) to ``size``; identity at that size."""
    size = tuple(int(v) for v in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-1] > size[-1]:
        return F.avg_pool2d(x, (x.shape[-2] // size[0], x.shape[-1] // size[1]))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


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
    :param plain: plain U-Net with ordinary skips and both heads on the decoder (the paper's ablation).
    :param structure_stride: resolution of the structure branch relative to the input (1 or 2).
    :param hidden: width of the SCB attention convolution (default ``base // 2``, at least 16).
    :param vessel_hidden: width of the vessel head (default ``hidden``).
    :param attention_kernel: kernel of the attention's last conv (1 or 3).
    :param skip_scale: ``"own"``: ``s_t`` replaces ``e_t`` at its own scale; ``"previous"``: the round-1
        layout (``s_t`` at decoder scale ``t - 1``, twice-as-wide skips).
    """

    def __init__(self, in_channels: int = 1, base: int = 8, plain: bool = False, structure_stride: int = 2,
                 hidden: int | None = None, vessel_hidden: int | None = None, attention_kernel: int = 3,
                 skip_scale: str = "own"):
        super().__init__()
        if skip_scale not in ("own", "previous"):
            raise ValueError(f"skip_scale must be 'own' or 'previous', got {skip_scale!r}.")
        self.plain = plain
        self.structure_stride = structure_stride
        self.skip_scale = skip_scale
        widths = [base * 2**level for level in range(LEVELS)]
        self.encoders = nn.ModuleList(
            [_conv_block(in_channels if level == 0 else widths[level - 1], widths[level]) for level in range(LEVELS)])
        hidden = hidden or max(16, base // 2)
        vessel_hidden = vessel_hidden or hidden
        if plain:
            skips = widths[:-1]
        else:
            self.scbs = nn.ModuleList([StructureConstraintBlock(widths[t], widths[t - 1], hidden, attention_kernel)
                                       for t in range(1, LEVELS)])
            self.vessel_reduce = nn.Conv2d(widths[-1], vessel_hidden, kernel_size=1, bias=False)
            self.vessel_head = nn.Sequential(
                Convolution(2, vessel_hidden, vessel_hidden, kernel_size=3, norm=NORM, act=ACT, adn_ordering="NA"),
                Convolution(2, vessel_hidden, 1, kernel_size=1, conv_only=True))
            skips = widths[1:] if skip_scale == "previous" else widths[:-1]
        self.decoders = nn.ModuleList(
            [UpBlock(widths[level + 1], skips[level], widths[level]) for level in range(LEVELS - 1)])
        self.head = Convolution(2, widths[0], 2 if plain else 1, kernel_size=1, conv_only=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features

    def structure_branch(self, features: list[torch.Tensor]) -> list[GatedFeatures]:
        """The SCB outputs ``s_2 .. s_5`` (attention maps at the branch's resolution)."""
        height, width = features[0].shape[-2:]
        size = (height // self.structure_stride, width // self.structure_stride)
        structure = GatedFeatures(features[0])
        outputs = []
        for level, scb in enumerate(self.scbs):
            structure = scb(features[level + 1], structure, size)
            outputs.append(structure)
        return outputs

    def vessel_map(self, last_scb: GatedFeatures, size) -> torch.Tensor:
        """Vessel logits from the last SCB output: 1x1 conv, upsampled to full ``size``, 3x3 conv, 1x1 conv.

        In inference the 3x3 conv's BatchNorm is folded into its weights (the same function, one
        full-resolution pass fewer)."""
        projected = last_scb.project(self.vessel_reduce, size)
        if self.training:
            return self.vessel_head(projected)
        first, last = self.vessel_head
        conv, norm = first.conv, first.adn.N
        scale, shift = _batchnorm_affine(norm)
        bias = (conv.bias if conv.bias is not None else 0.0) * scale + shift
        hidden = F.conv2d(projected, conv.weight * scale[:, None, None, None], bias, padding=conv.padding)
        return last(torch.relu(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"OCTADepthNet needs H and W divisible by 16, got {tuple(x.shape[-2:])}.")
        features = self.encode(x)
        decoded = features[-1]
        if self.plain:
            skips = features[:-1]
        elif self.skip_scale == "previous":
            outputs = self.structure_branch(features)
            # SCB t replaces the skip at decoder scale t - 1 (where the plain U-Net uses e_{t-1})
            skips = [out.at(features[level].shape[-2:]) for level, out in enumerate(outputs)]
        else:
            outputs = self.structure_branch(features)
            # s_t replaces e_t at its own scale: skips s_1 = e_1, s_2 .. s_4, and s_5 enters the decoder
            gated = [out.at(features[level + 1].shape[-2:]) for level, out in enumerate(outputs)]
            skips, decoded = [features[0], *gated[:-1]], gated[-1]
        for level in reversed(range(LEVELS - 1)):
            decoded = self.decoders[level](decoded, skips[level])
        if self.plain:
            return torch.sigmoid(self.head(decoded))
        vessels = self.vessel_map(outputs[-1], tuple(x.shape[-2:]))
        return torch.sigmoid(torch.cat([vessels, self.head(decoded)], dim=1))


def build_model(preset: str = "lite", **config) -> OCTADepthNet:
    """Build the network for a preset (``lite``, ``paper``, ``unet-lite``, ``unet-paper``).

    :param config: overrides (``base``, ``plain``, ``structure_stride``, ``hidden``, ``in_channels``).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown OCTADepth preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return OCTADepthNet(**{**PRESETS[preset], **config})


def parameter_megabytes(model: nn.Module) -> float:
    """float32 size of the model's parameters and buffers in MB."""
    count = sum(p.numel() for p in model.state_dict().values())
    return count * 4 / 2**20

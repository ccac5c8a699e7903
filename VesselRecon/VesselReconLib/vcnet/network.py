"""VC-Net: a 3D U-Net stream on the patch, a 2D U-Net stream on its composited sliding MIPs,
2D-to-3D unprojection and a 1x1x1 fusion (Wang et al., IEEE VIS 2020 / TVCG 2021), laid out as in
the authors' Keras code (SuperStacie/JointVesselNet_VC-Net, ``model/vc_net.py``).

- 3D stream: MONAI ``UNet`` (ReLU, ``norm=None``) whose full-resolution output has the stream's full
  top-level width (``feat3d`` = the first entry of ``channels3d``: 32 in ``paper``).
- 2D stream: MONAI ``BasicUNet`` (two 3x3 convolutions per level, ReLU, no normalisation, transposed
  convolution upsampling): the plain 2D U-Net of the authors' code, 32..512 channels in ``paper``
  (7.8 M parameters), ``c1`` output features, plus a 1x1 head with a sigmoid (the MIP segmentation
  supervised by Dice_MIP).
- Fusion: concatenate the 3D features and the unprojected 2D features, a 1x1x1 convolution to
  ``fuse`` channels (32 in ``paper``), ReLU, a 1x1x1 convolution and a sigmoid. No 3x3x3 layer runs at
  full resolution outside the streams.

Variants (for the paper's ablations and baselines): ``"vcnet"`` (both streams), ``"unet3d"`` (the
same network without the MIP stream), ``"unet2d"`` (the 2D stream alone; its 3D output is the
unprojected MIP probability), ``"slice2d"`` (a 2D U-Net of the 2D stream's widths applied slice by
slice: the paper's slice-wise 2D baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from . import mip

PRESETS: dict[str, dict] = {
    # Paper: 128x128x16 patches, 19 M-parameter 3D U-Net, 7.8 M-parameter 2D U-Net with C1 = 32 features.
    "paper": dict(variant="vcnet", channels3d=(32, 64, 128, 256, 512), channels2d=(32, 64, 128, 256, 512),
                  res_units=2, c1=32, fuse=32, patch=(16, 128, 128)),
    # CPU preset: 3D base 8 channels, 2D base 4 (BasicUNet runs two full-resolution convolutions per
    # level), 64x64x16 training patches.
    "lite": dict(variant="vcnet", channels3d=(8, 16, 32, 64), channels2d=(4, 8, 16, 32, 64),
                 res_units=1, c1=8, fuse=8, patch=(16, 64, 64)),
}
# Round 5 (issue 15, the speed ratio): ``lite`` with its 2D stream on the 2x max-pooled composited MIP
# image (``mip_scale=2``; the features are interpolated bilinearly back) and C1 = fuse = 4: the same
# 2D U-Net (same parameters) on a quarter of the pixels, half the unprojected and fused channels;
# 438 against 564 MFLOP of convolutions per 16x64x64 window (the equal-parameter U-Net: 218).
PRESETS["lite-fast"] = {**PRESETS["lite"], "c1": 4, "fuse": 4, "mip_scale": 2}
for _size in ("lite", "paper"):
    for _variant in ("unet3d", "unet2d", "slice2d"):
        PRESETS[f"{_variant}-{_size}"] = {**PRESETS[_size], "variant": _variant}
VARIANTS = ("vcnet", "unet3d", "unet2d", "slice2d")
PRIOR_LOGIT = -2.0
TRAINING_SPACING = (0.5, 0.5, 0.8)  # (sx, sy, sz) mm of the training phantoms; inference resamples to it


def _unet(dims: int, out_channels: int, channels, res_units: int) -> UNet:
    return UNet(spatial_dims=dims, in_channels=1, out_channels=out_channels, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=res_units, act="relu", norm=None)


def _unet2d(out_channels: int, channels) -> BasicUNet:
    """The plain 2D U-Net (two 3x3 convolutions per level, 4 poolings) of the authors' code."""
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=out_channels,
                     features=(*tuple(channels), channels[0]), act="relu", norm=None, dropout=0.0)


class VCNet(nn.Module):
    """Volume-composition network. ``forward`` returns a dict:

    ``prob`` (B,1,K3,K1,K2) final probability; ``mip_prob`` (B,1,rows*K1,2*K2) 2D-stream MIP
    probability (``vcnet`` and ``unet2d``); ``mip_image`` the composited input MIPs.
    """

    def __init__(self, variant: str = "vcnet", channels3d=(8, 16, 32, 64), channels2d=(4, 8, 16, 32, 64),
                 res_units: int = 1, feat3d: int | None = None, c1: int = 8, fuse: int = 8,
                 mip_size: int = mip.MIP_SIZE, mip_step: int = mip.MIP_STEP, patch=(16, 64, 64),
                 spacing=TRAINING_SPACING, mip_scale: int = 1):
        super().__init__()
        self.spacing = tuple(float(s) for s in spacing)  # (sx, sy, sz) mm the weights expect
        if variant not in VARIANTS:
            raise ValueError(f"Unknown VC-Net variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
        self.variant, self.mip_size, self.mip_step = variant, mip_size, mip_step
        self.mip_scale = int(mip_scale) if variant in ("vcnet", "unet2d") else 1
        self.patch = tuple(patch)
        feat3d = feat3d or channels3d[0]
        self.multiple3d = 2 ** (len(channels3d) - 1) if variant in ("vcnet", "unet3d") else 1
        self.multiple2d = 2 ** (len(channels2d) - 1) * self.mip_scale if variant != "unet3d" else 1
        if variant in ("vcnet", "unet3d"):
            self.stream3d = _unet(3, feat3d, channels3d, res_units)
        if variant in ("vcnet", "unet2d"):
            self.stream2d = _unet2d(c1, channels2d)
            self.head2d = nn.Conv2d(c1, 1, kernel_size=1)
        if variant == "slice2d":
            self.slices2d = _unet2d(1, channels2d)
        if variant in ("vcnet", "unet3d"):
            width = feat3d + (c1 if variant == "vcnet" else 0)
            self.joint = nn.Sequential(nn.Conv3d(width, fuse, kernel_size=1), nn.ReLU(inplace=True),
                                       nn.Conv3d(fuse, 1, kernel_size=1))
        self._init_output_bias()

    def _init_output_bias(self) -> None:
        """Start the sigmoid heads at a low vessel prior (p = 0.12): vessels fill ~1% of a volume."""
        heads = [getattr(self, "head2d", None), self.joint[-1] if hasattr(self, "joint") else None,
                 self.slices2d.final_conv if hasattr(self, "slices2d") else None]
        for head in heads:
            if head is not None:
                nn.init.constant_(head.bias, PRIOR_LOGIT)

    def forward(self, volume: torch.Tensor, mips: bool = True) -> dict[str, torch.Tensor]:
        """:param volume: ``(B, 1, K3, K1, K2)`` normalised intensities (vessels bright).
        :param mips: also return ``mip_prob`` and ``mip_image`` (False: ``prob`` only, the MIP head is
            not run; whole-volume inference without the composited-MIP output)."""
        depth, height, width = volume.shape[2:]
        plane = math.lcm(self.multiple3d, self.multiple2d)
        padded = _pad_to(volume, (self.multiple3d, plane, plane))
        out = self._forward_padded(padded, mips or self.variant == "unet2d")
        out["prob"] = out["prob"][:, :, :depth, :height, :width]
        if "mip_prob" in out:
            out["mip_prob"] = _crop_tiles(out["mip_prob"], padded.shape[3:], (height, width), self._m(depth))
            out["mip_image"] = _crop_tiles(out["mip_image"], padded.shape[3:], (height, width), self._m(depth))
        return out

    def _m(self, depth: int) -> int:
        return mip.mip_count(depth, self.mip_size, self.mip_step)

    def mip_stream(self, image: torch.Tensor, head: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """2D stream on composited MIPs: ReLU features ``(B, c1, H, W)`` and MIP probability (None
        when ``head`` is False). With ``mip_scale`` s > 1 the 2D U-Net runs on the s x s max-pooled
        image (max pooling keeps a thin bright vessel) and its features are interpolated bilinearly
        back to the image's size."""
        if self.mip_scale > 1:
            small = F.max_pool2d(image, self.mip_scale)
            feat2d = F.interpolate(_relu(self.stream2d(small)), size=image.shape[2:], mode="bilinear",
                                   align_corners=False)
        else:
            feat2d = _relu(self.stream2d(image))
        return feat2d, torch.sigmoid(self.head2d(feat2d)) if head else None

    def _forward_padded(self, volume: torch.Tensor, mips: bool = True) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.variant == "slice2d":
            b, c, d, h, w = volume.shape
            planes = volume.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
            prob = torch.sigmoid(self.slices2d(planes)).reshape(b, d, 1, h, w).permute(0, 2, 1, 3, 4)
            return {"prob": prob}
        features = []
        if self.variant != "unet2d":
            features.append(_relu(self.stream3d(volume)))
        if self.variant != "unet3d":
            image, indices = mip.compose(volume, self.mip_size, self.mip_step)
            feat2d, mip_prob = self.mip_stream(image, head=mips)
            if mips:
                out.update(mip_prob=mip_prob, mip_image=image)
            if self.variant == "unet2d":
                out["prob"] = mip.unproject(out["mip_prob"], indices, volume.shape[2], self.mip_size, self.mip_step)
                return out
            features.append(mip.unproject(feat2d, indices, volume.shape[2], self.mip_size, self.mip_step))
        out["prob"] = torch.sigmoid(self._fuse(features))
        return out

    def _fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The 1x1x1 fusion's logits. Without autograd the first 1x1x1 convolution is applied to each
        stream's features and summed (the same numbers as on their concatenation, to float rounding),
        which skips copying the channels-last 3D features into a concatenated array (CPU: 1.2 against
        1.5 ms per ``lite`` window)."""
        if torch.is_grad_enabled() or len(features) == 1:
            return self.joint(torch.cat(features, dim=1))
        first = self.joint[0]
        weights = first.weight.split([part.shape[1] for part in features], dim=1)
        hidden = F.conv3d(features[0], weights[0], first.bias)
        for part, weight in zip(features[1:], weights[1:]):
            hidden.add_(F.conv3d(part, weight))
        return self.joint[1:](hidden)


def _relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU, in place when autograd is off (inference: no second full-resolution feature array)."""
    return F.relu(x) if torch.is_grad_enabled() else x.relu_()


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

    :param preset: ``lite`` | ``paper`` | ``<variant>-lite`` | ``<variant>-paper`` with variant
        ``unet3d``, ``unet2d`` or ``slice2d``.
    :param config: overrides of the preset's keyword arguments.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown VC-Net preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return VCNet(**{**PRESETS[preset], **config})


def plain_unet3d(preset: str = "paper", match_parameters: bool = False) -> nn.Module:
    """The plain MONAI 3D U-Net of the preset's 3D stream (19.2 M parameters for ``paper``).

    :param match_parameters: widen its channels (same depth and residual units) until it has about
        as many parameters as the whole VC-Net of the preset (the bench's equal-parameter baseline).
    """
    spec = PRESETS[preset]
    if not match_parameters:
        return _unet(3, 1, spec["channels3d"], spec["res_units"])
    target = count_parameters(build_model(preset))
    base = spec["channels3d"]
    best = None
    for factor in [1 + 0.02 * i for i in range(60)]:
        channels = tuple(max(1, int(round(c * factor))) for c in base)
        net = _unet(3, 1, channels, spec["res_units"])
        if best is None or abs(count_parameters(net) - target) < abs(count_parameters(best) - target):
            best = net
        if count_parameters(net) >= target:
            break
    return best


def channels_last(model: nn.Module) -> nn.Module:
    """Store the convolution weights channels-last (``channels_last_3d`` for 3D, ``channels_last`` for
    2D), in place, so that oneDNN runs the convolutions (and their outputs) in that layout. The same
    numbers (to float rounding); on CPU it halves the time of the few-channel full-resolution 3D layers
    (the 3D stream's 8-channel top level of ``lite``: transposed convolution 12 -> 3 ms, 3x3x3
    convolution 12 -> 6 ms per 2 windows)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            module.to(memory_format=torch.channels_last_3d)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.to(memory_format=torch.channels_last)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["VCNet", "build_model", "PRESETS", "VARIANTS", "plain_unet3d", "count_parameters", "channels_last"]

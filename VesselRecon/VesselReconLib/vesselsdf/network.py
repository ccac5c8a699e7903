"""VesselSDF networks: occupancy attention U-Net + two-level SDF refiner U-Net (MONAI blocks).

Tensor layout is ``(N, C, K, J, I)`` = ``(batch, channel, z, y, x)`` (KJI volumes). The first
encoder level only downsamples in-plane (stride ``(1, 2, 2)``) because thick-slice CT has far
fewer slices than in-plane pixels (16 vs 512).

Presets (``build_model(preset)``): ``"<size>"`` or ``"<size>-<variant>"`` with size ``lite`` or
``paper`` and variant

* ``full`` (default): occupancy stage + SDF refiner on the detached occupancy probabilities;
* ``occ``: occupancy stage only (ablation "occupancy only");
* ``sdfonly``: the refiner on the CT directly, no occupancy stage (ablation "SDF only");
* ``nogauss``: the full network trained without the Gaussian loss (a loss setting, see
  :data:`VARIANT_LOSS`; architecture identical to ``full``);
* ``unet``: a plain MONAI 3D U-Net predicting occupancy (baseline; ``paper-unet`` is the
  19.2 M-parameter MONAI UNet ``(32, 64, 128, 256, 512)`` with two residual units per level).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import AttentionUnet, UNet
from torch import nn

VARIANTS = ("full", "occ", "sdfonly", "nogauss", "unet")
VARIANT_LOSS = {"nogauss": {"lambda_gauss": 0.0}}
"""Loss overrides implied by a variant (see :class:`..losses.LossConfig`)."""


@dataclass(frozen=True)
class Size:
    occupancy_channels: tuple[int, ...]
    refiner_channels: tuple[int, int, int]
    unet_channels: tuple[int, ...]
    unet_res_units: int


SIZES = {
    "lite": Size((8, 16, 32, 64), (8, 16, 32), (8, 16, 32, 64), 1),
    "paper": Size((32, 64, 128, 256, 512), (16, 32, 64), (32, 64, 128, 256, 512), 2),
}


def parse_preset(preset: str) -> tuple[str, str]:
    """``"lite-occ"`` -> ``("lite", "occ")``; ``"paper"`` -> ``("paper", "full")``."""
    size, _, variant = preset.partition("-")
    variant = variant or "full"
    if size not in SIZES or variant not in VARIANTS:
        names = [f"{s}" for s in SIZES] + [f"{s}-{v}" for s in SIZES for v in VARIANTS if v != "full"]
        raise ValueError(f"Unknown VesselSDF preset {preset!r}; choose one of {', '.join(names)}.")
    return size, variant


def _strides(levels: int) -> list:
    """In-plane-only first stride, isotropic after (thick slices: 16 slices, 512 pixels)."""
    return [(1, 2, 2)] + [2] * (levels - 2)


def occupancy_net(channels: tuple[int, ...], in_channels: int = 1) -> nn.Module:
    """Oktay-style attention U-Net (MONAI ``AttentionUnet``) giving one occupancy logit per voxel."""
    return AttentionUnet(spatial_dims=3, in_channels=in_channels, out_channels=1, channels=channels,
                         strides=_strides(len(channels)))


def refiner_net(channels: tuple[int, int, int], in_channels: int = 1) -> nn.Module:
    """Light 3D U-Net with two encoder-decoder levels (MONAI ``UNet``) regressing the SDF."""
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=1, channels=channels,
                strides=_strides(len(channels)), num_res_units=1)


class VesselSDFNet(nn.Module):
    """Occupancy stage and/or SDF refiner; ``forward`` returns ``{"occupancy": logits, "sdf": mm}``.

    Missing outputs of an ablation variant are ``None``. The refiner of the full model sees the
    occupancy probabilities *detached*, so the SDF losses do not flow into the occupancy stage.

    :param size: ``lite`` or ``paper``.
    :param variant: one of :data:`VARIANTS`.
    :param sdf_scale_mm: the refiner's raw output times this gives millimetres (eases regressing
        distances of tens of mm from a zero-initialised head).
    """

    def __init__(self, size: str = "lite", variant: str = "full", sdf_scale_mm: float = 10.0):
        super().__init__()
        spec = SIZES[size]
        self.size, self.variant, self.sdf_scale_mm = size, variant, float(sdf_scale_mm)
        self.occupancy = None
        self.refiner = None
        if variant == "unet":
            self.occupancy = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=spec.unet_channels,
                                  strides=_strides(len(spec.unet_channels)), num_res_units=spec.unet_res_units)
        elif variant != "sdfonly":
            self.occupancy = occupancy_net(spec.occupancy_channels)
        if variant in ("full", "nogauss", "sdfonly"):
            self.refiner = refiner_net(spec.refiner_channels)

    @property
    def has_sdf(self) -> bool:
        return self.refiner is not None

    @property
    def divisor(self) -> tuple[int, int]:
        """Input sizes must be multiples of ``(slices, in-plane)``."""
        levels = max(len(SIZES[self.size].occupancy_channels), len(SIZES[self.size].unet_channels))
        return 2 ** (levels - 2), 2 ** (levels - 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor | None]:
        logits = self.occupancy(image) if self.occupancy is not None else None
        sdf = None
        if self.refiner is not None:
            source = image if logits is None else torch.sigmoid(logits).detach()
            sdf = self.refiner(source) * self.sdf_scale_mm
        return {"occupancy": logits, "sdf": sdf}


def build_model(preset: str = "lite", **config) -> VesselSDFNet:
    """Build an untrained VesselSDF network.

    :param preset: ``lite`` / ``paper``, optionally with an ablation variant suffix (module docs).
    :param config: keyword overrides: ``variant`` (wins over the suffix), ``sdf_scale_mm``.
    """
    size, variant = parse_preset(preset)
    variant = config.pop("variant", variant)
    if variant not in VARIANTS:
        raise ValueError(f"Unknown VesselSDF variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    return VesselSDFNet(size, variant, **config)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

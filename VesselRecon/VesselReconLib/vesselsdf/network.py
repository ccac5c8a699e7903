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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import AttentionUnet, UNet
from torch import nn

VARIANTS = ("full", "occ", "sdfonly", "nogauss", "unet")
VARIANT_LOSS = {"nogauss": {"lambda_gauss": 0.0}}
"""Loss overrides implied by a variant (see :class:`..losses.LossConfig`)."""
OCCUPANCY_PRIOR = -4.6
"""Constant added to the occupancy logits: sigmoid(-4.6) = 1 %, about the vessel fraction of a liver
CT, so training starts from the class prior instead of 50 % (as RetinaNet's prior bias)."""
SDF_PRIOR = 0.8
"""Constant start of the ``sdfonly`` head on the CT: ``B·tanh(0.8)`` ≈ 4 mm ("background")."""
TRUNCATION_MM = 5.0
"""Band of the occupancy distance start (and of the training target, see ``LossConfig``)."""


def occupancy_distance(prob: torch.Tensor, spacing, truncation_mm: float = TRUNCATION_MM) -> torch.Tensor:
    """Truncated signed distance (mm) of the ``prob > 0.5`` region, by iterated max-pooling.

    In-plane it is the chessboard distance in steps of the pixel size (one 3x3 dilation per step,
    cheap on any device); through-plane one extra step of ``Δz`` to the neighbouring slices. Values
    are ``±(d − Δx/2)`` like :func:`.losses.signed_distance`, clamped to ``±truncation_mm``.

    :param prob: ``(N, 1, K, J, I)`` occupancy probabilities.
    :param spacing: ``(Δx, Δy, Δz)`` mm (one triple for the batch).
    """
    dx, dz = float(spacing[0]), float(spacing[2])
    steps = max(1, int(math.ceil(truncation_mm / dx)))
    inside = prob > 0.5

    def distance_to(region: torch.Tensor) -> torch.Tensor:
        grown = region.float()
        dist = torch.where(region, 0.0, truncation_mm + dx).to(prob.dtype)
        for step in range(1, steps + 1):
            grown = F.max_pool3d(grown, (1, 3, 3), stride=1, padding=(0, 1, 1))
            dist = torch.where((grown > 0) & (dist > step * dx), step * dx, dist)
        if dist.shape[2] > 1:
            padded = F.pad(dist, (0, 0, 0, 0, 1, 1), value=truncation_mm + dx)
            dist = torch.minimum(dist, dz + torch.minimum(padded[:, :, :-2], padded[:, :, 2:]))
        return dist

    outside = distance_to(inside) - dx / 2
    depth = distance_to(~inside) - dx / 2
    return torch.where(inside, -depth, outside).clamp(-truncation_mm, truncation_mm)


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
    """Light 3D U-Net with two encoder-decoder levels (MONAI ``UNet``) regressing the SDF.

    Without residual units, so the output layer is a plain (transposed) convolution: MONAI puts an
    instance norm on the single output channel otherwise, which removes the offset a distance
    regression needs.
    """
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=1, channels=channels,
                strides=_strides(len(channels)), num_res_units=0)


class VesselSDFNet(nn.Module):
    """Occupancy stage and/or SDF refiner; ``forward`` returns ``{"occupancy": logits, "sdf": mm}``.

    Missing outputs of an ablation variant are ``None``. The refiner of the full model sees the
    occupancy probabilities *detached*, so the SDF losses do not flow into the occupancy stage, and
    refines a start field: ``f = f₀ + R·tanh(refiner(p))`` with ``f₀`` the truncated distance of
    ``p > 0.5`` (:func:`occupancy_distance`) and ``R = sdf_bound_mm`` (a zero-initialised last
    layer makes ``f = f₀`` at the start). ``sdfonly`` regresses ``f = B·tanh(refiner(CT) + 0.8)``.

    :param size: ``lite`` or ``paper``.
    :param variant: one of :data:`VARIANTS`.
    :param sdf_bound_mm: the SDF head is ``B·tanh(raw)`` with ``B`` = this (mm): 1.2 × the 5 mm
        truncation of the training target (:class:`..losses.LossConfig`), so the target is reachable
        while far-field values and the ``|f|``-weighted Gaussian term stay bounded.
    """

    def __init__(self, size: str = "lite", variant: str = "full", sdf_bound_mm: float = 6.0,
                 spacing: tuple[float, float, float] = (0.7, 0.7, 5.0)):
        super().__init__()
        spec = SIZES[size]
        self.size, self.variant, self.sdf_bound_mm = size, variant, float(sdf_bound_mm)
        self.default_spacing = tuple(float(s) for s in spacing)
        self.occupancy = None
        self.refiner = None
        if variant == "unet":
            self.occupancy = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=spec.unet_channels,
                                  strides=_strides(len(spec.unet_channels)), num_res_units=spec.unet_res_units)
        elif variant != "sdfonly":
            self.occupancy = occupancy_net(spec.occupancy_channels)
        if variant in ("full", "nogauss", "sdfonly"):
            self.refiner = refiner_net(spec.refiner_channels)
            if variant != "sdfonly":
                last = [m for m in self.refiner.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))][-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    @property
    def has_sdf(self) -> bool:
        return self.refiner is not None

    @property
    def divisor(self) -> tuple[int, int]:
        """Input sizes must be multiples of ``(slices, in-plane)``."""
        levels = max(len(SIZES[self.size].occupancy_channels), len(SIZES[self.size].unet_channels))
        return 2 ** (levels - 2), 2 ** (levels - 1)

    def forward(self, image: torch.Tensor, spacing=None) -> dict[str, torch.Tensor | None]:
        """``image`` ``(N, 1, K, J, I)`` normalised CT; ``spacing`` ``(Δx, Δy, Δz)`` mm of the batch."""
        logits = self.occupancy(image) + OCCUPANCY_PRIOR if self.occupancy is not None else None
        sdf = None
        if self.refiner is not None and logits is None:
            sdf = torch.tanh(self.refiner(image) + SDF_PRIOR) * self.sdf_bound_mm
        elif self.refiner is not None:
            prob = torch.sigmoid(logits).detach()
            start = occupancy_distance(prob.float(), spacing or self.default_spacing)
            sdf = start + self.sdf_bound_mm * torch.tanh(self.refiner(prob))
        return {"occupancy": logits, "sdf": sdf}


def build_model(preset: str = "lite", **config) -> VesselSDFNet:
    """Build an untrained VesselSDF network.

    :param preset: ``lite`` / ``paper``, optionally with an ablation variant suffix (module docs).
    :param config: keyword overrides: ``variant`` (wins over the suffix), ``sdf_bound_mm``.
    """
    size, variant = parse_preset(preset)
    variant = config.pop("variant", variant)
    if variant not in VARIANTS:
        raise ValueError(f"Unknown VesselSDF variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    return VesselSDFNet(size, variant, **config)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Networks: the 3-class quality classifier (timm backbones) and the nnU-Net-style FAZ U-Net (MONAI).

``build_model(preset)`` builds either kind by preset name:

- quality presets: ``lite`` (shipped), ``paper-3mm`` (Swin-L, the paper's best for 3x3 mm scans),
  ``paper-6mm`` and ``paper`` (SE-ResNeXt-101 32x4d, its best for 6x6 mm), ``resnet101``, ``inception_v3``,
  ``efficientnet_b7``, ``seresnext101``, ``swin_large`` -- each at the paper's input size;
- FAZ presets: ``faz-lite`` (shipped: a 2.0 mm window around the image centre at 96 px) and
  ``faz-paper`` (nnU-Net 2D configuration on whole 512 px images, deep supervision, mirroring).

Both networks z-score each input image themselves, so callers pass images scaled to ``[0, 1]``.
Backbones are always built with ``pretrained=False`` (no downloads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet
from torch import nn

from . import GRADES
from ..device import mirrored_mean
from ..errors import CheckpointError

QUALITY_PRESETS: dict[str, dict] = {
    # A 4-stage ResNet-10 with 16..128 channels: ~0.3 M parameters, 1.3 MB; two coordinate channels
    # (CoordConv) so that it can tell where the fovea lies (decentration), which pooling otherwise hides.
    "lite": {"backbone": "resnet10t", "input_size": 128, "coord_channels": True,
             "backbone_kwargs": {"channels": (16, 32, 64, 128), "stem_width": 16}},
    "resnet101": {"backbone": "resnet101", "input_size": 224},
    "inception_v3": {"backbone": "inception_v3", "input_size": 299},
    "efficientnet_b7": {"backbone": "efficientnet_b7", "input_size": 600},
    "seresnext101": {"backbone": "seresnext101_32x4d", "input_size": 224},
    "swin_large": {"backbone": "swin_large_patch4_window12_384", "input_size": 384},
}
# The paper's best model per field (training: AdamW, warm-up from 5e-7 over 20 epochs; see train.py).
QUALITY_PRESETS["paper-3mm"] = dict(QUALITY_PRESETS["swin_large"])
QUALITY_PRESETS["paper-6mm"] = dict(QUALITY_PRESETS["seresnext101"])
QUALITY_PRESETS["paper"] = dict(QUALITY_PRESETS["seresnext101"])
PAPER_QUALITY_BY_FIELD_MM = {3.0: "paper-3mm", 6.0: "paper-6mm"}

FAZ_PRESETS: dict[str, dict] = {
    # nnU-Net 2D plan for the paper's 512-px patches: 7 stages, 3x3 kernels, stride-2 downsampling,
    # 32..512 filters, deep supervision, test-time mirroring along both axes; the whole image.
    "faz-paper": {"filters": (32, 64, 128, 256, 512, 512, 512), "input_size": 512, "deep_supervision": True,
                  "mirror_axes": (2, 3)},
    # Lite (CPU): a 2.0 mm square window around the image centre (the fovea) resampled to 96 px
    # (21 um/px: a 6x6 mm scan at its own resolution, a 3x3 mm one at half), batch norm, deep supervision.
    "faz-lite": {"filters": (8, 16, 32, 64, 64), "input_size": 96, "norm": "batch", "window_mm": 2.0,
                 "deep_supervision": True},
}


def zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image z-score normalisation of a ``(B, C, H, W)`` batch."""
    x = x.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + eps)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass of a ``(B, C, H, W)`` batch (reflected borders, radius 3 sigma)."""
    radius = max(1, int(round(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, 2 * radius + 1), groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(-1, 1, 2 * radius + 1, 1), groups=x.shape[1])


# Bands of the spectral canonicalisation, in cycles per input pixel: "mid" holds the capillary mesh and
# the FAZ outline, "fine" the pixel-scale texture (speckle, compression, the densest capillaries).
MID_BAND, FINE_BAND = (1 / 16, 1 / 8), (1 / 4, 0.5 + 1e-6)
CANONICAL_SIGMAS = torch.linspace(0.0, 2.0, 81)


def _band_masks(frequency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``frequency`` lies in :data:`FINE_BAND` and in :data:`MID_BAND`."""
    return ((frequency >= FINE_BAND[0]) & (frequency < FINE_BAND[1]),
            (frequency >= MID_BAND[0]) & (frequency < MID_BAND[1]))


def fine_to_mid_ratio(power: torch.Tensor, frequency: torch.Tensor) -> torch.Tensor:
    """Mean power in :data:`FINE_BAND` over mean power in :data:`MID_BAND` (last two dims: frequencies)."""
    fine, mid = _band_masks(frequency)
    return power[..., fine].mean(-1) / power[..., mid].mean(-1).clamp_min(1e-12)


def _radial_frequency(height: int, width: int, device) -> torch.Tensor:
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    return torch.sqrt(fy ** 2 + fx ** 2)


def _windowed_power(x: torch.Tensor) -> torch.Tensor:
    """Power spectrum (``rfft2``) of each mean-removed, Hann-windowed image of a float batch."""
    height, width = x.shape[-2:]
    window = torch.hann_window(height, periodic=False, device=x.device)[:, None] * \
        torch.hann_window(width, periodic=False, device=x.device)[None, :]
    return torch.fft.rfft2((x - x.mean(dim=(-2, -1), keepdim=True)) * window).abs().square()


def image_fine_ratio(x: torch.Tensor) -> torch.Tensor:
    """The fine-to-mid power ratio of each image of a ``(B, 1, H, W)`` batch (Hann-windowed spectrum)."""
    x = x.float()
    return fine_to_mid_ratio(_windowed_power(x), _radial_frequency(*x.shape[-2:], x.device))[:, 0]


def spectral_canonical(x: torch.Tensor, reference_ratio: float) -> torch.Tensor:
    """Spectral canonicalisation of a ``(B, 1, H, W)`` batch: an image whose fine-to-mid power ratio
    (:func:`image_fine_ratio`) exceeds ``reference_ratio`` (the training images' level) is low-passed by
    the smallest Gaussian (sigma on the grid :data:`CANONICAL_SIGMAS`, up to 2 px) that brings the ratio
    down to it; the others are returned unchanged. A blur never raises the ratio, so an image that is
    already smoother than the reference is never touched."""
    x = x.float()
    height, width = x.shape[-2:]
    frequency = _radial_frequency(height, width, x.device)
    power = _windowed_power(x)[:, 0]                                 # (B, h, w')
    sigmas = CANONICAL_SIGMAS.to(x.device)
    fine, mid = _band_masks(frequency)

    def gain(f: torch.Tensor) -> torch.Tensor:                      # (N, S) power gain of each sigma
        return torch.exp(-4 * math.pi ** 2 * f[:, None] ** 2 * sigmas[None, :] ** 2)

    ratios = (power[:, fine] @ gain(frequency[fine])) / fine.sum() / \
        ((power[:, mid] @ gain(frequency[mid])) / mid.sum()).clamp_min(1e-12)                 # (B, S)
    above = ratios > reference_ratio
    changed = torch.nonzero(above[:, 0]).flatten()
    if changed.numel() == 0:
        return x
    above = above[changed]
    # the first grid sigma at or below the reference (the largest sigma when none reaches it)
    index = torch.where(above.all(1), torch.full_like(changed, len(sigmas) - 1), (~above).float().argmax(1))
    sigma = sigmas[index]
    amplitude = torch.exp(-2 * math.pi ** 2 * sigma[:, None, None, None] ** 2 * frequency ** 2)
    out = x.clone()
    out[changed] = torch.fft.irfft2(torch.fft.rfft2(x[changed]) * amplitude, s=(height, width))
    return out


BAND_BASELINE_FRACTION, BAND_MIN_HEIGHT_FRACTION = 0.125, 0.03


# the row statistics of :func:`row_darkening` (``QualityClassifier(motion_band_statistic=)`` names one)
ROW_STATISTICS = {"median": lambda rows: rows.median(dim=-1).values, "mean": lambda rows: rows.mean(dim=-1)}


def row_darkening(x: torch.Tensor, statistic: str = "median") -> torch.Tensor:
    """``(B, H)`` relative darkening of each image row against its neighbourhood: ``1 - p / b`` (>= 0), with
    ``p`` the row's ``statistic`` (:data:`ROW_STATISTICS`) and ``b`` the running median of ``p`` over
    +-``BAND_BASELINE_FRACTION * H`` rows (reflected ends). ``"median"`` is robust to the FAZ and to single
    vessels, which cover less than half a row; ``"mean"`` (round 6, shipped) keeps a band's whole loss of
    signal (a blur moves bright capillary signal within a row, which shifts a row's median but not its mean)."""
    profile = ROW_STATISTICS[statistic](x.float()[:, 0])                                        # (B, H)
    radius = max(1, int(round(BAND_BASELINE_FRACTION * profile.shape[-1])))
    padded = F.pad(profile[:, None], (radius, radius), mode="reflect")[:, 0]
    baseline = padded.unfold(-1, 2 * radius + 1, 1).median(dim=-1).values
    return (1.0 - profile / baseline.clamp_min(1e-6)).clamp_min(0.0)


def motion_band_score(x: torch.Tensor, statistic: str = "median") -> torch.Tensor:
    """``(B,)`` depth of the deepest horizontal dark band of each image of a ``(B, 1, H, W)`` batch in
    ``[0, 1]``: the largest darkening (:func:`row_darkening`) held over at least
    ``BAND_MIN_HEIGHT_FRACTION * H`` consecutive rows (a motion / blink band, where the OCT signal was lost
    for several B-scans). Thin lines (stripe noise, single bright or dark rows) do not count; a blur of a
    band that is taller than the blur keeps most of its depth. ``statistic``: see :func:`row_darkening`."""
    darkening = row_darkening(x, statistic)
    height = max(2, int(round(BAND_MIN_HEIGHT_FRACTION * darkening.shape[-1])))
    held = -F.max_pool1d(-darkening[:, None], kernel_size=height, stride=1)[:, 0]
    return held.max(dim=-1).values


MOTION_GATE_LOGIT = 30.0   # a gated image's gradable/outstanding logits are lowered by this: p(ungradable) ~ 1


INFERENCE_SETTINGS = ("canonical_fine_ratio", "motion_band_threshold", "motion_band_statistic")


def inference_settings(net: nn.Module) -> dict:
    """The :data:`INFERENCE_SETTINGS` a network has set (a quality classifier's registry ``config``; ``{}``
    for a FAZ U-Net)."""
    return {key: getattr(net, key) for key in INFERENCE_SETTINGS if getattr(net, key, None) is not None}


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H, W)`` row and column coordinates in ``[-1, 1]`` matching ``x`` (CoordConv channels)."""
    batch, _, height, width = x.shape
    rows = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
    cols = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid[None].expand(batch, -1, -1, -1)


class QualityClassifier(nn.Module):
    """A timm backbone graded into ungradable / gradable / outstanding.

    :param backbone: timm model name.
    :param input_size: square input size in pixels (the paper's size for each backbone).
    :param in_chans: input channels (1 for grayscale OCTA).
    :param backbone_kwargs: extra ``timm.create_model`` arguments (e.g. channel widths of ``lite``).
    :param coord_channels: append two channels holding the row and column coordinate in ``[-1, 1]``
        (CoordConv) to the z-scored image, so that the grader can judge where the fovea lies.
    :param canonical_fine_ratio: spectral canonicalisation (:func:`spectral_canonical`): an input whose
        fine-to-mid power ratio exceeds this is low-passed down to it (``None``: off).
    :param motion_band_threshold: motion-band gate (inference only): an input whose
        :func:`motion_band_score` reaches this is graded ungradable (its gradable and outstanding logits
        are lowered by :data:`MOTION_GATE_LOGIT`), whatever the network says (``None``: off).
    :param motion_band_statistic: the row statistic of that score, a key of :data:`ROW_STATISTICS`.

    The three settings above are not weights: :func:`inference_settings` gives them as a registry ``config``.
    """

    kind = "quality"

    def __init__(self, backbone: str = "resnet10t", input_size: int = 128, in_chans: int = 1,
                 num_classes: int = len(GRADES), backbone_kwargs: dict | None = None, drop_rate: float = 0.0,
                 coord_channels: bool = False, canonical_fine_ratio: float | None = None,
                 motion_band_threshold: float | None = None, motion_band_statistic: str = "median"):
        super().__init__()
        import timm

        kwargs = dict(backbone_kwargs or {})
        if "channels" in kwargs:
            kwargs["channels"] = tuple(kwargs["channels"])
        if backbone.startswith("swin"):
            kwargs.setdefault("img_size", input_size)
        self.backbone_name = backbone
        self.input_size = int(input_size)
        self.in_chans = int(in_chans)
        self.coord_channels = bool(coord_channels)
        self.canonical_fine_ratio = None if canonical_fine_ratio is None else float(canonical_fine_ratio)
        self.motion_band_threshold = None if motion_band_threshold is None else float(motion_band_threshold)
        if motion_band_statistic not in ROW_STATISTICS:
            raise CheckpointError(f"motion_band_statistic must be one of {', '.join(map(repr, ROW_STATISTICS))}; "
                                  f"got {motion_band_statistic!r}.")
        self.motion_band_statistic = motion_band_statistic
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=num_classes,
                                          in_chans=in_chans + 2 * self.coord_channels, drop_rate=drop_rate, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = None
        if self.motion_band_threshold is not None and not self.training:
            gate = motion_band_score(x, self.motion_band_statistic) >= self.motion_band_threshold
        if self.canonical_fine_ratio is not None:
            x = spectral_canonical(x, self.canonical_fine_ratio)
        x = zscore(x)
        if self.in_chans != x.shape[1]:
            x = x.expand(-1, self.in_chans, -1, -1)
        if self.coord_channels:
            x = torch.cat([x, coordinates(x)], dim=1)
        logits = self.backbone(x)
        if gate is not None and bool(gate.any()):
            penalty = torch.zeros_like(logits)
            penalty[:, 1:] = MOTION_GATE_LOGIT
            logits = logits - gate[:, None].to(logits.dtype) * penalty
        return logits

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classification head (what ``--finetune head`` trains)."""
        return list(self.backbone.get_classifier().parameters())

    def freeze_backbone(self) -> None:
        """Train only the head: freeze every other parameter."""
        head = {id(p) for p in self.head_parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in head)


class FAZUNet(DynUNet):
    """nnU-Net-style 2D U-Net (MONAI DynUNet): 3x3 kernels, stride-2 downsampling, instance norm,
    leaky ReLU; 2 output channels (background, FAZ).

    :param filters: feature maps per resolution stage.
    :param input_size: square input size in pixels.
    :param norm: ``instance`` (nnU-Net) or ``batch``.
    :param window_mm: side of the square window around the image centre that is segmented (resampled to
        ``input_size``); ``None``: the whole image.
    :param deep_supervision: in training mode also return two lower-resolution heads (nnU-Net).
    :param mirror_axes: test-time mirroring: logits averaged over flips along these axes (nnU-Net).
    """

    kind = "faz"

    def __init__(self, filters=(8, 16, 32, 64, 64), input_size: int = 128, in_channels: int = 1,
                 out_channels: int = 2, norm: str = "instance", window_mm: float | None = None,
                 deep_supervision: bool = False, mirror_axes=()):
        filters = [int(f) for f in filters]
        stages = len(filters)
        if input_size % 2 ** (stages - 1):
            raise ValueError(f"input_size {input_size} must be divisible by {2 ** (stages - 1)} for {stages} stages.")
        strides = [[1, 1]] + [[2, 2]] * (stages - 1)
        super().__init__(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                         kernel_size=[[3, 3]] * stages, strides=strides, upsample_kernel_size=strides[1:],
                         filters=filters, norm_name=(norm, {"affine": True}),
                         act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}), res_block=False,
                         deep_supervision=bool(deep_supervision), deep_supr_num=2 if deep_supervision else 1)
        self.input_size = int(input_size)
        self.window_mm = None if window_mm is None else float(window_mm)
        self.mirror_axes = tuple(int(a) for a in mirror_axes)
        # DynUNet's ``skip_layers`` re-references the encoder/decoder blocks; keep it out of the module
        # tree so that the state dict has each tensor once (safetensors refuses shared tensors).
        object.__setattr__(self, "skip_layers", self._modules.pop("skip_layers"))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load weights, ignoring the ``skip_layers.*`` aliases of checkpoints that still hold them."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("skip_layers.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, H, W)``; in training mode with deep supervision ``(B, 3, 2, H, W)``."""
        x = zscore(x)
        if self.training or not self.mirror_axes:
            return super().forward(x)
        return mirrored_mean(super().forward, x, self.mirror_axes)


def fused_for_inference(net: nn.Module, channels_last: bool = False) -> nn.Module:
    """An inference copy of a network with its batch norms folded into the convolutions
    (:func:`~VesselReconLib.batchnorm_folding.fold_batchnorms`: timm's and MONAI's conv/norm attribute pairs)
    and, with ``channels_last``, channels-last weights (faster small convolutions on a CPU)."""
    from ..batchnorm_folding import fold_batchnorms

    fused = fold_batchnorms(net, CONV_NORM_PAIRS)
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


CONV_NORM_PAIRS = (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3"),
                   ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))     # MONAI, timm


PRESETS = {**QUALITY_PRESETS, **FAZ_PRESETS}


def build_model(preset: str, **config) -> nn.Module:
    """Build an untrained quality classifier or FAZ U-Net by preset name.

    :param preset: a key of :data:`QUALITY_PRESETS` or :data:`FAZ_PRESETS`.
    :param config: keyword overrides of the preset (e.g. ``input_size``).
    """
    if preset in QUALITY_PRESETS:
        return QualityClassifier(**{**QUALITY_PRESETS[preset], **config})
    if preset in FAZ_PRESETS:
        return FAZUNet(**{**FAZ_PRESETS[preset], **config})
    raise CheckpointError(f"Unknown COIPS preset {preset!r}; choose one of {', '.join(PRESETS)}.")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

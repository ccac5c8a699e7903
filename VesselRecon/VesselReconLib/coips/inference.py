"""The network steps shared by the single-image and the batch pipeline (torch, any device).

Images enter as ``(B, 1, S, S)`` float tensors in ``[0, 1]`` at the *work size* (the larger of the
two networks' input sizes, see :func:`work_size`); each network resizes to its own input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import GRADES
from .faz import faz_metrics, largest_component
from ..enface_io import to_work_image


def work_size(quality_net, faz_net=None) -> int:
    """Pixel size images are decoded to: the larger network input size."""
    sizes = [quality_net.input_size] + ([faz_net.input_size] if faz_net is not None else [])
    return int(max(sizes))


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``(B, C, H, W)`` batch (antialiased when shrinking)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def grade(quality_net, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, 3)`` (float32) of ungradable / gradable / outstanding."""
    logits = quality_net(resize(x, quality_net.input_size))
    return torch.softmax(logits.float(), dim=1)


def faz_masks(faz_net, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Boolean FAZ masks ``(B, H, W)``: logits upsampled to ``out_size``, then argmax."""
    logits = faz_net(resize(x, faz_net.input_size)).float()
    logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits[:, 1] > logits[:, 0]


def thumbnails(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size, size)`` uint8 thumbnails of the work images."""
    return (resize(x.float(), size)[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass
class Assessment:
    """One image's result: grade, probabilities and, when segmented, the FAZ mask and metrics."""

    grade: str
    probabilities: dict[str, float]
    segmented: bool
    forced: bool = False
    mask: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def gradable(self) -> bool:
        return self.grade != GRADES[0]


def assess(pixels: np.ndarray, field_of_view_mm: float, quality_net, faz_net, device: torch.device,
           force_segmentation: bool = False) -> Assessment:
    """Grade one normalised image and, when gradable (or forced), segment and measure its FAZ.

    :param pixels: ``(H, W)`` float image in ``[0, 1]`` (see :func:`VesselReconLib.enface_io.normalise`).
    :param field_of_view_mm: scan width in mm.
    :param force_segmentation: segment even an ungradable image.
    """
    from ..device import inference

    size = work_size(quality_net, faz_net)
    work = torch.from_numpy(to_work_image(pixels, size)).to(device)[None, None].float() / 255.0
    with inference(device):
        probabilities = grade(quality_net, work)[0].cpu().numpy()
    label = GRADES[int(probabilities.argmax())]
    result = Assessment(label, {g: float(p) for g, p in zip(GRADES, probabilities)}, segmented=False)
    if label == GRADES[0] and not force_segmentation:
        return result
    with inference(device):
        mask = faz_masks(faz_net, work, pixels.shape)[0].cpu().numpy()
    result.mask = largest_component(mask)
    result.segmented, result.forced = True, label == GRADES[0]
    result.metrics = faz_metrics(result.mask, field_of_view_mm)
    return result

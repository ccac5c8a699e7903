"""The network steps shared by the single-image and the batch pipeline (torch, any device).

The classifier sees the whole image at its input size. The FAZ U-Net sees its *window*: a square of
``window_mm`` around the image centre (the fovea), cut from the decoded pixels and resampled once to
its input size (:func:`faz_window`); its logits are resampled back onto the window's pixels and pasted
into a mask of the image's size (:func:`paste_masks`). ``window_mm=None`` means the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import GRADES
from .faz import faz_flags, faz_metrics, select_faz
from ..enface_io import to_work_image


def work_size(quality_net, faz_net=None) -> int:
    """Pixel size images are decoded to for grading (and thumbnails): the classifier's input size."""
    return int(quality_net.input_size)


def window_box(height: int, width: int, field_of_view_mm: float | None, window_mm: float | None) -> tuple[int, int, int]:
    """``(top, left, side)`` of the FAZ window: ``window_mm`` square around the image centre, at most the
    image's shorter side (the whole image when ``window_mm`` or the field is unknown)."""
    shortest = min(height, width)
    side = shortest
    if window_mm and field_of_view_mm:
        side = int(min(shortest, max(16, round(window_mm / field_of_view_mm * width))))
    return (height - side) // 2, (width - side) // 2, side


def faz_window(pixels: np.ndarray, field_of_view_mm: float | None, faz_net) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The FAZ U-Net's input (uint8, ``input_size`` square) and its window box in the image."""
    top, left, side = window_box(*pixels.shape, field_of_view_mm, getattr(faz_net, "window_mm", None))
    return to_work_image(pixels[top:top + side, left:left + side], faz_net.input_size), (top, left, side)


def _box_margins(logits: torch.Tensor, boxes):
    """Each window's margin (FAZ minus background logit) resampled onto its box: ``(box, (side, side))``."""
    # bilinear resampling is linear, so resampling the margin and taking its sign is the argmax of the
    # resampled logits, at half the cost
    margins = (logits[:, 1:2].float() - logits[:, 0:1].float())
    for index, box in enumerate(boxes):
        side = int(box[2])
        yield box, F.interpolate(margins[index:index + 1], size=(side, side), mode="bilinear",
                                 align_corners=False)[0, 0]


def paste_masks(logits: torch.Tensor, boxes, shapes) -> list[np.ndarray]:
    """Full-size boolean masks from window logits ``(B, 2, s, s)``: resampled onto each box, argmax."""
    masks = []
    for ((top, left, side), window), (height, width) in zip(_box_margins(logits, boxes), shapes):
        mask = np.zeros((int(height), int(width)), bool)
        mask[top:top + side, left:left + side] = (window > 0).cpu().numpy()
        masks.append(mask)
    return masks


def paste_margins(logits: torch.Tensor, boxes, shapes) -> list[np.ndarray]:
    """Full-size float32 margin maps (FAZ minus background logit; ``-inf`` outside the window): the
    maps whose sign :func:`paste_masks` takes."""
    maps = []
    for ((top, left, side), window), (height, width) in zip(_box_margins(logits, boxes), shapes):
        full = np.full((int(height), int(width)), -np.inf, np.float32)
        full[top:top + side, left:left + side] = window.cpu().numpy()
        maps.append(full)
    return maps


def faz_logits(faz_net, windows: torch.Tensor) -> torch.Tensor:
    """Logits of ``(B, 1, s, s)`` window batches in ``[0, 1]`` (one forward pass per batch)."""
    return faz_net(resize(windows, faz_net.input_size)).float()


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
    flags: list[str] = field(default_factory=list)

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
    from ..device import inference, one_thread

    size = work_size(quality_net, faz_net)
    work = torch.from_numpy(to_work_image(pixels, size)).to(device)[None, None].float() / 255.0
    with inference(device), one_thread(device):   # one image: small operators (see segment_faz)
        probabilities = grade(quality_net, work)[0].cpu().numpy()
    label = GRADES[int(probabilities.argmax())]
    result = Assessment(label, {g: float(p) for g, p in zip(GRADES, probabilities)}, segmented=False)
    if label == GRADES[0] and not force_segmentation:
        return result
    result.mask = segment_faz(faz_net, pixels, field_of_view_mm, device)
    result.segmented, result.forced = True, label == GRADES[0]
    result.metrics = faz_metrics(result.mask, field_of_view_mm)
    result.flags = faz_flags(result.metrics)
    return result


def segment_faz(faz_net, pixels: np.ndarray, field_of_view_mm: float, device: torch.device | str = "cpu") -> np.ndarray:
    """The FAZ of one normalised image: U-Net on its window, then :func:`select_faz` (central component).
    One image's small operators run on one torch thread (``device.one_thread``; round 7c, README)."""
    from ..device import inference, one_thread

    device = torch.device(device)
    window, box = faz_window(pixels, field_of_view_mm, faz_net)
    with inference(device), one_thread(device):
        logits = faz_logits(faz_net, torch.from_numpy(window).to(device)[None, None].float() / 255.0)
        mask = paste_masks(logits, [box], [pixels.shape])[0]
    return select_faz(mask, field_of_view_mm)

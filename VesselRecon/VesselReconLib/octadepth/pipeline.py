"""Image -> vessel map + depth map (network) -> 3D centreline network and depth-coloured tubes.

Arrays in, arrays and meshes out; no MRML here (the Logic places the results in the scene).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..device import inference, mirrored_mean, resolve_device, run_with_fallback, scan_windows
from ..errors import InputError, check_image, squeeze_to_2d
from ..progress import as_reporter
from . import reconstruction

MULTIPLE = 16
WINDOW = 512
"""Images larger than ``2 * WINDOW`` on a side are predicted in overlapping windows."""
OVERLAP = 0.25
"""Overlap of those windows (Gaussian blending)."""
MIN_SIZE = 64
FLIP_AVERAGE = True
"""Average the network's maps over the image and its three flips (:func:`flip_mean`). On
ROSSA ``val`` this raised the shipped model's vessel Dice by ~0.009; a network with
``flip_average = False`` set on it runs once."""
FLIP_AXES = (-2, -1)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Scale an angiogram to 0..1 by its 0.5th and 99.5th percentiles (float32)."""
    image = np.asarray(image, np.float32)
    low, high = np.percentile(image, (0.5, 99.5))
    if high <= low:
        low, high = float(image.min()), float(image.max())
    return np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


def validate_image(image: np.ndarray, name: str = "The en face image") -> np.ndarray:
    """A 2D float32 image, or :class:`InputError` (wrong dimensions, empty, constant, NaN, too small)."""
    if image is None:
        raise InputError(f"{name} is missing: select or load an en face OCTA image first.")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] > 1 and array.shape[-1] not in (3, 4):
        raise InputError(f"{name} is a 3D volume {array.shape}; OCTADepth needs one en face slice "
                         "(a single-slice volume or a 2D image). Export the en face projection first.")
    array = squeeze_to_2d(array, name)
    return check_image(array, name, 2, min_size=MIN_SIZE)


def _pad(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    height, width = tensor.shape[-2:]
    pad_h, pad_w = (-height) % MULTIPLE, (-width) % MULTIPLE
    if pad_h or pad_w:
        tensor = F.pad(tensor, (0, pad_w, 0, pad_h), mode="reflect")
    return tensor, (height, width)


def flip_mean(net: torch.nn.Module, x: torch.Tensor, axes=FLIP_AXES) -> torch.Tensor:
    """:func:`..device.mirrored_mean` of ``net`` under inference: on a multi-threaded CPU its passes run side
    by side (2 cores: two one-thread passes). One 2-thread pass of the ``lite`` net spends most of its time
    in OpenMP barriers when another process holds a core (README, round 7c)."""
    with inference(x.device):
        return mirrored_mean(net, x, axes)


def predict(net: torch.nn.Module, image: np.ndarray, device: str | torch.device = "cpu",
            normalized: bool = False, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Vessel probability and relative depth (both ``(H, W)`` float32 in 0..1) for one image.

    The maps are averaged over the image's flips (:data:`FLIP_AVERAGE`; off for a network with
    ``flip_average = False``). Images larger than ``2 * WINDOW`` pixels on a side run through MONAI's
    sliding-window inferer, reporting to ``progress`` (and checking its cancel) after every batch of
    windows; on GPU out-of-memory the batch shrinks, then the CPU takes over.
    """
    array = image if normalized else normalize_image(image)
    device = resolve_device(device)
    averaged = getattr(net, "flip_average", FLIP_AVERAGE)
    reporter = as_reporter(progress)

    def run(dev: torch.device, batch: int) -> np.ndarray:
        net.to(dev)
        model = (lambda x: flip_mean(net, x)) if averaged else net
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None].to(dev)
        padded, (height, width) = _pad(tensor)
        with inference(dev):
            if max(padded.shape[-2:]) > 2 * WINDOW:
                from monai.inferers import sliding_window_inference

                counted = _reporting(model, _window_batches(padded.shape[-2:], batch), reporter)
                out = sliding_window_inference(padded, (WINDOW, WINDOW), batch, counted, overlap=OVERLAP,
                                               mode="gaussian")
            else:
                out = model(padded)
        return out[0, :, :height, :width].float().cpu().numpy()

    out = run_with_fallback(run, device, 4)
    return out[0].astype(np.float32), out[1].astype(np.float32)


def _window_batches(shape, batch: int) -> int:
    """How many calls of ``batch`` windows MONAI's sliding-window inferer makes on an image of ``shape``."""
    return -(-len(scan_windows(tuple(shape), (WINDOW, WINDOW), OVERLAP)) // batch)


def _reporting(model, calls: int, reporter):
    """``model`` that reports ``done/calls`` of the windows (and checks for cancel) after each call."""
    step = reporter.steps(calls, "predicting window batch")

    def call(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        step()
        return out

    return call


@dataclass
class OCTADepthResult:
    """Everything the pipeline computes for one image."""

    vessel_probability: np.ndarray
    vessel_mask: np.ndarray
    depth: np.ndarray
    network: reconstruction.VesselNetwork3D
    tubes: object
    timings: dict = field(default_factory=dict)

    @property
    def depth_mm(self) -> np.ndarray:
        return self.depth * self.network.depth_range_mm


def run_pipeline(image: np.ndarray, pixel_mm: float | tuple[float, float], net: torch.nn.Module,
                 device: str = "cpu", depth_range_mm: float = reconstruction.DEFAULT_DEPTH_RANGE_MM,
                 threshold: float = 0.5, ijk_to_ras: np.ndarray | None = None, min_segment_px: int = 2,
                 progress=None, cancel=None) -> OCTADepthResult:
    """Run the network, threshold the vessel map and build the 3D network and its tubes.

    :param image: ``(H, W)`` en face angiogram (any intensity range).
    :param pixel_mm: pixel size in mm (number, or (row, column)).
    :param net: an OCTADepth network (or the plain U-Net ablation), in eval mode.
    :param depth_range_mm: physical depth of relative depth 1.
    :param threshold: vessel probability threshold.
    :param ijk_to_ras: places the tube mesh (image frame when omitted).
    :param min_segment_px: shortest skeleton segment kept (pixels, at least 2).
    """
    reporter = as_reporter(progress, cancel)
    image = validate_image(image)
    timings = {}
    start = time.perf_counter()
    reporter(0.0, "predicting vessel and depth maps")
    probability, depth = predict(net, image, device, progress=reporter.sub(0.0, 0.4))
    timings["network_s"] = time.perf_counter() - start
    mask = probability > threshold
    network = reconstruction.reconstruct(mask, depth, pixel_mm, depth_range_mm, min_points=max(2, min_segment_px),
                                         progress=reporter.sub(0.4, 0.85))
    reporter(0.85, "sweeping tubes")
    tubes = reconstruction.tube_mesh(network, ijk_to_ras)
    timings["total_s"] = time.perf_counter() - start
    timings["reconstruction_s"] = timings["total_s"] - timings["network_s"]
    reporter(1.0, "done")
    return OCTADepthResult(probability, mask, depth, network, tubes, timings)

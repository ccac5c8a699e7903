"""``vesselrecon bench vcnet``: speed and memory of VC-Net vs a plain MONAI 3D U-Net (one JSON line).

Measured in one run on the same 448 x 448 x 128 phantom volume (slices first: 128 x 448 x 448):
- ``phantom_s``: rendering the full-size MRA phantom (target < 10 s on 2 cores);
- per device and preset: the network alone over the whole volume in patches (non-overlapping,
  MONAI sliding window, bf16 autocast on CUDA) for VC-Net and for the plain 3D U-Net of the same
  size (``paper``: MONAI UNet 32..512, 2 residual units, 19.2 M parameters), their ratio and peak
  GPU memory; and the whole pipeline (normalise, windows, threshold, measurements).
On CPU the ``paper`` preset is timed on a 16 x 128 x 128 patch batch only (the full volume would take
minutes); the ``lite`` preset runs on the whole volume (target <= 60 s on 2 cores).
"""

from __future__ import annotations

import json
import platform
import time

import numpy as np
import torch

from .. import device as devices
from ..phantoms.mra import FULL_SHAPE, render_mra
from .inference import predict_probability, segment
from .network import build_model, count_parameters, plain_unet3d


class PlainUNet(torch.nn.Module):
    """The plain 3D U-Net wrapped to VC-Net's interface (``{"prob": ...}``, ``patch``)."""

    def __init__(self, preset: str):
        super().__init__()
        self.net = plain_unet3d(preset)
        self.patch = build_model(preset).patch

    def forward(self, x):
        return {"prob": torch.sigmoid(self.net(x))}


def timed(fn, device: torch.device, repeats: int = 3) -> tuple[float, float | None]:
    """Fastest of ``repeats`` timed calls of ``fn()`` after one warm-up (the minimum is the least
    disturbed by other processes on a shared machine), and peak CUDA memory (MB)."""
    fn()
    devices.synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return devices.time_call(fn, device, repeats, warmup=0), devices.peak_memory_mb(device)


def bench_volume(net, volume: np.ndarray, device: torch.device, batch: int, repeats: int) -> dict:
    net = net.to(device).eval()
    seconds, peak = timed(lambda: predict_probability(net, volume, device, 0.0, batch), device, repeats)
    return {"s": round(seconds, 4), "peak_mb": None if peak is None else round(peak, 1)}


def bench_patch(net, device: torch.device, batch: int, repeats: int) -> dict:
    net = net.to(device).eval()
    x = torch.rand(batch, 1, *net.patch, device=device)

    def call():
        with devices.inference(device):
            net(x)

    seconds, peak = timed(call, device, repeats)
    return {"s": round(seconds, 4), "peak_mb": None if peak is None else round(peak, 1), "batch": batch}


def run_bench(devices_to_run: list[str], repeats: int = 3, cpu_full_paper: bool = False, batch: int | None = None) -> dict:
    start = time.perf_counter()
    phantom = render_mra("mra", FULL_SHAPE, seed=0)
    report = {"volume_kji": list(FULL_SHAPE), "phantom_s": round(time.perf_counter() - start, 2),
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "params": {"vcnet_paper": count_parameters(build_model("paper")),
                         "plain_unet3d_paper": count_parameters(plain_unet3d("paper")),
                         "vcnet_lite": count_parameters(build_model("lite"))}}
    from .data import normalize

    volume = normalize(phantom.image)
    for name in devices_to_run:
        device = devices.resolve_device(name)
        entry = {}
        full_volume = device.type == "cuda" or cpu_full_paper
        for preset in ("paper", "lite"):
            vc, plain = build_model(preset), PlainUNet(preset)
            if preset == "paper" and not full_volume:
                size = batch or 4
                vc_t, plain_t = bench_patch(vc, device, size, repeats), bench_patch(plain, device, size, repeats)
                scope = f"patch batch {size}x16x128x128"
            else:
                size = batch or (16 if device.type == "cuda" else 2)
                vc_t, plain_t = (bench_volume(vc, volume, device, size, repeats),
                                 bench_volume(plain, volume, device, size, repeats))
                scope = "whole volume"
            entry[preset] = {"scope": scope, "vcnet": vc_t, "plain_unet3d": plain_t,
                             "ratio": round(vc_t["s"] / max(plain_t["s"], 1e-9), 3)}
        lite = build_model("lite").eval()
        try:
            from .. import registry

            lite, _ = registry.load_model("vcnet", "lite", str(device))
            weights = "shipped"
        except Exception:
            weights = "untrained"
        results = []
        seconds, _ = timed(lambda: results.append(segment(phantom.image, phantom.spacing, lite, device=device)),
                           device, repeats)
        entry["pipeline_lite"] = {"s": round(seconds, 3), "weights": weights,
                                  "vessel_volume_mm3": round(results[-1].measurements["vessel_volume_mm3"], 1)}
        if device.type == "cuda":
            entry["gpu"] = torch.cuda.get_device_name(device)
            entry["dtype"] = str(devices.autocast_dtype(device))
        report[device.type] = entry
    return report


def add_bench_arguments(parser) -> None:
    parser.add_argument("--device", nargs="*", default=None, help="devices (default: cpu, and cuda when present)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, help="patches per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (2 = the target machine)")
    parser.add_argument("--cpu-full-paper", action="store_true", help="also run the paper preset on the whole volume on CPU")


def bench(args) -> int:
    torch.set_num_threads(args.threads)
    chosen = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(json.dumps(run_bench(chosen, args.repeats, args.cpu_full_paper, args.batch)))
    return 0

"""``vesselrecon bench octadepth``: image -> tube model and network-only timings against the plain U-Net.

Targets: 512x512 image to tube model <= 2 s on a 2-core CPU and <= 50 ms on an H100 (model loading
excluded); the network no slower than 1.5x the plain U-Net of the same size. Times are the best of
``repeats`` runs after a warm-up, so other processes on a shared machine disturb them least.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import registry
from ..device import inference, interleaved, peak_memory_mb, time_call
from . import network, pipeline

CPU_TARGET_S = 2.0
CUDA_TARGET_S = 0.05
RATIO_TARGET = 1.5


def _load(preset: str):
    """Shipped weights when present (realistic masks for the reconstruction), else an untrained net."""
    try:
        return registry.load_model("octadepth", preset)[0], True
    except Exception:  # timing does not depend on the weights
        return network.build_model(preset).eval(), False


def _cpu_time_ratio(nets: dict, size: int, repeats: int) -> float:
    """Ours / plain U-Net in process CPU seconds on one thread (best of ``repeats``, the networks
    interleaved): insensitive to other processes' load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.rand(1, 1, size, size)
    for net in nets.values():
        net.cpu()
    with torch.inference_mode():
        times = interleaved({name: lambda net=net: net(x) for name, net in nets.items()}, torch.device("cpu"), repeats)
    torch.set_num_threads(threads)
    return times["ours"]["cpu_s"] / times["plain"]["cpu_s"]


def _network_times(nets: dict, size: int, device: torch.device, repeats: int) -> dict:
    """Best-of-``repeats`` forward times, the networks interleaved so both see the same load."""
    x = torch.rand(1, 1, size, size, device=device)
    forwards = {}
    for name, net in nets.items():
        net.to(device)

        def forward(net=net):
            with inference(device):
                net(x)

        forwards[name] = forward
    return {name: timing["s"] for name, timing in interleaved(forwards, device, repeats).items()}


def _measure(device: torch.device, image: np.ndarray, pixel_mm: float, nets: dict, repeats: int) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net_times = _network_times(nets, image.shape[0], device, repeats)
    ours, plain = net_times["ours"], net_times["plain"]
    timings = []

    def whole():
        timings.append(pipeline.run_pipeline(image, pixel_mm, nets["ours"], str(device)).timings)

    total = time_call(whole, device, repeats)  # best of repeats after a warm-up
    target = CUDA_TARGET_S if device.type == "cuda" else CPU_TARGET_S
    return {"pipeline_ms": round(1000 * total, 1),
            "reconstruction_ms": round(1000 * min(t["reconstruction_s"] for t in timings), 1),
            "network_ms": round(1000 * ours, 2), "baseline_network_ms": round(1000 * plain, 2),
            "network_ratio_vs_unet": round(ours / plain, 3), "ratio_target": RATIO_TARGET,
            "pipeline_target_ms": 1000 * target, "meets_pipeline_target": total <= target,
            "meets_ratio_target": ours / plain <= RATIO_TARGET, "peak_memory_mb": peak_memory_mb(device)}


def run_bench(size: int = 512, repeats: int = 5, model: str = "lite", threads: int = 2) -> dict:
    """Time both networks and the whole pipeline on the CPU (``threads`` threads) and CUDA if present."""
    from ..phantoms.octa import render_octa

    torch.set_num_threads(threads)
    case = render_octa(2024, size, 6.0 if size > 400 else 3.0)
    ours, trained = _load(model)
    plain, plain_trained = _load(f"unet-{model}")
    nets = {"ours": ours, "plain": plain}
    result = {"method": "octadepth", "size": size, "model": model, "trained_weights": trained,
              "params_mb": round(network.parameter_megabytes(ours), 3),
              "baseline_params_mb": round(network.parameter_megabytes(plain), 3), "cpu_threads": threads,
              "cpu": _measure(torch.device("cpu"), case.image, case.pixel_mm, nets, repeats)}
    result["cpu"]["network_cpu_time_ratio_1_thread"] = round(_cpu_time_ratio(nets, size, repeats), 3)
    if torch.cuda.is_available():
        result["cuda_device"] = torch.cuda.get_device_name(0)
        result["cuda"] = _measure(torch.device("cuda"), case.image, case.pixel_mm, nets, repeats)
    return result

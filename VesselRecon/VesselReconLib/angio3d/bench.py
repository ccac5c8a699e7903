"""``vesselrecon bench angio3d``: one SOI end to end (two 512x512 views) and the networks alone, against a
plain U-Net baseline of similar size on the same crops; one JSON line."""

from __future__ import annotations

import json

import numpy as np
import torch

from ..device import inference, interleaved, resolve_device


def plain_unet(net) -> torch.nn.Module:
    """A plain MONAI U-Net with about as many parameters as our segmenter + SR networks."""
    from monai.networks.nets import UNet

    target = sum(p.numel() for p in net.parameters())
    width = 4
    while True:
        channels = tuple(width * 2 ** k for k in range(4))
        baseline = UNet(2, 1, 1, channels=channels, strides=(2, 2, 2), num_res_units=1)
        if sum(p.numel() for p in baseline.parameters()) >= target or width > 256:
            return baseline
        width += 2


def load_net(model: str, preset: str, device: torch.device):
    from .. import registry
    from ..errors import CheckpointError
    from .network import build_model

    try:
        name = f"angio3d-{model}" if model in ("lite", "paper") else model
        return registry.load_model("angio3d", name, str(device))[0], name
    except CheckpointError:
        return build_model(preset).to(device).eval(), f"untrained {preset}"


def run_bench(device_name: str = "auto", model: str = "lite", preset: str = "lite", repeats: int = 5,
              seed: int = 0) -> dict:
    from ..phantoms.xray import make_case
    from .pipeline import reconstruct

    torch.manual_seed(seed)
    device = resolve_device(device_name)
    net, source = load_net(model, preset, device)
    case = make_case(seed)
    images = [v["image"].astype(np.float32) for v in case["views"]]
    points = [np.array(p[:1]) for p in case["soi_points"]]          # one SOI (main branch)
    size = net.crop_size
    vertices = 6000

    stages = {}

    def pipeline():
        stages.update(reconstruct(images, case["geometries"], points, net=net, device=device).timings)

    from .segmentation import STRIP_HEIGHT, strip_width

    width = strip_width(np.concatenate([np.array(p) for p in points]))
    crops = torch.randn(2, 1, STRIP_HEIGHT, width, device=device)      # native-scale strips of both views
    sr_images = torch.randn(1, 3, size, size, device=device)
    grid = torch.rand(1, vertices, 2, device=device) * 2 - 1
    coords = torch.rand(1, vertices, 3, device=device)

    from ..device import one_thread
    from .pipeline import view_probabilities
    from .segmentation import channels_last

    def network():                     # as the pipeline runs them (views side by side, SR on one thread)
        view_probabilities(net, "net", crops)
        with inference(device, allow_half=False), one_thread(device):
            images = channels_last(net.encoder, sr_images)
            net(images, images, grid, grid, coords)

    baseline = plain_unet(net).to(device).eval()
    two_crops = torch.randn(2, 1, STRIP_HEIGHT, width, device=device)   # the same strips ...
    sr_pair = torch.randn(2, 1, size, size, device=device)              # ... and the SR encoder's crops

    def plain():                       # as it comes (channels-last made this one slower, 0.084 vs 0.074 CPU-s)
        with inference(device, allow_half=False):
            baseline(two_crops)
            baseline(sr_pair)

    times = interleaved({"pipeline": pipeline, "network": network, "baseline": plain}, device, repeats, np.median)
    peaks = [t["peak_mb"] for t in times.values() if t["peak_mb"] is not None]
    result = {"method": "angio3d", "device": str(device), "model": source, "preset": net.config["preset"],
              "input": "two 512x512 views, one SOI", "crop": size, "strip": [STRIP_HEIGHT, width],
              "timing": f"median of {repeats}, the three interleaved; wall and CPU seconds of this process",
              "pipeline_s": times["pipeline"]["s"], "network_s": times["network"]["s"],
              "baseline_s": times["baseline"]["s"],
              "pipeline_cpu_s": times["pipeline"]["cpu_s"], "baseline_cpu_s": times["baseline"]["cpu_s"],
              "threads": torch.get_num_threads(),
              "params": int(sum(p.numel() for p in net.parameters())),
              "baseline_params": int(sum(p.numel() for p in baseline.parameters()))}
    result["network_vs_baseline"] = round(result["network_s"] / max(result["baseline_s"], 1e-9), 3)
    result["pipeline_vs_baseline"] = round(result["pipeline_s"] / max(result["baseline_s"], 1e-9), 3)
    result["pipeline_cpu_vs_baseline"] = round(result["pipeline_cpu_s"] / max(result["baseline_cpu_s"], 1e-9), 3)
    result["stages_s"] = {k: round(float(v), 4) for k, v in stages.items()}
    result["peak_memory_mb"] = max(peaks) if peaks else None
    if result["peak_memory_mb"] is None:
        import resource

        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}


def print_bench(**kwargs) -> dict:
    result = run_bench(**kwargs)
    print(json.dumps(result))
    return result

"""``vesselrecon bench vcnet``: speed and memory of VC-Net vs a plain MONAI 3D U-Net (one JSON line).

Measured in one run on the same 448 x 448 x 128 phantom volume (slices first: 128 x 448 x 448):
- ``phantom_s``: rendering the full-size MRA phantom;
- per device and preset, VC-Net and the plain MONAI 3D U-Net **of the same parameter count** (the
  preset's 3D stream widened until it has as many parameters as the whole VC-Net) on the same
  input, timed **interleaved** (VC-Net, U-Net, VC-Net, U-Net, ...; the fastest of ``repeats`` calls
  of each), in wall time and in CPU time of this process (less disturbed by other jobs on a shared
  machine), with their ratios and peak GPU memory. On CPU the ``paper`` preset runs on a batch of
  16 x 128 x 128 patches (the whole volume would take minutes), ``lite`` on the whole volume; on CUDA
  both run on the whole volume (bf16 autocast). Whole-volume calls on CPU run their window batches in
  worker threads (``device.map_batches``; 2 threads: two one-thread workers), for both networks;
- ``lite-fast`` (round 5; the default model since then): ``lite`` with its 2D stream on the 2x
  max-pooled MIP image and 4 instead of 8 fused 2D channels, against its own equal-parameter U-Net, on
  the whole volume like ``lite``; ``pipeline_lite_fast`` times the whole default call (the shipped
  default ``vcnet-lite-fast``), interleaved with ``pipeline_lite``;
- ``pipeline_lite``: the same call with the shipped ``lite`` weights (the default before round 5; normalise without a
  mask, head region, windows, threshold, measurements) on the whole volume. The phantom is a whole
  head with air around it, so the default call runs only the windows that reach the head minus its
  outer 8 mm (``windows_run`` of ``windows_total``); ``pipeline_lite_every_window`` times the same
  call with ``head_margin_mm=0`` (every window run), interleaved with it;
- ``load_avg``: the machine's 1-minute load average before and after, to judge how quiet it was.
"""

from __future__ import annotations

import json
import platform
import time

import numpy as np
import torch

from .. import device as devices
from ..device import interleaved, load_average
from ..phantoms.mra import FULL_SHAPE, render_mra
from .inference import DEFAULT_BATCH, predict_probability, segment
from .network import build_model, channels_last, count_parameters, plain_unet3d


class PlainUNet(torch.nn.Module):
    """The plain 3D U-Net wrapped to VC-Net's interface (``{"prob": ...}``, ``patch``).

    :param match_parameters: widened to the parameter count of the preset's whole VC-Net.
    """

    def __init__(self, preset: str, match_parameters: bool = True):
        super().__init__()
        self.net = plain_unet3d(preset, match_parameters)
        self.patch = build_model(preset).patch

    def forward(self, x):
        return {"prob": torch.sigmoid(self.net(x))}


def _volume_call(net, volume: np.ndarray, device: torch.device, batch: int):
    net = net.to(device).eval()
    return lambda: predict_probability(net, volume, device, 0.0, batch)


def _patch_call(net, device: torch.device, batch: int):
    net = net.to(device).eval()
    if device.type == "cpu":  # the same CPU layout as predict_probability gives both networks
        channels_last(net)
    x = torch.rand(batch, 1, *net.patch, device=device)

    def call():
        with devices.inference(device):
            net(x)

    return call


def compare_preset(preset: str, volume: np.ndarray, device: torch.device, full_volume: bool, batch: int | None,
                   repeats: int) -> dict:
    """VC-Net vs the equal-parameter plain 3D U-Net, interleaved on the same input."""
    vc, plain = build_model(preset).eval(), PlainUNet(preset).eval()
    if full_volume:
        size = batch or DEFAULT_BATCH.get(device.type, 2)  # the default call's batch, for both networks
        calls = {"vcnet": _volume_call(vc, volume, device, size), "plain_unet3d": _volume_call(plain, volume, device, size)}
        scope = f"whole volume, batch {size}"
    else:
        size = batch or 4
        calls = {"vcnet": _patch_call(vc, device, size), "plain_unet3d": _patch_call(plain, device, size)}
        scope = f"patch batch {size}x{'x'.join(map(str, vc.patch))}"
    result = interleaved(calls, device, repeats)
    return {"scope": scope, **result,
            "params": {"vcnet": count_parameters(vc), "plain_unet3d": count_parameters(plain.net)},
            "ratio_wall": round(result["vcnet"]["s"] / max(result["plain_unet3d"]["s"], 1e-9), 3),
            "ratio_cpu": round(result["vcnet"]["cpu_s"] / max(result["plain_unet3d"]["cpu_s"], 1e-9), 3)}


def run_bench(devices_to_run: list[str], repeats: int = 3, cpu_full_paper: bool = False, batch: int | None = None) -> dict:
    report = {"load_avg_before": load_average()}
    start = time.perf_counter()
    phantom = render_mra("mra", FULL_SHAPE, seed=0)
    report.update({"volume_kji": list(FULL_SHAPE), "phantom_s": round(time.perf_counter() - start, 2),
                   "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()})
    from .data import normalize

    volume = normalize(phantom.image)
    for name in devices_to_run:
        device = devices.resolve_device(name)
        entry = {}
        for preset in ("paper", "lite", "lite-fast"):
            full_volume = preset != "paper" or device.type == "cuda" or cpu_full_paper
            entry[preset] = compare_preset(preset, volume, device, full_volume, batch, repeats)
        lite, weights = _shipped("lite", device)
        fast, fast_weights = _shipped("lite-fast", device)
        results = {"pipeline": [], "every_window": [], "pipeline_fast": []}
        timing = interleaved({
            "pipeline": lambda: results["pipeline"].append(segment(phantom.image, phantom.spacing, lite, device=device)),
            "every_window": lambda: results["every_window"].append(
                segment(phantom.image, phantom.spacing, lite, device=device, head_margin_mm=0)),
            "pipeline_fast": lambda: results["pipeline_fast"].append(
                segment(phantom.image, phantom.spacing, fast, device=device))}, device, repeats)
        last = results["pipeline"][-1]
        entry["pipeline_lite"] = {**timing["pipeline"], "weights": weights, "mask": None,
                                  "searched_fraction": round(last.info["searched_fraction"], 3),
                                  "windows_run": last.info["windows_run"], "windows_total": last.info["windows_total"],
                                  "vessel_volume_mm3": round(last.measurements["vessel_volume_mm3"], 1)}
        fast_last = results["pipeline_fast"][-1]
        entry["pipeline_lite_fast"] = {**timing["pipeline_fast"], "weights": fast_weights, "mask": None,
                                       "windows_run": fast_last.info["windows_run"],
                                       "vessel_volume_mm3": round(fast_last.measurements["vessel_volume_mm3"], 1)}
        entry["pipeline_lite_every_window"] = {**timing["every_window"], "head_margin_mm": 0,
                                               "windows_run": results["every_window"][-1].info["windows_run"]}
        if device.type == "cuda":
            entry["gpu"] = torch.cuda.get_device_name(device)
            entry["dtype"] = str(devices.autocast_dtype(device))
        report[device.type] = entry
    report["load_avg_after"] = load_average()
    return report


def _shipped(preset: str, device: torch.device):
    """The shipped model of a preset and ``"shipped"``, else the untrained network and ``"untrained"``."""
    try:
        from .. import registry

        return registry.load_model("vcnet", preset, str(device))[0], "shipped"
    except Exception:
        return build_model(preset).eval(), "untrained"


def bench(args) -> int:
    torch.set_num_threads(args.threads)
    devices.keep_freed_memory()  # the command line's heap policy (vcnet.cli.run) for every timed call
    chosen = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(json.dumps(run_bench(chosen, args.repeats, args.cpu_full_paper, args.batch)))
    return 0

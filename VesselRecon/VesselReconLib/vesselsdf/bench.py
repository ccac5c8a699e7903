"""``vesselrecon bench vesselsdf``: input-to-mesh time and network time vs a plain 3D U-Net baseline."""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from ..device import inference, peak_memory_mb, synchronize, time_call
from ..mrml import spacing_of
from .inference import mesh_zero_level, predict_in_roi, refine_through_plane, refined_geometry
from .network import build_model, parameter_count, parse_preset
from .preprocess import canonicalise, normalise_ct


def pipeline(model, volume: np.ndarray, ijk_to_ras: np.ndarray, device: torch.device, factor: int,
             roi: np.ndarray | None = None) -> dict:
    """CT -> ROI + normalise -> network on the ROI box -> SDF interpolation -> flying edges; times (s)."""
    stamps = {"start": time.perf_counter()}
    canonical = canonicalise(volume, ijk_to_ras, roi)
    prediction = predict_in_roi(model, canonical, device, tuple(spacing_of(ijk_to_ras)))
    with inference(device):
        fine = refine_through_plane(torch.from_numpy(prediction.surface_field()).to(device), factor)
    fine = fine.float().cpu().numpy()
    synchronize(device)
    stamps["network"] = time.perf_counter()
    surface = mesh_zero_level(fine, refined_geometry(ijk_to_ras, factor), compute_normals=False)
    stamps["mesh"] = time.perf_counter()
    return {"total_s": stamps["mesh"] - stamps["start"], "mesh_s": stamps["mesh"] - stamps["network"],
            "points": surface.GetNumberOfPoints()}


def _model(preset: str, device: torch.device):
    """The shipped weights of ``preset`` when there are any (realistic surfaces), else untrained."""
    from ..errors import CheckpointError
    from ..registry import load_model

    try:
        return load_model("vesselsdf", preset, str(device))[0], "shipped"
    except CheckpointError:
        return build_model(preset).to(device).eval(), "untrained"


def mesh_time(sdf: np.ndarray, ijk_to_ras: np.ndarray, device: torch.device, factor: int, repeats: int) -> dict:
    """Interpolation + flying-edges time on a realistic field (the phantom's exact SDF)."""
    field = torch.from_numpy(sdf).to(device)
    points = []

    def call():
        fine = refine_through_plane(field, factor).cpu().numpy()
        points.append(mesh_zero_level(fine, refined_geometry(ijk_to_ras, factor), compute_normals=False)
                      .GetNumberOfPoints())
    return {"mesh_exact_sdf_s": round(time_call(call, device, repeats, reduce=np.median), 4), "mesh_exact_sdf_points": points[-1]}


def plain_unet_like(params: int, levels: int = 4) -> torch.nn.Module:
    """A plain MONAI UNet (same strides, batch norm, one residual unit) with about ``params`` parameters."""
    from monai.networks.nets import UNet

    from .network import _strides

    def make(width: int):
        return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=[width * 2 ** i for i in range(levels)],
                    strides=_strides(levels), num_res_units=1, norm="batch")

    width = min(range(2, 65), key=lambda w: abs(parameter_count(make(w)) - params))
    return make(width)


def bench_device(device: torch.device, preset: str, volume: np.ndarray, ijk_to_ras: np.ndarray, factor: int,
                 repeats: int, roi: np.ndarray | None = None) -> dict:
    """Pipeline and network-only times of ``preset`` and of a plain U-Net of equal size on ``device``."""
    model, weights = _model(preset, device)
    baseline = plain_unet_like(parameter_count(model)).to(device).eval()
    x = torch.from_numpy(normalise_ct(volume, roi))[None, None].to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    spacing = tuple(spacing_of(ijk_to_ras))

    def network(net, plain=False):
        def call():
            with inference(device):
                net(x) if plain else net(x, spacing)
        return call

    runs = [pipeline(model, volume, ijk_to_ras, device, factor, roi) for _ in range(repeats + 1)][1:]
    ours = time_call(network(model), device, repeats, reduce=np.median)
    plain = time_call(network(baseline, plain=True), device, repeats, reduce=np.median)
    return {"preset": preset, "weights": weights, "params": parameter_count(model), "baseline": "plain MONAI UNet of equal parameter count",
            "baseline_params": parameter_count(baseline),
            "pipeline_s": round(float(np.median([r["total_s"] for r in runs])), 4),
            "mesh_s": round(float(np.median([r["mesh_s"] for r in runs])), 4),
            "network_s": round(ours, 4), "baseline_network_s": round(plain, 4),
            "network_vs_baseline": round(ours / plain, 3),
            "pipeline_vs_baseline_network": round(float(np.median([r["total_s"] for r in runs])) / plain, 3),
            "mesh_points": int(runs[-1]["points"]), "peak_gpu_mb": peak_memory_mb(device)}


def bench(shape=(16, 512, 512), cpu_preset: str = "lite", cuda_preset: str = "paper", repeats: int = 3,
          seed: int = 11, factor: int | None = None) -> dict:
    """Benchmark on CPU (and CUDA when present) on a generated CT phantom of ``shape``."""
    from ..phantoms.ct import CTPhantomParams, make_ct_phantom
    from .inference import through_plane_factor

    case = make_ct_phantom(CTPhantomParams(shape=tuple(shape), seed=seed))
    factor = through_plane_factor(case.spacing, factor)
    result = {"method": "vesselsdf", "input_kji": list(shape), "spacing_mm": list(case.spacing),
              "mesh_slices": (shape[0] - 1) * factor + 1, "threads": torch.get_num_threads()}
    for name, preset in (("cpu", cpu_preset), ("cuda", cuda_preset)):
        if name == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(name)
        result[name] = {**bench_device(device, preset, case.image, case.ijk_to_ras, factor, repeats, case.organ > 0),
                        **mesh_time(case.sdf, case.ijk_to_ras, device, factor, repeats)}
    if "cuda" in result:
        result["cuda"]["device"] = torch.cuda.get_device_name(0)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result

"""``vesselrecon bench vesselsdf``: input-to-mesh time and network time vs a plain 3D U-Net baseline.

Our network and a plain MONAI U-Net of equal parameter count run on the same whole 512 x 512 x 16
volume, **interleaved** (ours, plain, ours, plain, ...) so both see the same load from other jobs;
the pipeline is interleaved with the plain U-Net likewise. Each is reported as the median wall time
and the median CPU time of this process (less disturbed by other jobs on a shared machine), with the
1-minute load average before and after.
"""

from __future__ import annotations

import resource

import numpy as np
import torch

from ..device import inference, interleaved, load_average, peak_memory_mb, time_call
from ..mrml import spacing_of
from ..pointwise import use_matmul_pointwise
from .inference import (mesh_zero_level, predict_in_roi, refine_in_box, refine_through_plane, refined_geometry,
                        roi_box)
from .network import build_model, parameter_count
from .preprocess import canonicalise, normalise_ct


def pipeline(model, volume: np.ndarray, ijk_to_ras: np.ndarray, device: torch.device, factor: int,
             roi: np.ndarray | None = None) -> dict:
    """CT -> ROI + normalise -> network on the ROI box -> SDF interpolation on the box -> flying edges
    (what :func:`.inference.reconstruct` does, without the normals); the mesh's point count."""
    canonical = canonicalise(volume, ijk_to_ras, roi)
    prediction = predict_in_roi(model, canonical, device, tuple(spacing_of(ijk_to_ras)))
    with inference(device):
        fine, matrix = refine_in_box(prediction.surface_field(), ijk_to_ras, roi_box(canonical.roi, volume.shape),
                                     factor, device, prediction.motion, prediction.gap_mm)
    surface = mesh_zero_level(fine, matrix, compute_normals=False)
    return {"points": surface.GetNumberOfPoints()}


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
    use_matmul_pointwise(baseline)   # the same 1×1 path as the loaded model (pointwise.py): a fair baseline
    x = torch.from_numpy(normalise_ct(volume, roi))[None, None].to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    spacing = tuple(spacing_of(ijk_to_ras))

    def network(net, plain=False):
        def call():
            with inference(device):
                net(x) if plain else net(x, spacing)
        return call

    load_before = load_average()
    nets = interleaved({"ours": network(model), "plain": network(baseline, plain=True)}, device, repeats, np.median)
    points = []
    runs = interleaved({"pipeline": lambda: points.append(pipeline(model, volume, ijk_to_ras, device, factor, roi)),
                        "plain": network(baseline, plain=True)}, device, repeats, np.median)
    ours, plain = nets["ours"], nets["plain"]
    return {"preset": preset, "weights": weights, "params": parameter_count(model),
            "baseline": "plain MONAI UNet of equal parameter count", "baseline_params": parameter_count(baseline),
            "timing": f"median of {repeats}, interleaved with the baseline; wall and CPU seconds of this process",
            "pipeline_s": runs["pipeline"]["s"], "pipeline_cpu_s": runs["pipeline"]["cpu_s"],
            "network_s": ours["s"], "network_cpu_s": ours["cpu_s"],
            "baseline_network_s": plain["s"], "baseline_network_cpu_s": plain["cpu_s"],
            "network_vs_baseline": round(ours["s"] / plain["s"], 3),
            "network_vs_baseline_cpu": round(ours["cpu_s"] / plain["cpu_s"], 3),
            "pipeline_vs_baseline_network": round(runs["pipeline"]["s"] / runs["plain"]["s"], 3),
            "mesh_points": int(points[-1]["points"]), "peak_gpu_mb": peak_memory_mb(device),
            "load_avg_1min": [load_before, load_average()]}


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

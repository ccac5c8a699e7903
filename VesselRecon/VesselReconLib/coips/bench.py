"""``vesselrecon bench coips``: the whole batch pipeline against the plain backbone, in one run.

All are timed interleaved (pipeline, plain backbone, the same backbone fused and channels-last, classifier,
FAZ U-Net, repeated; the fastest run of each), so that they share the machine's load; wall and CPU seconds
(the decoders' included) are reported. The classifier and the FAZ U-Net are timed as the pipeline runs
them (batch norms folded into the convolutions, channels-last); the fused plain backbone is a stricter
ceiling than the issue's plain backbone and is reported beside it.
The pipeline time covers decoding (DataLoader workers), grading, FAZ segmentation (of the images
graded gradable/outstanding with trained weights; of every image with untrained ones or
``--segment-all``, the worst case), FAZ measurement, mask/thumbnail files and the CSV/HTML report. The plain timm backbone
(3 channels, no COIPS wrapper) at the same input size and batch size is the ceiling it is compared to;
the FAZ U-Net alone is timed too. Targets: >= 1000 images/s on an H100 with the paper networks
(SE-ResNeXt-101 at 224 + nnU-Net), >= 10 images/s with the lite networks on a 2-core CPU.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TARGETS = {("cuda", "paper"): 1000.0, ("cpu", "lite"): 10.0}  # the targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(net, size: int, batch: int, device: torch.device, channels: int = 1, seconds: float = 3.0) -> float:
    """Images per second of ``net`` on random ``(batch, channels, size, size)`` inputs (inference mode)."""
    from ..device import inference

    x = torch.rand(batch, channels, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with inference(device):
        for _ in range(3):
            net(x)
        _sync(device)
        start, images = time.perf_counter(), 0
        while time.perf_counter() - start < seconds or images < 2 * batch:
            net(x)
            images += batch
        _sync(device)
    return images / (time.perf_counter() - start)


def network_pass(net, size: int, batch: int, count: int, device: torch.device, channels: int = 1,
                 channels_last: bool = False):
    """A call that runs ``net`` over ``count`` random images in batches of ``batch`` (inference mode)."""
    from ..device import inference

    x = torch.rand(batch, channels, size, size, device=device)
    if device.type == "cuda" or channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with inference(device):
            for start in range(0, count, batch):
                net(x[: min(batch, count - start)])
    return run


def interleaved_with_children(calls: dict, device: torch.device, repeats: int = 3) -> dict:
    """:func:`VesselReconLib.device.interleaved` (A, B, A, B, ...; fastest of ``repeats``), with the CPU
    seconds of finished child processes (the pipeline's decoders) added to this process's."""
    from ..device import synchronize

    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            synchronize(device)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            child_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu + child_cpu))
    return {name: {"s": round(min(t[0] for t in pairs), 4), "cpu_s": round(min(t[1] for t in pairs), 4)}
            for name, pairs in times.items()}


def cpu_threads(decode_workers: int) -> int:
    """Torch threads beside ``decode_workers`` processes: the remaining cores (at least one), since
    OpenMP threads that compete with other processes for cores spin and slow everything down."""
    return max(1, (os.cpu_count() or 1) - decode_workers)


def make_study(folder: Path, count: int, size: int, distinct: int = 12, seed: int = 7) -> Path:
    """``count`` PNG files cycling through ``distinct`` rendered phantoms (all three grades)."""
    from PIL import Image

    from ..phantoms.octa import render_octa

    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for index in range(min(distinct, count)):
        case = render_octa(seed + index, size, 3.0, quality=index % 3)
        path = folder / f"src_{index:03d}_3x3.png"
        Image.fromarray((case.image * 255).astype(np.uint8)).save(path)
        sources.append(path)
    for index in range(len(sources), count):
        shutil.copyfile(sources[index % len(sources)], folder / f"img_{index:06d}_3x3.png")
    return folder


def _networks(preset: str, device: torch.device):
    from .. import registry
    from ..errors import CheckpointError
    from .network import build_model

    if preset == "paper":
        return build_model("paper").to(device).eval(), build_model("faz-paper").to(device).eval(), "untrained"
    try:
        quality = registry.load_model("coips", "lite", str(device))[0]
        faz = registry.load_model("coips", "faz-lite", str(device))[0]
        return quality, faz, "shipped"
    except CheckpointError:
        return build_model("lite").to(device).eval(), build_model("faz-lite").to(device).eval(), "untrained"


def _plain_kwargs(quality_net) -> dict:
    """The same backbone configuration as the classifier (same size), but a plain 3-channel timm model."""
    from .network import QUALITY_PRESETS

    spec = next((p for p in QUALITY_PRESETS.values() if p["backbone"] == quality_net.backbone_name), {})
    kwargs = dict(spec.get("backbone_kwargs", {}))
    if "swin" in quality_net.backbone_name:
        kwargs["img_size"] = quality_net.input_size
    return kwargs


def _peak_memory_mb(device: torch.device) -> float:
    from ..device import peak_memory_mb

    gpu = peak_memory_mb(device)
    return round(gpu, 1) if gpu is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_bench(args) -> dict:
    """Time the pipeline and the networks; return the JSON-ready result line."""
    import timm

    from ..device import resolve_device
    from ..device import load_average
    from ..enface_io import list_images
    from .batch import run_batch
    from .config import CoipsConfig
    from .network import fused_for_inference

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cores = os.cpu_count() or 1
    preset = args.preset or ("paper" if cuda else "lite")
    count = args.count or (4000 if cuda else 200)
    batch_size = args.batch_size or (256 if cuda else 32)
    workers = args.workers if args.workers is not None else (max(1, min(8, cores // 2)) if cuda else min(2, cores))
    post = args.post_workers if args.post_workers is not None else (max(1, min(6, cores // 3)) if cuda else 0)
    torch.set_num_threads(int(args.threads) if args.threads else cpu_threads(workers))
    quality_net, faz_net, weights = _networks(preset, device)
    scratch = Path(args.out or tempfile.mkdtemp(prefix="coips-bench-"))
    study = Path(args.data) if args.data else make_study(scratch / "study", count, args.size)
    segment_all = bool(args.segment_all) or weights == "untrained"
    config = CoipsConfig(input=str(study), output=str(scratch / "report"), device=str(device), batch_size=batch_size,
                         num_workers=workers, post_workers=post, segment_ungradable=segment_all)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    warm = CoipsConfig(**{**config.to_dict(), "output": str(scratch / "warmup")})
    warm_study = scratch / "warm"
    warm_study.mkdir(parents=True, exist_ok=True)
    for path in sorted(study.iterdir())[: 2 * batch_size]:
        shutil.copyfile(path, warm_study / path.name)
    run_batch(CoipsConfig(**{**warm.to_dict(), "input": str(warm_study)}), quality_net, faz_net)
    plain = timm.create_model(quality_net.backbone_name, pretrained=False, num_classes=3, **_plain_kwargs(quality_net))
    plain = plain.to(device).eval()
    if cuda:
        plain = plain.to(memory_format=torch.channels_last)
    runs: list = []

    def pipeline_once():
        runs.append(run_batch(config, quality_net, faz_net))

    count_images = len(list_images(study, False))
    plain_fast = plain if cuda else fused_for_inference(plain, channels_last=True)
    calls = {"pipeline": pipeline_once,
             "plain": network_pass(plain, quality_net.input_size, batch_size, count_images, device, channels=3),
             "plain_fused": network_pass(plain_fast, quality_net.input_size, batch_size, count_images, device,
                                         channels=3, channels_last=True),
             "classifier": network_pass(fused_for_inference(quality_net, channels_last=True), quality_net.input_size,
                                        batch_size, count_images, device, channels_last=True),
             "faz": network_pass(fused_for_inference(faz_net, channels_last=True), faz_net.input_size, batch_size,
                                 count_images, device, channels_last=True)}   # as the pipeline runs it
    times = interleaved_with_children(calls, device, repeats=int(getattr(args, "repeats", 3) or 3))
    result = runs[-1]
    pipeline = len(result.rows) / times["pipeline"]["s"]
    peak = _peak_memory_mb(device)
    ours, backbone, faz = (count_images / times[name]["s"] for name in ("classifier", "plain", "faz"))
    target = TARGETS.get((device.type, preset))
    line = {
        "bench": "coips", "device": torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()}",
        "preset": preset, "weights": weights, "quality_backbone": quality_net.backbone_name,
        "quality_input": quality_net.input_size, "faz_input": faz_net.input_size, "images": len(result.rows),
        "image_size": args.size, "batch_size": batch_size, "num_workers": workers, "post_workers": post,
        "faz_segmented_fraction": round(float(np.mean([r["faz_segmented"] for r in result.rows])), 3),
        "pipeline_images_per_s": round(pipeline, 1), "pipeline_seconds": round(times["pipeline"]["s"], 2),
        "timing": "interleaved: pipeline, plain backbone (as is and fused channels-last), classifier and FAZ U-Net "
                  "(fused channels-last, as the pipeline runs them), each over the study's images, "
                  f"repeated {len(runs) - 1} times after a warm-up; fastest run of each",
        "pipeline_cpu_seconds": times["pipeline"]["cpu_s"], "plain_backbone_cpu_seconds": times["plain"]["cpu_s"],
        "ratio_pipeline_vs_plain_backbone_cpu": round(times["plain"]["cpu_s"] / times["pipeline"]["cpu_s"], 3),
        "load_average": load_average(),
        "classifier_images_per_s": round(ours, 1), "plain_backbone_images_per_s": round(backbone, 1),
        "faz_unet_images_per_s": round(faz, 1),
        # the same plain backbone run as the pipeline runs its networks (batch norms folded, channels-last):
        # a stricter ceiling than the plain backbone, reported beside it
        "plain_backbone_fused_images_per_s": round(count_images / times["plain_fused"]["s"], 1),
        "ratio_pipeline_vs_plain_backbone_fused": round(pipeline / (count_images / times["plain_fused"]["s"]), 3),
        "ratio_pipeline_vs_plain_backbone_fused_cpu": round(times["plain_fused"]["cpu_s"] / times["pipeline"]["cpu_s"], 3),
        "ratio_pipeline_vs_plain_backbone": round(pipeline / backbone, 3),
        "ratio_classifier_vs_plain_backbone": round(ours / backbone, 3),
        "peak_memory_mb": peak, "target_images_per_s": target,
        "meets_target": None if target is None else pipeline >= target,
    }
    if not args.out:
        shutil.rmtree(scratch, ignore_errors=True)
    return line

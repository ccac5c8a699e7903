"""``vesselrecon train octavessel`` / ``eval octavessel`` / ``octavessel`` (segment files)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..cli import finite_json

log = logging.getLogger(__name__)
DEFAULT_ROSSA = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "rossa"


# ------------------------------------------------------------------ run


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="en face OCTA images (PNG, JPEG, BMP, TIFF 8/16-bit, DICOM); CPU")
    parser.add_argument("--out", default="out/octavessel", help="output folder for <name>_vessels.png")
    parser.add_argument("--model", default="lite", help="shipped preset or checkpoint path")
    parser.add_argument("--threshold", type=float, default=0.5, help="vessel probability threshold")


def run(args) -> int:
    """Segment every input; an unreadable file is reported on one line and skipped (exit 2 at the end).
    Images are decoded by :mod:`VesselReconLib.enface_io` (16-bit, colour and DICOM as COIPS/OCTADepth)."""
    import sys

    from .. import atomic
    from ..cli import file_error
    from ..enface_io import read_image
    from ..errors import InputError
    from ..registry import load_model

    net, _ = load_model("octavessel", args.model)
    out = atomic.check_output_folder(args.out)
    failed = 0
    for path in map(Path, args.inputs):
        try:
            pixels = read_image(path, required=False).pixels
        except InputError as exc:
            failed += 1
            print(file_error(path.name, exc), file=sys.stderr)
            continue
        _write_mask(net, pixels, args.threshold, atomic.output_folder(out) / f"{path.stem}_vessels.png", path)
    return 2 if failed else 0


def _write_mask(net, pixels: np.ndarray, threshold: float, dest: Path, source: Path) -> None:
    """Threshold the network's vessel probability, write it as a 0/255 PNG (atomically) and print one JSON line."""
    from PIL import Image

    from ..atomic import atomic_path
    from .data import normalize_image
    from .evaluate import predict_probability

    mask = predict_probability(net, normalize_image(pixels)) > threshold
    with atomic_path(dest) as temporary:
        Image.fromarray(mask.astype(np.uint8) * 255).save(temporary, format="PNG")
    print(finite_json({"input": str(source), "output": str(dest), "vessel_fraction": round(float(mask.mean()), 4)}))


# ------------------------------------------------------------------ train


def add_train_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/octavessel", help="run folder (last.pt, train.json)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=48, help="phantoms held at once (one is replaced every few steps)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this wall time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ship", action="store_true", help="write the registry entry (octavessel-lite, or "
                        "octavessel-finetune-lite with --real)")
    parser.add_argument("--rossa", default=str(DEFAULT_ROSSA), help="ROSSA folder for the held-out real metrics (--ship)")
    parser.add_argument("--real", action="append", default=None, help="fine-tune: ROSSA-style labelled folder "
                        "(image/ + label/) mixed with phantoms; repeatable")
    parser.add_argument("--val", default=None, help="fine-tune: labelled folder for model selection (best val Dice)")
    parser.add_argument("--init", default="lite", help="fine-tune: starting weights (shipped preset or checkpoint)")
    parser.add_argument("--real-fraction", type=float, default=0.5, help="fine-tune: share of real crops per batch")
    parser.add_argument("--no-randomize", action="store_true", help="ablation: phantoms without the acquisition/device "
                        "domain randomisation (ships as octavessel-norandom-lite)")


def train(args) -> int:
    import sys

    import torch

    from .train import train_phantoms

    torch.set_num_threads(args.threads)
    command = "vesselrecon " + " ".join(sys.argv[1:])
    if args.real:
        return _finetune(args, command)
    model, record = train_phantoms(args.out, steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr,
                                   seed=args.seed, pool_size=args.pool, minutes=args.minutes,
                                   randomize=not args.no_randomize)
    print(finite_json(record))
    if args.ship and args.no_randomize:
        ship(model, record, command, args.rossa, args.seed, name="octavessel-norandom-lite",
             data="phantoms only, render_octa(..., randomize=False): one fixed device-neutral appearance (ablation "
                  "of the domain randomisation); otherwise as octavessel-lite; no real image")
    elif args.ship:
        ship(model, record, command, args.rossa, args.seed)
    return 0


def _finetune(args, command: str) -> int:
    from ..errors import InputError
    from ..registry import load_model
    from .data import load_folder
    from .train import finetune

    if not args.val:
        raise InputError("Fine-tuning needs --val FOLDER for model selection.")
    real = [s for folder in args.real for s in load_folder(folder)]
    val = load_folder(args.val)
    init, _ = load_model("octavessel", args.init)
    model, record = finetune(args.out, init.state_dict(), real, val, steps=args.steps, batch=args.batch,
                             crop=args.crop, lr=args.lr, seed=args.seed, pool_size=args.pool,
                             real_fraction=args.real_fraction, minutes=args.minutes)
    print(finite_json(record))
    if args.ship:
        record["init"] = args.init
        ship(model, record, command, args.rossa, args.seed, name="octavessel-finetune-lite",
             data="phantoms (rolling pool, as octavessel-lite) + real labelled scans: " + ", ".join(args.real)
                  + f"; selected on {args.val} (best mean Dice at threshold 0.5)", trained_on_real=True)
    return 0


def ship(model, record: dict, command: str, rossa: str, seed: int, name: str = "octavessel-lite", data: str | None = None,
         trained_on_real: bool = False):
    """Measure held-out phantom and ROSSA metrics and write the registry entry ``name``."""
    from ..training import ship_model
    from .evaluate import evaluate_rows, load_split, predict_probability
    from .train import held_out_phantoms

    seg = lambda s: predict_probability(model, s.image) > 0.5  # noqa: E731
    metrics = {"phantom_dice": round(evaluate_rows(held_out_phantoms(), {"m": seg})["m"]["dice"], 4)}
    if Path(rossa).is_dir():
        for split in ("val", "test"):
            metrics[f"rossa_{split}_dice"] = round(evaluate_rows(load_split(rossa, split), {"m": seg})["m"]["dice"], 4)
    return ship_model(model, "octavessel", "lite", command=command, seed=seed, metrics=metrics, name=name,
                      data=data or "phantoms only: VesselReconLib.phantoms.octa.render_octa, rolling pool (seeds "
                           "1000001+), 320 px, field 2.5-6.5 mm, 20 % quality-degraded; no real image",
                      input_spec={"channels": 1, "kind": "en face OCTA angiogram (superficial or full-retina slab)",
                                  "intensity": "any; scaled by the 1st/99.5th percentiles",
                                  "size": "any (padded to a multiple of 16); trained on 3-6 mm fields at 320 px",
                                  "outputs": ["vessel logit (expert convention: arteriole/venule tree, no capillaries)"]},
                      extra_training={**record, "real_metrics_source": "ROSSA (nhjydywd/OCTA-FRNet dataset/ROSSA, "
                                      "commit 53e87f8, MIT)" + ("; trained on the --real folders, selected on --val, reported on test"
                                      if trained_on_real else "; evaluation only, never trained on")})


# ------------------------------------------------------------------ eval


def add_eval_arguments(parser) -> None:
    parser.add_argument("--rossa", default=str(DEFAULT_ROSSA), help="ROSSA folder (test/, val/ with image/ + label/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N images of the split")
    parser.add_argument("--model", default="lite", help="octavessel model (shipped preset or checkpoint)")
    parser.add_argument("--no-octadepth", action="store_true", help="skip the OCTADepth vessel-head row")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    parser.add_argument("--figure", default=None, help="also write a transfer figure (PNG): two real scans and "
                        "one phantom with prediction, label and errors")


def evaluate(args) -> int:
    from ..cli import json_report
    from ..errors import InputError
    from .evaluate import (
        evaluate_rows,
        format_table,
        frangi_mask,
        load_split,
        octadepth_segmenter,
        octavessel_segmenter,
        otsu_mask,
    )

    write_json = json_report(args.json)
    if not Path(args.rossa, args.split).is_dir():
        raise InputError(f"No ROSSA split at {Path(args.rossa, args.split)}; pass --rossa ../shared/datasets/rossa.")
    samples = load_split(args.rossa, args.split, args.limit)
    rows = {"octavessel-lite (phantoms only)": octavessel_segmenter(args.model)}
    optional = {"octavessel-norandom-lite (ablation: phantoms without domain randomisation)": "octavessel-norandom-lite",
                "octavessel-finetune-lite (phantoms + ROSSA train, selected on val)": "octavessel-finetune-lite"}
    for label, name in optional.items():
        try:
            rows[label] = octavessel_segmenter(name)
        except Exception as exc:  # noqa: BLE001 - optional rows
            log.info("%s not shipped: %s", name, exc)
    if not args.no_octadepth:
        od = octadepth_segmenter()
        if od is not None:
            rows["octadepth-lite vessel head (registry default)"] = od
    rows["intensity > Otsu"] = lambda s: otsu_mask(s.image)
    rows["Frangi > Otsu"] = lambda s: frangi_mask(s.image)
    results = evaluate_rows(samples, rows)
    ref = float(np.mean([s.vessel.mean() for s in samples]))
    print(f"ROSSA {args.split}: {len(samples)} images (vessel Dice at threshold 0.5)")
    print(format_table(results, ref))
    write_json(results)
    if args.figure:
        from .data import render_phantom
        from .evaluate import save_transfer_figure

        shown = samples[:2] + [render_phantom(9100, np.random.default_rng(9100))]
        print(f"Wrote {save_transfer_figure(args.figure, shown, rows['octavessel-lite (phantoms only)'])}")
    return 0


# ------------------------------------------------------------------ bench


def add_bench_arguments(parser) -> None:
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size-px", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)


def bench(args) -> int:
    """JSON line: OCTA phantom render and OCTAVessel inference, wall and CPU seconds per 320 px image,
    each with its ratio to the Frangi baseline timed interleaved on the same images."""
    import time

    import torch

    from ..phantoms.octa import render_octa
    from .data import normalize_image
    from .evaluate import frangi_mask, octavessel_segmenter

    torch.set_num_threads(args.threads)
    seg = octavessel_segmenter("lite")
    times = {"render": [], "octavessel": [], "frangi": []}

    def timed(key, fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        times[key].append((time.perf_counter() - w, time.process_time() - c))
        return out

    for i in range(args.repeats):
        field = (3.0, 6.0)[i % 2]
        case = timed("render", lambda: render_octa(500 + i, args.size_px, field))
        image = normalize_image(case.image)
        sample = type("S", (), {"image": image})()
        timed("octavessel", lambda: seg(sample))
        timed("frangi", lambda: frangi_mask(image))
    mean = {k: np.mean(v, 0) for k, v in times.items()}
    out = {"size_px": args.size_px, "threads": args.threads, "repeats": args.repeats}
    for k in ("render", "octavessel", "frangi"):
        out[f"{k}_wall_s"], out[f"{k}_cpu_s"] = round(float(mean[k][0]), 4), round(float(mean[k][1]), 4)
    for k in ("render", "octavessel"):
        out[f"{k}_vs_frangi_wall"] = round(float(mean[k][0] / mean["frangi"][0]), 3)
        out[f"{k}_vs_frangi_cpu"] = round(float(mean[k][1] / mean["frangi"][1]), 3)
    print(finite_json(out))
    return 0

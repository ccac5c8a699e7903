"""``vesselrecon octadepth`` / ``train octadepth`` / ``eval octadepth`` / ``bench octadepth`` and the demo hook."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .. import DEVICE_CHOICES
from ..cli import finite_json

log = logging.getLogger(__name__)
DEMO_SEED = 20210413


# ------------------------------------------------------------------ run


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="en face OCTA images (PNG, JPEG, BMP, TIFF or DICOM)")
    parser.add_argument("--out", default="out/octadepth", help="output folder")
    parser.add_argument("--model", default="lite", help="shipped preset (lite, unet-lite) or checkpoint path")
    parser.add_argument("--device", default="auto", help="|".join(DEVICE_CHOICES))
    parser.add_argument("--fov", "--field-mm", dest="field_mm", type=float, default=None,
                        help="scan width in mm (3 or 6); needed when neither the file's metadata nor its name "
                             "(3x3, 6mm, angio6superf) gives it: it is never guessed")
    parser.add_argument("--pixel-mm", type=float, default=None, help="pixel size in mm (overrides metadata)")
    parser.add_argument("--depth-range-mm", type=float, default=0.25, help="physical depth of relative depth 1")
    parser.add_argument("--threshold", type=float, default=0.5, help="vessel probability threshold")


def run(args) -> int:
    """Process every input; a bad file is reported on one line and skipped. Exit 2 (3 for a bad
    model) when any input failed, after all the good ones were written. A bad device or output folder
    is refused once, before any input is read; the folder is created only when an input succeeds."""
    from .. import atomic
    from ..cli import file_error
    from ..device import keep_freed_memory, resolve_device
    from ..errors import CheckpointError, InferenceError, InputError

    keep_freed_memory()  # a command-line process only: Slicer's own heap policy is left alone
    resolve_device(args.device)
    out = atomic.check_output_folder(args.out)
    failed = []
    for path in args.inputs:
        try:
            _run_one(args, Path(path), out)
        except (InputError, InferenceError) as exc:
            failed.append(exc)
            print(file_error(Path(path).name, exc), file=sys.stderr)
    if failed:
        written = "nothing was written" if len(failed) == len(args.inputs) else f"the others were written to {out}"
        print(f"{len(failed)} of {len(args.inputs)} inputs failed; {written}.", file=sys.stderr)
        return 3 if all(isinstance(e, (CheckpointError, InferenceError)) for e in failed) else 2
    return 0


def _run_one(args, path: Path, out: Path) -> None:
    """One input image -> depth map, masks, tubes, table and .mrb in ``out`` (all files or none)."""
    from .. import atomic, mrml, runtime
    from ..progress import TqdmProgress
    from .logic import OCTADepthLogic

    scene = runtime.new_scene()
    logic = OCTADepthLogic(scene)
    volume = logic.load_image(path, fieldOfViewMm=args.field_mm)
    bar = TqdmProgress(f"octadepth {path.name}")
    try:
        # --fov went into the volume's spacing at load (source "config"); process reads it from there
        result = logic.process(volume, device=args.device, model=args.model, pixelMm=args.pixel_mm,
                               depthRangeMm=args.depth_range_mm, threshold=args.threshold, progress=bar)
    finally:
        bar.close()
    with atomic.staging(out, f"octadepth-{path.stem}") as stage:   # creates the folder
        result.save_files(stage / path.stem)
        result.render(stage / f"{path.stem}_tubes.png")
        mrml.save_scene(stage / f"{path.stem}.mrb", scene)
    print(finite_json({"input": str(path), "outputs": f"{out / path.stem}.*", **result.summary()}))


# ------------------------------------------------------------------ train


def add_train_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="octa dataset folder (vesselrecon phantoms octa --out ...)")
    parser.add_argument("--out", default="runs/octadepth", help="checkpoint folder")
    parser.add_argument("--preset", default="lite", help="lite | paper")
    parser.add_argument("--plain", action="store_true", help="train the plain U-Net ablation of the same size")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--ship", action="store_true", help="write the model into the registry (models/)")
    parser.add_argument("--data-command", default="", help="how --data was made (recorded when shipping)")
    parser.add_argument("--rossa", default=None,
                        help="ROSSA dataset root (e.g. ../shared/datasets/rossa): real images train the vessel head")
    parser.add_argument("--real-per-batch", type=int, default=0, help="real (ROSSA) crops in each batch")
    parser.add_argument("--val-real", type=int, default=40, help="ROSSA val images used for checkpoint selection")
    parser.add_argument("--init", default=None,
                        help="warm start: weights (.safetensors/.pt or a shipped name) whose matching tensors are copied")
    parser.add_argument("--intensity-aug", action="store_true",
                        help="random gamma/contrast/offset/noise on the training crops")
    parser.add_argument("--speckle-aug", action="store_true",
                        help="per-pixel multiplicative speckle on half of the training crops")
    parser.add_argument("--structure-stride", type=int, choices=(1, 2), default=None,
                        help="structure branch at full (1) or half (2) resolution (default: the preset's)")
    parser.add_argument("--hidden", type=int, default=None, help="SCB attention width (default: the preset's)")
    parser.add_argument("--vessel-hidden", type=int, default=None, help="vessel-head width (default: the preset's)")
    parser.add_argument("--resolution-aug", action="store_true",
                        help="blur (sigma 0-1 px) / down-sampling (0.6-1.0) drawn per training crop")
    parser.add_argument("--background-depth", choices=("zero", "nearest"), default="zero",
                        help="depth target on the background: 0 (the paper) or the nearest known depth")
    parser.add_argument("--select-threshold", action="store_true",
                        help="when shipping: pick the vessel threshold on ROSSA val and fold it into the head's bias")
    parser.add_argument("--phantom-vessels", choices=("large", "all"), default="all",
                        help="phantom vessel target: its vessel mask (all), or only vessels ~3 px wide and up")


def train(args) -> int:
    from ..device import limit_cpu_threads
    from ..progress import TqdmProgress
    from . import train as training_run

    limit_cpu_threads(args.threads)
    config = training_run.TrainConfig(
        data_dir=Path(args.data), out_dir=Path(args.out), preset=args.preset, plain=args.plain, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch=args.batch, crop=args.crop, lr=args.lr, seed=args.seed,
        device=args.device, resume=args.resume, rossa_dir=Path(args.rossa) if args.rossa else None,
        real_per_batch=args.real_per_batch, val_real=args.val_real, phantom_vessels=args.phantom_vessels,
        init=args.init, intensity_augmentation=args.intensity_aug, select_threshold=args.select_threshold,
        background_depth=args.background_depth, speckle_augmentation=args.speckle_aug,
        resolution_augmentation=args.resolution_aug, structure_stride=args.structure_stride,
        hidden=args.hidden, vessel_hidden=args.vessel_hidden)
    bar = TqdmProgress(f"train octadepth {config.model_preset}")
    model, trainer, val_samples = training_run.train(config, progress=bar)
    bar.close()
    print(json.dumps({"best_val_loss": trainer.best, "epochs": trainer.epoch, "history": trainer.history[-1]}))
    if args.ship:
        path = training_run.ship(model, config, val_samples, args.data_command or f"dataset folder {args.data}")
        print(f"Shipped {path}")
    return 0


# ------------------------------------------------------------------ eval


def add_eval_arguments(parser) -> None:
    parser.add_argument("--data", default=None, help="held-out octa dataset folder (default: render phantoms)")
    parser.add_argument("--count", type=int, default=4, help="phantoms to render when --data is not given")
    parser.add_argument("--seed", type=int, default=900, help="first phantom seed when --data is not given")
    parser.add_argument("--model", default="lite", help="our model: shipped preset or checkpoint")
    parser.add_argument("--ablation", default="unet-lite", help="plain U-Net: shipped preset or checkpoint")
    parser.add_argument("--constant", type=float, default=None,
                        help="relative depth of the constant-depth baseline (default: the ablation's "
                             "training-set mean recorded in the registry, else the held-out mean)")
    parser.add_argument("--size-px", type=int, default=320, help="size of the rendered phantoms")
    parser.add_argument("--field-mm", type=float, nargs="+", default=[3.0, 6.0],
                        help="fields of the rendered phantoms (cycled over the seeds)")
    parser.add_argument("--no-phantoms", action="store_true", help="skip the phantom table")
    parser.add_argument("--distinct-beds", action="store_true",
                        help="render the phantoms with the superficial twigs and distinct capillary beds (round 4's "
                             "training phantoms) instead of round 2's depth-realistic ones")
    parser.add_argument("--rossa", default=None,
                        help="ROSSA root (e.g. ../shared/datasets/rossa): vessel Dice on real labelled images")
    parser.add_argument("--rossa-split", default="test", help="ROSSA split to report (test; val selects models)")
    parser.add_argument("--real-pairs", default=None,
                        help="folder of superficial/deep slab pairs (e.g. ../shared/samples/octa-octagon): "
                             "AUC of predicted depth, deep- against superficial-dominant pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")


def evaluate(args) -> int:
    from .. import registry
    from ..cli import json_report
    from . import data, eval as evaluation, real_eval

    write_json = json_report(args.json)
    models = {}
    for label, name in (("OCTADepth " + args.model, args.model), ("plain U-Net " + args.ablation, args.ablation)):
        net, _ = registry.load_model("octadepth", name, args.device)
        models[label] = net
    one_pass, _ = registry.load_model("octadepth", args.model, args.device)
    one_pass.flip_average = False  # transparency: our model without the flip averaging of the pipeline
    models[f"OCTADepth {args.model}, one pass"] = one_pass
    tables = {}
    if not args.no_phantoms:
        if args.data:
            samples = data.load_dataset(args.data)
        else:
            fields = [args.field_mm[i % len(args.field_mm)] for i in range(args.count)]
            samples = [data.render_samples([args.seed + i], args.size_px, field, distinct_beds=args.distinct_beds)[0]
                       for i, field in enumerate(fields)]
        constant = args.constant if args.constant is not None else _training_constant(registry)
        if constant is None:
            constant = evaluation.mean_vessel_depth(samples)
        rows = evaluation.results_table(samples, models, constant, args.device)
        kind = "distinct-bed" if args.distinct_beds else "depth-realistic"
        source = args.data or (f"{kind} phantom seeds {args.seed}..{args.seed + args.count - 1}, "
                               f"{args.size_px} px, fields {args.field_mm} mm")
        print(f"OCTADepth on {len(samples)} held-out phantoms ({source}); depth on every pixel with a true depth")
        print(evaluation.format_table(rows))
        tables["phantoms"] = rows
    if args.rossa:
        real = data.load_rossa(args.rossa, args.rossa_split)
        rows = real_eval.vessel_dice_rows(real, models, args.device)
        print(f"\nVessel Dice on ROSSA {args.rossa_split} ({len(real)} real images, expert labels)")
        print(real_eval.format_rows(rows, ["dice", "vessel_fraction", "true_fraction"], "method"))
        tables["rossa"] = rows
    if args.real_pairs:
        rows = real_eval.depth_pair_rows(args.real_pairs, models, args.device)
        print(f"\nDepth AUC, deep- against superficial-dominant vessel pixels ({args.real_pairs}; "
              "composite = max of the registered slabs)")
        columns = ["shift_px", "deep_px", "superficial_px", *models, "naive_dimmer_is_deeper"]
        print(real_eval.format_rows(rows, columns, "pair"))
        tables["real_pairs"] = rows
    write_json(tables)
    return 0


def _training_constant(registry) -> float | None:
    for entry in registry.load_registry():
        if entry.module == "octadepth" and "mean_vessel_depth" in entry.training:
            return float(entry.training["mean_vessel_depth"])
    return None


# ------------------------------------------------------------------ bench


def add_bench_arguments(parser) -> None:
    parser.add_argument("--size", type=int, default=512, help="input size (the paper's devices: 304-512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="lite")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the 2-core target)")


def bench(args) -> int:
    from .bench import run_bench

    print(json.dumps(run_bench(args.size, args.repeats, args.model, args.threads)))
    return 0


# ------------------------------------------------------------------ demo


def demo(context) -> None:
    """Phantom seed ``DEMO_SEED`` through the shipped model into the demo scene, with a render."""
    from .. import render
    from .logic import OCTADepthLogic

    from .. import mrml

    logic = OCTADepthLogic(context.scene)
    sample = logic.load_sample(seed=DEMO_SEED)
    result = logic.process(sample.inputVolume, device=context.device, model="lite")
    table = logic.evaluate(result.outputDepthVolume, sample.referenceDepthVolume,
                           referenceCenterlines=sample.referenceCenterlines)
    result.render(context.render_path("octadepth_tubes"))
    render.save_image_png(result.depth_rgb(), context.render_path("octadepth_depth_map"))
    metrics = {row["metric"]: round(float(row["value"]), 4) for row in mrml.table_to_rows(table)}
    context.summary["octadepth"] = {**result.summary(), **metrics, "message": result.message}

"""``vesselrecon vesselsdf|train vesselsdf|eval vesselsdf|bench vesselsdf`` and the demo hook."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

log = logging.getLogger(__name__)
METHOD = "vesselsdf"


# ------------------------------------------------------------------------------------ train


def add_train_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (MSD layout, e.g. `vesselrecon phantoms ct`)")
    parser.add_argument("--out", default="out/vesselsdf/train", help="checkpoint folder")
    parser.add_argument("--preset", default="lite", help="lite | paper, optionally -occ/-sdfonly/-nogauss/-unet")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (paper: 100)")
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop", type=int, nargs=2, default=(64, 64), metavar=("ROWS", "COLS"),
                        help="in-plane crop (all slices are used); the paper uses whole 512x512x16 volumes")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-cases", type=int, default=2, help="last cases held out for validation")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--ship", action="store_true", help="write models/vesselsdf-<preset> into the registry")
    parser.add_argument("--heldout", help="held-out dataset folder for the shipped metrics")
    parser.add_argument("--data-command", default="", help="command that wrote --data (recorded when shipping)")


def train(args) -> int:
    import torch

    from ..progress import TqdmProgress
    from .train import TrainConfig, train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(preset=args.preset, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                         batch_size=args.batch_size, crop=tuple(args.crop), lr=args.lr, seed=args.seed,
                         val_cases=args.val_cases, device=args.device)
    bar = TqdmProgress(f"train {METHOD} {args.preset}")
    model, trainer = train_model(args.data, args.out, config, progress=bar, resume=not args.no_resume)
    bar.close()
    print(json.dumps({"epochs": trainer.epoch, "best": trainer.best, "last": trainer.history[-1] if trainer.history else {}}))
    if args.ship:
        _ship(model, args, config)
    return 0


def _ship(model, args, config) -> None:
    from ..training import ship_model
    from .evaluation import evaluate_methods, load_eval_cases
    from .inference import PORTAL_VENOUS_WINDOW
    from .train import loss_config_for

    model_metrics = {}
    if args.heldout:
        cases = load_eval_cases(args.heldout)
        table = evaluate_methods(cases, {args.preset: model.cpu()}, "cpu")
        model_metrics = {"heldout": str(args.heldout), "cases": len(cases), **{k: round(v, 4) for k, v in table[args.preset].items()},
                         "classical": {k: round(v, 4) for k, v in table["classical"].items()}}
    entry = ship_model(
        model.cpu(), METHOD, args.preset, command="vesselrecon " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        data=args.data_command or str(args.data), seed=args.seed, metrics=model_metrics,
        input_spec={"channels": 1, "layout": "KJI thick-slice CT", "intensity": "HU, window W400 L100 -> [0, 1]",
                    "window": list(PORTAL_VENOUS_WINDOW), "spacing_mm": [0.7, 0.7, 5.0],
                    "size": "any; multiples of (4, 8, 8) after padding; paper 16x512x512"},
        extra_training={"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch,
                        "batch_size": config.batch_size, "crop": list(config.crop), "lr": config.lr,
                        "optimizer": "Adam", "augmentation": "none", "loss": loss_config_for(args.preset).to_dict(),
                        "note": "CPU-trained shipped model: far fewer epochs/steps than the paper's 100 "
                                "whole-volume epochs, on in-plane crops of small phantoms."})
    print(f"Shipped {entry.name} ({entry.sha256[:12]}) to {entry.directory}")


# ------------------------------------------------------------------------------------ run


def add_arguments(parser) -> None:
    parser.add_argument("input", help="CT volume (NIfTI/NRRD/MHA file or DICOM folder), HU")
    parser.add_argument("--out", default="out/vesselsdf", help="output folder")
    parser.add_argument("--roi", help="organ/ROI mask volume on the CT grid (optional)")
    parser.add_argument("--reference", help="reference vessel labelmap on the CT grid: adds metrics")
    parser.add_argument("--model", default="lite", help="shipped preset or checkpoint path")
    parser.add_argument("--device", default="auto", help="auto|cuda|mps|cpu")
    parser.add_argument("--no-window", action="store_true",
                        help="input is not in HU: normalise by percentiles instead of the W400/L100 window")
    parser.add_argument("--occupancy", action="store_true", help="also write the occupancy probability")
    parser.add_argument("--factor", type=int, default=None, help="sub-slices per slice gap when meshing")
    parser.add_argument("--min-component-mm3", type=float, default=0.0,
                        help="drop surface pieces enclosing less volume (mm^3); 0 keeps all")


def _write_like(array, reference_image, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference_image)
    sitk.WriteImage(image, str(path), True)


def run(args) -> int:
    import csv

    from .. import meshes, mrml, runtime
    from ..progress import TqdmProgress
    from ..volume_io import read_image
    from .logic import VesselSDFLogic

    scene = runtime.new_scene()
    image = read_image(args.input)
    name = Path(args.input).name.split(".")[0]
    ct = mrml.sitk_to_volume(image, name, scene=scene)
    roi = mrml.sitk_to_volume(read_image(args.roi), f"{name} ROI", scene=scene, labelmap=True) if args.roi else None
    reference = (mrml.sitk_to_volume(read_image(args.reference), f"{name} reference", scene=scene, labelmap=True)
                 if args.reference else None)
    bar = TqdmProgress(f"{METHOD} {name}")
    result = VesselSDFLogic(scene).process(
        ct, roiMask=roi, model=args.model, device=args.device, portalVenousWindow=not args.no_window,
        createOccupancy=args.occupancy, throughPlaneFactor=args.factor or 0,
        minComponentMm3=args.min_component_mm3, referenceSegmentation=reference, progress=bar)
    bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recon = result.reconstruction
    meshes.save_polydata(recon.surface, out / f"{name}_vessels.vtp")
    meshes.save_polydata(recon.surface, out / f"{name}_vessels.stl")
    _write_like(recon.mask.astype("uint8"), image, out / f"{name}_vessels.nii.gz")
    _write_like(recon.prediction.surface_field().astype("float32"), image, out / f"{name}_sdf.nii.gz")
    if args.occupancy and recon.prediction.occupancy is not None:
        _write_like(recon.prediction.occupancy.astype("float32"), image, out / f"{name}_occupancy.nii.gz")
    with open(out / f"{name}_measurements.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "value"])
        writer.writerows(sorted(result.metrics.items()))
    mrml.save_scene(out / f"{name}_vesselsdf.mrb", scene)
    print(json.dumps({"out": str(out), **{k: round(v, 4) for k, v in result.metrics.items()}}))
    return 0


# ------------------------------------------------------------------------------------ eval

ABLATIONS = ("lite", "lite-occ", "lite-sdfonly", "lite-nogauss", "lite-unet")


def add_eval_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="held-out `vesselrecon phantoms ct` folder")
    parser.add_argument("--models", nargs="*", default=list(ABLATIONS),
                        help="shipped presets or checkpoint paths (default: ours and the ablation variants)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N cases")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the table as JSON here")


def _row_key(name: str) -> str:
    """Table row of a model: ``lite`` -> ours, ``lite-occ`` -> ``occ``, a checkpoint -> its file stem."""
    if Path(name).suffix:
        return Path(name).stem
    return name.split("-", 1)[1] if "-" in name else name


def evaluate(args) -> int:
    from ..device import resolve_device
    from ..errors import CheckpointError
    from ..registry import load_model
    from .evaluation import evaluate_methods, format_table, load_eval_cases

    device = resolve_device(args.device)
    models = {}
    for name in args.models:
        try:
            models[_row_key(name)] = load_model(METHOD, name, str(device))[0]
        except CheckpointError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    cases = load_eval_cases(args.data, args.limit)
    table = evaluate_methods(cases, models, device)
    print(f"VesselSDF on {len(cases)} held-out cases of {args.data}")
    print(format_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0


# ------------------------------------------------------------------------------------ bench


def add_bench_arguments(parser) -> None:
    parser.add_argument("--size", type=int, nargs=3, default=(16, 512, 512), metavar=("K", "J", "I"),
                        help="input size (slices, rows, columns); the paper's is 16 512 512")
    parser.add_argument("--cpu-preset", default="lite")
    parser.add_argument("--cuda-preset", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def bench(args) -> int:
    import torch

    from .bench import bench as run_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run_bench(tuple(args.size), args.cpu_preset, args.cuda_preset, args.repeats)))
    return 0


# ------------------------------------------------------------------------------------ demo


def demo(context) -> None:
    """A generated CT phantom (seed 2025) through the shipped lite model, with a render and metrics."""
    from .. import render
    from .logic import SDF_COLORS, VesselSDFLogic

    logic = VesselSDFLogic(context.scene)
    sample = logic.load_sample(seed=2025)
    result = logic.process(sample.inputVolume, roiMask=sample.roiMask, referenceSegmentation=sample.referenceSegmentation,
                           device=context.device, createOccupancy=True)
    render.render_meshes([render.Layer(result.reconstruction.surface, color=(0.85, 0.2, 0.2)),
                          render.Layer(sample.referenceModel.GetPolyData(), color=(0.2, 0.5, 0.9), opacity=0.25)],
                         context.render_path("vesselsdf"), view=(20.0, 15.0))
    sdf = result.reconstruction.prediction.surface_field()
    render.save_image_png(sdf[sdf.shape[0] // 2], context.render_path("vesselsdf_sdf_slice"), colormap=SDF_COLORS,
                          value_range=(-5.0, 5.0))
    context.summary[METHOD] = {k: round(float(v), 4) for k, v in result.metrics.items()}

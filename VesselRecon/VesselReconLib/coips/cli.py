"""``vesselrecon coips``, ``train coips``, ``eval coips``, ``bench coips`` and the demo hook."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

from ..cli import finite_json

log = logging.getLogger(__name__)
QUALITY_SHIP_NAME, FAZ_SHIP_NAME = "coips-quality-{preset}", "coips-{preset}"


TRAIN_OPTIONS = ("task", "data", "preset", "epochs", "batch_size", "lr", "finetune", "patience", "patch", "seed",
                 "workers", "device", "degrade", "rossa", "zoom_min", "rank_weight", "rank_margin", "deep_look", "composite", "device_look", "init", "canonical", "calibrate", "calibrate_phantoms", "out", "heldout", "data_command")


def _train_command(args) -> str:
    """The ``vesselrecon train coips`` command equivalent to ``args`` (recorded with shipped weights)."""
    parts = ["vesselrecon", "train", "coips"]
    for name in TRAIN_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and value != "":
            parts += [f"--{name.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(parts + ["--ship"])


# ---------------------------------------------------------------- vesselrecon coips


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML configuration (see VesselRecon/COIPS/README.md)")
    parser.add_argument("--input", help="folder of OCTA images, or one image (PNG/JPEG/BMP/TIFF/DICOM)")
    parser.add_argument("--output", help="output folder (CSV, HTML report, thumbnails, masks, coips.mrb)")
    parser.add_argument("--fov", type=float, dest="field_of_view_mm",
                        help="scan width in mm (3 or 6) of every image; default: per image from metadata or the "
                             "file name, refusing images where neither gives it")
    parser.add_argument("--fov-file", dest="fov_file", metavar="CSV",
                        help="per-file fields of view: CSV with columns image,field_of_view_mm (wins over --fov)")
    parser.add_argument("--model", dest="quality_model", help="quality classifier preset or checkpoint (default lite)")
    parser.add_argument("--faz-model", dest="faz_model", help="FAZ U-Net preset or checkpoint (default faz-lite)")
    parser.add_argument("--device", help="auto|cuda|mps|cpu")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int, dest="num_workers", help="decoding processes (default min(2, cores))")
    parser.add_argument("--post-workers", type=int, dest="post_workers", help="FAZ measuring/writing processes")
    parser.add_argument("--force-faz", action="store_const", const=True, dest="segment_ungradable",
                        help="segment the FAZ of ungradable images too")
    parser.add_argument("--recursive", action="store_const", const=True, help="include sub-folders")
    parser.add_argument("--no-scene", action="store_true", help="do not write coips.mrb")
    parser.add_argument("--write-config", metavar="PATH", help="write the effective configuration as YAML and exit")


def run(args) -> int:
    """Grade, segment and measure; write the report files and a .mrb scene through the Logic."""
    from .config import load_config, write_config

    keys = ("input", "output", "field_of_view_mm", "fov_file", "quality_model", "faz_model", "device", "batch_size",
            "num_workers", "post_workers", "segment_ungradable", "recursive")
    config = load_config(args.config, **{k: getattr(args, k) for k in keys})
    if args.write_config:
        print(f"Wrote {write_config(config, args.write_config)}")
        return 0
    from .. import mrml, runtime
    from ..cli import file_error
    from ..device import limit_cpu_threads, resolve_device
    from ..progress import TqdmProgress
    from .batch import SCENE_NAME
    from .bench import cpu_threads
    from .logic import COIPSLogic

    if resolve_device(config.device).type == "cpu":
        limit_cpu_threads(cpu_threads(int(config.num_workers)))

    scene = runtime.new_scene()
    logic = COIPSLogic(scene)
    bar = TqdmProgress("coips")
    try:
        result = logic.process_batch(config.input, config.output, config.field_of_view_mm, config.segment_ungradable,
                                     model=config.quality_model, fazModel=config.faz_model, device=config.device,
                                     numWorkers=config.num_workers, batchSize=config.batch_size,
                                     configFile=args.config, fovFile=config.fov_file, recursive=config.recursive,
                                     postWorkers=config.post_workers, progress=bar)
    finally:
        bar.close()
    if Path(config.input).is_file() and result.rows[0].get("status") == "ok":   # unsuitable/unreadable: the row says why
        _single_image_scene(logic, config)
    summary = result.summary
    print(f"{summary['images']} image{'' if summary['images'] == 1 else 's'}: " + ", ".join(f"{n} {g}" for g, n in summary["grades"].items())
          + f", {summary['errors']} unreadable, {summary['unsuitable']} unsuitable, "
          f"{summary['implausible_faz']} implausible FAZ")
    for row in result.rows:
        if row.get("status") == "unsuitable":
            print(f"warning: {row.get('image')}: {row.get('error')}", file=sys.stderr)
    print(f"Wrote {result.csvPath} and {result.htmlPath}")
    if not args.no_scene:
        print(f"Wrote {mrml.save_scene(Path(config.output) / SCENE_NAME, scene)}")
    failed = [row for row in result.rows if row.get("status") == "error"]
    for row in failed:
        print(file_error(str(row.get("image")), row.get("error", "")), file=sys.stderr)
    return 2 if failed else 0


def _single_image_scene(logic, config) -> None:
    """Load the one input image as a volume and run the single-image Logic on it (for the .mrb)."""
    from .. import mrml
    from ..enface_io import read_image
    from .logic import en_face_geometry

    path = Path(config.input)
    image = read_image(path, config.fov_for(path, path.parent))
    height, width = image.pixels.shape
    volume = mrml.array_to_volume(image.pixels[None], en_face_geometry(image.field_of_view_mm / width, width),
                                  Path(config.input).stem, scene=logic.scene, creator=logic.creator)
    result = logic.process(volume, image.field_of_view_mm, config.segment_ungradable, model=config.quality_model,
                           fazModel=config.faz_model, device=config.device)
    print(f"{Path(config.input).name}: {result.grade} " + finite_json({k: round(v, 4) for k, v in result.metrics.items()}))


# ---------------------------------------------------------------- vesselrecon train coips


def add_train_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset from `vesselrecon phantoms octa-quality` (or OCTA-25K)")
    parser.add_argument("--task", choices=("quality", "faz"), required=True)
    parser.add_argument("--preset", help="network preset (default lite / faz-lite)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, help="learning rate (default: the paper's)")
    parser.add_argument("--finetune", choices=("all", "head"), default="all", help="train the whole network or the head")
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--patch", type=int, help="(unused: the FAZ U-Net trains on its jittered central window)")
    parser.add_argument("--degrade", type=float, default=0.7,
                        help="quality: probability of degrading a training image on the fly (coips.degradations)")
    parser.add_argument("--rossa", help="quality: also use the real ROSSA images under this folder as sources "
                                        "(train_manual + train_sam), degraded on the fly")
    parser.add_argument("--zoom-min", type=float, default=0.6,
                        help="quality: smallest central crop (fraction of the width) of the zoom augmentation")
    parser.add_argument("--rank-weight", type=float, default=0.0,
                        help="quality: weight of the ranking loss over pairs of one source at two severities "
                             "(a more degraded copy must not score higher); 0 trains on single images")
    parser.add_argument("--rank-margin", type=float, default=0.05, help="quality: margin of the ranking loss")
    parser.add_argument("--composite", type=float, default=0.0,
                        help="quality, with --rank-weight: probability that a pair's source is first degraded by "
                             "any kind (pairs that start gradable or ungradable)")
    parser.add_argument("--deep-look", type=float, default=0.0,
                        help="quality: probability of giving a ROSSA source a deep-slab look (large vessels "
                             "filled with its own capillary texture, grade kept)")
    parser.add_argument("--device-look", type=float, default=0.0,
                        help="faz: probability of giving a training window another device's look (JPEG, speckle, "
                             "resolution, contrast; coips.data.device_appearance)")
    parser.add_argument("--init", help="start from these weights (registry name, .safetensors or .pt)")
    parser.add_argument("--canonical", type=float, default=None, metavar="RATIO",
                        help="quality: spectral canonicalisation inside the grader (network.spectral_canonical): "
                             "inputs whose fine-to-mid power ratio exceeds RATIO are low-passed down to it")
    parser.add_argument("--calibrate", metavar="FOLDER",
                        help="quality: fit class offsets and a temperature on these held-out real images (e.g. "
                             "../shared/datasets/rossa/val) and fold them into the head (coips/calibration.py)")
    parser.add_argument("--calibrate-phantoms", metavar="FOLDER",
                        help="quality, with --calibrate: also maximise the macro F1 on this phantom validation set "
                             "(e.g. out/coips/val-r2; never the held-out set) when fitting the class offsets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="out/train-coips", help="checkpoint folder")
    parser.add_argument("--ship", action="store_true", help="write the model into the registry")
    parser.add_argument("--heldout", help="held-out dataset for the shipped metrics (default: the validation split)")
    parser.add_argument("--data-command", default="", help="the phantom command that made --data (provenance)")
    parser.add_argument("--registry", help="registry folder to ship into (default: the installed one)")


def train(args) -> int:
    import torch

    from ..device import limit_cpu_threads, resolve_device
    from ..progress import TqdmProgress
    from .train import TrainSettings, train_faz, train_quality

    if resolve_device(args.device).type == "cpu":
        limit_cpu_threads(min(2, torch.get_num_threads()))
    preset = args.preset or ("lite" if args.task == "quality" else "faz-lite")
    settings = TrainSettings(preset=preset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             finetune=args.finetune, patience=args.patience, seed=args.seed, workers=args.workers,
                             patch=args.patch, device=args.device, degrade=args.degrade, rossa=args.rossa,
                             zoom_min=args.zoom_min, rank_weight=args.rank_weight, rank_margin=args.rank_margin,
                             deep_look=args.deep_look, composite=args.composite, device_look=args.device_look, init=args.init,
                             canonical=getattr(args, "canonical", None))
    bar = TqdmProgress(f"train coips {args.task}")
    fit = train_quality if args.task == "quality" else train_faz
    model, history = fit(args.data, Path(args.out) / args.task, settings, progress=bar)
    bar.close()
    best = max(history, key=lambda h: h.get("val_macro_f1", h.get("val_dice", 0.0))) if history else {}
    print(json.dumps({"task": args.task, "preset": preset, "epochs": len(history), "best": best}))
    args.calibration = None
    if getattr(args, "calibrate", None) and args.task == "quality":
        from .calibration import calibrate

        args.calibration = calibrate(model, args.calibrate, resolve_device(args.device),
                                     phantoms=getattr(args, "calibrate_phantoms", None))
        print(json.dumps({"calibration": args.calibration}))
    if args.ship:
        _ship(model, args, preset, history)
    return 0


def _ship(model, args, preset: str, history: list[dict]) -> None:
    from ..device import resolve_device
    from ..training import ship_model
    from .evaluation import faz_records, faz_rows, quality_predictions, quality_rows
    from .network import inference_settings

    device = resolve_device(args.device)
    model = model.to(device).eval()
    heldout = args.heldout or args.data
    if args.task == "quality":
        labels, probabilities = quality_predictions(model, heldout, device)
        metrics = quality_rows(labels, {"model": probabilities})[0]
        name = QUALITY_SHIP_NAME.format(preset=preset)
        spec = {"channels": 1, "size": model.input_size, "intensity": "grayscale [0, 1], z-scored inside",
                "classes": ["ungradable", "gradable", "outstanding"]}
    else:
        metrics = faz_rows(faz_records(model, heldout, device), {"unet": "model"})[0]
        name = FAZ_SHIP_NAME.format(preset=preset)
        spec = {"channels": 1, "size": model.input_size, "intensity": "grayscale [0, 1], z-scored inside",
                "classes": ["background", "faz"]}
    metrics = {k: v for k, v in metrics.items() if k != "method"}
    metrics.update(heldout=str(heldout), epochs_trained=len(history), **_real_metrics(model, args.task, device))
    sources = [f"phantoms (VesselReconLib.phantoms.octa, this repository): {args.data_command or args.data}"]
    if getattr(args, "rossa", None):
        sources.append("ROSSA train_manual + train_sam (GitHub nhjydywd/OCTA-FRNet, dataset/ROSSA at commit 53e87f8, "
                       "MIT License, Copyright (c) 2023 Haojian Ning; arXiv 2309.09483), degraded on the fly")
    extra_training = {}
    if getattr(args, "calibration", None):
        sources.append(f"calibration: {args.calibrate} (held-out real images: ROSSA val, same commit and licence; "
                       "never the OCTAGON evaluation scans), clean and degradation series")
        extra_training["calibration"] = args.calibration
        if getattr(args, "calibrate_phantoms", None):
            sources.append(f"calibration: {args.calibrate_phantoms} (phantom validation set, macro F1; not the "
                           "held-out set)")
    config = inference_settings(model)
    entry = ship_model(model.cpu(), "coips", preset, command=_train_command(args), data=args.data_command or str(args.data),
                       seed=args.seed, metrics=metrics, input_spec=spec, name=name, config=config,
                       extra_training={"task": args.task, "heldout_data": str(heldout), "data_sources": sources,
                                       "real_evaluation": "OCTAGON samples (../shared/samples/octa-octagon), never "
                                                          "used for training or calibration", **extra_training},
                       directory=Path(args.registry) if args.registry else None)
    print(f"Shipped {entry.name} ({entry.path.stat().st_size / 1e6:.2f} MB): {json.dumps(metrics)}")


def _real_metrics(model, task: str, device) -> dict:
    """Real-scan metrics for the registry entry when the OCTAGON samples are present (else none)."""
    from .realeval import default_octagon_dir

    folder = default_octagon_dir()
    if folder is None:
        return {}
    if task == "faz":
        from .realeval import faz_rows

        return {f"real_{row['scan'].removesuffix('.tif')}_{key}": round(float(row[key]), 4)
                for row in faz_rows(model, folder, device) if row["method"] == "unet"
                for key in ("dice", "area_error_pct")}
    from .realeval import degradation_series, octagon_images

    from .realeval import OCTAGON_SCANS, default_rossa_dir, grade_images, rossa_grades

    images = octagon_images(folder)
    rows = degradation_series(model, images, device)
    metrics = {"real_octagon_series_monotone": f"{sum(r['monotone'] for r in rows)}/{len(rows)}",
               "real_octagon_series_worst_ungradable": f"{sum(r['worst_ungradable'] for r in rows)}/{len(rows)}"}
    probabilities = grade_images(model, list(images.values()), device)
    from . import GRADES

    metrics.update({f"real_{name.removesuffix('.tif')}_grade": GRADES[int(p.argmax())] for name, p in
                    zip(images, probabilities) if name in OCTAGON_SCANS})
    rossa = default_rossa_dir("test")
    if rossa is not None:
        result = rossa_grades(model, rossa, device)
        n = result["series_total"]
        metrics.update({"real_rossa_test_clean_grades_ungr_grad_outs": result["clean_grades"],
                        "real_rossa_test_macro_f1": round(result["macro_f1"], 4),
                        "real_rossa_test_series_monotone": f"{round(result['series_monotone'] * n)}/{n}",
                        "real_rossa_test_series_worst_ungradable": f"{round(result['series_worst_ungradable'] * n)}/{n}"})
    return metrics


# ---------------------------------------------------------------- vesselrecon eval coips


def add_eval_arguments(parser) -> None:
    parser.add_argument("--data", help="held-out phantom set in the octa-quality layout (phantom tables)")
    parser.add_argument("--real", help="folder of the OCTAGON sample scans (default: ../shared/samples/octa-octagon "
                                       "when present; 'none' skips the real-scan tables)")
    parser.add_argument("--model", default="lite", help="quality classifier preset or checkpoint")
    parser.add_argument("--faz-model", default="faz-lite", help="FAZ U-Net preset or checkpoint")
    parser.add_argument("--compare", nargs="*", default=[], metavar="NAME=CHECKPOINT",
                        help="more quality classifiers for the ablation (e.g. head-only fine-tuning)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the rows to this JSON file")


def evaluate(args) -> int:
    import torch

    from .. import registry
    from ..cli import json_report
    from ..device import resolve_device
    from .evaluation import FAZ_COLUMNS, QUALITY_COLUMNS, format_confusion, format_table, run_evaluation

    write_json = json_report(args.json, indent=2)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    device = resolve_device(args.device)
    quality_net, _ = registry.load_model("coips", args.model, str(device))
    faz_net, _ = registry.load_model("coips", args.faz_model, str(device))
    extra = {}
    for item in args.compare:
        name, _, path = item.partition("=")
        extra[name] = registry.load_model("coips", path or name, str(device))[0]
    from .realeval import default_octagon_dir, format_real, run_real_evaluation

    real = None if args.real == "none" else (Path(args.real) if args.real else default_octagon_dir())
    if args.data is None and real is None:
        from ..errors import InputError

        raise InputError("Nothing to evaluate: give --data (phantom held-out set) and/or --real (OCTAGON scans).")
    result = {}
    if args.data:
        result = run_evaluation(args.data, quality_net, faz_net, device, extra,
                                quality_name=f"COIPS {args.model}", faz_name=f"COIPS {args.faz_model}")
        print(format_table(f"Quality assessment on phantoms ({result['n_quality']} images)", result["quality"],
                           QUALITY_COLUMNS))
        print(f"\nConfusion matrix of {result['quality'][0]['method']}:")
        print(format_confusion(result["quality"][0]["confusion_matrix"]))
        print()
        print(format_table(f"FAZ segmentation on phantoms ({result['n_faz']} gradable/outstanding images)",
                           result["faz"], ("n",) + FAZ_COLUMNS))
    if real is not None:
        result["real"] = run_real_evaluation(quality_net, faz_net, real, device)
        print()
        print(format_real(result["real"], f"COIPS {args.faz_model}"))
    write_json(result)
    return 0


# ---------------------------------------------------------------- vesselrecon bench coips


def add_bench_arguments(parser) -> None:
    parser.add_argument("--preset", choices=("lite", "paper"), help="lite (shipped) or paper (SE-ResNeXt-101 + "
                        "nnU-Net, untrained); default paper on CUDA, lite on CPU")
    parser.add_argument("--count", type=int, help="images in the timed batch (default 4000 CUDA / 200 CPU)")
    parser.add_argument("--size", type=int, default=304, help="image size of the generated study")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int, help="decoding processes")
    parser.add_argument("--post-workers", type=int, help="measuring/writing processes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: cores left beside the decoders)")
    parser.add_argument("--segment-all", action="store_true",
                        help="segment the FAZ of every image (default only with untrained weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", help="existing image folder to time instead of a generated one")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds (pipeline, backbone, classifier, FAZ U-Net interleaved; fastest of each)")
    parser.add_argument("--out", help="output folder (default: a temporary folder)")


def bench(args) -> int:
    from .bench import run_bench

    print(json.dumps(run_bench(args)))
    return 0


# ---------------------------------------------------------------- vesselrecon demo


def demo(context) -> None:
    """Grade a small generated study, segment the sample image in the scene, render a contact sheet."""
    from .demo import run_demo

    context.summary["coips"] = run_demo(context)

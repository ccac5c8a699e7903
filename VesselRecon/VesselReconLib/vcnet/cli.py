"""``vesselrecon vcnet|train vcnet|eval vcnet|bench vcnet`` and the demo hook."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from .. import DEVICE_CHOICES
from ..cli import finite_json
from .defaults import DEFAULT_MODEL, DEFAULT_MODEL_NAME


# ---------------------------------------------------------------- run


def add_arguments(parser) -> None:
    parser.add_argument("input", help="MRA/SWI volume (NRRD, NIfTI, MHA or a DICOM folder)")
    parser.add_argument("--out", default="out/vcnet", help="output folder (segmentation, probability, table, .mrb)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"shipped preset/name or a .safetensors/.pt checkpoint (default {DEFAULT_MODEL}; lite "
                             "keeps the 0.3 mm gap smaller; vcnet-swi-lite for SWI with --dark)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--mask", help="brain/ROI mask volume; it also sets the intensity statistics (tissue level) "
                                       "used to normalise the image. Without it the whole volume's dominant tissue "
                                       "intensity is used, with a warning, and vessels are searched only at "
                                       "least 8 mm inside the head (no bright fat or scalp; a crop with no air "
                                       "keeps every voxel)")
    parser.add_argument("--dark", action="store_true", help="dark vessels (SWI/MinIP): invert inside the mask; "
                                                            "use with --model vcnet-swi-lite")
    parser.add_argument("--overlap", type=float, default=0.0, help="window overlap (0 = non-overlapping, paper)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--min-component", type=float, default=0.0, help="remove components below this (mm^3)")
    parser.add_argument("--batch-size", type=int, help="patches per forward pass (default: per device)")
    parser.add_argument("--mips", action="store_true", help="also write composited MIPs and their 2D segmentation")
    parser.add_argument("--reference", help="reference vessel labelmap: adds Dice, precision, recall and FPR")
    parser.add_argument("--no-refine", action="store_true",
                        help="threshold the probability alone (default: the vessel boundary is redrawn on the input "
                             "grid where the intensity falls below 0.4x the local vessel intensity)")
    parser.add_argument("--no-resample", action="store_true",
                        help="run at the native spacing (default: resample to the model's training spacing, "
                             "0.5 x 0.5 x 0.8 mm for the shipped models, and the result back; a finer input also "
                             "runs on a grid 0.6x the model spacing, for thin vessels)")


def run(args) -> int:
    from .. import atomic, device, mrml, runtime
    from ..progress import TqdmProgress
    from .logic import VCNetLogic

    device.keep_freed_memory()  # a command-line process only: Slicer's own heap policy is left alone
    final = atomic.check_output_folder(args.out)   # made by staging, once the outputs exist
    scene = runtime.new_scene()
    logic = VCNetLogic(scene)
    volume = logic.load_volume(args.input, "VCNet input")
    mask = logic.load_volume(args.mask, "VCNet mask", labelmap=True) if args.mask else None
    reference = logic.load_volume(args.reference, "VCNet reference", labelmap=True) if args.reference else None
    bar = TqdmProgress("vcnet")
    try:
        result = logic.process(volume, maskVolume=mask, darkVessels=args.dark, model=args.model, device=args.device,
                               overlap=args.overlap, threshold=args.threshold, minComponentMm3=args.min_component,
                               batchSize=args.batch_size, outputProbability=True, outputMip=args.mips,
                               referenceLabelmap=reference, progress=bar,
                               resampleToModelSpacing=not args.no_resample, refineBoundary=not args.no_refine)
    finally:
        bar.close()
    # result.warnings were logged as they arose (shown as "warning: ..." by the command line's log format)
    with atomic.staging(final, "vcnet") as stage:
        written = [final / p.relative_to(stage) for p in logic.write_outputs(result, stage)]
        mrml.save_scene(stage / "vcnet.mrb", scene)
    out = final
    print(finite_json({"metrics": result.metrics, "files": [str(p) for p in written] + [str(out / "vcnet.mrb")]}))
    return 0


# ---------------------------------------------------------------- train


def add_train_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="MSD-style folder (dataset.json, imagesTr, labelsTr[, masksTr])")
    parser.add_argument("--preset", default="lite", help="lite | paper | unet3d-lite | unet2d-lite | ...")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=16, help="batches per epoch")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--hard-negatives", type=float, default=0.1,
                        help="fraction of patches centred on bright fat/scalp outside the brain mask (0 = paper: "
                             "negatives from inside the brain only)")
    parser.add_argument("--out", default="runs/vcnet", help="checkpoint folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dark", action="store_true", help="dark vessels: invert inside the brain mask")
    parser.add_argument("--init", help="fine-tune from a shipped model name/preset or checkpoint")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--patience", type=int, help="early stopping patience (epochs)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--ship", action="store_true", help="write the best model into the model registry")
    parser.add_argument("--name", help="registry name (default vcnet-<preset>)")
    parser.add_argument("--registry", help="registry folder to ship into (default: the installed one)")
    parser.add_argument("--data-command", default="", help="the command that wrote --data (provenance)")
    parser.add_argument("--recipe", help="the full command sequence that trained the model, when it was "
                                         "trained in several --resume runs (provenance; default: this command)")


def train(args) -> int:
    import torch

    from ..progress import TqdmProgress
    from ..training import ship_model
    from .train import TrainConfig
    from .train import train as run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(data=args.data, preset=args.preset, epochs=args.epochs, steps=args.steps, batch=args.batch,
                         lr=args.lr, val_fraction=args.val_fraction, out=args.out, seed=args.seed, dark=args.dark,
                         init=args.init, resume=args.resume, device=args.device, patience=args.patience,
                         hard_fraction=args.hard_negatives)
    bar = TqdmProgress(f"train vcnet {args.preset}")
    model, held_out = run_training(config, progress=bar)
    bar.close()
    print(json.dumps({"preset": args.preset, "held_out": held_out}))
    if args.ship:
        command = args.recipe or "vesselrecon train vcnet " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        entry = ship_model(model.cpu(), "vcnet", args.preset, name=args.name, command=command,
                           data=args.data_command or args.data, seed=args.seed, metrics=held_out,
                           input_spec={"channels": 1, "patch_kji": list(model.patch), "axis_order": "KJI",
                                       "spacing": "resampled at inference to the nearest spacing within 10 % of "
                                                  "spacing_xyz_mm (the training jitter) when an axis lies outside "
                                                  "it, slice axis first",
                                       "spacing_xyz_mm": list(model.spacing),
                                       "intensity": "raw; (x - m) / m with m the tissue level (histogram mode) inside "
                                                    "the brain mask or of the whole volume; dark vessels inverted",
                                       "mip": {"size": model.mip_size, "step": model.mip_step}},
                           extra_training={"lr": args.lr, "epochs": held_out.get("epochs"), "steps": args.steps,
                                           "batch": args.batch, "dark": args.dark, "init": args.init},
                           directory=Path(args.registry) if args.registry else None)
        print(f"Shipped {entry.name} ({entry.path.stat().st_size / 1e6:.2f} MB, sha256 {entry.sha256[:12]})")
    return 0


# ---------------------------------------------------------------- eval and bench

# (their arguments are defined here: building the command line must not import torch/MONAI)


def add_eval_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="held-out MSD-style folder (dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME,
                        help="VC-Net model (registry name or checkpoint; "
                             f"default: the default model, {DEFAULT_MODEL_NAME})")
    parser.add_argument("--ablation", default="vcnet-unet3d-lite", help="3D U-Net without the MIP stream")
    parser.add_argument("--stream2d", default="vcnet-unet2d-lite", help="2D U-Net on MIPs (for the fusion baselines)")
    parser.add_argument("--slice2d", default="vcnet-slice2d-lite", help="slice-wise 2D U-Net baseline")
    parser.add_argument("--registry", help="registry folder holding the models (default: the shipped one)")
    parser.add_argument("--dark", action="store_true", help="dark vessels (SWI): invert inside the brain mask")
    parser.add_argument("--kind", default=None, help="phantom kind for the vesselness calibration (mra|swi)")
    parser.add_argument("--overlap", type=float, default=0.0)
    parser.add_argument("--limit", type=int, help="use only the first N cases")
    parser.add_argument("--vesselness-threshold", type=float, help="Sato: skip calibration and use this threshold")
    parser.add_argument("--frangi-threshold", type=float, help="Frangi: skip calibration and use this threshold")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--json", help="also write the results as JSON to this file")


def evaluate(args) -> int:
    from .eval import evaluate as run_eval

    return run_eval(args)


def add_bench_arguments(parser) -> None:
    parser.add_argument("--device", nargs="*", default=None, help="devices (default: cpu, and cuda when present)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, help="patches per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (2 = the target machine)")
    parser.add_argument("--cpu-full-paper", action="store_true", help="also run the paper preset on the whole volume on CPU")


def bench(args) -> int:
    from .bench import bench as run_bench

    return run_bench(args)


# ---------------------------------------------------------------- demo


def demo(context) -> None:
    """MRA phantom crop (fixed seed) -> VC-Net (the default model) -> segmentation, MIPs, table;
    3D and MIP renders."""
    import numpy as np

    from .. import meshes, mrml, render
    from .logic import VCNetLogic

    logic = VCNetLogic(context.scene)
    sample = logic.load_sample("mra", seed=2026, crop=(48, 160, 160))
    result = logic.process(sample.inputVolume, maskVolume=sample.maskNode, device=context.device,
                           referenceSegmentation=sample.referenceSegmentation, outputProbability=True,
                           outputMip=True)
    truth, _ = mrml.segmentation_to_labelmap(sample.referenceSegmentation, sample.inputVolume)
    predicted = meshes.isosurface(result.labels.astype(np.float32), result.ijkToRas, 0.5)
    reference = meshes.isosurface((truth > 0).astype(np.float32), result.ijkToRas, 0.5)
    render.render_meshes([render.Layer(predicted, color=(0.86, 0.24, 0.22)),
                          render.Layer(reference, color=(0.3, 0.5, 0.9), opacity=0.35)],
                         context.render_path("vcnet"), view=(20.0, 60.0))
    mips, _ = mrml.volume_to_array(result.outputMipVolume)
    mip_labels, _ = mrml.volume_to_array(result.outputMipLabelmap)
    low, high = np.percentile(mips[0], [1, 99.8])
    image = np.clip((mips[0] - low) / max(high - low, 1e-6), 0, 1)
    overlay = np.stack([np.maximum(image, mip_labels[0]), image * (1 - 0.6 * mip_labels[0]),
                        image * (1 - 0.6 * mip_labels[0])], -1)
    render.save_image_png(overlay, context.render_path("vcnet_mips"))
    keys = ("dice", "precision", "recall", "fpr", "vessel_volume_mm3", "centerline_length_mm")
    summary = {k: round(float(v), 4) for k, v in result.metrics.items() if k in keys}
    context.summary["vcnet"] = {**summary, "process_seconds": result.metrics["seconds"]}

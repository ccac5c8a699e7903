"""``vesselrecon vesselsdf|train vesselsdf|eval vesselsdf|bench vesselsdf`` and the demo hook."""

from __future__ import annotations

import json
import logging

import numpy as np
import shlex
import sys
from pathlib import Path

from ..cli import finite_json

log = logging.getLogger(__name__)
METHOD = "vesselsdf"
HEAP_MMAP_MB = 256
"""The command's glibc mmap threshold (:func:`..device.keep_freed_memory`): a whole CT's sliding windows
(152 x 256 x 256 voxels) hold activations above the shared 32 MB, which were page-faulted afresh for every
window (IRCADb 1.7: 14 s of kernel time in the network step; 1.1 s at 256 MB)."""


# ------------------------------------------------------------------------------------ train


def add_train_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (MSD layout, e.g. `vesselrecon phantoms ct`)")
    parser.add_argument("--out", default="out/vesselsdf/train", help="checkpoint folder")
    parser.add_argument("--preset", default="lite", help="lite | paper, optionally -occ/-sdfonly/-nogauss/-unet")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (paper: 100)")
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, nargs=2, default=(64, 64), metavar=("ROWS", "COLS"),
                        help="in-plane crop; the paper uses whole 512x512x16 volumes")
    parser.add_argument("--slices", type=int, default=8, help="consecutive slices per crop (0: all)")
    parser.add_argument("--occupancy-from", help="full-model checkpoint whose occupancy stage is loaded and frozen")
    parser.add_argument("--correction-mm", type=float, default=0.0,
                        help="refiner regresses the SDF as the occupancy's exact distance + a correction of at most "
                             "this many mm (0: from scratch)")
    parser.add_argument("--init-from", help="checkpoint whose matching weights start the training (continue a run)")
    parser.add_argument("--sdf-dice", type=float, default=0.0,
                        help="weight of the soft Dice of the SDF's own mask (ours; 0: the paper's loss)")
    parser.add_argument("--cldice", type=float, default=0.0,
                        help="weight of the soft clDice of the SDF's own mask, in-plane skeletons (ours, release 6)")
    parser.add_argument("--agree", type=float, default=0.0,
                        help="weight of the hinge keeping the SDF < 0 where the occupancy (p > 0.5) and the label "
                             "agree (ours, round 7)")
    parser.add_argument("--skel-recall", type=float, default=0.0,
                        help="weight of the skeleton recall of the SDF interpolated to the fine truth's slices "
                             "(ours, round 9; needs a `vesselrecon phantoms ct` folder)")
    parser.add_argument("--wall", type=float, default=0.0,
                        help="weight of the truth->surface term: |f - f*| on the true wall, normalised by the wall's "
                             "voxels (ours, round 11)")
    parser.add_argument("--topology-val", action="store_true",
                        help="pick the best epoch by the mean of Dice and clDice at the best level (release 6)")
    parser.add_argument("--full-res-skip", action="store_true",
                        help="refiner output layer also sees the occupancy and its distance at full resolution")
    parser.add_argument("--calibrate-level", action="store_true",
                        help="validate at, and ship, the SDF level with the best validation-phantom Dice")
    parser.add_argument("--ablations", action="store_true",
                        help="train the full model with its ablations (occ, nogauss, sdfonly) on the same batches")
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
    from .losses import LossConfig
    from .train import TrainConfig, train_model, train_with_ablations

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(preset=args.preset, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                         batch_size=args.batch_size, crop=tuple(args.crop), slices=args.slices or None, lr=args.lr,
                         seed=args.seed, val_cases=args.val_cases, device=args.device,
                         occupancy_from=args.occupancy_from, init_from=args.init_from,
                         calibrate=args.calibrate_level, topology=args.topology_val,
                         model_config={**({"correction_mm": args.correction_mm} if args.correction_mm else {}),
                                       **({"full_res_skip": True} if args.full_res_skip else {})},
                         loss=LossConfig(lambda_sdf_dice=args.sdf_dice, lambda_cldice=args.cldice,
                                         lambda_agree=args.agree, lambda_skel=args.skel_recall,
                                         lambda_wall=args.wall))
    bar = TqdmProgress(f"train {METHOD} {args.preset}")
    if args.ablations:
        models, trainer = train_with_ablations(args.data, args.out, config, progress=bar, resume=not args.no_resume)
    else:
        model, trainer = train_model(args.data, args.out, config, progress=bar, resume=not args.no_resume)
        models = {args.preset: model}
    bar.close()
    print(json.dumps({"epochs": trainer.epoch, "best": trainer.best, "last": trainer.history[-1] if trainer.history else {}}))
    if args.ship:
        for preset, model in models.items():
            _ship(model, args, config, preset)
    return 0


def _ship(model, args, config, preset: str | None = None) -> None:
    from ..training import ship_model
    from .evaluation import evaluate_methods, load_eval_cases
    from .train import loss_config_for

    preset = preset or args.preset
    model_metrics = {}
    if args.heldout:
        cases = load_eval_cases(args.heldout)
        table = evaluate_methods(cases, {preset: model.cpu()}, "cpu")
        model_metrics = {"heldout": str(args.heldout), "cases": len(cases), **{k: round(v, 4) for k, v in table[preset].items()},
                         "classical": {k: round(v, 4) for k, v in table["classical"].items()}}
    entry = ship_model(
        model.cpu(), METHOD, preset, command="vesselrecon " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        config=dict(config.model_config) or None,
        data=args.data_command or str(args.data), seed=args.seed, metrics=model_metrics,
        input_spec={"channels": 1, "layout": "KJI thick-slice CT",
                    "intensity": "liver-relative: clip((v - liver median) / liver robust SD, -5, 10) / 5, -1 outside "
                                 "the liver ROI (vesselsdf.preprocess)",
                    "spacing_mm": "any (trained on 0.7 x 0.7 x 2.5-5 mm)",
                    "size": "any; padded to multiples of (2, 8); paper 16x512x512"},
        extra_training={"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch,
                        "batch_size": config.batch_size, "crop": list(config.crop), "slices": config.slices,
                        "lr": config.lr, "optimizer": "Adam", "augmentation": "in-plane flips",
                        "loss": loss_config_for(preset, config.loss).to_dict(),
                        "data_licence": "synthetic phantoms generated by this repository (no real data used)",
                        "note": "CPU-trained shipped model (1 thread, about 25 min wall on a shared 2-core machine): far "
                                "fewer steps than the paper's 100 whole-volume epochs, on crops of phantoms."})
    print(f"Shipped {entry.name} ({entry.sha256[:12]}) to {entry.directory}")


# ------------------------------------------------------------------------------------ run


def add_arguments(parser) -> None:
    parser.add_argument("input", help="CT volume (NIfTI/NRRD/MHA file or DICOM folder), HU or windowed/uint8")
    parser.add_argument("--out", default="out/vesselsdf", help="output folder")
    parser.add_argument("--roi", help="liver/ROI mask volume on the CT grid (optional; found automatically otherwise)")
    parser.add_argument("--reference", help="reference vessel labelmap on the CT grid: adds metrics")
    parser.add_argument("--model", default="lite", help="shipped preset or checkpoint path")
    parser.add_argument("--device", default="auto", help="auto|cuda|mps|cpu")
    parser.add_argument("--no-window", action="store_true",
                        help="accept input that is not in HU (windowed/uint8; detected automatically anyway)")
    parser.add_argument("--fine-slice-mm", type=float, default=None,
                        help="also write the vessel mask resampled to this slice spacing (mm), e.g. the original "
                             "thin slices, as <stem>_vessels_fine.nii.gz")
    parser.add_argument("--occupancy", action="store_true", help="also write the occupancy probability")
    parser.add_argument("--factor", type=int, default=None, help="sub-slices per slice gap when meshing")
    parser.add_argument("--min-component-mm3", type=float, default=0.0,
                        help="drop surface pieces enclosing less volume (mm^3); 0 keeps all")


def _write_like(array, reference_image, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference_image)
    sitk.WriteImage(image, str(path), True)


_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def input_stem(path) -> str:
    """The input's name without its volume extension only (``a.b.nii.gz`` -> ``a.b``; folders keep their name)."""
    name = Path(path).name or Path(path).resolve().name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name


def fine_slices(image, slice_mm: float) -> int:
    """How many slices ``slice_mm`` apart span the CT ``image`` (the ``--fine-slice-mm`` grid), checked before any
    compute: a positive spacing whose grid fits the voxel budget."""
    from ..errors import check_number, check_voxel_budget

    check_number(slice_mm, "--fine-slice-mm", 0, low_open=True, hint="Give the thin-slice spacing in mm, e.g. 1.6.")
    count = int(np.floor((image.GetSize()[2] - 1) * float(image.GetSpacing()[2]) / slice_mm + 1e-6)) + 1
    check_voxel_budget((count, image.GetSize()[1], image.GetSize()[0]), f"--fine-slice-mm {slice_mm:g}",
                       hint="Give a slice spacing nearer the CT's.")
    return count


def _write_fine_mask(recon, image, slice_mm: float, count: int, path: Path) -> None:
    """The vessel mask interpolated (through the SDF) onto ``count`` slices ``slice_mm`` apart (:func:`fine_slices`),
    same in-plane grid."""
    import SimpleITK as sitk

    from ..mrml import LPS_TO_RAS, ijk_to_ras_matrix

    direction = np.array(image.GetDirection()).reshape(3, 3)
    source = LPS_TO_RAS @ ijk_to_ras_matrix(image.GetSpacing(), image.GetOrigin(), direction)
    dz = float(image.GetSpacing()[2])
    target = source.copy()
    target[:3, 2] *= slice_mm / dz
    mask = recon.mask_on_grid(source, target, (count, image.GetSize()[1], image.GetSize()[0]))
    fine = sitk.GetImageFromArray(mask)
    fine.SetOrigin(image.GetOrigin())
    fine.SetDirection(image.GetDirection())
    fine.SetSpacing((image.GetSpacing()[0], image.GetSpacing()[1], slice_mm))
    sitk.WriteImage(fine, str(path), True)


def run(args) -> int:
    import csv

    from .. import meshes, mrml, runtime
    from ..progress import TqdmProgress
    from ..volume_io import read_image
    from .logic import VesselSDFLogic

    from .. import atomic
    from ..device import keep_freed_memory

    keep_freed_memory(HEAP_MMAP_MB)  # a command-line process only: Slicer's own heap policy is left alone
    final = atomic.check_output_folder(args.out)   # made by staging, once the outputs exist
    import SimpleITK as sitk

    from . import realdata
    from .preprocess import looks_like_hu, roi_cm3

    scene = runtime.new_scene()
    image = read_image(args.input)
    realdata.check_not_lvsd_slab(sitk.GetArrayViewFromImage(image), args.input)
    name = input_stem(args.input)
    ct = mrml.sitk_to_volume(image, name, scene=scene)
    fine_count = fine_slices(image, args.fine_slice_mm) if args.fine_slice_mm is not None else None
    hounsfield = not args.no_window and looks_like_hu(sitk.GetArrayViewFromImage(image))
    if not args.no_window and not hounsfield:
        print(f"{args.input}: not in Hounsfield units (windowed or uint8): mapping it to HU-like values "
              "through the liver statistics", file=sys.stderr)
    roi = mrml.sitk_to_volume(read_image(args.roi), f"{name} ROI", scene=scene, labelmap=True) if args.roi else None
    reference = (mrml.sitk_to_volume(read_image(args.reference), f"{name} reference", scene=scene, labelmap=True)
                 if args.reference else None)
    bar = TqdmProgress(f"{METHOD} {name}")
    result = VesselSDFLogic(scene).process(
        ct, roiMask=roi, model=args.model, device=args.device, portalVenousWindow=hounsfield,
        createOccupancy=args.occupancy, throughPlaneFactor=args.factor or 0,
        minComponentMm3=args.min_component_mm3, referenceSegmentation=reference, progress=bar)
    bar.close()
    recon = result.reconstruction
    spacing = recon.spacing
    roi_volume = roi_cm3(recon.canonical.roi, spacing) if recon.canonical else float("nan")
    print(f"spacing used: {spacing[0]:.4g} x {spacing[1]:.4g} x {spacing[2]:.4g} mm; liver ROI: "
          f"{recon.canonical.roi_source if recon.canonical else 'given'}, {roi_volume:.0f} cm³", file=sys.stderr)
    with atomic.staging(final, f"vesselsdf-{name}") as out:
        meshes.save_polydata_lps(recon.surface, out / f"{name}_vessels.vtp")
        meshes.save_polydata_lps(recon.surface, out / f"{name}_vessels.stl")
        _write_like(recon.mask.astype("uint8"), image, out / f"{name}_vessels.nii.gz")
        if fine_count is not None:
            _write_fine_mask(recon, image, args.fine_slice_mm, fine_count, out / f"{name}_vessels_fine.nii.gz")
        _write_like(recon.prediction.surface_field().astype("float32"), image, out / f"{name}_sdf.nii.gz")
        if args.occupancy and recon.prediction.occupancy is not None:
            _write_like(recon.prediction.occupancy.astype("float32"), image, out / f"{name}_occupancy.nii.gz")
        with open(out / f"{name}_measurements.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["metric", "value"])
            writer.writerows(sorted(result.metrics.items()))
        mrml.save_scene(out / f"{name}_vesselsdf.mrb", scene)
    out = final
    print(finite_json({"out": str(out), **{k: round(v, 4) for k, v in result.metrics.items()}}))
    return 0


# ------------------------------------------------------------------------------------ eval

ABLATIONS = ("lite", "lite-artwall12", "lite-gap11", "lite-wall11", "lite-skel9", "lite-motion8", "lite-fuse8",
             "lite-agree7", "lite-direct", "lite-dstart", "lite-occ", "lite-sdfonly", "lite-nogauss")


def add_eval_arguments(parser) -> None:
    parser.add_argument("--data", required=True, nargs="+",
                        help="one or more of: a `vesselrecon phantoms ct` folder, a 3D-IRCADb patient folder "
                             "(PATIENT_DICOM + MASKS_DICOM, folders or archives), LVSD slabs (*.nii.gz), an MSD "
                             "folder; several give one table each in the same run (same models)")
    parser.add_argument("--models", nargs="*", default=list(ABLATIONS),
                        help="shipped presets or checkpoint paths (default: ours and the ablation variants)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N cases")
    parser.add_argument("--keep-every", type=int, default=None,
                        help="real CT: keep every Nth slice as the input (default 3 for 3D-IRCADb, 1 for MSD)")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="LVSD: voxel spacing in mm instead of the files' 1 x 1 x 1 header")
    parser.add_argument("--no-roi", action="store_true", help="real CT: skip the rows with the reference liver ROI")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the table as JSON here")


def _row_key(name: str) -> str:
    """Table row of a model: a preset keeps its name, a checkpoint -> its file stem."""
    return Path(name).stem if Path(name).suffix else name


def _load_models(names, device) -> dict:
    from ..errors import CheckpointError
    from ..registry import load_model

    models = {}
    for name in names:
        try:
            models[_row_key(name)] = load_model(METHOD, name, str(device))[0]
        except CheckpointError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    return models


def evaluate(args) -> int:
    from ..cli import json_report
    from ..device import resolve_device

    write_json = json_report(args.json, indent=2)
    device = resolve_device(args.device)
    models = _load_models(args.models, device)
    folders = args.data if isinstance(args.data, (list, tuple)) else [args.data]
    tables = {str(folder): _evaluate_folder(folder, models, device, args) for folder in folders}
    write_json(tables[str(folders[0])] if len(folders) == 1 else tables)
    return 0


def _evaluate_folder(folder, models: dict, device, args) -> dict:
    from . import realdata
    from .evaluation import evaluate_methods, format_table, load_eval_cases

    layout = realdata.detect_layout(folder)
    if layout == "phantom":
        cases = load_eval_cases(folder, args.limit)
        table = evaluate_methods(cases, {_phantom_key(k): v for k, v in models.items()}, device)
        print(f"VesselSDF on {len(cases)} held-out phantom cases of {folder}")
        print(format_table(table), flush=True)
        return table
    if layout == "ircadb":
        cases = realdata.read_ircadb(folder, args.keep_every or 3)
    elif layout == "lvsd":
        cases = realdata.read_lvsd(folder, tuple(args.spacing) if args.spacing else None)[:args.limit]
    else:
        cases = realdata.read_msd(folder, args.keep_every or 1, args.limit)
    table = realdata.evaluate_real(cases, models, device, with_roi=not args.no_roi)
    spacing = np.linalg.norm(cases[0].ijk_to_ras[:3, :3], axis=0)
    print(f"VesselSDF on {len(cases)} real {layout} case(s) of {folder} (input spacing "
          f"{spacing[0]:.3g} x {spacing[1]:.3g} x {spacing[2]:.3g} mm; {cases[0].notes})")
    print(realdata.format_real_table(table), flush=True)
    return table


def _phantom_key(name: str) -> str:
    """Phantom table rows: ``lite`` -> ours, ``lite-occ`` -> ``occ``, checkpoints by stem."""
    return name.split("-", 1)[1] if name.startswith(("lite-", "paper-")) else name


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

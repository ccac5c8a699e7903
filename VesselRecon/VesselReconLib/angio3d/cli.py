"""``vesselrecon angio3d`` / ``train angio3d`` / ``eval angio3d`` / ``bench angio3d`` and the demo hook."""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from .. import DEVICE_CHOICES
from ..errors import InputError

log = logging.getLogger(__name__)
DEMO_SEED = 20230418
NODIFFREND = "angio3d-nodiffrend-lite"


# ------------------------------------------------------------------ run


NEGATIVE_VALUES = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+(,[-\d.eE+]*)+$")


def allow_negative_lists(parser) -> None:
    """Let option values that start with a minus sign and hold a comma list (``--geometry-a -27.7,0,...``:
    RAO/CAU angles are negative) be read as values, not as unknown options."""
    parser._negative_number_matcher = NEGATIVE_VALUES
    parser._has_negative_number_optionals = []


def add_arguments(parser) -> None:
    allow_negative_lists(parser)
    parser.add_argument("--case", help="an xray phantom case folder (images, geometry.json with SOI points)")
    parser.add_argument("--view-a", help="view A: XA DICOM (multi-frame) or a 2D image (PNG, TIFF, ...)")
    parser.add_argument("--view-b", help="view B image")
    parser.add_argument("--frame-a", type=int, default=None,
                        help="frame of view A (default: the DICOM representative frame, else the frame of maximal "
                             "vessel contrast)")
    parser.add_argument("--frame-b", type=int, default=None, help="frame of view B (default as for view A)")
    parser.add_argument("--points-a", help="SOI pixels of view A as 'col,row col,row ...' (start end per branch)")
    parser.add_argument("--points-b", help="SOI pixels of view B, same order")
    parser.add_argument("--geometry-a", help="'primary,secondary,SID,SOD,pixel_mm' for view A (else from DICOM); "
                        "negative angles (RAO, CAU) work as --geometry-a=-27.7,... or --geometry-a -27.7,...")
    parser.add_argument("--geometry-b", help="same for view B")
    parser.add_argument("--out", default="out/angio3d", help="output folder")
    parser.add_argument("--model", default="lite", help="shipped preset (lite) or checkpoint path")
    parser.add_argument("--device", default="auto", help="|".join(DEVICE_CHOICES))
    parser.add_argument("--segmenter", default="net", choices=("net", "frangi"))
    parser.add_argument("--no-refine", action="store_true", help="skip surface refinement ('(-) SR')")
    parser.add_argument("--radius-fusion", default="lesion", choices=("lesion", "mean", "min"),
                        help="mesh radii from the two views: mean except where one view is overlapped or floored "
                             "(lesion, default), plain mean (paper) or minimum; QCA measures each view along its "
                             "own path and reports the view that shows the tighter lesion")
    parser.add_argument("--qca-calibrator", action="store_true",
                        help="correct the main branch's %% stenosis with the QCA calibrator (angio3d-qca-calibrator; "
                             "trained on phantoms whose lesions are all 30-90 %%: it pulls mild or absent lesions "
                             "towards 30 %%, so it is off by default and leaves a reading below 30 %% as read; "
                             "qca.json keeps the reading as percent_diameter_stenosis_raw)")
    parser.add_argument("--qca-radius", default="regressor", choices=("regressor", "profile"),
                        help="QCA radii from the shipped lumen regressor refined by the strip reader over each "
                             "view's whole strip, then (main branch) read from both views by the two-view fusion "
                             "(default, all trained on phantoms; qca.json's radius_fusion names the reading) or the "
                             "model fit of the lumen's projection (profile)")


def _read_view(path: str):
    """Frames, geometry (None for non-DICOM) and representative frame (1-based or None) of one view file."""
    from .dicom_io import read_xa, representative_frame

    if Path(path).suffix.lower() in (".dcm", ".dicom", "") or _is_dicom(path):
        return (*read_xa(path)[:2], representative_frame(path))
    import SimpleITK as sitk

    from ..errors import squeeze_to_2d

    if not Path(path).is_file():
        raise InputError(f"Image {path} does not exist.")
    from ..volume_io import read_image

    array = sitk.GetArrayFromImage(read_image(path, "an XA DICOM or a 2D image (PNG, TIFF, JPEG) of the view"))
    return squeeze_to_2d(array, Path(path).name)[None].astype(np.float32), None, None


def _is_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _points(text: str | None, name: str) -> np.ndarray:
    if not text:
        raise InputError(f"Give --points-{name}: 'col,row col,row' (start and end of each branch).")
    try:
        values = np.array([[float(v) for v in pair.split(",")] for pair in text.split()], float)
    except ValueError as exc:
        raise InputError(f"--points-{name} must look like '120,300 260,180'.") from exc
    if values.ndim != 2 or values.shape[1] != 2 or len(values) % 2:
        raise InputError(f"--points-{name} needs pairs of 'col,row' points, two per branch.")
    return values.reshape(-1, 2, 2)


def _geometry(text: str | None, fallback, shape, name: str):
    from .geometry import CArmGeometry

    if text:
        try:
            primary, secondary, sid, sod, spacing = (float(v) for v in text.split(","))
        except ValueError as exc:
            raise InputError(f"--geometry-{name} must be 'primary,secondary,SID,SOD,pixel_mm'.") from exc
        return CArmGeometry(primary, secondary, sid, sod, (spacing, spacing), shape[-2], shape[-1])
    if fallback is None:
        raise InputError(f"View {name.upper()} has no DICOM geometry: give --geometry-{name}.")
    return fallback


def _inputs(args):
    """(frames, geometry, pixels, frame) per view from --case or the explicit options."""
    if args.case:
        from ..phantoms.xray import load_case

        try:
            case = load_case(args.case)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"--case {args.case} is not a readable xray case folder (geometry.json, centerline.json "
                             f"and view_a.png ... as `vesselrecon phantoms xray` writes; {exc.__class__.__name__}: "
                             f"{exc}); for your own angiograms give --view-a/--view-b with their points.") from None
        return [(img[None], geo, np.array(pts), 0, None)
                for img, geo, pts in zip(case.images, case.geometries, case.soi_points)]
    if not (args.view_a and args.view_b):
        raise InputError("Give --case, or --view-a and --view-b with their SOI points.")
    views = []
    for name, path, frame, points, geometry in (("a", args.view_a, args.frame_a, args.points_a, args.geometry_a),
                                                ("b", args.view_b, args.frame_b, args.points_b, args.geometry_b)):
        frames, dicom_geometry, representative = _read_view(path)
        views.append((frames, _geometry(geometry, dicom_geometry, frames.shape, name), _points(points, name), frame,
                      representative))
    return views


def run(args) -> int:
    from .. import atomic, device, meshes, mrml, runtime
    from ..cli import finite_json
    from ..progress import TqdmProgress
    from .logic import Angio3DLogic

    device.keep_freed_memory()  # a command-line process only: Slicer's own heap policy is left alone
    views = _inputs(args)
    final = atomic.check_output_folder(args.out)   # made by staging, once the outputs exist
    scene = runtime.new_scene()
    logic = Angio3DLogic(scene)
    nodes = []
    frames_used = []
    for name, (frames, geometry, pixels, frame, representative) in zip("AB", views):
        volume = logic.add_view(frames, geometry, f"view {name}", representative)
        frame = logic.choose_frame(volume, frame)
        frames_used.append(frame)
        nodes += [volume, logic.add_points(pixels, volume, f"SOI points {name}", frame)]
    bar = TqdmProgress("angio3d")
    result = logic.process(nodes[0], nodes[2], nodes[1], nodes[3], frameA=frames_used[0], frameB=frames_used[1],
                           model=args.model, device=args.device, segmenter=args.segmenter,
                           refine=not args.no_refine, radiusFusion=args.radius_fusion, qcaRadius=args.qca_radius,
                           qcaCalibration=args.qca_calibrator, progress=bar)
    bar.close()
    with atomic.staging(final, "angio3d") as out:
        meshes.save_polydata_lps(result.outputModel.GetPolyData(), out / "mesh.vtp")
        meshes.save_polydata_lps(result.outputModel.GetPolyData(), out / "mesh.stl")
        reconstruction = result.reconstruction
        branches = [{"points_lps": b.refined_centerline()[0].round(4).tolist(),
                     "radii_mm": b.refined_centerline()[1].round(4).tolist()} for b in reconstruction.branches]
        (out / "centerline.json").write_text(json.dumps({"frame": "DICOM patient LPS (mm)", "branches": branches}), encoding="utf-8")
        summary = {"qca": logic.qca_rows(reconstruction), "epipolar_error_px": result.epipolarErrorPx,
                   "epipolar_error_before_px": result.epipolarErrorBeforePx, "frames": frames_used,
                   "qca_radius": args.qca_radius, "qca_calibrator": bool(args.qca_calibrator),
                   "quality": result.quality, "warnings": result.warnings, "timings_s": result.timings,
                   "frame_of_reference": "mesh.vtp and centerline.json: DICOM patient LPS (mm), marked in the files"}
        (out / "qca.json").write_text(finite_json(summary, indent=1), encoding="utf-8")
        from PIL import Image

        for index, (name, mask, silhouette) in enumerate(zip("ab", reconstruction.masks, reconstruction.silhouettes())):
            image = views[index][0][frames_used[index]]
            lines = [b.centerlines_2d[index].points for b in reconstruction.branches]
            Image.fromarray(overlay_rgb(image, mask, np.zeros_like(mask), lines)).save(out / f"segmentation_{name}.png")
            Image.fromarray(overlay_rgb(image, np.zeros_like(mask), silhouette > 0)).save(out / f"reprojection_{name}.png")
        mrml.save_scene(out / "angio3d.mrb", scene)
    out = final
    print(finite_json({"out": str(out), **summary["qca"][0], "epipolar_error_px": summary["epipolar_error_px"],
                      "frames": frames_used, "seconds": round(sum(result.timings.values()), 3),
                      "run_warnings": result.warnings}))  # "warnings" is the QCA row's own field
    for warning in result.warnings:
        log.warning("%s", warning)
    return 0


# ------------------------------------------------------------------ train


def add_train_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="xray dataset folder (vesselrecon phantoms xray --out ...)")
    parser.add_argument("--val", required=True, help="held-out xray dataset folder for validation and metrics")
    parser.add_argument("--out", default="out/angio3d-runs", help="checkpoint folder")
    parser.add_argument("--preset", default="lite", choices=("lite", "paper"))
    parser.add_argument("--seg-epochs", type=int, default=8)
    parser.add_argument("--sr-epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training cases")
    parser.add_argument("--init", default=None, help="start from a shipped model or checkpoint (fine-tuning); "
                        "with --sr-epochs 0 its surface refinement is kept as it is")
    parser.add_argument("--offset-scale", type=float, default=None,
                        help="SR output scale (normalised mesh units per unit of the last layer; presets: 0.01). "
                        "With --init the last layer is rescaled so the starting mesh is unchanged")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--ship", action="store_true", help="write the registry entries (angio3d-<preset> and "
                        "angio3d-<preset>-nodiffrend) into the models folder")


def train(args) -> int:
    import copy

    import torch

    from ..device import limit_cpu_threads
    from ..training import seed_everything, ship_model
    from . import train as training
    from .eval import evaluate_cases
    from .network import build_model

    limit_cpu_threads(args.threads)
    seed_everything(args.seed)
    out = Path(args.out)
    cases = training.load_cases(args.data, args.limit)
    val_cases = training.load_cases(args.val)
    from .. import registry

    net = build_model(args.preset)
    ablation = None
    if args.init:
        net = registry.load_model("angio3d", args.init, "cpu")[0].train()
        ablation = registry.load_model("angio3d", NODIFFREND, "cpu")[0] if args.sr_epochs == 0 else None
    config = {}
    if args.offset_scale is not None:
        config["offset_scale"] = args.offset_scale
        for model in (net, ablation):
            if model is not None:
                training.set_offset_scale(model, args.offset_scale)
    history = []
    if args.seg_epochs > 0:
        history = training.train_segmentation(net, cases, val_cases, out, args.seg_epochs, seed=args.seed)
    net.eval()
    if ablation is not None:               # keep the ablation's own SR, share the new segmenter
        ablation.segmenter.load_state_dict(net.segmenter.state_dict())
    else:
        ablation = copy.deepcopy(net)
    if args.sr_epochs > 0:
        samples, val_samples = training.sr_samples(net, cases), training.sr_samples(net, val_cases, float("inf"))
        history += training.train_refinement(net, samples, val_samples, out, args.sr_epochs, True, args.seed)
        history += training.train_refinement(ablation, samples, val_samples, out, args.sr_epochs, False, args.seed)
    net.eval(), ablation.eval()
    with torch.no_grad():
        table = evaluate_cases(val_cases, net, ablation)
    metrics = {row["method"]: {k: round(v, 4) for k, v in row.items() if k != "method"} for row in table}
    log.info("held-out: %s", json.dumps(metrics))
    if args.ship:
        command = "vesselrecon train angio3d " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        spec = {"views": 2, "image": "2D angiogram frame, any size (512x512 phantoms)", "crop": net.crop_size,
                "geometry": "DICOM XA C-arm angles, SID, SOD, ImagerPixelSpacing",
                "soi": "start/end pixel per branch per view", "vertices": 6000}
        data = {"train": f"vesselrecon phantoms xray --count {len(cases)} --seed {_dataset_seed(args.data)} "
                         f"--out {args.data}",
                "val": f"vesselrecon phantoms xray --count {len(val_cases)} --seed {_dataset_seed(args.val)} "
                       f"--out {args.val}"}
        for model, name, key in ((net, None, "3DAngioNet"), (ablation, NODIFFREND, "(-) DiffRend")):
            ship_model(model, "angio3d", args.preset, command=command, data=json.dumps(data), seed=args.seed,
                       metrics={"held_out": metrics[key], "held_out_cases": len(val_cases),
                                "baselines": {k: v for k, v in metrics.items() if k != key}},
                       input_spec=spec, name=name, config=config or None,
                       extra_training={"history_tail": history[-3:]})
    print(json.dumps({"held_out": metrics}))
    return 0


def _dataset_seed(folder) -> int | None:
    index = Path(folder) / "dataset.json"
    return json.loads(index.read_text(encoding="utf-8")).get("seed") if index.is_file() else None


# ------------------------------------------------------------------ eval


def add_eval_arguments(parser) -> None:
    parser.add_argument("--data", default=None, help="held-out xray dataset folder")
    parser.add_argument("--real-phantom", action="store_true",
                        help="the real 3D check: reconstruct the static phantom's branches seen in IM3 and IM4 and "
                             "compare them with the registered reference (needs --shared)")
    parser.add_argument("--floors", action="store_true",
                        help="what 2D centrelines could reach on the real phantom, per branch: the registered "
                             "reference's exact projections and the imaged vessels' centres, triangulated as the "
                             "pipeline does and point by point (needs --shared; about 15 s)")
    parser.add_argument("--shared", default=None, help="the shared data folder (default: ../shared from the repo)")
    parser.add_argument("--angle-noise", type=float, default=0.0,
                        help="degrees of random error added to view B's recorded angles (the calibration corrects it)")
    parser.add_argument("--model", default="lite", help="shipped preset or checkpoint")
    parser.add_argument("--ablation", default=NODIFFREND, help="'(-) DiffRend' model (name or checkpoint); '' skips")
    parser.add_argument("--device", default="cpu", help="|".join(DEVICE_CHOICES))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", help="also write the tables (phantom rows, real-phantom report) as JSON to this file")


def evaluate(args) -> int:
    import torch

    from .. import registry
    from ..cli import finite_json, json_report
    from ..device import limit_cpu_threads
    from .eval import evaluate_cases, format_table
    from .train import load_cases

    write_json = json_report(args.json)
    report = {}
    limit_cpu_threads(1)
    if not (args.data or args.real_phantom or args.floors):
        raise InputError("Give --data (a held-out xray phantom folder), --real-phantom and/or --floors.")
    if args.data or args.real_phantom:     # the floors use no network
        net = registry.load_model("angio3d", "angio3d-lite" if args.model == "lite" else args.model, args.device)[0]
        ablation = registry.load_model("angio3d", args.ablation, args.device)[0] if args.ablation else None
    if args.data:
        cases = load_cases(args.data, args.limit)
        with torch.no_grad():
            rows = evaluate_cases(cases, net, ablation, angle_noise=args.angle_noise)
        report.update(data=str(args.data), cases=len(cases), rows=rows)
        print(f"3DAngioNet on {len(cases)} held-out cases ({args.data}); F-score at tau = 1 mm; calibration on"
              f"{f', view B angles perturbed by {args.angle_noise} deg' if args.angle_noise else ''}")
        print(format_table(rows))
    if args.real_phantom:
        from .eval import variants
        from .real_phantom import evaluate_real_phantom, format_real

        with torch.no_grad():
            real = evaluate_real_phantom(shared_folder(args.shared), variants(net, ablation))
        print(format_real(real))
        print(finite_json(real))
        report["real_phantom"] = real
    if args.floors:
        from .real_phantom import evaluate_floors, format_floors

        floors = evaluate_floors(shared_folder(args.shared))
        print(format_floors(floors))
        report["real_phantom_floors"] = floors
    write_json(report)
    return 0


def shared_folder(given: str | None) -> Path:
    """The shared data folder holding the static phantom (``given``, else ../shared beside the repository)."""
    shared = Path(given) if given else Path(__file__).resolve().parents[3].parent / "shared"
    if not (shared / "datasets" / "xa_static_phantom").is_dir():
        raise InputError(f"No static phantom data under {shared}: give --shared (the folder holding "
                         "datasets/xa_static_phantom and samples/xa-phantom).")
    return shared


# ------------------------------------------------------------------ bench


def add_bench_arguments(parser) -> None:
    parser.add_argument("--device", default="auto", help="|".join(DEVICE_CHOICES))
    parser.add_argument("--preset", default="lite", choices=("lite", "paper"),
                        help="preset; its shipped weights are used when they exist, else an untrained network")
    parser.add_argument("--model", default=None, help="checkpoint to time instead of the preset's weights")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids oversubscription on shared machines)")


def bench(args) -> int:
    from ..device import keep_freed_memory, limit_cpu_threads
    from .bench import print_bench

    limit_cpu_threads(args.threads)
    keep_freed_memory()  # the command line's heap policy (cli.run) for every timed call
    print_bench(device_name=args.device, model=args.model or args.preset, preset=args.preset, repeats=args.repeats)
    return 0


# ------------------------------------------------------------------ demo


def overlay_rgb(image: np.ndarray, segmentation: np.ndarray, silhouette: np.ndarray,
                lines: list | None = None) -> np.ndarray:
    """An angiogram (grey) with the 2D segmentation outline (yellow), the mesh reprojection (red tint)
    and 2D centrelines (cyan)."""
    from scipy import ndimage

    segmentation, silhouette = np.asarray(segmentation, bool), np.asarray(silhouette, bool)
    low, high = np.percentile(image, (1, 99))
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, -1)
    rgb[silhouette] = 0.55 * rgb[silhouette] + 0.45 * np.array([1.0, 0.15, 0.1])
    outline = segmentation & ~ndimage.binary_erosion(segmentation)
    rgb[outline] = (1.0, 0.85, 0.1)
    for line in lines or []:
        pix = np.round(np.asarray(line)).astype(int)
        keep = (pix[:, 0] >= 0) & (pix[:, 0] < image.shape[1]) & (pix[:, 1] >= 0) & (pix[:, 1] < image.shape[0])
        rgb[pix[keep, 1], pix[keep, 0]] = (0.1, 0.9, 1.0)
    return (255 * rgb).astype(np.uint8)


def broadside_view(polydata) -> tuple[float, float]:
    """(azimuth, elevation) of the render camera that looks along the mesh's thinnest principal axis."""
    from vtkmodules.vtkRenderingCore import vtkCamera

    from ..meshes import points_of

    points = points_of(polydata)
    axis = np.linalg.svd(points - points.mean(0), full_matrices=False)[2][-1]
    best, score = (30.0, 20.0), -1.0
    for azimuth in range(0, 360, 15):
        for elevation in range(-60, 61, 15):
            camera = vtkCamera()
            camera.SetPosition(0, -1, 0)
            camera.SetFocalPoint(0, 0, 0)
            camera.SetViewUp(0, 0, 1)
            camera.Azimuth(azimuth)
            camera.Elevation(elevation)
            alignment = abs(float(np.dot(camera.GetDirectionOfProjection(), axis)))
            if alignment > score:
                best, score = (float(azimuth), float(elevation)), alignment
    return best


def demo(context) -> None:
    """Two-view phantom -> mesh, centreline, QCA and reprojections in the demo scene, plus a render."""
    from .. import mrml, render
    from .logic import Angio3DLogic

    logic = Angio3DLogic(context.scene)
    sample = logic.load_sample(seed=DEMO_SEED)
    result = logic.process(sample.viewA, sample.viewB, sample.pointsA, sample.pointsB, device=context.device)
    table = logic.evaluate(result.outputModel, sample.referenceModel,
                           reprojections=[result.outputReprojectionA, result.outputReprojectionB],
                           referenceMasks=[sample.referenceMaskA, sample.referenceMaskB])
    mesh = result.outputModel.GetPolyData()
    render.render_meshes([render.Layer(mesh, color=(0.85, 0.25, 0.2)),
                          render.Layer(sample.referenceModel.GetPolyData(), color=(0.3, 0.8, 0.3), opacity=0.35)],
                         context.render_path("angio3d_mesh"), view=broadside_view(mesh))
    reconstruction = result.reconstruction
    image = mrml.volume_to_array(sample.viewA)[0][0]
    overlay = overlay_rgb(image, reconstruction.masks[0], reconstruction.silhouettes()[0] > 0)
    from PIL import Image

    Image.fromarray(overlay).save(context.render_path("angio3d_reprojection"))
    metrics = {row["metric"]: round(float(row["value"]), 4) for row in mrml.table_to_rows(table)}
    context.summary["angio3d"] = {**metrics, "percent_diameter_stenosis": round(result.qca["percent_diameter_stenosis"], 2),
                                  "true_percent_diameter_stenosis": round(sample.stenosisPercent, 2),
                                  "epipolar_error_px": result.epipolarErrorPx}

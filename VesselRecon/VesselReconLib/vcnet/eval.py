"""``vesselrecon eval vcnet``: the paper's comparison on a held-out MSD-style set.

Rows: VC-Net; VC-Net's default call (no mask: whole-volume intensity statistics, predictions
everywhere); the same 3D U-Net without the MIP stream (the paper's main ablation); the 2D U-Net on
MIPs alone (probabilities unprojected to 3D); a slice-wise 2D U-Net (the paper's 2D baseline);
average and max fusion of the separate 2D and 3D U-Nets (the paper's supplementary table; voxels
that receive no 2D value count as 0); and the classical Frangi (the paper's) and Sato vesselness
filters, thresholds calibrated on separate phantoms. Networks run through the whole pipeline
(:func:`..inference.segment`: normalisation, resampling to the model spacing and back, windows, the
boundary refined on the input grid) and are scored on its labels (the fusions on thresholded averages);
except for the default-call row they get the brain mask when the dataset has one. Metrics: Dice,
precision, recall, FPR (means over cases), predictions restricted to the brain mask when there is one
(not for the default call).
"""

from __future__ import annotations

import json
import logging

import numpy as np

from .. import metrics, registry
from ..device import resolve_device
from ..errors import CheckpointError
from .data import Case, load_cases
from .defaults import DEFAULT_MODEL_NAME
from .inference import segment

log = logging.getLogger(__name__)
THRESHOLDS = np.linspace(0.05, 0.6, 23)
SATO_SIGMAS = (0.5, 1.0, 1.5)
FRANGI_SIGMAS = (0.5, 1.0, 1.5, 2.0)


def _masked(prob: np.ndarray, case: Case) -> np.ndarray:
    return prob * (case.mask > 0) if case.mask is not None else prob


def sato_response(case: Case) -> np.ndarray:
    """Sato tubeness of the (already normalised) case image, scaled to [0, 1] inside the mask."""
    from skimage.filters import sato

    response = _masked(sato(case.image, sigmas=SATO_SIGMAS, black_ridges=False), case)
    return response / max(float(response.max()), 1e-12)


def frangi_response(case: Case) -> np.ndarray:
    """Frangi vesselness (bright tubes) of the normalised case image, scaled to [0, 1] inside the mask."""
    from skimage.filters import frangi

    response = _masked(frangi(case.image, sigmas=FRANGI_SIGMAS, black_ridges=False), case)
    return response / max(float(response.max()), 1e-12)


def calibrate_vesselness(cases: list[Case], filter_fn=sato_response) -> float:
    """Threshold of a normalised vesselness response maximising the mean Dice on calibration cases."""
    responses = [filter_fn(c) for c in cases]
    scores = [np.mean([metrics.dice(r >= t, c.label) for r, c in zip(responses, cases)]) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(scores))])


def calibration_cases(kind: str, dark: bool, count: int = 2, seed: int = 999, crop=None) -> list[Case]:
    """Phantom crops (seeds disjoint from training and test) for the classical threshold."""
    from ..phantoms.mra import TRAIN_CROP, render_mra
    from .data import normalize

    out = []
    for index in range(count):
        p = render_mra(kind, seed=seed * 1000 + index, crop=crop or TRAIN_CROP)
        out.append(Case(f"calibration_{index}", normalize(p.image, p.brain_mask, dark), p.label, p.brain_mask,
                        p.spacing))
    return out


def _load(name: str, device, directory=None):
    try:
        return registry.load_model("vcnet", name, str(device), directory)[0]
    except CheckpointError as exc:
        log.warning("skipping %s: %s", name, exc)
        return None


def evaluate_cases(cases: list[Case], model: str = DEFAULT_MODEL_NAME, ablation3d: str = "vcnet-unet3d-lite",
                   stream2d: str = "vcnet-unet2d-lite", device: str = "auto", overlap: float = 0.0,
                   vesselness_threshold: float | None = None, kind: str = "mra", dark: bool = False,
                   registry_dir=None, slice2d: str = "vcnet-slice2d-lite", frangi_threshold: float | None = None) -> dict:
    """Mean metrics per method over ``cases``: ``{method: {dice, precision, recall, fpr}}``.

    Models are registry names (or checkpoint paths) looked up in ``registry_dir`` (default: shipped).
    Cases need their raw image (``load_cases(..., keep_raw=True)``) for the whole-pipeline calls.
    """
    torch_device = resolve_device(device)
    nets = {"vcnet": _load(model, torch_device, registry_dir), "unet3d": _load(ablation3d, torch_device, registry_dir),
            "unet2d": _load(stream2d, torch_device, registry_dir), "slice2d": _load(slice2d, torch_device, registry_dir)}
    calibration = None
    if vesselness_threshold is None or frangi_threshold is None:
        calibration = calibration_cases(kind, dark)
    sato_t = vesselness_threshold if vesselness_threshold is not None else calibrate_vesselness(calibration)
    frangi_t = frangi_threshold if frangi_threshold is not None else calibrate_vesselness(calibration, frangi_response)
    rows: dict[str, list[dict]] = {}

    def add(method: str, pred: np.ndarray, case: Case) -> None:
        rows.setdefault(method, []).append(metrics.segmentation_report(pred, case.label))

    def run(net, case: Case, mask):
        raw = case.raw if case.raw is not None else case.image
        return segment(raw, case.spacing, net, mask, dark, overlap, device=torch_device)

    for case in cases:
        results = {k: run(net, case, case.mask) for k, net in nets.items() if net is not None}
        probs = {k: r.probability for k, r in results.items()}
        for key, label in (("vcnet", "VC-Net"), ("unet3d", "3D U-Net (no MIP stream)"), ("unet2d", "2D U-Net on MIPs"),
                           ("slice2d", "2D U-Net, slice by slice")):
            if key in results:
                add(label, results[key].labels, case)  # the pipeline's labels (boundary refined on the input grid)
        if nets["vcnet"] is not None:
            add("VC-Net, default call (no mask)", run(nets["vcnet"], case, None).labels, case)
        if "unet3d" in probs and "unet2d" in probs:
            add("Average fusion 2D+3D", (probs["unet3d"] + probs["unet2d"]) / 2 >= 0.5, case)
            add("Max fusion 2D+3D", np.maximum(probs["unet3d"], probs["unet2d"]) >= 0.5, case)
        add(f"Frangi vesselness (t={frangi_t:.3f})", frangi_response(case) >= frangi_t, case)
        add(f"Sato vesselness (t={sato_t:.3f})", sato_response(case) >= sato_t, case)
    return {method: {k: float(np.mean([r[k] for r in reports])) for k in ("dice", "precision", "recall", "fpr")}
            for method, reports in rows.items()}


def format_table(results: dict) -> str:
    lines = [f"{'method':36} {'Dice':>7} {'Precision':>9} {'Recall':>7} {'FPR':>9}"]
    for method, m in results.items():
        lines.append(f"{method:36} {m['dice']:7.4f} {m['precision']:9.4f} {m['recall']:7.4f} {m['fpr']:9.2e}")
    return "\n".join(lines)


def evaluate(args) -> int:
    from ..cli import json_report

    write_json = json_report(args.json)
    cases = load_cases(args.data, dark=args.dark, limit=args.limit, keep_raw=True)
    kind = args.kind or ("swi" if args.dark else "mra")
    results = evaluate_cases(cases, args.model, args.ablation, args.stream2d, args.device, args.overlap,
                             args.vesselness_threshold, kind, args.dark, args.registry, args.slice2d,
                             args.frangi_threshold)
    print(f"VC-Net evaluation on {len(cases)} held-out cases from {args.data}")
    print(format_table(results))
    print(json.dumps({"cases": len(cases), "results": results}))
    write_json({"data": str(args.data), "cases": len(cases), "results": results})
    return 0

"""Per-case QCA calibrator (round 14): a learned correction of the main branch's % diameter stenosis.

The shipped reading (each view's radii read by the two-view fusion, each view's % by the per-view rule, the tighter
view reported) errs in two known ways: sub-pixel throats are read too wide in both views, and mild lesions are read
at a dip elsewhere. Both leave traces in the two views' readings -- how deep the other view narrows at the reported
place, how far apart the two narrowest points lie, how noisy the reference ends are, how many pixels the vessel
spans. :class:`QCACalibrator` (an ensemble of small MLPs) maps 19 such features (:data:`FEATURES`) to a correction in
points, trained with an L1 loss against the phantoms' true % on phantoms that trained neither the strip reader nor
the fusion (``python -m VesselReconLib.angio3d.calibrator``).

Shipped in round 14 as an **opt-in** (``angio3d-qca-calibrator``; ``reconstruct(..., qca_calibration=True)``, the
Logic's ``qcaCalibration``, ``vesselrecon angio3d --qca-calibrator``; :func:`~.pipeline.view_qca` then applies it to a
main branch read by the fusion). It is off by default because every training phantom has a 30-90 % lesion: it learned
that prior, and on the real static phantom it moved a 4 % reading to 31 %. The recipe (19 features, 5 MLPs, 60 epochs, seed 0) was chosen on 18501-19500 with a model trained on 3800
phantoms (4.55 against the reading's 5.11); that model failed two fresh checks, each read once under a rule written
first (19501-20500: 5.21 -> 4.69, the median clause; 20501-21500: 4.89 -> 4.59, +0.30 with its 95 % interval down to
+0.03, the gain clause). The same recipe on all 6800 phantoms read so far (7001-7900, 13001-13600, 15601-16000,
16601-21500; nothing chosen) passed the third on 21501-22500: 4.96 / -0.49 / median 2.95 -> 4.60 / -0.47 / 2.96 (gain
+0.36, 95 % +0.14 ... +0.59; cases off by > 15 points 58 -> 48) and shipped. The shipped model is its successor (v2),
the same recipe on 11800 phantoms (16601-26500 in place of 16601-21500), which beat it on fresh 26501-27500 under a
rule written first: 4.92 (reading) -> 4.30 (6800) -> 4.21 / -0.40 / 2.63 (v2; +0.09 over the 6800, 95 % +0.01 ... +0.17).

Round 15: on fresh phantoms with 0-30 % lesions (``make_case(seed, lesion_range=(0, 30))``) v2 read +21 points too
high; it is now not applied to a reading below :data:`TRAINED_FROM_PERCENT` (fresh 104001-104500: 8.61 against the
reading's 8.89; fresh 28501-29000, 30-90 %: 4.76 against 5.45). The recipe retrained with 3000 mild phantoms was worse
than v2 on 30-90 % lesions (5.02 against 4.79 on 27501-28500) and was not shipped. :func:`collect` (``--collect``)
writes the training cache.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..phantoms.xray import LESION_RANGE

FEATURES = ("p3_R", "p3_O", "p1_R", "p1_O", "other_here", "apart_mm", "length_mm", "width_R", "width_O", "second_R",
            "second_O", "noise_R", "noise_O", "refpx_R", "refpx_O", "floored_R", "floored_O", "path_off", "rerouted")
END_FRACTION = 0.15
CALIBRATOR_NAME = "angio3d-qca-calibrator"
TRAINED_FROM_PERCENT = LESION_RANGE[0]     # its training phantoms' lesions start here (phantoms.xray.LESION_RANGE)


def ratio_profile(view: dict, radii_mm: np.ndarray, median: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A view's diameter over its interpolated reference (the QCA rule's, :func:`~.pipeline.quantitative_coronary_analysis`)
    after a running median of ``median`` samples; the reference (mm); the noise of the reference ends (median
    absolute step over the reference's mean)."""
    from .pipeline import interpolated_reference

    d = 2 * ndimage.median_filter(radii_mm, median, mode="nearest")
    n = max(2, int(round(END_FRACTION * len(d))))
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(view["pixels"], axis=0), axis=1))]
    reference, first, last = interpolated_reference(s, d, ~np.asarray(view["floored"], bool), n)
    noise = np.median(np.abs(np.diff(d[np.sort(np.r_[first, last])]))) / max(reference.mean(), 1e-9)
    return d / reference, reference, float(noise)


def view_features(view: dict, radii_mm: np.ndarray) -> dict:
    """One view's features: its % by the per-view rule and with no running median, its narrowest sample ``k``,
    the dip's width at half depth (samples), the second-deepest dip 5 samples away (%), the ends' noise, the
    reference in px, the floored share and its diameter-ratio profile ``rho``."""
    from .pipeline import QCA_MEDIAN_SAMPLES, quantitative_coronary_analysis

    smooth = ndimage.median_filter(radii_mm, QCA_MEDIAN_SAMPLES, mode="nearest")
    percent = quantitative_coronary_analysis(view["pixels"], smooth, valid=~np.asarray(view["floored"], bool))
    rho3, reference, noise = ratio_profile(view, radii_mm, 3)
    rho1 = ratio_profile(view, radii_mm, 1)[0]
    n = len(rho3)
    m = max(2, int(round(END_FRACTION * n)))
    k = m + int(np.argmin(rho3[m:n - m]))
    depth = 1 - rho3[k]
    away = np.ones(n, bool)
    away[:m] = away[n - m:] = False
    away[max(0, k - 5):k + 6] = False
    return {"p3": percent["percent_diameter_stenosis"], "p1": 100 * (1 - rho1[m:n - m].min()), "k": k,
            "width": int((rho3[m:n - m] < 1 - depth / 2).sum()),
            "second": 100 * (1 - rho3[away].min()) if away.any() else 0.0, "noise": noise,
            "ref_px": reference.mean() / float(np.mean(view["mm_per_px"])),
            "floored": float(np.mean(view["floored"])), "rho": rho3}


def case_features(own: list[dict], qca: dict, rerouted: bool = False) -> np.ndarray:
    """:data:`FEATURES` of a main branch: ``own`` its two views' QCA samples with the radii read (mm), ``qca`` the
    reading (:func:`~.pipeline.own_view_qca` with the flags), ``rerouted`` whether the two paths were re-routed."""
    views = [view_features(view, view["radii"]) for view in own]
    reported = int(np.argmax([v["p3"] for v in views]))
    r, o = views[reported], views[1 - reported]
    grid = np.arange(len(r["rho"]), dtype=float)
    other = np.interp(grid, np.asarray(own[1 - reported]["a_index"], float), o["rho"])
    at = int(round(own[reported]["a_index"][r["k"]]))
    other_here = 100 * (1 - other[max(0, at - 2):at + 3].min())
    return np.array([r["p3"], o["p3"], r["p1"], o["p1"], other_here, qca["mld_apart_mm"], qca["length_mm"],
                     r["width"], o["width"], r["second"], o["second"], r["noise"], o["noise"], r["ref_px"], o["ref_px"],
                     r["floored"], o["floored"], float(bool(qca.get("path_off_vessel", False))), float(bool(rerouted))])


class QCACalibrator(nn.Module):
    """:data:`FEATURES` (B, 19) -> correction of the reported % (points): the mean of ``members`` MLPs (two hidden
    layers of ``width``) over the standardised features; zero-initialised outputs start at "no correction"."""

    def __init__(self, width: int = 32, members: int = 5, n_features: int = len(FEATURES)):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.members = nn.ModuleList(nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, width),
                                                   nn.ReLU(), nn.Linear(width, 1)) for _ in range(members))
        for member in self.members:
            nn.init.zeros_(member[-1].weight)
            nn.init.zeros_(member[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return torch.stack([member(z)[:, 0] for member in self.members]).mean(0)

    def correct(self, features: np.ndarray) -> np.ndarray:
        """Corrections (points) of a (B, 19) feature array."""
        with torch.no_grad():
            return self(torch.as_tensor(np.atleast_2d(features), dtype=torch.float32)).numpy().astype(float)


@lru_cache(maxsize=1)
def shipped_calibrator() -> QCACalibrator | None:
    """The shipped ``angio3d-qca-calibrator`` (registry, sha256 checked), or ``None`` if it is not installed."""
    from .. import registry

    return registry.load_installed("angio3d", CALIBRATOR_NAME)


def calibrate(qca: dict, own: list[dict], rerouted: bool = False, model: QCACalibrator | None = None) -> dict:
    """The main branch's QCA with the calibrated % (``percent_diameter_stenosis``; the reading kept as
    ``percent_diameter_stenosis_raw``, and ``mld_mm`` moved to match it, the measured one kept as ``mld_mm_raw``), and
    ``percent_calibration`` naming the model; unchanged when no calibrator is installed, and with a warning when a
    feature is not finite or the reading is below :data:`TRAINED_FROM_PERCENT` (outside what it learned). The flags
    are not changed."""
    model = shipped_calibrator() if model is None else model
    if model is None:
        return qca
    features = case_features(own, qca, rerouted)
    if not np.isfinite(features).all():     # a degenerate reading: report it as read, and say so
        return {**qca, "warnings": [*qca["warnings"], "the QCA calibrator was skipped (a reading it cannot use: "
                                    f"{', '.join(n for n, v in zip(FEATURES, features) if not np.isfinite(v))}); "
                                    "the % is the uncalibrated reading"]}
    raw = qca["percent_diameter_stenosis"]
    if raw < TRAINED_FROM_PERCENT:     # below the lesions it learned from: it would pull the reading towards them
        return {**qca, "warnings": [*qca["warnings"], f"the QCA calibrator was not applied: the reading ({raw:.0f} %) "
                                    f"is below the {TRAINED_FROM_PERCENT:.0f}-{LESION_RANGE[1]:.0f} % lesions it was "
                                    "trained on; the % is the uncalibrated reading"]}
    percent = float(raw + model.correct(features)[0])
    return {**qca, "percent_diameter_stenosis_raw": raw, "percent_diameter_stenosis": percent,
            "mld_mm_raw": qca["mld_mm"], "mld_mm": qca["reference_diameter_mm"] * (1 - percent / 100),
            "percent_calibration": CALIBRATOR_NAME}


# ---------------------------------------------------------------------------------------------
# training on cached phantom cases (the pipeline's QCA samples, as ``fusion.cached_cases`` reads them)
# ---------------------------------------------------------------------------------------------


def collect(seeds, net, lesion_range: tuple[float, float] | None = None, log=print) -> list[dict]:
    """Training cases for the calibrator: per phantom (``make_case(seed, lesion_range=...)`` through the shipped
    pipeline without SR or stitching), the true %, the lesion range, the reading with its flags, whether the paths
    were re-routed and the main branch's QCA samples of both views as the pipeline keeps them."""
    from .lumen import phantom_run

    out = []
    for seed in seeds:
        case, _, result, _ = phantom_run(seed, net, lesion_range)
        views = result.branches[0].views
        out.append({"seed": seed, "truth": float(case["case"].stenosis["percent_diameter"]),
                    "lesion_range": lesion_range, "qca": result.qca, "views": views["qca_samples"]["own"],
                    "rerouted": bool(views.get("rerouted", False))})
        log(f"{seed}: collected")
    return out


def cached_features(cases: list[dict], reader) -> tuple[np.ndarray, np.ndarray]:
    """Features and the reported % of cached cases, each view's radii read by ``reader`` (the shipped fusion), the
    flags as the pipeline cached them (``case["qca"]["path_off_vessel"]``, ``case["rerouted"]``)."""
    from .fusion import fused_qca

    rows, reported = [], []
    for case in cases:
        views = case["views"]
        radii = reader.radii(views, [view["radii"] / view["mm_per_px"] for view in views])
        qca = fused_qca(views, radii)
        qca["path_off_vessel"] = bool(case["qca"].get("path_off_vessel", False))
        rows.append(case_features([{**view, "radii": r} for view, r in zip(views, radii)], qca, case.get("rerouted", False)))
        reported.append(qca["percent_diameter_stenosis"])
    return np.array(rows), np.array(reported)


def fit(features: np.ndarray, reported: np.ndarray, truth: np.ndarray, epochs: int = 60, seed: int = 0,
        width: int = 32, members: int = 5) -> QCACalibrator:
    """Train the members one after the other (Adam 3e-3, weight decay 1e-4, batches of 256, L1 on ``truth -
    reported``), with the features' mean and standard deviation as the input standardisation."""
    torch.manual_seed(seed)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(truth - reported, dtype=torch.float32)
    model = QCACalibrator(width, members, x.shape[1])
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp_min(1e-6))
    for member in model.members:
        optimiser = torch.optim.Adam(member.parameters(), lr=3e-3, weight_decay=1e-4)
        order = torch.randperm(len(x))
        for _ in range(epochs):
            for batch in order.split(256):
                loss = (member((x[batch] - model.mean) / model.std)[:, 0] - y[batch]).abs().mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            order = torch.randperm(len(x))
    return model.eval()


def write_collected(seed_texts: list[str], cache: str, lesion_range) -> int:
    """``--collect``: :func:`collect` of the seed ranges into the cache pickle."""
    import pickle

    from .. import registry
    from .lumen import seed_range

    net = registry.load_model("angio3d", "angio3d-lite", "cpu")[0]
    cases = collect([s for text in seed_texts for s in seed_range(text)], net,
                    tuple(lesion_range) if lesion_range else None, log=lambda text: None)
    with open(cache, "wb") as handle:
        pickle.dump(cases, handle)
    print(f"{len(cases)} phantoms collected into {cache}")
    return 0


TRAINING_SEEDS = ["7001-7900", "13001-13600", "15601-16000", "16601-26500"]     # the shipped model's 11800


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    from .. import registry
    from .fusion import cached_cases, print_held_out, shipped_fusion

    parser = argparse.ArgumentParser(description="Train the Angio3D QCA calibrator on cached xray phantoms.")
    parser.add_argument("--seeds", nargs="+", default=TRAINING_SEEDS, help="phantom seed ranges lo-hi")
    parser.add_argument("--cache", nargs="+", required=True, help="pickles of cached cases (the pipeline's QCA samples)")
    parser.add_argument("--out", help=f"folder for {CALIBRATOR_NAME}.safetensors (training)")
    parser.add_argument("--held-out", nargs="*", default=[], help="cache pickles of held-out cases to report")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collect", action="store_true",
                        help="only collect: run the pipeline on the phantoms of --seeds and write them to the one --cache")
    parser.add_argument("--lesion-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                        help="with --collect: the phantoms' lesion range (%% diameter; default phantoms.xray.LESION_RANGE)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.collect:
        if len(args.cache) != 1:
            parser.error("--collect writes one --cache pickle")
        return write_collected(args.seeds, args.cache[0], args.lesion_range)
    if not args.out:
        parser.error("--out is required to train")
    reader = shipped_fusion()
    cases = cached_cases(args.seeds, args.cache)
    features, reported = cached_features(cases, reader)
    model = fit(features, reported, np.array([c["truth"] for c in cases]), args.epochs, args.seed)
    path = Path(args.out) / f"{CALIBRATOR_NAME}.safetensors"
    digest = registry.save_model(model, path, "angio3d", "calibrator", {"width": 32, "members": 5})
    print(f"{len(cases)} phantoms; saved {path} sha256 {digest}")

    def errors(held):
        x, raw = cached_features(held, reader)
        return raw + model.correct(x) - np.array([c["truth"] for c in held])

    print_held_out(args.held_out, errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A learned per-view throat reader for QCA (issue 14, round 8): the lumen regressor's radii refined with
context along the vessel. A measured study, **not shipped** (not a pipeline option).

The lumen regressor (:mod:`.lumen`) reads each sample from five neighbouring profiles; along healthy vessel
it is within ~7 % of the truth, but in a narrowing it over-reads a throat below the blur (+40 % in log
radius where the true throat is < 0.3 x the healthy radius) and its sample-to-sample noise makes the
minimum of a mild lesion a noise dip. :class:`ThroatRefiner` (an ensemble of three small MLPs, ~17 k weights
in all) reads, at each sample, the regressor's log radii relative to the SOI's median over +-``WINDOW``
samples, the integrated and peak darkness below the background there (relative to their medians: a real
throat holds less iodine, a noise dip does not), the floored flags, the SOI's median radius and the
sample's own darkness profile across the vessel, and returns the log radius. It is trained on phantoms
(seeds 8001-8600, never used for a choice or a test) against the true radius at each sample, with the
samples inside a narrowing weighted ``THROAT_WEIGHT`` times, as the regressor was.

Measured (Angio3D README, round 8): main-branch QCA mean |error| / bias 6.80 / -0.26 (median 4.17) on the
selection seeds 7001-7260 where the shipped regressor reads 7.57 / -0.18 (5.37); on the check seeds 7301-7460
6.13 / +0.24 (4.19) against 6.45 / +0.58 (4.06): below the 0.5-point gain and the median the round's ship rule
asked for, so it is not shipped; trained on 1000 phantoms (8001-9000) it reads 6.99 / +0.02 (5.04) against
7.20 / +0.01 (4.75) on fresh seeds 7501-7660: not shipped either. The 80-91 % lesions stay 7-10 points low.

Train and report: ``python -m VesselReconLib.angio3d.throat --seeds 8001-8600 --cache throat_cases.pkl
--out <folder> --held-out <cache of other seeds>`` (the caches are :func:`collect`'s lists).
"""

from __future__ import annotations

import argparse
import numpy as np
import torch
from torch import nn

from .lumen import MAX_OFF_PX, THROAT_WEIGHT, fit_weighted, profile_dips, seed_range

WINDOW = 3                   # samples on each side read along the vessel
CHANNELS = 4                 # per sample in the window: log relative radius, sqrt area, peak, floored
N_DIP = 29                   # the centre sample's darkness profile, every second of its 57 values
N_FEATURES = (2 * WINDOW + 1) * CHANNELS + 1 + N_DIP


def features(radii_px: np.ndarray, floored: np.ndarray, profiles: np.ndarray) -> tuple[np.ndarray, float]:
    """(N, N_FEATURES) inputs and the log median radius from one view's regressor radii (px), floored flags
    and profiles (N, 57) across the vessel (:func:`~.centerline.vessel_profiles` at ``lumen.REACH_PX``)."""
    radii = np.maximum(np.asarray(radii_px, float), 0.3)
    dip = profile_dips(profiles)
    area, peak = dip.sum(1), dip.max(1)
    median = float(np.median(radii))
    area_ref, peak_ref = max(float(np.median(area)), 1e-6), max(float(np.median(peak)), 1e-6)
    channels = np.c_[np.log(radii / median), np.sign(area) * np.sqrt(np.abs(area) / area_ref), peak / peak_ref,
                     np.asarray(floored, float)]
    n = len(radii)
    index = np.clip(np.arange(n)[:, None] + np.arange(-WINDOW, WINDOW + 1)[None], 0, n - 1)
    x = np.c_[channels[index].reshape(n, -1), np.full(n, np.log(median)), dip[:, ::2]]
    return x.astype(np.float32), float(np.log(median))


def _mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, 1))


class ThroatRefiner(nn.Module):
    """Mean of ``members`` MLPs: standardised :func:`features` -> log radius relative to the SOI's median."""

    def __init__(self, hidden: int = 64, members: int = 3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.members = nn.ModuleList(_mlp(hidden) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return torch.stack([m(z)[:, 0] for m in self.members]).mean(0)

    def radii(self, radii_px: np.ndarray, floored: np.ndarray, profiles: np.ndarray) -> np.ndarray:
        """Refined lumen radius (px) at each sample of one view."""
        x, log_median = features(radii_px, floored, profiles)
        with torch.no_grad():
            return np.exp(self(torch.from_numpy(x)).numpy().astype(float) + log_median)


# ---------------------------------------------------------------------------------------------
# training data, fit and held-out QCA
# ---------------------------------------------------------------------------------------------


def collect(seeds, net, log=print) -> list[dict]:
    """Per phantom (``make_case(seed)``, the shipped pipeline without SR and without this refiner: the QCA
    test's loop): the true % stenosis, the shipped QCA and, per view along its own first 2D path, the QCA
    samples (:func:`~.triangulation.own_view_samples`) with the regressor's radii, the profiles across the
    vessel, the true radius (px) and the path's distance from the true centreline at each sample."""
    from .centerline import vessel_profiles
    from .lumen import REACH_PX, phantom_run, true_radii_at

    out = []
    for seed in seeds:
        case, images, result, truth = phantom_run(seed, net, qca_radius="regressor")
        views = []
        for v, own in enumerate(result.branches[0].views["qca_samples"]["own"]):
            true_px, off_px = true_radii_at(own["pixels"], truth, case["geometries"][v])
            views.append({**own, "profiles": vessel_profiles(images[v], own["pixels"], REACH_PX)[1].astype(np.float16),
                          "true_radii_px": true_px, "off_px": off_px})
        out.append({"seed": seed, "truth": float(case["case"].stenosis["percent_diameter"]),
                    "shipped": float(result.qca["percent_diameter_stenosis"]), "views": views})
        log(f"{seed}: true {out[-1]['truth']:.1f}, QCA {out[-1]['shipped']:.1f}")
    return out


def training_arrays(cases: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, log true radius relative to the median and sample weight of every sample whose path is
    within ``MAX_OFF_PX`` of the true centreline."""
    xs, ys, ws = [], [], []
    for case in cases:
        for view in case["views"]:
            x, log_median = features(view["radii"] / view["mm_per_px"], view["floored"], view["profiles"])
            ok, true = view["off_px"] < MAX_OFF_PX, view["true_radii_px"]
            xs.append(x[ok])
            ys.append(np.log(np.maximum(true[ok], 0.2)) - log_median)
            ws.append(np.where(true[ok] / np.median(true) < 0.85, THROAT_WEIGHT, 1.0))
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32), np.concatenate(ws).astype(np.float32)


def fit(cases: list[dict], hidden: int = 64, members: int = 3, epochs: int = 20, seed: int = 0,
        log=print) -> ThroatRefiner:
    """Train a :class:`ThroatRefiner`: each member from its own seed (AdamW, one-cycle, weighted smooth-L1
    on the log radius)."""
    x, y, w = training_arrays(cases)
    model = ThroatRefiner(hidden, members)
    model.mean.copy_(torch.from_numpy(x.mean(0)))
    model.std.copy_(torch.from_numpy(x.std(0) + 1e-6))
    xt, yt, wt = (model.mean.new_tensor(x) - model.mean) / model.std, torch.from_numpy(y), torch.from_numpy(w)
    for index, member in enumerate(model.members):
        torch.manual_seed(seed + index)
        for layer in member:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        loss = fit_weighted(member, lambda xb, member=member: member(xb)[:, 0], xt, yt, wt, epochs)
        log(f"member {index}: loss {loss:.4f} ({len(xt)} samples)")
    return model.eval()


def case_qca_errors(cases: list[dict], model: ThroatRefiner | None) -> np.ndarray:
    """Signed main-branch QCA errors (points) of cached cases (:func:`collect`) with each view's radii refined
    by ``model`` (``None``: the regressor's, as collected), through the shipped QCA
    (:func:`~.strip.cached_qca_errors`)."""
    from .strip import cached_qca_errors

    def read(view):
        return model.radii(view["radii"] / view["mm_per_px"], view["floored"], view["profiles"])

    return cached_qca_errors(cases, None if model is None else read)


def main(argv=None) -> int:
    import pickle
    from pathlib import Path

    from .. import registry
    from .strip import report_held_out

    parser = argparse.ArgumentParser(description="Train the Angio3D throat refiner (QCA) on xray phantoms.")
    parser.add_argument("--seeds", default="8001-8600", help="phantom seeds (make_case) to train on, lo-hi")
    parser.add_argument("--cache", help="pickle of the collected cases (written if absent, read if present)")
    parser.add_argument("--out", required=True, help="folder for angio3d-throat.safetensors")
    parser.add_argument("--held-out", action="append", default=[], help="cache pickles of held-out cases to report")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = set(seed_range(args.seeds))
    if args.cache and Path(args.cache).is_file():
        cases = [c for c in pickle.load(open(args.cache, "rb")) if c["seed"] in seeds]
    else:
        cases = collect(sorted(seeds), registry.load_model("angio3d", "angio3d-lite", "cpu")[0])
        if args.cache:
            pickle.dump(cases, open(args.cache, "wb"))
    model = fit(cases, epochs=args.epochs, seed=args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    digest = registry.save_model(model, Path(args.out) / "angio3d-throat.safetensors", "angio3d", "throat",
                                 {"hidden": 64, "members": 3})
    print(f"{len(cases)} phantoms; saved {Path(args.out) / 'angio3d-throat.safetensors'} sha256 {digest}")
    report_held_out(args.held_out, case_qca_errors, {"regressor": None, "throat": model})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A small trained regressor of the lumen radius (px) from the angiogram's profiles across the vessel (QCA).

The model fit of :func:`~.centerline.profile_radii_px` reads a round lumen's projection; where another
vessel crosses or runs alongside, where the throat is below the blur, or where the detector's transfer
bends the darkness, it is off by 10 % per sample (issue 14 round 3: 8.4 points of % stenosis where the 2D
paths are right). :class:`LumenRegressor` (an MLP, ~23 k weights) reads the same evidence -- five
neighbouring profiles across the vessel (14 px each side, background removed, darkness scaled by the
SOI's median), the model-fit and mask radii and the SOI's typical radius -- and returns the radius. It is
trained on phantoms (:func:`collect`, seeds never used for a choice or a test) against the true radius
at each sample (the true centreline's radius, in px at its depth), with the samples inside a narrowing
weighted ``THROAT_WEIGHT`` times (they decide the % stenosis and are few).

Train: ``python -m VesselReconLib.angio3d.lumen --seeds 6001-6400 --cache lumen_samples.pkl --out <folder>``.
"""

from __future__ import annotations

import argparse
from functools import lru_cache

import numpy as np
import torch
from torch import nn

REACH_PX = 14.0              # profile half-length across the vessel (the widest phantom lumen is ~9 px)
CONTEXT = (-2, -1, 0, 1, 2)  # neighbouring samples along the vessel whose profiles are read too
EDGE_SAMPLES = 6             # profile samples at each end that define the linear background
N_PROFILE = 57               # 2 * REACH_PX / 0.5 + 1
N_FEATURES = len(CONTEXT) * N_PROFILE + 5
THROAT_WEIGHT = 5.0          # training weight of samples narrower than 0.85 x the SOI's median radius
MAX_OFF_PX = 2.0             # training samples only where our 2D path is within 2 px of the true centreline


def profile_dips(profiles: np.ndarray) -> np.ndarray:
    """(N, L) darkness below a linear background (fitted to the ``EDGE_SAMPLES`` outer samples each side)
    across the vessel, scaled by its median peak along the SOI (> 0: darker than the background)."""
    profiles = np.asarray(profiles, np.float64)
    length = profiles.shape[1]
    edge = np.r_[np.arange(EDGE_SAMPLES), np.arange(length - EDGE_SAMPLES, length)]
    x = np.linspace(-1, 1, length)
    design = np.c_[np.ones(len(edge)), x[edge]]
    coef, *_ = np.linalg.lstsq(design, profiles[:, edge].T, rcond=None)
    dip = (coef[0][:, None] + coef[1][:, None] * x[None]) - profiles
    scale = float(np.median(dip.max(1)))
    return dip / (scale if scale > 1e-9 else 1.0)


def features(profiles: np.ndarray, fit_radii: np.ndarray, mask_radii: np.ndarray) -> np.ndarray:
    """(N, N_FEATURES) inputs from the profiles (N, 57) across the vessel (reach 14 px, step 0.5 px), the
    model-fit radii and the mask radii (px) along one view's SOI."""
    dip = profile_dips(profiles)
    n = len(dip)
    index = np.clip(np.arange(n)[:, None] + np.array(CONTEXT)[None], 0, n - 1)
    context = dip[index].reshape(n, -1)
    fit = np.maximum(np.asarray(fit_radii, float), 0.3)
    healthy = float(np.median(fit))
    scalars = np.c_[np.log(fit), np.log(np.maximum(np.asarray(mask_radii, float), 0.3)), np.full(n, np.log(healthy)),
                    np.log(fit / healthy), dip.sum(1) * 0.5 / max(healthy, 0.5)]
    return np.c_[context, scalars].astype(np.float32)


class LumenRegressor(nn.Module):
    """MLP: standardised :func:`features` -> log lumen radius (px)."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) / self.std)[:, 0]

    REACH_PX = REACH_PX

    def radii(self, image: np.ndarray, points: np.ndarray, fit_radii: np.ndarray, mask_radii: np.ndarray,
              profiles: np.ndarray | None = None) -> np.ndarray:
        """Lumen radius (px) at each centreline point of one view (``profiles``: its
        :func:`~.centerline.vessel_profiles` at ``REACH_PX`` when the caller has them)."""
        from .centerline import vessel_profiles

        if profiles is None:
            _, profiles = vessel_profiles(image, points, REACH_PX)
        x = torch.from_numpy(features(profiles, fit_radii, mask_radii))
        with torch.no_grad():
            return np.exp(self(x).numpy().astype(float))


@lru_cache(maxsize=1)
def shipped_regressor() -> LumenRegressor | None:
    """The shipped ``angio3d-lumen`` regressor (registry, sha256 checked), or ``None`` if it is not installed."""
    from .. import registry

    return registry.load_installed("angio3d", "angio3d-lumen")


# ---------------------------------------------------------------------------------------------
# training data and fit
# ---------------------------------------------------------------------------------------------


def true_radii_at(pixels: np.ndarray, truth: dict, geometry) -> tuple[np.ndarray, np.ndarray]:
    """At each 2D sample of one view: the phantom's true radius (px at its depth) at the nearest projected point
    of the true centreline (``truth``: ``points``, ``radii``, as ``soi_centerlines`` gives them) and the
    sample's distance from it (px)."""
    d2 = ((np.asarray(pixels)[:, None] - geometry.project(truth["points"])[None]) ** 2).sum(-1)
    k = np.argmin(d2, 1)
    return truth["radii"][k] / geometry.mm_per_pixel_at(truth["points"][k]), np.sqrt(d2[np.arange(len(k)), k])


def phantom_run(seed: int, net, lesion_range: tuple[float, float] | None = None, **options):
    """``make_case(seed, lesion_range=...)`` (the generator's default range unless given) through the pipeline
    without SR or stitching (``options`` go to ``reconstruct``): the case, its float views, the result and the SOI's
    true centreline (600 points)."""
    from ..phantoms.xray import LESION_RANGE, make_case, soi_centerlines
    from .pipeline import reconstruct

    case = make_case(seed, lesion_range=lesion_range or LESION_RANGE)
    images = [v["image"].astype(np.float32) for v in case["views"]]
    with torch.no_grad():
        result = reconstruct(images, case["geometries"], [np.array(p) for p in case["soi_points"]], net=net,
                             refine=False, stitch=False, **options)
    return case, images, result, soi_centerlines(case["case"], n=600)[0]


def collect(seeds, net) -> list[dict]:
    """Per phantom (``make_case(seed)``): each view's profiles, fit/mask radii along our own first 2D paths
    (the shipped pipeline, no SR, no re-routing) and the true radius (px) and path error at each sample."""
    from .centerline import vessel_profiles

    out = []
    for seed in seeds:
        case, images, result, truth = phantom_run(seed, net, reroute=False, qca_radius="profile")
        views = []
        for v, line in enumerate(result.branches[0].centerlines_2d):
            true_px, off_px = true_radii_at(line.points, truth, case["geometries"][v])
            _, profiles = vessel_profiles(images[v], line.points, REACH_PX)
            views.append({"profiles": profiles.astype(np.float32), "mask_radii": line.radii_px,
                          "qca_radii": line.qca_radii_px, "true_radii": true_px, "off_px": off_px})
        out.append({"seed": seed, "views": views})
    return out


def training_arrays(cases: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, log true radius and sample weight of every sample whose path is within ``MAX_OFF_PX``."""
    xs, ys, ws = [], [], []
    for case in cases:
        for view in case["views"]:
            ok = view["off_px"] < MAX_OFF_PX
            xs.append(features(view["profiles"], view["qca_radii"], view["mask_radii"])[ok])
            ys.append(np.log(np.maximum(view["true_radii"][ok], 0.2)))
            relative = view["true_radii"][ok] / np.median(view["true_radii"])
            ws.append(np.where(relative < 0.85, THROAT_WEIGHT, 1.0))
    return (np.concatenate(xs), np.concatenate(ys).astype(np.float32), np.concatenate(ws).astype(np.float32))


def fit(cases: list[dict], hidden: int = 64, epochs: int = 30, seed: int = 0, log=print) -> LumenRegressor:
    """Train a :class:`LumenRegressor` (AdamW, one-cycle, weighted smooth-L1 on the log radius)."""
    torch.manual_seed(seed)
    x, y, w = training_arrays(cases)
    model = LumenRegressor(hidden)
    model.mean.copy_(torch.from_numpy(x.mean(0)))
    model.std.copy_(torch.from_numpy(x.std(0) + 1e-6))
    fit_weighted(model, model, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), epochs,
                 lambda epoch, loss: log(f"epoch {epoch}: loss {loss:.4f} ({len(x)} samples)"))
    return model.eval()


def weighted_smooth_l1(prediction: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (β 0.1) of ``prediction`` against ``y``, weighted by ``w``."""
    return (nn.functional.smooth_l1_loss(prediction, y, beta=0.1, reduction="none") * w).sum() / w.sum()


def fit_weighted(module: nn.Module, predict, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, epochs: int,
                 on_epoch=lambda epoch, loss: None, batch: int = 512, augment=None, criterion=None) -> float:
    """Train ``module``'s parameters so that ``predict(x)`` fits ``y``: weighted smooth-L1 (β 0.1; or
    ``criterion(prediction, y, w)`` when given), AdamW (2e-3, weight decay 1e-4), one-cycle to 3e-3, shuffled
    batches (each ``augment(x, y, w)`` when given); returns the last epoch's mean loss (``on_epoch(epoch, loss)``
    after each)."""
    optimiser = torch.optim.AdamW(module.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=epochs * ((len(x) + batch - 1) // batch))
    total = 0.0
    for epoch in range(epochs):
        order, total = torch.randperm(len(x)), 0.0
        for i in range(0, len(x), batch):
            b = order[i:i + batch]
            xb, yb, wb = x[b], y[b], w[b]
            if augment is not None:
                xb, yb, wb = augment(xb, yb, wb)
            loss = (weighted_smooth_l1 if criterion is None else criterion)(predict(xb), yb, wb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(xb)
        on_epoch(epoch, total / len(x))
    return total / len(x)


def seed_range(text: str) -> list[int]:
    """Phantom seeds from ``lo-hi`` (inclusive)."""
    lo, hi = (int(v) for v in text.split("-"))
    return list(range(lo, hi + 1))


def main(argv=None) -> int:
    import pickle
    from pathlib import Path

    from .. import registry

    parser = argparse.ArgumentParser(description="Train the Angio3D lumen-radius regressor on xray phantoms.")
    parser.add_argument("--seeds", default="6001-6400", help="phantom seeds (make_case) to train on, lo-hi")
    parser.add_argument("--cache", help="pickle of the collected samples (written if absent, read if present)")
    parser.add_argument("--out", required=True, help="folder for angio3d-lumen.safetensors")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = seed_range(args.seeds)
    if args.cache and Path(args.cache).is_file():
        cases = [c for c in pickle.load(open(args.cache, "rb")) if c["seed"] in set(seeds)]
    else:
        net = registry.load_model("angio3d", "angio3d-lite", "cpu")[0]
        cases = collect(seeds, net)
        if args.cache:
            pickle.dump(cases, open(args.cache, "wb"))
    model = fit(cases, args.hidden, args.epochs, args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    digest = registry.save_model(model, Path(args.out) / "angio3d-lumen.safetensors", "angio3d", "lumen",
                                 {"hidden": args.hidden})
    print(f"{len(cases)} phantoms; saved {Path(args.out) / 'angio3d-lumen.safetensors'} sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

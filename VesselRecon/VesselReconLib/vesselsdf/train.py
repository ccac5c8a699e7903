"""Training of VesselSDF (Adam, lr 5e-4, in-plane flips) with the shared Trainer.

``train_model`` trains one preset. ``train_with_ablations`` trains, in one run on the same batches,
the full model together with the paper's ablations: the occupancy stage is shared (the refiner sees
it detached, so it is trained exactly as an occupancy-only network would be), a second refiner is
trained without the Gaussian term (``nogauss``) and a capacity-matched ``sdfonly`` network on the
CT alone. The ``occ`` ablation is the full model's occupancy stage on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import metrics
from ..device import resolve_device
from ..training import Trainer, seed_everything
from .data import Case, batches, load_dataset
from .inference import predict
from .losses import LossConfig, vesselsdf_loss
from .network import VARIANT_LOSS, VesselSDFNet, build_model, parse_preset

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """What ``vesselrecon train vesselsdf`` runs (paper: 100 epochs of whole volumes, lr 5e-4).

    :param crop: in-plane crop ``(rows, columns)``.
    :param slices: consecutive slices per crop (None: all).
    :param steps_per_epoch: batches per epoch (crops are drawn at random from the training cases).
    :param val_cases: the last cases of the folder held out for per-epoch validation (Dice).
    :param occupancy_from: checkpoint of a full model whose occupancy stage is loaded and frozen
        (trains only the refiner: how the ``nogauss`` ablation shares the full model's first stage).
    :param init_from: checkpoint whose weights (all that match) start the training (a longer run
        continued with another loss).
    :param calibrate: validate at the calibrated level (:func:`calibrate_level`) and ship the best
        epoch with its level (``model_config["level_mm"]``).
    :param topology: (release 6) pick the best epoch by :func:`validation_topology` (the level's mean of
        Dice and clDice) instead of the Dice alone.
    """

    preset: str = "lite"
    epochs: int = 100
    steps_per_epoch: int = 20
    batch_size: int = 4
    crop: tuple[int, int] = (64, 64)
    slices: int | None = 8
    lr: float = 5e-4
    seed: int = 0
    val_cases: int = 2
    device: str = "auto"
    occupancy_from: str | None = None
    init_from: str | None = None
    calibrate: bool = False
    topology: bool = False
    model_config: dict = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)


def loss_config_for(preset: str, base: LossConfig | None = None) -> LossConfig:
    """The loss settings of a preset (``*-nogauss`` switches the Gaussian term off)."""
    config = LossConfig(**(base or LossConfig()).to_dict())
    for key, value in VARIANT_LOSS.get(parse_preset(preset)[1], {}).items():
        setattr(config, key, value)
    return config


def make_loss_fn(loss_config: LossConfig, device: torch.device):
    def loss_fn(model, batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(batch["image"], tuple(float(v) for v in batch["spacing"][0]))
        fine = (batch["fine_pos"], batch["fine_skel"]) if "fine_pos" in batch else None
        total, _ = vesselsdf_loss(outputs, batch["mask"], batch["sdf"], batch["spacing"], loss_config, fine)
        return total
    return loss_fn


LEVELS_MM = tuple(np.round(np.arange(-1.0, 2.01, 0.125), 3))
"""Candidate surface levels (mm) of :func:`calibrate_level`."""


def calibrate_level(net, cases: list[Case], device: torch.device, levels=LEVELS_MM) -> tuple[float, float]:
    """(level, mean Dice): the SDF level (mm, the network's current output) whose mask ``f < level``
    has the best mean Dice on ``cases`` (validation phantoms). Occupancy-only networks: ``(0, Dice)``."""
    predictions = [predict(net, c.normalised(), device, c.spacing) for c in cases]
    if predictions[0].sdf is None:
        return 0.0, float(np.mean([metrics.dice(p.mask(), c.label) for p, c in zip(predictions, cases)]))
    scores = [np.mean([metrics.dice(p.sdf < level, c.label) for p, c in zip(predictions, cases)]) for level in levels]
    best = int(np.argmax(scores))
    return float(levels[best]), float(scores[best])


def validation_dice(cases: list[Case], device: torch.device, pick=lambda model: model, calibrated: bool = False):
    def validate(model) -> dict:
        net = pick(model)
        if calibrated:
            level, dice = calibrate_level(net, cases, device)
            return {"dice": dice, "level_mm": level}
        return {"dice": float(np.mean([metrics.dice(predict(net, c.normalised(), device, c.spacing).mask(), c.label)
                                       for c in cases]))}
    return validate


TOPOLOGY_LEVELS_MM = tuple(np.round(np.arange(0.0, 1.51, 0.25), 3))
"""Candidate levels (mm) of :func:`validation_topology`."""


def validation_topology(cases: list[Case], device: torch.device, levels=TOPOLOGY_LEVELS_MM):
    """Release 6: per-epoch validation for vessel trees: the best, over ``levels``, of the mean over
    ``cases`` of ``(Dice + clDice) / 2`` of ``f < level`` on the thick grid (``objective``), with that
    level's Dice, clDice and centreline recall. Dice alone picks epochs that drop thin vessels."""
    from .realdata import centreline_scores

    def validate(model) -> dict:
        fields = [predict(model, c.normalised(), device, c.spacing).sdf for c in cases]
        best = None
        for level in levels:
            rows = [(metrics.dice(f < level, c.label), *centreline_scores(f < level, c.label > 0))
                    for f, c in zip(fields, cases)]
            dice, cldice, recall = (float(np.mean(column)) for column in zip(*rows))
            row = {"objective": 0.5 * (dice + cldice), "dice": dice, "cldice": cldice, "cl_recall": recall,
                   "level_mm": float(level)}
            best = row if best is None or row["objective"] > best["objective"] else best
        return best
    return validate


def _split(data_dir, config: TrainConfig) -> tuple[list[Case], list[Case]]:
    cases = load_dataset(data_dir, fine=bool(config.loss.lambda_skel))
    if len(cases) <= config.val_cases:
        raise ValueError(f"{data_dir} has {len(cases)} cases; need more than --val-cases={config.val_cases}.")
    return cases[:len(cases) - config.val_cases], cases[len(cases) - config.val_cases:]


def widened_head(state: dict, model: VesselSDFNet) -> dict:
    """A checkpoint without the refiner's full-resolution skip, for a model with it: the output
    layer's extra inputs get zero weights, so training starts from the checkpoint's exact output."""
    key = "refiner.1.weight"
    target = model.state_dict().get(key)
    if key in state and target is not None and state[key].shape != target.shape:
        weight = torch.zeros_like(target)
        weight[:, :state[key].shape[1]] = state[key]
        state = {**state, key: weight}
    return state


def _monitor(config: TrainConfig, val_cases) -> str:
    return ("val_objective" if config.topology else "val_dice") if val_cases else "loss"


def train_model(data_dir: str | Path, out_dir: str | Path, config: TrainConfig, progress=None, cancel=None,
                resume: bool = True) -> tuple[torch.nn.Module, Trainer]:
    """Train a preset on a dataset folder; returns the best-validation model and the trainer.

    Checkpoints go to ``out_dir`` (``last.pt``, ``best.pt``); an interrupted run resumes.
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    train_cases, val_cases = _split(data_dir, config)
    model = build_model(config.preset, **config.model_config).to(device)
    if config.init_from:
        from ..registry import read_checkpoint

        missing, unexpected = model.load_state_dict(widened_head(read_checkpoint(config.init_from)[0], model), strict=False)
        log.info("initialised from %s (missing %d, unexpected %d keys)", config.init_from, len(missing), len(unexpected))
    if config.occupancy_from:
        from ..registry import read_checkpoint

        model.freeze_occupancy(read_checkpoint(config.occupancy_from)[0])
    loss_config = loss_config_for(config.preset, config.loss)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainer = Trainer(model=model, optimizer=torch.optim.Adam(trainable, lr=config.lr),
                      loss_fn=make_loss_fn(loss_config, device), out_dir=Path(out_dir), device=device,
                      monitor=_monitor(config, val_cases), mode="max" if val_cases else "min")
    if resume:
        trainer.resume()
    validate = None
    if val_cases:
        validate = (validation_topology(val_cases, device) if config.topology
                    else validation_dice(val_cases, device, calibrated=config.calibrate))
    trainer.fit(lambda epoch: batches(train_cases, config.crop, config.batch_size, config.steps_per_epoch,
                                      config.seed * 100003 + epoch, slices=config.slices),
                config.epochs, validate=validate,
                batches_per_epoch=config.steps_per_epoch, progress=progress, cancel=cancel)
    trainer.load_best()
    model.eval()
    if config.calibrate and val_cases and model.has_sdf:
        level, dice = calibrate_level(model, val_cases, device)
        model.level_mm = level
        config.model_config = {**config.model_config, "level_mm": level}
        log.info("calibrated surface level %.3f mm (validation Dice %.4f)", level, dice)
    return model, trainer


class AblationSet(nn.Module):
    """The full model, a second refiner trained without the Gaussian term, and the SDF-only network."""

    def __init__(self, size: str = "lite"):
        super().__init__()
        self.full = build_model(size)
        self.nogauss = build_model(f"{size}-nogauss")
        self.nogauss.occupancy = None  # shares the full model's occupancy stage
        self.sdfonly = build_model(f"{size}-sdfonly")

    def networks(self) -> dict[str, VesselSDFNet]:
        """Stand-alone networks per preset variant (sharing weights with this module)."""
        size = self.full.size
        nogauss = build_model(f"{size}-nogauss")
        nogauss.occupancy, nogauss.refiner = self.full.occupancy, self.nogauss.refiner
        occ = build_model(f"{size}-occ")
        occ.occupancy = self.full.occupancy
        return {size: self.full, f"{size}-occ": occ, f"{size}-nogauss": nogauss, f"{size}-sdfonly": self.sdfonly}


def ablation_loss_fn(loss_config: LossConfig, device: torch.device):
    nogauss_config = LossConfig(**{**loss_config.to_dict(), "lambda_gauss": 0.0})

    def loss_fn(model: AblationSet, batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        spacing = tuple(float(v) for v in batch["spacing"][0])
        image, mask, sdf = batch["image"], batch["mask"], batch["sdf"]
        full = model.full(image, spacing)
        total, _ = vesselsdf_loss(full, mask, sdf, batch["spacing"], loss_config)
        prob = torch.sigmoid(full["occupancy"]).detach()
        no_gauss = {"occupancy": None, "sdf": model.nogauss.refine(image, prob, spacing)}
        total = total + vesselsdf_loss(no_gauss, mask, sdf, batch["spacing"], nogauss_config)[0]
        total = total + vesselsdf_loss(model.sdfonly(image, spacing), mask, sdf, batch["spacing"], loss_config)[0]
        return total
    return loss_fn


def train_with_ablations(data_dir: str | Path, out_dir: str | Path, config: TrainConfig, progress=None,
                         cancel=None, resume: bool = True) -> tuple[dict[str, VesselSDFNet], Trainer]:
    """Train the full model and its ablations together (module docs); returns networks per preset."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    train_cases, val_cases = _split(data_dir, config)
    size, _ = parse_preset(config.preset)
    model = AblationSet(size).to(device)
    trainer = Trainer(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
                      loss_fn=ablation_loss_fn(loss_config_for(config.preset, config.loss), device),
                      out_dir=Path(out_dir), device=device,
                      monitor="val_dice" if val_cases else "loss", mode="max" if val_cases else "min")
    if resume:
        trainer.resume()
    trainer.fit(lambda epoch: batches(train_cases, config.crop, config.batch_size, config.steps_per_epoch,
                                      config.seed * 100003 + epoch, slices=config.slices),
                config.epochs, validate=validation_dice(val_cases, device, lambda m: m.full) if val_cases else None,
                batches_per_epoch=config.steps_per_epoch, progress=progress, cancel=cancel)
    trainer.load_best()
    return {name: net.eval() for name, net in model.eval().networks().items()}, trainer


SURFACE_LEVELS_MM = tuple(np.round(np.arange(0.0, 1.51, 0.125), 3))
"""Candidate levels (mm) of :func:`calibrate_surface`."""
SURFACE_UNIONS = ((0.0, True), (0.5, True), (0.7, True), (0.9, True), (0.5, False), (0.7, False), (0.9, False))
"""Candidate ``(union_threshold, union_connected)`` of :func:`calibrate_surface` (0: no union)."""


SURFACE_PIECES_MM3 = (0.0,)
"""Candidate minimum piece volumes (mm³) of :func:`calibrate_surface` (0: keep every piece)."""


def _surface_scores(field: np.ndarray, case) -> dict:
    """Chamfer, HD95 (mm, mesh vertices as in the phantom table) and surface pieces of a thick-grid
    field (:func:`.evaluation.mesh_scores`)."""
    from .evaluation import mesh_scores

    scores = mesh_scores(field, case)
    return {"chamfer_mm": scores["chamfer_mm"], "hd95_mm": scores["hd95_mm"], "pieces": scores["components"]}


def calibrate_surface(net: VesselSDFNet, cases, device="cpu", levels=SURFACE_LEVELS_MM, unions=SURFACE_UNIONS,
                      min_pieces=SURFACE_PIECES_MM3, surface: bool = False, piece_rules=((0.0, 0.0),),
                      bands=(0.0,)) -> dict:
    """Surface level, occupancy union and minimum piece volume of a full model for **vessel trees**,
    on validation phantoms.

    Objective (ours, fixed before any real-data run): the mean of the Dice and the clDice of the
    field interpolated to the phantoms' fine slice grid — overlap and connectivity weighted equally,
    what a vessel tree needs — among the settings whose thick-slice Dice is at least the occupancy
    stage's own (the refiner must not lose overlap to its first stage). :func:`calibrate_level`
    maximised the thick-slice Dice alone, which leaves thin vessels out. With ``surface`` (release 4)
    the settings must also beat the occupancy stage on the surface metrics — lower Chamfer and HD95,
    no more surface pieces (the issue's ablation requirement) — whenever some setting does.

    :param cases: :class:`.evaluation.EvalCase` phantoms with fine-grid truth (never real data).
    :param piece_rules: (release 5) ``(piece_keep_prob, piece_keep_near_mm)`` pairs tried with every
        minimum piece volume > 0 (:func:`.network.remove_small_pieces`).
    :param bands: (round 8) occupancy-fusion bands (mm) tried with every union (0: no fusion; > 0: the
        fusion replaces the union, :func:`.network.fuse_with_occupancy`).
    :returns: ``{"level_mm", "union_threshold", "union_connected", "min_piece_mm3", "piece_keep_prob",
        "piece_keep_near_mm", "objective", "dice",
        "hires_dice", "cldice", "cl_recall", "occupancy", "table"}`` (``table``: every setting's scores;
        ``occupancy``: the occupancy stage's scores).
    """
    from .evaluation import hires_field
    from .inference import Prediction, predict_in_roi
    from .network import remove_small_pieces, surface_field
    from .preprocess import canonicalise
    from .realdata import centreline_scores

    saved = net.level_mm, net.union_threshold, net.min_piece_mm3, net.fusion_band_mm
    net.level_mm, net.union_threshold, net.min_piece_mm3, net.fusion_band_mm = 0.0, 0.0, 0.0, 0.0
    raw = []
    try:
        for case in cases:
            canonical = canonicalise(case.image, case.ijk_to_ras, case.organ > 0 if case.organ is not None else None)
            raw.append(predict_in_roi(net, canonical, device, case.spacing))
    finally:
        net.level_mm, net.union_threshold, net.min_piece_mm3, net.fusion_band_mm = saved
    occupancy = {"dice": float(np.mean([metrics.dice(p.occupancy > 0.5, c.label) for p, c in zip(raw, cases)]))}
    if surface:
        rows = [_surface_scores(0.5 - p.occupancy, c) for p, c in zip(raw, cases)]
        occupancy.update({k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
    table = []
    for (threshold, connected), band in [(union, band) for union in unions for band in bands]:
        for level in levels:
            united = [surface_field(torch.from_numpy(p.sdf)[None, None], torch.from_numpy(p.occupancy)[None, None],
                                    c.spacing, float(level), threshold, connected, fusion_band_mm=float(band))
                      for p, c in zip(raw, cases)]
            for pieces, (keep_prob, keep_near) in [(v, rule) for v in min_pieces for rule in
                                                   (piece_rules if v else ((0.0, 0.0),))]:
                scores = []
                for sdf, prediction, case in zip(united, raw, cases):
                    if pieces:
                        prob = torch.from_numpy(prediction.occupancy)[None, None] if keep_prob else None
                        sdf = remove_small_pieces(sdf, case.spacing, float(pieces), prob, keep_prob, keep_near)
                    candidate = Prediction(prediction.occupancy, sdf[0, 0].numpy())
                    fine = hires_field(candidate, case.label.shape, case.ijk_to_ras[2, 3], case.spacing[2],
                                       case.hires_label.shape, case.hires_ijk_to_ras[2, 3],
                                       float(np.linalg.norm(case.hires_ijk_to_ras[:3, 2]))) < 0
                    cl_dice, recall = centreline_scores(fine, case.hires_label > 0)
                    row = {"dice": metrics.dice(candidate.mask(), case.label),
                           "hires_dice": metrics.dice(fine, case.hires_label > 0), "cldice": cl_dice,
                           "cl_recall": recall}
                    if surface:
                        row.update(_surface_scores(candidate.sdf, case))
                    scores.append(row)
                mean = {k: float(np.nanmean([r[k] for r in scores])) for k in scores[0]}
                table.append({"level_mm": float(level), "union_threshold": float(threshold),
                              "union_connected": bool(connected), "fusion_band_mm": float(band),
                              "min_piece_mm3": float(pieces),
                              "piece_keep_prob": float(keep_prob), "piece_keep_near_mm": float(keep_near), **mean,
                              "objective": 0.5 * (mean["hires_dice"] + mean["cldice"])})
    return select_surface(table, occupancy, surface)


TIE_OBJECTIVE = 0.002
"""Release 5: settings within this of the best objective count as tied; the one with fewer pieces wins."""


def select_surface(table: list[dict], occupancy: dict, surface: bool = False) -> dict:
    """The :func:`calibrate_surface` choice from its table of settings and the occupancy stage's scores.

    With ``surface`` the settings must also beat the occupancy stage on Chamfer and HD95 with no more
    pieces, and among those within :data:`TIE_OBJECTIVE` of the best objective the one with the
    fewest surface pieces wins (release 5); when no setting beats it, the plain objective decides."""
    allowed = [row for row in table if row["dice"] >= occupancy["dice"]] or table
    beating = [row for row in allowed if row["chamfer_mm"] < occupancy["chamfer_mm"]
               and row["hd95_mm"] < occupancy["hd95_mm"] and row["pieces"] <= occupancy["pieces"]] if surface else []
    allowed = beating or allowed
    best = max(allowed, key=lambda row: row["objective"])
    if beating:
        tied = [row for row in allowed if row["objective"] >= best["objective"] - TIE_OBJECTIVE]
        best = min(tied, key=lambda row: (row["pieces"], -row["objective"]))
    return {**best, "occupancy_dice": occupancy["dice"], "occupancy": occupancy, "table": table}


RELEASE4_GRID = {"levels": (0.375, 0.5, 0.625, 0.75, 0.875),
                 "unions": ((0.5, True), (0.7, True), (0.9, True), (0.5, False), (0.7, False), (0.9, False)),
                 "min_pieces": (0.0, 5.0, 10.0, 20.0, 40.0), "surface": False}
"""Release 4's :func:`calibrate_surface` grid: levels around release 3's, the unions and minimum piece
volumes, with release 3's objective. ``surface=True`` (Chamfer, HD95 and pieces below the occupancy
stage's) picks 0.375 mm with the union of all ``p > 0.5`` and no removal, which meets the phantom
ablation target but not the real-data ones (README, "Release 4"): it is reported, not shipped."""


RELEASE5_GRID = {"levels": (0.375, 0.5, 0.625, 0.75),
                 "unions": ((0.5, False), (0.9, False), (0.5, True), (0.9, True)),
                 "min_pieces": (0.0, 10.0, 20.0, 40.0),
                 "piece_rules": tuple((q, d) for q in (0.0, 0.9, 0.97) for d in (0.0, 2.0, 4.0)), "surface": True}
"""Release 5's grid (rule written down before any run: /work/notes/issue16-r5-ship-rule.md): the
piece rule keeps small pieces that are confident or near the tree; the issue's ablation target
(Dice >= occupancy-only's, lower Chamfer and HD95, no more pieces) is the constraint, release 3's
objective then fewer pieces decide; on validation phantoms **with arterial distractors**
(``out/v16r5/data/val``)."""


RELEASE6_GRID = {"levels": (0.25, 0.375, 0.5, 0.625, 0.75, 0.875),
                 "unions": ((0.0, True), (0.5, True), (0.9, False), (0.9, True)), "surface": True}
"""Release 6's grid (rule written before the run: /work/notes/issue16-r6-ship-rule.md): levels x unions,
no piece removal (release 5: every removal raised Chamfer and HD95 on the validation phantoms), the
release-5 constraint and objective, on ``out/vsdf6/data/val`` (validation phantoms with arteries)."""


RELEASE8_GRID = {"levels": RELEASE6_GRID["levels"], "unions": ((0.0, True),), "bands": (0.5, 1.0, 1.5, 2.0),
                 "surface": True}
"""Round 8's grid (rule written before the run: /work/notes/issue16-r8-ship-rule.md): levels x occupancy-fusion
bands (:func:`.network.fuse_with_occupancy`, no union, no piece removal), the release-5 constraint and objective,
on validation phantoms with arteries (``out/vsdf7/data/val``)."""


def calibrate_shipped(name: str = "vesselsdf-lite", data_dir="out/vesselsdf16/data/train", val_cases: int = 4,
                      write: bool = False, device="cpu", release: int = 4) -> dict:
    """:func:`calibrate_surface` of a shipped model on the last ``val_cases`` phantoms of its training
    folder (the validation phantoms of its training runs); ``write`` stores the choice in its registry
    entry. ``release`` 4 uses :data:`RELEASE4_GRID`, 3 the release-3 grid (no piece removal, Dice and
    connectivity only)."""
    import json

    from ..registry import load_model
    from .evaluation import load_eval_cases

    torch.set_num_threads(1)
    net = load_model("vesselsdf", name, str(device))[0]
    grids = {8: RELEASE8_GRID, 6: RELEASE6_GRID, 5: RELEASE5_GRID, 4: RELEASE4_GRID}
    grid = next((grids[r] for r in sorted(grids, reverse=True) if release >= r), {})
    result = calibrate_surface(net, load_eval_cases(data_dir)[-val_cases:], device, **grid)
    summary = {k: v for k, v in result.items() if k != "table"}
    summary["objective_value"] = summary.pop("objective")
    print(json.dumps(summary))
    if write:
        path = Path(__file__).resolve().parents[1] / "models" / f"{name}.json"
        entry = json.loads(path.read_text(encoding="utf-8"))
        entry["config"] = {**entry["config"], "level_mm": result["level_mm"],
                           "union_threshold": result["union_threshold"], "union_connected": result["union_connected"],
                           "min_piece_mm3": result.get("min_piece_mm3", 0.0),
                           "piece_keep_prob": result.get("piece_keep_prob", 0.0),
                           "piece_keep_near_mm": result.get("piece_keep_near_mm", 0.0),
                           "fusion_band_mm": result.get("fusion_band_mm", 0.0)}
        entry.setdefault("training", {})["surface_calibration"] = {
            **summary, "command": f"python -c \"from VesselReconLib.vesselsdf.train import calibrate_shipped; "
                                  f"calibrate_shipped('{name}', '{data_dir}', {val_cases}, write=True, release={release})\"",
            "cases": f"the last {val_cases} phantoms of {data_dir} (the training runs' validation phantoms)"}
        path.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    return result

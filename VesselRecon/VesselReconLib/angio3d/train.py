"""Training of 3DAngioNet on ``xray`` phantom datasets: segmentation first, then surface refinement.

Stage 1 (segmentation): native-scale tiles along each branch's SOI in both views (rotated so that
start -> end runs along +x), target = that SOI branch only (neighbours and overlaps are in the image,
not in the label); BCE + Dice, Adam lr 1e-3, learning rate x0.96 per epoch.
Stage 2 (SR): the "(-) SR" pipeline (trained U-Net, centrelines, triangulation, template) gives the
initial mesh of every branch; the target is the template built on the true 3D centreline with the
same ring phase; L = L_MSE + 0.01 L_Norm + 2.5 L_Edge + 100 L_Lap + 0.0002 L_Seg, Adam lr 1e-3, batch
size 1, learning rate x0.99 per epoch; the U-Net is frozen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..phantoms.xray import XrayCase, list_cases, load_case
from . import losses, template
from .network import Angio3DNet
from .rasterizer import soft_silhouette
from .refinement import MeshFrame, mesh_frame, project_torch, refine_vertices, sr_images, to_crop
from .segmentation import crop_affine, invert_affine, sample_crops

log = logging.getLogger(__name__)
SIGMA = 0.02            # soft-rasteriser sharpness (px^2): a larger value inflates the union of tiny triangles
MAX_INITIAL_MAE = 3.0   # mm: gross reconstruction failures (wrong 2D path) are not SR training targets


def load_cases(folder: str | Path, limit: int | None = None) -> list[XrayCase]:
    cases = [load_case(p) for p in list_cases(folder)]
    if not cases:
        raise FileNotFoundError(f"No xray cases in {folder}: write some with `vesselrecon phantoms xray`.")
    return cases[:limit] if limit else cases


# ------------------------------------------------------------------------------- segmentation


def segmentation_tiles(cases: list[XrayCase], size: int, rng: np.random.Generator, per_branch: int = 2,
                       augment: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Native-scale training tiles (N, 1, S, S), their SOI targets and loss weights.

    Each tile is centred on a random point of a branch's SOI chord (plus a few pixels across it) and
    rotated so that start -> end runs along +x, as the inference strips are; with ``augment`` the angle
    is jittered by ~8 degrees and the scale by 0.75-1.35 (other pixel sizes and magnifications). The
    target is the **segment of interest only**: that branch's own projection; neighbouring,
    overlapping and crossing vessels, the catheter and the vessel beyond the SOI ends are in the image
    but not in the label. The weight is zero beyond the start/end along the axis (where the inference
    strip is cut anyway).
    """
    from .segmentation import slab_weights, strip_affine

    images, targets, weights = [], [], []
    for case in cases:
        for view in range(2):
            image = torch.as_tensor(case.images[view])
            for branch, (start, end) in enumerate(case.soi_points[view]):
                label = torch.as_tensor(case.branch_mask(view, branch).astype(np.float32))
                axis = (end - start) / max(np.linalg.norm(end - start), 1e-9)
                normal = np.array([-axis[1], axis[0]])
                for _ in range(per_branch):
                    u = rng.uniform(0, 1) if augment else 0.5
                    centre = start + u * (end - start) + (rng.normal(0, 4) if augment else 0.0) * normal
                    angle = np.arctan2(axis[1], axis[0]) + (np.radians(rng.normal(0, 8)) if augment else 0.0)
                    direction = np.array([np.cos(angle), np.sin(angle)])
                    scale = float(np.exp(rng.uniform(np.log(0.75), np.log(1.35)))) if augment else 1.0
                    affine = strip_affine(centre - direction, centre + direction, size, size, scale)
                    images.append(sample_crops(image, [affine], size))
                    targets.append((sample_crops(label, [affine], size) > 0.5).float())
                    weights.append(torch.as_tensor(slab_weights(start, end, affine, (size, size)))[None, None])
    return torch.cat(images), torch.cat(targets), torch.cat(weights)


def weighted_bce_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice restricted to the weighted pixels (the paper's segmentation loss)."""
    import torch.nn.functional as F

    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / weight.sum().clamp(min=1)
    prob = torch.sigmoid(logits) * weight
    dice = 1 - (2 * (prob * target).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + (target * weight).sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def augment_intensity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gamma, blur and noise per tile (on top of the phantoms' own randomisation)."""
    import torch.nn.functional as F

    n = len(x)
    lo = x.amin((1, 2, 3), keepdim=True)
    hi = x.amax((1, 2, 3), keepdim=True)
    unit = (x - lo) / (hi - lo).clamp(min=1e-6)
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.5, 0.5, generator=generator))
    unit = unit.clamp(min=0) ** gamma
    blur = torch.rand(n, generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([0.25, 0.5, 0.25])
        k2 = (kernel[:, None] * kernel[None])[None, None]
        unit[blur] = F.conv2d(F.pad(unit[blur], (1, 1, 1, 1), mode="replicate"), k2)
    noise = torch.rand(n, 1, 1, 1, generator=generator) * 0.05
    return unit + noise * torch.randn(unit.shape, generator=generator)


def train_segmentation(net: Angio3DNet, cases, val_cases, out_dir: Path, epochs: int, batch_size: int = 8,
                       seed: int = 0, progress=None) -> list[dict]:
    """Stage 1 with the shared :class:`~VesselReconLib.training.Trainer` (only the U-Net is optimised):
    native-scale SOI tiles, segment-of-interest target, weighted BCE + Dice, Adam 1e-3 x0.96/epoch."""
    from ..metrics import dice
    from ..training import Trainer
    from .segmentation import normalize_crops

    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    size = net.crop_size
    set_bn_momentum(net.segmenter, 0.1)            # EfficientNet's 0.01 lags far behind a fine-tuned network
    x_val, y_val, w_val = segmentation_tiles(val_cases, size, np.random.default_rng(seed + 1), per_branch=1,
                                             augment=False)
    optimizer = torch.optim.Adam(net.segmenter.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.96)

    def make_batches(epoch):
        x, y, w = segmentation_tiles(cases, size, rng)
        x = augment_intensity(x, generator)
        flip = torch.rand(len(x), generator=generator) < 0.5           # mirror across the start -> end axis
        x[flip], y[flip], w[flip] = x[flip].flip(-2), y[flip].flip(-2), w[flip].flip(-2)
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            yield x[index], y[index], w[index]

    def loss_fn(model, batch):
        x, y, w = batch
        return weighted_bce_dice(model.segment(normalize_crops(x)), y, w)

    def validate(model):
        probs = torch.sigmoid(model.segment(normalize_crops(x_val))) * w_val
        return {"dice": dice(probs.numpy() > 0.5, (y_val * w_val).numpy() > 0.5)}

    trainer = Trainer(net, optimizer, loss_fn, out_dir / "segmentation", scheduler=scheduler, monitor="val_dice",
                      mode="max")
    n_batches = int(np.ceil(sum(4 * len(c.soi_points[0]) for c in cases) / batch_size))
    history = trainer.fit(make_batches, epochs, validate=validate, batches_per_epoch=n_batches, progress=progress)
    trainer.load_best()
    recalibrate_batchnorm(net, make_batches(epochs))
    return history


def set_bn_momentum(module: torch.nn.Module, momentum: float) -> None:
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum


def recalibrate_batchnorm(net: Angio3DNet, batches, limit: int = 60) -> None:
    """Re-estimate the U-Net's BatchNorm running statistics with the final weights (cumulative average
    over ``limit`` training batches), so that eval mode sees the statistics the weights were trained with."""
    from .segmentation import normalize_crops

    layers = [m for m in net.segmenter.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    net.segmenter.train()
    with torch.no_grad():
        for index, (x, _, _) in enumerate(batches):
            if index >= limit:
                break
            net.segment(normalize_crops(x))
    set_bn_momentum(net.segmenter, 0.1)
    net.eval()


# ------------------------------------------------------------------------------- refinement


@dataclass
class SRSample:
    """One branch of one case, ready for the SR loss."""

    images_a: torch.Tensor
    images_b: torch.Tensor
    matrices: list[torch.Tensor]
    inverse: list[torch.Tensor]
    raster_inverse: list[torch.Tensor]
    initial: torch.Tensor
    frame: MeshFrame
    target: torch.Tensor
    target_world: np.ndarray
    target_normals: torch.Tensor
    masks: torch.Tensor


def set_offset_scale(net: Angio3DNet, scale: float) -> None:
    """Change the SR output scale, rescaling the last layer so the refined mesh stays the same."""
    refiner = net.refiner
    ratio = refiner.offset_scale / float(scale)
    with torch.no_grad():
        refiner.last.linear.weight.mul_(ratio)
        refiner.last.linear.bias.mul_(ratio)
    refiner.offset_scale = float(scale)
    net.config["offset_scale"] = float(scale)


def target_vertices(case: XrayCase, branch: int, initial: np.ndarray) -> np.ndarray:
    """The true template mesh of a branch, with the initial mesh's ring phase."""
    truth = case.centerlines[branch]
    return template.template_vertices(truth["points"], truth["radii"], normal0=template.first_normal(initial))


def sr_samples(net: Angio3DNet, cases: list[XrayCase], max_initial_mae: float = MAX_INITIAL_MAE) -> list[SRSample]:
    """Run the "(-) SR" pipeline on every case and package each branch for SR training (branches
    whose initial mesh is grossly wrong, mean vertex error above ``max_initial_mae`` mm, are left out:
    their error comes from a wrong 2D path that local image features cannot fix)."""
    from .pipeline import reconstruct

    samples = []
    triangles = torch.as_tensor(template.triangles())
    raster = net.raster_size
    from ..errors import InputError

    for case in cases:
        try:
            result = reconstruct(case.images, case.geometries, [np.array(p) for p in case.soi_points], net=net,
                                 refine=False, calibrate=False, stitch=False)
        except InputError as exc:
            log.warning("skipping %s: %s", case.folder, exc)
            continue
        n = len(result.branches)
        images = sr_images(result.raw_crops, result.crop_probabilities)
        for b, branch in enumerate(result.branches):
            target = target_vertices(case, b, branch.initial_vertices)
            if np.linalg.norm(branch.initial_vertices - target, axis=1).mean() > max_initial_mae:
                log.info("no SR target from %s branch %d: initial mesh off by more than %.1f mm",
                         case.folder, b, max_initial_mae)
                continue
            frame = mesh_frame(branch.centerline, branch.initial_vertices)
            target_n = torch.as_tensor(frame.to_normalised(target), dtype=torch.float32)[None]
            raster_affines = [crop_affine(*case.soi_points[v][b], raster) for v in range(2)]
            masks = torch.cat([(sample_crops(torch.as_tensor(case.branch_mask(v, b).astype(np.float32)),
                                             [raster_affines[v]], raster) > 0.5).float()[:, 0] for v in range(2)])
            samples.append(SRSample(
                images_a=images[b:b + 1], images_b=images[n + b:n + b + 1],
                matrices=[torch.as_tensor(g.projection_matrix()[None], dtype=torch.float32) for g in result.geometries],
                inverse=[torch.as_tensor(invert_affine(result.affines[v, b])[None], dtype=torch.float32) for v in range(2)],
                raster_inverse=[torch.as_tensor(invert_affine(a)[None], dtype=torch.float32) for a in raster_affines],
                initial=torch.as_tensor(branch.initial_vertices[None], dtype=torch.float32), frame=frame,
                target=target_n, target_world=target,
                target_normals=losses.vertex_normals(target_n, triangles), masks=masks))
    return samples


def sr_forward(net: Angio3DNet, sample: SRSample, with_silhouette: bool = True):
    """Refined world vertices and the loss terms of one sample."""
    world, _, refined_n = refine_vertices(
        net, sample.images_a, sample.images_b, sample.matrices[0], sample.matrices[1], sample.inverse[0],
        sample.inverse[1], sample.initial, [sample.frame])
    edges = torch.as_tensor(template.edges())
    silhouettes = None
    if with_silhouette:
        triangles = torch.as_tensor(template.coarse_triangles(2))
        silhouettes = torch.stack([
            soft_silhouette(to_crop(project_torch(sample.matrices[v], world), sample.raster_inverse[v])[0],
                            triangles, (net.raster_size, net.raster_size), sigma=SIGMA)
            for v in range(2)])
    total, terms = losses.mesh_loss(refined_n, sample.target, sample.target_normals, edges,
                                    silhouettes, sample.masks if with_silhouette else None,
                                    weights=None if with_silhouette else {"seg": 0.0})
    return world, total, terms


def train_refinement(net: Angio3DNet, samples: list[SRSample], val_samples: list[SRSample], out_dir: Path,
                     epochs: int, with_silhouette: bool = True, seed: int = 0, progress=None) -> list[dict]:
    """Stage 2: SR with batch size 1 (the U-Net frozen), Adam lr 1e-3, x0.99 per epoch."""
    from ..training import Trainer

    for p in net.segmenter.parameters():
        p.requires_grad_(False)
    params = list(net.encoder.parameters()) + list(net.refiner.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.99)
    generator = torch.Generator().manual_seed(seed)

    def make_batches(epoch):
        for index in torch.randperm(len(samples), generator=generator).tolist():
            yield samples[index]

    def loss_fn(model, sample):
        return sr_forward(model, sample, with_silhouette)[1]

    def validate(model):
        errors = [np.linalg.norm(sr_forward(model, s, False)[0][0].numpy() - s.target_world, axis=1).mean()
                  for s in val_samples]
        return {"mae_mm": float(np.mean(errors))}

    name = "refinement" if with_silhouette else "refinement-nodiffrend"
    trainer = Trainer(net, optimizer, loss_fn, out_dir / name, scheduler=scheduler, monitor="val_mae_mm", mode="min")
    history = trainer.fit(make_batches, epochs, validate=validate, batches_per_epoch=len(samples), progress=progress)
    trainer.load_best()
    for p in net.segmenter.parameters():
        p.requires_grad_(True)
    return history

"""Training of 3DAngioNet on ``xray`` phantom datasets: segmentation first, then surface refinement.

Stage 1 (segmentation): SOI crops of both views (start/end jittered by a few pixels), target = the
contrast-filled vessels in the crop; BCE + Dice, Adam lr 1e-3, learning rate x0.96 per epoch.
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


def segmentation_crops(cases: list[XrayCase], size: int, rng: np.random.Generator, jitter: float = 4.0,
                       repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw SOI crops (N, 1, S, S) and vessel-mask crops of every case, view and branch."""
    images, masks = [], []
    for _ in range(repeats):
        for case in cases:
            for view in range(2):
                image = torch.as_tensor(case.images[view])
                vessels = torch.as_tensor(case.vessels[view].astype(np.float32))
                affines = [crop_affine(*(p + rng.normal(0, jitter, p.shape)), size) for p in case.soi_points[view]]
                images.append(sample_crops(image, affines, size))
                masks.append((sample_crops(vessels, affines, size) > 0.5).float())
    return torch.cat(images), torch.cat(masks)


def train_segmentation(net: Angio3DNet, cases, val_cases, out_dir: Path, epochs: int, batch_size: int = 8,
                       seed: int = 0, progress=None) -> list[dict]:
    """Stage 1 with the shared :class:`~VesselReconLib.training.Trainer` (only the U-Net is optimised)."""
    from ..metrics import dice
    from ..training import Trainer
    from .segmentation import normalize_crops

    rng = np.random.default_rng(seed)
    size = net.crop_size
    x_val, y_val = segmentation_crops(val_cases, size, np.random.default_rng(seed + 1), jitter=0.0)
    criterion = losses.BCEDiceLoss()
    optimizer = torch.optim.Adam(net.segmenter.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.96)

    def make_batches(epoch):
        x, y = segmentation_crops(cases, size, rng)
        flip = torch.rand(len(x)) < 0.5                        # mirror across the start -> end axis
        x[flip], y[flip] = x[flip].flip(-2), y[flip].flip(-2)
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            yield x[index], y[index]

    def loss_fn(model, batch):
        x, y = batch
        return criterion(model.segment(normalize_crops(x)), y)

    def validate(model):
        probs = torch.sigmoid(model.segment(normalize_crops(x_val)))
        return {"dice": dice(probs.numpy() > 0.5, y_val.numpy() > 0.5)}

    trainer = Trainer(net, optimizer, loss_fn, out_dir / "segmentation", scheduler=scheduler, monitor="val_dice",
                      mode="max")
    n_batches = int(np.ceil(sum(2 * len(c.soi_points[0]) for c in cases) / batch_size))
    history = trainer.fit(make_batches, epochs, validate=validate, batches_per_epoch=n_batches, progress=progress)
    trainer.load_best()
    return history


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
            masks = torch.cat([(sample_crops(torch.as_tensor((case.soi_masks[v] == b + 1).astype(np.float32)),
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
    world, initial_n, refined_n = refine_vertices(
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
    total, terms = losses.mesh_loss(refined_n, sample.target, initial_n, sample.target_normals, edges,
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

"""Surface refinement glue: mesh normalisation, vertex -> crop projection and the SR forward pass.

Before SR the mesh is normalised: translated so the centreline centroid is at the origin, rotated
so the start -> end direction is +z, and scaled by the largest extent so it fits a unit box. The
network's offsets are added in that space, and the result is mapped back to patient mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import template


@dataclass
class MeshFrame:
    """world -> normalised: ``(x - centre) @ rotation.T / scale``."""

    centre: np.ndarray
    rotation: np.ndarray
    scale: float

    def to_normalised(self, points):
        if isinstance(points, torch.Tensor):
            c, r = (torch.as_tensor(a, dtype=points.dtype, device=points.device) for a in (self.centre, self.rotation))
            return (points - c) @ r.T / self.scale
        return (np.asarray(points, float) - self.centre) @ self.rotation.T / self.scale

    def to_world(self, points):
        if isinstance(points, torch.Tensor):
            c, r = (torch.as_tensor(a, dtype=points.dtype, device=points.device) for a in (self.centre, self.rotation))
            return points * self.scale @ r + c
        return np.asarray(points, float) * self.scale @ self.rotation + self.centre


def mesh_frame(centerline: np.ndarray, vertices: np.ndarray) -> MeshFrame:
    """Frame that centres the centreline, aligns start -> end with +z and fits the mesh in a unit box."""
    centerline = np.asarray(centerline, float)
    z = centerline[-1] - centerline[0]
    z = z / max(np.linalg.norm(z), 1e-9)
    x = template.initial_normal(z)
    rotation = np.stack([x, np.cross(z, x), z])
    centre = centerline.mean(0)
    local = (np.asarray(vertices, float) - centre) @ rotation.T
    return MeshFrame(centre, rotation, float(max(np.ptp(local, axis=0).max(), 1e-6)))


def project_torch(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, 3, 4) projection matrices applied to (B, V, 3) points -> (B, V, 2) pixels."""
    homog = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ matrix.transpose(1, 2)
    return homog[..., :2] / homog[..., 2:3]


def to_crop(pixels: torch.Tensor, inverse_affine: torch.Tensor) -> torch.Tensor:
    """Image pixels (B, V, 2) -> crop pixels with (B, 2, 3) image-to-crop affines."""
    return pixels @ inverse_affine[:, :, :2].transpose(1, 2) + inverse_affine[:, None, :, 2]


def crop_to_grid(crop_pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Crop pixel centres -> grid_sample coordinates with ``align_corners=False``."""
    return (2 * crop_pixels + 1) / size - 1


def sr_images(raw_crops: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """The 3-channel SR encoder input: normalised crop, vessel probability, thresholded mask."""
    from .segmentation import normalize_crops

    prob = probabilities[:, None] if probabilities.ndim == 3 else probabilities
    return torch.cat([normalize_crops(raw_crops), prob, (prob > 0.5).to(prob.dtype)], 1)


def refine_vertices(net, images_a, images_b, matrices_a, matrices_b, inverse_a, inverse_b,
                    vertices: torch.Tensor, frames: list[MeshFrame]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SR pass for a batch of branches.

    :param images_a: (B, 3, S, S) SR inputs of view A (see :func:`sr_images`).
    :param matrices_a: (B, 3, 4) projection matrices; ``inverse_a``: (B, 2, 3) image-to-crop affines.
    :param vertices: (B, V, 3) initial vertices in patient mm.
    :returns: refined world vertices, normalised initial and normalised refined vertices.
    """
    size = images_a.shape[-1]
    grid_a = crop_to_grid(to_crop(project_torch(matrices_a, vertices), inverse_a), size)
    grid_b = crop_to_grid(to_crop(project_torch(matrices_b, vertices), inverse_b), size)
    coords = torch.stack([f.to_normalised(v) for f, v in zip(frames, vertices)])
    refined = coords + net(images_a, images_b, grid_a, grid_b, coords).to(coords.dtype)
    world = torch.stack([f.to_world(v) for f, v in zip(frames, refined)])
    return world, coords, refined

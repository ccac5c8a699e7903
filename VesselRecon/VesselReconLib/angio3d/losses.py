"""3DAngioNet losses: L = L_MSE + 0.01 L_Norm + 2.5 L_Edge + 100 L_Lap + 0.0002 L_Seg, and BCE + Dice.

All mesh terms work on (B, V, 3) vertex tensors in the normalised mesh space and the template's
fixed edge list, with vertex correspondence to the true template mesh (same ring phase), written as
the paper writes them (it builds on Pixel2Mesh, Wang et al., ECCV 2018):

- ``L_MSE = 1/(3V) sum_i |v_i - v*_i|^2``;
- ``L_Norm`` (eq. 3) ``= 1/|E| sum_(i,j) < (v_i - v_j) / |v_i - v_j| , n*_i >^2``: every predicted edge
  lies in the true surface, i.e. is orthogonal to the true vertex normal ``n*_i``;
- ``L_Edge = 1/|E| sum_(i,j) |v_i - v_j|^2``;
- ``L_Lap = 1/V sum_i |delta(v_i) - delta(v*_i)|^2`` with ``delta(v_i) = v_i - mean of its neighbours``:
  the predicted mesh's local shape against the **ground truth**'s;
- ``L_Seg``: per view, binary cross-entropy + Dice between the soft silhouette ``S`` of the predicted
  mesh and the 2D SOI mask ``M``, averaged over views and batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTS = {"mse": 1.0, "norm": 0.01, "edge": 2.5, "lap": 100.0, "seg": 0.0002}


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def edge_vectors(vertices: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return vertices[:, edges[:, 1]] - vertices[:, edges[:, 0]]


def edge_loss(pred: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return (edge_vectors(pred, edges) ** 2).sum(-1).mean()


def normal_loss(pred: torch.Tensor, target_normals: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(edge_vectors(pred, edges), dim=-1)
    return ((unit * target_normals[:, edges[:, 0]]).sum(-1) ** 2).mean()


def laplacian(vertices: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """delta(v) = v - mean of its mesh neighbours, (B, V, 3)."""
    n = vertices.shape[1]
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    sums = vertices.new_zeros(vertices.shape).index_add(1, src, vertices[:, dst])
    degree = torch.bincount(src, minlength=n).to(vertices.dtype).clamp_min(1)
    return vertices - sums / degree[None, :, None]


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the predicted and the true meshes' Laplacian coordinates."""
    return ((laplacian(pred, edges) - laplacian(target, edges)) ** 2).sum(-1).mean()


def silhouette_loss(silhouettes: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """BCE + Dice between soft silhouettes (probabilities) and masks (..., H, W), averaged over views."""
    s = silhouettes.flatten(-2).clamp(eps, 1 - eps)
    m = masks.flatten(-2).to(s.dtype)
    bce = F.binary_cross_entropy(s, m, reduction="none").mean(-1)
    dice = 1 - (2 * (s * m).sum(-1) + eps) / (s.sum(-1) + m.sum(-1) + eps)
    return (bce + dice).mean()


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (B, V, 3)."""
    a, b, c = (vertices[:, triangles[:, k]] for k in range(3))
    face = torch.cross(b - a, c - a, dim=-1)
    normals = vertices.new_zeros(vertices.shape)
    for k in range(3):
        normals = normals.index_add(1, triangles[:, k], face)
    return F.normalize(normals, dim=-1)


def mesh_loss(pred, target, target_normals, edges, silhouettes=None, masks=None,
              weights: dict | None = None) -> tuple[torch.Tensor, dict]:
    """The weighted total and each term (as floats). ``silhouettes``/``masks`` may be None
    (the "(-) DiffRend" ablation trains without ``L_Seg``)."""
    weights = {**WEIGHTS, **(weights or {})}
    terms = {"mse": mse_loss(pred, target), "norm": normal_loss(pred, target_normals, edges),
             "edge": edge_loss(pred, edges), "lap": laplacian_loss(pred, target, edges)}
    if silhouettes is not None and weights["seg"] > 0:
        terms["seg"] = silhouette_loss(silhouettes, masks)
    total = sum(weights[k] * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


class BCEDiceLoss(torch.nn.Module):
    """Segmentation loss: binary cross-entropy on logits + MONAI Dice (sigmoid)."""

    def __init__(self):
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target) + self.dice(logits, target)

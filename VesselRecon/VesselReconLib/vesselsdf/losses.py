"""VesselSDF training loss and its terms.

``L = λs·L_sdf + λo·L_occ + λd·L_dice + λe·L_eik + λg·L_gauss + λr·L_sur`` with the paper's weights
λs=0.1, λo=0.01, λe=0.01, λg=0.1, λr=0.1 (:class:`LossConfig`), and λd=0.01 (ours, below).

Conventions (tensors ``(N, 1, K, J, I)``, spacing ``(Δx, Δy, Δz)`` in mm, SDF ``f`` in mm):

* ``L_sdf = mean |f − f*|`` with ``f*`` the signed Euclidean distance of the binary ground truth
  on its true anisotropic grid (:func:`signed_distance`, negative inside), truncated to
  ``±sdf_truncation_mm`` (default 5 mm; ``None`` = untruncated). The paper does not truncate; we
  do because a two-level refiner sees only a few centimetres, so distances of 20-40 mm to the
  nearest vessel are unknowable from its input, and regressing them dragged the whole field
  towards its mean. The zero level -- all that is meshed -- is unaffected.
* ``L_occ`` = binary cross-entropy of the occupancy logits, plus (our addition, ``λd = 0.01``) a
  soft Dice term ``L_dice``: with BCE alone the thin vessels of real CT (a few % of the liver) were
  under-segmented.
* ``L_eik = mean((f_x² + f_y² + (γ·f_z)²) − 1)²`` with ``γ = Δz/Δx``. Central differences per
  voxel step ``D_i, D_j, D_k`` (interior voxels only) give ``f_x = D_i f / Δx`` and
  ``f_y = D_j f / Δy`` in mm/mm. ``f_z`` is the through-plane derivative with respect to the slice
  coordinate stretched by ``γ`` (``z' = γ·z``, the convention of the paper's formula), i.e.
  ``f_z = D_k f / (γ·Δz)``; hence ``γ·f_z = ∂f/∂z`` and an exact SDF on an anisotropic grid gives
  ``L_eik ≈ 0`` (tested on analytic planes and spheres). With a truncated target the mean runs over
  the band ``|f*| < truncation`` only (outside it the target is not a distance field).
* ``L_gauss = mean(|f| · (f − G_σ f)²)`` on ``f`` in mm, the paper's scale (an earlier release
  divided ``f`` by 5 mm first, which made the term 125 times weaker), with ``G_σ`` a 3D Gaussian blur of standard deviation
  ``gauss_sigma_mm`` (default 1 mm, converted per axis to voxels; MONAI separable filtering with
  replicate padding, so a constant field is a fixed point).
* ``L_sdf_dice`` (ours, ``λsd``, 0 = off): the soft Dice of the SDF's own mask ``sigmoid(−f/τ)``
  (``τ`` = ``sdf_dice_tau_mm``) against the label. The L1 term is dominated by the many voxels
  far from a vessel and the Gaussian term penalises the cone-shaped minimum of a thin vessel's SDF
  more than L1 rewards it (at a vessel of radius σ the Gaussian term's gradient is ≈ 4× the L1
  one), so without this term the refiner's zero level shrinks thin vessels away; the Dice term
  ties the zero level -- what is meshed -- to the vessels.
* ``L_cldice`` (ours, release 6, ``λcl``, 0 = off): the soft clDice (Shit et al. 2021) of the SDF's
  mask ``sigmoid(−f/τ)`` against the label, with skeletons taken **in-plane, per slice**
  (:func:`soft_skeleton`: 2D min/max pooling; thick slices 2.5-5 mm apart would erase a vessel
  through-plane in one step). Its sensitivity half ``Σ S(label)·m / Σ S(label)`` weights each
  vessel by its centreline length, not its volume, so a thin branch counts as much as a trunk of the
  same length: the volume Dice lets the refiner drop thin vessels at little cost (it missed surface:
  on held-out phantoms its truth→surface distance was 1.79 mm against the occupancy stage's 1.38 mm,
  while its surface→truth distance was lower, 1.07 vs 1.35 mm).
* ``L_agree`` (ours, round 7, ``λa``, 0 = off): a hinge that keeps the SDF consistent with the
  occupancy where the occupancy is confident and right: ``Σ relu(f + m)·A / Σ A`` over
  ``A = (p > 0.5) ∧ label`` (``p`` the detached occupancy probability, ``m`` = ``agree_margin_mm``).
  Normalised by the agreeing voxels, not the whole crop, so a thin vessel that the occupancy found
  and the refiner erased (``f > −m`` there) costs as much per voxel as a trunk would; voxels the
  refiner already places inside by ``m`` cost nothing.
* ``L_skel`` (ours, round 9, ``λsk``, 0 = off): the skeleton recall of Kirchhoff et al. (ECCV 2024) moved
  to the **fine slice grid**: ``1 − Σ S·sigmoid(−F/τ) / Σ S`` with ``F`` the SDF linearly interpolated between
  the crop's thick slices to the fine (high-resolution) truth's slice positions, exactly as inference
  interpolates it (:func:`.inference.interpolate_at`), and ``S`` the fine truth's *tubed* skeleton
  (:func:`.data.tubed_skeleton`). A loss on the native slices alone can at best reach what a perfect
  per-slice distance reaches after interpolation; this one asks that the interpolated field keep the vessels
  *between* slices, where the recall of sparse-slice input is lost.
* ``L_wall`` (ours, round 11, ``λw``, 0 = off): the **truth→surface distance** as a loss,
  ``Σ_W |f − f*| / |W|`` over the truth's wall ``W = {|f*| ≤ wall_band_mm}`` (half an in-plane pixel). At a
  point of the true wall ``|f|`` is its distance to the predicted surface, so this is the truth→surface side
  of the Chamfer distance that the refiner loses (it erases thin vessels: their walls see ``f > 0``).
  Normalised by the wall's voxels, so a thin vessel's wall counts per unit of area, not drowned in the crop's
  far field as in ``L_sdf``; and symmetric (an inflated wall, ``f < 0`` there, costs too), unlike the
  one-sided ``L_agree`` / ``L_skel`` that marked more vessels.
* ``L_sur = mean exp(−β·|f|)`` with ``β = surface_beta`` (default 1 / mm): discourages spurious
  near-zero regions (floating fragments).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses.cldice import soft_skel
from monai.networks.layers.convutils import gaussian_1d
from monai.networks.layers.simplelayers import separable_filtering

from .inference import interpolate_at


@dataclass
class LossConfig:
    """Loss weights and regulariser parameters (paper defaults)."""

    lambda_sdf: float = 0.1
    lambda_occ: float = 0.01
    lambda_eik: float = 0.01
    lambda_gauss: float = 0.1
    lambda_sur: float = 0.1
    lambda_dice: float = 0.01
    lambda_sdf_dice: float = 0.0
    sdf_dice_tau_mm: float = 0.5
    lambda_cldice: float = 0.0
    cldice_iterations: int = 10
    lambda_agree: float = 0.0
    agree_margin_mm: float = 0.25
    lambda_skel: float = 0.0
    lambda_wall: float = 0.0
    wall_band_mm: float = 0.35
    gauss_sigma_mm: float = 1.0
    surface_beta: float = 1.0
    sdf_truncation_mm: float | None = 5.0

    def to_dict(self) -> dict:
        return asdict(self)


def signed_distance(mask: np.ndarray, spacing: Sequence[float], far_mm: float | None = None) -> np.ndarray:
    """Signed Euclidean distance (mm, negative inside) of a KJI binary mask.

    :param mask: ``[k, j, i]`` boolean/0-1 array.
    :param spacing: ``(Δx, Δy, Δz)`` mm.
    :returns: float32 ``[k, j, i]``: the distance to the nearest voxel centre of the other class
        (``distance_transform_edt`` with ``sampling`` = spacing) minus half the smallest spacing, so
        the zero level lies between the two classes (``f > 0`` outside, ``f < 0`` inside).
    :param far_mm: value for an all-background (``+far_mm``) or all-vessel (``-far_mm``) mask
        (default: the volume diagonal).
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask).astype(bool)
    sampling = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    far = float(far_mm) if far_mm is not None else float(np.linalg.norm(np.multiply(mask.shape, sampling)))
    if not mask.any():
        return np.full(mask.shape, far, np.float32)
    if mask.all():
        return np.full(mask.shape, -far, np.float32)
    outside = distance_transform_edt(~mask, sampling=sampling)
    inside = distance_transform_edt(mask, sampling=sampling)
    half = 0.5 * min(sampling)
    return np.where(mask, half - inside, outside - half).astype(np.float32)


def _spacing_tensor(spacing, batch: int, device) -> torch.Tensor:
    """``(N, 3)`` spacing (Δx, Δy, Δz) from one triple or one triple per batch item."""
    s = torch.as_tensor(np.asarray(spacing, dtype=np.float32), device=device)
    return s.reshape(-1, 3).expand(batch, 3)


def eikonal_loss(f: torch.Tensor, spacing, band: torch.Tensor | None = None) -> torch.Tensor:
    """``mean((f_x² + f_y² + (γ f_z)²) − 1)²`` on interior voxels (see the module docs).

    :param band: optional boolean mask ``(N, 1, K, J, I)``; the mean then runs over it only.
    """
    s = _spacing_tensor(spacing, f.shape[0], f.device).view(-1, 3, 1, 1, 1)
    dx, dy, dz = s[:, 0:1], s[:, 1:2], s[:, 2:3]
    gamma = dz / dx
    d_i = (f[:, :, 1:-1, 1:-1, 2:] - f[:, :, 1:-1, 1:-1, :-2]) / 2
    d_j = (f[:, :, 1:-1, 2:, 1:-1] - f[:, :, 1:-1, :-2, 1:-1]) / 2
    d_k = (f[:, :, 2:, 1:-1, 1:-1] - f[:, :, :-2, 1:-1, 1:-1]) / 2
    f_x, f_y, f_z = d_i / dx, d_j / dy, d_k / (gamma * dz)
    residual = ((f_x ** 2 + f_y ** 2 + (gamma * f_z) ** 2) - 1) ** 2
    if band is None:
        return residual.mean()
    inner = band[:, :, 1:-1, 1:-1, 1:-1].to(residual.dtype)
    return (residual * inner).sum() / inner.sum().clamp_min(1.0)


def gaussian_blur(f: torch.Tensor, spacing, sigma_mm: float) -> torch.Tensor:
    """3D Gaussian blur with per-axis sigma ``sigma_mm / spacing`` (replicate padding)."""
    sx, sy, sz = (float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1, 3)[0])
    kernels = [gaussian_1d(torch.tensor(max(sigma_mm / s, 1e-3)), truncated=3.0) for s in (sz, sy, sx)]
    kernels = [k / k.sum() for k in kernels]
    return separable_filtering(f, kernels, mode="replicate")


def gaussian_loss(f: torch.Tensor, spacing, sigma_mm: float = 1.0) -> torch.Tensor:
    """``mean(|f| · (f − G_σ f)²)``; zero for constant or linear (in the interior) fields."""
    return (f.abs() * (f - gaussian_blur(f, spacing, sigma_mm)) ** 2).mean()


def surface_loss(f: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``mean exp(−β |f|)``: 1 for f ≡ 0, → 0 far from the surface."""
    return torch.exp(-beta * f.abs()).mean()


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 − 2·Σpq / (Σp + Σq)`` over the batch (p = sigmoid of the logits)."""
    prob = torch.sigmoid(logits)
    target = mask.to(prob.dtype)
    return 1.0 - (2.0 * (prob * target).sum() + eps) / (prob.sum() + target.sum() + eps)


def sdf_dice_loss(f: torch.Tensor, mask: torch.Tensor, tau_mm: float = 0.5) -> torch.Tensor:
    """Soft Dice loss of the SDF's mask ``sigmoid(−f/τ)`` against the label."""
    return soft_dice_loss(-f / tau_mm, mask)


def soft_skeleton(x: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Soft morphological skeleton (Shit et al. 2021) of ``(N, 1, K, J, I)`` values in [0, 1], per slice:
    MONAI's 2D ``soft_skel`` on every slice (3D pooling would cross 2.5-5 mm slices); for a binary mask it
    is a binary subset of the mask along its centrelines."""
    n, c, k, j, i = x.shape
    planes = x.transpose(1, 2).reshape(n * k, c, j, i)
    return soft_skel(planes, iterations).reshape(n, k, c, j, i).transpose(1, 2)


def cldice_loss(f: torch.Tensor, mask: torch.Tensor, tau_mm: float = 0.5, iterations: int = 10,
                eps: float = 1.0) -> torch.Tensor:
    """``1 − clDice`` of the SDF's soft mask ``sigmoid(−f/τ)`` against the label (in-plane skeletons; the
    sums pooled over the batch, where MONAI's ``SoftclDiceLoss`` averages per sample and, on 5D input,
    skeletonises in 3D)."""
    pred = torch.sigmoid(-f / tau_mm)
    target = mask.to(pred.dtype)
    skel_pred, skel_true = soft_skeleton(pred, iterations), soft_skeleton(target, iterations)
    t_prec = ((skel_pred * target).sum() + eps) / (skel_pred.sum() + eps)
    t_sens = ((skel_true * pred).sum() + eps) / (skel_true.sum() + eps)
    return 1.0 - 2.0 * t_prec * t_sens / (t_prec + t_sens)


def agreement_loss(f: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor, margin_mm: float = 0.25
                   ) -> torch.Tensor:
    """``Σ relu(f + m)·A / Σ A`` with ``A = (prob > 0.5) ∧ mask`` (module docs); 0 where ``A`` is empty."""
    agree = ((prob.detach() > 0.5) & (mask > 0)).to(f.dtype)
    return (torch.relu(f + margin_mm) * agree).sum() / agree.sum().clamp_min(1.0)


def skeleton_recall_loss(f: torch.Tensor, positions: torch.Tensor, skeleton: torch.Tensor, tau_mm: float = 0.5,
                         eps: float = 1.0) -> torch.Tensor:
    """``1 − Σ S·sigmoid(−F/τ) / Σ S`` (sums pooled over the batch), ``F`` = ``f`` at the fine ``positions``
    (:func:`.inference.interpolate_at`), ``S`` the fine truth's tubed skeleton ``(N, 1, M, J, I)`` (zero rows:
    padding)."""
    pred = torch.sigmoid(-interpolate_at(f, positions) / tau_mm)
    target = skeleton.to(pred.dtype)
    return 1.0 - ((pred * target).sum() + eps) / (target.sum() + eps)


def wall_loss(f: torch.Tensor, target: torch.Tensor, band_mm: float = 0.35) -> torch.Tensor:
    """``Σ_W |f − f*| / |W|`` over the true wall ``W = {|f*| ≤ band_mm}`` (module docs); 0 where ``W`` is empty."""
    wall = (target.abs() <= band_mm).to(f.dtype)
    return ((f - target).abs() * wall).sum() / wall.sum().clamp_min(1.0)


def sdf_loss(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean |f − f*|`` (mm)."""
    return (f - target).abs().mean()


def occupancy_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the occupancy logits."""
    return F.binary_cross_entropy_with_logits(logits, mask.to(logits.dtype))


def vesselsdf_loss(outputs: dict, mask: torch.Tensor, sdf_target: torch.Tensor | None, spacing,
                   config: LossConfig | None = None, fine: tuple | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted total and each term's value; terms of absent outputs are skipped.

    :param outputs: ``{"occupancy": logits or None, "sdf": mm or None}`` from the network.
    :param mask: ground-truth occupancy ``(N, 1, K, J, I)``.
    :param sdf_target: ``f*`` in mm (needed when the network predicts an SDF).
    :param spacing: ``(Δx, Δy, Δz)`` or ``(N, 3)``.
    :param fine: ``(positions, tubed skeleton)`` of the fine truth inside the crop (:func:`.data.random_crop`),
        needed by ``lambda_skel``.
    """
    config = config or LossConfig()
    terms: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    if outputs.get("occupancy") is not None:
        terms["occ"], weights["occ"] = occupancy_loss(outputs["occupancy"].float(), mask), config.lambda_occ
        if config.lambda_dice:
            terms["dice"], weights["dice"] = soft_dice_loss(outputs["occupancy"].float(), mask), config.lambda_dice
    f = outputs.get("sdf")
    if f is not None:
        f = f.float()
        band = None
        if config.sdf_truncation_mm:
            band = sdf_target.abs() < config.sdf_truncation_mm
            sdf_target = sdf_target.clamp(-config.sdf_truncation_mm, config.sdf_truncation_mm)
        terms["sdf"], weights["sdf"] = sdf_loss(f, sdf_target), config.lambda_sdf
        if config.lambda_wall:
            terms["wall"] = wall_loss(f, sdf_target, config.wall_band_mm)
            weights["wall"] = config.lambda_wall
        terms["eik"], weights["eik"] = eikonal_loss(f, spacing, band), config.lambda_eik
        if config.lambda_gauss:
            terms["gauss"] = gaussian_loss(f, spacing, config.gauss_sigma_mm)
            weights["gauss"] = config.lambda_gauss
        terms["sur"], weights["sur"] = surface_loss(f, config.surface_beta), config.lambda_sur
        if config.lambda_sdf_dice:
            terms["sdf_dice"] = sdf_dice_loss(f, mask, config.sdf_dice_tau_mm)
            weights["sdf_dice"] = config.lambda_sdf_dice
        if config.lambda_cldice:
            terms["cldice"] = cldice_loss(f, mask, config.sdf_dice_tau_mm, config.cldice_iterations)
            weights["cldice"] = config.lambda_cldice
        if config.lambda_skel:
            if fine is None:
                raise ValueError("lambda_skel needs the fine truth of the crops (load the cases with fine=True).")
            terms["skel"] = skeleton_recall_loss(f, fine[0], fine[1], config.sdf_dice_tau_mm)
            weights["skel"] = config.lambda_skel
        if config.lambda_agree and outputs.get("occupancy") is not None:
            prob = torch.sigmoid(outputs["occupancy"].float())
            terms["agree"] = agreement_loss(f, prob, mask, config.agree_margin_mm)
            weights["agree"] = config.lambda_agree
    if not terms:
        raise ValueError("The network returned neither occupancy nor SDF.")
    total = sum(weights[k] * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}

"""VesselSDF networks: occupancy U-Net + SDF refiner U-Net conditioned on the image and the occupancy.

Tensor layout is ``(N, C, K, J, I)`` = ``(batch, channel, z, y, x)`` (KJI volumes). Both stages are
MONAI ``UNet`` networks with residual units, **batch normalisation** (at inference it uses the running
statistics, so the output of a voxel does not depend on how much of the image the network sees:
whole slice, liver box or sliding-window patch give the same answer) and a **strided first level**
(stride ``(1, 2, 2)``: the only full-resolution layers are the first strided convolution and a
4-channel output head), because thick-slice CT has 16 slices of 512 x 512 pixels.

Presets (``build_model(preset)``): ``"<size>"`` or ``"<size>-<variant>"`` with size ``lite`` or
``paper`` and variant

* ``full`` (default): occupancy stage; the refiner regresses the SDF directly,
  ``f = B·tanh(R([image, p, d₀/T]))``, from the image, the detached occupancy probability ``p`` and
  ``d₀``, the exact signed Euclidean distance of ``p > 0.5`` (scipy's EDT on the anisotropic grid,
  truncated to ``T`` = 5 mm), as the paper's refinement network conditioned on both;
* ``occ``: occupancy stage only (ablation "occupancy only");
* ``sdfonly``: the refiner on the CT alone, no occupancy stage, **capacity-matched**: its U-Net is
  widened so it has as many parameters as the full model (ablation "SDF only");
* ``nogauss``: the full network trained without the Gaussian loss (a loss setting, see
  :data:`VARIANT_LOSS`; architecture identical to ``full``);
* ``unet``: a plain MONAI 3D U-Net predicting occupancy (speed baseline of ``vesselrecon bench``;
  ``paper-unet`` is the 19.2 M-parameter MONAI UNet ``(32, 64, 128, 256, 512)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.nets import UNet
from torch import nn

VARIANTS = ("full", "occ", "sdfonly", "nogauss", "unet")
VARIANT_LOSS = {"nogauss": {"lambda_gauss": 0.0}}
"""Loss overrides implied by a variant (see :class:`..losses.LossConfig`)."""
OCCUPANCY_PRIOR = -3.0
"""Constant added to the occupancy logits: sigmoid(-3) = 5 %, about the vessel fraction inside a
liver, so training starts from the class prior instead of 50 % (as RetinaNet's prior bias)."""
TRUNCATION_MM = 5.0
"""Truncation of the occupancy distance input (and of the training target, see ``LossConfig``)."""
HEAD_CHANNELS = 4
"""Channels of the full-resolution output head of every U-Net."""


def truncated_distance(mask: np.ndarray, spacing, truncation_mm: float) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest ``True`` voxel centre, capped at ``truncation_mm``.

    Exact, and cheaper than a 3D ``distance_transform_edt`` with anisotropic sampling: the squared
    3D distance is ``min over slices k' of d²_k'(j, i) + ((k − k')·Δz)²`` with ``d_k'`` the in-plane
    EDT of slice ``k'`` (the last pass of the separable EDT), and only slices closer than the cap
    can matter (none for slices ≥ ``truncation_mm`` apart: one 2D EDT per slice).

    :param mask: ``[k, j, i]`` boolean.
    :param spacing: ``(Δx, Δy, Δz)`` mm.
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, bool)
    cap = float(truncation_mm)
    planar = np.full(mask.shape, cap, np.float32)

    def in_plane(k: int) -> None:
        plane = mask[k]
        if plane.all():
            planar[k] = 0.0
        elif plane.any():
            planar[k] = np.minimum(distance_transform_edt(~plane, sampling=(spacing[1], spacing[0])), cap)

    workers = max(1, min(torch.get_num_threads(), mask.shape[0]))
    if workers > 1:  # scipy releases the GIL in the EDT's inner loops
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(in_plane, range(mask.shape[0])))
    else:
        for k in range(mask.shape[0]):
            in_plane(k)
    squared = planar ** 2
    best = squared.copy()
    dz = float(spacing[2])
    for offset in range(1, mask.shape[0]):
        gap = (offset * dz) ** 2
        if gap >= cap ** 2:
            break
        np.minimum(best[offset:], squared[:-offset] + gap, out=best[offset:])
        np.minimum(best[:-offset], squared[offset:] + gap, out=best[:-offset])
    return np.minimum(np.sqrt(best), cap)


def truncated_signed_distance(mask: np.ndarray, spacing, truncation_mm: float = TRUNCATION_MM) -> np.ndarray:
    """``clamp(signed_distance(mask), ±truncation_mm)`` (:func:`.losses.signed_distance`), computed
    with :func:`truncated_distance` (exact; tested against the 3D EDT)."""
    mask = np.asarray(mask, bool)
    cap = float(truncation_mm)
    if not mask.any():
        return np.full(mask.shape, cap, np.float32)
    if mask.all():
        return np.full(mask.shape, -cap, np.float32)
    half = 0.5 * min(float(v) for v in spacing)
    outside = truncated_distance(mask, spacing, cap + half)
    inside = truncated_distance(~mask, spacing, cap + half)
    return np.clip(np.where(mask, half - inside, outside - half), -cap, cap).astype(np.float32)


def occupancy_distance(prob: torch.Tensor, spacing, truncation_mm: float = TRUNCATION_MM) -> torch.Tensor:
    """Exact truncated signed distance (mm, negative inside) of the ``prob > 0.5`` region.

    :func:`truncated_signed_distance` per batch item (on the CPU): ``±(d − min spacing / 2)`` like
    :func:`.losses.signed_distance`, clamped to ``±truncation_mm``.

    :param prob: ``(N, 1, K, J, I)`` occupancy probabilities.
    :param spacing: ``(Δx, Δy, Δz)`` mm (one triple for the batch).
    """
    inside = (prob.detach() > 0.5).cpu().numpy()
    fields = [truncated_signed_distance(item[0], spacing, truncation_mm) for item in inside]
    return torch.from_numpy(np.stack(fields)[:, None]).to(prob.device, prob.dtype)


def occupancy_union(sdf: torch.Tensor, prob: torch.Tensor, spacing, threshold: float, connected: bool = True
                    ) -> torch.Tensor:
    """``min(sdf, d_τ)``: the union of the SDF's vessels and the confident occupancy ``p > threshold``.

    ``d_τ`` is the exact truncated signed distance of the confident occupancy
    (:func:`truncated_signed_distance`), so the result is still a distance field (the minimum of two
    SDFs is the SDF of the union, exactly outside both shapes). ``connected``: only the occupancy's
    26-connected components that touch the SDF's vessels (dilated by one voxel) are added, i.e. the
    occupancy extends the refined vessel tree but adds no isolated pieces of its own.
    """
    from scipy.ndimage import label, maximum_filter1d

    fields, confident = sdf.detach().cpu().numpy(), (prob.detach() > threshold).cpu().numpy()
    out = []
    for field, occ in zip(fields[:, 0], confident[:, 0]):
        if connected and occ.any():
            labels, count = label(occ, np.ones((3, 3, 3), bool))
            near = (field < 0).view(np.uint8)
            for axis in range(3):  # the 3x3x3 dilation, separably
                near = maximum_filter1d(near, 3, axis=axis, mode="constant")
            keep = np.zeros(count + 1, bool)
            keep[labels[(near > 0) & occ]] = True
            keep[0] = False
            occ = keep[labels]
        out.append(_union_with(field, occ, spacing) if occ.any() else field)
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32)).to(sdf.device, sdf.dtype)


def fuse_with_occupancy(sdf: torch.Tensor, prob: torch.Tensor, spacing, band_mm: float) -> torch.Tensor:
    """Component-preserving fusion (round 8): the occupancy ``p > 0.5`` decides which vessel pieces exist,
    the refined SDF only places their surface, at most ``band_mm`` from the occupancy's own.

    ``g = clip(sdf, d₀ − b, d₀ + b)`` with ``d₀`` the exact truncated SDF of the occupancy: nothing is
    added farther than ``b`` outside it, nothing removed deeper than ``b`` inside it. Where the refiner
    lost occupancy — a 26-connected piece of ``occupancy \\ {g < 0}`` reaching farther than ``b`` from
    ``{g < 0}`` (a thin vessel, or a whole component the refiner missed) — the occupancy's own surface
    is kept: ``min(g, SDF(piece))``. Shell pieces (the refiner moved a surface inwards within the band)
    stay as the refiner placed them.
    """
    from scipy.ndimage import label

    fields, occupied = sdf.detach().cpu().numpy(), (prob.detach() > 0.5).cpu().numpy()
    band, cap = float(band_mm), TRUNCATION_MM
    out = []
    for field, occ in zip(fields[:, 0], occupied[:, 0]):
        start = np.full(occ.shape, np.float32(cap))
        if occ.any():
            box = _grown_box(occ, spacing, cap, 2)
            start[box] = truncated_signed_distance(occ[box], spacing, cap)
        fused = np.clip(field, start - band, start + band)
        lost = occ & (fused >= 0)
        if lost.any():
            labels, count = label(lost, np.ones((3, 3, 3), bool))
            far = lost & (_distance_to(fused < 0, spacing, band) > band)
            keep = np.zeros(count + 1, bool)
            keep[labels[far]] = True   # far lies in lost: labels there are > 0
            if keep.any():
                fused = _union_with(fused, keep[labels], spacing)
        out.append(fused)
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32)).to(sdf.device, sdf.dtype)


def surface_field(sdf: torch.Tensor, prob: torch.Tensor | None, spacing, level_mm: float, union_threshold: float,
                  union_connected: bool = True, min_piece_mm3: float = 0.0, keep_prob: float = 0.0,
                  keep_near_mm: float = 0.0, fusion_band_mm: float = 0.0) -> torch.Tensor:
    """The field whose zero level is the output surface: ``sdf − level_mm``, fused with the occupancy
    (:func:`fuse_with_occupancy`) when ``fusion_band_mm`` > 0, else united with the confident occupancy
    (:func:`occupancy_union`) when ``union_threshold`` > 0 (``prob`` given), without the isolated pieces
    smaller than ``min_piece_mm3`` that are neither confident nor near the tree (:func:`remove_small_pieces`)."""
    if level_mm:
        sdf = sdf - level_mm
    if prob is not None and fusion_band_mm:
        sdf = fuse_with_occupancy(sdf, prob, spacing, fusion_band_mm)
    elif prob is not None and union_threshold:
        sdf = occupancy_union(sdf, prob, spacing, union_threshold, union_connected)
    if min_piece_mm3:
        sdf = remove_small_pieces(sdf, spacing, min_piece_mm3, prob, keep_prob, keep_near_mm)
    return sdf


def remove_small_pieces(field: torch.Tensor, spacing, min_volume_mm3: float, prob: torch.Tensor | None = None,
                        keep_prob: float = 0.0, keep_near_mm: float = 0.0) -> torch.Tensor:
    """The field without its isolated low-evidence specks: the 26-connected components of ``field < 0``
    (on the field's own grid, voxel volume Δx·Δy·Δz) smaller than ``min_volume_mm3`` get ``|f|``,
    unless (release 5) the piece is **confident** — its peak occupancy probability is at least
    ``keep_prob`` (with ``prob`` given) — or **near the tree** — within ``keep_near_mm`` (mm, exact
    anisotropic distance) of a piece of at least ``min_volume_mm3``: a thin vessel broken by partial
    volume between two thick slices is a small piece beside the tree, a noise speck is neither.

    A piece of the through-plane interpolated field always contains voxels of such a component (linear
    interpolation between two positive values is positive), so removed pieces vanish on any finer
    slice grid and from the mesh too. The larger pieces and the vessel tree are unchanged.
    """
    from scipy.ndimage import label, maximum

    fields = field.detach().cpu().numpy().copy()
    probs = None if prob is None or not keep_prob else prob.detach().cpu().numpy()
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    for index, item in enumerate(fields[:, 0]):
        labels, count = label(item < 0, np.ones((3, 3, 3), bool))
        if not count:
            continue
        small = np.concatenate([[False], np.bincount(labels.ravel())[1:] * voxel_mm3 < min_volume_mm3])
        if probs is not None and small.any():
            peak = np.concatenate([[0.0], maximum(probs[index, 0], labels, np.arange(1, count + 1))])
            small &= peak < keep_prob
        if keep_near_mm and small.any() and (~small[1:]).any():
            in_small = small[labels]
            distance = _distance_to((labels > 0) & ~in_small, spacing, keep_near_mm)
            nearest = np.full(count + 1, np.inf)
            np.minimum.at(nearest, labels[in_small], distance[in_small])
            small &= ~(nearest <= keep_near_mm)
        drop = small[labels]
        item[drop] = np.abs(item[drop])
    return torch.from_numpy(fields).to(field.device, field.dtype)


def _distance_to(mask: np.ndarray, spacing, cap_mm: float) -> np.ndarray:
    """Exact distance (mm) to ``mask`` capped just above ``cap_mm``, on ``mask``'s bounding box grown by
    the cap (beyond it the cap: same result, less work)."""
    cap = float(cap_mm) + 1.0
    out = np.full(mask.shape, cap, np.float32)
    if not mask.any():
        return out
    box = _grown_box(mask, spacing, cap, 1)
    out[box] = truncated_distance(mask[box], spacing, cap)
    return out


def _grown_box(mask: np.ndarray, spacing, margin_mm: float, extra: int) -> tuple[slice, ...]:
    """``mask``'s bounding box grown by ``margin_mm`` (rounded up to voxels) plus ``extra`` voxels per axis."""
    margin = [int(np.ceil(margin_mm / float(step))) + extra for step in (spacing[2], spacing[1], spacing[0])]
    return tuple(slice(max(0, int(idx.min()) - pad), int(idx.max()) + pad + 1)
                 for idx, pad in zip(np.nonzero(mask), margin))


def _union_with(field: np.ndarray, occ: np.ndarray, spacing, truncation_mm: float = TRUNCATION_MM) -> np.ndarray:
    """``min(field, truncated_signed_distance(occ))``, with the distance computed only on ``occ``'s
    bounding box grown by the truncation (beyond it the distance is the cap: same result, less work)."""
    box = _grown_box(occ, spacing, truncation_mm, 2)
    united = np.minimum(field, np.float32(truncation_mm))
    united[box] = np.minimum(field[box], truncated_signed_distance(occ[box], spacing, truncation_mm))
    return united


@dataclass(frozen=True)
class Size:
    occupancy_channels: tuple[int, ...]
    refiner_channels: tuple[int, ...]
    sdfonly_channels: tuple[int, ...]
    unet_channels: tuple[int, ...]
    res_units: int


SIZES = {
    "lite": Size((8, 16, 32, 64), (8, 16, 32), (9, 18, 36, 70), (8, 16, 32, 64), 1),
    "paper": Size((32, 64, 128, 256, 512), (16, 32, 64), (32, 64, 128, 256, 520), (32, 64, 128, 256, 512), 2),
}


def parse_preset(preset: str) -> tuple[str, str]:
    """``"lite-occ"`` -> ``("lite", "occ")``; ``"paper"`` -> ``("paper", "full")``."""
    size, _, variant = preset.partition("-")
    variant = variant or "full"
    if size not in SIZES or variant not in VARIANTS:
        names = [f"{s}" for s in SIZES] + [f"{s}-{v}" for s in SIZES for v in VARIANTS if v != "full"]
        raise ValueError(f"Unknown VesselSDF preset {preset!r}; choose one of {', '.join(names)}.")
    return size, variant


def _strides(levels: int) -> list:
    """In-plane-only strides for the first two levels (thick slices: 16 slices, 512 pixels), then isotropic."""
    return [(1, 2, 2)] * min(2, levels - 1) + [2] * max(levels - 3, 0)


class HeadUNet(nn.Sequential):
    """MONAI ``UNet`` (batch norm, residual units) with a ``HEAD_CHANNELS`` output and a 1x1x1 projection."""

    def __init__(self, channels: tuple[int, ...], in_channels: int = 1, res_units: int = 1):
        unet = UNet(spatial_dims=3, in_channels=in_channels, out_channels=HEAD_CHANNELS, channels=channels,
                    strides=_strides(len(channels)), num_res_units=res_units, norm="batch")
        super().__init__(unet, nn.Conv3d(HEAD_CHANNELS, 1, 1))
        self.levels = len(channels)


def occupancy_net(channels: tuple[int, ...], in_channels: int = 1, res_units: int = 1) -> nn.Module:
    """U-Net giving one occupancy logit per voxel."""
    return HeadUNet(channels, in_channels, res_units)


def refiner_net(channels: tuple[int, ...], in_channels: int = 3, res_units: int = 1) -> nn.Module:
    """U-Net regressing the raw SDF (``B·tanh`` of it is the SDF in mm)."""
    return HeadUNet(channels, in_channels, res_units)


class VesselSDFNet(nn.Module):
    """Occupancy stage and/or SDF refiner; ``forward`` returns ``{"occupancy": logits, "sdf": mm}``.

    Missing outputs of an ablation variant are ``None``. The refiner of the full model sees the image,
    the occupancy probability *detached* (the SDF losses do not flow into the occupancy stage) and
    its exact truncated distance (:func:`occupancy_distance`), and regresses the SDF
    ``f = B·tanh(refiner(...))`` directly. ``sdfonly`` regresses ``f = B·tanh(refiner(CT))``.

    :param size: ``lite`` or ``paper``.
    :param variant: one of :data:`VARIANTS`.
    :param sdf_bound_mm: the SDF head is ``B·tanh(raw)`` with ``B`` = this (mm): 1.2 × the 5 mm
        truncation of the training target (:class:`..losses.LossConfig`), so the target is reachable
        while far-field values and the ``|f|``-weighted Gaussian term stay bounded.
    :param correction_mm: 0 (default): the refiner regresses the SDF from scratch. ``C`` > 0: it
        regresses the SDF as ``d₀ + C·tanh(raw)`` (zero-initialised last layer, so it starts at the
        occupancy's exact distance and learns a correction of at most ``C`` mm).
    :param full_res_skip: the refiner's 1x1x1 output layer sees, besides the U-Net's 4-channel head,
        the occupancy ``p`` and its distance ``d₀/T`` at full resolution. The U-Net's first level is
        strided, so without this skip the refiner builds its output from half-resolution features and
        loses vessels one or two pixels wide that the occupancy stage found.
    :param level_mm: calibrated surface level: the returned SDF is the refiner's minus this (mm),
        so its zero level is the refiner's ``level_mm`` level. Chosen after training to maximise the
        Dice on the training folder's validation phantoms (:func:`.train.calibrate_level`), never on
        real data; 0 for the paper's zero level.
    :param union_threshold: 0 (default): the SDF alone. ``τ`` > 0: the returned SDF is
        :func:`occupancy_union` of the (levelled) SDF and the occupancy ``p > τ``: the refiner keeps
        its surfaces, the occupancy stage adds the (thin) vessels the refiner misses. Calibrated with
        the level on validation phantoms (:func:`.train.calibrate_surface`).
    :param union_connected: only occupancy components touching the refined vessels are added.
    :param min_piece_mm3: isolated vessel pieces of the returned field smaller than this (mm³) are
        removed (:func:`remove_small_pieces`); calibrated with the level on validation phantoms.
    :param piece_keep_prob: (release 5) such a small piece is kept when its peak occupancy is at least
        this (0: no confidence rule).
    :param piece_keep_near_mm: (release 5) such a small piece is kept when it lies within this
        distance (mm) of a larger piece (0: no distance rule).
    :param fusion_band_mm: (round 8) > 0: the occupancy keeps every piece and the refiner places its
        surface within this band (:func:`fuse_with_occupancy`), instead of the union.
    :param motion_mm: (round 8) > 0: between thick slices the surface field follows its in-plane
        displacement up to this many mm (:func:`.inference.interpolate_slices`); 0: linear.
    :param motion_radius: the displacement's Lucas–Kanade window radius (coarse pixels).
    :param gap_fill_mm: (round 11) > 0: between thick slices the SDF is united with its interpolation
        saturated at ± this (mm), which carries vessels to mid-gap (:func:`.inference.gap_filled`); 0: linear.
    """

    def __init__(self, size: str = "lite", variant: str = "full", sdf_bound_mm: float = 6.0,
                 spacing: tuple[float, float, float] = (0.7, 0.7, 5.0), correction_mm: float = 0.0,
                 level_mm: float = 0.0, full_res_skip: bool = False, union_threshold: float = 0.0,
                 union_connected: bool = True, min_piece_mm3: float = 0.0, piece_keep_prob: float = 0.0,
                 piece_keep_near_mm: float = 0.0, fusion_band_mm: float = 0.0, motion_mm: float = 0.0,
                 motion_radius: int = 4, gap_fill_mm: float = 0.0):
        super().__init__()
        self.gap_fill_mm = float(gap_fill_mm)
        self.fusion_band_mm = float(fusion_band_mm)
        self.motion_mm, self.motion_radius = float(motion_mm), int(motion_radius)
        self.level_mm, self.min_piece_mm3 = float(level_mm), float(min_piece_mm3)
        self.piece_keep_prob, self.piece_keep_near_mm = float(piece_keep_prob), float(piece_keep_near_mm)
        self.union_threshold, self.union_connected = float(union_threshold), bool(union_connected)
        self.full_res_skip = bool(full_res_skip) and variant in ("full", "nogauss")
        spec = SIZES[size]
        self.size, self.variant, self.sdf_bound_mm = size, variant, float(sdf_bound_mm)
        self.correction_mm = float(correction_mm)
        self.default_spacing = tuple(float(s) for s in spacing)
        self.occupancy = None
        self.refiner = None
        if variant == "unet":
            self.occupancy = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=spec.unet_channels,
                                  strides=_strides(len(spec.unet_channels)), num_res_units=spec.res_units,
                                  norm="batch")
        elif variant != "sdfonly":
            self.occupancy = occupancy_net(spec.occupancy_channels, res_units=spec.res_units)
        if variant in ("full", "nogauss"):
            self.refiner = refiner_net(spec.refiner_channels, 3, spec.res_units)
            if self.full_res_skip:  # output layer also sees p and d0 at full resolution (zero-initialised)
                head = nn.Conv3d(HEAD_CHANNELS + 2, 1, 1)
                nn.init.zeros_(head.weight)
                self.refiner[1] = head
        elif variant == "sdfonly":
            self.refiner = refiner_net(spec.sdfonly_channels, 1, spec.res_units)
        if self.correction_mm and variant in ("full", "nogauss"):
            nn.init.zeros_(self.refiner[-1].weight)
            nn.init.zeros_(self.refiner[-1].bias)

    @property
    def has_sdf(self) -> bool:
        return self.refiner is not None

    def freeze_occupancy(self, state: dict) -> None:
        """Load the occupancy stage from a full model's state dict and keep it fixed (eval mode, no grad)."""
        prefix = "occupancy."
        self.occupancy.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        for parameter in self.occupancy.parameters():
            parameter.requires_grad_(False)
        self._frozen_occupancy = True

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_frozen_occupancy", False):
            self.occupancy.eval()
        return self

    @property
    def divisor(self) -> tuple[int, int]:
        """Input sizes must be multiples of ``(slices, in-plane)``."""
        spec = SIZES[self.size]
        levels = max(len(c) for c in (spec.occupancy_channels, spec.unet_channels, spec.sdfonly_channels))
        strides = _strides(levels)
        slices = int(np.prod([s if isinstance(s, int) else s[0] for s in strides]))
        plane = int(np.prod([s if isinstance(s, int) else s[1] for s in strides]))
        return slices, plane

    def refine(self, image: torch.Tensor, prob: torch.Tensor, spacing) -> torch.Tensor:
        """The refiner's SDF (mm) from the image and a (detached) occupancy probability."""
        start = occupancy_distance(prob.float(), spacing or self.default_spacing)
        inputs = torch.cat([image, prob.to(image.dtype), (start / TRUNCATION_MM).to(image.dtype)], dim=1)
        if self.full_res_skip:
            raw = self.refiner[1](torch.cat([self.refiner[0](inputs), inputs[:, 1:]], dim=1))
        else:
            raw = self.refiner(inputs)
        if self.correction_mm:  # the exact distance of the occupancy plus a bounded learned correction
            return (start + self.correction_mm * torch.tanh(raw)).clamp(-self.sdf_bound_mm, self.sdf_bound_mm)
        return self.sdf_bound_mm * torch.tanh(raw)

    def forward(self, image: torch.Tensor, spacing=None) -> dict[str, torch.Tensor | None]:
        """``image`` ``(N, 1, K, J, I)`` normalised CT; ``spacing`` ``(Δx, Δy, Δz)`` mm of the batch."""
        logits = self.occupancy(image) + OCCUPANCY_PRIOR if self.occupancy is not None else None
        sdf = None
        if self.refiner is not None and logits is None:
            sdf = torch.tanh(self.refiner(image)) * self.sdf_bound_mm
        elif self.refiner is not None:
            sdf = self.refine(image, torch.sigmoid(logits).detach(), spacing)
        if sdf is not None:
            needs_prob = self.union_threshold or self.fusion_band_mm or (self.min_piece_mm3 and self.piece_keep_prob)
            prob = torch.sigmoid(logits) if logits is not None and needs_prob else None
            sdf = surface_field(sdf, prob, spacing or self.default_spacing, self.level_mm, self.union_threshold,
                                self.union_connected, self.min_piece_mm3, self.piece_keep_prob,
                                self.piece_keep_near_mm, self.fusion_band_mm)
        return {"occupancy": logits, "sdf": sdf}


def build_model(preset: str = "lite", **config) -> VesselSDFNet:
    """Build an untrained VesselSDF network.

    :param preset: ``lite`` / ``paper``, optionally with an ablation variant suffix (module docs).
    :param config: keyword overrides: ``variant`` (wins over the suffix), ``sdf_bound_mm``.
    """
    size, variant = parse_preset(preset)
    variant = config.pop("variant", variant)
    if variant not in VARIANTS:
        raise ValueError(f"Unknown VesselSDF variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    return VesselSDFNet(size, variant, **config)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

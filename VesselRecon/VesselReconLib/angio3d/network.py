"""3DAngioNet networks: the SOI segmentation U-Net and the surface-refinement (SR) graph network.

``build_model(preset)`` returns one :class:`Angio3DNet` holding both, so a shipped model is one file.

Presets
-------
``paper``
    Segmentation: ``smp.Unet("efficientnet-b3", encoder_weights=None)`` on 256x256 SOI crops.
    SR encoder: ``torchvision.models.vgg16(weights=None).features`` up to the end of conv block 4.
    Per-vertex input, 483 values = 3 + 2 x 240: the vertex's normalised xyz, then for each of the two
    views the bilinear samples of the four block outputs (64 + 128 + 256 + 512 = 960 channels)
    averaged over groups of 4 neighbouring channels (16 + 32 + 64 + 128 = 240). 8 graph
    convolutions, hidden 128, residual connections.
``lite`` (shipped, ~1.3 MB)
    Segmentation: ``smp.Unet("efficientnet-b3", encoder_depth=3, decoder_channels=(32, 16, 8))`` with
    the never-used deeper encoder blocks removed, on 128x128 crops. SR encoder: the VGG16 layer layout
    at 1/8 width (8, 16, 32, 64 channels, 120 per view, no channel grouping), per-vertex input
    3 + 2 x 120 = 243; 8 graph convolutions, hidden 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import template

PRESETS = {
    "paper": {"encoder": "efficientnet-b3", "encoder_depth": 5, "decoder_channels": (256, 128, 64, 32, 16),
              "crop_size": 256, "vgg_width": 1.0, "channel_group": 4, "hidden": 128, "layers": 8, "raster_size": 128,
              "offset_scale": 0.01},
    "lite": {"encoder": "efficientnet-b3", "encoder_depth": 3, "decoder_channels": (32, 16, 8),
             "crop_size": 128, "vgg_width": 0.125, "channel_group": 1, "hidden": 64, "layers": 8, "raster_size": 64,
             "offset_scale": 0.01},
}
VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))
IMAGE_CHANNELS = 3  # normalised image, vessel probability, thresholded vessel mask


def build_segmenter(encoder: str, encoder_depth: int, decoder_channels) -> nn.Module:
    """smp U-Net with one input and one output channel, random init; unused encoder blocks removed."""
    import segmentation_models_pytorch as smp

    net = smp.Unet(encoder, encoder_weights=None, encoder_depth=encoder_depth, in_channels=1, classes=1,
                   decoder_channels=tuple(decoder_channels))
    enc = net.encoder
    if encoder.startswith("efficientnet") and encoder_depth < 5:
        enc._blocks = enc._blocks[: enc._out_indexes[encoder_depth - 2] + 1]
        del enc._conv_head, enc._bn1
    return net


class VGGBlocks(nn.Module):
    """The first four conv blocks of VGG16; returns each block's (ReLU) output."""

    def __init__(self, width: float = 1.0, in_channels: int = IMAGE_CHANNELS):
        super().__init__()
        from torchvision.models import vgg16

        if width == 1.0:
            features = vgg16(weights=None).features
            if in_channels != 3:
                features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
            cuts = (4, 9, 16, 23)
            self.blocks = nn.ModuleList([features[a:b] for a, b in zip((0,) + cuts[:-1], cuts)])
        else:
            from torchvision.models.vgg import make_layers

            cfg = []
            for index, block in enumerate(VGG_BLOCKS):
                cfg += (["M"] if index else []) + [max(4, int(c * width)) for c in block]
            features = make_layers(cfg)
            features[0] = nn.Conv2d(in_channels, cfg[0], 3, padding=1)
            relus = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)]
            ends = [relus[1] + 1, relus[3] + 1, relus[6] + 1, relus[9] + 1]
            self.blocks = nn.ModuleList([features[a:b] for a, b in zip([0] + ends[:-1], ends)])
        self.channels = [[m for m in blk if isinstance(m, nn.Conv2d)][-1].out_channels for blk in self.blocks]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


def normalized_adjacency(n_vertices: int, edge_index: torch.Tensor) -> torch.Tensor:
    """Sparse D^-1/2 (A + I) D^-1/2 of an undirected mesh graph."""
    loops = torch.arange(n_vertices, device=edge_index.device)
    rows = torch.cat([edge_index[:, 0], edge_index[:, 1], loops])
    cols = torch.cat([edge_index[:, 1], edge_index[:, 0], loops])
    degree = torch.bincount(rows, minlength=n_vertices).float()
    values = degree[rows].rsqrt() * degree[cols].rsqrt()
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_vertices, n_vertices),
                                   check_invariants=False).coalesce()


class GraphConv(nn.Module):
    """H' = D^-1/2 A D^-1/2 H W + b (Kipf & Welling 2017)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        batch, n, _ = h.shape
        hw = self.linear(h)
        flat = hw.transpose(0, 1).reshape(n, -1)
        out = torch.sparse.mm(adjacency, flat.float()).to(hw.dtype)
        return out.reshape(n, batch, -1).transpose(0, 1)


class SurfaceRefiner(nn.Module):
    """8 graph convolutions with residual connections regressing per-vertex offsets (zero at init).

    Offsets are returned in units of ``offset_scale`` of the normalised mesh size. The first SR
    (``offset_scale`` 0.01, the presets' default, kept so its weights load unchanged) learnt 100x more
    slowly in output space than its layers and moved vertices by hundredths of a millimetre; a
    model trained with ``offset_scale`` 1 says so in its registry config.
    """

    def __init__(self, in_dim: int, hidden: int = 128, layers: int = 8, offset_scale: float = 0.01):
        super().__init__()
        self.offset_scale = float(offset_scale)
        self.first = GraphConv(in_dim, hidden)
        self.middle = nn.ModuleList([GraphConv(hidden, hidden) for _ in range(layers - 2)])
        self.last = GraphConv(hidden, 3)
        nn.init.zeros_(self.last.linear.weight)
        nn.init.zeros_(self.last.linear.bias)

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.first(features, adjacency))
        for conv in self.middle:
            h = h + F.relu(conv(h, adjacency))
        return self.offset_scale * self.last(h, adjacency)


class Angio3DNet(nn.Module):
    """Segmentation U-Net + VGG feature encoder + GCN surface refiner of 3DAngioNet."""

    def __init__(self, preset: str = "lite", **config):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"Unknown angio3d preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        self.config = {**PRESETS[preset], **config, "preset": preset}
        cfg = self.config
        self.crop_size = int(cfg["crop_size"])
        self.raster_size = int(cfg["raster_size"])
        self.segmenter = build_segmenter(cfg["encoder"], cfg["encoder_depth"], cfg["decoder_channels"])
        self.encoder = VGGBlocks(cfg["vgg_width"])
        self.channel_group = int(cfg["channel_group"])
        self.view_dim = sum(c // self.channel_group for c in self.encoder.channels)
        self.vertex_dim = 3 + 2 * self.view_dim
        self.refiner = SurfaceRefiner(self.vertex_dim, int(cfg["hidden"]), int(cfg["layers"]),
                                      float(cfg.get("offset_scale", 0.01)))
        self._adjacency: dict[tuple, torch.Tensor] = {}

    def segment(self, crops: torch.Tensor) -> torch.Tensor:
        """Vessel logits (B, 1, S, S) of normalised SOI crops (B, 1, S, S)."""
        return self.segmenter(crops)

    def adjacency(self, device: torch.device) -> torch.Tensor:
        """The mesh's normalised adjacency on ``device``: sparse COO, or CSR when no gradient is recorded
        (inference; its product is ~3 x faster on the CPU, the same sums to float rounding)."""
        csr = device.type == "cpu" and not torch.is_grad_enabled()
        key = (str(device), csr)
        if key not in self._adjacency:
            edges = torch.as_tensor(template.edges(), dtype=torch.long, device=device)
            adjacency = normalized_adjacency(template.N_RINGS * template.N_AROUND, edges)
            if csr:
                import warnings

                with warnings.catch_warnings():      # "Sparse CSR tensor support is in beta state"
                    warnings.simplefilter("ignore", UserWarning)
                    adjacency = adjacency.to_sparse_csr()
            self._adjacency[key] = adjacency
        return self._adjacency[key]

    def sample_view(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Per-vertex features (B, V, view_dim) of one view: block outputs sampled at ``grid`` (B, V, 2)
        in grid_sample's [-1, 1] crop coordinates, grouped-averaged over channels."""
        samples = []
        for fmap in self.encoder(images):
            s = F.grid_sample(fmap, grid[:, :, None, :], mode="bilinear", align_corners=False)[..., 0]
            if self.channel_group > 1:
                s = s.reshape(s.shape[0], -1, self.channel_group, s.shape[-1]).mean(2)
            samples.append(s)
        return torch.cat(samples, 1).transpose(1, 2)

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor, grid_a: torch.Tensor, grid_b: torch.Tensor,
                coords: torch.Tensor) -> torch.Tensor:
        """Vertex offsets (B, V, 3) in normalised mesh space.

        :param images_a: view A crops (B, 3, S, S): normalised image, probability, mask.
        :param grid_a: projected vertices in view A's crop, grid_sample coordinates (B, V, 2).
        :param coords: normalised vertex positions (B, V, 3).
        """
        features = torch.cat([coords, self.sample_view(images_a, grid_a), self.sample_view(images_b, grid_b)], -1)
        return self.refiner(features, self.adjacency(features.device))


def build_model(preset: str = "lite", **config):
    """The registry hook: an untrained :class:`Angio3DNet` for ``preset`` (``lite`` or ``paper``), or the
    QCA lumen-radius regressor for ``lumen`` (:class:`~.lumen.LumenRegressor`), its throat refiner for
    ``throat`` (:class:`~.throat.ThroatRefiner`) or the strip reader for ``strip`` (:class:`~.strip.StripReader`) or
    its two-view fusion for ``fusion`` (:class:`~.fusion.TwoViewFusion`) or the QCA calibrator for ``calibrator``
    (:class:`~.calibrator.QCACalibrator`)."""
    if preset == "lumen":
        from .lumen import LumenRegressor

        return LumenRegressor(**config)
    if preset == "throat":
        from .throat import ThroatRefiner

        return ThroatRefiner(**config)
    if preset == "strip":
        from .strip import StripReader

        return StripReader(**config)
    if preset == "fusion":
        from .fusion import TwoViewFusion

        return TwoViewFusion(**config)
    if preset == "calibrator":
        from .calibrator import QCACalibrator

        return QCACalibrator(**config)
    return Angio3DNet(preset, **config)

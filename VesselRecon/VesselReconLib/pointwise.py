"""1×1 convolutions with few output channels as one matrix product on the CPU.

With torch 2.14's oneDNN on a 2-thread CPU (measured on an AMD EPYC, 2026-12-07), a 512² 1×1 convolution to 1-2
channels takes about 15 ms however small it is (one thread: 0.1-0.3 ms; a matrix product at 2 threads: 0.4-0.7 ms).
The attention maps and output heads of the networks are such convolutions, so OCTADepth's network ran slower on two
threads than on one. :func:`use_matmul_pointwise` makes those layers compute the same product with ``torch.matmul``
on the CPU (equal to float rounding); on CUDA and for every other layer nothing changes.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_OUT_CHANNELS = 4   # the slow case; from 8-16 outputs up oneDNN is as fast as the product


def matmul_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1×1 (×1) convolution of ``x`` (N, C, *spatial) by ``weight`` (O, C, 1, ...) as one matrix product."""
    n, c = x.shape[:2]
    y = torch.matmul(weight.reshape(weight.shape[0], c), x.reshape(n, c, -1))
    if bias is not None:
        y = y + bias.view(1, -1, 1)
    return y.reshape(n, weight.shape[0], *x.shape[2:])


class _MatmulOnCpu:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return matmul_pointwise(x, self.weight, self.bias)


class PointwiseConv2d(_MatmulOnCpu, nn.Conv2d):
    """An :class:`nn.Conv2d` 1×1 layer that runs as a matrix product on the CPU (same parameters, same state_dict)."""


class PointwiseConv3d(_MatmulOnCpu, nn.Conv3d):
    """An :class:`nn.Conv3d` 1×1×1 layer that runs as a matrix product on the CPU."""


SWAPS = {nn.Conv2d: PointwiseConv2d, nn.Conv3d: PointwiseConv3d}


def is_small_pointwise(layer: nn.Module) -> bool:
    """A plain 1×1 convolution (no stride, padding, dilation or groups) to at most :data:`MAX_OUT_CHANNELS`."""
    if type(layer) not in SWAPS:
        return False
    padded = not isinstance(layer.padding, tuple) or any(layer.padding)   # a string ("same", "valid") is left alone
    return (set(layer.kernel_size) == {1} and set(layer.stride) == {1} and set(layer.dilation) == {1}
            and not padded and layer.groups == 1 and layer.out_channels <= MAX_OUT_CHANNELS)


def use_matmul_pointwise(model: nn.Module) -> int:
    """Give every small 1×1 convolution of ``model`` the matrix-product forward, in place; how many were changed."""
    layers = [m for m in model.modules() if is_small_pointwise(m)]
    for layer in layers:
        layer.__class__ = SWAPS[type(layer)]
    return len(layers)

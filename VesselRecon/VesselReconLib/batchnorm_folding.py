"""Inference copies of networks with each BatchNorm folded into the convolution that feeds it.

``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the folding; this module finds the pairs. Only plain
``nn.BatchNorm2d`` layers are folded (timm's ``BatchNormAct2d`` also applies an activation).
"""
from __future__ import annotations

import copy

from torch import nn


def fold_batchnorms(net: nn.Module, named_pairs=()) -> nn.Module:
    """An eval-mode copy of ``net`` (the original is left as it is) where every ``BatchNorm2d`` fed by a
    ``Conv2d`` becomes an ``Identity`` and the convolution absorbs it: adjacent ``(Conv2d, BatchNorm2d)`` in
    a ``Sequential``, and the ``(conv, norm)`` attribute pairs of ``named_pairs`` on any submodule. Outputs
    equal the original's to float rounding."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(net).eval()
    for module in list(folded.modules()):
        for owner, attribute, norm_owner, norm_name in _pairs(module, named_pairs):
            conv, norm = getattr(owner, attribute), getattr(norm_owner, norm_name)
            setattr(owner, attribute, fuse_conv_bn_eval(conv, norm))
            setattr(norm_owner, norm_name, nn.Identity())
    return folded


def _pairs(module: nn.Module, named_pairs):
    """(conv owner, conv attribute, norm owner, norm attribute) of each foldable pair in ``module``."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            if isinstance(module._modules[conv_name], nn.Conv2d) and _is_plain_norm(module._modules[norm_name]):
                yield module, conv_name, module, norm_name
    for conv_name, norm_name in named_pairs:
        holder, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
        if holder is None or not _is_plain_norm(norm):
            continue
        owner, attribute = _conv_slot(module, conv_name, holder)
        if isinstance(getattr(owner, attribute), nn.Conv2d):
            yield owner, attribute, module, norm_name


def _conv_slot(module: nn.Module, name: str, holder: nn.Module) -> tuple[nn.Module, str]:
    """Where the convolution behind ``module.<name>`` sits: MONAI's ``Convolution`` wraps it as ``.conv``,
    timm's deep stem (a ``Sequential``) ends with it."""
    if hasattr(holder, "conv"):
        return holder, "conv"
    if isinstance(holder, nn.Sequential):
        return holder, str(len(holder) - 1)
    return module, name


def _is_plain_norm(layer) -> bool:
    return type(layer) is nn.BatchNorm2d

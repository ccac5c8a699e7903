"""Small 1×1 convolutions run as a matrix product on the CPU (VesselReconLib.pointwise): oneDNN took ~15 ms for a
512² 2→1 1×1 convolution on 2 threads, so OCTADepth's network ran slower on two threads than on one."""

from __future__ import annotations

import torch
from torch import nn

from VesselReconLib import registry
from VesselReconLib.pointwise import PointwiseConv2d, PointwiseConv3d, is_small_pointwise, use_matmul_pointwise


def test_the_matmul_forward_equals_the_convolution_and_keeps_the_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 2, 1), nn.Conv2d(2, 16, 1), nn.Conv2d(16, 1, 3, padding=1), nn.Conv2d(1, 1, 1, bias=False))
    x = torch.rand(2, 8, 33, 17)
    before, state = model(x), {k: v.clone() for k, v in model.state_dict().items()}
    assert use_matmul_pointwise(model) == 2   # 8→2 and 1→1; not 2→16 (many outputs) or the 3×3
    assert [type(m) for m in model] == [PointwiseConv2d, nn.Conv2d, nn.Conv2d, PointwiseConv2d]
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_3d_and_strided_or_padded_layers():
    torch.manual_seed(1)
    three = nn.Conv3d(4, 1, 1)
    x = torch.rand(1, 4, 5, 6, 7)
    expected = three(x)
    assert use_matmul_pointwise(three) == 1 and type(three) is PointwiseConv3d
    torch.testing.assert_close(three(x), expected, rtol=1e-5, atol=1e-6)
    assert not is_small_pointwise(nn.Conv2d(4, 1, 1, stride=2))
    assert not is_small_pointwise(nn.Conv2d(4, 1, 1, padding=1))
    assert not is_small_pointwise(nn.Conv2d(4, 2, 1, groups=2))


def test_shipped_networks_load_with_the_matmul_path_and_the_same_outputs():
    net = registry.load_model("octadepth", "lite")[0]
    swapped = [m for m in net.modules() if isinstance(m, PointwiseConv2d)]
    assert len(swapped) >= 4   # the structure branch's attention maps and the heads
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        fast = net(x)
        for layer in swapped:
            layer.__class__ = nn.Conv2d
        plain = net(x)
    for a, b in zip(fast if isinstance(fast, (tuple, list)) else [fast], plain if isinstance(plain, (tuple, list)) else [plain]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

"""Device policy, out-of-memory fallback, progress ranges, cancellation and the worker thread."""

from __future__ import annotations

import threading

import pytest
import torch

from VesselReconLib import device as dev
from VesselReconLib.errors import InputError, check_image, squeeze_to_2d
from VesselReconLib.progress import CancelToken, Cancelled, Reporter, TqdmProgress, close_bars, run_in_worker


def test_resolve_device_choices():
    assert dev.resolve_device("cpu").type == "cpu"
    assert dev.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="Unknown device"):
        dev.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            dev.resolve_device("cuda")
        assert dev.autocast_dtype(torch.device("cpu")) is None


def test_oom_fallback_halves_batch_then_moves_to_cpu():
    calls, messages = [], []

    def compute(device, batch_size):
        calls.append((device.type, batch_size))
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "done"

    result = dev.run_with_fallback(compute, torch.device("cuda"), 4, notify=messages.append)
    assert result == "done"
    assert calls == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert "CPU" in messages[-1]


def test_non_oom_errors_propagate():
    def compute(device, batch_size):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        dev.run_with_fallback(compute, torch.device("cuda"), 4)


def test_reporter_maps_sub_ranges_and_cancels():
    seen = []
    token = CancelToken()
    reporter = Reporter(lambda f, m: seen.append((round(f, 3), m)), token)
    reporter.sub(0.5, 1.0).sub(0.0, 0.5)(0.5, "half of a quarter")
    assert seen == [(0.625, "half of a quarter")]
    token.set()
    with pytest.raises(Cancelled):
        reporter(0.9, "late")



def test_terminal_bar_appears_at_the_first_report_only(capsys):
    silent = TqdmProgress("never reported")
    silent.close()  # an error before any report: nothing was drawn, nothing to close
    assert capsys.readouterr().err == ""
    bar = TqdmProgress("reported")
    bar(0.5, "half")
    assert "reported" in capsys.readouterr().err
    close_bars()  # the error path closes every open bar
    assert bar._bar.disable  # tqdm's mark of a closed bar


def test_run_in_worker_returns_and_reraises_on_the_calling_thread():
    pumped = []
    main = threading.get_ident()
    assert run_in_worker(lambda: threading.get_ident(), lambda: pumped.append(1)) != main

    def fail():
        raise InputError("bad input")

    with pytest.raises(InputError, match="bad input"):
        run_in_worker(fail, lambda: None)


@pytest.mark.parametrize("array, message", [
    (None, "missing"),
    (__import__("numpy").zeros((4, 4, 4, 4)), "4 dimensions"),
    (__import__("numpy").full((16, 16), 3.0), "constant"),
    (__import__("numpy").array([[1.0, float("nan")] * 8] * 16), "NaN"),
    (__import__("numpy").ones((2, 2)), "too small"),
])
def test_check_image_refuses_bad_input(array, message):
    with pytest.raises(InputError, match=message):
        check_image(array, "Input image", ndim=(2, 3))


def test_squeeze_to_2d_accepts_single_slice_and_rgb():
    import numpy as np

    assert squeeze_to_2d(np.zeros((1, 5, 6)), "x").shape == (5, 6)
    assert squeeze_to_2d(np.zeros((5, 6, 3)), "x").shape == (5, 6)
    with pytest.raises(InputError, match="single-slice"):
        squeeze_to_2d(np.zeros((3, 5, 6)), "x")


@pytest.mark.gpu
def test_cuda_autocast_uses_half_precision():
    device = dev.resolve_device("cuda")
    with dev.inference(device):
        y = torch.nn.Linear(8, 8).to(device)(torch.randn(2, 8, device=device))
    assert y.dtype in (torch.bfloat16, torch.float16)


def test_time_call_warms_up_then_reduces_the_timed_calls(monkeypatch):
    """On a scripted clock (no sleeping: a loaded CI machine stretches sleeps): the warm-up call is run but
    not timed, each timed call is the clock's advance over ``fn``, and ``reduce`` picks among them."""
    import types

    import numpy as np

    clock = {"wall": 100.0, "cpu": 7.0}
    monkeypatch.setattr(dev, "time", types.SimpleNamespace(perf_counter=lambda: clock["wall"],
                                                           process_time=lambda: clock["cpu"]))
    calls = []

    def scripted(durations):
        steps = iter(durations)

        def fn():
            calls.append(1)
            step = next(steps)
            clock["wall"] += step
            clock["cpu"] += 2 * step   # two busy threads

        return fn

    cpu = torch.device("cpu")
    warm_up_then = [5.0, 0.03, 0.01, 0.02]     # a slow first call, then three timed ones
    assert dev.time_call(scripted(warm_up_then), cpu, repeats=3, warmup=1) == pytest.approx(0.01)
    assert len(calls) == 4
    assert dev.time_call(scripted(warm_up_then), cpu, repeats=3, reduce=np.median) == pytest.approx(0.02)
    assert dev.timed_pair(scripted([0.5]), cpu) == pytest.approx((0.5, 1.0))


def test_map_batches_runs_items_in_one_thread_workers_in_order_and_restores_the_thread_count():
    torch.set_num_threads(2)
    seen = []

    def work(item):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return item * item

    cpu = torch.device("cpu")
    assert list(dev.map_batches(work, list(range(9)), cpu)) == [i * i for i in range(9)]
    assert {threads for _, threads in seen} == {1}  # each worker: one intra-op thread
    assert threading.get_ident() not in {ident for ident, _ in seen}
    assert torch.get_num_threads() == 2
    with torch.inference_mode():  # the caller's (thread-local) modes reach the workers
        modes = list(dev.map_batches(lambda _: (torch.is_inference_mode_enabled(), torch.is_grad_enabled()),
                                     [0, 1], cpu))
    assert modes == [(True, False)] * 2
    with torch.no_grad():
        assert list(dev.map_batches(lambda _: torch.is_grad_enabled(), [0, 1], cpu)) == [False, False]
    outs = dev.map_batches(work, list(range(9)), cpu)  # a consumer that stops early (a cancel)
    with pytest.raises(Cancelled):
        for value in outs:
            if value > 3:
                raise Cancelled()
    outs.close()
    assert torch.get_num_threads() == 2
    torch.set_num_threads(4)  # more threads than workers: each worker gets its share
    seen.clear()
    assert list(dev.map_batches(work, list(range(5)), cpu, max_workers=2)) == [i * i for i in range(5)]
    assert {threads for _, threads in seen} == {2} and len({ident for ident, _ in seen}) <= 2
    assert torch.get_num_threads() == 4
    torch.set_num_threads(1)  # one thread: the items run in the calling thread
    seen.clear()
    assert list(dev.map_batches(work, [1, 2], cpu)) == [1, 4]
    assert {ident for ident, _ in seen} == {threading.get_ident()}


def test_mirrored_mean_runs_the_flips_side_by_side_without_autograd_and_inline_with_it():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.rand(1, 1, 12, 10)
    reference = (conv(x) + conv(x.flip(-1)).flip(-1) + conv(x.flip(-2)).flip(-2)
                 + conv(x.flip((-2, -1))).flip((-2, -1))) / 4
    threads = []
    conv.register_forward_pre_hook(lambda *_: threads.append((threading.get_ident(), torch.get_num_threads())))
    torch.set_num_threads(2)
    with torch.inference_mode():
        mean = dev.mirrored_mean(conv, x, (-2, -1))
    torch.testing.assert_close(mean, reference.detach(), atol=1e-6, rtol=0)
    assert {n for _, n in threads} == {1} and threading.get_ident() not in {i for i, _ in threads}
    threads.clear()
    dev.mirrored_mean(conv, x, (-2, -1)).sum().backward()  # with autograd: inline, gradients flow
    assert {i for i, _ in threads} == {threading.get_ident()} and conv.weight.grad is not None
    assert torch.get_num_threads() == 2


def test_fold_batchnorms_folds_sequential_and_named_pairs_only_into_plain_norms():
    """Adjacent (Conv2d, BatchNorm2d), a named pair behind MONAI's Convolution wrapper, and a named pair on a
    bare Conv2d are folded; a BatchNorm2d subclass (it may act too) is kept; the original is untouched."""
    from monai.networks.blocks import Convolution
    from torch import nn

    from VesselReconLib.batchnorm_folding import fold_batchnorms

    class ActingNorm(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = Convolution(2, 3, 4, conv_only=True)
            self.norm1 = nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), ActingNorm(4)
            self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn3(self.conv3(self.bn2(self.conv2(self.norm1(self.conv1(x))))))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), Block()).eval()
    for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
    folded = fold_batchnorms(net, (("conv1", "norm1"), ("conv2", "bn2"), ("conv3", "bn3")))
    assert [type(m) for m in folded.modules() if isinstance(m, nn.BatchNorm2d)] == [ActingNorm]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 4
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)

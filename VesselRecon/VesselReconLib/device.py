"""Device and precision policy: ``auto|cuda|mps|cpu``, autocast on CUDA, out-of-memory fallback."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from . import DEVICE_CHOICES  # noqa: F401 - named in the package (no torch there), re-exported here

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``auto|cuda|cuda:N|mps|cpu`` into an available :class:`torch.device`.

    :param name: the requested device; ``auto`` picks CUDA, then MPS, then CPU.
    :raises InputError: an unknown name (``tpu``, ``gpu0``) or an accelerator that is not available
        (it is a ``ValueError`` too).
    """
    from .errors import InputError

    if isinstance(name, torch.device):
        return name
    if name is not None and not isinstance(name, str):
        raise InputError(f"Device must be one of {', '.join(DEVICE_CHOICES)}; got {name!r}.")
    name = (name or "auto").strip().lower()
    kind, _, index = name.partition(":")
    if kind not in DEVICE_CHOICES or (index and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"Unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N).")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available: choose device 'cpu' or 'auto'.")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise InputError(f"There is no GPU {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("MPS was requested but is not available: choose device 'cpu' or 'auto'.")
    return torch.device(name)


def autocast_dtype(device: torch.device, allow_half: bool = True) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, else fp16 on CUDA; ``None`` (full precision) elsewhere."""
    if not allow_half or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def inference(device: torch.device, allow_half: bool = True) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast on CUDA (when the model allows half precision)."""
    dtype = autocast_dtype(device, allow_half)
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type="cuda", dtype=dtype):
                yield


def mirror_flips(axes) -> list[tuple[int, ...]]:
    """Every non-empty combination of ``axes`` to flip together (nnU-Net's test-time mirroring)."""
    axes = tuple(int(a) for a in axes)
    return [dims for n in range(1, len(axes) + 1) for dims in itertools.combinations(axes, n)]


def mirrored_mean(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, axes) -> torch.Tensor:
    """Test-time mirroring: the mean of ``flip(forward(flip(x)))`` over ``x`` and its flips along every
    combination of ``axes``, summed in that order. Without autograd on a multi-threaded CPU the passes run
    side by side (:func:`map_batches`: 2 cores, two one-thread passes); else one after another."""
    flips = [(), *mirror_flips(axes)]

    def one(dims: tuple[int, ...]) -> torch.Tensor:
        return torch.flip(forward(torch.flip(x, dims)), dims) if dims else forward(x)

    outs = [one(dims) for dims in flips] if torch.is_grad_enabled() else map_batches(one, flips, x.device)
    total = None
    for out in outs:
        total = out if total is None else total + out
    return total / len(flips)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA (or MPS) out-of-memory errors."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_with_fallback(fn: Callable[[torch.device, int], T], device: torch.device, batch_size: int,
                      notify: Callable[[str], None] | None = None) -> T:
    """Call ``fn(device, batch_size)``; on out-of-memory halve the batch, then fall back to the CPU.

    :param fn: the computation; it receives the device and batch size to use.
    :param device: the preferred device.
    :param batch_size: the preferred batch size.
    :param notify: receives a human-readable message on every fallback.
    """
    notify = notify or log.warning
    while True:
        try:
            return fn(device, batch_size)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_oom(exc) or device.type == "cpu":
                raise
            _free_cache(device)
            if batch_size > 1:
                batch_size //= 2
                notify(f"Out of GPU memory: retrying with batch size {batch_size}.")
            else:
                device = torch.device("cpu")
                notify("Out of GPU memory even at batch size 1: continuing on the CPU (slower).")


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """torch on one CPU thread inside the block (restored on any exit; no change off the CPU): small
    operators gain little from more threads and stall in OpenMP barriers when another process holds a
    core. torch's thread count is process-wide."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


MAX_WORKERS = 4
"""Worker threads of :func:`map_batches` at most (each holds one item's activations)."""


def batch_workers(items: int, device: torch.device, max_workers: int = MAX_WORKERS) -> int:
    """How many worker threads :func:`map_batches` runs ``items`` on: min(torch threads, ``max_workers``,
    ``items``) on CPU, 1 elsewhere (1: in the calling thread)."""
    return max(1, min(torch.get_num_threads(), max_workers, items)) if device.type == "cpu" else 1


def map_batches(fn: Callable[[T], object], items: list[T], device: torch.device,
                max_workers: int = MAX_WORKERS) -> Iterator:
    """``fn(item)`` for every item, yielded in order.

    On CPU with n > 1 intra-op threads, w = :func:`batch_workers` worker threads each run whole items with
    n // w intra-op threads (2 cores: two one-thread workers), in the caller's grad and inference mode
    (both are per thread). Small operators on small batches spend much of a multi-threaded call in OpenMP
    barriers, which stall when another process shares the cores. ``max_workers`` bounds the memory (w
    items' activations at once). torch's thread count is process-wide: it is n // w while the items run
    and restored afterwards. At most 2w items are in flight. Elsewhere (one thread, a GPU) the items run
    one by one in the calling thread.
    """
    threads, workers = torch.get_num_threads(), batch_workers(len(items), device, max_workers)
    if workers < 2:
        yield from (fn(item) for item in items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    grad, inference_on = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(item):  # inference_mode(False) turns grad on: set the grad mode inside it
        with torch.inference_mode(inference_on), torch.set_grad_enabled(grad):
            return fn(item)

    torch.set_num_threads(threads // workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vesselrecon-batch")
    try:
        pending = deque()
        for item in items:
            pending.append(pool.submit(run, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def scan_windows(shape, roi, overlap: float) -> list[tuple[slice, ...]]:
    """The sliding windows over ``shape`` (MONAI's ``dense_patch_slices`` with its scan interval
    ``int(roi * (1 - overlap))``; the last window of an axis ends at the volume's end)."""
    from monai.data.utils import dense_patch_slices

    interval = [r if r >= n else max(int(r * (1 - overlap)), 1) for n, r in zip(shape, roi)]
    return [tuple(w) for w in dense_patch_slices(tuple(shape), tuple(roi), interval)]


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pair(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds (this process) of one ``fn()`` call, including its queued GPU work."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time (s) of one ``fn()`` call, including its queued GPU work."""
    return timed_pair(fn, device)[0]


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1,
              reduce: Callable = min) -> float:
    """``reduce`` (``min`` for the least disturbed run, or ``np.median``) of ``repeats`` timed calls
    after ``warmup`` untimed ones; for the ``bench`` commands."""
    for _ in range(warmup):
        fn()
    return float(reduce([timed_call(fn, device) for _ in range(repeats)]))


def interleaved(calls: dict, device: torch.device, repeats: int = 3, reduce: Callable = min) -> dict:
    """Time several calls interleaved (A, B, A, B, ...) after one warm-up each, so they share the
    machine's load: ``{name: {"s": reduce of the wall seconds, "cpu_s": reduce of this process's CPU
    seconds, "peak_mb"}}`` (``reduce``: ``min`` for the least disturbed run, or ``np.median``)."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    peaks = {}
    for _ in range(repeats):
        for name, fn in calls.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(timed_pair(fn, device))
            peaks[name] = peak_memory_mb(device)
    return {name: {"s": round(float(reduce([t[0] for t in pairs])), 4),
                   "cpu_s": round(float(reduce([t[1] for t in pairs])), 4),
                   "peak_mb": None if peaks[name] is None else round(peaks[name], 1)}
            for name, pairs in times.items()}


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none), for the bench reports."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak allocated CUDA memory in MB since the last reset, or ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def limit_cpu_threads(n: int | None = None) -> None:
    """Cap torch's intra-op threads (defaults to the machine's core count, at least 1)."""
    torch.set_num_threads(max(1, n or os.cpu_count() or 1))


HEAP_MMAP_MB = 32
"""Freed blocks below this many MB stay in the heap under :func:`keep_freed_memory` (glibc's mmap threshold)."""
_HEAP_KEPT_MB = 0


def keep_freed_memory(mmap_threshold_mb: int = HEAP_MMAP_MB) -> None:
    """Let glibc keep freed CPU memory for reuse instead of handing it back to the OS, so that the
    activations of a network forward pass (blocks below ``mmap_threshold_mb``) are not page-faulted
    afresh on every pass (VC-Net ``lite``: ~20 % of its CPU time; VesselSDF's whole-CT windows hold
    blocks above 32 MB and pass 256). Once per process (a later, larger threshold raises it); a no-op
    off glibc. Called by command-line entry points and benches only, never inside Slicer (a
    process-wide policy)."""
    global _HEAP_KEPT_MB
    if mmap_threshold_mb <= _HEAP_KEPT_MB:
        return
    _HEAP_KEPT_MB = mmap_threshold_mb
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, int(mmap_threshold_mb) * 2**20)  # M_MMAP_THRESHOLD: smaller blocks come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of freed heap
        libc.mallopt(-2, 64 * 2**20)  # M_TOP_PAD: grow the heap in 64 MB steps
    except (OSError, AttributeError):
        pass

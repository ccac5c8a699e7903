"""Progress and cancel plumbing shared by every long computation.

Compute functions take ``progress(fraction, message)`` and ``cancel() -> bool`` callables. A
:class:`Reporter` wraps both, maps sub-steps onto sub-ranges and raises :class:`Cancelled` when asked.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a computation when the user pressed Cancel."""


def _no_progress(fraction: float, message: str) -> None:
    return None


def _never_cancel() -> bool:
    return False


class Reporter:
    """Reports progress in ``[start, end]`` of the caller's range and checks for cancellation."""

    def __init__(self, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                 start: float = 0.0, end: float = 1.0):
        self._progress = progress or _no_progress
        self._cancel = cancel or _never_cancel
        self.start, self.end = start, end

    def __call__(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1 of this reporter's range); raise :class:`Cancelled` if cancelled."""
        self.check()
        fraction = min(max(float(fraction), 0.0), 1.0)
        self._progress(self.start + (self.end - self.start) * fraction, message)

    def check(self) -> None:
        """Raise :class:`Cancelled` when the cancel callable says so."""
        if self._cancel():
            raise Cancelled("Cancelled by the user.")

    def commit(self) -> None:
        """Mark the last cancel check as passed: from now on this reporter only reports progress.

        Logic classes call this (through ``VesselReconLogic.writing``) right before they write their
        outputs, so that a Cancel pressed while writing can no longer leave half the outputs behind.
        """
        self.check()
        self._cancel = _never_cancel

    def steps(self, total: int, message: str) -> Callable[[], None]:
        """A callable that reports the next of ``total`` equal steps as ``"<message> k/total"`` (and checks
        for cancel) each time it is called: the per-batch progress of a long network pass."""
        done = 0

        def step() -> None:
            nonlocal done
            done += 1
            self(min(done / max(total, 1), 1.0), f"{message} {done}/{total}")

        return step

    def sub(self, start: float, end: float) -> "Reporter":
        """A reporter for the sub-range ``[start, end]`` (fractions of this one)."""
        span = self.end - self.start
        return Reporter(self._progress, self._cancel, self.start + span * start, self.start + span * end)


def as_reporter(progress: ProgressFn | Reporter | None = None, cancel: CancelFn | None = None) -> Reporter:
    """Return ``progress`` if it already is a :class:`Reporter`, else wrap the callables."""
    if isinstance(progress, Reporter):
        return progress
    return Reporter(progress, cancel)


class CancelToken:
    """A thread-safe cancel flag whose instances are usable as ``cancel`` callables."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


def run_in_worker(compute: Callable[[], T], pump_events: Callable[[], None],
                  poll_seconds: float = 0.05) -> T:
    """Run ``compute`` on a worker thread while the calling (GUI) thread keeps pumping events.

    The caller stays on the main thread, so it may touch MRML once this returns. Exceptions
    raised by ``compute`` (including :class:`Cancelled`) are re-raised here.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = compute()
        except BaseException as exc:  # re-raised on the main thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="VesselReconWorker", daemon=True)
    worker.start()
    while worker.is_alive():
        pump_events()
        worker.join(poll_seconds)
    if "error" in box:
        raise box["error"]
    return box["result"]


_OPEN_BARS: "weakref.WeakSet[TqdmProgress]" = None  # set on first use


def close_bars() -> None:
    """Close every open terminal bar (so that an error message starts on a line of its own)."""
    for bar in list(_OPEN_BARS or ()):
        bar.close()


class TqdmProgress:
    """A ``progress`` callable drawing a tqdm bar on the terminal (for the CLI). The bar appears at the first
    report, so that an error raised before it (e.g. while checking the inputs) prints no empty bar."""

    def __init__(self, desc: str = "", disable: bool = False):
        self.desc, self.disable, self._bar = desc, disable, None

    def __call__(self, fraction: float, message: str) -> None:
        if self._bar is None:
            self._open()
        self._bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def _open(self) -> None:
        from tqdm import tqdm

        global _OPEN_BARS
        self._bar = tqdm(total=1000, desc=self.desc, disable=self.disable, bar_format="{l_bar}{bar}| {postfix}")
        _OPEN_BARS = _OPEN_BARS if _OPEN_BARS is not None else weakref.WeakSet()
        _OPEN_BARS.add(self)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if _OPEN_BARS is not None:
            _OPEN_BARS.discard(self)

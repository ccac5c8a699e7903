"""Running one Logic task at a time for a module widget: progress, Cancel, errors, out of memory.

**Inference isolation.** The GUI path runs the heavy part of a Logic call in-process, on a worker
thread (:func:`VesselReconLib.progress.run_in_worker`), while the GUI thread pumps events. A torch
error on that thread (a CUDA out-of-memory included) is caught and reported, and the widget stays
usable; Cancel takes effect at the next progress check, which the networks' sliding-window loops
make between windows. ``Testing/test_slicer_static.py`` checks both with a real torch forward pass
(an out-of-memory error and a Cancel in the middle of it). A crash inside a native library (a
segfault) would still end Slicer: the Logic's input and weight checks (finite weights, validated
inputs) are what keep such data away from native code. The console Logic API stays in-process too.

Nothing here imports ``qt``, ``ctk``, ``slicer`` or torch at module level.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from .errors import InputError
from .progress import CancelToken, Cancelled, run_in_worker
from .slicer_compat import show_error

log = logging.getLogger(__name__)

BUSY_BUTTONS = ("applyButton", "evaluateButton", "loadSampleButton", "batchRunButton")
OOM_HELP = ("The device ran out of memory. Choose the cpu device, close other GPU programs, or crop the "
            "input, then try again.")


# ---------------------------------------------------------------- running tasks


class TaskRunner:
    """Runs one Logic task at a time for a module widget.

    While a task runs, the Apply-like buttons are disabled and Cancel is enabled; progress reported
    from any thread is queued and shown (``ui.progressBar``, ``ui.statusLabel``) only on the GUI
    thread, when events are pumped. :class:`InputError` (and :class:`CheckpointError`) messages are
    shown as they are; other errors are logged with their traceback and reported briefly.
    """

    def __init__(self, ui, pump_events: Callable[[], None] | None = None,
                 error_display: Callable[[str], None] | None = None, on_idle: Callable[[], None] | None = None):
        self.ui = ui
        self.pump_events = pump_events or (lambda: None)
        self.error_display = error_display or show_error
        self.on_idle = on_idle
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._token: CancelToken | None = None

    @property
    def busy(self) -> bool:
        return self._token is not None

    def cancel(self, *args) -> None:
        """Ask the running task to stop (connected to the Cancel button; also called on scene close)."""
        if self._token is not None:
            self._token.set()
            self._show(None, "Cancelling…")

    @property
    def cancelled(self) -> bool:
        """True while the running task has been asked to stop."""
        return self._token is not None and self._token()

    def progress(self, fraction: float, message: str = "") -> None:
        """Thread-safe progress callback; on the GUI thread it also updates the widgets."""
        self._queue.put((fraction, message))
        if threading.current_thread() is threading.main_thread():
            self.pump()

    def pump(self) -> None:
        """Show queued progress, then let the GUI process its events (Cancel clicks included)."""
        self._drain()
        self.pump_events()

    def background(self, fn: Callable[[], Any]):
        """Run ``fn()`` on a worker thread while the GUI keeps running; return its result."""
        return run_in_worker(fn, self.pump)

    def run(self, task: Callable[..., Any], title: str = "Processing"):
        """Run ``task(progress, cancel, background)`` on the GUI thread; its result, or None on failure."""
        if self.busy:
            return None
        self._token = CancelToken()
        self._set_busy(True)
        self._show(0.0, f"{title}…")
        try:
            result = task(self.progress, self._token, self.background)
        except Cancelled:
            self._show(0.0, f"{title} cancelled.")
            return None
        except InputError as exc:
            self._show(0.0, f"{title} stopped: {exc}")
            self.error_display(str(exc))
            return None
        except Exception as exc:  # report briefly, keep the traceback in the log
            log.exception("%s failed", title)
            self._show(0.0, f"{title} failed.")
            detail = OOM_HELP if is_out_of_memory(exc) else "The application log has the details."
            summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.error_display(f"{title} failed: {summary}\n\n{detail}")
            return None
        finally:
            self._token = None
            self._set_busy(False)
        self._drain()
        self._show(1.0, finished_message(title, result))
        return result

    def run_compute(self, compute: Callable[[Callable, Callable], Any],
                    apply_on_main_thread: Callable[[Any], Any] | None = None, title: str = "Processing"):
        """Run ``compute(progress, cancel)`` on a worker thread, then ``apply_on_main_thread(result)``."""
        def task(progress, cancel, background):
            result = background(lambda: compute(progress, cancel))
            return apply_on_main_thread(result) if apply_on_main_thread is not None else result

        return self.run(task, title)

    def _drain(self) -> None:
        latest = None
        while True:
            try:
                latest = self._queue.get_nowait()
            except queue.Empty:
                break
        if latest is not None:
            self._show(*latest)

    def _show(self, fraction: float | None, message: str) -> None:
        if fraction is not None and getattr(self.ui, "progressBar", None) is not None:
            self.ui.progressBar.value = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
        if message and getattr(self.ui, "statusLabel", None) is not None:
            self.ui.statusLabel.text = message

    def _set_busy(self, busy: bool) -> None:
        for name in BUSY_BUTTONS:
            button = getattr(self.ui, name, None)
            if button is not None:
                button.enabled = not busy
        if getattr(self.ui, "cancelButton", None) is not None:
            self.ui.cancelButton.enabled = busy
        if not busy and self.on_idle is not None:
            self.on_idle()


def run_with_progress(ui, compute: Callable[[Callable, Callable], Any],
                      apply_on_main_thread: Callable[[Any], Any] | None = None,
                      pump_events: Callable[[], None] | None = None, title: str = "Processing"):
    """One-off :meth:`TaskRunner.run_compute`, with ``ui.cancelButton`` wired for its duration."""
    runner = TaskRunner(ui, pump_events)
    button = getattr(ui, "cancelButton", None)
    signal = getattr(button, "clicked", None)
    if signal is not None:
        signal.connect(runner.cancel)
    try:
        return runner.run_compute(compute, apply_on_main_thread, title)
    finally:
        if signal is not None:
            signal.disconnect(runner.cancel)

def finished_message(title: str, result) -> str:
    """The status line after a task: its result's ``warnings`` (implausible outputs, a model of another contrast,
    unusual spacing ...), one per line, so the panel shows what the command line prints as ``warning:``."""
    warnings = [str(w) for w in (getattr(result, "warnings", None) or []) if w]
    if not warnings:
        return f"{title} finished."
    count = f"{len(warnings)} warning{'' if len(warnings) == 1 else 's'}"
    return f"{title} finished with {count}:\n" + "\n".join(f"- {w}" for w in warnings)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors (CUDA, MPS or CPU allocation failures)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return "out of memory" in text or "outofmemory" in text or "can't allocate memory" in text

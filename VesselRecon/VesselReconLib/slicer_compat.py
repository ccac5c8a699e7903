"""The one place for Slicer API differences between 5.8 (the oldest supported version) and 5.13.

Every call whose API changed between those versions goes through here, so module and library code
never tests for versions itself:

- segment terminology: ``vtkSegment.SetTerminology`` (5.10 and later) or
  ``SetTag(vtkSegment.GetTerminologyEntryTagName(), …)`` (5.8);
- loadable-module MRML classes (Markups): looked up at call time, since in 5.8 they are wrapped
  into ``slicer`` only once the Markups module has been loaded, after scripted modules are imported;
- package installs: ``slicer.packaging.pip_ensure`` (with its own progress dialog) in the Slicer
  versions that have it, else ``pip`` in a ``PythonSlicer`` child process whose output is shown as
  progress (``slicer.util.pip_install`` of 5.8/5.10 blocks the GUI silently);
- torch and torchvision: their installed versions are read from the package metadata, without
  importing them.

Nothing here imports ``qt``, ``ctk`` or ``slicer.app`` at module level; ``slicer`` is imported
inside functions, and every function takes the objects it works on, so the tests drive it with fakes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

MINIMUM_SLICER_VERSION = (5, 8)
MINIMUM_SLICER_TEXT = "3D Slicer 5.8 or later"
# Python modules that hold the Markups MRML classes before they are copied into ``slicer``.
MARKUPS_WRAPPERS = ("vtkSlicerMarkupsModuleMRMLPython", "vtkSlicerMarkupsModuleMRML")


def _slicer():
    import slicer

    return slicer


# ---------------------------------------------------------------- messages


def in_slicer_app() -> bool:
    """True inside the 3D Slicer application (not in the headless runtime or plain Python)."""
    from .runtime import in_slicer_app as _in_app

    return _in_app()


def show_error(message: str, parent=None) -> None:
    """Show ``message`` in Slicer's error dialog (only log it outside the application)."""
    if in_slicer_app():
        _slicer().util.errorDisplay(message, parent=parent)
    else:
        log.error(message)


# ---------------------------------------------------------------- versions


def slicer_version(app=None) -> tuple[int, int] | None:
    """``(major, minor)`` of the running Slicer application, or None outside it."""
    if app is None:
        if not in_slicer_app():
            return None
        app = _slicer().app
    try:
        return int(app.majorVersion), int(app.minorVersion)
    except (AttributeError, TypeError, ValueError):
        return None


def version_supported(version: tuple[int, int] | None) -> bool:
    """True for Slicer :data:`MINIMUM_SLICER_VERSION` or later (and outside Slicer, ``None``)."""
    return version is None or tuple(version) >= MINIMUM_SLICER_VERSION


def unsupported_version_message(version: tuple[int, int]) -> str:
    return (f"VesselRecon needs {MINIMUM_SLICER_TEXT}; this is Slicer {version[0]}.{version[1]}. "
            "Install a current Slicer from https://download.slicer.org.")


# ---------------------------------------------------------------- segment terminology


def set_segment_terminology(segment, terminology: str) -> None:
    """Set a segment's terminology string on any supported Slicer version."""
    if hasattr(segment, "SetTerminology"):  # Slicer 5.10 and later
        segment.SetTerminology(terminology)
    else:  # Slicer 5.8: the terminology is a tag
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)


def segment_terminology(segment) -> str:
    """A segment's terminology string ("" when it has none) on any supported Slicer version."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    return tag_value(segment, segment.GetTerminologyEntryTagName())


def tag_value(segment, key: str) -> str:
    """A segment tag's value ("" when absent); VTK wraps ``GetTag(key, std::string&)`` with a reference."""
    try:
        return segment.GetTag(key) or ""
    except TypeError:
        import vtk

        value = vtk.reference("")
        return str(value) if segment.GetTag(key, value) else ""


# ---------------------------------------------------------------- MRML classes of loadable modules


def mrml_class(name: str, slicer_module=None):
    """The MRML class ``name`` (e.g. ``vtkMRMLMarkupsFiducialNode``), looked up now, not at import.

    In Slicer 5.8 the Markups classes appear in ``slicer`` only after the Markups module has loaded;
    before that they are taken from the module's own Python wrapping.

    :raises ImportError: with a message naming the class, when it cannot be found.
    """
    slicer = slicer_module if slicer_module is not None else _slicer()
    found = getattr(slicer, name, None)
    if found is not None:
        return found
    for wrapper in MARKUPS_WRAPPERS if name.startswith("vtkMRMLMarkups") else ():
        try:
            found = getattr(importlib.import_module(wrapper), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise ImportError(f"{name} is not available: the Markups module is not loaded in this Slicer. "
                      "Check that the Markups module is enabled (Edit → Application Settings → Modules).")


# ---------------------------------------------------------------- installed versions


def installed_version(distribution: str) -> str | None:
    """The installed version of a package (``"torch"``), read without importing it; None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_satisfies(version: str | None, requirement: str) -> bool:
    """True when ``version`` meets the specifier ``requirement`` (e.g. ``">=2.1"``); local tags ignored."""
    if version is None:
        return False
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return SpecifierSet(requirement).contains(Version(parsed.public), prereleases=True)


DISPLAY_NAMES = {"torch": "PyTorch"}


def version_problem(distribution: str, requirement: str, version: str | None = None) -> str | None:
    """Why the installed ``distribution`` cannot be used (missing, or outside ``requirement``), or None."""
    version = installed_version(distribution) if version is None else version
    label = DISPLAY_NAMES.get(distribution, distribution)
    if version is None:
        return f"{label} is not installed."
    if not version_satisfies(version, requirement):
        return f"{label} {version} is installed, but VesselRecon needs {distribution}{requirement}."
    return None


# ---------------------------------------------------------------- worker processes


def worker_processes_allowed() -> bool:
    """False inside the Slicer application: forked or spawned workers there are unsafe (a fork copies
    the GUI and OpenGL state; on macOS/Windows a spawned child is another ``PythonSlicer``)."""
    return not in_slicer_app()


# ---------------------------------------------------------------- package installs


class InstallDeclined(Exception):
    """The user chose not to install."""


def pip_ensure_function(slicer_module=None):
    """``slicer.packaging.pip_ensure`` where this Slicer has it (not 5.8/5.10), else None."""
    if slicer_module is not None:
        packaging = getattr(slicer_module, "packaging", None)
    else:
        try:
            from slicer import packaging
        except ImportError:
            return None
    return getattr(packaging, "pip_ensure", None)


def install_packages(requirements: Sequence[str], skip_packages: Sequence[str], ask: bool,
                     requester: str = "VesselRecon", no_deps: dict[str, list[str]] | None = None,
                     pip_ensure=None, confirm: Callable[[str], bool] | None = None,
                     run_pip: Callable[[list[str]], None] | None = None) -> None:
    """Install ``requirements`` without touching ``skip_packages`` (Slicer's numpy, vtk, SimpleITK, torch).

    With ``pip_ensure`` (Slicer 5.11+) it shows Slicer's own confirmation and progress dialogs.
    Otherwise the user is asked with ``confirm`` and pip runs in a child process with progress
    (:func:`run_pip_with_progress`); packages listed in ``no_deps`` are installed with ``--no-deps``
    plus the dependencies given there, so they cannot pull replacements of ``skip_packages``.

    :raises InstallDeclined: the user said no.
    :raises subprocess.CalledProcessError: pip failed.
    """
    pip_ensure = pip_ensure if pip_ensure is not None else pip_ensure_function()
    if pip_ensure is not None:
        _call_pip_ensure(pip_ensure, requirements, skip_packages, ask, requester)
        return
    confirm = confirm or _confirm
    if ask and not confirm(f"{requester} needs these Python packages: {', '.join(requirements)}. "
                           "Install them now? This can take a few minutes."):
        raise InstallDeclined()
    no_deps = no_deps or {}
    isolated = [r for r in requirements if requirement_name(r) in no_deps]
    plain = [r for r in requirements if requirement_name(r) not in no_deps]
    plain += sorted({d for r in isolated for d in no_deps[requirement_name(r)]} - set(plain))
    run_pip = run_pip or run_pip_with_progress
    if plain:
        run_pip(["install", *plain])
    if isolated:
        run_pip(["install", "--no-deps", *isolated])


def _call_pip_ensure(pip_ensure, requirements, skip_packages, ask, requester) -> None:
    import inspect

    from packaging.requirements import Requirement

    options = {"skip_packages": list(skip_packages), "prompt_install": ask, "requester": requester,
               "show_progress": True, "skip_in_testing": False}
    try:
        accepted = inspect.signature(pip_ensure).parameters
        options = {k: v for k, v in options.items() if k in accepted}
    except (TypeError, ValueError):
        pass
    pip_ensure([Requirement(r) for r in requirements], **options)


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement string, lower case (``"monai>=1.3"`` -> ``"monai"``)."""
    for separator in "<>=!~[; ":
        requirement = requirement.split(separator)[0]
    return requirement.lower()


def _confirm(message: str) -> bool:
    return bool(_slicer().util.confirmOkCancelDisplay(message))


def python_executable() -> str:
    """``PythonSlicer`` inside Slicer (pip must run there, not in the GUI process), else this Python."""
    if in_slicer_app():
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def run_pip_with_progress(arguments: list[str], on_line: Callable[[str], None] | None = None,
                          pump: Callable[[], None] | None = None, cancel: Callable[[], bool] | None = None,
                          command: list[str] | None = None) -> None:
    """Run ``python -m pip <arguments>`` in a child process, pumping the GUI and showing each output line.

    Inside Slicer a progress dialog shows pip's last line (installs take minutes, and the GUI stays
    responsive); ``on_line``/``pump``/``cancel`` replace the dialog for tests and scripts.

    :raises subprocess.CalledProcessError: pip exited with an error (its last lines are in ``output``).
    :raises InstallDeclined: cancelled by the user (the child is killed).
    """
    command = command or [python_executable(), "-m", "pip", *arguments]
    dialog = None
    if on_line is None and in_slicer_app():
        dialog = _slicer().util.createProgressDialog(labelText="Installing Python packages…", maximum=0)
        on_line = lambda text: setattr(dialog, "labelText", text[:120])  # noqa: E731
        pump = pump or _slicer().app.processEvents
        cancel = cancel or (lambda: dialog.wasCanceled)
    on_line, pump, cancel = on_line or log.info, pump or (lambda: None), cancel or (lambda: False)
    try:
        _stream_process(command, on_line, pump, cancel)
    finally:
        if dialog is not None:
            dialog.close()


def _stream_process(command: list[str], on_line, pump, cancel, poll_seconds: float = 0.05) -> None:
    # Slicer's own environment, as slicer.util.executePythonModule uses for pip (HTTPS_PROXY included).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    lines: queue.SimpleQueue = queue.SimpleQueue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    tail: list[str] = []
    while True:
        finished = process.poll() is not None and not reader.is_alive()
        while not lines.empty():
            text = lines.get().rstrip()
            if text:
                tail = (tail + [text])[-20:]
                on_line(text)
        if finished:
            break
        if cancel():
            process.kill()
            process.wait()
            raise InstallDeclined()
        pump()
        reader.join(poll_seconds)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command, output="\n".join(tail))


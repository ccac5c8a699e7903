"""All-or-nothing output files: write to a temporary name in the target folder, then ``os.replace``.

A crash, Ctrl-C or a full disk therefore never leaves a half-written file under the final name, and
:func:`remove_stale` lets a re-run delete the outputs it is about to rewrite first, so that files of
an older run never stand beside new ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".vesselrecon-partial-"


def _not_a_folder(folder: Path) -> InputError:
    return InputError(f"Output folder {folder} is a file (or lies under one): choose a folder.")


def check_output_folder(folder: str | Path) -> Path:
    """Refuse ``folder`` as :func:`output_folder` would, without creating anything.

    :raises InputError: the path, or one of its parents, is an existing file, or it is not writable.
    """
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise _not_a_folder(folder)
    if not os.access(existing, os.W_OK):
        raise InputError(f"Output folder {folder} is not writable: choose another folder.")
    return folder


def output_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) if needed and return it.

    :raises InputError: the path, or one of its parents, is an existing file, or it cannot be created.
    """
    folder = check_output_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):   # e.g. a broken link in the way
        raise _not_a_folder(folder) from None
    except PermissionError:
        raise InputError(f"Output folder {folder} cannot be created: check its permissions.") from None
    except OSError as exc:   # a read-only or virtual file system (/proc), a full disk, a name too long
        raise InputError(f"Output folder {folder} cannot be created ({exc.strerror or exc}): choose another "
                         "folder.") from None
    return folder


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path with the same file name, in a hidden folder beside ``path``; when the
    block succeeds, move it onto ``path`` with ``os.replace`` (atomic on one file system).

    :raises InputError: ``path`` is a folder or its folder cannot be created.
    :raises OSError: the block wrote nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder: choose a file name.")
    folder = output_folder(path.parent)
    scratch = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=folder))
    try:
        temporary = scratch / path.name
        yield temporary
        if not temporary.exists():
            raise OSError(f"Nothing was written to {path}.")
        os.replace(temporary, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically; return its path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale(paths: Iterable[str | Path]) -> list[Path]:
    """Delete the given output files if they exist (the outputs a re-run is about to rewrite).

    :returns: the files removed.
    """
    removed = []
    for path in map(Path, paths):
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


def _manifest(folder: Path, tag: str) -> Path:
    return folder / f".vesselrecon-{tag}.outputs"


@contextlib.contextmanager
def staging(folder: str | Path, tag: str) -> Iterator[Path]:
    """Write a run's output files into a hidden folder beside their final place, then move them in.

    On entry the files the previous run with this ``tag`` wrote (listed in a hidden manifest) are
    deleted, so an interrupted re-run never leaves old files beside new ones. When the block
    succeeds every file it wrote is moved (``os.replace``, sub-folders kept) into ``folder`` and
    listed in the manifest; when it fails, nothing it wrote appears.

    :param folder: the output folder (created; :class:`InputError` if it is a file).
    :param tag: names this kind of run (for example ``"angio3d"`` or ``"octadepth-scan1"``).
    :returns: the staging folder to write into.
    """
    folder = output_folder(folder)
    manifest, removed = _manifest(folder, tag), []
    if manifest.is_file():
        removed = remove_stale(folder / line for line in manifest.read_text(encoding="utf-8").splitlines()
                               if line and ".." not in line)
        manifest.unlink()
        if removed:
            log.info("%s: the %d files of the previous run were removed and are written anew", folder, len(removed))
    if not removed:   # large outputs take a while once the run's progress bar is done
        log.info("%s: writing the outputs", folder)
    scratch = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=folder))
    try:
        yield scratch
        written = sorted(p.relative_to(scratch) for p in scratch.rglob("*") if p.is_file())
        foreign = [p.as_posix() for p in written if (folder / p).exists()]
        if foreign:   # files of the same name that no run of this kind listed: the user's own, or another tool's
            log.warning("%s: replacing %d existing file(s) no earlier run of this command wrote: %s", folder,
                        len(foreign), ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""))
        for relative in written:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / relative, folder / relative)
        write_text(manifest, "".join(f"{p.as_posix()}\n" for p in written))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

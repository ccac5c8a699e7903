"""Folder batch for the 3D modules: every input in a folder -> the module's outputs, one ``.mrb`` each, and a CSV.

COIPS has its own streaming batch pipeline (``coips.batch``); the other four modules share this one.
Both are driven the same way: the widget's *Run batch* calls ``Logic.process_batch(inputFolder,
outputFolder, model, device, <settings>, progress, cancel, background)`` and shows the returned rows.

Each input is processed by the module's own ``process`` in a private scene (the user's scene is never
touched), saved as ``<output>/<name>.mrb`` and summarised in ``<output>/batch_results.csv``. A file
that fails is reported in the CSV and the batch goes on; Cancel stops after the current input and
still writes the CSV of what finished. A batch in which no input succeeded writes nothing and says so. No worker processes are used, so it is safe inside Slicer.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import output_folder
from .errors import CheckpointError, InputError, file_reason, nothing_written
from .progress import Cancelled, as_reporter

log = logging.getLogger(__name__)

CSV_NAME = "batch_results.csv"
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
# method -> kind of input item in the folder
INPUT_KIND = {"octadepth": "enface", "vcnet": "volume", "vesselsdf": "volume", "angio3d": "case"}


@dataclass
class FolderBatchResult:
    """One row per input (``input``, ``status``, ``output`` or ``error``, then the run's scalar metrics)."""

    rows: list[dict] = field(default_factory=list)
    csvPath: Path | None = None

    @property
    def failed(self) -> int:
        return sum(row["status"] != "ok" for row in self.rows)


def list_inputs(folder: str | Path, kind: str) -> list[Path]:
    """The inputs of a folder: en face images, volume files and DICOM series folders, or case folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Input folder {folder} does not exist.")
    if kind == "enface":
        from .enface_io import list_images

        return list_images(folder)
    children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if kind == "case":
        return [p for p in children if p.is_dir()]
    return [p for p in children if (p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)) or p.is_dir()]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.is_file() else name


def load_inputs(logic, path: Path, kind: str) -> dict[str, Any]:
    """Load one input into ``logic.scene``; return the ``process`` keywords that name it."""
    from . import mrml

    if kind == "enface":
        return {"inputVolume": logic.load_image(str(path), _stem(path))}
    if kind == "volume":
        from .volume_io import read_image

        return {"inputVolume": mrml.sitk_to_volume(read_image(path), _stem(path), scene=logic.scene)}
    from .phantoms.xray import load_case

    case = load_case(path)
    keywords: dict[str, Any] = {}
    for view, image, geometry, points in zip("AB", case.images, case.geometries, case.soi_points):
        import numpy as np

        volume = logic.add_view(np.asarray(image)[None], geometry, f"view {view}")
        keywords[f"view{view}"] = volume
        keywords[f"points{view}"] = logic.add_points(np.asarray(points), volume, f"points {view}", 0)
    return keywords


def scalar_metrics(result) -> dict[str, Any]:
    """The scalar numbers of a ``process`` result for the CSV: its ``metrics`` dict (or its rows), then the
    measurements it keeps elsewhere, its ``summary()`` (OCTADepth: vessel length, segments, depth) and its main
    branch's ``qca`` (Angio3D: length, MLD, % stenosis); an attribute the summary repeats is written once."""
    from .slicer_results import _items, _rows

    items = _items(result)
    values = {str(row["metric"]): row["value"] for row in _rows(result, items) if "metric" in row and "value" in row}
    summary = result.summary() if callable(getattr(result, "summary", None)) else None
    for extra in (summary, getattr(result, "qca", None)):
        if isinstance(extra, dict):
            values = {k: v for k, v in values.items() if _snake_case(k) not in extra} | extra
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _snake_case(name: str) -> str:
    """``fieldOfViewMm`` -> ``field_of_view_mm``."""
    import re

    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def process_folder(core_class: type, kind: str, inputFolder, outputFolder, settings: dict[str, Any],
                   progress=None, cancel=None, background=None) -> FolderBatchResult:
    """Run ``core_class(scene).process(**inputs, **settings)`` on every input of ``inputFolder``.

    :raises InputError: no output folder, or one that cannot be written; no inputs; every input failed (nothing is
        written, the folder is not even created: :func:`~VesselReconLib.errors.nothing_written`).
    """
    from . import mrml
    from .atomic import check_output_folder
    from .slicer_results import is_node

    if not outputFolder or str(outputFolder) in ("", "."):
        raise InputError("Choose an output folder for the batch.")
    inputs = list_inputs(inputFolder, kind)
    if not inputs:
        raise InputError(f"No inputs found in {inputFolder}.")
    out = check_output_folder(outputFolder)   # created by the first input that succeeds
    settings = {k: v for k, v in settings.items() if v is not None and not is_node(v)}
    reporter = as_reporter(progress, cancel)
    result = FolderBatchResult()
    try:
        for index, path in enumerate(inputs):
            reporter(index / len(inputs), f"{index + 1}/{len(inputs)}: {path.name}")
            step = reporter.sub(index / len(inputs), (index + 1) / len(inputs))
            result.rows.append(_process_one(core_class, kind, path, out, settings, step, background, mrml))
    except Cancelled:
        log.info("Batch cancelled after %d of %d inputs", len(result.rows), len(inputs))
        raise
    finally:
        if result.failed < len(result.rows):
            result.csvPath = write_rows(result.rows, out / CSV_NAME)
    if result.failed == len(result.rows):
        raise nothing_written([file_reason(Path(row["input"]).name, row["error"]) for row in result.rows], len(inputs))
    reporter(1.0, f"{len(result.rows) - result.failed} of {len(inputs)} inputs done; {result.failed} failed.")
    return result


def private_scene():
    """A scene apart from the user's: a new headless scene outside Slicer (``runtime.private_scene``; the
    script's own scene stays as it is); inside Slicer a new ``vtkMRMLScene`` knowing every node class the
    application's scene knows (Markups included)."""
    from . import runtime

    if not runtime.in_slicer_app():
        return runtime.private_scene()
    import tempfile

    import slicer

    scene = slicer.vtkMRMLScene()
    scene.SetRootDirectory(tempfile.mkdtemp(prefix="vesselrecon-batch-"))
    slicer.mrmlScene.CopyRegisteredNodesToScene(scene)   # as runtime.private_scene does headless
    return scene


def _process_one(core_class, kind, path, out, settings, reporter, background, mrml) -> dict:
    scene = private_scene()
    try:
        logic = core_class(scene)
        keywords = {**load_inputs(logic, path, kind), **settings}
        from .slicer_results import call_logic

        output = call_logic(logic.process, {**keywords, "progress": reporter, "cancel": None,
                                            "background": background})
        target = output_folder(out) / f"{_stem(path)}.mrb"
        mrml.save_scene(target, scene)
        return {"input": str(path), "status": "ok", "output": str(target), **scalar_metrics(output)}
    except Cancelled:
        raise
    except (InputError, CheckpointError) as exc:
        return {"input": str(path), "status": "failed", "error": str(exc)}
    except Exception as exc:  # one bad input must not stop the batch
        log.exception("Batch input %s failed", path)
        return {"input": str(path), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        scene.Clear(1)


BATCH_COLUMNS = ("input", "status", "output", "error")


def write_rows(rows: list[dict], path: Path, first: tuple[str, ...] = BATCH_COLUMNS) -> Path:
    """A CSV with the columns ``first`` (a batch's by default), then the rest of the rows' columns in order of
    appearance; a row without a column leaves its cell empty."""
    columns = list(first)
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


class FolderBatchMixin:
    """``process_batch`` for a Slicer Logic whose core has none (mixed in by ``slicer_logic.bind_core``)."""

    def process_batch(self, inputFolder=None, outputFolder=None, progress=None, cancel=None, background=None,
                      **settings) -> FolderBatchResult:
        core = getattr(type(self), "core_class", type(self))
        method = getattr(core, "method", "")
        if method not in INPUT_KIND:
            raise InputError(f"Folder batch is not available for {method or type(self).__name__}.")
        if not inputFolder or str(inputFolder) in ("", "."):
            raise InputError("Choose an input folder for the batch.")
        return process_folder(core, INPUT_KIND[method], inputFolder, outputFolder, settings, progress, cancel,
                              background)

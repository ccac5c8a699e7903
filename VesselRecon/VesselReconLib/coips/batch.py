"""The batch pipeline: a study folder -> grades, FAZ masks and metrics, CSV and HTML report.

Images stream through a torch ``DataLoader`` (parallel decoding in ``num_workers`` processes), are
graded and segmented on the device in mixed precision (:func:`VesselReconLib.device.inference`), and
finished (FAZ metrics, mask and thumbnail files) in the main process or ``post_workers`` processes.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import GRADES
from .config import CoipsConfig
from .inference import faz_logits, grade, paste_masks, thumbnails, window_box, work_size
from .network import fused_for_inference, inference_settings
from ..atomic import remove_stale
from ..enface_io import (UNKNOWN_FOV, fov_from_path, list_images, missing_fov_message, probe_fov, read_image,
                         to_uint8, to_work_image)
from .faz import FAZ_METRIC_UNITS
from .postprocess import faz_centre, finish_chunk, finish_image, probability_columns, unpack_mask
from .reports import summarise, write_csv, write_html
from ..errors import CheckpointError, InputError, file_reason, nothing_written
from ..progress import Cancelled, as_reporter

log = logging.getLogger(__name__)
CSV_NAME, HTML_NAME, SCENE_NAME = "coips_results.csv", "coips_report.html", "coips.mrb"
REPORT_NAMES = (CSV_NAME, HTML_NAME, SCENE_NAME)  # a run's summaries of its masks and thumbnails


class FolderDataset(torch.utils.data.Dataset):
    """Decodes images to ``size`` x ``size`` uint8 tensors; unreadable files become error items and
    unsuitable ones (non-square, wide-field) are marked with the reason.

    :param fields_of_view: the caller's field of view per path (``None``: metadata or name), or one value.
    :param faz_net: the FAZ U-Net whose input window (:func:`.inference.faz_window`) is cut here too.
    """

    def __init__(self, paths: list[Path], size: int, fields_of_view=None, faz_net=None):
        self.paths, self.size = list(paths), int(size)
        self.faz_spec = _FazSpec(getattr(faz_net, "input_size", size), getattr(faz_net, "window_mm", None))
        if fields_of_view is None or isinstance(fields_of_view, (int, float)):
            fields_of_view = [fields_of_view] * len(self.paths)
        self.fields_of_view = list(fields_of_view)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        faz_size = self.faz_spec.input_size
        item = {"index": index, "error": "", "unsuitable": "", "fov": math.nan, "fov_source": "",
                "height": self.size, "width": self.size, "box": torch.zeros(3, dtype=torch.int64),
                "image": torch.zeros(self.size, self.size, dtype=torch.uint8),
                "faz": torch.zeros(faz_size, faz_size, dtype=torch.uint8)}
        image, error, unsuitable = screen_image(self.paths[index], self.fields_of_view[index])
        if error:
            return {**item, "error": error}
        height, width = image.pixels.shape
        item.update(fov=image.field_of_view_mm, fov_source=image.fov_source, height=height, width=width,
                    unsuitable=unsuitable)
        if unsuitable:
            return item
        pixels = to_uint8(image.pixels)     # once for both windows (as the single-image path's faz_window)
        top, left, side = box = window_box(height, width, image.field_of_view_mm, self.faz_spec.window_mm)
        return {**item, "image": torch.from_numpy(to_work_image(pixels, self.size)),
                "faz": torch.from_numpy(to_work_image(pixels[top:top + side, left:left + side], faz_size)),
                "box": torch.tensor(box, dtype=torch.int64)}


def screen_image(path: Path, field_of_view_mm: float | None):
    """``(image, error, unsuitable)``: the decoded image, or why it cannot be read (``error``), and why COIPS does not
    grade it (:func:`.faz.unsuitable_reason`: non-square, wide-field); empty strings for a usable image."""
    from .faz import unsuitable_reason

    try:
        image = read_image(path, field_of_view_mm)
    except Exception as exc:  # noqa: BLE001 - one bad file must not abort the batch
        return None, str(exc) if isinstance(exc, InputError) else f"{path.name}: {exc.__class__.__name__}: {exc}", ""
    return image, "", unsuitable_reason(*image.pixels.shape, image.field_of_view_mm)


def check_any_usable(paths: list[Path], fields_of_view: list, names: list[str]) -> None:
    """Refuse a batch in which no image can be graded (each unreadable or unsuitable) before anything is written;
    images are decoded until the first usable one, usually the first.

    :raises InputError: every image's reason (:func:`~VesselReconLib.errors.nothing_written`).
    """
    reasons = []
    for path, fov, name in zip(paths, fields_of_view, names):
        _, error, unsuitable = screen_image(path, fov)
        if not (error or unsuitable):
            return
        reasons.append(file_reason(name, error or unsuitable))
    raise nothing_written(reasons, len(paths), "images")


@dataclass
class _FazSpec:
    """What the decoders need to know of the FAZ U-Net (picklable, no weights)."""

    input_size: int
    window_mm: float | None


@dataclass
class BatchResult:
    """Rows (one dict per image, in input order), report paths and the run's summary."""

    rows: list[dict]
    csv_path: Path
    html_path: Path
    summary: dict
    seconds: float
    timings: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return len(self.rows) / self.seconds if self.seconds > 0 else math.nan


def output_stem(path: Path, root: Path, root_is_dir: bool | None = None) -> str:
    """A flat, unique file stem for an input image (sub-folders joined with ``__``)."""
    root_is_dir = root.is_dir() if root_is_dir is None else root_is_dir
    relative = path.relative_to(root) if root_is_dir and path.is_relative_to(root) else Path(path.name)
    return "__".join(relative.with_suffix("").parts)


def _output_names(paths: list[Path], root: Path) -> tuple[list[str], list[str]]:
    """Each image's output stem (:func:`output_stem`) and its name in the report (relative to a root folder)."""
    root_is_dir = root.is_dir()
    stems = [output_stem(path, root, root_is_dir) for path in paths]
    return stems, [str(path.relative_to(root) if root_is_dir else path.name) for path in paths]


def _post_pool(workers: int):
    """Worker processes for :func:`finish_chunk`: a forkserver (clean children) when the main module
    can be re-imported, else fork; ``None`` (work in this process) when neither is available."""
    from ..slicer_compat import worker_processes_allowed

    if workers <= 0 or not worker_processes_allowed():  # never inside Slicer
        return None
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if "forkserver" in methods and main_file and Path(main_file).is_file():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([f"{__package__}.postprocess"])
    elif "fork" in methods:
        context = multiprocessing.get_context("fork")
    else:
        log.warning("No fork-based process start available: finishing images in the main process.")
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


class _StaleOutputs:
    """A previous run's PNGs in this tool's own folders (``masks/``, ``thumbnails/``) never stay beside the
    new ones. Files of images outside this run are removed at once; an image's own old files are
    overwritten in place (atomically) when it writes them again, and removed when it does not (no
    FAZ this time, files switched off) or when the run ends before the image was finished. A re-run into
    the same folder so deletes only what it does not rewrite."""

    def __init__(self, out: Path, stems: list[str]):
        self.folders = {sub: out / sub for sub in ("masks", "thumbnails")}
        self.existing = {}
        for sub, folder in self.folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            self.existing[sub] = {entry.name for entry in os.scandir(folder) if entry.name.endswith(".png")}
        self.own = {index: {"thumbnails": f"{stem}.png", "masks": f"{stem}_faz.png"} for index, stem in enumerate(stems)}
        mine = {sub: {names[sub] for names in self.own.values()} for sub in self.folders}
        for sub, names in self.existing.items():
            self._remove(sub, names - mine[sub])
            names &= mine[sub]

    def _remove(self, sub: str, names) -> None:
        remove_stale(self.folders[sub] / name for name in names)

    def finished(self, rows: list[dict]) -> list[dict]:
        """Remove the old files the finished ``rows`` did not write again; returns ``rows``."""
        for row in rows:
            for sub, name in self.own.pop(row["index"], {}).items():
                if name in self.existing[sub] and row.get("thumbnail" if sub == "thumbnails" else "mask") != name:
                    self._remove(sub, [name])
                self.existing[sub].discard(name)
        return rows

    def remove_rest(self) -> None:
        """Remove the old files of images that were not finished (cancelled or failed run)."""
        for sub, names in self.existing.items():
            self._remove(sub, names)
            names.clear()


def _window_masks(faz_net, windows: torch.Tensor, boxes, heights, widths) -> list[np.ndarray]:
    """FAZ masks at each image's original size from one batched U-Net pass over the windows, packed to bits."""
    logits = faz_logits(faz_net, windows)
    shapes = list(zip(heights.tolist(), widths.tolist()))
    return [np.packbits(mask) for mask in paste_masks(logits, boxes.tolist(), shapes)]


def decode_workers(requested: int) -> int:
    """Decoding processes to use: as requested, except 0 inside the Slicer application, where no worker
    processes are started (a fork copies the GUI and OpenGL state; a spawned child is another
    ``PythonSlicer``): see :func:`VesselReconLib.slicer_compat.worker_processes_allowed`."""
    from ..slicer_compat import worker_processes_allowed

    return requested if worker_processes_allowed() else 0


def thread_chunk(size: int, device: torch.device) -> int:
    """Images per pass so that a batch of ``size`` gives one chunk to each worker of
    :func:`VesselReconLib.device.map_batches` (``device.batch_workers``; the whole batch off the CPU): a
    batch's small operators split over 2 threads stall in OpenMP barriers whenever another process holds a
    core (round 7c, README)."""
    from ..device import batch_workers

    return max(1, math.ceil(size / batch_workers(size, device)))


_FUSED = weakref.WeakKeyDictionary()


def _fused_copy(net):
    """The fused, channels-last inference copy of ``net`` (:func:`.network.fused_for_inference`), made
    once per network and reused by later runs until its weights or settings change."""
    tensors = (*net.parameters(), *net.buffers())
    key = (tuple(t._version for t in tensors), tuple(str(t.device) for t in tensors[:1]),
           tuple(inference_settings(net).items()))
    cached = _FUSED.get(net)
    if cached is None or cached[0] != key:
        cached = (key, fused_for_inference(net, channels_last=True))
        _FUSED[net] = cached
    return cached[1]


class BatchRunner:
    """Runs the pipeline over a folder with a loaded quality classifier and FAZ U-Net."""

    def __init__(self, config: CoipsConfig, quality_net, faz_net, device: torch.device):
        self.config, self.device = config, device
        self.size = work_size(quality_net, faz_net)
        # both networks run as fused, channels-last copies (batch norms folded into the convolutions;
        # on a CPU the classifier is about twice as fast so, the FAZ U-Net a quarter to a third)
        self.quality_net, self.faz_net = _fused_copy(quality_net), _fused_copy(faz_net)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _loader(self, paths: list[Path], fields_of_view=None):
        config = self.config
        workers = decode_workers(int(config.num_workers))
        dataset = FolderDataset(paths, self.size, config.field_of_view_mm if fields_of_view is None else fields_of_view,
                                self.faz_net)
        return torch.utils.data.DataLoader(
            dataset, batch_size=int(config.batch_size), num_workers=workers, shuffle=False,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None,
            persistent_workers=False)

    def _infer(self, batch: dict) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
        """Probabilities, packed masks (by position in the batch) and thumbnails of one batch.

        Out of GPU memory, the batch is split into smaller chunks, and at one image the CPU takes over.
        """
        from ..device import run_with_fallback

        return run_with_fallback(lambda device, size: self._infer_chunks(batch, device, size), self.device,
                                 len(batch["index"]))

    def _infer_chunks(self, batch: dict, device: torch.device, chunk: int):
        if device != self.device:
            self.device = device
            # moved copies: the cached ones stay on their device
            self.quality_net = fused_for_inference(self.quality_net, channels_last=True).to(device)
            self.faz_net = fused_for_inference(self.faz_net, channels_last=True).to(device)
        from ..device import map_batches

        size = len(batch["index"])
        chunk = min(chunk, thread_chunk(size, device))
        ranges = [(start, min(start + chunk, size)) for start in range(0, size, chunk)]
        parts = list(map_batches(lambda bounds: self._infer_chunk(batch, *bounds), ranges, device))
        masks = {k: v for part in parts for k, v in part[1].items()}
        return np.concatenate([p[0] for p in parts]), masks, np.concatenate([p[2] for p in parts])

    def _infer_chunk(self, batch: dict, start: int, stop: int):
        """Probabilities, packed masks and thumbnails of ``batch[start:stop]`` (in inference mode: per
        thread, as :func:`VesselReconLib.device.map_batches` may run it in a worker thread)."""
        from ..device import inference

        x = batch["image"][start:stop].to(self.device, non_blocking=True)[:, None].float().div_(255.0)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        valid = np.array([not (e or u) for e, u in zip(batch["error"][start:stop], batch["unsuitable"][start:stop])])
        with inference(self.device):
            probabilities = grade(self.quality_net, x)
            labels = probabilities.argmax(1).cpu().numpy()
            chosen = np.nonzero(valid & ((labels > 0) | bool(self.config.segment_ungradable)))[0]
            masks = {}
            if chosen.size:
                heights, widths = batch["height"][start:stop], batch["width"][start:stop]
                windows = batch["faz"][start:stop][chosen].to(self.device, non_blocking=True)[:, None].float().div_(255.0)
                windows = windows.contiguous(memory_format=torch.channels_last)
                packed = _window_masks(self.faz_net, windows, batch["box"][start:stop][chosen], heights[chosen],
                                       widths[chosen])
                masks = {start + int(chosen[k]): v for k, v in enumerate(packed)}
            thumbs = thumbnails(x, int(self.config.thumbnail_size)).cpu().numpy()
        return probabilities.cpu().numpy(), masks, thumbs

    def _items(self, batch: dict, stems: list[str], image_names: list[str], out: Path, results) -> list[dict]:
        probabilities, masks, thumbs = results
        items = []
        for position, index in enumerate(batch["index"].tolist()):
            error, unsuitable = batch["error"][position], batch["unsuitable"][position]
            stem = stems[index]
            skipped = bool(error or unsuitable)
            label = "" if skipped else GRADES[int(probabilities[position].argmax())]
            row = {"index": index, "image": image_names[index],
                   "status": "error" if error else ("unsuitable" if unsuitable else "ok"), "grade": label,
                   "error": error or unsuitable,
                   "field_of_view_mm": float(batch["fov"][position]), "fov_source": batch["fov_source"][position],
                   "faz_segmented": position in masks, "faz_forced": position in masks and label == GRADES[0],
                   **{c: (math.nan if skipped else float(p)) for c, p in zip(probability_columns(), probabilities[position])}}
            item = {"row": row, "field_of_view_mm": row["field_of_view_mm"], "thumbnail": thumbs[position]}
            if position in masks:
                item.update(packed_mask=masks[position],
                            shape=(int(batch["height"][position]), int(batch["width"][position])))
                if self.config.save_masks:
                    item["mask_path"] = str(out / "masks" / f"{stem}_faz.png")
            if self.config.save_thumbnails:
                item["thumbnail_path"] = str(out / "thumbnails" / f"{stem}.png")
            items.append(item)
        return items

    def run(self, paths: list[Path], root: Path, out: Path, progress=None, cancel=None,
            fields_of_view=None) -> list[dict]:
        """Rows for ``paths`` in input order; raises :class:`Cancelled` when cancelled.

        :param fields_of_view: the caller's field of view per path (default ``config.field_of_view_mm``).
        """
        reporter = as_reporter(progress, cancel)
        stems, image_names = _output_names(paths, root)
        stale = _StaleOutputs(out, stems)
        pool = _post_pool(int(self.config.post_workers))
        pending, rows, done = deque(), [], 0
        try:
            for batch in self._loader(paths, fields_of_view):
                reporter.check()
                items = self._items(batch, stems, image_names, out, self._infer(batch))
                if pool is None:
                    rows.extend(stale.finished(finish_chunk(items)))
                else:
                    pending.append(pool.submit(finish_chunk, items))
                    while len(pending) > 2 * int(self.config.post_workers):
                        rows.extend(stale.finished(pending.popleft().result()))
                done += len(items)
                reporter(done / len(paths), f"{done}/{len(paths)} images")
            while pending:
                rows.extend(stale.finished(pending.popleft().result()))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            stale.remove_rest()
        return sorted(rows, key=lambda r: r["index"])


def load_networks(config: CoipsConfig, device: torch.device):
    """The quality classifier and FAZ U-Net named in ``config`` (shipped preset/name or checkpoint)."""
    from .. import registry

    quality_net, _ = registry.load_model("coips", config.quality_model, str(device))
    faz_net, _ = registry.load_model("coips", config.faz_model, str(device))
    if getattr(quality_net, "kind", "") != "quality" or getattr(faz_net, "kind", "") != "faz":
        raise CheckpointError("quality_model must name a quality classifier and faz_model a FAZ U-Net "
                         f"(got {type(quality_net).__name__} and {type(faz_net).__name__}).")
    return quality_net, faz_net


def apply_pair_grades(rows: list[dict], config: CoipsConfig, faz_net, device, paths, fields_of_view, out: Path) -> None:
    """Deep slabs take their superficial partner's grade (:mod:`.pairs`); a deep image that becomes
    ungradable loses its FAZ (unless forced). A deep image left unsegmented (its own grade ungradable)
    whose partner is gradable is segmented first, so that the pair check sees both FAZ centres; it keeps
    the FAZ, with its mask and thumbnail, only when it does take the partner's grade."""
    from .pairs import propagate_pair_grades, slab_partners

    trials = {row["index"]: _pair_trial(row, config, faz_net, device, paths, fields_of_view, out)
              for row, partner in slab_partners(rows) if not row.get("faz_segmented") and partner["grade"] != GRADES[0]}
    for row in rows:
        if row["index"] in trials:
            row.update(faz_centre(unpack_mask(trials[row["index"]]["packed_mask"], trials[row["index"]]["shape"])))
    changed = {row["index"] for row in propagate_pair_grades(rows)}
    for row in rows:
        ungradable = row["grade"] == GRADES[0]
        if row["index"] in trials:
            row.update(finish_image(trials[row["index"]]) if row["index"] in changed else
                       {"faz_centre_x": math.nan, "faz_centre_y": math.nan})
            row["faz_segmented"] = row["index"] in changed
        elif row["index"] in changed and ungradable and row.get("faz_segmented") and not config.segment_ungradable:
            row.update({key: math.nan for key in FAZ_METRIC_UNITS}, faz_segmented=False, faz_plausible="",
                       faz_flags="", mask="")
            (out / "masks" / f"{output_stem(paths[row['index']], Path(config.input))}_faz.png").unlink(missing_ok=True)


def _pair_trial(row: dict, config: CoipsConfig, faz_net, device, paths, fields_of_view, out: Path) -> dict:
    """:func:`finish_image`'s item for a deep image segmented for the slab-pair check (nothing written yet)."""
    from .inference import segment_faz

    index = row["index"]
    image = read_image(paths[index], fields_of_view[index] if fields_of_view else config.field_of_view_mm)
    mask = segment_faz(faz_net, image.pixels, image.field_of_view_mm, device)
    stem = output_stem(paths[index], Path(config.input))
    thumbnail = thumbnails(torch.from_numpy(to_uint8(image.pixels))[None, None].float() / 255.0,
                           int(config.thumbnail_size))[0].numpy()
    return {"row": row, "field_of_view_mm": image.field_of_view_mm, "packed_mask": np.packbits(mask),
            "shape": mask.shape, "thumbnail": thumbnail,
            "mask_path": str(out / "masks" / f"{stem}_faz.png") if config.save_masks else None,
            "thumbnail_path": str(out / "thumbnails" / f"{stem}.png") if config.save_thumbnails else None}


def study_fields_of_view(config: CoipsConfig, paths: list[Path], root: Path) -> list[float | None]:
    """The caller's field of view per image (per-file override, else ``field_of_view_mm``), after
    checking from headers and names that every readable image has one.

    :raises InputError: naming every image whose field of view nobody gives (asks for ``--fov``).
    """
    table = config.per_file_fov()
    fields = [config.fov_for(path, root, table) for path in paths]
    missing = [path.relative_to(root).as_posix() if root.is_dir() else path.name
               for path, fov in zip(paths, fields)
               if fov is None and fov_from_path(path) is None and probe_fov(path)[1] == UNKNOWN_FOV]   # a name token: no header read
    if missing:
        raise InputError(missing_fov_message(missing))
    return fields


def run_batch(config: CoipsConfig, quality_net=None, faz_net=None, progress=None, cancel=None) -> BatchResult:
    """Grade, segment, measure and report every image under ``config.input`` into ``config.output``.

    :param config: the run's configuration (input and output are required).
    :param quality_net: a loaded classifier (default: ``config.quality_model``); likewise ``faz_net``.
    :raises InputError: no input, no images, no image that can be graded (nothing is written), or an output folder
        that cannot be written.
    :raises Cancelled: when ``cancel()`` turns true (finished rows are not written).

    The previous run's reports (:data:`REPORT_NAMES`) are removed before the first PNG is rewritten:
    an interrupted re-run leaves the PNGs it finished and no report that lists files it replaced or removed.
    """
    from ..device import resolve_device

    if not config.input or not config.output:
        raise InputError("Both an input folder and an output folder are required.")
    root, out = Path(config.input), Path(config.output)
    paths = list_images(root, config.recursive)
    written = [(out / folder).resolve() for folder in ("masks", "thumbnails")]   # an output folder inside the input
    own = [p for p in paths if any(folder in p.resolve().parents for folder in written)]
    if own:
        log.info("COIPS: %d images in %s/masks and /thumbnails (an earlier run's outputs) are skipped", len(own), out)
        paths = [p for p in paths if p not in own]
    if not paths:
        raise InputError(f"No PNG/JPEG/BMP/TIFF/DICOM images in {root}.")
    fields_of_view = study_fields_of_view(config, paths, root)
    from ..atomic import check_output_folder, output_folder

    check_output_folder(out)  # InputError when it is a file or not writable
    check_any_usable(paths, fields_of_view, _output_names(paths, root)[1])
    output_folder(out)
    device = resolve_device(config.device)
    if quality_net is None or faz_net is None:
        quality_net, faz_net = load_networks(config, device)
    start = time.perf_counter()
    remove_stale(out / name for name in REPORT_NAMES)
    rows = BatchRunner(config, quality_net, faz_net, device).run(paths, root, out, progress, cancel, fields_of_view)
    apply_pair_grades(rows, config, faz_net, device, paths, fields_of_view, out)
    csv_path = write_csv(rows, out / CSV_NAME)
    html_path = write_html(rows, out / HTML_NAME, title=f"COIPS report: {root.name}", csv_name=CSV_NAME)
    seconds = time.perf_counter() - start
    log.info("COIPS: %d images in %.1f s (%.1f images/s)", len(rows), seconds, len(rows) / seconds)
    return BatchResult(rows, csv_path, html_path, summarise(rows), seconds)


__all__ = ["BatchResult", "BatchRunner", "Cancelled", "FolderDataset", "load_networks", "run_batch"]

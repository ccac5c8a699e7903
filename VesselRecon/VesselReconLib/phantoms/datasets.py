"""Registry of synthetic-dataset writers and small I/O helpers shared by the phantom renderers.

Renderer modules (``phantoms/octa.py``, ``xray.py``, ``mra.py``, ``ct.py``) register writers::

    from .datasets import register_dataset

    @register_dataset("octa")
    def write_octa(out_dir: Path, count: int, seed: int, progress=None, **options) -> Path:
        ...
        return out_dir

and callers use ``write_dataset("octa", out_dir, count, seed, **options)``, which imports the
renderer module on demand.

On-disk geometry convention (:func:`save_nifti`): a ``[k, j, i]`` array is written with spacing
``(sx, sy, sz)``, the given origin and an identity direction matrix. SimpleITK/ITK/NIfTI interpret
physical coordinates as LPS, so phantom world coordinates are *stored as LPS*: a phantom whose
coordinates are meant as RAS must be flipped (x, y negated) by the caller before saving, whereas
re-reading the file with SimpleITK returns the same numbers that were written.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DATASET_WRITERS",
    "KNOWN_DATASET_MODULES",
    "register_dataset",
    "available_datasets",
    "get_dataset_writer",
    "write_dataset",
    "write_msd_dataset_json",
    "read_msd_training",
    "save_nifti",
    "load_nifti",
]

DatasetWriter = Callable[..., Path]

#: kind -> writer(out_dir: Path, count: int, seed: int, progress=None, **options) -> Path
DATASET_WRITERS: dict[str, DatasetWriter] = {}

#: kind -> module under ``VesselReconLib.phantoms`` that registers it when imported
KNOWN_DATASET_MODULES: dict[str, str] = {
    "octa": "octa",
    "octa-quality": "octa",
    "xray": "xray",
    "mra": "mra",
    "swi": "mra",
    "ct": "ct",
}


def register_dataset(kind: str) -> Callable[[DatasetWriter], DatasetWriter]:
    """Decorator registering ``writer(out_dir, count, seed, progress=None, **options) -> Path``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("dataset kind must be a non-empty string")

    def deco(fn: DatasetWriter) -> DatasetWriter:
        DATASET_WRITERS[kind] = fn
        return fn

    return deco


def available_datasets() -> list[str]:
    """Kinds that are registered or known (importable on demand)."""
    return sorted(set(DATASET_WRITERS) | set(KNOWN_DATASET_MODULES))


def get_dataset_writer(kind: str) -> DatasetWriter:
    """The writer for ``kind``, importing its renderer module if needed.

    Raises ``KeyError`` naming the available kinds when the kind is unknown or its module is
    missing / does not register it.
    """
    if kind in DATASET_WRITERS:
        return DATASET_WRITERS[kind]
    mod = KNOWN_DATASET_MODULES.get(kind)
    err: BaseException | None = None
    if mod is not None:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ImportError as e:  # missing renderer module or one of its dependencies
            err = e
    if kind in DATASET_WRITERS:
        return DATASET_WRITERS[kind]
    loaded = sorted(DATASET_WRITERS)
    msg = (
        f"unknown synthetic dataset kind {kind!r}; known kinds: {', '.join(available_datasets())}"
        f" (registered now: {', '.join(loaded) if loaded else 'none'})"
    )
    if err is not None:
        msg += f"; importing VesselReconLib.phantoms.{mod} failed: {err}"
    elif mod is not None:
        msg += f"; VesselReconLib.phantoms.{mod} did not register {kind!r}"
    raise KeyError(msg) from err


def write_dataset(kind: str, out_dir: str | Path, count: int, seed: int = 0,
                  progress: Callable[..., Any] | None = None, **options) -> Path:
    """Write ``count`` synthetic cases of ``kind`` under ``out_dir`` and return the dataset path."""
    writer = get_dataset_writer(kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Path(writer(out, int(count), int(seed), progress=progress, **options))


def write_msd_dataset_json(
    out_dir: str | Path,
    name: str,
    modality: Mapping[str | int, str] | Sequence[str] | str,
    labels: Mapping[str | int, str] | Sequence[str],
    training_pairs: Iterable[tuple[str | Path, str | Path] | Mapping[str, Any]],
    description: str = "",
    tensor_image_size: str = "3D",
    test: Iterable[str | Path] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Medical Segmentation Decathlon style ``dataset.json`` into ``out_dir``.

    ``modality``/``labels`` may be dicts (keys turned into strings) or sequences (enumerated from
    0). ``training_pairs`` are ``(image, label)`` paths (made relative to ``out_dir`` and written as
    ``./...``) or ready dicts ``{"image": ..., "label": ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def as_map(x) -> dict[str, str]:
        if isinstance(x, str):
            return {"0": x}
        if isinstance(x, Mapping):
            return {str(k): str(v) for k, v in x.items()}
        return {str(i): str(v) for i, v in enumerate(x)}

    def rel(p) -> str:
        p = Path(p)
        located = p if p.is_absolute() else Path.cwd() / p
        try:  # a path inside out_dir (absolute, or relative to the working folder)
            p = located.resolve().relative_to(out.resolve())
        except ValueError:  # otherwise it is taken as already relative to out_dir
            if p.is_absolute():
                return str(p)
        s = p.as_posix()
        return s if s.startswith(("./", "/")) else "./" + s

    training = []
    for pair in training_pairs:
        if isinstance(pair, Mapping):
            training.append({k: (rel(v) if isinstance(v, (str, Path)) else v) for k, v in pair.items()})
        else:
            img, lab = pair
            training.append({"image": rel(img), "label": rel(lab)})
    tests = [rel(t) for t in test]
    doc: dict[str, Any] = {
        "name": name,
        "description": description or f"VesselRecon synthetic {name} phantoms",
        "reference": "VesselRecon synthetic vascular phantoms (space colonisation + Murray's law)",
        "licence": "CC-BY-4.0",
        "release": "1.0",
        "tensorImageSize": tensor_image_size,
        "modality": as_map(modality),
        "labels": as_map(labels),
        "numTraining": len(training),
        "numTest": len(tests),
        "training": training,
        "test": tests,
    }
    if extra:
        doc.update(dict(extra))
    path = out / "dataset.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def read_msd_training(root: str | Path, kind: str) -> list[dict]:
    """The ``training`` entries of an MSD ``dataset.json``, their paths made absolute (relative ones are relative
    to ``root``). ``kind``: the ``vesselrecon phantoms`` kind named in the error for a missing or empty list."""
    from ..errors import InputError

    root = Path(root)
    meta = root / "dataset.json"
    if not meta.is_file():
        raise InputError(f"{root} has no dataset.json: write one with `vesselrecon phantoms {kind} --out {root}`.")
    entries = json.loads(meta.read_text(encoding="utf-8")).get("training", [])
    if not entries:
        raise InputError(f"{meta} lists no training cases.")
    return [{k: str((root / v).resolve()) if isinstance(v, str) else v for k, v in entry.items()} for entry in entries]


def save_nifti(array_kji: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
               path: str | Path, direction: Sequence[float] | None = None) -> Path:
    """Save a ``[k, j, i]`` (or ``[k, j, i, c]`` vector) array with SimpleITK.

    ``spacing`` is ``(sx, sy, sz)`` and ``origin`` ``(ox, oy, oz)`` as used by
    :mod:`~VesselReconLib.phantoms.geometry`; direction defaults to identity. The numbers are
    written as given, which ITK/NIfTI read as LPS (see the module docstring). The file type
    follows the suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).
    """
    import SimpleITK as sitk

    arr = np.asarray(array_kji)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim not in (3, 4):
        raise ValueError("array must be [k, j, i] or [k, j, i, c]")
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=arr.ndim == 4)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in np.asarray(direction, float).ravel()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return path


def load_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Read an image written by :func:`save_nifti`: ``(array_kji, spacing_xyz, origin_xyz)``."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), tuple(img.GetSpacing()), tuple(img.GetOrigin())

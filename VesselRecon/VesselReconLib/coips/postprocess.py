"""Per-image finishing work of a batch: FAZ post-processing, metrics, mask and overlay thumbnail files.

Runs in the main process or in worker processes (numpy, scipy, scikit-image and PIL only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import PARTIAL_PREFIX
from . import GRADES
from .faz import FAZ_METRIC_UNITS, bounding_crop, faz_flags, faz_metrics, select_faz

GRADE_COLORS = {"ungradable": (214, 39, 40), "gradable": (255, 170, 0), "outstanding": (44, 160, 44),
                "error": (120, 120, 120)}
FAZ_TINT = np.array([230, 30, 30], dtype=np.float32)


def overlay(gray: np.ndarray, mask: np.ndarray | None, grade: str, border: int = 3, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 overlay: the FAZ tinted red, framed in the grade's colour."""
    from PIL import Image

    rgb = np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=-1)
    if mask is not None and mask.any():
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(gray.shape[::-1], Image.NEAREST)) > 0
        rgb[small] = (1 - alpha) * rgb[small] + alpha * FAZ_TINT
    rgb = rgb.astype(np.uint8)
    color = GRADE_COLORS.get(grade, GRADE_COLORS["error"])
    rgb[:border], rgb[-border:], rgb[:, :border], rgb[:, -border:] = color, color, color, color
    return rgb


def save_png_atomically(image, path: str | Path) -> None:
    """Save a PNG under a unique hidden partial name in its folder (which the batch has made), then
    ``os.replace`` it onto ``path``: never a half-written file under the final name, no clash between
    processes writing the same name, and no scratch folder per file (``atomic.atomic_path`` makes one,
    which cost the batch a fifth of its time)."""
    import contextlib
    import os
    import tempfile

    folder, filename = os.path.split(os.fspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{os.path.splitext(filename)[0]}-", suffix=".png", dir=folder or ".")
    try:
        with os.fdopen(handle, "wb") as stream:   # the file mkstemp opened: one open per file
            image.save(stream, format="PNG", compress_level=1)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def unpack_mask(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def finish_image(item: dict) -> dict:
    """Turn one image's network outputs into its report row (writing its mask and thumbnail).

    ``item`` keys: ``row`` (grade, probabilities, ...), ``field_of_view_mm``, optional ``packed_mask`` +
    ``shape``, ``thumbnail`` (uint8), ``mask_path``, ``thumbnail_path`` (``None`` to skip writing).
    """
    from PIL import Image

    row = dict(item["row"])
    mask = None
    if item.get("packed_mask") is not None:
        mask = select_faz(unpack_mask(item["packed_mask"], item["shape"]), item["field_of_view_mm"])
        row.update(faz_metrics(bounding_crop(mask), item["field_of_view_mm"], mask.shape[1]))
        flags = faz_flags(row)
        row.update(faz_plausible=not flags, faz_flags="; ".join(flags), **faz_centre(mask))
        if item.get("mask_path"):
            save_png_atomically(Image.fromarray(mask.astype(np.uint8) * 255), item["mask_path"])
            row["mask"] = Path(item["mask_path"]).name
    else:
        row.update({key: float("nan") for key in FAZ_METRIC_UNITS}, faz_plausible="", faz_flags="",
                   faz_centre_x=float("nan"), faz_centre_y=float("nan"))
    if item.get("thumbnail_path") and item.get("thumbnail") is not None:
        save_png_atomically(Image.fromarray(overlay(item["thumbnail"], mask, row.get("grade", "error"))),
                            item["thumbnail_path"])
        row["thumbnail"] = Path(item["thumbnail_path"]).name
    return row


def faz_centre(mask: np.ndarray) -> dict[str, float]:
    """The FAZ centroid as fractions of the image width (x) and height (y); NaN for an empty mask."""
    any_rows, any_cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if any_rows.size == 0:
        return {"faz_centre_x": float("nan"), "faz_centre_y": float("nan")}
    rows, cols = np.nonzero(mask[any_rows[0]:any_rows[-1] + 1, any_cols[0]:any_cols[-1] + 1])
    return {"faz_centre_x": float((cols.mean() + any_cols[0]) / mask.shape[1]),
            "faz_centre_y": float((rows.mean() + any_rows[0]) / mask.shape[0])}


def finish_chunk(items: list[dict]) -> list[dict]:
    """:func:`finish_image` over a list (one task per batch keeps inter-process traffic low)."""
    return [finish_image(item) for item in items]


def probability_columns() -> list[str]:
    return [f"p_{g}" for g in GRADES]

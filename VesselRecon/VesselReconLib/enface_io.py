"""En face (2D) image reading for OCTA: PNG, JPEG, BMP, TIFF or DICOM -> normalised grayscale + field of view.

Every reader returns float32 pixels in ``[0, 1]`` (row, column order). The field of view (scan
width in mm, 3 or 6 for OCTA-25K) comes from the caller (``--fov``, a per-file override, the widget),
else from the file's metadata (DICOM PixelSpacing, TIFF resolution), else from a clear token in the
file or folder name (``3x3``, ``6 x 6 mm``, ``6mm``, OCTAGON's ``angio3superf``/``angio6prof``). It is
never assumed: with none of these, :func:`read_image` raises :class:`InputError` naming the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, check_image, squeeze_to_2d

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
PLAUSIBLE_FOV_MM = (1.0, 16.0)
UNKNOWN_FOV = "unknown"
_FOV_TOKEN = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:mm)?\s*[x×]\s*\1(?!\d|\.\d)", re.IGNORECASE)
_MM_TOKEN = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*mm(?![a-z0-9])", re.IGNORECASE)
# OCTAGON-style names: angio3superf, angio6prof, area3superf, angio6deep, angio_3_sup ...
_SLAB_TOKEN = re.compile(r"(?<![a-z])(?:angio|area|octa)[_-]?(\d+(?:\.\d+)?)[_-]?(?:mm)?[_-]?"
                         r"(?:superf|super|sup|prof|deep|scp|svp|dcp|dvp|icp)", re.IGNORECASE)


@dataclass
class OctaImage:
    """A decoded OCTA en face image."""

    pixels: np.ndarray
    field_of_view_mm: float | None
    fov_source: str
    path: str = ""

    @property
    def pixel_size_mm(self) -> float | None:
        """Pixel size in mm: the field of view spans the image width (square pixels); ``None`` if unknown."""
        return None if self.field_of_view_mm is None else self.field_of_view_mm / self.pixels.shape[1]


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix) in ``folder``, sorted; a single image path gives a one-item list."""
    folder = Path(folder)
    if folder.is_file():
        return [folder] if folder.suffix.lower() in IMAGE_SUFFIXES else []
    if not folder.is_dir():
        raise InputError(f"Input folder {folder} does not exist.")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def normalise(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Grayscale float32 in ``[0, 1]``: 8-bit data divided by 255, anything else min-max scaled.

    :raises InputError: not 2D, NaN, constant or too small.
    """
    array = squeeze_to_2d(np.asarray(array), name)
    checked = check_image(array, name, 2)
    if array.dtype == np.uint8:
        return checked / np.float32(255.0)
    low, high = float(checked.min()), float(checked.max())
    return ((checked - low) / (high - low)).astype(np.float32)


def fov_from_path(path: str | Path) -> float | None:
    """Field of view from a clear token in the file name, else in a folder name (innermost first):
    ``3x3``/``6 x 6 mm``, ``6mm`` or an OCTAGON-style ``angio3superf``/``angio6prof``. A name whose tokens
    give two different widths (``scan_3x3_6mm``) gives none: ``None``, never the first of them."""
    for part in reversed(Path(path).parts):
        widths = {float(match.group(1)) for pattern in (_FOV_TOKEN, _SLAB_TOKEN, _MM_TOKEN)
                  for match in pattern.finditer(part) if _plausible(float(match.group(1)))}
        if widths:
            return widths.pop() if len(widths) == 1 else None
    return None


def _plausible(fov_mm: float | None) -> bool:
    return fov_mm is not None and math.isfinite(fov_mm) and PLAUSIBLE_FOV_MM[0] <= fov_mm <= PLAUSIBLE_FOV_MM[1]


def check_fov(value, name: str = "field of view") -> float:
    """``value`` as a float scan width in mm, or :class:`InputError` when it is not a plausible OCTA field
    (not a number, not finite, outside ``PLAUSIBLE_FOV_MM``: 0, -3, NaN and 1e6 are refused)."""
    try:
        fov = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} = {value!r} is not a number; give the scan width in mm (e.g. 3 or 6).") from None
    if not _plausible(fov):
        low, high = PLAUSIBLE_FOV_MM
        raise InputError(f"{name} = {value!r} mm is not a plausible OCTA scan width; use a value between "
                         f"{low:g} and {high:g} mm (usually 3 or 6).")
    return fov


def fov_choice(value, name: str = "field of view (fieldOfViewMm)") -> float | None:
    """A panel/console field-of-view choice: ``None`` or "auto (from the image)" -> ``None``; "3 mm", "6" or
    6.0 -> the number, checked by :func:`check_fov`."""
    if value is None or (isinstance(value, str) and value.strip().lower().startswith("auto")):
        return None
    if isinstance(value, str):
        value = value.lower().replace("mm", "").strip()
    return check_fov(value, name)


def missing_fov_message(names) -> str:
    """The error text for images whose field of view is unknown (names listed)."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return (f"No field of view is known for {shown}: neither metadata (DICOM PixelSpacing, TIFF resolution) "
            "nor the file name (e.g. 3x3, 6mm, angio6superf; a name with two different widths gives none) "
            "gives the scan width. Give it with --fov 3 or "
            "--fov 6 (or a per-file 'fov_file' CSV / 'field_of_view_per_file' in the configuration), or "
            "choose 3 mm or 6 mm in the module's field-of-view selector.")


def resolve_fov(configured: float | None, metadata: float | None, path: str | Path,
                required: bool = True) -> tuple[float | None, str]:
    """The field of view to use and where it came from: ``config``, ``metadata`` or ``filename``.

    :param configured: the caller's value (``--fov``, a per-file override, the widget); range-checked.
    :param metadata: the file's own value; ignored when implausible (e.g. a 72-dpi TIFF default).
    :param required: when nothing gives it, raise (``True``) or return ``(None, "unknown")``.
    :raises InputError: an implausible configured value, or no value while ``required``.
    """
    if configured is not None:
        return check_fov(configured, f"field of view for {Path(path).name}"), "config"
    if _plausible(metadata):
        return float(metadata), "metadata"
    from_name = fov_from_path(path)
    if from_name is not None:
        return from_name, "filename"
    if required:
        raise InputError(missing_fov_message([Path(path).name]))
    return None, UNKNOWN_FOV


def _dicom_spacing(ds) -> tuple[float, float] | None:
    spacing = getattr(ds, "PixelSpacing", None)
    if spacing is None:
        for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            try:
                spacing = getattr(ds, group)[0].PixelMeasuresSequence[0].PixelSpacing
                break
            except (AttributeError, IndexError):
                continue
    return (float(spacing[0]), float(spacing[1])) if spacing is not None else None


def read_dicom(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Pixels and metadata field of view (PixelSpacing x Columns) of a single-frame DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:  # before decoding: its codec may be missing
            raise InputError(f"{Path(path).name} is a multi-frame DICOM; export the OCTA en face projection as one "
                             "frame.")
        pixels = ds.pixel_array
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{Path(path).name} is not a readable DICOM image ({exc.__class__.__name__}: {exc}).") from exc
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:
        pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() - pixels
    spacing = _dicom_spacing(ds)
    fov = spacing[1] * pixels.shape[1] if spacing else None
    return pixels, fov


def _tiff_fov(image, width: int) -> float | None:
    tags = getattr(image, "tag_v2", None)
    if not tags or 282 not in tags:
        return None
    mm_per_unit = {2: 25.4, 3: 10.0}.get(int(tags.get(296, 2)))
    resolution = float(tags[282])
    if not mm_per_unit or resolution <= 0:
        return None
    return width * mm_per_unit / resolution


def read_raster(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Pixels (grayscale) and TIFF-resolution field of view of a PNG/JPEG/BMP/TIFF file."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():   # PIL's own bomb warning: the size is refused in plain words below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if image.width * image.height > (Image.MAX_IMAGE_PIXELS or 1 << 62):  # a decompression bomb
                raise InputError(f"{Path(path).name} claims {image.width} x {image.height} pixels, far more than "
                                 "an en face OCTA image: it is corrupt or not an OCTA scan; skipped.")
            if getattr(image, "n_frames", 1) > 1:  # a multi-page TIFF or an animation: which page is the scan?
                raise InputError(f"{Path(path).name} holds {image.n_frames} frames (pages); export the OCTA en face "
                                 "projection as a single image.")
            fov = _tiff_fov(image, image.width) if image.format == "TIFF" else None
            if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
                image = image.convert("L")
            pixels = np.array(image)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{Path(path).name} is too large to decode safely ({exc}); skipped.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{Path(path).name} is not a readable image ({exc}).") from exc
    return pixels, fov


def read_image(path: str | Path, field_of_view_mm: float | None = None, *, required: bool = True) -> OctaImage:
    """Decode one OCTA image into normalised grayscale pixels and its field of view.

    :param path: PNG, JPEG, BMP, TIFF or DICOM file.
    :param field_of_view_mm: the caller's scan width in mm; overrides metadata and name when given.
    :param required: ``False`` returns an image with ``field_of_view_mm=None`` and source ``"unknown"``
        instead of raising when nothing gives the field of view.
    :raises InputError: unreadable, unsupported, multi-frame, constant or NaN images; an implausible
        ``field_of_view_mm``; no known field of view while ``required`` (the message names the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise InputError(f"{path.name} is a folder, not an image: pass the image files in it (e.g. {path}/*.png).")
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path.name}: unsupported format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}.")
    pixels, metadata_fov = read_dicom(path) if suffix in DICOM_SUFFIXES else read_raster(path)
    pixels = normalise(pixels, path.name)
    fov, source = resolve_fov(field_of_view_mm, metadata_fov, path, required)
    return OctaImage(pixels, fov, source, str(path))


def probe_fov(path: str | Path, field_of_view_mm: float | None = None) -> tuple[float | None, str]:
    """``(fov, source)`` of a file from its header and name only (no pixel decoding); ``(None, "unknown")``
    when nothing gives it. Used to refuse a batch up front, naming every image without a field of view."""
    path = Path(path)
    if field_of_view_mm is not None:
        return resolve_fov(field_of_view_mm, None, path)
    metadata = None
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            spacing = _dicom_spacing(ds)
            metadata = spacing[1] * int(ds.Columns) if spacing and getattr(ds, "Columns", None) else None
        else:
            from PIL import Image

            with Image.open(path) as image:
                metadata = _tiff_fov(image, image.width) if image.format == "TIFF" else None
    except Exception:  # unreadable files are reported by the decoder, with its own message
        return None, "unreadable"
    return resolve_fov(None, metadata, path, required=False)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Normalised pixels in ``[0, 1]`` rounded to uint8 (what :func:`to_work_image` resizes)."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def to_work_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """Normalised pixels, or their :func:`to_uint8` (a caller cutting several windows rounds once), as a
    ``size`` x ``size`` uint8 image (PIL bilinear with antialiasing).

    Both the batch loader and the single-image path feed the networks through this function.
    """
    from PIL import Image

    image = Image.fromarray(pixels if pixels.dtype == np.uint8 else to_uint8(pixels))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.array(image)

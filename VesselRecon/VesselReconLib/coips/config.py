"""The YAML configuration of a COIPS run (``vesselrecon coips --config cfg.yaml``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import InputError

FIELDS_OF_VIEW_MM = (3.0, 6.0)


def default_workers() -> int:
    """Decoding workers: ``min(2, cores)``."""
    return min(2, os.cpu_count() or 1)


@dataclass
class CoipsConfig:
    """Everything a batch run needs; every field may appear in the YAML file.

    :param input: folder (or single image) of PNG/JPEG/BMP/TIFF/DICOM OCTA images.
    :param output: folder for the CSV, the HTML report, thumbnails and FAZ masks.
    :param field_of_view_mm: scan width (3 or 6 mm) of every image; ``None`` reads it per image from
        metadata (DICOM PixelSpacing, TIFF resolution) or the name (``3x3``, ``6mm``, ``angio6superf``).
        It is never assumed: images with no known field make the run refuse, naming them.
    :param fov_file: CSV with columns ``image`` (file name or path relative to the input folder) and
        ``field_of_view_mm`` (or ``fov``/``fov_mm``/``field_mm``): per-file fields that override all else.
    :param field_of_view_per_file: the same as a mapping in the YAML file (wins over ``fov_file``).
    :param quality_model: quality classifier: shipped preset/name or checkpoint path.
    :param faz_model: FAZ U-Net: shipped preset/name or checkpoint path.
    :param segment_ungradable: also segment images graded ungradable (forced).
    :param num_workers: parallel decoding processes (default ``min(2, cores)``).
    :param post_workers: processes measuring FAZ and writing thumbnails (0: in the main process).
    """

    input: str | None = None
    output: str | None = None
    field_of_view_mm: float | None = None
    fov_file: str | None = None
    field_of_view_per_file: dict | None = None
    quality_model: str = "lite"
    faz_model: str = "faz-lite"
    device: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    post_workers: int = 0
    recursive: bool = False
    segment_ungradable: bool = False
    save_masks: bool = True
    save_thumbnails: bool = True
    thumbnail_size: int = 128

    def __post_init__(self) -> None:
        if self.num_workers is None:
            self.num_workers = default_workers()
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        from ..enface_io import check_fov

        if self.field_of_view_mm is not None:
            self.field_of_view_mm = check_fov(self.field_of_view_mm, "field_of_view_mm")
        if self.field_of_view_per_file is not None and not isinstance(self.field_of_view_per_file, dict):
            raise InputError("field_of_view_per_file must map image names to scan widths in mm.")
        for name, value in (self.field_of_view_per_file or {}).items():
            check_fov(value, f"field_of_view_per_file[{name!r}]")
        if self.fov_file is not None and not Path(self.fov_file).is_file():
            raise InputError(f"fov_file {self.fov_file} does not exist.")
        from ..errors import check_number

        check_number(self.batch_size, "batch_size", 1, 100_000, integer=True)
        check_number(self.num_workers, "num_workers", 0, 256, integer=True)
        check_number(self.post_workers, "post_workers", 0, 256, integer=True)
        check_number(self.thumbnail_size, "thumbnail_size", 16, 1024, integer=True)

    def to_dict(self) -> dict:
        return asdict(self)

    def per_file_fov(self) -> dict[str, float]:
        """Per-file fields of view (``fov_file`` CSV, then ``field_of_view_per_file``) keyed by name/path."""
        table = read_fov_file(self.fov_file) if self.fov_file else {}
        table.update({str(k): float(v) for k, v in (self.field_of_view_per_file or {}).items()})
        return table

    def fov_for(self, path: Path, root: Path, table: dict[str, float] | None = None) -> float | None:
        """The caller's field of view for one image: its per-file entry (relative path, name or stem),
        else ``field_of_view_mm``; ``None`` leaves it to the file's metadata and name."""
        table = self.per_file_fov() if table is None else table
        relative = path.relative_to(root).as_posix() if root.is_dir() and path.is_relative_to(root) else path.name
        for key in (relative, path.name, path.stem):
            if key in table:
                return table[key]
        return self.field_of_view_mm


FOV_FILE_COLUMNS = ("field_of_view_mm", "fov_mm", "fov", "field_mm")


def read_fov_file(path: str | Path) -> dict[str, float]:
    """``{image: field of view mm}`` from a CSV with an ``image`` column and a field-of-view column.

    :raises InputError: missing columns or an implausible value (the row is named).
    """
    import csv

    from ..enface_io import check_fov

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        column = next((c for c in FOV_FILE_COLUMNS if c in header), None)
        if "image" not in header or column is None:
            raise InputError(f"fov_file {path} needs an 'image' column and one of {', '.join(FOV_FILE_COLUMNS)}.")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    return {row["image"]: check_fov(row[column], f"{Path(path).name}: field of view of {row['image']}")
            for row in rows if row.get("image")}


def load_config(path: str | Path | None = None, **overrides) -> CoipsConfig:
    """Read a YAML configuration; keyword ``overrides`` that are not ``None`` win over the file.

    :raises InputError: missing file, invalid YAML or unknown keys.
    """
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"Configuration file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"Configuration file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"Configuration file {path} must hold a mapping of keys to values.")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(CoipsConfig)}
    if "default_field_of_view_mm" in data:
        raise InputError("default_field_of_view_mm is no longer supported: the field of view is never assumed. "
                         "Set field_of_view_mm for all images, or per image with fov_file / field_of_view_per_file.")
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"Unknown configuration keys: {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}.")
    return CoipsConfig(**data)


def write_config(config: CoipsConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (a template users can edit)."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return path

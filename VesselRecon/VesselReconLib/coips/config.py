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
    :param field_of_view_mm: scan width (3 or 6 mm); ``None`` reads it from metadata
        (DICOM PixelSpacing, TIFF resolution, a ``3x3``/``6x6`` token in the path).
    :param default_field_of_view_mm: used when neither the configuration nor the metadata tell.
    :param quality_model: quality classifier: shipped preset/name or checkpoint path.
    :param faz_model: FAZ U-Net: shipped preset/name or checkpoint path.
    :param segment_ungradable: also segment images graded ungradable (forced).
    :param num_workers: parallel decoding processes (default ``min(2, cores)``).
    :param post_workers: processes measuring FAZ and writing thumbnails (0: in the main process).
    """

    input: str | None = None
    output: str | None = None
    field_of_view_mm: float | None = None
    default_field_of_view_mm: float = 3.0
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
        for name in ("field_of_view_mm", "default_field_of_view_mm"):
            value = getattr(self, name)
            if value is not None and not 0.5 <= float(value) <= 30.0:
                raise InputError(f"{name} = {value} mm is implausible for an OCTA scan; use 3 or 6.")
        if int(self.batch_size) < 1:
            raise InputError("batch_size must be at least 1.")
        if int(self.num_workers) < 0 or int(self.post_workers) < 0:
            raise InputError("num_workers and post_workers must be >= 0.")
        if not 16 <= int(self.thumbnail_size) <= 1024:
            raise InputError("thumbnail_size must be between 16 and 1024 pixels.")

    def to_dict(self) -> dict:
        return asdict(self)


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
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"Configuration file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"Configuration file {path} must hold a mapping of keys to values.")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(CoipsConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"Unknown configuration keys: {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}.")
    return CoipsConfig(**data)


def write_config(config: CoipsConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (a template users can edit)."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path

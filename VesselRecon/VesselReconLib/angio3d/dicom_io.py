"""Multi-frame X-ray angiography (XA) DICOM: frames and C-arm geometry in, and a small writer for tests.

Pixel data are decoded with pydicom; compressed transfer syntaxes (e.g. JPEG Lossless, common in
XA) fall back to SimpleITK/GDCM when pydicom lacks a decoder plugin. The geometry comes from
``PositionerPrimaryAngle``, ``PositionerSecondaryAngle``, ``DistanceSourceToDetector``,
``DistanceSourceToPatient``, ``ImagerPixelSpacing`` (else ``PixelSpacing``, else
``IntensifierSize`` / max(Rows, Columns)), ``Rows`` and ``Columns``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .geometry import CArmGeometry

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
GEOMETRY_KEYWORDS = ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "DistanceSourceToDetector",
                     "DistanceSourceToPatient", "ImagerPixelSpacing", "Rows", "Columns")


def geometry_tags(dataset) -> dict:
    """The DICOM geometry keywords of a dataset (pixel spacing resolved as documented above)."""
    tags = {k: dataset.get(k) for k in GEOMETRY_KEYWORDS}
    spacing = tags["ImagerPixelSpacing"] or dataset.get("PixelSpacing")
    if not spacing and dataset.get("IntensifierSize"):
        size = float(dataset.IntensifierSize) / max(int(dataset.Rows), int(dataset.Columns))
        spacing = (size, size)
    try:
        tags["ImagerPixelSpacing"] = [float(s) for s in spacing] if spacing else None
        for key in ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "DistanceSourceToDetector",
                    "DistanceSourceToPatient"):
            tags[key] = None if tags[key] is None else float(tags[key])
    except (TypeError, ValueError) as exc:
        raise InputError(f"A C-arm geometry tag of the DICOM file is malformed ({exc}): fix the file or type the "
                         "acquisition geometry in by hand.") from None
    return tags


def geometry_from_dataset(dataset) -> CArmGeometry:
    """The view's :class:`CArmGeometry`; raises InputError naming any missing tag."""
    tags = geometry_tags(dataset)
    missing = [k for k, v in tags.items() if v is None]
    if missing:
        raise InputError(f"The DICOM file lacks {', '.join(missing)}: type the acquisition geometry in by hand.")
    return CArmGeometry.from_dicom(tags)


def _decode(path: Path, dataset) -> np.ndarray:
    try:
        return np.asarray(dataset.pixel_array)
    except Exception:  # missing decoder plugin: let SimpleITK (GDCM) decode
        import SimpleITK as sitk

        try:
            return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except RuntimeError:
            raise InputError(f"{path.name}: its pixel data cannot be decoded (a truncated or damaged file?): "
                             "export the angiogram again.") from None


def contrast_scores(frames: np.ndarray, block: int = 4) -> np.ndarray:
    """Per frame, how much contrast-filled vessel it shows: the mean of the darkest 2 % of the black
    top-hat (grey closing minus image) on a ``block``-times downsampled frame, relative to the frame's
    own intensity spread (so global brightness changes between frames do not count)."""
    from scipy import ndimage

    frames = np.asarray(frames, np.float32)
    frames = frames[None] if frames.ndim == 2 else frames
    k, rows, cols = frames.shape
    small = frames[:, :rows // block * block, :cols // block * block]
    small = small.reshape(k, rows // block, block, cols // block, block).mean((2, 4))
    scores = []
    for frame in small:
        tophat = ndimage.black_tophat(frame, size=(5, 5))
        spread = max(float(np.percentile(frame, 95) - np.percentile(frame, 5)), 1e-6)
        scores.append(float(np.sort(tophat.ravel())[-max(1, tophat.size // 50):].mean()) / spread)
    return np.array(scores)


def default_frame(frames: np.ndarray, representative: int | None = None) -> int:
    """The frame to use when none is given: the DICOM ``RepresentativeFrameNumber`` (1-based) when the
    file names one, else the frame of maximal vessel contrast (:func:`contrast_scores`); in a cine run
    frame 0 is usually before the contrast arrives."""
    count = 1 if np.asarray(frames).ndim == 2 else len(frames)
    if representative is not None and 1 <= int(representative) <= count:
        return int(representative) - 1
    return int(np.argmax(contrast_scores(frames))) if count > 1 else 0


def representative_frame(path: str | Path) -> int | None:
    """``RepresentativeFrameNumber`` (1-based) of a DICOM file, or None."""
    import pydicom

    try:
        value = pydicom.dcmread(str(path), stop_before_pixels=True).get("RepresentativeFrameNumber")
    except Exception:
        return None
    return int(value) if value not in (None, "") else None


def read_xa(path: str | Path) -> tuple[np.ndarray, CArmGeometry | None, dict]:
    """Frames (K, rows, columns) float32 (MONOCHROME1 inverted, so vessels are dark as in MONOCHROME2),
    the geometry (None when tags are missing) and the raw tags."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is a folder: give the DICOM file of one view." if path.is_dir()
                         else f"DICOM file {path} does not exist.")
    try:
        dataset = pydicom.dcmread(str(path))
    except Exception as exc:
        raise InputError(f"{path.name} is not a readable DICOM file ({exc}).") from exc
    frames = _decode(path, dataset).astype(np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim == 4:
        frames = frames[..., :3].mean(-1)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        frames = frames.max() + frames.min() - frames          # contrast-filled vessels stay dark
    tags = geometry_tags(dataset)
    try:
        geometry = geometry_from_dataset(dataset)
    except InputError:
        geometry = None
    return frames, geometry, tags


def write_xa(path: str | Path, frames: np.ndarray, geometry: CArmGeometry, photometric: str = "MONOCHROME2",
             representative: int | None = None) -> Path:
    """Write uncompressed multi-frame XA DICOM with the geometry tags (for tests and phantoms)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 2 else frames
    frames = np.clip(frames, 0, 65535).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = XA_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "XA", "Phantom^Angio3D", "ANGIO3D"
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PositionerPrimaryAngle = f"{geometry.primary_angle:.2f}"
    ds.PositionerSecondaryAngle = f"{geometry.secondary_angle:.2f}"
    ds.DistanceSourceToDetector = f"{geometry.sid:.1f}"
    ds.DistanceSourceToPatient = f"{geometry.sod:.1f}"
    ds.ImagerPixelSpacing = [f"{s:.4f}" for s in geometry.pixel_spacing]
    if representative is not None:
        ds.RepresentativeFrameNumber = int(representative)
    ds.PixelData = frames.tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return Path(path)

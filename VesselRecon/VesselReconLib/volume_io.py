"""Reading volume files (NRRD, NIfTI, MHA, or a DICOM series folder) for the command line and Logics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def read_image(path: str | Path, wanted: str = "a NIfTI, NRRD or MHA file or a folder holding one DICOM series"):
    """A SimpleITK image from a volume file or a folder holding one DICOM series.

    :param wanted: what the caller reads, named in the message of an unreadable file.
    :raises InputError: the path does not exist, holds no DICOM series or several, or cannot be read.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if len(series) != 1:
                raise InputError(f"{path} holds {len(series) or 'no'} DICOM series: give a folder with exactly one "
                                 "series (or a NIfTI, NRRD or MHA file).")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        if not path.is_file():
            raise InputError(f"Input {path} does not exist.")
        check_nifti(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = [line for line in str(exc).splitlines() if line.strip()][-1].replace("sitk::ERROR: ", "")
        raise InputError(f"Cannot read {path} ({reason[:200]}): give {wanted}.") from exc


def check_nifti(path: Path) -> None:
    """Refuse what ITK's NIfTI reader (``.nii``, ``.nii.gz``) hides: a truncated file, whose missing voxels it fills
    with zeros, and NaN or infinite float voxels, which it reads as 0. Other formats are left to their readers, which
    refuse truncation and keep NaN (refused later by the Logic).

    :raises InputError: fewer bytes than the header's voxel offset plus its voxels, or non-finite float voxels.
    """
    import gzip

    import SimpleITK as sitk

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()   # a header it cannot parse raises RuntimeError: the caller's message
    dims = [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, int(reader.GetMetaData("dim[0]")) + 1)]
    offset = int(float(reader.GetMetaData("vox_offset")))
    expected = offset + int(np.prod(dims)) * int(reader.GetMetaData("bitpix")) // 8
    kind = {"16": "f4", "64": "f8"}.get(reader.GetMetaData("datatype"))   # NIFTI_TYPE_FLOAT32 / FLOAT64
    size, non_finite = 0, 0
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as stream:
            header = stream.read(offset)
            order = "<" if int.from_bytes(header[:4], "little") in (348, 540) else ">"   # sizeof_hdr: NIfTI-1 / 2
            size = len(header)
            for chunk in iter(lambda: stream.read(1 << 23), b""):   # a multiple of 8 bytes: whole voxels
                size += len(chunk)
                if kind:
                    values = np.frombuffer(chunk[: len(chunk) // int(kind[1]) * int(kind[1])], order + kind)
                    non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
    except (OSError, EOFError) as exc:
        raise InputError(f"{path} is damaged ({exc}): the download or copy was probably cut off; "
                         "copy it again.") from None
    if size < expected:
        raise InputError(f"{path} is truncated: it holds {size:,} of the {expected:,} bytes its header describes "
                         "(the download or copy was probably cut off); copy it again.")
    if non_finite:
        raise InputError(f"{path} holds {non_finite:,} NaN or infinite voxels (read as 0 they would pass as real "
                         "values): fix or mask them, e.g. set them to the background value, before processing.")


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A volume file as a KJI array and its IJK-to-RAS matrix (LPS on disk converted to RAS)."""
    import SimpleITK as sitk

    from .mrml import LPS_TO_RAS, ijk_to_ras_matrix

    image = read_image(path)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = ijk_to_ras_matrix(image.GetSpacing(), image.GetOrigin(), direction)
    return sitk.GetArrayFromImage(image), LPS_TO_RAS @ lps

"""Reading volume files (NRRD, NIfTI, MHA, or a DICOM series folder) for the command line and Logics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def read_image(path: str | Path):
    """A SimpleITK image from a volume file or a folder holding one DICOM series.

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
        check_nifti_complete(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = [line for line in str(exc).splitlines() if line.strip()][-1].replace("sitk::ERROR: ", "")
        raise InputError(f"Cannot read {path} as a volume ({reason[:200]}): give a NIfTI, NRRD or MHA file or a "
                         "folder holding one DICOM series.") from exc


def check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file (``.nii`` or ``.nii.gz``), which ITK reads without a word, zero-filling the
    missing voxels; other formats are left to their readers, which refuse truncation themselves.

    :raises InputError: the file holds fewer bytes than its header's voxel offset plus its voxels.
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
    voxel_bytes = int(np.prod(dims)) * int(reader.GetMetaData("bitpix")) // 8
    expected = int(float(reader.GetMetaData("vox_offset"))) + voxel_bytes
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                size = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 22), b""))
        else:
            size = path.stat().st_size
    except (OSError, EOFError) as exc:
        raise InputError(f"{path} is damaged ({exc}): the download or copy was probably cut off; "
                         "copy it again.") from None
    if size < expected:
        raise InputError(f"{path} is truncated: it holds {size:,} of the {expected:,} bytes its header describes "
                         "(the download or copy was probably cut off); copy it again.")


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A volume file as a KJI array and its IJK-to-RAS matrix (LPS on disk converted to RAS)."""
    import SimpleITK as sitk

    from .mrml import LPS_TO_RAS, ijk_to_ras_matrix

    image = read_image(path)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = ijk_to_ras_matrix(image.GetSpacing(), image.GetOrigin(), direction)
    return sitk.GetArrayFromImage(image), LPS_TO_RAS @ lps

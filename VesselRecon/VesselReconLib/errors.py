"""Input validation with clear, actionable errors, raised before any scene change."""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """Bad user input; the message says what is wrong and what to do."""


class CheckpointError(InputError):
    """A model file is missing, corrupt, or does not match the expected architecture or preset."""


# Above this many voxels a volume is processed in windows rather than in one piece.
MAX_VOXELS = 2_000_000_000


def check_image(array: np.ndarray, name: str, ndim: int | tuple[int, ...],
                min_size: int = 8) -> np.ndarray:
    """Check an image array and return it as float32.

    :param array: image array (KJI order for volumes).
    :param name: what the user calls this input, used in messages.
    :param ndim: allowed dimensionalities (2 for images, 3 for volumes).
    :param min_size: smallest allowed extent along each axis.
    :raises InputError: wrong dimensionality, too small, NaN/Inf, empty or constant, or huge.
    """
    if array is None:
        raise InputError(f"{name} is missing: select an input first.")
    array = np.asarray(array)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if array.ndim not in allowed:
        raise InputError(f"{name} has {array.ndim} dimensions {array.shape}; expected {' or '.join(map(str, allowed))}D.")
    if array.size == 0 or min(array.shape) < 1:
        raise InputError(f"{name} is empty (shape {array.shape}).")
    if array.size > MAX_VOXELS:
        raise InputError(f"{name} has {array.size:,} voxels, more than {MAX_VOXELS:,}: crop it to a region of interest.")
    if np.issubdtype(array.dtype, np.complexfloating) or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name} has unsupported type {array.dtype}; use a real-valued scalar image.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or infinite values: fix or mask them before processing.")
    spatial = [s for s in array.shape if s > 1]
    if min(spatial or [0]) < min_size:
        raise InputError(f"{name} is too small ({array.shape}); each axis needs at least {min_size} pixels.")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name} is constant (all values {array.flat[0]}); it holds no vessels to find.")
    return array.astype(np.float32, copy=False)


def squeeze_to_2d(array: np.ndarray, name: str) -> np.ndarray:
    """Return a single-slice volume (1, J, I) or (J, I, 1-3 channels) as a 2D grayscale image."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].mean(axis=-1)
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2D image or a single-slice volume; got shape {array.shape}.")
    return array

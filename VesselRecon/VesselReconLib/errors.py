"""Input validation with clear, actionable errors, raised before any scene change."""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """Bad user input; the message says what is wrong and what to do."""


class CheckpointError(InputError):
    """A model file is missing, corrupt, or does not match the expected architecture or preset."""


class InferenceError(RuntimeError):
    """A network or a numerical step produced NaN or infinite values; the message names the step."""


def file_reason(name: str, message) -> str:
    """``name: message`` on one line, naming the file once."""
    text = " ".join(str(message).split())
    return text if text.startswith(name) else f"{name}: {text}"


def nothing_written(failures: list[str], total: int, what: str = "inputs") -> InputError:
    """The refusal of a batch in which no input succeeded, for every batch (COIPS's, the folder batch, OCTADepth's
    command line): nothing is written and the user is told so, with the reasons (the first five)."""
    if total == 1:
        return InputError(f"{failures[0]} (nothing was written)")
    shown = "; ".join(failures[:5]) + (f"; and {len(failures) - 5} more" if len(failures) > 5 else "")
    return InputError(f"All {total} {what} failed, so nothing was written: {shown}")


def check_finite_output(values, step: str, hint: str = "") -> None:
    """Raise :class:`InferenceError` naming ``step`` unless every value of ``values`` is finite.

    :param values: a numpy array or torch tensor (or a tuple/list/dict of them).
    :param step: what produced the values (for example ``"octadepth-lite network output"``).
    """
    for value in _leaves(values):
        if hasattr(value, "isfinite"):  # a tensor: its sum is finite unless a value is not (or it overflows:
            finite = value.sum().isfinite() or value.isfinite().all()  # then check exactly); 50x faster
        else:
            finite = np.isfinite(np.asarray(value)).all()
        if not bool(finite):
            raise InferenceError(f"{step} contains NaN or infinite values{': ' + hint if hint else ''}. "
                                 "The model file may be corrupt: reinstall it or load another checkpoint.")


def _leaves(values):
    """The floating-point arrays/tensors inside ``values`` (nested lists, tuples and dicts)."""
    if isinstance(values, dict):
        values = list(values.values())
    if isinstance(values, (list, tuple)):
        for value in values:
            yield from _leaves(value)
    elif hasattr(values, "is_floating_point"):  # torch tensor
        if values.is_floating_point():
            yield values
    elif isinstance(values, (np.ndarray, np.floating, float)) and np.issubdtype(np.asarray(values).dtype, np.floating):
        yield values


def check_number(value, name: str, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, hint: str = "", integer: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite number inside ``[low, high]``.

    :param low_open: exclude ``low`` itself; ``high_open`` likewise.
    :param hint: what to do instead (appended to the message).
    :raises InputError: not a number, NaN/inf, outside the range, or not an integer when ``integer``.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number; got {value!r}.{' ' + hint if hint else ''}") from None
    bad = not np.isfinite(number)
    bad |= low is not None and (number < low or (low_open and number == low))
    bad |= high is not None and (number > high or (high_open and number == high))
    if integer and not bad and number != int(number):
        raise InputError(f"{name} must be a whole number; got {value!r}.")
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        allowed = " and ".join(x for x in (lo, hi) if x) or "finite"
        raise InputError(f"{name} is {value!r}; it must be {allowed}.{' ' + hint if hint else ''}")
    return number


def check_geometry(ijk_to_ras, name: str) -> np.ndarray:
    """Check an IJK-to-RAS matrix: finite, invertible, with positive voxel spacing; return the spacing.

    :raises InputError: NaN/inf entries, zero or NaN spacing, or a degenerate (flat) orientation.
    """
    matrix = np.asarray(ijk_to_ras, float)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise InputError(f"{name} has a non-finite image geometry (IJK-to-RAS): fix its spacing, origin and "
                         "directions (Volumes module, Volume Information).")
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    if (spacing <= 1e-9).any():
        raise InputError(f"{name} has voxel spacing {tuple(round(float(s), 6) for s in spacing)} mm; every spacing "
                         "must be positive: set the true spacing (Volumes module, Volume Information).")
    if abs(np.linalg.det(matrix[:3, :3] / spacing[None, :])) < 1e-6:
        raise InputError(f"{name} has degenerate axis directions: fix its IJK-to-RAS directions.")
    return spacing


# Above this many voxels a volume is processed in windows rather than in one piece.
MAX_VOXELS = 2_000_000_000


def check_image(array: np.ndarray, name: str, ndim: int | tuple[int, ...],
                min_size: int = 8) -> np.ndarray:
    """Check an image array and return it as float32.

    :param array: image array (KJI order for volumes).
    :param name: what the user calls this input, used in messages.
    :param ndim: allowed dimensionalities (2 for images, 3 for volumes).
    :param min_size: smallest allowed extent along each axis.
    :raises InputError: wrong dimensionality, too small (a single leading slice of a 3D array is left to the
        module's own slice check), NaN/Inf, empty, constant, binary (a mask given as the scan), or huge.
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
    spatial = array.shape[1:] if array.ndim == 3 and array.shape[0] == 1 else array.shape  # 1 slice: the module says
    if min(spatial) < min_size:
        raise InputError(f"{name} is too small ({array.shape}); each axis needs at least {min_size} pixels.")
    low, high = array.min(), array.max()
    if float(high) == float(low):
        raise InputError(f"{name} is constant (all values {array.flat[0]}); it holds no vessels to find.")
    if not np.count_nonzero((array != low) & (array != high)):
        raise InputError(f"{name} holds only two values ({low:g} and {high:g}): it looks like a mask or label map, "
                         "not a scan. Select the image itself.")
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


def check_hounsfield(array: np.ndarray, name: str, hint: str) -> None:
    """Refuse a CT that is clearly not in Hounsfield units (8-bit, normalised, or raw unsigned values).

    :param hint: what to do instead (for example how to switch the HU window off).
    :raises InputError: 8-bit data, a value spread under 20 (normalised to 0..1), or non-negative
        values with a median above 500 (stored values without the -1024 rescale intercept).
    """
    array = np.asarray(array)
    low, median, high = (float(v) for v in np.percentile(array, [0.5, 50, 99.5]))
    reason = None
    if array.dtype in (np.uint8, np.bool_):
        reason = f"it is {array.dtype} data"
    elif float(array.min()) >= 0 and float(array.max()) <= 255 and np.array_equal(array, np.round(array)):
        reason = "its values are whole numbers from 0 to 255 (8-bit, probably windowed, data)"
    elif high - low < 20:
        reason = f"its values span only {low:.3g}..{high:.3g}"
    elif float(array.min()) >= 0 and median > 500:
        reason = f"its values are all positive with median {median:.0f} (raw stored values without the -1024 intercept?)"
    if reason:
        raise InputError(f"{name} does not look like CT in Hounsfield units: {reason}. {hint}")


def check_voxel_budget(shape, name: str, limit: int = 400_000_000, hint: str = "") -> None:
    """Refuse a computation whose grid of ``shape`` would exceed ``limit`` voxels (memory blow-up)."""
    count = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if count > limit:
        raise InputError(f"{name} would need a {' x '.join(map(str, shape))} grid ({count:,} voxels, more than "
                         f"{limit:,}).{' ' + hint if hint else ''}")

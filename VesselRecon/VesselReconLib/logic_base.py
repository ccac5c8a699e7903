"""Shared base of the five module Logic classes (Qt-free, usable from plain Python and Slicer)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import mrml, registry, runtime
from .errors import InputError, check_geometry, check_image, check_number
from .progress import Reporter, as_reporter

# Output parameter classes checked by :meth:`VesselReconLogic.check_outputs`.
VOLUME, LABELMAP, SEGMENTATION = "vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"
MODEL, TABLE, CURVE, MARKUPS = "vtkMRMLModelNode", "vtkMRMLTableNode", "vtkMRMLMarkupsCurveNode", "vtkMRMLMarkupsNode"


class VesselReconLogic:
    """Scene access, model loading and caching common to every module's Logic.

    Subclasses set ``method`` (the ``VesselReconLib`` subpackage name), ``creator`` (the Slicer
    module name, stored on the output nodes they create).
    """

    method: str = ""
    creator: str = "VesselRecon"

    def __init_subclass__(cls, **kwargs):
        """Make every subclass's ``load_sample`` and ``evaluate`` all-or-nothing (see :func:`_guarded`)."""
        super().__init_subclass__(**kwargs)
        for name in ("load_sample", "evaluate"):
            if name in cls.__dict__:
                setattr(cls, name, _guarded(cls.__dict__[name], name == "load_sample"))

    def __init__(self, scene=None):
        self._scene = scene
        self._models: dict[tuple[str, str], tuple[Any, dict]] = {}

    @property
    def scene(self):
        """The MRML scene outputs go into (Slicer's, or the headless runtime's)."""
        return self._scene if self._scene is not None else runtime.setup()

    @staticmethod
    def read_volume(node, missing: str) -> tuple[np.ndarray, np.ndarray]:
        """The validation gate every Logic passes its input volumes through before any compute.

        Checks, each refusal an :class:`InputError` that says what to do: the node is given, is in a scene
        and is a volume node; it has image data with voxel values; its geometry is finite with positive
        spacing; floating-point voxels are finite. Dimensionality and size are checked by
        :meth:`read_image` (or the module's own image check).

        :param missing: the message telling the user which input to select.
        :returns: the voxels (KJI, a copy) and the IJK-to-RAS matrix.
        """
        if node is None:
            raise InputError(missing)
        name = f"Volume '{node.GetName()}'" if hasattr(node, "GetName") else "The input"
        check_in_scene(node, name)
        try:
            array, ijk_to_ras = mrml.volume_to_array(node)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from exc
        check_geometry(ijk_to_ras, name)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InputError(f"{name} contains NaN or infinite values: fix or mask them before processing.")
        return array, ijk_to_ras

    @classmethod
    def read_image(cls, node, missing: str, ndim: int = 3, min_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_volume` plus a scalar, non-constant image of ``ndim`` dimensions, each axis at
        least ``min_size`` voxels (single-slice volumes count as 2D); returns float32 voxels."""
        array, ijk_to_ras = cls.read_volume(node, missing)
        name = f"Volume '{node.GetName()}'"
        if array.ndim == 4:
            raise InputError(f"{name} has {array.shape[-1]} components per voxel: select a scalar (grayscale) volume.")
        if ndim == 2:
            array = array[0] if array.shape[0] == 1 else array
        return check_image(array, name, ndim, min_size), ijk_to_ras

    @staticmethod
    def check_outputs(**nodes) -> None:
        """Check the class of every output node the caller passed, before any compute.

        Call as ``check_outputs(outputModel=(outputModel, MODEL), ...)``; ``None`` nodes are skipped.
        """
        for parameter, (node, class_names) in nodes.items():
            mrml.check_node_class(node, class_names, parameter)
            if node is not None:
                check_in_scene(node, f"{parameter} '{node.GetName()}'")

    @staticmethod
    def check_range(value, name: str, low=None, high=None, **kwargs) -> float:
        """:func:`~VesselReconLib.errors.check_number`: a finite number in ``[low, high]``."""
        return check_number(value, name, low, high, **kwargs)

    @contextlib.contextmanager
    def writing(self, progress=None, cancel=None, follow=None) -> Iterator[Reporter]:
        """Write outputs all-or-nothing, after the last cancel check.

        Cancel is checked once on entry; after that the reporter only reports (a Cancel pressed
        while writing is too late to undo nothing). If the block raises, the nodes it created are
        removed and the existing nodes it overwrote are restored (:func:`mrml.transaction`).

        :param progress: the call's reporter (or ``progress`` callable); ``cancel`` likewise.
        :param follow: the input volume the outputs lie on: once committed, every node the block wrote goes under
            its parent transform (:meth:`follow_transform`).
        :returns: the committed reporter, for progress messages while writing.
        """
        reporter = as_reporter(progress, cancel)
        reporter.commit()
        with mrml.transaction(self.scene) as record:
            yield reporter
        if follow is not None:
            self.follow_transform(follow, *record.written())

    @staticmethod
    def follow_transform(volume, *nodes) -> None:
        """Put the output ``nodes`` (on ``volume``'s IJK-to-RAS) under ``volume``'s parent transform, so they stay on
        the input as Slicer shows it; a node already there, and a node that cannot be transformed (a table, a display
        node), is not touched (without transforms nothing is)."""
        transform_id = volume.GetTransformNodeID()
        for node in nodes:
            if node is not None and node.IsA("vtkMRMLTransformableNode") and node.GetTransformNodeID() != transform_id:
                node.SetAndObserveTransformNodeID(transform_id)

    def shipped_models(self) -> list[str]:
        """This module's shipped models for the widget's model box, the default first
        (:func:`registry.model_choices`: a preset, or the registry name of an ablation or variant)."""
        return registry.model_choices(self.method)

    def model(self, model: str = "lite", device: str = "auto"):
        """The network for ``model`` (shipped preset/name or checkpoint path) on ``device``, cached.

        :returns: ``(network, metadata)``.
        """
        from .device import resolve_device  # torch: imported on first use, so samples need none

        torch_device = resolve_device(device)
        if not isinstance(model, str) or not model.strip():
            raise InputError(f"Model must be a shipped preset name (e.g. 'lite') or a checkpoint path; got {model!r}.")
        key = (model, str(torch_device))
        if key not in self._models:
            self._models[key] = registry.load_model(self.method, model, str(torch_device))
        return self._models[key]

    def clear_models(self) -> None:
        """Forget cached networks (frees GPU memory)."""
        self._models.clear()


def check_in_scene(node, name: str) -> None:
    """Refuse a node that belongs to no scene (deleted, yet still held by a script): outputs written next to it
    would land nowhere, and it is not what the scene shows."""
    if hasattr(node, "GetScene") and node.GetScene() is None:
        raise InputError(f"{name} is not in the scene (was it deleted?): select a node of the scene.")


def _guarded(method, arguments_are_input: bool):
    """Wrap a Logic method so that a failure leaves the scene as it was; with ``arguments_are_input``
    a ``ValueError``/``TypeError`` from bad arguments becomes an :class:`InputError`."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            with mrml.transaction(self.scene):
                return method(self, *args, **kwargs)
        except InputError:
            raise
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            if not arguments_are_input:
                raise
            raise InputError(f"{type(self).__name__}.{method.__name__}: invalid arguments {args or ''}"
                             f"{kwargs or ''} ({exc.__class__.__name__}: {exc}); see its docstring for the "
                             "allowed values.") from exc

    return wrapper

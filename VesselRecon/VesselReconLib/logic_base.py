"""Shared base of the five module Logic classes (Qt-free, usable from plain Python and Slicer)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import mrml, registry, runtime
from .device import resolve_device
from .errors import InputError


class VesselReconLogic:
    """Scene access, model loading and caching common to every module's Logic.

    Subclasses set ``method`` (the ``VesselReconLib`` subpackage name) and ``creator`` (the Slicer
    module name, stored on the output nodes they create).
    """

    method: str = ""
    creator: str = "VesselRecon"

    def __init__(self, scene=None):
        self._scene = scene
        self._models: dict[tuple[str, str], tuple[Any, dict]] = {}

    @property
    def scene(self):
        """The MRML scene outputs go into (Slicer's, or the headless runtime's)."""
        return self._scene if self._scene is not None else runtime.setup()

    @staticmethod
    def read_volume(node, missing: str) -> tuple[np.ndarray, np.ndarray]:
        """A volume node's voxels (KJI) and IJK-to-RAS; an :class:`InputError` when absent or empty.

        :param missing: the message telling the user which input to select.
        """
        if node is None:
            raise InputError(missing)
        try:
            return mrml.volume_to_array(node)
        except ValueError as exc:
            raise InputError(f"{node.GetName()}: {exc}") from exc

    def shipped_models(self) -> list[str]:
        """Presets of this module's shipped models (for the widget's model choice)."""
        return [e.preset for e in registry.load_registry() if e.module == self.method]

    def model(self, model: str = "lite", device: str = "auto"):
        """The network for ``model`` (shipped preset/name or checkpoint path) on ``device``, cached.

        :returns: ``(network, metadata)``.
        """
        torch_device = resolve_device(device)
        key = (model, str(torch_device))
        if key not in self._models:
            self._models[key] = registry.load_model(self.method, model, str(torch_device))
        return self._models[key]

    def clear_models(self) -> None:
        """Forget cached networks (frees GPU memory)."""
        self._models.clear()

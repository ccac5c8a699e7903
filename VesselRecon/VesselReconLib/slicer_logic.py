"""The Slicer-side Logic classes: the core Logic bound on first use, a stand-in while torch is missing.

Each module's ``<Module>Logic(ScriptedLoadableModuleLogic)`` creates instances of ``cls`` combined
with the Qt-free core Logic (``VesselReconLib.<method>.logic.<Module>Logic``). It is imported only
when the first Logic is created, and Slicer starts fast. The core Logic modules import torch only where
a network runs, so the samples are generated without torch (except VCNet's: its MRA phantom renders
with torch, and the sample then asks for the install). If a core cannot be imported, a
stand-in takes its place: it lists the shipped models from the registry JSON (no torch needed) and
its entry points explain what is missing. Nothing here imports ``qt``, ``ctk``, ``slicer`` or torch
at module level.
"""

from __future__ import annotations

import importlib
import logging

from .errors import InputError

log = logging.getLogger(__name__)

_BOUND: dict[type, type] = {}


def bind_core(cls: type, method: str, core_name: str) -> type:
    """The class to instantiate for the Slicer Logic ``cls``: ``cls`` combined with the core Logic.

    The core (``VesselReconLib.<method>.logic.<core_name>``) is imported on first use. If it cannot
    be imported, a stand-in whose entry points raise :class:`InputError` (naming the missing piece)
    takes its place, and the import is retried next time.
    """
    if cls.__dict__.get("_core_bound"):
        return cls
    if cls in _BOUND:
        return _BOUND[cls]
    try:
        core = getattr(importlib.import_module(f"{__package__}.{method}.logic"), core_name)
    except (ImportError, AttributeError) as exc:
        log.warning("VesselRecon %s: core logic unavailable (%s)", method, exc)
        return _combine(cls, missing_core(method, exc))
    _BOUND[cls] = _combine(cls, core)
    return _BOUND[cls]


def _combine(cls: type, core: type) -> type:
    from .folder_batch import FolderBatchMixin

    bases = (cls, core) if hasattr(core, "process_batch") else (cls, core, FolderBatchMixin)
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                 "_core_bound": True, "core_class": core}
    return type(cls.__name__, bases, namespace)


def missing_core(method: str, error: BaseException) -> type:
    """A stand-in core Logic whose entry points explain why the real one is unavailable."""
    message = (f"The {method} processing code could not be loaded: {error}. Install VesselRecon's Python "
               "dependencies when the module asks (or restart Slicer after installing them), then try again.")

    class MissingCoreLogic:
        core_missing = message
        method_name = method

        def shipped_models(self) -> list[str]:
            from . import registry

            return registry.model_choices(method)   # the registry JSON alone: no torch needed

        def _unavailable(self, *args, **kwargs):
            raise InputError(message)

        process = process_batch = evaluate = load_sample = _unavailable

    return MissingCoreLogic


def fresh_logic(logic):
    """A new Logic of the same module if ``logic`` has no core yet (after installing dependencies)."""
    if not hasattr(logic, "core_missing"):
        return logic
    return type(logic).__mro__[1]()


def core_available(method: str) -> bool:
    """True when the module's core Logic (and so torch) imports."""
    try:
        importlib.import_module(f"{__package__}.{method}.logic")
    except ImportError:
        return False
    return True

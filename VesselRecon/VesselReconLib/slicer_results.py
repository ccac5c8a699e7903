"""Glue between a module's parameter node and its Logic: keyword mapping, outputs, samples, tables.

Qt-free and importable anywhere (plain Python, the headless runtime, Slicer): nothing here imports
``qt``, ``ctk``, ``slicer`` or torch at module level.

Conventions (the module files define the mappings):

- ``PROCESS_ARGS`` maps parameter-node field names to ``Logic.process`` keyword names. The widget
  adds ``model`` (a shipped preset name or a checkpoint path), ``device`` and the plumbing keywords
  ``progress(fraction, message)``, ``cancel() -> bool`` and ``background(fn) -> fn()``; the Logic
  calls ``background`` for its heavy, MRML-free part so the GUI stays responsive. Keywords the
  Logic does not accept are dropped (with a warning for non-plumbing ones).
- ``EVALUATE_ARGS`` does the same for ``Logic.evaluate`` (keywords ``prediction``, ``reference``,
  ``table``).
- A Logic result (``process``/``evaluate``/``load_sample``) may be a node, a list of nodes, a dict
  or an object with attributes; nodes under keys / attribute names that match a field or keyword
  name are written back into the parameter node (for ``load_sample`` plain values too), and a
  table (node, list of row dicts, or dict of scalars) is shown in the module's table view.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import DEVICE_CHOICES  # noqa: F401 - the widgets read it from here
from .errors import InputError

log = logging.getLogger(__name__)

CHECKPOINT_ITEM = "Load checkpoint…"
PLUMBING = ("progress", "cancel", "background")


# ---------------------------------------------------------------- calling the Logic


def accepted_kwargs(fn: Callable, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def call_logic(fn: Callable, kwargs: Mapping[str, Any]):
    """Call ``fn`` with the keywords it accepts; warn about dropped method parameters."""
    accepted = accepted_kwargs(fn, kwargs)
    dropped = sorted(set(kwargs) - set(accepted) - set(PLUMBING))
    if dropped:
        log.warning("%s does not take %s; these settings are ignored.", getattr(fn, "__qualname__", fn),
                    ", ".join(dropped))
    return fn(**accepted)


def path_or_none(value) -> Path | None:
    """A parameter-node path, or ``None`` when it is empty (``Path("")`` reads back as ``.``)."""
    if value is None or str(value) in ("", "."):
        return None
    return Path(value)


def model_spec(param) -> str:
    """The ``model`` keyword: the chosen shipped preset, or the checkpoint file path."""
    if param.model != CHECKPOINT_ITEM:
        if not param.model:
            raise InputError("No model is selected: choose a shipped model or 'Load checkpoint…'.")
        return param.model
    path = path_or_none(param.checkpointPath)
    if path is None:
        raise InputError("Choose a checkpoint file (.safetensors or .pt), or pick a shipped model.")
    if not path.is_file():
        raise InputError(f"Checkpoint file {path} does not exist.")
    return str(path)


def logic_kwargs(param, mapping: Mapping[str, str], with_model: bool = True) -> dict[str, Any]:
    """Keyword arguments for a Logic call: mapped parameter-node fields, plus model and device."""
    kwargs = {keyword: _plain(getattr(param, field)) for field, keyword in mapping.items()}
    if with_model:
        kwargs["model"] = model_spec(param)
        kwargs["device"] = param.device
    return kwargs


def _plain(value):
    return path_or_none(value) if isinstance(value, Path) else value


# ---------------------------------------------------------------- results


def is_node(value) -> bool:
    """True for MRML nodes (anything with ``GetID`` and ``IsA``)."""
    return hasattr(value, "GetID") and hasattr(value, "IsA")


def _items(result) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return dict(result)
    if result is None or is_node(result) or isinstance(result, (list, tuple, str, int, float)):
        return {}
    return {k: v for k, v in vars(result).items() if not k.startswith("_")} if hasattr(result, "__dict__") else {}


def _field_for(key: str, mapping: Mapping[str, str], fields: set[str]) -> str | None:
    """The parameter-node field for a result key: a field name, a keyword, or ``output_<key>``."""
    if key in fields:
        return key
    for candidate in (key, f"output_{key}"):
        for field, keyword in mapping.items():
            if keyword == candidate:
                return field
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)
    return camel if camel in fields else None


def parameter_fields(param) -> set[str]:
    """Field names of a parameter-node wrapper (its annotations)."""
    names: set[str] = set()
    for cls in type(param).__mro__:
        names.update(getattr(cls, "__annotations__", {}))
    return names


def store_outputs(param, result, mapping: Mapping[str, str], values: bool = False) -> list[str]:
    """Write nodes found in ``result`` into matching parameter-node fields; return the field names.

    With ``values``, plain values (numbers, text, paths) are written too.
    """
    fields, stored = parameter_fields(param), []
    for key, value in _items(result).items():
        field = _field_for(key, mapping, fields)
        if field is None or not (is_node(value) or (values and isinstance(value, (int, float, str, Path)))):
            continue
        current = getattr(param, field, None)
        if isinstance(value, float) and type(current) is int and value.is_integer():
            value = int(value)  # e.g. a field of view of 3.0 mm for an integer choice
        try:
            setattr(param, field, value)
        except Exception as exc:  # wrong node class, a value out of range or not among the choices
            log.warning("Not setting %s from %r: %s", field, key, exc)
            continue
        stored.append(field)
    return stored


def apply_sample(param, sample, *mappings: Mapping[str, str], inputs: tuple[str, ...] = ()) -> list[str]:
    """Put a loaded sample into the parameter node; return the fields set.

    ``sample`` may be a dict / object keyed by field or keyword names (nodes and plain values, e.g.
    geometry), a single node (goes to the first of ``inputs``) or a list of nodes (to ``inputs`` in order).
    """
    if is_node(sample):
        sample = [sample]
    if isinstance(sample, (list, tuple)):
        sample = dict(zip(inputs, sample))
    merged = {k: v for m in mappings for k, v in m.items()}
    return store_outputs(param, sample, merged, values=True)


def result_table(result, name: str = "VesselRecon results", node=None):
    """A table node for ``result``: a table node in it, or rows / scalar metrics written into ``node``."""
    if result is None:
        return None
    if is_node(result):
        return result if result.IsA("vtkMRMLTableNode") else None
    items = _items(result)
    for value in items.values():
        if is_node(value) and value.IsA("vtkMRMLTableNode"):
            return value
    rows = _rows(result, items)
    if not rows:
        return None
    from . import mrml

    return mrml.rows_to_table(rows, name, node=node)


def _rows(result, items) -> list[dict]:
    """Rows from a list of dicts, an item ``rows``/``metrics``, or the scalar items themselves."""
    if isinstance(result, (list, tuple)):
        return [dict(r) for r in result if isinstance(r, Mapping)]
    for key in ("rows", "metrics"):
        value = items.get(key)
        if isinstance(value, (list, tuple)):
            return [dict(r) for r in value if isinstance(r, Mapping)]
        if isinstance(value, Mapping):
            items = dict(value)
            break
    return [{"metric": k, "value": v} for k, v in items.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]


def show_table(view, table_node) -> None:
    """Show ``table_node`` in a ``qMRMLTableView`` (hide the view when there is none)."""
    if view is None:
        return
    view.setMRMLTableNode(table_node)
    view.visible = table_node is not None

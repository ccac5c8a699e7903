"""The modules' self-tests (``<Module>Test`` in Slicer's harness and the *Reload and Test* button).

Without torch (the extension build machines have none) the test is skipped cleanly, as the peer
extensions do: it reports why and passes. With torch it generates the module's phantom sample,
processes it on the CPU and asserts real behaviour: non-empty outputs, output volumes on the
input's geometry, a phantom metric above the module's floor, and a missing input refused.
Nothing here imports ``qt``, ``ctk``, ``slicer`` or torch at module level.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from . import slicerdeps
from .errors import InputError
from .slicer_results import apply_sample, call_logic, is_node, logic_kwargs, store_outputs

log = logging.getLogger(__name__)


def torch_missing_reason() -> str | None:
    """Why the self-test cannot run here (torch, torchvision or another required package missing), or None."""
    missing = slicerdeps.missing_modules()
    return f"{', '.join(missing)} not installed" if missing else None


def node_is_empty(node) -> bool:
    """True for an output node without content (no voxels, segments, points or rows)."""
    if node.IsA("vtkMRMLVolumeNode"):
        image = node.GetImageData()
        return image is None or image.GetNumberOfPoints() == 0
    if node.IsA("vtkMRMLSegmentationNode"):
        return node.GetSegmentation().GetNumberOfSegments() == 0
    if node.IsA("vtkMRMLModelNode"):
        return node.GetPolyData() is None or node.GetPolyData().GetNumberOfPoints() == 0
    if node.IsA("vtkMRMLTableNode"):
        return node.GetNumberOfRows() == 0
    if node.IsA("vtkMRMLMarkupsNode"):
        return node.GetNumberOfControlPoints() == 0
    return False


def same_grid(a, b) -> bool:
    """True when two volume nodes share dimensions and IJK-to-RAS geometry (2D inputs may gain depth)."""
    from . import mrml

    _, ma = mrml.volume_to_array(a)
    _, mb = mrml.volume_to_array(b)
    da, db = a.GetImageData().GetDimensions(), b.GetImageData().GetDimensions()
    return da[:2] == db[:2] and np.allclose(ma[:3, :3], mb[:3, :3], atol=1e-4) and np.allclose(ma[:3, 3], mb[:3, 3],
                                                                                                atol=1e-3)


def metric_value(table, name: str) -> float | None:
    """A metric from an evaluation table: a row naming it with a ``value`` column (any case), or a column."""
    from . import mrml

    rows = [{str(k).lower(): v for k, v in row.items()}
            for row in (mrml.table_to_rows(table) if is_node(table) else list(table or []))]
    wanted = name.lower()
    for row in rows:  # a name column ("metric", "Measurement", ...) and a "value" column
        if "value" in row and any(isinstance(v, str) and v.lower() == wanted for v in row.values()):
            return _number(row["value"])
    return _number(rows[0].get(wanted)) if rows else None


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def self_test(case, logic, process_args: Mapping[str, str], evaluate_args: Mapping[str, str],
              inputs: tuple[str, ...], metric: tuple[str, float] | None = None,
              same_grid_outputs: tuple[str, ...] = ()) -> None:
    """Generated sample -> process on the CPU -> outputs checked -> evaluate -> bad input refused.

    :param metric: ``(name, floor)``: the evaluation metric the module must reach on its phantom.
    :param same_grid_outputs: output volume fields that must lie on the first input's voxel grid.
    """
    reason = torch_missing_reason()
    if reason or hasattr(logic, "core_missing"):
        message = f"Self-test skipped: {reason or logic.core_missing}"
        log.warning(message)
        case.delayDisplay(message)
        return
    param = logic.getParameterNode()
    case.delayDisplay("Generating the sample")
    apply_sample(param, logic.load_sample(), process_args, evaluate_args, inputs=inputs)
    for name in inputs:
        case.assertTrue(getattr(param, name), f"the sample did not provide {name}")
    param.device = "cpu"
    case.delayDisplay("Processing the sample on the CPU")
    kwargs = logic_kwargs(param, process_args)
    result = call_logic(logic.process, kwargs)
    stored = store_outputs(param, result, process_args)
    case.assertTrue(stored, "process() returned no output nodes")
    _check_outputs(case, param, stored, getattr(param, inputs[0]), same_grid_outputs)
    evaluation = [f for f, kw in evaluate_args.items() if kw in ("prediction", "reference")]
    if all(getattr(param, f) for f in evaluation):
        case.delayDisplay("Evaluating against the sample's reference")
        table = call_logic(logic.evaluate, logic_kwargs(param, evaluate_args, False))
        case.assertIsNotNone(table)
        if metric is not None:
            value = metric_value(table, metric[0])
            case.assertIsNotNone(value, f"the evaluation has no {metric[0]}")
            case.assertTrue(math.isfinite(value) and value >= metric[1],
                            f"{metric[0]} = {value} on the phantom, below the floor {metric[1]}")
    case.delayDisplay("Checking that a missing input is refused")
    keyword = process_args[inputs[0]]
    with case.assertRaises(InputError):
        call_logic(logic.process, {**kwargs, keyword: None})
    case.delayDisplay("Test passed")


def _check_outputs(case, param, stored: list[str], source, same_grid_outputs: tuple[str, ...]) -> None:
    for field in stored:
        case.assertFalse(node_is_empty(getattr(param, field)), f"output {field} is empty")
    if same_grid_outputs:
        checked = [field for field in same_grid_outputs if field in stored]
        case.assertTrue(checked, f"process() returned none of {same_grid_outputs}")
        for field in checked:
            case.assertTrue(same_grid(getattr(param, field), source), f"output {field} is not on the input's grid")

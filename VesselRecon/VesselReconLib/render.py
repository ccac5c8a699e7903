"""Offscreen PNG renders with VTK (EGL on headless machines) for demos, docs and reports."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


@dataclass
class Layer:
    """One mesh to draw: colour, opacity and an optional scalar colouring with an RGB colour ramp."""

    polydata: object
    color: tuple[float, float, float] = (0.85, 0.25, 0.25)
    opacity: float = 1.0
    scalars: str | None = None
    ramp: Sequence[Sequence[float]] = ((1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 0.8, 0.2), (0.0, 0.2, 1.0))
    scalar_range: tuple[float, float] | None = None


def _lookup_table(ramp, scalar_range):
    from vtkmodules.vtkCommonCore import vtkLookupTable

    table = vtkLookupTable()
    table.SetNumberOfTableValues(256)
    table.SetRange(*scalar_range)
    anchors = np.asarray(ramp, float)
    stops = np.linspace(0, 1, len(anchors))
    for index, t in enumerate(np.linspace(0, 1, 256)):
        table.SetTableValue(index, *[np.interp(t, stops, anchors[:, c]) for c in range(3)], 1.0)
    table.Build()
    return table


def _actor(layer: Layer):
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    mapper = vtkPolyDataMapper()
    mapper.SetInputData(layer.polydata)
    mapper.ScalarVisibilityOff()
    if layer.scalars and layer.polydata.GetPointData().GetArray(layer.scalars) is not None:
        values = layer.polydata.GetPointData().GetArray(layer.scalars).GetRange()
        scalar_range = layer.scalar_range or values
        mapper.SetLookupTable(_lookup_table(layer.ramp, scalar_range))
        mapper.SetScalarModeToUsePointFieldData()
        mapper.SelectColorArray(layer.scalars)
        mapper.SetScalarRange(*scalar_range)
        mapper.ScalarVisibilityOn()
    actor = vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*layer.color)
    actor.GetProperty().SetOpacity(layer.opacity)
    return actor


def _preload_triton() -> None:
    """Load Triton's LLVM before Mesa's (EGL/llvmpipe): in the other order, a later ``torch._dynamo``
    import (triggered by optimisers) crashes the process on machines without a GPU driver."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pass


def render_meshes(layers: Sequence[Layer], path: str | Path, size: tuple[int, int] = (800, 600),
                  view: tuple[float, float] = (30.0, 20.0), background=(1.0, 1.0, 1.0)) -> Path:
    """Render meshes to a PNG; ``view`` is (azimuth, elevation) in degrees from an anterior camera."""
    _preload_triton()
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL backend)
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkWindowToImageFilter

    renderer = vtkRenderer()
    renderer.SetBackground(*background)
    for layer in layers:
        renderer.AddActor(_actor(layer))
    window = vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetPosition(0, -1, 0)
    camera.SetFocalPoint(0, 0, 0)
    camera.SetViewUp(0, 0, 1)
    camera.Azimuth(view[0])
    camera.Elevation(view[1])
    renderer.ResetCamera()
    window.Render()
    grabber = vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.Update()
    return _write_png(grabber.GetOutput(), path, vtkPNGWriter)


def _write_png(image, path, writer_class) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = writer_class()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    return path


def save_image_png(array: np.ndarray, path: str | Path, colormap: Sequence[Sequence[float]] | None = None,
                   value_range: tuple[float, float] | None = None) -> Path:
    """Save a 2D array (grayscale, or through an RGB ramp) or an (H, W, 3) image as a PNG."""
    from PIL import Image

    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        low, high = value_range or (float(array.min()), float(array.max()))
        scaled = np.clip((array - low) / max(high - low, 1e-12), 0, 1)
        if colormap is not None:
            anchors = np.asarray(colormap, float)
            stops = np.linspace(0, 1, len(anchors))
            array = np.stack([np.interp(scaled, stops, anchors[:, c]) for c in range(3)], axis=-1)
        else:
            array = scaled
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)
    return path

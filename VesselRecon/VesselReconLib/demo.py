"""``vesselrecon demo``: every module on bundled phantoms, into one ``.mrb`` scene with PNG renders."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import METHODS, mrml, runtime

log = logging.getLogger(__name__)


@dataclass
class DemoContext:
    """What a method's ``demo`` hook gets: the scene, the output folder and the device."""

    scene: object
    out: Path
    device: str = "auto"
    renders: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def render_path(self, name: str) -> Path:
        path = self.out / f"{name}.png"
        self.renders.append(path)
        return path


def adapter_showcase(context: DemoContext) -> None:
    """A test volume and a tube model made through the MRML adapters, rendered to PNG."""
    from . import meshes, render

    t = np.linspace(0, 2 * np.pi, 80)
    centerline = np.c_[20 * np.cos(t), 20 * np.sin(t), 8 * t]
    radii = 1.5 + 0.5 * np.cos(3 * t)
    tube = meshes.tube(centerline, radii, point_arrays={"height": centerline[:, 2]})
    grid = np.stack(np.meshgrid(np.arange(32), np.arange(48), np.arange(48), indexing="ij"), -1)
    volume = np.exp(-((grid - [16, 24, 24]) ** 2).sum(-1) / 60.0).astype(np.float32)
    ijk_to_ras = mrml.ijk_to_ras_matrix((1.0, 1.0, 2.0), (-24, -24, 0))
    mrml.array_to_volume(volume, ijk_to_ras, "Demo test volume", scene=context.scene)
    mrml.polydata_to_model(tube, "Demo tube", scalars="height", scene=context.scene)
    mrml.polyline_to_curve(centerline, "Demo centerline", radii=radii, scene=context.scene)
    render.render_meshes([render.Layer(tube, scalars="height")], context.render_path("adapters_tube"))


def run_demo(out: str | Path, device: str = "auto", only: list[str] | None = None) -> DemoContext:
    """Run the demo and write ``demo.mrb``, PNG renders and ``summary.json`` into ``out``."""
    from .cli import method_cli

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    context = DemoContext(scene=runtime.new_scene(), out=out, device=device)
    adapter_showcase(context)
    for method in only or METHODS:
        module = method_cli(method)
        if module is None or not hasattr(module, "demo"):
            continue
        start = time.perf_counter()
        log.info("demo: %s", method)
        module.demo(context)
        context.summary[method] = {"seconds": round(time.perf_counter() - start, 2),
                                   **context.summary.get(method, {})}
    scene_path = mrml.save_scene(out / "demo.mrb", context.scene)
    (out / "summary.json").write_text(json.dumps(context.summary, indent=2, default=str), encoding="utf-8")
    log.info("Wrote %s and %d renders in %s", scene_path.name, len(context.renders), out)
    return context

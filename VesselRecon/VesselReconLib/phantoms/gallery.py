"""``vesselrecon phantoms gallery``: one picture per phantom kind next to its ground truth (README figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..render import Layer, render_meshes


def _gray(array: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    low = float(np.percentile(array, 1)) if low is None else low
    high = float(np.percentile(array, 99.5)) if high is None else high
    scaled = np.clip((array - low) / max(high - low, 1e-9), 0, 1)
    return np.repeat(scaled[..., None], 3, axis=-1)


def _overlay(gray: np.ndarray, mask: np.ndarray, color=(1.0, 0.2, 0.2), alpha: float = 0.6) -> np.ndarray:
    out = gray.copy()
    out[mask > 0] = (1 - alpha) * out[mask > 0] + alpha * np.asarray(color)
    return out


def _resize(rgb: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    width = max(1, round(image.width * height / image.height))
    return np.asarray(image.resize((width, height), Image.BILINEAR)) / 255.0


def _row(panels: list[np.ndarray], height: int = 256, gap: int = 4) -> np.ndarray:
    resized = [_resize(p, height) for p in panels]
    spacer = np.ones((height, gap, 3))
    parts = [part for panel in resized for part in (panel, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def _save(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path, optimize=True)
    return path


def _render_rgb(layers: list[Layer], path: Path) -> np.ndarray:
    from PIL import Image

    render_meshes(layers, path, size=(400, 400))
    return np.asarray(Image.open(path).convert("RGB")) / 255.0


def xray_panel(path: Path, seed: int = 0) -> Path:
    """Two views with their SOI masks, and the SOI's 3D lumen mesh."""
    from .xray import make_case, soi_mesh

    data = make_case(seed, size=512)
    panels = []
    for view, points in zip(data["views"], data["soi_points"]):
        gray = _gray(view["image"].astype(float))
        panels += [gray, _overlay(gray, view["soi"])]
    mesh = _render_rgb([Layer(soi_mesh(data["case"]), color=(0.85, 0.25, 0.25))], path.with_suffix(".mesh.png"))
    path.with_suffix(".mesh.png").unlink()
    return _save(_row(panels + [mesh]), path)


def mra_panel(path: Path, seed: int = 0) -> Path:
    """Axial MIP (MinIP for SWI) of each MRA kind next to the MIP of its vessel label."""
    from .mra import render_mra

    rows = []
    for kind in ("mra", "swi", "micro"):
        case = render_mra(kind, seed=seed, crop=(32, 192, 192))
        projection = case.image.min(axis=0) if kind == "swi" else case.image.max(axis=0)
        rows.append(_row([_gray(projection), _gray(case.label.max(axis=0).astype(float), 0, 1)]))
    return _save(np.concatenate([np.concatenate([r, np.ones((4, r.shape[1], 3))]) for r in rows])[:-4], path)


def ct_panel(path: Path, seed: int = 0) -> Path:
    """A thick CT slice, its label, the SDF zero level and the 3D vessel mesh."""
    from .ct import CTPhantomParams, make_ct_phantom

    case = make_ct_phantom(CTPhantomParams(seed=seed))
    k = int(np.argmax(case.labels.sum(axis=(1, 2))))
    gray = _gray(case.image[k].astype(float), -100, 300)
    sdf = case.sdf[k]
    contour = (np.abs(sdf) < 0.5 * case.spacing[0])
    mesh = _render_rgb([Layer(case.mesh(), color=(0.8, 0.2, 0.3))], path.with_suffix(".mesh.png"))
    path.with_suffix(".mesh.png").unlink()
    return _save(_row([gray, _overlay(gray, case.labels[k]), _overlay(gray, contour, (0.1, 0.9, 0.2), 0.9), mesh]),
                 path)


def octa_panel(path: Path, seed: int = 0) -> Path:
    """En face OCTA at three quality levels with depth, vessel and FAZ ground truth."""
    from .octa import save_octa_panel

    return save_octa_panel(path, seed=seed)


def xray_real_panel(path: Path, seed: int = 0) -> Path:
    """Real static-phantom angiograms (shared samples, when present) beside X-ray phantom views."""
    from .xray import real_vs_phantom_figure

    return real_vs_phantom_figure(path, seed=seed)


PANELS = {"octa": octa_panel, "xray": xray_panel, "xray_real": xray_real_panel, "mra": mra_panel, "ct": ct_panel}


def write_gallery(out_dir: str | Path, seed: int = 0, kinds=None) -> list[Path]:
    """Write ``phantom_<kind>.png`` for every phantom kind into ``out_dir``."""
    out_dir = Path(out_dir)
    return [PANELS[kind](out_dir / f"phantom_{kind}.png", seed) for kind in (kinds or PANELS)]

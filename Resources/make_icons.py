"""Draw the extension and module icons (128x128 PNG) with numpy and Pillow; nothing is downloaded.

Run from the repository root: ``python Resources/make_icons.py``. The icons are committed, so this
only needs re-running after a design change.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SIZE, SCALE = 128, 4  # drawn at 512 px, then downsampled for anti-aliasing
S = SIZE * SCALE
RED, HIGHLIGHT = (214, 48, 49), (255, 140, 130)
BACKGROUND = ((24, 34, 48), (44, 62, 84))


def canvas(corner: int = 96) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A rounded square with a vertical blue-grey gradient."""
    top, bottom = np.array(BACKGROUND[0], float), np.array(BACKGROUND[1], float)
    t = np.linspace(0.0, 1.0, S)[:, None, None]
    rgb = (top * (1 - t) + bottom * t).repeat(S, axis=1).astype(np.uint8)
    image = Image.fromarray(rgb).convert("RGBA")
    mask = Image.new("L", (S, S), 0)
    ImageDraw.Draw(mask).rounded_rectangle((8, 8, S - 8, S - 8), radius=corner, fill=255)
    image.putalpha(mask)
    return image, ImageDraw.Draw(image)


def tree_segments(start, angle, length, width, depth, seed=3):
    """Segments ``(p0, p1, width, level)`` of a branching vessel tree, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    segments = []

    def grow(p0, a, ln, w, level):
        bend = rng.uniform(-0.25, 0.25)
        mid = (p0[0] + ln / 2 * math.cos(a), p0[1] - ln / 2 * math.sin(a))
        p1 = (mid[0] + ln / 2 * math.cos(a + bend), mid[1] - ln / 2 * math.sin(a + bend))
        segments.extend([(p0, mid, w, level), (mid, p1, w * 0.9, level)])
        if level < depth:
            spread = rng.uniform(0.35, 0.6)
            grow(p1, a + bend + spread, ln * 0.72, w * 0.68, level + 1)
            grow(p1, a + bend - spread, ln * 0.72, w * 0.68, level + 1)

    grow(start, angle, length, width, 0)
    return segments


def draw_tree(draw, segments, color=RED, highlight=HIGHLIGHT, extra=0.0):
    """Draw round-capped segments, with a thin highlight along each for a tubular look."""
    for p0, p1, w, _ in segments:
        _line(draw, p0, p1, w + extra, color)
    if highlight is not None:
        for p0, p1, w, _ in segments:
            _line(draw, p0, p1, max(w * 0.3, 2), highlight)


def _line(draw, p0, p1, width, color):
    r = width / 2
    draw.line((p0, p1), fill=color, width=int(round(width)))
    for x, y in (p0, p1):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((SIZE, SIZE), Image.LANCZOS).save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)}")


def default_tree(seed=3, depth=4):
    return tree_segments((S * 0.5, S * 0.9), math.pi / 2, S * 0.26, S * 0.07, depth, seed)


def icon_extension() -> Image.Image:
    image, draw = canvas()
    draw_tree(draw, default_tree())
    return image


def icon_octadepth() -> Image.Image:
    """En-face vessels coloured by depth (yellow = superficial, blue = deep) plus a depth bar."""
    image, draw = canvas()
    colors = [(250, 220, 60), (245, 150, 50), (200, 70, 120), (110, 80, 200), (50, 120, 230)]
    segments = default_tree(seed=5)
    for p0, p1, w, level in segments:
        _line(draw, p0, p1, w, colors[min(level, len(colors) - 1)])
    for i, c in enumerate(colors):
        y0 = S * 0.14 + i * S * 0.12
        draw.rectangle((S * 0.86, y0, S * 0.92, y0 + S * 0.12), fill=c)
    return image


def icon_angio3d() -> Image.Image:
    """Two X-ray views (grey panels with dark vessel projections) and the 3D vessel in red."""
    image, draw = canvas()
    for x0, seed in ((S * 0.08, 7), (S * 0.56, 8)):
        draw.rounded_rectangle((x0, S * 0.08, x0 + S * 0.36, S * 0.44), radius=16, fill=(170, 176, 186))
        segs = tree_segments((x0 + S * 0.18, S * 0.42), math.pi / 2, S * 0.1, S * 0.025, 3, seed)
        draw_tree(draw, segs, color=(40, 44, 52), highlight=None)
    segments = tree_segments((S * 0.5, S * 0.94), math.pi / 2, S * 0.2, S * 0.065, 3, 9)
    draw_tree(draw, segments)
    return image


def icon_coips() -> Image.Image:
    """OCTA-like capillaries around the foveal avascular zone and a quality check badge."""
    image, draw = canvas()
    c = S * 0.46
    for k in range(9):
        a = 2 * math.pi * k / 9
        segs = tree_segments((c + S * 0.12 * math.cos(a), c - S * 0.12 * math.sin(a)), a, S * 0.11,
                             S * 0.022, 2, 20 + k)
        draw_tree(draw, segs, color=(235, 235, 240), highlight=None)
    draw.ellipse((c - S * 0.1, c - S * 0.1, c + S * 0.1, c + S * 0.1), outline=(80, 220, 140), width=14)
    bx, by, br = S * 0.78, S * 0.78, S * 0.14
    draw.ellipse((bx - br, by - br, bx + br, by + br), fill=(46, 170, 90))
    draw.line(((bx - br * 0.5, by), (bx - br * 0.1, by + br * 0.4), (bx + br * 0.55, by - br * 0.45)),
              fill=(255, 255, 255), width=22, joint="curve")
    return image


def icon_vcnet() -> Image.Image:
    """A noisy volume (wire cube with speckle) holding a clean segmented vessel."""
    image, draw = canvas()
    rng = np.random.default_rng(11)
    for x, y in rng.uniform(S * 0.12, S * 0.88, size=(260, 2)):
        g = int(rng.uniform(70, 150))
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(g, g, g + 20))
    o, d, e = S * 0.16, S * 0.14, S * 0.56
    front = [(o, o + d), (o + e, o + d), (o + e, o + d + e), (o, o + d + e)]
    back = [(x + d, y - d) for x, y in front]
    edge = (150, 200, 255)
    draw.polygon(front, outline=edge, width=8)
    draw.polygon(back, outline=edge, width=5)
    for p, q in zip(front, back):
        draw.line((p, q), fill=edge, width=5)
    segments = tree_segments((S * 0.45, S * 0.84), math.pi / 2 + 0.2, S * 0.2, S * 0.06, 3, 12)
    draw_tree(draw, segments)
    return image


def icon_vesselsdf() -> Image.Image:
    """A vessel tree with iso-distance bands around it (a signed distance field)."""
    image, draw = canvas()
    segments = default_tree(seed=4, depth=3)
    bands = [(46, 0, (60, 170, 220)), (36, 0, BACKGROUND[1]), (26, 0, (90, 200, 235)),
             (16, 0, BACKGROUND[1]), (8, 0, (140, 225, 245)), (3, 0, BACKGROUND[1])]
    for extra, _, color in bands:
        for p0, p1, w, _ in segments:
            _line(draw, p0, p1, w + extra, color)
    draw_tree(draw, segments)
    return image


ICONS = {
    "Resources/Icons/VesselRecon.png": icon_extension,
    "VesselRecon/OCTADepth/Resources/Icons/OCTADepth.png": icon_octadepth,
    "VesselRecon/Angio3D/Resources/Icons/Angio3D.png": icon_angio3d,
    "VesselRecon/COIPS/Resources/Icons/COIPS.png": icon_coips,
    "VesselRecon/VCNet/Resources/Icons/VCNet.png": icon_vcnet,
    "VesselRecon/VesselSDF/Resources/Icons/VesselSDF.png": icon_vesselsdf,
}


def main() -> None:
    for relative, make in ICONS.items():
        save(make(), ROOT / relative)


if __name__ == "__main__":
    main()

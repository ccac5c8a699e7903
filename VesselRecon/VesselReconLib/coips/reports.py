"""Batch reports: a CSV of every image and a self-contained HTML page (inline SVG charts)."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path

import numpy as np

from . import GRADES
from .faz import FAZ_METRIC_UNITS
from .postprocess import GRADE_COLORS, probability_columns

COLUMNS = (["image", "status", "grade", *probability_columns(), "slab", "grade_own", "grade_source",
            "field_of_view_mm", "fov_source", "faz_segmented", "faz_forced", "faz_plausible", "faz_flags",
            *FAZ_METRIC_UNITS, "faz_centre_x", "faz_centre_y", "thumbnail", "mask", "error"])
PROBABILITY_DIGITS = 3


def _area_stats(areas) -> dict:
    """n, mean, median, min, max and, from two areas on, the sample SD (one area has none, not 0)."""
    areas = np.asarray(areas, dtype=float)
    stats = {"n": int(areas.size)}
    if areas.size:
        stats.update(mean=float(areas.mean()), median=float(np.median(areas)), min=float(areas.min()),
                     max=float(areas.max()))
    if areas.size > 1:
        stats["sd"] = float(areas.std(ddof=1))
    return stats


def _plausible_areas(rows: list[dict]) -> list[float]:
    """FAZ areas of segmented images whose FAZ is not flagged as implausible."""
    return [r["faz_area_mm2"] for r in rows if r.get("faz_segmented") and r.get("faz_plausible") is not False
            and np.isfinite(r.get("faz_area_mm2", math.nan))]


def study_group(row: dict) -> str:
    """The summary group of an image: its slab and field, e.g. ``superficial 3 mm`` (``unknown slab 6 mm``)."""
    fov = row.get("field_of_view_mm", math.nan)
    field = f"{fov:g} mm" if isinstance(fov, float) and math.isfinite(fov) else "unknown field"
    return f"{row.get('slab') or 'unknown slab'} {field}"


def summarise(rows: list[dict]) -> dict:
    """Counts per grade, errors, unsuitable images, implausible FAZ, and FAZ area statistics (mm^2) over
    segmented images with a plausible FAZ, overall and per slab and field (:func:`study_group`)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    groups = {}
    for name in sorted({study_group(r) for r in ok}):
        members = [r for r in ok if study_group(r) == name]
        groups[name] = {"images": len(members), "grades": {g: sum(r.get("grade") == g for r in members) for g in GRADES},
                        "faz_area_mm2": _area_stats(_plausible_areas(members))}
    return {"images": len(rows), "errors": sum(r.get("status") == "error" for r in rows),
            "unsuitable": sum(r.get("status") == "unsuitable" for r in rows),
            "grades": {g: sum(r.get("grade") == g for r in rows) for g in GRADES},
            "implausible_faz": sum(r.get("faz_plausible") is False for r in rows),
            "faz_area_mm2": _area_stats(_plausible_areas(rows)), "groups": groups}


def _cell(value, column: str = "") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{PROBABILITY_DIGITS}f}" if column.startswith("p_") else f"{value:.6g}"
    return "" if value is None else str(value)


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """One line per image, columns :data:`COLUMNS`."""
    from ..atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(column), column) for column in COLUMNS])
    return path


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def svg_bar_chart(counts: dict[str, int], width: int = 360, height: int = 180) -> str:
    """Inline SVG bars of images per grade."""
    peak = max(max(counts.values(), default=0), 1)
    bar_w = (width - 40) / max(len(counts), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="class distribution">']
    for index, (name, count) in enumerate(counts.items()):
        h = (height - 50) * count / peak
        x = 20 + index * bar_w + 8
        color = "rgb({},{},{})".format(*GRADE_COLORS.get(name, (100, 100, 100)))
        parts.append(f'<rect x="{x:.1f}" y="{height - 30 - h:.1f}" width="{bar_w - 16:.1f}" height="{h:.1f}" '
                     f'fill="{color}"/>')
        parts.append(f'<text x="{x + (bar_w - 16) / 2:.1f}" y="{height - 34 - h:.1f}" font-size="12" '
                     f'text-anchor="middle">{count}</text>')
        parts.append(f'<text x="{x + (bar_w - 16) / 2:.1f}" y="{height - 12}" font-size="12" '
                     f'text-anchor="middle">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_counts(values, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros(0, int), np.zeros(1)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        low, high = low - 0.05, high + 0.05
    return np.histogram(values, bins=bins, range=(low, high))


def svg_histogram(values, bins: int = 20, width: int = 480, height: int = 220, label: str = "FAZ area (mm²)") -> str:
    """Inline SVG histogram with axis labels at both ends."""
    counts, edges = histogram_counts(values, bins)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(label)} histogram">']
    if counts.size == 0:
        parts.append(f'<text x="10" y="{height / 2}" font-size="13">No FAZ was segmented.</text></svg>')
        return "".join(parts)
    peak, plot_w, plot_h = max(int(counts.max()), 1), width - 60, height - 60
    bar_w = plot_w / counts.size
    for index, count in enumerate(counts):
        h = plot_h * count / peak
        parts.append(f'<rect x="{40 + index * bar_w:.1f}" y="{20 + plot_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#c0392b"><title>{edges[index]:.3f}-{edges[index + 1]:.3f}: '
                     f'{count}</title></rect>')
    axis_y = 20 + plot_h
    parts.append(f'<line x1="40" y1="{axis_y}" x2="{40 + plot_w}" y2="{axis_y}" stroke="black"/>')
    parts.append(f'<text x="40" y="{axis_y + 16}" font-size="11">{edges[0]:.3f}</text>')
    parts.append(f'<text x="{40 + plot_w}" y="{axis_y + 16}" font-size="11" text-anchor="end">{edges[-1]:.3f}</text>')
    parts.append(f'<text x="{40 + plot_w / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
                 f'{html.escape(label)}</text>')
    parts.append(f'<text x="4" y="26" font-size="11">{peak}</text></svg>')
    return "".join(parts)


def _image_cell(row: dict, folder: str) -> str:
    thumb = row.get("thumbnail")
    return f'<img src="{folder}/{html.escape(thumb)}" width="96" loading="lazy" alt="">' if thumb else ""


def _rows_table(rows: list[dict], folder: str, columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["thumbnail", *columns])
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(_cell(row.get(c), c))}</td>" for c in columns)
        body.append(f"<tr><td>{_image_cell(row, folder)}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
         ".charts{display:flex;gap:3em;flex-wrap:wrap}")


def _groups_table(groups: dict) -> str:
    """Grades and plausible FAZ areas per slab and field."""
    if not groups:
        return "<p>No graded images.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["group", "images", *GRADES, "FAZ n", "FAZ mean mm²",
                                                             "FAZ SD", "FAZ median"])
    body = []
    for name, group in groups.items():
        stats = group["faz_area_mm2"]
        area = [f"{stats[k]:.3f}" if k in stats else "" for k in ("mean", "sd", "median")]
        cells = [name, str(group["images"]), *(str(group["grades"][g]) for g in GRADES), str(stats["n"]), *area]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_html(rows: list[dict], path: str | Path, title: str = "COIPS report", thumbnail_folder: str = "thumbnails",
               csv_name: str = "coips_results.csv", max_rows: int = 2000) -> Path:
    """The batch report: class distribution, FAZ area histogram, rejected images, per-image table."""
    summary = summarise(rows)
    stats = summary["faz_area_mm2"]
    rejected = [r for r in rows if r.get("grade") == GRADES[0] or r.get("status") in ("error", "unsuitable")]
    implausible = [r for r in rows if r.get("faz_plausible") is False]
    spread = f"SD {stats['sd']:.3f}, " if "sd" in stats else ""
    area_text = (f"FAZ area over {stats['n']} segmented images with a plausible FAZ: mean {stats['mean']:.3f} mm², "
                 f"{spread}median {stats['median']:.3f}, range {stats['min']:.3f}-{stats['max']:.3f}."
                 if stats["n"] else "No plausible FAZ was segmented.")
    metric_columns = ["image", "grade", *probability_columns(), "slab", "grade_source", "field_of_view_mm",
                      "fov_source", "faz_flags", *FAZ_METRIC_UNITS]
    shown = rows[:max_rows]
    more = f"<p>First {max_rows} of {len(rows)} images; all are in the CSV.</p>" if len(rows) > max_rows else ""
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>
<p>{summary['images']} images, {summary['errors']} unreadable, {summary['unsuitable']} unsuitable (non-square or
wide-field), {summary['implausible_faz']} with an implausible FAZ (kept out of the summaries). Field of view
source per image: 'config' (--fov, per-file override or the module's choice), 'metadata' (DICOM/TIFF) or
'filename'. Results: <a href="{html.escape(csv_name)}">{html.escape(csv_name)}</a>.</p>
<div class="charts"><div><h2>Class distribution</h2>{svg_bar_chart(summary['grades'])}</div>
<div><h2>FAZ area</h2>{svg_histogram(_plausible_areas(rows))}<p>{area_text}</p></div></div>
<h2>By slab and field</h2>{_groups_table(summary['groups'])}
<h2>Implausible FAZ ({len(implausible)})</h2>
{_rows_table(implausible, thumbnail_folder, ['image', 'grade', 'faz_flags', *FAZ_METRIC_UNITS]) if implausible else '<p>None.</p>'}
<h2>Rejected images ({len(rejected)})</h2>
{_rows_table(rejected, thumbnail_folder, ['image', 'status', 'grade', *probability_columns(), 'error']) if rejected else '<p>None.</p>'}
<h2>All images</h2>{more}{_rows_table(shown, thumbnail_folder, metric_columns)}
</body></html>"""
    from ..atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path

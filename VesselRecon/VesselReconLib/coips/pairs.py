"""Superficial/deep slab pairs: the paper grades a deep image as its superficial partner.

A slab is recognised by a token in the file name that no letter touches (``superf``, ``superficial``, ``sup``,
``svp``, ``scp`` / ``prof``, ``profundo``, ``deep``, ``dcp``, ``dvp``; e.g. OCTAGON's ``angio3superf`` and
``angio3prof``). Two images pair when their relative paths are equal after removing that token. The deep
image then takes the superficial image's grade (its own is kept as ``grade_own``), unless the pair is
contradicted: when both FAZ were found and their centres lie more than ``MAX_CENTRE_SHIFT`` of the image
width apart, the two cannot be one acquisition and nothing is propagated (the row says why). The batch
(:func:`.batch.apply_pair_grades`) segments a deep image its own grade left without FAZ for this check.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath

SLAB_TOKENS = {"superficial": ("superficial", "superf", "svp", "scp", "sup"),
               "deep": ("profundo", "profund", "prof", "deep", "dcp", "dvp")}
_TOKEN = re.compile(r"(?<![a-z])(" + "|".join(t for group in SLAB_TOKENS.values() for t in group) + r")(?![a-z])",
                    re.IGNORECASE)
MAX_CENTRE_SHIFT = 0.05


def slab_of(name: str) -> str:
    """``"superficial"``, ``"deep"`` or ``""`` from the file name's slab token."""
    match = _TOKEN.search(PurePosixPath(name).stem)
    if not match:
        return ""
    token = match.group(1).lower()
    return next(slab for slab, tokens in SLAB_TOKENS.items() if token in tokens)


def pair_key(name: str) -> str:
    """The relative path with its slab token removed (lower case): equal for the two slabs of one scan."""
    path = PurePosixPath(name)
    return str(path.with_name(_TOKEN.sub("#", path.stem, count=1).lower()))


def _centre(row: dict):
    x, y = row.get("faz_centre_x", math.nan), row.get("faz_centre_y", math.nan)
    return None if not (isinstance(x, float) and math.isfinite(x) and math.isfinite(y)) else (x, y)


def slab_partners(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(deep row, its superficial partner) for every read deep image whose superficial slab was read too."""
    superficial = {pair_key(row["image"]): row for row in rows
                   if row.get("status") == "ok" and slab_of(row.get("image", "")) == "superficial"}
    return [(row, superficial[pair_key(row["image"])]) for row in rows
            if row.get("status") == "ok" and slab_of(row.get("image", "")) == "deep"
            and pair_key(row["image"]) in superficial]


def propagate_pair_grades(rows: list[dict]) -> list[dict]:
    """Give each deep row its superficial partner's grade (in place); returns the deep rows whose grade
    changed. Rows gain ``slab``, ``grade_own`` and ``grade_source``."""
    for row in rows:
        row["slab"] = slab_of(row.get("image", ""))
        row.setdefault("grade_own", row.get("grade", ""))
        row.setdefault("grade_source", "own" if row.get("status") == "ok" else "")
    changed = []
    for row, partner in slab_partners(rows):
        centres = _centre(row), _centre(partner)
        if None not in centres and math.dist(*centres) > MAX_CENTRE_SHIFT:
            row["grade_source"] = (f"own (pair {partner['image']} not propagated: FAZ centres "
                                   f"{math.dist(*centres):.3f} image widths apart, not one scan)")
            continue
        row["grade_source"] = f"paired superficial {partner['image']}"
        if partner["grade"] != row["grade"]:
            row["grade"] = partner["grade"]
            changed.append(row)
    return changed

"""Every text file the core reads or writes names its encoding (UTF-8): Python's default follows the
platform (cp1252 on Windows Slicer; the C locale after a library resets it), which mangles "mm²" or fails."""

from __future__ import annotations

import ast
from pathlib import Path


CORE = Path(__file__).resolve().parents[1] / "VesselRecon" / "VesselReconLib"


def _mode(call: ast.Call) -> str:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else "r"


def text_io_without_encoding(source: str) -> list[int]:
    """Line numbers of ``open(...)``, ``.read_text(...)`` and ``.write_text(...)`` calls in text mode
    that do not pass ``encoding``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        is_open = isinstance(func, ast.Name) and func.id == "open" and node.args and "b" not in _mode(node)
        is_path_text = (isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text")
                        and not (isinstance(func.value, ast.Name) and func.value.id == "atomic"))   # UTF-8 itself
        if is_open or is_path_text:
            lines.append(node.lineno)
    return lines


def test_the_checker_finds_text_io_without_an_encoding():
    source = ('open(p)\nopen(p, "rb")\nopen(p, "w", encoding="utf-8")\np.read_text()\n'
              'p.write_text(s, encoding="utf-8")\nPath(p).write_text(s)\natomic.write_text(p, s)\n')
    assert text_io_without_encoding(source) == [1, 4, 6]


def test_core_text_io_names_its_encoding():
    offenders = {str(path.relative_to(CORE)): lines for path in sorted(CORE.rglob("*.py"))
                 if (lines := text_io_without_encoding(path.read_text(encoding="utf-8")))}
    assert offenders == {}

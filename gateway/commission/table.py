"""Plain-text tables for terminals: left-aligned text, right-aligned numbers, a rule under the header."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", ""))
    except ValueError:
        return s.lower() in ("nan", "inf", "-inf")
    return True


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = "") -> str:
    """The table as text (lines joined by newlines, no trailing newline). Cells are ``str()``-ed; a column whose
    cells are all numbers is right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    ncol = len(headers)
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row[:ncol]):
            widths[i] = max(widths[i], len(c))
    numeric = [all(_is_number(r[i]) for r in cells if i < len(r) and r[i] != "") and any(
        i < len(r) and r[i] != "" for r in cells) for i in range(ncol)]

    def line(row: Sequence[str]) -> str:
        parts = []
        for i in range(ncol):
            c = row[i] if i < len(row) else ""
            parts.append(c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]))
        return (indent + "  ".join(parts)).rstrip()

    out = [line(list(headers)), indent + "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)

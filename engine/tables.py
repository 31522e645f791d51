"""Plain-text tables for the terminal, MLflow tags and text artifacts (one renderer for them all).

Why not a rich table: the same text goes into an MLflow tag and a ``.txt`` artifact and is read
back by people in a diff or a notebook's output, where box-drawing characters and colour codes get
in the way; columns padded with spaces survive every one of those.
"""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows[0]`` is the header; every column as wide as its widest cell, two spaces between
    columns, no trailing blanks."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

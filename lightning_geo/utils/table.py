"""Plain-text tables for summaries and benchmark results."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as an aligned text table with a header rule, e.g. for a terminal or a README.

    Numbers are right-aligned and everything else left-aligned; cells are converted with ``str``.

    Example:
        ```pycon
        >>> print(format_table(["arm", "loss"], [["baseline", 1.25], ["geo", 1.5]]))
        arm       loss
        --------  ----
        baseline  1.25
        geo        1.5
        ```
    """
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError(f"every row needs {len(headers)} cells, one per header {list(headers)}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(headers))]

    def render(row: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    lines = [render(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [render(row) for row in cells[1:]]
    return "\n".join(lines)

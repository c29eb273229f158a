"""Results as text: an aligned or markdown table of every row, or one metric in the paper's shape.

Each metric cell reads ``mean ± half width`` (the confidence interval of
:func:`ays.evaluate.confidence_interval`); a cell without an interval (one seed) is the mean alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .measure import metric_columns_in

__all__ = ["format_pivot", "format_table"]


def _markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])


def _fmt(value: Any, err: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    text = f"{value:.4g}"
    return text if err is None else f"{text} ± {err:.2g}"


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, markdown: bool = False,
    identity: Sequence[str] = ("schedule", "solver", "steps", "nfe"),
) -> str:
    """An aligned text table (or a markdown table) of results: ``mean ± half width`` per metric."""
    if not rows:
        return ""
    cols = list(columns) if columns is not None else metric_columns_in(rows)
    head = [*identity, *cols]
    body = [[str(r.get(c, "")) for c in identity] + [_fmt(r.get(c), r.get(c + "_err")) for c in cols] for r in rows]
    if markdown:
        return _markdown(head, body)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    numeric = [c in ("steps", "nfe", "seeds", "samples") for c in identity] + [True] * len(cols)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def format_pivot(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    row_keys: Sequence[str] = ("solver", "schedule"),
    col_key: str = "steps",
    markdown: bool = True,
    digits: int = 4,
) -> str:
    """One metric as a table in the shape of the paper's tables: a line per ``row_keys``
    value, a column per ``col_key`` value (e.g. steps 6 / 8 / 10), cells ``mean ± half width``."""
    cols = sorted({r[col_key] for r in rows if metric in r})
    keys: list[tuple[Any, ...]] = []
    cells: dict[tuple[Any, ...], dict[Any, str]] = {}
    for r in rows:
        if metric not in r:
            continue
        k = tuple(r.get(c, "") for c in row_keys)
        if k not in cells:
            keys.append(k)
            cells[k] = {}
        v, e = r[metric], r.get(metric + "_err")
        text = "-" if v is None else f"{v:.{digits}g}"
        cells[k][r[col_key]] = text if e is None or v is None else f"{text} ± {e:.2g}"
    head = [*row_keys, *(f"{col_key}={c}" for c in cols)]
    body = [[str(x) for x in k] + [cells[k].get(c, "") for c in cols] for k in keys]
    if markdown:
        return _markdown(head, body)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])

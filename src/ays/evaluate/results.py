"""Results files: the rows of :func:`ays.evaluate.evaluate` as CSV, JSON and plots, and back.

The CSV holds the scalar columns and the schedule as space-separated levels; the JSON
(:data:`FORMAT`) holds everything, per-seed values included, with the time, the ays
version and free-form ``meta`` (e.g. :func:`machine_description`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..validate import AysError
from .measure import metric_columns_in

__all__ = ["FORMAT", "machine_description", "read_results", "write_results"]

#: The ``"format"`` of the JSON file :func:`write_results` writes.
FORMAT = "ays-evaluation/1"


def _scalar_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in cols and k not in ("sigmas", "per_seed") and not isinstance(v, (list, dict)):
                cols.append(k)
    return cols


def write_results(
    rows: Sequence[Mapping[str, Any]],
    directory: str | os.PathLike[str],
    *,
    name: str = "results",
    plot: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``rows`` (from :func:`evaluate`) as ``<name>.csv`` and ``<name>.json`` in ``directory``,
    atomically, and one plot per metric (``<name>_<metric>.png``: metric vs steps, one line
    per schedule, one panel per solver, error bars = the confidence intervals).

    The CSV holds the scalar columns and the schedule as space-separated levels; the JSON
    ``{"format": "ays-evaluation/1", "created", "ays_version", "meta", "rows"}`` holds
    everything, per-seed values included. Returns ``{"csv", "json", <metric>: png path}``.
    """
    from .. import __version__
    from ..io import atomic_write_json, atomic_write_text

    if not rows:
        raise AysError("no result rows to write")
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AysError(f"cannot create output folder {str(folder)!r}: {e.strerror or e}") from None
    cols = _scalar_columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*cols, "sigmas"])
    for r in rows:
        cells = ["" if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in cols]
        writer.writerow([*cells, " ".join(repr(float(s)) for s in r.get("sigmas", []))])
    paths = {"csv": str(atomic_write_text(folder / f"{name}.csv", buf.getvalue()))}
    doc = {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ays_version": __version__,
        "meta": dict(meta or {}),
        "rows": [dict(r) for r in rows],
    }
    paths["json"] = str(atomic_write_json(folder / f"{name}.json", doc))
    if plot:
        from ..plot import plot_metric_vs_steps

        for metric in metric_columns_in(rows):
            clean = [{**r, metric + "_err": r.get(metric + "_err") or 0.0} for r in rows]
            paths[metric] = str(plot_metric_vs_steps(clean, folder / f"{name}_{metric}.png", metric))
    return paths


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read rows back from a file :func:`write_results` wrote (``.json`` or ``.csv``)."""
    from ..io import read_json

    p = Path(path)
    if p.suffix == ".csv":
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise AysError(f"cannot read results {str(p)!r}: {e.strerror or e}") from None
        out = []
        for rec in csv.DictReader(io.StringIO(text)):
            row = {k: _parse_cell(v) for k, v in rec.items() if k != "sigmas"}
            row["sigmas"] = [float(s) for s in (rec.get("sigmas") or "").split()]
            out.append(row)
        return out
    doc = read_json(p, what="results file")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise AysError(f"{str(p)!r} is not an {FORMAT} results file")
    return doc["rows"]


def machine_description() -> dict[str, Any]:
    """Where a benchmark ran: CPU model and count, torch threads, versions (for the notes)."""
    import platform

    from .. import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ays": __version__,
    }

"""Which evidence: how well each statistic the default can judge by ranks the schedules as the final measures do.

Usage::

    python benchmarks/beyond.py        # first: its cells hold every candidate's scores (the "audit")
    python benchmarks/evidence.py      # this table, from benchmarks/results/beyond/cells
    python benchmarks/evidence.py --cells DIR

Every cell of benchmarks/beyond.py (problem × solver × steps) records, for every candidate of the
default's portfolio (about 14 schedules), each statistic of :mod:`ays.optimize.ays.evidence` on the
default's own evidence set (the noise count its budget pays for, ~125 noises at 10 steps) and the
final measures of the schedule (sliced W2 to fresh data and off-mode mass, ``seeds × samples``
samples). Per cell and statistic: Kendall's τ-b between the statistic's ranking of the candidates and
each final measure's; the table gives its mean over cells with a 95 % t-interval, over all cells, the
problems the default was designed on (gmm-8x8) and the new ones, and the ODE and SDE solvers apart.
It also gives what the default would return with each statistic (its choice among the candidates,
gated on the fresh set against the best free schedule): the cells where that beats the best free
schedule of benchmarks/beyond.py on mean sliced W2, and where it is significantly worse (paired
over seeds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ays import solvers
from ays.io import atomic_write_text
from ays.optimize.ays import STATISTICS

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.evidence
    import _harness as H
    import beyond as B
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H
    from benchmarks import beyond as B


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b of two rankings (ties in either count as neither concordant nor discordant)."""
    n = len(a)
    conc = disc = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom > 0 else 0.0


def mean_ci(v: Sequence[float]) -> str:
    if not v:
        return ""
    m = sum(v) / len(v)
    if len(v) < 2:
        return f"{m:+.2f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return f"{m:+.2f} ± {1.96 * sd / math.sqrt(len(v)):.2f}"


def groups(cell: dict[str, Any]) -> list[str]:
    kind = "SDE" if solvers.info(cell["solver"]).stochastic else "ODE"
    return ["all", "design (gmm-8x8)" if cell["design"] else "new problems", f"{kind} solvers"]


def analyse(cells: list[dict[str, Any]]) -> dict[str, Any]:
    taus: dict[tuple[str, str, str], list[float]] = {}
    outcome: dict[str, dict[str, int]] = {st: {"wins": 0, "worse": 0} for st in STATISTICS}
    for c in cells:
        cands = c["audit"]["candidates"]
        final = {"sw2": [B.mean(r["sw2"]) for r in cands], "off_mode": [B.mean(r["off_mode"]) for r in cands]}
        for st in STATISTICS:
            ev = [r["choose"][st] for r in cands]
            for measure, values in final.items():
                for g in groups(c):
                    taus.setdefault((st, measure, g), []).append(kendall_tau(ev, values))
            got = cands[c["audit"]["by_statistic"][st]["result"]]
            ms = c["methods"]
            best = min(B.HEURISTICS, key=lambda h: B.mean(ms[h]["sw2"]))
            outcome[st]["wins"] += B.mean(got["sw2"]) < B.mean(ms[best]["sw2"])
            outcome[st]["worse"] += B.verdict(got["sw2"], ms[best]["sw2"]) == "worse"
    return {"taus": taus, "outcome": outcome, "cells": len(cells)}


def markdown(cells: list[dict[str, Any]], command: str) -> str:
    res = analyse(cells)
    names = list(dict.fromkeys(g for c in cells for g in groups(c)))
    counts = {g: sum(g in groups(c) for c in cells) for g in names}
    lines = [f"Command: `{command}` (from the cells of benchmarks/beyond.py)", ""]
    for measure, title in (("sw2", "sliced W2 to data"), ("off_mode", "off-mode mass")):
        lines.append(f"Kendall τ between each statistic's ranking of the candidates and their {title} "
                     "(mean over cells, 95 % interval; 1 = the same order):")
        lines.append("")
        body = [[st, *(mean_ci(res["taus"].get((st, measure, g), [])) for g in names)] for st in STATISTICS]
        lines += [H.markdown_table(["statistic", *(f"{g} ({counts[g]})" for g in names)], body), ""]
    lines.append("What the default returns with each statistic, against the best free schedule (mean sliced W2):")
    lines.append("")
    body = [[st, f"{o['wins']}/{res['cells']}", o["worse"]] for st, o in res["outcome"].items()]
    lines += [H.markdown_table(["statistic", "beats the best free", "significantly worse"], body), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    ap = H.arguments(__doc__.split("\n")[0], "evidence", cells=False)
    ap.add_argument("--cells", default=None, help="folder of benchmarks/beyond.py's cells")
    args = H.parse(ap, argv, {})
    folder = Path(args.cells) if args.cells else H.RESULTS / "beyond" / "cells"
    cells = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    cells = [c for c in cells if "audit" in c]
    if not cells:
        raise SystemExit(f"no cells with an audit in {folder}: run benchmarks/beyond.py first")
    text = markdown(cells, args.command)
    atomic_write_text(args.out / "evidence.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()

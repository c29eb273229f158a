"""How the default's choice rule does against simpler rules, read from beyond.py's audit (no model call).

Every cell of ``benchmarks/beyond.py`` keeps, for each portfolio candidate, its evidence on both
noise sets (``choose``, ``fresh``) and its final sliced W2 and off-mode mass per seed (the same
seeds and noise as every method's). So any rule that picks a candidate from the evidence can be
scored after the fact against the best free schedule of the cell, paired over seeds (95 % t):

- ``shipped``: what the default returned (the sharpest of the tied, then the two-sided gate);
- ``argmin_choose``: the lowest coupled sliced W2 on the choose set, no gate;
- ``gate_fresh``: that, kept if it beats the best free schedule (on the choose set) on the fresh set;
- ``argmin_pooled``: the lowest over both sets together (twice the candidates' calls: over budget);
- ``oracle``: the candidate with the lowest final sliced W2 (what the portfolio can reach).

Cells are split into the design problems (gmm-8x8, line-1d) and the held-out ones.

    python benchmarks/portfolio_rules.py --cells benchmarks/results/beyond/cells
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics as st

from scipy import stats

FREE = ["karras", "loglinear", "time_uniform", "kl_optimal", "beta"]
DESIGN = ("gmm-8x8", "line-1d")
S = "coupled"


def verdict(a: list[float], b: list[float]) -> str:
    """better / tied / worse: the paired difference a − b over seeds, 95 % t interval."""
    d = [x - y for x, y in zip(a, b)]
    half = stats.t.ppf(0.975, len(d) - 1) * st.stdev(d) / math.sqrt(len(d))
    return "better" if st.mean(d) + half < 0 else "worse" if st.mean(d) - half > 0 else "tied"


def argmin_choose(c: list[dict]) -> dict:
    return min(c, key=lambda x: x["choose"][S])


def gate_fresh(c: list[dict]) -> dict:
    pick, free = argmin_choose(c), min((x for x in c if x["free"]), key=lambda x: x["choose"][S])
    return pick if pick["fresh"][S] < free["fresh"][S] else free


RULES = {
    "argmin_choose": argmin_choose,
    "gate_fresh": gate_fresh,
    "argmin_pooled": lambda c: min(c, key=lambda x: x["choose"][S] + x["fresh"][S]),
    "oracle": lambda c: min(c, key=lambda x: st.mean(x["sw2"])),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="benchmarks/results/beyond/cells")
    args = ap.parse_args()
    cells = sorted(glob.glob(os.path.join(args.cells, "*.json")))
    print("| cells | rule | sliced W2 vs best free (better / tied / worse) | off-mode vs best free |")
    print("|---|---|---|---|")
    for label, keep in (("design", lambda f: f.startswith(DESIGN)), ("held out", lambda f: not f.startswith(DESIGN))):
        chosen = [f for f in cells if keep(os.path.basename(f))]
        tally: dict[str, list[tuple[str, str]]] = {"shipped": [], **{k: [] for k in RULES}}
        for path in chosen:
            doc = json.load(open(path))
            m, cands = doc["methods"], doc["audit"]["candidates"]
            best = min(FREE, key=lambda k: st.mean(m[k]["sw2"]))
            tally["shipped"].append((verdict(m["ays"]["sw2"], m[best]["sw2"]),
                                     verdict(m["ays"]["off_mode"], m[best]["off_mode"])))
            for name, rule in RULES.items():
                x = rule(cands)
                tally[name].append((verdict(x["sw2"], m[best]["sw2"]), verdict(x["off_mode"], m[best]["off_mode"])))
        for name, v in tally.items():
            counts = [" / ".join(str(sum(t[i] == w for t in v)) for w in ("better", "tied", "worse")) for i in (0, 1)]
            print(f"| {label} ({len(chosen)}) | {name} | {counts[0]} | {counts[1]} |")


if __name__ == "__main__":
    main()

"""The paper's Table 4 on the 2-D toy problems: NLL (and what NLL cannot see) at 6 / 8 / 10 steps.

Align Your Steps (arXiv 2404.14507), Table 4: GMM 8×8 with SDE-DPM-Solver++(2M), GMM 8×4
with DDIM (= Euler), GMM 6×6 with stochastic DDIM; NLL of the samples under the true
density for EDM (rho = 7), LogSNR (log-linear) and AYS schedules. Here also
time-uniform and kl_optimal, the sliced Wasserstein-2 distance to fresh data, the mode
coverage (dropped modes, total-variation error of the mass per mode) and the KLUB of
each schedule (one set of KLUB draws per case, shared by all schedules), with the exact
denoiser (``--model exact``) and the shipped trained networks (``--model trained``).

AYS: ``ays.optimize`` (the paper's coordinate method, Alg. 1, early stopping) for each
step count on the evaluated model, for stochastic DDIM's KLUB as in the paper (the
coordinate method's bound does not depend on the solver; the schedule is then used with
the case's solver).

    python benchmarks/table4.py                 # full run (a few minutes per case on 2 CPU cores)
    python benchmarks/table4.py --quick         # smoke test
    python benchmarks/table4.py --model exact   # only the exact denoiser

Results: ``benchmarks/results/table4/`` (CSV, JSON, plots, ``table4_<model>.md``), written by :mod:`_harness`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import ays
from ays import evaluate as ev
from ays.klub import KlubDraws, klub
from ays.plot import plot_schedules

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.table4
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

CASES = [("gmm-8x8", "dpmpp_2m_sde"), ("gmm-8x4", "euler"), ("gmm-6x6", "stochastic_ddim")]
STEPS = [6, 8, 10]
HEURISTICS = ["karras", "loglinear", "time_uniform", "kl_optimal"]
METRICS = ["nll", "sliced_w2", "modes"]
PIVOTS = [("nll", "NLL (lower is better, but rewards collapse)"), ("sliced_w2", "sliced W2"),
          ("dropped_modes", "dropped modes"), ("mode_tv", "TV of the mass per mode"), ("klub", "KLUB of the schedule")]
QUICK = {"seeds": 2, "samples": 1024, "opt_samples": 256, "klub_samples": 1024, "max_sweeps": 4}


def denoiser_for(model: str, problem: Any, name: str) -> tuple[Any, str] | None:
    if model == "exact":
        return problem.denoiser, "exact"
    from ays import train

    if name not in train.pretrained_names():
        return None
    return train.pretrained(name), "trained"


def run_case(name: str, solver: str, model: str, args: Any) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """One case of the table on one model: AYS per step count, then every schedule evaluated."""
    prob = ays.problems.get(name)
    got = denoiser_for(model, prob, name)
    if got is None:
        print(f"[skip] no trained weights for {name}", file=sys.stderr)
        return None
    den, label = got
    opts = {"max_sweeps": args.max_sweeps} if args.method == "coordinate" else {}
    ays_sched, cost = H.optimise_per_steps(den, prob, args.steps, solver="stochastic_ddim", seed=0,
                                           samples=args.opt_samples, method=args.method, **opts)
    schedules = {**{h: h for h in HEURISTICS}, "ays": ays_sched}
    rows = H.evaluate_table(den, prob, schedules, [solver], args.steps, seeds=args.seeds, samples=args.samples,
                            metrics=METRICS, model=label, klub_samples=args.klub_samples)
    for r in rows:
        r["case"] = f"{name}, {solver}"
        r["opt_seconds"], r["opt_calls"] = cost["seconds"], cost["calls"]
    stem = f"{name}_{label}"
    ev.write_results(rows, args.out, name=stem, plot=args.plots,
                     meta={"command": args.command, "machine": H.write_machine(args.out), "case": [name, solver],
                           "model": label, "optimizer_options": cost["options"]})
    if args.plots:  # the per-interval KLUB of the largest step count's schedules, on one shared set of draws
        n = max(args.steps)
        draws = KlubDraws.create(prob, args.klub_samples, torch.Generator().manual_seed(12345))
        last = {r["schedule"]: r["sigmas"] for r in rows if r["steps"] == n}
        klubs = {k: klub(den, prob, torch.tensor(v, dtype=torch.float64), draws=draws).per_interval
                 for k, v in last.items()}
        plot_schedules(last, args.out / f"{stem}_schedules.png", klub=klubs,
                       title=f"{name}, {solver}, {label} model: {n}-step schedules")
    return rows, cost


def main(argv: Sequence[str] | None = None) -> str:
    p = H.arguments(__doc__.splitlines()[0], "table4", threads=2)
    p.add_argument("--model", choices=["exact", "trained", "both"], default="both")
    p.add_argument("--opt-samples", type=int, default=1024, help="KLUB samples of the optimiser")
    p.add_argument("--max-sweeps", type=int, default=8, help="sweep budget of the coordinate method")
    p.add_argument("--klub-samples", type=int, default=8192)
    p.add_argument("--method", default="coordinate")
    p.add_argument("--steps", type=int, nargs="+", default=STEPS)
    p.add_argument("--cases", default=",".join(n for n, _ in CASES), help="comma-separated problems of CASES")
    args = H.parse(p, argv, QUICK)
    start = time.perf_counter()
    models = ["exact", "trained"] if args.model == "both" else [args.model]
    chosen = args.cases.split(",")
    rows: list[dict[str, Any]] = []
    options: dict[str, Any] = {}
    for name, solver in [c for c in CASES if c[0] in chosen]:
        for model in models:
            got = run_case(name, solver, model, args)
            if got is not None:
                rows += got[0]
                options.update(got[1]["options"] or {})
    notes = [f"Each cell: mean ± 95 % t-interval over {args.seeds} seeds of {args.samples} samples "
             f"(KLUB: ± 1.96 standard errors, {args.klub_samples} shared draws). AYS: `ays.optimize` "
             f"(method {args.method}, {args.opt_samples} samples, at most {args.max_sweeps} sweeps, seed 0) "
             "per step count on the evaluated model.", f"Optimiser options: `{json.dumps(options)}`."]
    sections = [(f"### {heading}", ev.format_pivot(rows, metric, row_keys=("case", "model", "schedule")))
                for metric, heading in PIVOTS]
    sections.append(("### Verdict: ays against the best heuristic on sliced W2 (better / tied / worse: 95 % "
                     "intervals apart or overlapping)",
                     H.verdict_table(rows, "sliced_w2", "ays", HEURISTICS, row_keys=("case", "model"))))
    steps = " / ".join(map(str, args.steps))
    text = H.write_markdown(Path(args.out), f"table4_{args.model}",
                            f"## Table 4 (toy problems): NLL, sliced W2, mode coverage and KLUB at {steps} steps",
                            notes, sections, args.command, time.perf_counter() - start)
    print(text)
    return text


if __name__ == "__main__":
    main()

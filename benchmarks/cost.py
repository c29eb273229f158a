"""What each schedule optimiser costs: denoiser calls and seconds, and what it buys.

Every method registered in ``ays.optimize.METHODS`` optimises a 10-step schedule for the
same model, data, solver and Monte Carlo budget (``--samples`` chains), with its default
options. Reported: denoiser rows spent (``OptimizeResult.calls``), wall-clock seconds,
the KLUB of the result on one shared set of fresh draws, and the quality of samples the
target solver draws with it (sliced W2 to fresh data, mean ± 95 % t-interval over seeds;
NLL and mode TV on mixtures). The heuristics (zero optimiser cost) are listed for scale.

    python benchmarks/cost.py                          # gmm-8x8, exact denoiser, dpmpp_2m_sde
    python benchmarks/cost.py --problem digits --solver euler
    python benchmarks/cost.py --quick

Results: ``benchmarks/results/cost/``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import ays
from ays import evaluate as ev
from ays.optimize import METHODS, optimize

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.cost
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

HEURISTICS = ["karras", "loglinear", "kl_optimal"]
QUICK = {"samples": 512, "eval_samples": 1024, "seeds": 2}


def optimise_all(den: Any, prob: Any, methods: list[str], args: Any) -> dict[str, dict[str, Any]]:
    """Every method once, with its default options: its schedule, denoiser rows and seconds (or its error)."""
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        t0 = time.perf_counter()
        try:
            res = optimize(den, prob, steps=args.steps, solver=args.solver, seed=0, samples=args.samples,
                           method=method, sigma_min=prob.sigma_min, sigma_max=prob.sigma_max)
        except Exception as e:  # a benchmark reports a failing method instead of dying
            print(f"[{method}] failed: {e}", file=sys.stderr)
            results[method] = {"error": str(e).splitlines()[0][:200]}
            continue
        seconds = time.perf_counter() - t0
        results[method] = {"sigmas": res.sigmas, "calls": int(res.calls), "seconds": seconds}
        print(f"[{method}] {seconds:.1f} s, {res.calls:,} rows", file=sys.stderr)
    return results


def main(argv: Sequence[str] | None = None) -> str:
    p = H.arguments(__doc__.splitlines()[0], "cost", threads=2, cells=False)  # its --samples: the optimisers'
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=4096, help="Monte Carlo chains of every optimiser (and KLUB)")
    p.add_argument("--eval-samples", type=int, default=4096, help="samples per schedule and seed")
    p.add_argument("--problem", default="gmm-8x8")
    p.add_argument("--model", choices=["exact", "trained"], default="exact")
    p.add_argument("--solver", default="dpmpp_2m_sde")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--methods", default=None, help="comma-separated subset of ays.optimize.METHODS")
    args = H.parse(p, argv, QUICK)
    prob = ays.problems.get(args.problem)
    if args.model == "exact":
        den: Any = prob.denoiser
    else:
        from ays import train

        den = train.pretrained(args.problem)
    methods = sorted(METHODS) if args.methods is None else args.methods.split(",")
    results = optimise_all(den, prob, methods, args)

    schedules = {f"method:{m}": r["sigmas"] for m, r in results.items() if "sigmas" in r}
    schedules.update({h: h for h in HEURISTICS})
    metrics = [m for m in ev.default_metrics(prob) if m in ("nll", "sliced_w2", "modes", "digits_fd")]
    rows = H.evaluate_table(den, prob, schedules, [args.solver], [args.steps], seeds=args.seeds,
                            samples=args.eval_samples, metrics=metrics, model=args.model, klub_samples=args.samples)
    for r in rows:
        info = results.get(r["schedule"].removeprefix("method:"), {}) if r["schedule"].startswith("method:") else {}
        r["opt_calls"] = info.get("calls", 0)
        r["opt_seconds"] = round(info.get("seconds", 0.0), 2)
    cols = ["opt_calls", "opt_seconds", "klub", *ev.metric_columns(metrics)]
    notes = [f"Every optimiser: {args.samples} Monte Carlo chains, seed 0, default options. Quality: "
             f"{args.seeds} seeds × {args.eval_samples} samples, mean ± 95 % t-interval; KLUB ± 1.96 s.e."]
    failed = {k: v["error"] for k, v in results.items() if "error" in v}
    name = f"cost_{args.problem}"
    meta = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "_name", "command")}}
    H.write_table(rows, args.out, name, title="", notes=[], pivots=[], cmd=args.command, meta=meta, plot=False)
    sections = [("", ev.format_table(rows, cols, markdown=True, identity=("schedule",)))]
    if failed:
        sections.append(("", "Failed: " + "; ".join(f"`{k}`: {v}" for k, v in failed.items())))
    text = H.write_markdown(args.out, name, f"## Optimiser cost: {args.problem} ({args.model} denoiser), "
                            f"{args.solver}, {args.steps} steps", notes, sections, args.command)
    print(text)
    return text


if __name__ == "__main__":
    main()

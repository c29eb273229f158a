"""What each method spends finding a schedule at its default settings: denoiser calls and seconds.

Every method registered in ``ays.optimize.METHODS`` runs ``ays.optimize`` once on the demo's
problem (``gmm-8x8``, exact denoiser, 10 steps, the default solver, seed 0) with nothing but
its defaults: no ``samples``, no ``budget``, no options. Recorded: the denoiser rows it spent
(``OptimizeResult.calls``, counted by the library's metered model call) and the wall-clock
seconds. The README's method table is this table; ``benchmarks/cost.py`` adds what the
schedules buy (at a common ``samples``), and ``ays demo`` shows both for the default method
beside gits, ld3 and oss.

    python benchmarks/calls.py              # gmm-8x8, 10 steps, every method
    python benchmarks/calls.py --quick      # 4 steps: a smoke run

Results: ``benchmarks/results/calls/`` (``calls.md``, ``calls.json``, ``calls.csv``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import ays
from ays.optimize import DEFAULT_METHOD, DEFAULT_SOLVER, METHODS, optimize

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.calls
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

QUICK = {"steps": 4}


def measure(den: Any, prob: Any, method: str, steps: int, solver: str) -> dict[str, Any]:
    """One ``ays.optimize`` run of ``method`` at its defaults: its row (or the first line of its error)."""
    start = time.perf_counter()
    try:
        res = optimize(den, prob, steps=steps, solver=solver, seed=0, method=method,
                       sigma_min=prob.sigma_min, sigma_max=prob.sigma_max)
    except Exception as e:  # a benchmark reports a failing method instead of dying
        print(f"[{method}] failed: {e}", file=sys.stderr)
        return {"method": method, "error": str(e).splitlines()[0][:200]}
    seconds = time.perf_counter() - start
    print(f"[{method}] {seconds:.1f} s, {res.calls:,} denoiser calls", file=sys.stderr)
    return {"method": method, "default": method == DEFAULT_METHOD, "calls": int(res.calls),
            "seconds": round(seconds, 2), "sigmas": [float(s) for s in res.sigmas.tolist()]}


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table: a line per method that ran, calls with thousands separators."""
    body = [[f"`{r['method']}`" + (" (default)" if r["default"] else ""), f"{r['calls']:,}", f"{r['seconds']:.1f}"]
            for r in rows if "error" not in r]
    return H.markdown_table(["method", "denoiser calls", "seconds"], body)


def main(argv: Sequence[str] | None = None) -> str:
    p = H.arguments(__doc__.splitlines()[0], "calls", cells=False)
    p.add_argument("--problem", default="gmm-8x8")
    p.add_argument("--solver", default=DEFAULT_SOLVER)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--methods", default=None, help="comma-separated subset of ays.optimize.METHODS")
    args = H.parse(p, argv, QUICK)
    prob = ays.problems.get(args.problem)
    # The default method first, then the others by name.
    methods = ([DEFAULT_METHOD, *sorted(set(METHODS) - {DEFAULT_METHOD})] if args.methods is None
               else args.methods.split(","))
    start = time.perf_counter()
    rows = [measure(prob.denoiser, prob, m, args.steps, args.solver) for m in methods]
    seconds = time.perf_counter() - start
    meta = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "_name", "command")}}
    H.write_rows(rows, args.out, "calls", cmd=args.command, meta=meta)
    notes = ["Each method once, seed 0, its default settings (no samples, budget or options given); "
             "calls: denoiser rows spent, as `OptimizeResult.calls` counts them."]
    failed = [r for r in rows if "error" in r]
    sections = [("", table(rows))]
    if failed:
        sections.append(("", "Failed: " + "; ".join(f"`{r['method']}`: {r['error']}" for r in failed)))
    text = H.write_markdown(args.out, "calls", f"## Denoiser calls at the default settings: {args.problem} "
                            f"(exact denoiser), {args.solver}, {args.steps} steps", notes, sections, args.command,
                            seconds)
    print(text)
    return text


if __name__ == "__main__":
    main()

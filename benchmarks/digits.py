"""Digits: which schedule gives the best 8×8 digits at 5 / 10 / 20 steps, per solver?

Model: the shipped trained EDM network for ``digits`` (``ays.train.pretrained("digits")``),
or, when no weights are installed (or ``--model exact``), the exact denoiser of the
training set (which can only reproduce training digits). Schedules: karras (EDM rho 7),
loglinear, time_uniform, kl_optimal and AYS (``ays.optimize``, coordinate method, for
stochastic DDIM's KLUB as in the paper: 10 steps optimised, subdivided to 20 and refined,
interpolated to 5; the same schedule for every solver). Solvers: euler (DDIM), dpmpp_2m,
stochastic_ddim and dpmpp_2m_sde.
Metrics: digits FD (Fréchet distance in a small digits classifier's feature space, the
FID of 8×8 digits), improved precision/recall against the training digits, and sliced
W2 to fresh training digits; mean ± 95 % t-interval over seeds, common random numbers
across schedules. A sample grid per schedule (10 steps, dpmpp_2m_sde) shows what the
numbers mean. The table is built by :mod:`_harness`.

    python benchmarks/digits.py            # full run
    python benchmarks/digits.py --quick    # smoke test

Results: ``benchmarks/results/digits/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import torch

import ays
from ays.optimize import optimize
from ays.plot import plot_schedules

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.digits
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

STEPS = [5, 10, 20]
SOLVERS = ["euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde"]
HEURISTICS = ["karras", "loglinear", "time_uniform", "kl_optimal"]
METRICS = ["digits_fd", "precision_recall", "sliced_w2"]
PIVOTS = [("digits_fd", "digits FD (lower is better)"), ("precision", "precision"), ("recall", "recall"),
          ("sliced_w2", "sliced W2"), ("klub", "KLUB of the schedule")]
QUICK = {"seeds": 2, "samples": 128, "opt_samples": 64, "klub_samples": 64, "max_sweeps": 1}


def load_model(choice: str, problem: Any) -> tuple[Any, str]:
    from ays import train

    if choice in ("trained", "auto") and "digits" in train.pretrained_names():
        return train.pretrained("digits"), "trained"
    if choice == "trained":
        raise SystemExit("no trained digits weights installed (ays.train.pretrained_names())")
    return problem.denoiser, "exact"


def ays_schedules(den: Any, data: Any, prob: Any, steps: list[int], args: Any) -> tuple[dict[int, Any], Any, float]:
    """The paper's recipe (Sec. 3.3): optimise 10 steps, subdivide to 20 and optimise the new points,
    interpolate log-linearly for other step counts. One run of ays.optimize(steps=20) does the first
    two stages; the 10-step stage's result is the even points of the 20-step stage's starting schedule
    (subdivision keeps the old points)."""
    opts: dict[str, Any] = {}
    if args.method == "coordinate":
        opts = {"max_sweeps": args.max_sweeps, "refine_sweeps": args.max_sweeps}
        if args.radius is not None:
            opts["radius"] = args.radius
    n_opt = 20 if max(steps) > 10 else 10
    t0 = time.perf_counter()
    res = optimize(den, data, steps=n_opt, solver="stochastic_ddim", seed=0, samples=args.opt_samples,
                   sigma_min=prob.sigma_min, sigma_max=prob.sigma_max, method=args.method, **opts)
    seconds = time.perf_counter() - t0
    if n_opt == 20:
        stage1 = [h for h in res.history if h.get("stage") == 1]
        s10 = torch.tensor(stage1[0]["sigmas"][0::2], dtype=torch.float64) if stage1 else \
            ays.schedules.interpolate(res.sigmas, 10)
    else:
        s10 = res.sigmas
    out = {10: s10, **({20: res.sigmas} if n_opt == 20 else {})}
    out.update({n: ays.schedules.interpolate(s10, n) for n in steps if n not in out})
    return {n: out[n] for n in steps}, res, seconds


def main(argv: Sequence[str] | None = None) -> str:
    p = H.arguments(__doc__.splitlines()[0], "digits", samples=512, threads=2)
    p.add_argument("--model", choices=["auto", "trained", "exact"], default="auto")
    p.add_argument("--opt-samples", type=int, default=256)
    p.add_argument("--max-sweeps", type=int, default=4, help="coordinate method: sweep budget per stage")
    p.add_argument("--radius", type=float, default=None, help="coordinate method: search radius (default: its own)")
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--extra-methods", default="", help="other ays.optimize methods to add, e.g. dp,ays")
    p.add_argument("--klub-samples", type=int, default=256)
    p.add_argument("--method", default="coordinate")
    args = H.parse(p, argv, QUICK)
    start = time.perf_counter()
    prob = ays.problems.get("digits")
    den, label = load_model(args.model, prob)
    data = ays.problems.digits_data("train")
    steps, solvers = [int(v) for v in args.steps.split(",")], args.solvers.split(",")

    ays_sched, res, opt_seconds = ays_schedules(den, data, prob, steps, args)
    schedules: dict[str, Any] = {**{h: h for h in HEURISTICS}, "ays": ays_sched}
    notes = [f"AYS optimisation {opt_seconds:.0f} s, {res.calls:,} denoiser rows. Model: {label}. "
             f"Each cell: mean ± 95 % t-interval over {args.seeds} seeds of {args.samples} samples. "
             f"AYS: {args.method} method, {args.opt_samples} samples, at most {args.max_sweeps} sweeps per stage, "
             f"{'10 → 20 steps' if max(steps) > 10 else '10 steps'}, other step counts by interpolation. KLUB: "
             f"{args.klub_samples} shared draws, ± 1.96 s.e.",
             f"Optimiser options: `{json.dumps(res.settings.get('options'))}`."]
    # Other optimisers of ays.optimize.METHODS, for comparison (one run per step count, default options).
    for method in [m for m in args.extra_methods.split(",") if m]:
        schedules[f"method:{method}"], cost = H.optimise_per_steps(
            den, data, steps, solver="stochastic_ddim", seed=0, samples=args.opt_samples,
            sigma_min=prob.sigma_min, sigma_max=prob.sigma_max, method=method)
        notes.append(f"`method:{method}`: `ays.optimize(method={method!r})` per step count, default options, "
                     f"{args.opt_samples} samples: {cost['calls']:,} denoiser rows, {cost['seconds']:.0f} s.")
    rows = H.evaluate_table(den, prob, schedules, solvers, steps, seeds=args.seeds, samples=args.samples,
                            metrics=METRICS, model=label, klub_samples=args.klub_samples, klub_data=data)
    if args.plots:
        n = 10 if 10 in steps else steps[-1]
        ten = {r["schedule"]: torch.tensor(r["sigmas"]) for r in rows if r["steps"] == n and r["solver"] == solvers[0]}
        plot_schedules(ten, args.out / "digits_schedules.png", title=f"digits ({label} model): {n}-step schedules")
        H.sample_grid(den, ten, "dpmpp_2m_sde", torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(7)),
                      lambda x: [x[c, 0] for c in range(16)], args.out / "digits_samples.png",
                      f"digits, dpmpp_2m_sde, {n} steps, same noise per column")
    text = H.write_table(
        rows, args.out, "digits", cmd=args.command, seconds=time.perf_counter() - start, pivots=PIVOTS,
        verdict_of=("digits_fd", "ays", HEURISTICS),
        plot=args.plots, notes=notes,
        title=f"## Digits: schedules × solvers at {' / '.join(map(str, steps))} steps",
        meta={"model": label, "args": {k: v for k, v in vars(args).items() if k not in ("out", "_name", "command")},
              "optimizer_options": res.settings.get("options")})
    print(text)
    return text


if __name__ == "__main__":
    main()

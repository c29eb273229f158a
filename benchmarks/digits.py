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
numbers mean.

    python benchmarks/digits.py            # full run
    python benchmarks/digits.py --quick    # smoke test

Results: ``benchmarks/results/digits/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import ays
from ays import evaluate as ev
from ays.io import atomic_write_text
from ays.klub import KlubDraws, klub
from ays.optimize import optimize
from ays.plot import plot_schedules, save_figure

STEPS = [5, 10, 20]
SOLVERS = ["euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde"]
HEURISTICS = ["karras", "loglinear", "time_uniform", "kl_optimal"]
METRICS = ["digits_fd", "precision_recall", "sliced_w2"]
ROOT = Path(__file__).resolve().parent


def load_model(choice: str, problem: Any) -> tuple[Any, str]:
    from ays import train

    if choice in ("trained", "auto") and "digits" in train.pretrained_names():
        return train.pretrained("digits"), "trained"
    if choice == "trained":
        raise SystemExit("no trained digits weights installed (ays.train.pretrained_names())")
    return problem.denoiser, "exact"


def sample_grid(denoiser: Any, schedules: dict[str, torch.Tensor], solver: str, path: Path) -> None:
    """One row of 16 samples per schedule, all from the same noise (common random numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    fig, axes = plt.subplots(len(schedules), 16, figsize=(16 * 0.6, len(schedules) * 0.7), squeeze=False)
    for row, (name, sig) in enumerate(schedules.items()):
        with torch.no_grad():
            x = ays.sample(denoiser, noise, ays.schedules.to_sampling(sig), solver=solver,
                           generator=torch.Generator().manual_seed(8))
        for col in range(16):
            ax = axes[row][col]
            ax.imshow(x[col, 0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"digits, {solver}, {len(next(iter(schedules.values()))) - 1} steps, same noise per column")
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["auto", "trained", "exact"], default="auto")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--opt-samples", type=int, default=256)
    p.add_argument("--max-sweeps", type=int, default=4, help="coordinate method: sweep budget per stage")
    p.add_argument("--radius", type=float, default=None, help="coordinate method: search radius (default: its own)")
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--extra-methods", default="", help="other ays.optimize methods to add, e.g. dp,ays")
    p.add_argument("--klub-samples", type=int, default=256)
    p.add_argument("--method", default="coordinate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "results" / "digits"))
    args = p.parse_args()
    if args.quick:
        args.seeds, args.samples, args.opt_samples, args.klub_samples, args.max_sweeps = 2, 128, 64, 64, 1
        if args.out == str(ROOT / "results" / "digits"):
            args.out = str(ROOT / "results" / "digits-quick")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    prob = ays.problems.get("digits")
    den, label = load_model(args.model, prob)
    data = ays.problems.digits_data("train")

    # The paper's recipe (Sec. 3.3): optimise 10 steps, subdivide to 20 and optimise the new
    # points, interpolate log-linearly for other step counts. One run of ays.optimize(steps=20)
    # does the first two stages; the 10-step stage's result is the even points of the 20-step
    # stage's starting schedule (subdivision keeps the old points).
    t0 = time.perf_counter()
    steps, solvers = [int(v) for v in args.steps.split(",")], args.solvers.split(",")
    opts: dict[str, Any] = {}
    if args.method == "coordinate":
        opts = {"max_sweeps": args.max_sweeps, "refine_sweeps": args.max_sweeps}
        if args.radius is not None:
            opts["radius"] = args.radius
    n_opt = 20 if max(steps) > 10 else 10
    res = optimize(den, data, steps=n_opt, solver="stochastic_ddim", seed=0, samples=args.opt_samples,
                   sigma_min=prob.sigma_min, sigma_max=prob.sigma_max, method=args.method, **opts)
    opt_calls, opt_seconds = res.calls, time.perf_counter() - t0
    if n_opt == 20:
        stage1 = [h for h in res.history if h.get("stage") == 1]
        s10 = torch.tensor(stage1[0]["sigmas"][0::2], dtype=torch.float64) if stage1 else \
            ays.schedules.interpolate(res.sigmas, 10)
    else:
        s10 = res.sigmas
    ays_sched = {10: s10, **({20: res.sigmas} if n_opt == 20 else {})}
    ays_sched.update({n: ays.schedules.interpolate(s10, n) for n in steps if n not in ays_sched})
    print(f"AYS optimised in {opt_seconds:.0f} s ({opt_calls:,} denoiser rows)", file=sys.stderr)
    for n, sig in sorted(ays_sched.items()):
        print(f"AYS {n} steps: {[round(v, 4) for v in sig.tolist()]}", file=sys.stderr)

    schedules: dict[str, Any] = {**{h: h for h in HEURISTICS}, "ays": ays_sched}
    # Other optimisers of ays.optimize.METHODS, for comparison (one run per step count).
    extra_cost: dict[str, tuple[int, float]] = {}
    for method in [m for m in (args.extra_methods or "").split(",") if m]:
        t1, per, calls = time.perf_counter(), {}, 0
        for n in steps:
            r = optimize(den, data, steps=n, solver="stochastic_ddim", seed=0, samples=args.opt_samples,
                         sigma_min=prob.sigma_min, sigma_max=prob.sigma_max, method=method)
            per[n], calls = r.sigmas, calls + r.calls
        schedules[f"method:{method}"] = per
        extra_cost[method] = (calls, time.perf_counter() - t1)
        print(f"method {method}: {calls:,} rows, {extra_cost[method][1]:.0f} s; 10 steps: "
              f"{[round(v, 4) for v in per.get(10, next(iter(per.values()))).tolist()]}", file=sys.stderr)
    rows = ev.evaluate(den, prob, schedules, solvers, steps, seeds=args.seeds, samples=args.samples,
                       metrics=METRICS, model=label)
    draws = KlubDraws.create(data, args.klub_samples, torch.Generator().manual_seed(12345))
    klub_cache: dict[tuple[float, ...], Any] = {}
    for r in rows:
        key = tuple(r["sigmas"])
        if key not in klub_cache:
            klub_cache[key] = klub(den, data, torch.tensor(r["sigmas"], dtype=torch.float64), draws=draws)
        r["klub"], r["klub_err"] = klub_cache[key].total, 1.96 * klub_cache[key].total_stderr
    ev.write_results(rows, out, name="digits",
                     meta={"model": label, "args": vars(args), "optimizer_options": res.settings.get("options")})

    ten = {r["schedule"]: torch.tensor(r["sigmas"]) for r in rows if r["steps"] == 10 and r["solver"] == solvers[0]}
    plot_schedules(ten, out / "digits_schedules.png", title=f"digits ({label} model): 10-step schedules")
    sample_grid(den, ten, "dpmpp_2m_sde", out / "digits_samples.png")
    seconds = time.perf_counter() - t_start

    m = ev.machine_description()
    cmd = "python benchmarks/digits.py " + " ".join(sys.argv[1:])
    parts = [
        f"## Digits: schedules × solvers at {' / '.join(map(str, steps))} steps",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"{seconds / 60:.1f} min in all (AYS optimisation {opt_seconds:.0f} s, {opt_calls:,} denoiser rows).  ",
        f"Model: {label}. Each cell: mean ± 95 % t-interval over {args.seeds} seeds of {args.samples} samples. "
        f"AYS: {args.method} method, {args.opt_samples} samples, at most {args.max_sweeps} sweeps per stage, "
        f"{'10 → 20 steps' if n_opt == 20 else '10 steps'}, other step counts by interpolation. KLUB: "
        f"{args.klub_samples} shared draws, ± 1.96 s.e.  ",
        f"Optimiser options: `{json.dumps(res.settings.get('options'))}`.",
    ]
    for method, (calls, secs) in extra_cost.items():
        parts.append(f"`method:{method}`: `ays.optimize(method={method!r})` per step count, default options, "
                     f"{args.opt_samples} samples: {calls:,} denoiser rows, {secs:.0f} s.  ")
    for metric, title in (("digits_fd", "digits FD (lower is better)"), ("precision", "precision"),
                          ("recall", "recall"), ("sliced_w2", "sliced W2"), ("klub", "KLUB of the schedule")):
        parts += ["", f"### {title}", "", ev.format_pivot(rows, metric)]
    text = "\n".join(parts) + "\n"
    atomic_write_text(out / "digits.md", text)
    atomic_write_text(out / "machine.json", json.dumps(m, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()

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
from ays.optimize import METHODS, optimize

ROOT = Path(__file__).resolve().parent
HEURISTICS = ["karras", "loglinear", "kl_optimal"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="gmm-8x8")
    p.add_argument("--model", choices=["exact", "trained"], default="exact")
    p.add_argument("--solver", default="dpmpp_2m_sde")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=4096, help="Monte Carlo chains of every optimiser")
    p.add_argument("--methods", default=None, help="comma-separated subset of ays.optimize.METHODS")
    p.add_argument("--eval-samples", type=int, default=4096)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "results" / "cost"))
    args = p.parse_args()
    if args.quick:
        args.samples, args.eval_samples, args.seeds = 512, 1024, 2
        if args.out == str(ROOT / "results" / "cost"):
            args.out = str(ROOT / "results" / "cost-quick")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prob = ays.problems.get(args.problem)
    if args.model == "exact":
        den: Any = prob.denoiser
    else:
        from ays import train

        den = train.pretrained(args.problem)
    methods = sorted(METHODS) if args.methods is None else args.methods.split(",")

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

    schedules = {f"method:{m}": r["sigmas"] for m, r in results.items() if "sigmas" in r}
    schedules.update({h: h for h in HEURISTICS})
    metrics = [m for m in ev.default_metrics(prob) if m in ("nll", "sliced_w2", "modes", "digits_fd")]
    rows = ev.evaluate(den, prob, schedules, [args.solver], [args.steps], seeds=args.seeds,
                       samples=args.eval_samples, metrics=metrics, model=args.model)
    draws = KlubDraws.create(prob, args.samples, torch.Generator().manual_seed(12345))
    for r in rows:
        est = klub(den, prob, torch.tensor(r["sigmas"], dtype=torch.float64), draws=draws)
        r["klub"], r["klub_err"] = est.total, 1.96 * est.total_stderr
        info = results.get(r["schedule"].removeprefix("method:"), {}) if r["schedule"].startswith("method:") else {}
        r["opt_calls"] = info.get("calls", 0)
        r["opt_seconds"] = round(info.get("seconds", 0.0), 2)
    ev.write_results(rows, out, name=f"cost_{args.problem}", meta={"args": vars(args)}, plot=False)

    m = ev.machine_description()
    cols = ["opt_calls", "opt_seconds", "klub", *[c for c in ev.metric_columns(metrics)]]
    cmd = "python benchmarks/cost.py " + " ".join(sys.argv[1:])
    parts = [
        f"## Optimiser cost: {args.problem} ({args.model} denoiser), {args.solver}, {args.steps} steps",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads).  ",
        f"Every optimiser: {args.samples} Monte Carlo chains, seed 0, default options. Quality: "
        f"{args.seeds} seeds × {args.eval_samples} samples, mean ± 95 % t-interval; KLUB ± 1.96 s.e.",
        "",
        ev.format_table(rows, cols, markdown=True, identity=("schedule",)),
    ]
    failed = {k: v["error"] for k, v in results.items() if "error" in v}
    if failed:
        parts += ["", "Failed: " + "; ".join(f"`{k}`: {v}" for k, v in failed.items())]
    text = "\n".join(parts) + "\n"
    atomic_write_text(out / f"cost_{args.problem}.md", text)
    atomic_write_text(out / "machine.json", json.dumps(m, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()

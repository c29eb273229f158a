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

Results: ``benchmarks/results/table4/`` (CSV, JSON, plots, ``table4_<model>.md``).
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
from ays.plot import plot_schedules

CASES = [("gmm-8x8", "dpmpp_2m_sde"), ("gmm-8x4", "euler"), ("gmm-6x6", "stochastic_ddim")]
STEPS = [6, 8, 10]
HEURISTICS = ["karras", "loglinear", "time_uniform", "kl_optimal"]
METRICS = ["nll", "sliced_w2", "modes"]
ROOT = Path(__file__).resolve().parent
OPTIONS: dict[str, Any] = {}  # the optimiser's full options, as ays.optimize reports them


def denoiser_for(model: str, problem: Any, name: str) -> tuple[Any, str] | None:
    if model == "exact":
        return problem.denoiser, "exact"
    from ays import train

    if name not in train.pretrained_names():
        return None
    return train.pretrained(name), "trained"


def optimise(
    denoiser: Any, problem: Any, steps: list[int], args: argparse.Namespace
) -> tuple[dict[int, Any], dict[str, Any]]:
    """AYS schedules per step count, with what they cost."""
    out, cost = {}, {"calls": 0, "seconds": 0.0, "options": None}
    for n in steps:
        t0 = time.perf_counter()
        opts = {"max_sweeps": args.max_sweeps} if args.method == "coordinate" else {}
        res = optimize(denoiser, problem, steps=n, solver="stochastic_ddim", seed=0, samples=args.opt_samples,
                       method=args.method, **opts)
        cost["seconds"] += time.perf_counter() - t0
        cost["calls"] += res.calls
        cost["options"] = res.settings.get("options")
        out[n] = res.sigmas
    return out, cost


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    models = ["exact", "trained"] if args.model == "both" else [args.model]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_rows: list[dict[str, Any]] = []
    for name, solver in CASES:
        prob = ays.problems.get(name)
        for model in models:
            got = denoiser_for(model, prob, name)
            if got is None:
                print(f"[skip] no trained weights for {name}", file=sys.stderr)
                continue
            den, label = got
            t0 = time.perf_counter()
            ays_sched, cost = optimise(den, prob, STEPS, args)
            print(f"[{name} {label}] AYS optimised in {cost['seconds']:.0f} s, {cost['calls']:,} denoiser rows",
                  file=sys.stderr)
            schedules = {**{h: h for h in HEURISTICS}, "ays": ays_sched}
            rows = ev.evaluate(den, prob, schedules, [solver], STEPS, seeds=args.seeds, samples=args.samples,
                               metrics=METRICS, model=label)
            # KLUB of every schedule on one shared set of draws (common random numbers).
            draws = KlubDraws.create(prob, args.klub_samples, torch.Generator().manual_seed(12345))
            klubs = {}
            for r in rows:
                est = klub(den, prob, torch.tensor(r["sigmas"], dtype=torch.float64), draws=draws)
                r["klub"], r["klub_err"] = est.total, 1.96 * est.total_stderr
                if r["steps"] == 10:
                    klubs[r["schedule"]] = est.per_interval
                r["case"] = f"{name}, {solver}"
                r["opt_seconds"], r["opt_calls"] = cost["seconds"], cost["calls"]
            OPTIONS.update(cost["options"] or {})
            ev.write_results(rows, out, name=f"{name}_{label}",
                             meta={"case": [name, solver], "model": label, "optimizer_options": cost["options"]})
            plot_schedules({r["schedule"]: r["sigmas"] for r in rows if r["steps"] == 10},
                           out / f"{name}_{label}_schedules.png", klub=klubs,
                           title=f"{name}, {solver}, {label} model: 10-step schedules")
            print(f"[{name} {label}] evaluated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            all_rows += rows
    return all_rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    cmd = "python benchmarks/table4.py " + " ".join(sys.argv[1:])
    m = ev.machine_description()
    parts = [
        "## Table 4 (toy problems): NLL, sliced W2, mode coverage and KLUB at 6 / 8 / 10 steps",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"{seconds / 60:.1f} min in all.  ",
        f"Each cell: mean ± 95 % t-interval over {args.seeds} seeds of {args.samples} samples "
        f"(KLUB: ± 1.96 standard errors, {args.klub_samples} shared draws). AYS: `ays.optimize` "
        f"(method {args.method}, {args.opt_samples} samples, at most {args.max_sweeps} sweeps, seed 0) "
        "per step count on the evaluated model.  ",
        f"Optimiser options: `{json.dumps(OPTIONS)}`.",
    ]
    for metric, title in (("nll", "NLL (lower is better, but rewards collapse)"), ("sliced_w2", "sliced W2"),
                          ("dropped_modes", "dropped modes"), ("mode_tv", "TV of the mass per mode"),
                          ("klub", "KLUB of the schedule")):
        parts += ["", f"### {title}", "", ev.format_pivot(rows, metric, row_keys=("case", "model", "schedule"))]
    return "\n".join(parts) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["exact", "trained", "both"], default="both")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--opt-samples", type=int, default=1024, help="KLUB samples of the optimiser")
    p.add_argument("--max-sweeps", type=int, default=8, help="sweep budget of the coordinate method")
    p.add_argument("--klub-samples", type=int, default=8192)
    p.add_argument("--method", default="coordinate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 seeds, 1024 samples, a small optimiser budget")
    p.add_argument("--out", default=str(ROOT / "results" / "table4"))
    args = p.parse_args()
    if args.quick:
        args.seeds, args.samples, args.opt_samples, args.klub_samples, args.max_sweeps = 2, 1024, 256, 1024, 4
        if args.out == str(ROOT / "results" / "table4"):
            args.out = str(ROOT / "results" / "table4-quick")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    text = report(rows, args, time.perf_counter() - t0)
    atomic_write_text(Path(args.out) / f"table4_{args.model}.md", text)
    atomic_write_text(Path(args.out) / "machine.json", json.dumps(ev.machine_description(), indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()

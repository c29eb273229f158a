"""MNIST 28×28: every heuristic and every optimiser of ``ays.optimize`` on the trained UNet, per solver and step count.

Model: the shipped EDM UNet for ``mnist`` (``ays.train.pretrained("mnist")``, 555k parameters,
``benchmarks/train_mnist.py``); data for the optimisers: the ``mnist`` problem's train split
(``ays.problems.mnist_data("train")``, 4,000 images). Schedules: every heuristic of
``ays.schedules.HEURISTICS`` (karras, loglinear, time_uniform, kl_optimal, beta,
polyexponential) and one ``ays.optimize(method=M)`` run per step count (and per target solver,
unless ``--opt-solver`` names one) for M in coordinate, dp, ays, gits, dmn, ld3 and oss (each at
its own default options, ``--opt-samples`` samples). Cells: 4 / 6 / 8 / 10 steps × euler,
dpmpp_2m, stochastic_ddim and dpmpp_2m_sde. Measure: ``mnist_fd`` (FD in the mnist classifier's
feature space to the 1,000-image test split, ``ays evaluate``'s default for mnist), mean ± 95 %
t-interval over seeds, common random numbers across schedules (``ays.evaluate``). Per method:
denoiser calls and wall time of its optimisation. Verdict per cell: the default method
(``ays.optimize.DEFAULT_METHOD``) against the best heuristic, and against the best of ld3, oss,
gits and dmn (better / tied / worse: 95 % intervals apart or overlapping). Built by
:mod:`_harness`.

The real run's defaults are sized for one GPU: 5 seeds × 2,000 samples per cell, 256
optimiser samples, every schedule optimised for its cell's solver (7 methods × 4 solvers ×
4 step counts = 112 optimisations, 13 schedules × 16 cells × 5 seeds evaluated). On a 2-core
CPU that is days; ``--quick`` (2 step counts, 2 solvers, 2 seeds × 128 samples, one target
solver) is its smoke form.

    python benchmarks/mnist.py --device cuda        # the full table (GPU)
    OMP_NUM_THREADS=1 python benchmarks/mnist.py --quick --device cpu   # its smoke form (any --device: this form)

Results: ``benchmarks/results/mnist/`` (``mnist.{csv,json,md}``, ``mnist_cost.{csv,json,md}``,
``mnist_summary.md``).

**The CPU form** (``--cpu``, and the default when no GPU is found; :func:`cpu_main`) is sized
for the 2-core machine: cells dpmpp_2m and dpmpp_2m_sde × 4 and 10 steps; schedules: every
heuristic, the default method, gits, oss, ld3 (with ``features="mnist"``, the classifier's
features in place of LPIPS), dmn and coordinate, each at its defaults except coordinate,
whose default (29 M calls on gmm-8x8) is hours here: it runs at the default method's budget
(5,000 calls per step). Evaluation: 3 seeds × 400 samples (``--seeds``/``--samples``), the
same noise for every schedule within a seed. Significance from paired differences: per seed
the difference of mnist_fd between two schedules, a Student-t interval over the seeds.
Per-cell verdicts: the default against the best heuristic and against the best of gits, oss,
ld3, dmn, coordinate (better / tied / worse: the paired interval below 0, across 0, above).
It resumes per cell and per schedule: each optimised schedule is an ``ays-schedule/1`` file
in ``schedules/``, named by its method, cell and a key of the method's options and the
SHA-256 of its module's source (a changed method is optimised again); each evaluated
schedule is a file in ``cells/``. Every row is reproduced by ``ays evaluate`` (the command is
in ``mnist_cpu.md``).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/mnist.py --cpu
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import ays
from ays.evaluate.stats import confidence_interval
from ays.io import atomic_write_json, atomic_write_text, read_json
from ays.optimize import DEFAULT_METHOD, METHODS

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.mnist
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

STEPS = [4, 6, 8, 10]
SOLVERS = ["euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde"]
HEURISTICS = list(ays.schedules.HEURISTICS)
OPTIMISERS = ["coordinate", "dp", "ays", "gits", "dmn", "ld3", "oss"]
COMPETITORS = ["ld3", "oss", "gits", "dmn"]
METRICS = ["mnist_fd"]
QUICK = {"seeds": 2, "samples": 128, "opt_samples": 32, "steps": "4,6", "solvers": "euler,dpmpp_2m",
         "opt_solver": "dpmpp_2m"}


def optimised(den: Any, data: Any, prob: Any, method: str, solvers: list[str], steps: list[int],
              args: Any) -> tuple[Any, dict[str, Any]]:
    """``method``'s schedules: ``{solver: {n: sigmas}}`` (one optimisation per target solver and step
    count), or ``{n: sigmas}`` for every solver when ``--opt-solver`` names one; and its summed cost."""
    targets = solvers if args.opt_solver == "each" else [args.opt_solver]
    out: dict[str, Any] = {}
    total: dict[str, Any] = {"method": method, "calls": 0, "seconds": 0.0, "targets": ",".join(targets)}
    for solver in targets:
        out[solver], cost = H.optimise_per_steps(
            den, data, steps, method=method, solver=solver, seed=0, samples=args.opt_samples,
            sigma_min=prob.sigma_min, sigma_max=prob.sigma_max, device=args.device)
        total["calls"] += cost["calls"]
        total["seconds"] += cost["seconds"]
        total["options"] = cost["options"]
    return (out if args.opt_solver == "each" else out[targets[0]]), total


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    full = "--device" in argv or any(a.startswith("--device=") for a in argv)  # the full table, on that device
    if "--cpu" in argv or (not full and not torch.cuda.is_available()):
        return cpu_main([a for a in argv if a != "--cpu"])
    p = H.arguments(__doc__.splitlines()[0], "mnist", seeds=5, samples=2000)
    p.add_argument("--device", default=None, help="torch device of the UNet (default: cpu)")
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--heuristics", default=",".join(HEURISTICS))
    p.add_argument("--methods", default=",".join(OPTIMISERS), help=f"of {', '.join(METHODS)}")
    p.add_argument("--opt-samples", type=int, default=256, help="samples of each optimisation")
    p.add_argument("--judge", default=DEFAULT_METHOD, help="the method the verdicts are of (default: the default)")
    p.add_argument("--opt-solver", default="each",
                   help="target solver of every optimisation ('each': the cell's own solver)")
    args = H.parse(p, argv, QUICK)
    start = time.perf_counter()
    prob = ays.problems.get("mnist")
    den = ays.train.pretrained("mnist").eval()
    if args.device:
        den = den.to(args.device)
    data = ays.problems.mnist_data("train")
    steps, solvers = [int(v) for v in args.steps.split(",")], args.solvers.split(",")
    heuristics, methods = [h for h in args.heuristics.split(",") if h], [m for m in args.methods.split(",") if m]

    schedules: dict[str, Any] = {h: h for h in heuristics}
    costs = []
    for method in methods:
        schedules[method], cost = optimised(den, data, prob, method, solvers, steps, args)
        costs.append(cost)
    # A schedule per target solver means one ays.evaluate per solver; its noise is seeded by the seed alone,
    # so every schedule and solver still sees the same noise (common random numbers).
    per_solver = args.opt_solver == "each"
    rows = []
    for solver in solvers if per_solver else [",".join(solvers)]:
        table = {k: (v[solver] if per_solver and k in methods else v) for k, v in schedules.items()}
        rows += H.evaluate_table(den, prob, table, solver.split(","), steps, seeds=args.seeds,
                                 samples=args.samples, metrics=METRICS, model="trained")

    seconds = time.perf_counter() - start
    where = f" on {args.device}" if args.device else ""
    notes = [f"Model: the trained mnist UNet (`ays.train.pretrained(\"mnist\")`){where}. "
             f"Each cell: mnist FD, mean ± 95 % t-interval over {args.seeds} seeds of {args.samples} samples, "
             "common random numbers across schedules.",
             f"Optimisers: `ays.optimize(method=M)` per step count, default options, {args.opt_samples} samples, "
             f"target solver: {'the cell' + chr(39) + 's own' if per_solver else args.opt_solver}."]
    text = H.write_table(
        rows, args.out, "mnist", cmd=args.command, seconds=seconds, pivots=[("mnist_fd", "mnist FD (lower is better)")],
        verdict_of=("mnist_fd", args.judge, heuristics), plot=args.plots, notes=notes,
        title=f"## MNIST 28×28: schedules × solvers at {' / '.join(map(str, steps))} steps",
        meta={"model": "trained", "costs": costs,
              "args": {k: v for k, v in vars(args).items() if k not in ("out", "_name", "command")}})
    H.write_rows([{k: v for k, v in c.items() if k != "options"} | {"options": json.dumps(c["options"])}
                  for c in costs], args.out, "mnist_cost", cmd=args.command)
    atomic_write_text(args.out / "mnist_cost.md", f"Command: `{args.command}`\n\n{cost_markdown(costs)}\n")
    rivals = [m for m in COMPETITORS if m in methods and m != args.judge]
    summary = summary_markdown(rows, costs, heuristics, rivals, args)
    atomic_write_text(args.out / "mnist_summary.md", summary)
    print(text + "\n" + summary)
    return text + "\n" + summary


def cost_markdown(costs: list[dict[str, Any]]) -> str:
    """Each optimiser's denoiser calls and wall time, summed over its runs."""
    return H.markdown_table(["method", "denoiser calls", "seconds", "target solvers"],
                            [[c["method"], f"{c['calls']:,}", f"{c['seconds']:.0f}", c["targets"]] for c in costs])


def summary_markdown(rows: list[dict[str, Any]], costs: list[dict[str, Any]], heuristics: list[str],
                     competitors: list[str], args: Any) -> str:
    """``mnist_summary.md``: each method's cost, and the default method's two verdict tables."""
    parts = [f"Command: `{args.command}`", "", "### Cost of each optimiser (all its runs: step counts × targets)", "",
             cost_markdown(costs)]
    for label, against in (("the best heuristic", heuristics), ("the best of " + ", ".join(competitors), competitors)):
        if args.judge in {r["schedule"] for r in rows} and against:
            parts += ["", f"### Verdict: {args.judge} against {label} on mnist_fd "
                      "(better / tied / worse: 95 % intervals apart or overlapping)", "",
                      H.verdict_table(rows, "mnist_fd", args.judge, against)]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ the CPU form
CPU_SOLVERS = ["dpmpp_2m", "dpmpp_2m_sde"]
CPU_STEPS = [4, 10]
CPU_RIVALS = ["gits", "oss", "ld3", "dmn", "coordinate"]
#: options that differ from a method's defaults in the CPU form (see the module docstring)
CPU_OPTIONS: dict[str, Any] = {"ld3": {"features": "mnist"}, "coordinate": {"budget_per_step": 5000}}


def cache_key(method: str, options: dict[str, Any]) -> str:
    """A key of what decides ``method``'s schedule: its options and the source of its module (SHA-256)."""
    source = Path(inspect.getsourcefile(METHODS[method])).read_bytes()
    blob = json.dumps({"method": method, "options": options, "source": hashlib.sha256(source).hexdigest(),
                       "ays": ays.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def optimised_file(out: Path, den: Any, data: Any, prob: Any, method: str, solver: str, n: int) -> tuple[Path, bool]:
    """The schedule file of ``method`` for one cell, optimised unless a file with the same key is there."""
    opts = dict(CPU_OPTIONS.get(method, {}))
    per_step = opts.pop("budget_per_step", None)
    if per_step:
        opts["budget"] = per_step * n
    path = out / "schedules" / f"{method}-{solver}-{n}-{cache_key(method, opts)}.json"
    if path.exists():
        return path, False
    start = time.perf_counter()
    res = ays.optimize(den, data, steps=n, solver=solver, method=method, seed=0, sigma_min=prob.sigma_min,
                       sigma_max=prob.sigma_max, model="trained", **opts)
    res.settings["wall_seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    res.save(path)
    return path, True


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None, str]:
    """Mean and 95 % t half width of the per-seed differences ``a − b``, and the verdict of ``a`` (lower is better)."""
    mean, half = confidence_interval([x - y for x, y in zip(a, b, strict=True)])
    if half is None:
        return mean, None, "—"
    return mean, half, "better" if mean + half < 0 else "worse" if mean - half > 0 else "tied"


def cpu_main(argv: Sequence[str]) -> str:
    """The CPU form (module docstring): resumable, cell by cell, schedule by schedule."""
    p = H.arguments(__doc__.splitlines()[0] + " (CPU form)", "mnist-cpu", "mnist", seeds=3, samples=400)
    p.add_argument("--steps", default=",".join(map(str, CPU_STEPS)))
    p.add_argument("--solvers", default=",".join(CPU_SOLVERS))
    p.add_argument("--heuristics", default=",".join(HEURISTICS))
    p.add_argument("--methods", default=",".join(["dmn", "gits", "oss", DEFAULT_METHOD, "ld3", "coordinate"]))
    args = H.parse(p, argv, {"seeds": 3, "samples": 32, "steps": "4", "solvers": "dpmpp_2m",
                             "heuristics": "karras,loglinear", "methods": "dmn,gits"})
    start = time.perf_counter()
    prob = ays.problems.get("mnist")
    den = ays.train.pretrained("mnist").eval()
    data = ays.problems.mnist_data("train")
    heuristics = [h for h in args.heuristics.split(",") if h]
    methods = [m for m in args.methods.split(",") if m]
    cells = [(solver, int(n)) for n in args.steps.split(",") for solver in args.solvers.split(",")]
    (args.out / "cells").mkdir(parents=True, exist_ok=True)
    for solver, n in cells:
        for name in heuristics + methods:
            cell = args.out / "cells" / f"{name}-{solver}-{n}.json"
            spec: Any = name
            if name in methods:
                path, _ = optimised_file(args.out, den, data, prob, name, solver, n)
                spec = str(path)
                old = read_json(cell) if cell.exists() else None
                if old is not None and old.get("schedule_file") != path.name:
                    cell.unlink()  # the method changed: its schedule was optimised again
            if cell.exists():
                continue
            t0 = time.perf_counter()
            rows = ays.evaluate(den, prob, {name: spec}, [solver], [n], seeds=args.seeds, samples=args.samples,
                                metrics=["mnist_fd"], model="trained")
            row = {k: v for k, v in rows[0].items()} | {"eval_seconds": time.perf_counter() - t0}
            if name in methods:
                res = ays.load_schedule(spec)
                row |= {"schedule_file": Path(spec).name, "opt_calls": res.calls,
                        "opt_seconds": res.settings.get("wall_seconds")}
            atomic_write_json(cell, row)
            print(f"{solver} {n} {name}: mnist_fd {row['mnist_fd']:.2f} ± {row['mnist_fd_err']:.2f}", file=sys.stderr)
            cpu_tables(args, cells, heuristics, methods, time.perf_counter() - start)
    text = cpu_tables(args, cells, heuristics, methods, time.perf_counter() - start)
    print(text)
    return text


def shown(path: Path) -> str:
    """``path`` relative to the repository's root when it lies inside it (as the commands are run)."""
    try:
        return path.resolve().relative_to(H.ROOT.parent).as_posix()
    except ValueError:
        return str(path)


def cpu_tables(args: Any, cells: list[tuple[str, int]], heuristics: list[str], methods: list[str],
               seconds: float) -> str:
    """``mnist_cpu.md`` (and ``mnist_cpu.json``) from the cells evaluated so far."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for solver, n in cells:
        for name in heuristics + methods:
            f = args.out / "cells" / f"{name}-{solver}-{n}.json"
            if f.exists():
                found.setdefault((solver, n), {})[name] = read_json(f)
    rivals = [m for m in CPU_RIVALS if m in methods]
    parts = [f"Command: `{args.command}`", "", H.machine_line(seconds) + " (this invocation; the cells are resumed "
             "from earlier ones, their own seconds are in the table).", "",
             f"mnist FD (lower is better) of {args.seeds} seeds × {args.samples} samples per cell, mean ± 95 % "
             "t-interval; the same noise for every schedule within a seed. Optimised schedules: `ays.optimize` "
             "at the method's defaults (ld3 with `features=\"mnist\"`, coordinate within 5,000 calls per step), "
             "seed 0, for the cell's solver. calls: denoiser calls the optimisation spent; rows/s: the "
             "evaluation's denoiser rows per second.", ""]
    verdicts = []
    for (solver, n), cell in found.items():
        body = []
        for name, r in sorted(cell.items(), key=lambda kv: kv[1]["mnist_fd"]):
            rate = r["calls"] / r["seconds"] if r.get("seconds") else math.nan
            body.append([name, f"{r['mnist_fd']:.2f} ± {r['mnist_fd_err']:.2f}", f"{r.get('opt_calls', 0):,}",
                         "" if r.get("opt_seconds") is None else f"{r['opt_seconds']:.0f}",
                         f"{r['eval_seconds']:.0f}", f"{rate:.0f}"])
        parts += [f"### {solver}, {n} steps", "", H.markdown_table(
            ["schedule", "mnist FD", "calls", "optimise s", "evaluate s", "rows/s"], body), ""]
        judge = cell.get(DEFAULT_METHOD)
        for label, group in (("best heuristic", heuristics), ("best competitor", rivals)):
            there = {k: cell[k] for k in group if k in cell}
            if judge is None or not there:
                continue
            best = min(there, key=lambda k: there[k]["mnist_fd"])
            mean, half, word = paired(judge["per_seed"]["mnist_fd"], there[best]["per_seed"]["mnist_fd"])
            verdicts.append([f"{solver}, {n}", label, best, f"{mean:+.2f} ± {half:.2f}" if half else f"{mean:+.2f}",
                             word, f"{len(there)}/{len(group)}"])
    if verdicts:
        parts += [f"### Verdicts: {DEFAULT_METHOD} (the default) against the best heuristic and the best competitor",
                  "", "Paired difference of mnist FD per seed (default − other; negative: the default is better), "
                  "mean ± 95 % t-interval over the seeds; better / tied / worse: the interval below 0, across 0, "
                  "above. The best is picked on this cell's means (among those evaluated so far).", "",
                  H.markdown_table(["cell", "against", "which", "difference", "verdict", "evaluated"], verdicts), ""]
    done = sum(len(c) for c in found.values())
    parts += [f"Evaluated: {done} of {len(cells) * (len(heuristics) + len(methods))} (schedule, cell) pairs.", "",
              "Reproduce a row (e.g. the default's file for a cell; a heuristic by its name):", "",
              f"    ays evaluate mnist --model trained --schedules {shown(args.out)}/schedules/FILE.json,karras "
              f"--solvers SOLVER --steps N --seeds {args.seeds} --samples {args.samples} --metrics mnist_fd", ""]
    text = "\n".join(parts)
    atomic_write_text(args.out / "mnist_cpu.md", text)
    atomic_write_json(args.out / "mnist_cpu.json", {"command": args.command, "cells": {
        f"{s}-{n}": c for (s, n), c in found.items()}})
    return text


if __name__ == "__main__":
    main()

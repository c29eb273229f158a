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
    OMP_NUM_THREADS=1 python benchmarks/mnist.py --quick

Results: ``benchmarks/results/mnist/`` (``mnist.{csv,json,md}``, ``mnist_cost.{csv,json,md}``,
``mnist_summary.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import ays
from ays.io import atomic_write_text
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


if __name__ == "__main__":
    main()

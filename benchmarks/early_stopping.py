"""How many sweeps should the paper's coordinate search take? (BENCHMARKS.md, section 5.)

For each toy cell (gmm-8x8 with dpmpp_2m_sde, gmm-8x4 with euler, gmm-6x6 with
stochastic_ddim; 6, 8, 10 steps) one long coordinate run is recorded with early
stopping's patience switched off; the schedule early stopping returns after a
budget of B sweeps is the best held-out one among the first B. Each budget's
schedule is sampled on the same noise and scored by NLL and sliced W2 against
karras and loglinear; a cell is won when it beats both on both metrics.

    python benchmarks/early_stopping.py                 # radius 0.3 and 1.0, 8,192 chains
    python benchmarks/early_stopping.py --quick         # a smoke run

Results (CSV, JSON, markdown, by :mod:`_harness`): ``benchmarks/results/early_stopping[-quick]/``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

import ays
from ays import schedules
from ays.metrics import nll, sliced_w2

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.early_stopping
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

CELLS = [("gmm-8x8", "dpmpp_2m_sde"), ("gmm-8x4", "euler"), ("gmm-6x6", "stochastic_ddim")]


def budget_schedule(history: list[dict], budget: int) -> torch.Tensor:
    """The schedule early stopping returns after ``budget`` sweeps: the best held-out one."""
    seen = history[:budget]
    best = min(seen, key=lambda h: h["heldout"] if h.get("heldout") is not None else h["klub"])
    return torch.tensor(best["sigmas"], dtype=torch.float64)


def score(prob, solver: str, sigmas: torch.Tensor, noise: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    x = ays.sample(prob.denoiser, noise, schedules.to_sampling(sigmas), solver=solver,
                   generator=torch.Generator().manual_seed(7))
    return nll(x, prob).value, sliced_w2(x, ref).value


def main(argv: Sequence[str] | None = None) -> str:
    ap = H.arguments(__doc__.splitlines()[0], "early_stopping", cells=False)
    ap.add_argument("--samples", type=int, default=8192, help="Monte Carlo chains of each coordinate run")
    ap.add_argument("--sweeps", type=int, default=24)
    ap.add_argument("--radii", default="0.3,1.0")
    ap.add_argument("--cells", default=",".join(n for n, _ in CELLS), help="comma-separated problems of CELLS")
    ap.add_argument("--steps", default="6,8,10")
    ap.add_argument("--budgets", default="2,3,4,6,8,10,12,16,24")
    ap.add_argument("--eval-samples", type=int, default=20_000)
    args = H.parse(ap, argv, {"samples": 256, "sweeps": 4, "steps": "6", "budgets": "2,4", "eval_samples": 2000})
    steps_list = [int(v) for v in args.steps.split(",")]
    budgets = tuple(b for b in (int(v) for v in args.budgets.split(",")) if b <= args.sweeps)
    radii = [float(r) for r in args.radii.split(",")]
    cells = [c for c in CELLS if c[0] in args.cells.split(",")]
    start = time.perf_counter()
    wins = {r: dict.fromkeys(budgets, 0) for r in radii}
    rows = []
    for name, solver in cells:
        prob = ays.problems.get(name)
        noise = torch.randn(args.eval_samples, 2, generator=torch.Generator().manual_seed(1))
        ref = prob.sample(args.eval_samples, torch.Generator().manual_seed(2))
        for steps in steps_list:
            base = {h: score(prob, solver, schedules.build(h, steps, 0.002, 80.0), noise, ref)
                    for h in ("karras", "loglinear")}
            for radius in radii:
                res = ays.optimize(prob.denoiser, prob.sample, steps=steps, solver=solver, seed=0, method="coordinate",
                                   samples=args.samples, max_sweeps=args.sweeps, patience=10**6, radius=radius)
                for b in budgets:
                    n, w = score(prob, solver, budget_schedule(res.history, b), noise, ref)
                    won = all(n < bn and w < bw for bn, bw in base.values())
                    wins[radius][b] += won
                    rows.append({"problem": name, "solver": solver, "steps": steps, "radius": radius,
                                 "budget": b, "nll": n, "sliced_w2": w, "won": won,
                                 **{f"{h}_{k}": v for h, (nv, wv) in base.items() for k, v in (("nll", nv),
                                                                                              ("sliced_w2", wv))}})
    seconds = time.perf_counter() - start
    H.write_rows(rows, args.out, "early_stopping", cmd=args.command, meta={"seconds": seconds})
    table = H.markdown_table(["search radius", *(f"B={b}" for b in budgets)],
                             [[r, *(wins[r][b] for b in budgets)] for r in radii])
    text = H.write_markdown(args.out, "early_stopping", "## Early stopping: cells won by the budget-B schedule",
                            [f"Cells won (of {len(cells) * len(steps_list)}) by the budget-B schedule against "
                             "karras and loglinear on both NLL and sliced W2."], [("", table)], args.command, seconds)
    print(text)
    return text


if __name__ == "__main__":
    main()

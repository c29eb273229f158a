"""How many sweeps should the paper's coordinate search take? (BENCHMARKS.md, section 5.)

For each toy cell (gmm-8x8 with dpmpp_2m_sde, gmm-8x4 with euler, gmm-6x6 with
stochastic_ddim; 6, 8, 10 steps) one long coordinate run is recorded with early
stopping's patience switched off; the schedule early stopping returns after a
budget of B sweeps is the best held-out one among the first B. Each budget's
schedule is sampled on the same noise and scored by NLL and sliced W2 against
karras and loglinear; a cell is won when it beats both on both metrics.

    python benchmarks/early_stopping.py                 # radius 0.3 and 1.0, 8,192 chains
    python benchmarks/early_stopping.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ays
from ays import schedules
from ays.metrics import nll, sliced_w2

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--sweeps", type=int, default=24)
    ap.add_argument("--radii", default="0.3,1.0")
    ap.add_argument("--out", default="benchmarks/results/early_stopping")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps_list, budgets, n_eval = (6, 8, 10), (2, 3, 4, 6, 8, 10, 12, 16, 24), 20_000
    if args.quick:
        args.samples, args.sweeps, steps_list, budgets, n_eval = 256, 4, (6,), (2, 4), 2000
    budgets = tuple(b for b in budgets if b <= args.sweeps)
    radii = [float(r) for r in args.radii.split(",")]
    start = time.perf_counter()
    wins = {r: dict.fromkeys(budgets, 0) for r in radii}
    rows = []
    for name, solver in CELLS:
        prob = ays.problems.get(name)
        noise = torch.randn(n_eval, 2, generator=torch.Generator().manual_seed(1))
        ref = prob.sample(n_eval, torch.Generator().manual_seed(2))
        for steps in steps_list:
            base = {h: score(prob, solver, schedules.build(h, steps, 0.002, 80.0), noise, ref)
                    for h in ("karras", "loglinear")}
            for radius in radii:
                res = ays.optimize(prob.denoiser, prob.sample, steps=steps, solver=solver, seed=0,
                                   samples=args.samples, max_sweeps=args.sweeps, patience=10**6, radius=radius,
        method="coordinate")
                for b in budgets:
                    n, w = score(prob, solver, budget_schedule(res.history, b), noise, ref)
                    won = all(n < bn and w < bw for bn, bw in base.values())
                    wins[radius][b] += won
                    rows.append({"problem": name, "solver": solver, "steps": steps, "radius": radius,
                                 "budget": b, "nll": n, "sliced_w2": w, "won": won,
                                 **{f"{h}_{k}": v for h, (nv, wv) in base.items() for k, v in (("nll", nv),
                                                                                              ("sliced_w2", wv))}})
    lines = [f"Command: `python benchmarks/early_stopping.py{' --quick' if args.quick else ''}` "
             f"({(time.perf_counter() - start) / 60:.1f} min); cells won (of {len(CELLS) * len(steps_list)}) "
             "by the budget-B schedule against karras and loglinear on both NLL and sliced W2:", "",
             "| search radius | " + " | ".join(f"B={b}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    lines += [f"| {r} | " + " | ".join(str(wins[r][b]) for b in budgets) + " |" for r in radii]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "early_stopping.md").write_text(text + "\n")
    (out / "early_stopping.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

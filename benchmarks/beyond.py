"""Beyond the grids: the default method against every free schedule and every competing method, on mixtures
unlike the ones it was designed on, for four solvers at 6 and 10 steps.

Usage::

    python benchmarks/beyond.py            # every problem, 4 solvers × 6 and 10 steps, resumes per cell
    python benchmarks/beyond.py --quick    # gmm-8x8 and line-1d, 6 steps, small samples
    python benchmarks/beyond.py --problems aniso-64d --solvers euler --steps 10

Problems (:data:`PROBLEMS`): ``gmm-8x8`` (the README's; the default was designed on the grids) and
four shapes never used in its design: ``line-1d`` (one dimension, five components of unequal weights
and widths), ``aniso-2d`` (four anisotropic components, one of them needle-thin), ``uneq-8d`` (eight
dimensions, six components, weights 0.45 to 0.02, widths 0.01 to 0.4 per axis) and ``aniso-64d``
(64 dimensions, three components with per-axis widths spread over two decades). Each has its exact
denoiser (a diagonal Gaussian mixture, :class:`DiagonalMixture`, in float32).

Every cell (problem × solver × steps) runs, from the same evaluation noise (common random numbers),
the free schedules (karras, loglinear, time_uniform, kl_optimal c = 0.5, beta), the default
(``ays.optimize`` with nothing set: ``method="ays"`` at its default budget), and ``gits``, ``oss``,
``ld3`` and ``dmn`` at their defaults. Scores: sliced W2 to fresh data (``seeds`` independent sets
of ``samples`` samples, the same noise and data for every method within a seed) and the off-mode mass
(the share of samples outside every component's 99.9 % ellipsoid). A comparison is a paired
difference over the seeds: mean ± t(0.975)·sd/√seeds; "better"/"worse" when that interval excludes
0, else "tied". Each cell is written to ``cells/`` as it finishes and skipped when found.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ays import metrics, problems, schedules, solvers
from ays.io import atomic_write_json, atomic_write_text
from ays.optimize import ays as A
from ays.optimize import optimize
from ays.optimize.task import Task
from ays.optimize.teacher import grid_levels
from ays.seeds import seed_for

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.beyond
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

SOLVERS = ("euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde")
HEURISTICS = ("karras", "loglinear", "time_uniform", "kl_optimal", "beta")
OPTIMISERS = ("ays", "gits", "oss", "ld3", "dmn")
COMPETITORS = ("gits", "oss", "ld3", "dmn")
#: The default's version the cells were run with: a cell of another one has its default (and audit) run again
AYS_VERSION = "portfolio-3: coupled evidence against the ODE trajectory, the sharpest of the tied, two-sided gate"
T975 = {2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 7: 2.447, 8: 2.365, 10: 2.262}  # t quantiles by seeds


class DiagonalMixture:
    """A Gaussian mixture with per-axis widths: ``means [K, d]``, ``stds [K, d]``, ``weights [K]``; exact denoiser.

    ``D(x, σ) = Σ_k r_k(x) (μ_k + s_k²/(s_k² + σ²) (x − μ_k))`` with ``r_k ∝ w_k N(x; μ_k, diag(s_k² + σ²))``
    (the posterior mean of each component, weighted by its posterior probability), in float32, without
    in-place writes (LD3 differentiates through it).
    """

    def __init__(self, name: str, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, design: bool = False) -> None:
        self.name, self.design = name, design
        self.means = means.to(torch.float64)
        self.stds = stds.to(torch.float64).expand_as(self.means).clone()
        self.weights = (weights / weights.sum()).to(torch.float64)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._mu, self._s2 = self.means.float(), (self.stds**2).float()
        self._logw = self.weights.log().float()

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1).float()
        sg2 = sigma.float().reshape(-1, 1, 1) ** 2
        v = self._s2[None] + sg2  # [B, K, d]
        diff = xf[:, None, :] - self._mu[None]
        logits = self._logw[None] - 0.5 * (diff * diff / v + torch.log(v)).sum(dim=2)
        r = torch.softmax(logits, dim=1)[..., None]
        post = self._mu[None] + self._s2[None] / v * diff
        return (r * post).sum(dim=1).reshape(x.shape).to(x.dtype)

    def off_mode(self, x: torch.Tensor) -> float:
        """Share of samples outside every component's 99.9 % ellipsoid (squared Mahalanobis distance above
        the chi² quantile of ``d`` degrees of freedom, by Wilson-Hilferty)."""
        d = self.dim
        q = d * (1 - 2 / (9 * d) + 3.09 * math.sqrt(2 / (9 * d))) ** 3
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        m2 = torch.stack([(((xf - mu) / s) ** 2).sum(dim=1) for mu, s in zip(self.means, self.stds)], dim=1)
        return float((m2.min(dim=1).values > q).double().mean())


def _grid_8x8() -> DiagonalMixture:
    base = problems.get("gmm-8x8")
    return DiagonalMixture("gmm-8x8", base.means, base.stds[:, None].expand_as(base.means), base.weights,
                           base.sigma_min, base.sigma_max, design=True)


def _make(name: str) -> DiagonalMixture:
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    f64 = torch.float64
    if name == "line-1d":
        means = torch.tensor([[-2.0], [-0.6], [0.0], [0.9], [2.5]], dtype=f64)
        stds = torch.tensor([[0.3], [0.05], [0.01], [0.15], [0.4]], dtype=f64)
        return DiagonalMixture(name, means, stds, torch.tensor([0.3, 0.1, 0.05, 0.35, 0.2], dtype=f64))
    if name == "aniso-2d":
        means = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, 1.8], [0.2, -1.5]], dtype=f64)
        stds = torch.tensor([[0.6, 0.02], [0.05, 0.5], [0.2, 0.2], [0.01, 0.01]], dtype=f64)
        return DiagonalMixture(name, means, stds, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=f64))
    if name == "uneq-8d":
        means = 1.5 * torch.randn(6, 8, generator=g, dtype=f64)
        stds = torch.exp(torch.empty(6, 8, dtype=f64).uniform_(math.log(0.01), math.log(0.4), generator=g))
        return DiagonalMixture(name, means, stds, torch.tensor([0.45, 0.25, 0.15, 0.08, 0.05, 0.02], dtype=f64))
    if name == "aniso-64d":
        means = 0.5 * torch.randn(3, 64, generator=g, dtype=f64)
        stds = torch.exp(torch.empty(3, 64, dtype=f64).uniform_(math.log(0.005), math.log(0.5), generator=g))
        return DiagonalMixture(name, means, stds, torch.tensor([0.6, 0.3, 0.1], dtype=f64))
    if name == "gmm-8x8":
        return _grid_8x8()
    raise SystemExit(f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)}")


PROBLEMS = ("gmm-8x8", "line-1d", "aniso-2d", "uneq-8d", "aniso-64d")


def problem(name: str) -> DiagonalMixture:
    return _make(name)


def sample(solver: str, denoiser: Any, noise: torch.Tensor, sigmas: torch.Tensor, seed: int) -> torch.Tensor:
    """``solver`` from ``noise · sigmas[0]`` over ``to_sampling(sigmas)``, solver noise from ``seed`` (CRN)."""
    s = schedules.to_sampling(sigmas)
    return solvers.get(solver)(denoiser, noise * float(s[0]), s, generator=torch.Generator().manual_seed(seed))


def schedules_of(prob: DiagonalMixture, solver: str, n: int, methods: Sequence[str] = (*HEURISTICS, *OPTIMISERS),
                 ) -> dict[str, tuple[torch.Tensor, int, float]]:
    """Every method's schedule for one cell: (sigmas, calls spent finding it, seconds)."""
    lo, hi = prob.sigma_min, prob.sigma_max
    found = {h: (schedules.build(h, n, lo, hi, **({"c": 0.5} if h == "kl_optimal" else {})), 0, 0.0)
             for h in HEURISTICS if h in methods}
    for m in (m for m in OPTIMISERS if m in methods):
        t = time.time()
        kw = {} if m == "ays" else {"method": m}
        res = optimize(prob.denoiser, prob.sample, steps=n, solver=solver, seed=0, sigma_min=lo, sigma_max=hi,
                       progress=None, **kw)
        found[m] = (res.sigmas, res.calls, time.time() - t)
        if m == "ays":
            found["_ays_history"] = res.history  # type: ignore[assignment]
    return found


def audit(prob: DiagonalMixture, solver: str, n: int, history: list[dict[str, Any]],
          score: Any) -> dict[str, Any]:
    """Every candidate of the default's portfolio, scored by every statistic on its own evidence sets (the same
    noises, Brownian paths and teacher as the default's run) and by the final measures (``score``); and, per
    statistic, the schedule the default would return with it (choice, gate on the fresh set)."""
    task = Task(denoiser=prob.denoiser, data=prob.sample, steps=n, solver=solver, sigma_min=prob.sigma_min,
                sigma_max=prob.sigma_max, seed=0, samples=64, early_stopping=True, init=None, noise=None,
                checkpoint=None, resume=False, batch_size=None, progress=None, model=None, method="ays")
    opt = A.SelectOptions()
    plan = next(h for h in history if h["stage"] == "plan")
    levels = grid_levels(task, opt.teacher_grid, 7.0)
    sets = A.gather_evidence(task, plan["rows"], plan["fresh"], levels, opt.teacher_refine, opt.reference_steps,
                             None)[:2]
    h = A.local_bandwidth(sets[0].target)
    cands = [r for r in history if r["stage"] == "select"]
    out = []
    xs: list[list[torch.Tensor]] = []
    for r in cands:
        sig = torch.tensor(r["sigmas"], dtype=torch.float64)
        row: dict[str, Any] = {k: r.get(k) for k in ("family", "heuristic", "c", "lambda", "free", "sigmas")}
        xs.append([])
        for half, ev in zip(("choose", "fresh"), sets):
            x = A.run_rows(solver, prob.denoiser, ev.noise, sig, slice(0, ev.noise.shape[0]), ev.tree)
            x = x.reshape(x.shape[0], -1).to(torch.float64)
            xs[-1].append(x)
            row[half] = {st: A.statistic(st, x, ev.target, h) for st in A.STATISTICS}
        row.update(score(sig))
        out.append(row)
    ref = sets[0].reference
    for r, x in zip(out, xs):
        r["precision"] = float(A.precision(x[0], ref).mean())
    sharp = [r["precision"] for r in out]
    by: dict[str, Any] = {}
    for st in A.STATISTICS:  # the default's own rule (ays.optimize.ays.choose) with each statistic
        values = [r["choose"][st] for r in out]
        pick = A.sharpest_of_best(values, sharp, range(len(out)), opt.tie)
        free = A.sharpest_of_best(values, sharp, [k for k in range(len(out)) if out[k]["free"]], opt.tie)
        z = z_sharp = None
        result = pick
        if not out[pick]["free"]:
            _, z = A.gain_z(st, sets[1].target, xs[free][1], xs[pick][1], h, seed_for(0, "select", "bootstrap"))
            z_sharp = A.sharpness_z(xs[free][1], xs[pick][1], ref)
            result = pick if A.gate_keeps(z, z_sharp, opt.significance) else free
        by[st] = {"pick": pick, "best_free": free, "z": z, "z_precision": z_sharp, "result": result}
    return {"candidates": out, "by_statistic": by}


def run_cell(prob: DiagonalMixture, solver: str, n: int, seeds: int, samples: int,
             old: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every method of one cell, scored on ``seeds`` sets of ``samples`` (the same for every method).

    ``old``: a cell of an earlier default (another :data:`AYS_VERSION`): only the default and its audit are
    run again, the other methods' rows are kept.
    """
    t0 = time.time()
    found = schedules_of(prob, solver, n, ("ays",) if old else (*HEURISTICS, *OPTIMISERS))
    history = found.pop("_ays_history")  # type: ignore[misc]
    choice = next(h for h in history if h["stage"] == "choice")
    gate = next((h for h in history if h["stage"] == "validate"), None)
    noises = [torch.randn(samples, prob.dim, generator=torch.Generator().manual_seed(1000 + k), dtype=torch.float64)
              for k in range(seeds)]
    data = [prob.sample(samples, torch.Generator().manual_seed(2000 + k)) for k in range(seeds)]

    def score(sig: torch.Tensor) -> dict[str, list[float]]:
        sw2, off = [], []
        for k in range(seeds):
            x = sample(solver, prob.denoiser, noises[k], sig, seed=3000 + k)
            sw2.append(metrics.sliced_w2(x, data[k], generator=torch.Generator().manual_seed(4000 + k)).value)
            off.append(prob.off_mode(x))
        return {"sw2": sw2, "off_mode": off}

    rows: dict[str, Any] = dict(old["methods"]) if old else {}
    for method, (sig, calls, secs) in found.items():
        rows[method] = {"sigmas": [float(v) for v in sig.tolist()], "calls": calls, "seconds": secs, **score(sig)}
    rows = {m: rows[m] for m in (*HEURISTICS, *OPTIMISERS)}
    return {"audit": audit(prob, solver, n, history, score), "ays_version": AYS_VERSION,
            "problem": prob.name, "design": prob.design, "solver": solver, "steps": n, "seeds": seeds,
            "samples": samples, "methods": rows, "ays_choice": {"family": choice["family"], "why": choice["why"],
                                                                  "gate_z": None if gate is None else gate["z"]},
            "seconds": time.time() - t0 + (old["seconds"] if old else 0.0)}


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % half width of the paired differences ``a − b`` over seeds."""
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    k = d.numel()
    return float(d.mean()), (T975.get(k, 1.96) * float(d.std(unbiased=True)) / math.sqrt(k) if k > 1 else 0.0)


def verdict(a: Sequence[float], b: Sequence[float]) -> str:
    mean, half = paired(a, b)
    return "tied" if abs(mean) <= half else ("better" if mean < 0 else "worse")


def mean(v: Sequence[float]) -> float:
    return sum(v) / len(v)


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell the best free schedule (by mean sliced W2), the default against it and against each competitor."""
    out: dict[str, Any] = {"cells": len(cells), "wins": 0, "better": 0, "worse": 0, "off_worse": 0,
                           "vs": {m: {"better_or_tied": 0, "worse": 0} for m in COMPETITORS}, "families": {},
                           "per_cell": []}
    for c in cells:
        ms = c["methods"]
        best = min(HEURISTICS, key=lambda h: mean(ms[h]["sw2"]))
        me = ms["ays"]
        v = verdict(me["sw2"], ms[best]["sw2"])
        out["wins"] += mean(me["sw2"]) < mean(ms[best]["sw2"])
        out["better"] += v == "better"
        out["worse"] += v == "worse"
        off_v = verdict(me["off_mode"], ms[best]["off_mode"])
        out["off_worse"] += off_v == "worse"
        for m in COMPETITORS:
            vm = verdict(me["sw2"], ms[m]["sw2"])
            out["vs"][m]["better_or_tied" if vm != "worse" else "worse"] += 1
        fam = c["ays_choice"]["family"]
        if c["ays_choice"]["why"].startswith("not beyond noise"):  # the gate returned the best free schedule
            fam = f"free (gate; chosen {fam})"
        out["families"][fam] = out["families"].get(fam, 0) + 1
        out["per_cell"].append({"problem": c["problem"], "solver": c["solver"], "steps": c["steps"],
                                "best_free": best, "verdict": v, "off_verdict": off_v, "family": fam})
    return out


def markdown(cells: list[dict[str, Any]], command: str) -> str:
    methods = (*HEURISTICS, *OPTIMISERS)
    s = summarise(cells)
    n = max(1, s["cells"])
    lines = [f"Command: `{command}`", "", f"Cells: {s['cells']} (problem × solver × steps); sliced W2 to fresh data, "
             "mean over the seeds (lower is better; the best in bold); [off-mode mass, %].", ""]
    body = []
    for c in cells:
        ms = c["methods"]
        best = min(mean(ms[m]["sw2"]) for m in methods)
        vals = []
        for m in methods:
            v = f"{mean(ms[m]['sw2']):.4f}"
            vals.append((f"**{v}**" if mean(ms[m]["sw2"]) == best else v) + f" [{100 * mean(ms[m]['off_mode']):.1f}]")
        body.append([c["problem"] + ("" if c["design"] else " (new)"), c["solver"], c["steps"], *vals])
    lines += [H.markdown_table(["problem", "solver", "n", *methods], body), ""]
    lines.append("Verdicts of the default (paired over seeds, 95 %) and the family it returned:")
    lines.append("")
    body = [[p["problem"], p["solver"], p["steps"], p["best_free"], p["verdict"], p["off_verdict"], p["family"]]
            for p in s["per_cell"]]
    lines += [H.markdown_table(["problem", "solver", "n", "best free", "sW2 vs best free", "off-mode vs best free",
                                "returned"], body), ""]
    calls = {m: sorted(c["methods"][m]["calls"] for c in cells) for m in OPTIMISERS}
    lines += ["Denoiser calls spent finding the schedule (median over cells): "
              + ", ".join(f"{m} {v[len(v) // 2]:,}" for m, v in calls.items() if v), ""]
    lines.append("### Summary")
    lines.append("")
    lines.append(f"- the default beats the best free schedule (mean sliced W2) in {s['wins']}/{s['cells']} cells "
                 f"({100 * s['wins'] / n:.0f} %; target ≥ 80 %); significantly better in {s['better']}, "
                 f"significantly worse in {s['worse']} (target 0)")
    lines.append(f"- its off-mode mass is significantly above the best free schedule's in {s['off_worse']} cells "
                 "(target 0)")
    for m in COMPETITORS:
        b = s["vs"][m]["better_or_tied"]
        lines.append(f"- better than or tied with `{m}` in {b}/{s['cells']} cells ({100 * b / n:.0f} %; target ≥ 90 %)")
    families = ", ".join(f"{k} {v}" for k, v in sorted(s["families"].items()))
    lines.append(f"- the family the default returned: {families}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    ap = H.arguments(__doc__.split("\n")[0], "beyond", seeds=5, samples=4096)
    ap.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated problem names")
    ap.add_argument("--steps", default="6,10", help="comma-separated step counts")
    ap.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated solvers")
    ap.add_argument("--render", action="store_true", help="only re-render the Markdown from the cells found")
    args = H.parse(ap, argv, {"problems": "gmm-8x8,line-1d", "steps": "6", "seeds": 2, "samples": 1024})
    cell_dir = args.out / "cells"
    cell_dir.mkdir(exist_ok=True)
    if not args.render:
        for name in args.problems.split(","):
            prob = problem(name)
            for solver in args.solvers.split(","):
                for n in (int(s) for s in args.steps.split(",")):
                    path = cell_dir / f"{name}-{solver}-{n}.json"
                    old = json.loads(path.read_text()) if path.exists() else None
                    if old is not None and old.get("ays_version") == AYS_VERSION:
                        continue
                    cell = run_cell(prob, solver, n, args.seeds, args.samples, old)
                    atomic_write_json(path, cell)
                    ms = cell["methods"]
                    print(f"[{name}] {solver:>15} n={n:<2} " + " ".join(f"{m} {mean(ms[m]['sw2']):.4f}" for m in ms)
                          + f" | ays -> {cell['ays_choice']['family']} ({cell['seconds']:.0f}s)", flush=True)
    order = {p: i for i, p in enumerate(PROBLEMS)}
    cells = [json.loads(p.read_text()) for p in cell_dir.glob("*.json")]
    cells.sort(key=lambda c: (order.get(c["problem"], 99), SOLVERS.index(c["solver"]), c["steps"]))
    rows = [{"problem": c["problem"], "solver": c["solver"], "steps": c["steps"], "method": m, "calls": r["calls"],
             "sw2": mean(r["sw2"]), "off_mode": mean(r["off_mode"]), "sigmas": r["sigmas"]}
            for c in cells for m, r in c["methods"].items()]
    H.write_rows(rows, args.out, "beyond_results", cmd=args.command, meta={"summary": summarise(cells)})
    text = markdown(cells, args.command)
    atomic_write_text(args.out / "beyond_table.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()

"""Beyond the paper: heuristics, the paper's optimiser, the global optimiser and its evidence-based choice,
the solver-aware bound and two competing methods, on exact problems, for four solvers at 5/10/20 steps.

Usage::

    python benchmarks/beyond.py            # the full table (gmm-8x8, gmm-8x4, gmm-6x6, digits)
    python benchmarks/beyond.py --quick    # gmm-8x8 only, 5 and 10 steps, small samples
    python benchmarks/beyond.py --problems gmm-8x8,gmm-6x6 --ablation   # + ays with the 2M bound as the end
    python benchmarks/beyond.py --quick --select '{"select": "mmd"}'      # another discrepancy for ays

Every method sees the same exact denoiser. Samples of each schedule are drawn from the same
evaluation noise (common random numbers) with :func:`ays.schedules.to_sampling` applied, and
scored against fresh data: sliced W2 (all problems), NLL under the true density and dropped
modes (the grids), and denoiser calls spent finding the schedule. The many-step reference
(256 steps of DPM-Solver++(2M)) gives the modes a good sampler keeps.

Methods: ``karras``, ``loglinear``, ``time_uniform``, ``kl_optimal`` (c = 0.5): the four
heuristics; ``coordinate``: the paper's Alg. 1 with early stopping (fewer Monte Carlo samples than
the paper's 8,192: its calls are also reported scaled to the table's chain count); ``dp``: the
global grid minimiser of the paper's KLUB; ``dp_solver``: the minimiser of the solver-aware
bound (differs from ``dp`` only for the 2M solvers); ``ays``: the global optimiser plus the
evidence-based choice (``method="ays"``); ``gits`` and ``dmn``: competing methods.

To keep the CPU time bounded, one KLUB table and one reference set per problem are shared by the
``dp``/``ays`` runs of all solvers and step counts; the calls reported for every cell count them
in full, as a standalone ``ays.optimize`` call would spend them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ays import metrics, problems, schedules, solvers
from ays.io import atomic_write_text
from ays.klub import table as T
from ays.optimize import dp as D
from ays.optimize import optimize

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.beyond
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

PAPER_SAMPLES = 8192  # Monte Carlo samples per KLUB estimate in the paper
SOLVERS = ("euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde")
HEURISTICS = ("karras", "loglinear", "time_uniform", "kl_optimal")
OPTIMISERS = ("coordinate", "dp", "dp_solver", "ays", "ays_ungated", "ays_sw2", "gits", "dmn")

# Sample sizes per problem kind: (evaluation, table chains, selection samples, coordinate samples)
SIZES = {
    "full": {"gmm": (4096, 4096, 2048, 128), "digits": (768, 1024, 512, 32)},
    "quick": {"gmm": (2048, 2048, 512, 128), "digits": (512, 512, 128, 32)},
}


class FastMixture:
    """The problem's exact mixture denoiser, computed in float32 without chunking (2-4× faster on a CPU).

    Same formula as :meth:`ays.problems.GaussianMixture.denoiser`; checked against it at start-up.
    """

    def __init__(self, prob: Any) -> None:
        self.prob = prob
        self.mu = prob.means.to(torch.float32)
        self.mu2 = (self.mu * self.mu).sum(1)
        self.s2 = (prob.stds**2).to(torch.float32)
        self.logw = torch.log(prob.weights).to(torch.float32)
        self.atoms = bool((prob.stds == 0).all())
        self.d = self.mu.shape[1]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1).to(torch.float32)
        sg2 = sigma.to(torch.float32).reshape(-1, 1) ** 2
        d2 = ((xf * xf).sum(1, keepdim=True) - 2.0 * xf @ self.mu.T + self.mu2[None, :]).clamp_min(0.0)
        if self.atoms:  # empirical data: every component has variance sigma², the pull is total
            r = torch.softmax(self.logw[None, :] - 0.5 * d2 / sg2, dim=1)
            out = r @ self.mu
        else:
            v = self.s2[None, :] + sg2
            r = torch.softmax(self.logw[None, :] - 0.5 * d2 / v - (0.5 * self.d) * torch.log(v), dim=1)
            rb = r * (sg2 / v)
            out = xf * (1.0 - rb.sum(1, keepdim=True)) + rb @ self.mu
        return out.reshape(x.shape).to(x.dtype)

    def check(self) -> float:
        """Largest deviation from the library's float64 denoiser over noise levels 0.002..80."""
        x0 = self.prob.sample(512, torch.Generator().manual_seed(99))
        worst = 0.0
        for s in (0.002, 0.02, 0.2, 2.0, 20.0, 80.0):
            x = x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(s * 1000)))
            sig = torch.full((x.shape[0],), s)
            worst = max(worst, float((self(x, sig) - self.prob.denoiser(x, sig)).abs().max()))
        return worst


class Problem:
    """A named problem whose ``denoiser`` is the fast exact one (``log_prob``, mixture fields kept)."""

    def __init__(self, name: str) -> None:
        self.base = problems.get(name)
        self.name = name
        self.denoiser = FastMixture(self.base)
        self.sample = self.base.sample
        self.sigma_min, self.sigma_max = self.base.sigma_min, self.base.sigma_max

    def __getattr__(self, key: str) -> Any:
        return getattr(self.base, key)


_DMN: dict[tuple[int, str, float, float], tuple[torch.Tensor, float]] = {}


def sample(solver: str, denoiser: Any, noise: torch.Tensor, sigmas: torch.Tensor, seed: int) -> torch.Tensor:
    """``solver`` from ``noise · sigmas[0]`` over ``to_sampling(sigmas)``, solver noise from ``seed`` (CRN)."""
    s = schedules.to_sampling(sigmas)
    return solvers.get(solver)(denoiser, noise * float(s[0]), s, generator=torch.Generator().manual_seed(seed))


def evaluate(prob: Any, solver: str, sigmas: torch.Tensor, noise: torch.Tensor, fresh: torch.Tensor,
             kept: set[int] | None, is_grid: bool, digits_ref: torch.Tensor | None) -> dict[str, Any]:
    x = sample(solver, prob.denoiser, noise, sigmas, seed=12345)
    row: dict[str, Any] = {"sw2": metrics.sliced_w2(x, fresh).value}
    if is_grid:
        row["nll"] = metrics.nll(x, prob.base).value
        cov = metrics.mode_coverage(x, prob.base)
        row["dropped"] = cov.n_dropped
        row["dropped_kept"] = len(set(cov.dropped) & kept) if kept is not None else None
        row["dropped_modes"] = sorted(int(m) for m in cov.dropped)
        row["tv"] = cov.tv
    if digits_ref is not None:
        row["fd"] = metrics.digits_fd(x, digits_ref)
    return row


def log(msg: str) -> None:
    print(msg, flush=True)


def run_problem(name: str, mode: str, steps_list: list[int], seed: int, solver_list: Sequence[str],
                ablation: bool = False, select_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    torch.manual_seed(0)  # nothing here draws from it; set only so that stray global draws are reproducible
    prob = Problem(name)
    err = prob.denoiser.check()
    if err > 1e-3:
        raise SystemExit(f"the fast denoiser of {name} deviates from the library's by {err:.2e}")
    log(f"[{name}] fast float32 denoiser within {err:.1e} of the library's float64 one")
    is_grid = name.startswith("gmm")
    n_eval, n_table, _, n_coord = SIZES[mode]["gmm" if is_grid else "digits"]
    lo, hi = prob.sigma_min, prob.sigma_max
    shape = tuple(prob.sample(1, torch.Generator().manual_seed(0)).shape[1:])
    fresh = prob.sample(n_eval, torch.Generator().manual_seed(seed + 2000))
    noise = torch.randn((n_eval, *shape), generator=torch.Generator().manual_seed(seed + 1000), dtype=fresh.dtype)
    t0 = time.time()

    # The many-step reference: which modes does a good sampler keep?
    kept = None
    digits_ref = None
    if is_grid:
        ref = sample("dpmpp_2m", prob.denoiser, noise, schedules.karras(256, lo, hi), seed=1)
        cov = metrics.mode_coverage(ref, prob.base)
        kept = set(range(cov.counts.numel())) - set(cov.dropped)
        log(f"[{name}] reference: sw2 {metrics.sliced_w2(ref, fresh).value:.4f}, dropped {cov.n_dropped}")
    else:
        digits_ref = prob.sample(n_eval, torch.Generator().manual_seed(seed + 3000))

    # Shared by the dp cells: one table (ays builds its own, a small one, inside its budget).
    t = time.time()
    table = T.build_table(prob.denoiser, prob.sample, T.log_grid(lo, hi, 128), chains=n_table, seed=seed)
    t_table = time.time() - t
    log(f"[{name}] table {table.calls} rows in {t_table:.0f}s")

    rows: list[dict[str, Any]] = []
    for n in steps_list:
        shared: dict[str, tuple[torch.Tensor, int, float]] = {}
        t = time.time()
        res = optimize(prob.denoiser, prob.sample, steps=n, method="coordinate", samples=n_coord, seed=seed)
        shared["coordinate"] = (res.sigmas, res.calls, time.time() - t)
        t = time.time()
        res = optimize(prob.denoiser, prob.sample, steps=n, method="gits", seed=seed)
        shared["gits"] = (res.sigmas, res.calls, time.time() - t)
        ddim = D.schedules_from_table(table, n, objective="ddim")[n][0]
        shared["dp"] = (ddim, table.calls, t_table)
        for solver in solver_list:
            found = dict(shared)
            for h in HEURISTICS:
                found[h] = (schedules.build(h, n, lo, hi), 0, 0.0)
            t = time.time()
            solver_obj = D.DPOptions().resolved_objective(solver)  # "dp"'s default: the solver's own bound
            own = D.schedules_from_table(table, n, objective=solver_obj, solver=solver)[n][0]
            found["dp_solver"] = (own, table.calls, t_table + time.time() - t)
            # The default method at its default budget; "ays_ungated": without the significance gate;
            # "ays_sw2": the unpaired sliced W2 to an independent reference set (the evidence ablation).
            variants: list[tuple[str, dict[str, Any]]] = [
                ("ays", {}), ("ays_ungated", {"validate": False}), ("ays_sw2", {"select": "sw2"})]
            if ablation and solver_obj == "solver":
                variants.append(("ays_2m_end", {"objective": "solver"}))
            for method, extra in variants:
                t = time.time()
                res = optimize(prob.denoiser, prob.sample, steps=n, solver=solver, seed=seed, model=prob.name,
                               **{**extra, **(select_options or {})})
                found[method] = (res.sigmas, res.calls, time.time() - t)
            t = time.time()
            key = (n, solver, lo, hi)
            if key not in _DMN:  # DMN never sees the model: its schedule depends on the range only
                res = optimize(prob.denoiser, prob.sample, steps=n, method="dmn", solver=solver)
                _DMN[key] = (res.sigmas, time.time() - t)
            found["dmn"] = (_DMN[key][0], 0, _DMN[key][1])
            for method, (sig, calls, secs) in found.items():
                row = {"problem": name, "solver": solver, "steps": n, "method": method, "calls": calls,
                       "seconds": secs, "sigmas": [float(v) for v in sig.tolist()]}
                row.update(evaluate(prob, solver, sig, noise, fresh, kept, is_grid, digits_ref))
                if kept is not None:
                    row["kept_modes"] = sorted(kept)
                rows.append(row)
            cell = {r["method"]: r for r in rows if r["problem"] == name and r["solver"] == solver and r["steps"] == n}
            best_h = min(HEURISTICS, key=lambda h: cell[h]["sw2"])
            log(f"[{name}] {solver:>15} n={n:<2} best heuristic {best_h} {cell[best_h]['sw2']:.4f} | "
                + " ".join(f"{m} {cell[m]['sw2']:.4f}" for m in OPTIMISERS)
                + f" | ays calls {cell['ays']['calls']} ({time.time() - t0:.0f}s)")
    return rows


def summarise(rows: list[dict[str, Any]], n_coord: dict[str, int], kept_modes: dict[str, list[int]]) -> dict[str, Any]:
    cells: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["problem"], r["solver"], r["steps"]), {})[r["method"]] = r
    for (p, _, _), c in cells.items():
        c["_kept"] = set(kept_modes.get(p, []))
    out: dict[str, Any] = {"cells": len(cells), "beats_best_heuristic": {}, "drops_kept_mode": {}, "calls_ratio": {}}
    for m in [m for m in OPTIMISERS if all(m in c for c in cells.values())]:
        wins = sum(c[m]["sw2"] < min(c[h]["sw2"] for h in HEURISTICS) for c in cells.values())
        out["beats_best_heuristic"][m] = wins / len(cells)
        out["drops_kept_mode"][m] = sum(bool(c[m].get("dropped_kept")) for c in cells.values())
        # the target of the default: no mode dropped that the reference keeps wherever some heuristic keeps it
        lost = 0
        for c in cells.values():
            if "dropped_modes" in c[m]:
                kept_by_some = set().union(*(c["_kept"] - set(c[h]["dropped_modes"]) for h in HEURISTICS))
                lost += bool(set(c[m]["dropped_modes"]) & kept_by_some)
        out.setdefault("drops_mode_a_heuristic_keeps", {})[m] = lost
    ratios = []
    for (p, _, _), c in cells.items():
        # the paper's coordinate search at its 8,192 samples per estimate, against ays at its default budget
        ratios.append(c["coordinate"]["calls"] * PAPER_SAMPLES / n_coord[p] / c["ays"]["calls"])
    ratios.sort()
    out["calls_ratio"] = {"min": ratios[0], "median": ratios[len(ratios) // 2], "max": ratios[-1]}
    ten = sorted(c["ays"]["calls"] for (_, _, n), c in cells.items() if n == 10)
    out["ays_calls_at_10_steps"] = ten[-1] if ten else None
    return out


def cells_of(rows: list[dict[str, Any]], problem: str) -> list[tuple[str, int, dict[str, dict[str, Any]]]]:
    """The (solver, steps, {method: row}) cells of one problem, in table order."""
    out = []
    for solver in SOLVERS:
        for n in sorted({r["steps"] for r in rows}):
            cell = {r["method"]: r for r in rows if (r["problem"], r["solver"], r["steps"]) == (problem, solver, n)}
            if cell:
                out.append((solver, n, cell))
    return out


def metric_table(rows: list[dict[str, Any]], problem: str, methods: tuple[str, ...], metric: str) -> str:
    """One metric of one problem: a line per (solver, steps), a column per method."""
    body = [[solver, n, *(f"{cell[m][metric]:.3f}" for m in methods)] for solver, n, cell in cells_of(rows, problem)]
    return H.markdown_table(["solver", "n", *methods], body)


def summary_of(rows: list[dict[str, Any]], sizes: dict[str, Any]) -> dict[str, Any]:
    """:func:`summarise` with each problem's table chains and coordinate samples from ``sizes``."""
    kind = {p: ("gmm" if p.startswith("gmm") else "digits") for p in {r["problem"] for r in rows}}
    kept = {p: r["kept_modes"] for r in rows if "kept_modes" in r for p in [r["problem"]]}
    return summarise(rows, {p: sizes[k][3] for p, k in kind.items()}, kept)


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any], command: str, seconds: float, cpu: float) -> str:
    methods = (*HEURISTICS, *OPTIMISERS)
    lines = [f"Command: `{command}` ({seconds / 60:.1f} min wall clock, {cpu / 60:.1f} min CPU time of this process)",
             ""]
    problems_seen = sorted({r["problem"] for r in rows}, key=lambda p: (p == "digits", p))
    for p in problems_seen:
        grid = p.startswith("gmm")
        lines.append(f"### {p}: sliced W2 to fresh data (lower is better)" + ("; [dropped modes]" if grid else ""))
        lines.append("")
        body = []
        for solver, n, cell in cells_of(rows, p):
            best = min(cell[m]["sw2"] for m in methods)
            vals = []
            for m in methods:
                v = f"{cell[m]['sw2']:.4f}"
                if cell[m]["sw2"] == best:
                    v = f"**{v}**"
                if grid and cell[m].get("dropped"):
                    v += f" [{cell[m]['dropped']}]"
                vals.append(v)
            body.append([solver, n, *vals])
        lines.append(H.markdown_table(["solver", "n", *methods], body))
        lines.append("")
        metric, title = ("nll", "NLL under the true density") if grid else ("fd", "Classifier-feature Fréchet distance")
        lines.append(f"{title} ({p}; lower is better{', blind to dropped modes' if grid else ''}):")
        lines += ["", metric_table(rows, p, methods, metric), ""]
    abl = [r for r in rows if r["method"] in ("ays_ddim_end", "ays_2m_end")]
    if abl:
        lines.append("### Ablation: which bound ends the path, for the 2M solvers (sliced W2)")
        lines.append("")
        lines.append("| problem | solver | n | dp (paper's bound) | dp_solver (2M bound) | ays, 2M-bound end "
                     "| ays, paper-bound end |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in abl:
            cell = {q["method"]: q for q in rows
                    if (q["problem"], q["solver"], q["steps"]) == (r["problem"], r["solver"], r["steps"])}
            two_m, paper_end = (r, cell["ays"]) if r["method"] == "ays_2m_end" else (cell["ays"], r)
            lines.append(f"| {r['problem']} | {r['solver']} | {r['steps']} | {cell['dp']['sw2']:.4f} | "
                         f"{cell['dp_solver']['sw2']:.4f} | {two_m['sw2']:.4f} | {paper_end['sw2']:.4f} |")
        lines.append("")
    lines.append("### Denoiser calls spent finding the schedule (median over cells)")
    lines.append("")
    lines.append("| problem | " + " | ".join(OPTIMISERS) + " |")
    lines.append("|---|" + "---|" * len(OPTIMISERS))
    for p in problems_seen:
        meds = []
        for m in OPTIMISERS:
            v = sorted(r["calls"] for r in rows if r["problem"] == p and r["method"] == m)
            meds.append(f"{v[len(v) // 2]:,}")
        lines.append(f"| {p} | " + " | ".join(meds) + " |")
    lines.append("")
    lines.append("### Summary")
    lines.append("")
    lines.append(f"- cells (problem × solver × steps): {summary['cells']}")
    for m in OPTIMISERS:
        lines.append(f"- `{m}` beats the best of the four heuristics on sliced W2 in "
                     f"{100 * summary['beats_best_heuristic'][m]:.0f}% of cells; cells where it drops a mode the "
                     f"many-step reference keeps: {summary['drops_kept_mode'][m]}")
        if m in summary.get("drops_mode_a_heuristic_keeps", {}):
            lines.append(f"  - cells where `{m}` drops a kept mode that some heuristic keeps: "
                         f"{summary['drops_mode_a_heuristic_keeps'][m]}")
    r = summary["calls_ratio"]
    lines.append(f"- the paper's coordinate search at {PAPER_SAMPLES:,} samples per estimate / `ays` at its default "
                 f"budget, in calls: min {r['min']:.1f}×, median {r['median']:.1f}×, max {r['max']:.1f}×")
    if summary.get("ays_calls_at_10_steps"):
        lines.append(f"- `ays` calls for a 10-step schedule (most over cells): {summary['ays_calls_at_10_steps']:,}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    ap = H.arguments(__doc__.split("\n")[0], "beyond", cells=False)
    ap.add_argument("--problems", default=None, help="comma-separated problem names")
    ap.add_argument("--steps", default=None, help="comma-separated step counts (default 5,10,20)")
    ap.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated solvers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--select", default=None, help="ays option overrides as JSON, e.g. '{\"select\": \"mmd\"}'")
    ap.add_argument("--ablation", action="store_true",
                    help="also run ays with the 2M solvers' bound as the path's end (ays_2m_end)")
    ap.add_argument("--render", default=None, help="only re-render the Markdown of a saved JSON (no runs)")
    args = H.parse(ap, argv, {"problems": "gmm-8x8", "steps": "5,10"})
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        text = markdown(doc["rows"], summary_of(doc["rows"], doc["sizes"]), doc["command"].strip(), doc["seconds"],
                        doc.get("cpu_seconds", 0.0))
        atomic_write_text(Path(args.render).parent / "beyond_table.md", text)
        print(text)
        return text
    mode = "quick" if args.quick else "full"
    names = args.problems.split(",") if args.problems else ["gmm-8x8", "gmm-8x4", "gmm-6x6", "digits"]
    steps = [int(s) for s in args.steps.split(",")] if args.steps else [5, 10, 20]
    start = time.time()
    cpu0 = time.process_time()
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += run_problem(name, mode, steps, args.seed, args.solvers.split(","), args.ablation,
                            json.loads(args.select) if args.select else None)
    summary = summary_of(rows, SIZES[mode])
    seconds, cpu = time.time() - start, time.process_time() - cpu0
    H.write_rows(rows, args.out, "beyond_results", cmd=args.command,
                 meta={"seconds": seconds, "cpu_seconds": cpu, "mode": mode, "sizes": SIZES[mode],
                       "select_overrides": args.select, "summary": summary})
    text = markdown(rows, summary, args.command, seconds, cpu)
    atomic_write_text(args.out / "beyond_table.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()

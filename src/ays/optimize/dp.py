"""The global optimiser: an exact dynamic programme over the KLUB table of a fine grid.

Long because it holds both programmes (the paper's bound and the solver-aware one), the
table's checkpointed build, the budget's sizes and the method, which ``ays`` builds on.

**The table** (:mod:`ays.klub.table`): nested forward chains over a fine grid ``g_0 < ... < g_{G−1}``
give ``M[k, j] = E||D(x_{g_k}, g_k) − D(x_{g_j}, g_j)||²`` for every pair of grid levels, and its
quadrature ``K[a, b]`` the estimated KLUB of every grid interval ``[g_a, g_b]``. Everything below
(every step count, the DDIM and the solver-aware bounds) is read from that one table.

**The programme.** With ``K`` the cost of every grid interval, the schedule of exactly
``n`` steps from ``sigma_max`` to ``sigma_min`` minimising the total is found by dynamic
programming in ``O(n·G²)`` (:func:`dp_paths`; all step counts up to ``n`` at once). For
the solver-aware bound of DPM-Solver++(2M) (:mod:`ays.klub.solver`) a step's cost
depends on the previous level too,

    cost(a, b; p) = K[a, b] + β(a, b, p)² · ½(g_a⁻² − g_b⁻²) · M[b, p],

so the state is the last interval and the programme is ``O(n·G³)``
(:func:`dp_paths_extrapolated`; the grid is thinned to ``solver_grid`` levels for it). The
cross term ``−2β∫t⁻³E<u, v>`` vanishes for the ideal denoiser (martingale property, see
:mod:`ays.klub.solver`); ``cross=True`` estimates it from the same table, by polarisation,
``2∫t⁻³E<u, v> = (K[a, p] − K[b, p]) − K[a, b] − ½(g_a⁻² − g_b⁻²)M[b, p]``.

**Off the grid** (``fine_grid``, the default of ``early_stopping=False``): the programme runs on
the table interpolated to a finer grid (:meth:`~ays.klub.table.KlubTable.refined`, no denoiser
call), so the levels of the minimiser are not held to the grid's.

A run checkpoints its table after every chunk of chains and, resumed, ends with the same table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ..klub import KlubDraws, estimate_schedule
from ..klub import solver as klub_solver
from ..klub.table import KlubTable, build_table, log_grid
from ..validate import AysError, check_positive, check_sigmas, check_steps
from .checkpoint import load_state, save_state
from .result import OptimizeResult
from .task import Task, register

__all__ = [
    "MINIMISER",
    "DPOptions",
    "check_fits",
    "dp",
    "dp_paths",
    "dp_paths_extrapolated",
    "extrapolation_penalty",
    "fit_budget",
    "grid_for",
    "schedules_from_table",
]

Tensor = torch.Tensor


# --------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------


def grid_for(task: Task, size: int) -> Tensor:
    """The grid of a task: log-spaced, or a discrete-time model's own levels in range.

    A discrete model with more than ``size`` levels in range keeps the levels nearest
    (in log-sigma) to a log-spaced grid of ``size`` points, ends included.
    """
    if not task.space.is_discrete:
        return log_grid(task.sigma_min, task.sigma_max, size)
    space = task.space
    ends = space.index(torch.tensor([task.sigma_min, task.sigma_max], dtype=torch.float64))
    t_lo, t_hi = int(ends[0]), int(ends[1])
    ts = torch.arange(t_lo, t_hi + 1)
    if ts.numel() > size:
        ts = torch.unique(space.index(log_grid(task.sigma_min, task.sigma_max, size)))
    return space.level(ts).to(torch.float64)


# --------------------------------------------------------------------------
# Dynamic programmes
# --------------------------------------------------------------------------


def dp_paths(cost: Tensor, steps: int | Sequence[int]) -> dict[int, tuple[Tensor, float]]:
    """Exact minimum-cost paths of ``n`` steps from the top grid index to 0, for each ``n`` in ``steps``.

    ``cost[a, b]`` (a < b) is the cost of the step from level ``b`` down to ``a``; entries on
    or below the diagonal are ignored. Returns ``{n: (indices [n + 1] decreasing, total)}``.
    One pass serves every step count: ``V_m[j]``, the least cost of reaching ``j`` in ``m``
    steps, is ``min_{b > j} V_{m−1}[b] + cost[j, b]``.
    """
    want = [steps] if isinstance(steps, int) else list(steps)
    want = [check_steps(n) for n in want]
    c = torch.as_tensor(cost, dtype=torch.float64)
    size = c.shape[0]
    if c.ndim != 2 or c.shape[1] != size:
        raise AysError("cost must be a square matrix")
    top = max(want)
    if top > size - 1:
        raise AysError(f"{top} steps need at least {top + 1} grid levels, the grid has {size}")
    valid = torch.ones(size, size, dtype=torch.bool).triu(1)
    cm = torch.where(valid, c, torch.full_like(c, math.inf))
    if torch.isnan(cm).any():
        raise AysError("cost holds NaN")
    v = torch.full((size,), math.inf, dtype=torch.float64)
    v[-1] = 0.0
    values: list[Tensor] = []  # values[m - 1][j] = V_m[j]
    args: list[Tensor] = []  # args[m - 1][j]: the level before j on the best m-step path
    for _ in range(top):
        v, arg = (cm + v[None, :]).min(dim=1)
        values.append(v)
        args.append(arg)
    out: dict[int, tuple[Tensor, float]] = {}
    for n in want:
        total = float(values[n - 1][0])
        if not math.isfinite(total):
            raise AysError(f"no finite path of {n} steps on this grid")
        path = [0]
        j = 0
        for m in range(n, 0, -1):
            j = int(args[m - 1][j])
            path.append(j)
        out[n] = (torch.tensor(path[::-1], dtype=torch.long), total)
    return out


def dp_paths_extrapolated(
    cost: Tensor, penalty: Tensor, steps: int | Sequence[int], final_first_order: bool = True
) -> dict[int, tuple[Tensor, float]]:
    """Exact minimum of ``Σ_i cost[s_{i+1}, s_i] + penalty[s_{i+1}, s_i, s_{i−1}]`` over n-step paths.

    The first step (no previous level) and, with ``final_first_order``, the last one pay
    ``cost`` only. State: the last interval ``(a, b)``; ``O(n·G³)`` time, ``G³`` memory for
    ``penalty[a, b, p]`` (read for ``a < b < p``). Returns ``{n: (indices, total)}``.
    """
    want = [steps] if isinstance(steps, int) else list(steps)
    want = [check_steps(n) for n in want]
    c = torch.as_tensor(cost, dtype=torch.float64)
    size = c.shape[0]
    pen = torch.as_tensor(penalty, dtype=torch.float64)
    if pen.shape != (size, size, size):
        raise AysError(f"penalty must be [{size}, {size}, {size}], got {tuple(pen.shape)}")
    top = max(want)
    if top > size - 1:
        raise AysError(f"{top} steps need at least {top + 1} grid levels, the grid has {size}")
    inf = math.inf
    valid2 = torch.ones(size, size, dtype=torch.bool).triu(1)
    cm = torch.where(valid2, c, torch.full_like(c, inf))
    ar = torch.arange(size)
    valid3 = (ar[:, None, None] < ar[None, :, None]) & (ar[None, :, None] < ar[None, None, :])
    pen = torch.where(valid3, pen, torch.full_like(pen, inf))
    if torch.isnan(pen).any() or torch.isnan(cm).any():
        raise AysError("cost or penalty holds NaN")
    # V[a, b]: least cost of m steps from the top ending at a, with previous level b.
    v = torch.full((size, size), inf, dtype=torch.float64)
    v[:, -1] = cm[:, -1]
    stages: list[Tensor] = [v]
    args: list[Tensor] = [torch.full((size, size), size - 1, dtype=torch.long)]
    finals: dict[int, tuple[Tensor, Tensor]] = {}
    for m in range(2, top + 1):
        prev = stages[-1]  # [b, p]
        if m in want and final_first_order:
            best, arg = prev.min(dim=1)  # over p, no penalty on the final step
            finals[m] = (cm + best[None, :], arg[None, :].expand(size, size))
        total = prev[None, :, :] + pen  # [a, b, p]
        best3, arg3 = total.min(dim=2)
        v = cm + best3
        stages.append(v)
        args.append(arg3)
    out: dict[int, tuple[Tensor, float]] = {}
    for n in want:
        if n == 1:
            out[n] = (torch.tensor([size - 1, 0], dtype=torch.long), float(cm[0, -1]))
            continue
        if final_first_order:
            v_last, arg_last = finals[n]
        else:
            v_last, arg_last = stages[n - 1], args[n - 1]
        b = int(torch.argmin(v_last[0]))
        total = float(v_last[0, b])
        if not math.isfinite(total):
            raise AysError(f"no finite path of {n} steps on this grid")
        path = [0, b]
        a = 0
        p = int(arg_last[a, b])
        for m in range(n - 1, 0, -1):
            path.append(p)
            a, b = b, p
            if m == 1:
                break
            p = int(args[m - 1][a, b])
        idx = torch.tensor(path[::-1], dtype=torch.long)
        out[n] = (idx, total)
    return out


def extrapolation_penalty(
    table: KlubTable,
    solver: str,
    c: float = 0.5,
    cross: bool = False,
    eta: float = 1.0,
    solver_type: str = "midpoint",
    klub_matrix: Tensor | None = None,
) -> Tensor:
    """``penalty[a, b, p] = β²·½(g_a⁻² − g_b⁻²)·M[b, p]`` (− 2β·cross with ``cross``), +inf unless a < b < p."""
    g = table.grid
    size = g.numel()
    m = table.mean_sq
    ar = torch.arange(size)
    valid = (ar[:, None, None] < ar[None, :, None]) & (ar[None, :, None] < ar[None, None, :])
    ia, ib, ip = valid.nonzero(as_tuple=True)
    bet = klub_solver.beta(solver, g[ia], g[ib], g[ip], eta=eta, solver_type=solver_type)
    delta = 0.5 * (1.0 / g[ia] ** 2 - 1.0 / g[ib] ** 2)
    vals = bet * bet * delta * m[ib, ip]
    if cross:
        k = table.klub(c) if klub_matrix is None else klub_matrix
        two_cross = (k[ia, ip] - k[ib, ip]) - k[ia, ib] - delta * m[ib, ip]
        vals = vals - bet * two_cross
    pen = torch.full((size, size, size), math.inf, dtype=torch.float64)
    pen[ia, ib, ip] = vals
    return pen


def schedules_from_table(
    table: KlubTable,
    steps: int | Sequence[int],
    objective: str = "ddim",
    solver: str = "stochastic_ddim",
    c: float = 0.5,
    solver_grid: int = 128,
    cross: bool = False,
    final_first_order: bool = True,
    **solver_options: Any,
) -> dict[int, tuple[Tensor, float]]:
    """Optimal schedules (float64, decreasing, ``sigma_max`` → ``sigma_min``) for each step count.

    ``objective="ddim"``: the paper's bound, ``O(n·G²)``; ``"solver"``: the bound of
    ``solver`` (:mod:`ays.klub.solver`), ``O(n·G³)`` on at most ``solver_grid`` levels
    (every other level dropped until it fits, ends kept). Returns ``{n: (sigmas, cost)}``.
    """
    if objective not in ("ddim", "solver"):
        raise AysError(f"objective must be 'ddim' or 'solver', got {objective!r}")
    if objective == "solver" and klub_solver.bound_of(solver) == "2m":
        tab = table
        if table.size > solver_grid:
            # Thin evenly (in index = in log-sigma for a log grid), both ends kept.
            idx = torch.unique(torch.linspace(0, table.size - 1, solver_grid).round().long())
            tab = table.subset(idx)
        kmat = tab.klub(c)
        pen = extrapolation_penalty(tab, solver, c=c, cross=cross, klub_matrix=kmat, **solver_options)
        res = dp_paths_extrapolated(kmat, pen, steps, final_first_order=final_first_order)
        grid = tab.grid
    else:
        res = dp_paths(table.klub(c), steps)
        grid = table.grid
    return {n: (grid[idx].contiguous(), cost) for n, (idx, cost) in res.items()}


# --------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------


def check_option_names(options: Mapping[str, Any], known: Iterable[str], method: str) -> None:
    """An AysError naming every option of ``method`` not in ``known``, and the valid ones."""
    known = sorted(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise AysError(f"unknown option(s) for method {method!r}: {', '.join(unknown)}; valid: {', '.join(known)}")


def jsonable(options: dict[str, Any]) -> dict[str, Any]:
    """Options as they read back from JSON (tuples as lists), so a checkpoint's settings compare equal."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def fit_budget(total: Callable[[int], int], budget: int, minimum: int, method: str, what: str) -> int:
    """The largest count ``n >= minimum`` whose run costs ``total(n) <= budget`` calls (``total`` increasing).

    How every method turns ``budget=`` into its Monte Carlo size (chains, teacher noises,
    samples per estimate). A budget below ``total(minimum)`` is refused, naming that minimum.
    """
    if total(minimum) > budget:
        raise AysError(
            f"budget={budget:,} denoiser calls is too small for method {method!r}: "
            f"its minimum ({minimum} {what}) costs {total(minimum):,} calls"
        )
    lo, hi = minimum, minimum + 1
    while total(hi) <= budget:  # doubling, then bisection: total(lo) <= budget < total(hi)
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
    return lo


def check_fits(calls: int, budget: int | None, method: str) -> None:
    """Refuse a run whose options, all given explicitly, cost more than ``budget`` calls."""
    if budget is not None and calls > budget:
        raise AysError(f"method {method!r} with these options costs {calls:,} denoiser calls, over budget={budget:,}")


@dataclass(frozen=True)
class DPOptions:
    """Options of ``method="dp"`` (and of ``"ays"``, which adds the selection options)."""

    grid: int = 128  #: noise levels of the table (log-spaced; a discrete model's own levels)
    objective: str = "auto"  #: "ddim", "solver" (the target solver's bound) or "auto" ("solver" for dp, "ddim" for ays)
    c: float = 0.5  #: proposal scale of the quadrature (and of the reported KLUB)
    solver_grid: int = 128  #: at most this many levels for the O(n·G³) solver-aware programme
    cross: bool = False  #: estimate the cross term of the solver-aware bound (zero for ideal denoisers)
    chunk: int | None = None  #: chains per chunk (default: fit [chunk, G, d] in 32 MiB of float64)
    final_samples: int = 1024  #: fresh chains for the reported KLUB of the result (0: skip)
    also_steps: tuple[int, ...] = ()  #: other step counts read off the same table (in ``history``)
    #: levels of the interpolated table (:meth:`~ays.klub.table.KlubTable.refined`) the paper's bound is
    #: minimised on: the levels move off the grid at no extra calls (0: the grid itself; objective "ddim" only)
    fine_grid: int = 0

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def parse(cls, options: dict[str, Any], method: str = "dp") -> DPOptions:
        check_option_names(options, cls.fields(), method)
        opt = cls(**options)
        check_steps(opt.grid, name="grid", minimum=3)
        check_steps(opt.solver_grid, name="solver_grid", minimum=3)
        if opt.objective not in ("auto", "ddim", "solver"):
            raise AysError(f"objective must be 'auto', 'ddim' or 'solver', got {opt.objective!r}")
        check_positive(opt.c, name="c")
        if not isinstance(opt.cross, bool):
            raise AysError(f"cross must be True or False, got {opt.cross!r}")
        if opt.chunk is not None:
            check_steps(opt.chunk, name="chunk")
        if isinstance(opt.final_samples, bool) or not isinstance(opt.final_samples, int) or opt.final_samples < 0:
            raise AysError(f"final_samples must be an integer >= 0, got {opt.final_samples!r}")
        also = tuple(check_steps(n, name="also_steps") for n in opt.also_steps)
        if opt.fine_grid != 0:
            check_steps(opt.fine_grid, name="fine_grid", minimum=3)
        return cls(**{**asdict(opt), "c": float(opt.c), "also_steps": also})

    def resolved_objective(self, solver: str) -> str:
        if self.objective != "auto":
            return self.objective
        return "solver" if klub_solver.bound_of(solver) == "2m" else "ddim"


def table_for_task(task: Task, opt: DPOptions, settings: dict[str, Any]) -> KlubTable:
    """Build (or resume) the task's table, checkpointing after every chunk."""
    grid = grid_for(task, opt.grid)
    path = task.checkpoint_path()
    table = None
    if task.resume and path is not None:
        state = load_state(path, settings)
        if state is not None:
            table = KlubTable(
                grid=torch.tensor(state["grid"], dtype=torch.float64),
                sums=torch.tensor(state["sums"], dtype=torch.float64),
                chains=int(state["chains"]),
                calls=int(state["calls"]),
                chunks=int(state["chunks"]),
            )

    def on_chunk(tab: KlubTable) -> None:
        if path is not None:
            save_state(path, settings, {
                "stage": "table", "grid": tab.grid.tolist(), "sums": tab.sums.tolist(),
                "chains": tab.chains, "calls": tab.calls, "chunks": tab.chunks,
            })
        if task.progress is not None:
            task.progress({"event": "chunk", "chains": tab.chains, "samples": task.samples, "calls": tab.calls})

    with task.meter.stage("table"):
        return build_table(
            task.denoiser, task.data, grid, chains=task.samples, seed=task.seed, batch_size=task.batch_size,
            chunk=opt.chunk, table=table, on_chunk=on_chunk,
        )


def final_estimate(task: Task, sigmas: Tensor, opt: DPOptions) -> tuple[float | None, float | None, int]:
    """The paper's KLUB of ``sigmas`` on fresh draws ``(seed, "final")``: (total, stderr, calls)."""
    if opt.final_samples == 0:
        return None, None, 0
    draws = KlubDraws.from_seed(task.data, max(2, opt.final_samples), task.seed, "final")
    with task.meter.stage("final"):
        est = estimate_schedule(task.denoiser, draws, sigmas, c=opt.c, batch_size=task.batch_size)
    return est.total, est.total_stderr, est.calls


def final_calls(steps: int, final_samples: int) -> int:
    """Denoiser calls of the reported KLUB: two rows per interval and chain (0 when skipped)."""
    return 0 if final_samples == 0 else 2 * steps * max(2, final_samples)


def budget_sizes(task: Task, opt: DPOptions, options: Mapping[str, Any]) -> tuple[int, DPOptions]:
    """The chains of the table and the final chains that ``task.budget`` buys (``opt`` unchanged without one).

    Calls: ``G × chains + 2 × steps × final_samples``. An explicit ``final_samples`` is kept and the
    table gets the rest; otherwise ``final_samples = chains // 8`` (the defaults' ratio, 1,024 to
    8,192), or 0 when that is under 2. At least 2 chains: a budget under ``2G`` is refused.
    """
    if task.budget is None:
        return task.samples, opt
    size = int(grid_for(task, opt.grid).numel())
    if "final_samples" in options:
        fixed = final_calls(task.steps, opt.final_samples)
        chains = fit_budget(lambda c: fixed + size * c, task.budget, 2, "dp", f"table chains over {size} levels")
        return chains, opt

    def cost(c: int) -> int:
        f = c // 8
        return size * c + final_calls(task.steps, f if f >= 2 else 0)

    chains = fit_budget(cost, task.budget, 2, "dp", f"table chains over {size} levels")
    f = chains // 8
    return chains, dataclasses.replace(opt, final_samples=f if f >= 2 else 0)


def run_dp(task: Task, opt: DPOptions, settings: dict[str, Any]) -> tuple[KlubTable, Tensor, list[dict[str, Any]]]:
    """Table, then the optimal ``task.steps`` schedule (snapped for discrete models) and history entries.

    ``task.samples`` chains; ``task.budget`` is not read here (:func:`budget_sizes` is the ``dp``
    method's). The table is built inside the meter's stage ``"table"``; the caller plans it.
    """
    table = table_for_task(task, opt, settings)
    objective = opt.resolved_objective(task.solver)
    want = sorted({task.steps, *opt.also_steps})
    # Off the grid: a discrete model's levels are its own timesteps, and the solver-aware programme
    # is O(G³), so only the paper's bound on a continuous range is minimised on the interpolated table.
    fine = opt.fine_grid > 0 and objective == "ddim" and not task.space.is_discrete
    tab = table.refined(opt.fine_grid, opt.c) if fine else table
    res = schedules_from_table(tab, want, objective=objective, solver=task.solver, c=opt.c,
                               solver_grid=opt.solver_grid, cross=opt.cross)
    history: list[dict[str, Any]] = [
        {"stage": "table", "grid": table.size, "chains": table.chains, "calls": table.calls, "fine_grid": tab.size}
    ]
    for n in want:
        s, cost = res[n]
        history.append({"stage": "dp", "steps": n, "objective": objective, "cost": cost, "sigmas": s.tolist()})
    sigmas = check_sigmas(task.space.snap(res[task.steps][0], f"{task.steps}-step schedule"), allow_final_zero=False)
    return table, sigmas, history


#: What ``early_stopping=False`` asks of the table's methods (``dp``, ``ays``): the KLUB minimiser itself,
#: each level within 1 % of the true minimiser's (DESIGN.md). A 64-level grid alone misses it by up to 22 %
#: on Gaussian data, 256 levels by 1.3 %; 256 levels minimised on the table interpolated to 2,048 by 0.3 %.
MINIMISER = {"grid": 256, "fine_grid": 2048}


@register("dp")
def dp(task: Task, **options: Any) -> OptimizeResult:
    """Global optimiser: the exact grid minimiser of the KLUB (module docstring).

    ``objective="auto"`` optimises the bound of ``solver`` (the 2M solvers' extrapolated
    drift, else the paper's). Denoiser calls: ``grid × samples`` for the table plus
    ``2 × steps × final_samples`` for the reported KLUB. ``early_stopping=False``: the
    minimiser off the grid (:data:`MINIMISER`: ``grid=256``, ``fine_grid=2048`` unless given);
    ``method="ays"`` adds the evidence-based choice along the way to it.

    ``budget=``: the chains (replacing ``samples``) and, unless given, ``final_samples`` are
    derived from it (:func:`budget_sizes`); the total stays within the budget. Stages
    ``"table"`` and ``"final"``.
    """
    if not task.early_stopping:
        options = {**MINIMISER, **options}
    opt = DPOptions.parse(options, "dp")
    chains, opt = budget_sizes(task, opt, options)
    if chains != task.samples:
        task = dataclasses.replace(task, samples=chains)  # the same meter: one plan, one count
    settings = task.settings(jsonable(asdict(opt)))
    size = int(grid_for(task, opt.grid).numel())
    task.meter.plan({"table": size * task.samples, "final": final_calls(task.steps, opt.final_samples)})
    table, sigmas, history = run_dp(task, opt, settings)
    return finish(task, opt, sigmas, history, table.calls, settings)


def finish(task: Task, opt: DPOptions, sigmas: Tensor, history: list[dict[str, Any]], calls: int,
           settings: dict[str, Any]) -> OptimizeResult:
    """The final KLUB estimate on fresh draws, the closing progress event, the result."""
    klub_total, klub_se, final_calls = final_estimate(task, sigmas, opt)
    calls += final_calls
    if task.progress is not None:
        task.progress({"event": "done", "klub": klub_total, "klub_stderr": klub_se, "calls": calls,
                       "sigmas": sigmas.tolist()})
    return OptimizeResult(
        sigmas=sigmas, steps=task.steps, solver=task.solver, method=task.method, klub=klub_total,
        klub_stderr=klub_se, timesteps=task.space.timesteps(sigmas), history=history, calls=calls,
        settings=settings, model=task.model,
    )

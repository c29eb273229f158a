"""The default optimiser (``method="ays"``): a portfolio of schedules judged against a teacher, within a budget.

No one family of schedules wins everywhere: the converged KLUB minimum over-aligns at 5-10
steps and drops the outer modes of a mixture (REFERENCES.md, "What we measured"), OSS and GITS
win where the teacher's path is what matters, and a free schedule at the right scale is hard
to beat on simple data. So this method runs one candidate from every family
(:mod:`.candidates`: the KLUB optimum, the blend path from ``kl_optimal(ĉ)`` to it, OSS, GITS,
and every free schedule), judges them all on one piece of evidence (:mod:`.evidence`: samples
of every candidate and of a many-step teacher from the *same* noises and Brownian paths),
and keeps the best only if it beats the best free schedule on noises the choice never saw.
The budget (``budget=``, default :func:`default_budget`: 50,000 calls at 10 steps) is split
over the stages (:func:`make_plan`):

1. **table**: the KLUB table of :mod:`ays.optimize.dp` (``grid=64`` levels, ``table_share`` of the
   budget; ``samples=`` sets the chains) and its grid optimum.
2. **teacher**: ``rows`` evidence noises, one DPM-Solver++(2M) trajectory each on the shared
   grid (:mod:`ays.optimize.teacher`: ``teacher_grid`` levels, ``teacher_refine`` substeps),
   read by OSS, GITS and the judge (its end is the judge's target, for every solver; with
   ``reference_solver``, ``reference_steps`` steps of that stochastic solver on the same
   Brownian path instead); and ``fresh`` noises more, with their teacher only, for the gate.
3. **search**: OSS's programme over the trajectories of ``oss_samples`` of those noises (GITS's
   costs come from the same trajectories at no call).
4. **candidates**: every candidate run from the ``rows`` noises and scored by ``select``
   (:func:`.evidence.statistic`; the default was chosen by measurement, BENCHMARKS.md "Which
   evidence").
5. **refine** (``refine_sweeps > 0`` only): coordinate moves of single levels of the choice.
   Among the candidates within ``tie`` (5 %) of the best score, the one whose samples lie
   nearest the data is taken (:func:`.evidence.precision`: the sliced W2 barely sees blur
   between modes); the best free schedule is picked the same way among the free ones.
6. **validate**: the gate. If the choice is not itself free, it and the best free schedule
   are run from the ``fresh`` noises; the choice is kept when its gain there exceeds
   ``significance`` standard errors (bootstrap) and it is no blurrier beyond noise, or when it
   is as good (z > −1) and sharper beyond noise (paired over the fresh noises); else the best
   free schedule is returned. ``res.history`` records every score, the choice, the gate and why.

Under ``torch.distributed`` every stage shares its rows out (:func:`ays.distributed.map_shards`)
and every rank takes the same decisions. A checkpoint is written after every stage and every
schedule judged; a resumed run reloads the table, the teacher (a ``.teacher.pt`` file beside the
checkpoint), OSS's paths and every score, and judges nothing twice. ``early_stopping=False``
returns the KLUB optimum itself (the minimiser of :mod:`ays.optimize.dp`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from ... import distributed as _dist
from ... import schedules, solvers
from ...data import draw, take
from ...seeds import seed_for
from ...validate import AysError, check_positive, check_sigmas, check_steps
from ..checkpoint import load_state, save_state
from ..dp import DPOptions, dp, final_calls, finish, grid_for, jsonable, run_dp
from ..oss import ode_counterpart, programme_calls
from ..result import OptimizeResult
from ..task import Task, register
from ..teacher import grid_levels
from .candidates import (
    Candidate,
    blend,
    free_schedules,
    gits_schedule,
    named,
    oss_grid_paths,
    oss_schedule,
    portfolio,
)
from .evidence import (
    STATISTICS,
    Evidence,
    Judge,
    evidence_seconds,
    gain_z,
    gather_evidence,
    local_bandwidth,
    precision,
    reference_schedule,
    run_rows,
    statistic,
    teacher_calls,
)

__all__ = [
    "STATISTICS", "Evidence", "Plan", "SelectOptions", "ays", "blend", "data_scale", "default_budget",
    "evidence_seconds", "gain_z", "gate_keeps", "gather_evidence", "local_bandwidth", "make_plan", "parse_options",
    "precision", "reference_schedule", "run_rows", "sharpest_of_best", "sharpness_z", "statistic",
]

Tensor = torch.Tensor
Features = Callable[[Tensor], Tensor]


#: Most of the budget OSS's programme may take (its noises are fewer below it)
OSS_SHARE = 0.1


def default_budget(steps: int) -> int:
    """The default budget in denoiser calls: ``5,000 × steps``, at least 20,000 (50,000 at 10 steps)."""
    return max(20_000, 5_000 * steps)


@dataclass(frozen=True)
class SelectOptions:
    """Options of ``method="ays"`` beyond those of :class:`~ays.optimize.dp.DPOptions` (module docstring)."""

    select: str = "coupled"  #: the evidence: "coupled", "paired", "median", "trimmed", "kernel"; "none"
    family: str = "blend"  #: "blend": one path kl_optimal(ĉ) → KLUB optimum; "grid": also from ĉ·c_factors
    path_points: int = 5  #: λ values on each path, ends included
    c_factors: tuple[float, ...] = (0.7, 1.0, 1.4)  #: scales of the start tried by family="grid"
    kl_c: tuple[float, ...] = (0.25, 0.5, 1.0)  #: free kl_optimal(c) candidates
    heuristics: tuple[str, ...] = ("loglinear", "karras", "beta")  #: free named candidates (time_uniform always)
    taught: tuple[str, ...] = ("oss", "gits")  #: candidates from the teacher's trajectory
    oss_samples: int = 16  #: evidence noises whose OSS programme is run (OSS-ave: the median path)
    teacher_grid: int = 40  #: positive levels of the shared teacher grid (rho=7), then 0
    teacher_refine: int = 2  #: teacher substeps per grid interval
    refine_sweeps: int = 0  #: sweeps of coordinate moves on the evidence (0: none)
    refine_delta: float = 0.3  #: first move, as a fraction of the gap to a neighbour (halves per sweep)
    refine_budget: int | None = None  #: at most this many schedules refined (None: what the plan gives)
    validate: bool = True  #: the gate against the best free schedule on the fresh noises
    significance: float = 2.0  #: standard errors the gain must exceed (one-sided)
    tie: float = 0.05  #: evidence within this share of the best counts as tied: the sharpest of those is taken
    bootstrap: int = 200  #: resamples of the fresh noises for the gain's standard error
    select_samples: int | None = None  #: evidence noises (and as many fresh ones); None: from the budget
    reference_steps: int = 32  #: steps of the stochastic teacher (with reference_solver)
    reference_solver: str | None = None  #: a stochastic teacher for the judge (None: the ODE trajectory's end)
    projections: int = 256  #: directions of the sliced W2 (select="coupled")
    table_share: float = 0.1  #: share of the budget spent on the KLUB table

    @classmethod
    def parse(cls, options: dict[str, Any]) -> SelectOptions:
        opt = cls(**options)
        if opt.select not in (*STATISTICS, "none"):
            raise AysError(f"select must be one of {', '.join((*STATISTICS, 'none'))}, got {opt.select!r}")
        if opt.family not in ("blend", "grid"):
            raise AysError(f"family must be 'blend' or 'grid', got {opt.family!r}")
        check_steps(opt.path_points, name="path_points", minimum=2)
        factors = tuple(check_positive(f, name="c_factors") for f in opt.c_factors)
        if not factors:
            raise AysError("c_factors must hold at least one scale")
        kl_c = tuple(check_positive(c, name="kl_c") for c in opt.kl_c)
        heuristics = tuple(opt.heuristics)
        for h in heuristics:
            if h not in schedules.HEURISTICS or h in ("vp", "time_uniform", "kl_optimal"):
                raise AysError(f"heuristics: {h!r} is not a named heuristic to add (time_uniform is always tried, "
                               "kl_optimal at kl_c); choose from karras, loglinear, polyexponential, beta")
        taught = tuple(opt.taught)
        for t in taught:
            if t not in ("oss", "gits"):
                raise AysError(f"taught: {t!r} is not a teacher-based candidate; choose from oss, gits")
        check_steps(opt.oss_samples, name="oss_samples", minimum=1)
        check_steps(opt.teacher_grid, name="teacher_grid", minimum=3)
        check_steps(opt.teacher_refine, name="teacher_refine")
        check_steps(opt.refine_sweeps, name="refine_sweeps", minimum=0)
        if opt.refine_budget is not None:
            check_steps(opt.refine_budget, name="refine_budget", minimum=0)
        delta = check_positive(opt.refine_delta, name="refine_delta")
        if delta >= 1:
            raise AysError(f"refine_delta must be below 1 (a fraction of the gap), got {delta}")
        if not isinstance(opt.validate, bool):
            raise AysError(f"validate must be True or False, got {opt.validate!r}")
        check_positive(opt.significance, name="significance", allow_zero=True)
        check_positive(opt.tie, name="tie", allow_zero=True)
        if opt.select_samples is not None:
            check_steps(opt.select_samples, name="select_samples", minimum=8)
        check_steps(opt.reference_steps, name="reference_steps", minimum=2)
        if opt.reference_solver is not None:
            if not isinstance(opt.reference_solver, str) or not solvers.info(opt.reference_solver).stochastic:
                raise AysError(f"reference_solver must be a stochastic solver name, got {opt.reference_solver!r}")
        check_steps(opt.projections, name="projections")
        check_steps(opt.bootstrap, name="bootstrap", minimum=10)
        share = check_positive(opt.table_share, name="table_share")
        if share >= 0.9:
            raise AysError(f"table_share must be below 0.9 (a share of the budget), got {share}")
        return cls(**{**asdict(opt), "c_factors": factors, "kl_c": kl_c, "refine_delta": delta,
                      "heuristics": heuristics, "taught": taught, "significance": float(opt.significance),
                      "table_share": share})


def data_scale(data: Any, seed: int, n: int = 4096) -> float:
    """``ĉ``: the RMS per-coordinate standard deviation of ``n`` data samples (the scale in Thm 3.1)."""
    x, _ = draw(data, n, torch.Generator().manual_seed(seed_for(seed, "select", "scale")))
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    c = float(flat.var(dim=0).mean().sqrt())
    if not (c > 0 and math.isfinite(c)):
        raise AysError("the data has no spread (zero variance): cannot set the scale of kl_optimal")
    return c


def _count_candidates(task: Task, opt: SelectOptions) -> int:
    """At most this many candidates (fewer when some coincide)."""
    starts = len(opt.c_factors) if opt.family == "grid" and task.init is None else 1
    return starts * opt.path_points + len(opt.taught) + len(opt.kl_c) + 1 + len(opt.heuristics)


@dataclass(frozen=True)
class Plan:
    """How the budget is spent: table chains, evidence and fresh noises, OSS noises, schedules judged, calls."""

    budget: int
    chains: int
    final_samples: int
    rows: int
    fresh: int
    oss_rows: int
    candidates: int
    refine: int
    stages: dict[str, int]


def make_plan(task: Task, dopt: DPOptions, sopt: SelectOptions, candidates: int, chains_given: bool,
              levels: Tensor) -> Plan:
    """Split ``task.budget`` (or :func:`default_budget`) over the stages (module docstring).

    A schedule costs ``rows × calls per row`` of the target solver; the teacher its calls per
    noise on both sets (:func:`.evidence.teacher_calls`); OSS ``oss_rows ×`` its programme's. The
    noises are what is left after the table, the final KLUB and OSS (at most :data:`OSS_SHARE` of the
    budget), as many fresh as evidence ones
    (a quarter of it kept for the refinement when ``refine_sweeps > 0``). Refused with the
    minimum named when the budget cannot pay for 16 chains, 16 noises per set and every candidate once.
    """
    budget = default_budget(task.steps) if task.budget is None else task.budget
    grid = int(grid_for(task, dopt.grid).numel())
    per_cand = solvers.count_calls(task.solver, schedules.to_sampling(
        schedules.kl_optimal(task.steps, task.sigma_min, task.sigma_max)))
    chains = task.samples if chains_given else max(16, int(sopt.table_share * budget) // grid)
    final = dopt.final_samples
    fixed = chains * grid + final_calls(task.steps, final)
    if sopt.select == "none":
        return Plan(budget, chains, final, 0, 0, 0, 0, 0, {"table": chains * grid, "final": fixed - chains * grid})
    t_choose, t_fresh = teacher_calls(task, levels, sopt.teacher_refine, sopt.reference_steps, sopt.reference_solver)
    per_oss = programme_calls(ode_counterpart(task.solver), levels, task.steps) if "oss" in sopt.taught else 0
    checks = 2 * per_cand if sopt.validate else 0
    per_row = t_choose + candidates * per_cand + t_fresh + checks
    # OSS's programme: oss_samples noises, or what a tenth of the budget pays for (at least one)
    oss_rows = max(1, min(sopt.oss_samples, int(OSS_SHARE * budget) // per_oss)) if per_oss else 0
    room = (0.75 if sopt.refine_sweeps > 0 else 1.0) * (budget - fixed - oss_rows * per_oss)
    rows = sopt.select_samples or max(16, min(4096, int(room) // per_row))
    oss_rows = min(oss_rows, rows)
    fresh = rows
    stages = {"table": chains * grid, "teacher": rows * t_choose + fresh * t_fresh, "search": oss_rows * per_oss,
              "candidates": candidates * rows * per_cand, "validate": fresh * checks,
              "final": final_calls(task.steps, final)}
    left = budget - sum(stages.values())
    if left < 0 and task.budget is not None:
        raise AysError(f"a budget of {budget:,} denoiser calls is too small for method 'ays' at {task.steps} steps "
                       f"with these options; it needs at least {budget - left:,} (or fewer select_samples, samples, "
                       "grid)")
    refine = max(0, left) // (rows * per_cand) if sopt.refine_sweeps > 0 else 0
    if sopt.refine_budget is not None and sopt.refine_sweeps > 0:
        refine = min(refine, sopt.refine_budget) if task.budget is not None else sopt.refine_budget
    stages["refine"] = refine * rows * per_cand
    return Plan(budget, chains, final, rows, fresh, oss_rows, candidates, refine, stages)


def _refine(task: Task, opt: SelectOptions, judge: Judge, start: Tensor, value: float, budget: int,
            records: list[dict[str, Any]]) -> tuple[Tensor, float]:
    """Coordinate moves of single levels (in log-sigma, a fraction of the gap to a neighbour) on the
    evidence; a move is kept when it lowers it. The fraction halves every sweep; at most ``budget``
    schedules are judged."""
    u = start.log()
    best, best_val = start, value
    delta = opt.refine_delta
    tried = 0
    for sweep in range(opt.refine_sweeps):
        for i in range(1, start.numel() - 1):
            for toward in (i - 1, i + 1):
                if tried >= budget:
                    return best, best_val
                v = u.clone()
                v[i] = u[i] + delta * (u[toward] - u[i])
                try:
                    s = check_sigmas(task.space.snap(torch.exp(v), "candidate"), allow_final_zero=False)
                except AysError:
                    continue
                if torch.equal(s, best):
                    continue
                val = judge(s, "refine")
                tried += 1
                records.append({"stage": "refine", "sweep": sweep, "level": i, "evidence": val, "sigmas": s.tolist()})
                if val < best_val:
                    best, best_val, u = s, val, s.log()
                    break
        delta *= 0.5
    return best, best_val


def sharpest_of_best(values: list[float], precisions: list[float], among: Any, tie: float) -> int:
    """Among the indices ``among`` whose evidence ``values`` are within ``tie`` (relative) of their best, the one
    whose samples lie nearest the data (lowest :func:`.evidence.precision`): the sliced W2 barely sees blur
    between modes, so where it cannot tell two schedules apart, the sharper one is taken (ties: the earlier)."""
    ks = list(among)
    best = min(values[k] for k in ks)
    close = [k for k in ks if values[k] <= best + tie * abs(best)]
    return min(close, key=lambda k: precisions[k])


def gate_keeps(z: float, z_sharp: float, significance: float) -> bool:
    """The gate: better beyond noise (``z``) and no blurrier beyond noise (``z_sharp``, the paired gain in
    :func:`.evidence.precision`), or as good (``z > −1``) and sharper beyond noise."""
    return (z > significance and z_sharp > -significance) or (z > -1.0 and z_sharp > significance)


def sharpness_z(x_base: Tensor, x_other: Tensor, reference: Tensor) -> float:
    """``z`` of the per-noise gain in :func:`.evidence.precision` of ``x_other`` over ``x_base`` (paired)."""
    d = precision(x_base, reference) - precision(x_other, reference)
    se = float(d.std(unbiased=True)) / math.sqrt(d.numel())
    return float(d.mean()) / se if se > 0 else (math.inf if float(d.mean()) > 0 else 0.0)


def _taught(task: Task, opt: SelectOptions, plan: Plan, levels: Tensor, ev: Evidence, state: dict[str, Any],
            save: Callable[[], None]) -> list[tuple[str, Tensor]]:
    """OSS's and GITS's schedules from the shared teacher trajectory (OSS's paths checkpointed)."""
    assert ev.states is not None and ev.dens is not None
    out = []
    if "oss" in opt.taught and plan.oss_rows > 0:
        if "oss_paths" not in state:
            n, scale = plan.oss_rows, float(levels[0])

            def share(r: slice) -> Tensor:
                if r.stop <= r.start:
                    return torch.zeros(0, task.steps + 1, dtype=torch.float64)
                return oss_grid_paths(task, levels, ev.noise[r] * scale, ev.states[:, r], take(ev.cond, r))

            with task.meter.stage("search"):
                state["oss_paths"] = _dist.map_shards(n, share, dim=0).tolist()
            save()
        out.append(("oss", oss_schedule(task, levels, torch.tensor(state["oss_paths"], dtype=torch.float64))))
    if "gits" in opt.taught:
        out.append(("gits", gits_schedule(task, levels, ev.states, ev.dens)))
    return out


def choose(task: Task, opt: SelectOptions, end: Tensor, plan: Plan, levels: Tensor,
           evidence: tuple[Evidence, Evidence], state: dict[str, Any], save: Callable[[], None],
           features: Features | None = None) -> tuple[Tensor, list[dict[str, Any]], int]:
    """The schedule the evidence prefers among the portfolio, gated against the best free one.

    ``state`` holds what was computed so far (scores by set, OSS's paths); ``save()`` checkpoints it.
    Returns (sigmas, history records, denoiser rows spent judging and searching).
    """
    scores = state.setdefault("scores", {"choose": {}, "validate": {}})
    bandwidth = local_bandwidth(evidence[0].target)
    judge = Judge(task, opt.select, evidence[0], features, bandwidth, scores["choose"], save, opt.projections)
    check = Judge(task, opt.select, evidence[1], features, bandwidth, scores["validate"], save, opt.projections)
    c_hat = data_scale(task.data, task.seed)
    n = task.steps
    if task.init is not None:
        starts: list[tuple[float | None, Tensor]] = [(None, task.initial(n))]
    else:
        factors = (1.0, *[f for f in opt.c_factors if f != 1.0]) if opt.family == "grid" else (1.0,)
        starts = [(c_hat * f, schedules.kl_optimal(n, task.sigma_min, task.sigma_max, c=c_hat * f)) for f in factors]
    taught = _taught(task, opt, plan, levels, evidence[0], state, save)
    search_calls = plan.stages["search"]  # paid once, here or before a resume: the schedule's cost all the same
    cands: list[Candidate] = portfolio(task, starts, end, opt.path_points, taught, free_schedules(task, opt.kl_c),
                                       named(task, opt.heuristics))
    records: list[dict[str, Any]] = []
    values = []
    for params, s, is_free in cands:
        values.append(judge(s, "candidates"))
        records.append({"stage": "select", **params, "free": is_free, "c_hat": c_hat, "evidence": values[-1],
                        "sigmas": s.tolist()})
        if task.progress is not None:
            task.progress({"event": "select", "candidates": len(cands), **records[-1]})
    if len(cands) < plan.candidates:  # coinciding candidates: the plan says what they no longer cost
        per_schedule = plan.stages["candidates"] // plan.candidates
        task.meter.plan({**plan.stages, "candidates": len(cands) * per_schedule})
    sharp = [judge.precision(s, "candidates") for _, s, _ in cands]
    pick = sharpest_of_best(values, sharp, range(len(cands)), opt.tie)
    best_free = sharpest_of_best(values, sharp, [k for k in range(len(cands)) if cands[k][2]], opt.tie)
    chosen, value = cands[pick][1], values[pick]
    if plan.refine > 0 and n > 1:
        chosen, value = _refine(task, opt, judge, chosen, value, plan.refine, records)
    why = {"stage": "choice", "family": cands[pick][0]["family"], "evidence": value, "statistic": opt.select,
           "precision": judge.precision(chosen, "candidates"),
           "best_free": {**cands[best_free][0], "evidence": values[best_free], "precision": sharp[best_free]}}
    refined = not torch.equal(chosen, cands[pick][1])
    if cands[pick][2] and not refined:
        why["why"] = "the best on the evidence is free: nothing to gate"
        records.append(why)
    elif not opt.validate:
        why["why"] = "the best on the evidence, ungated (validate=False)"
        records.append(why)
    else:
        base = cands[best_free][1]
        x_free, x_chosen = check.samples(base, "validate"), check.samples(chosen, "validate")
        gain, z = gain_z(opt.select, evidence[1].target, x_free, x_chosen, bandwidth,
                         seed_for(task.seed, "select", "bootstrap"), opt.bootstrap, opt.projections)
        assert evidence[1].reference is not None
        z_sharp = sharpness_z(x_free, x_chosen, evidence[1].reference)
        keep = gate_keeps(z, z_sharp, opt.significance)
        why["why"] = (f"beats the best free schedule on fresh noises (z = {z:.2f} on {opt.select}, "
                      f"{z_sharp:.2f} on precision)" if keep else
                      f"not beyond noise on fresh noises (z = {z:.2f} on {opt.select}, {z_sharp:.2f} on precision): "
                      "the best free schedule is returned")
        records += [why, {"stage": "validate", "statistic": opt.select, "best_free": check(base, "validate"),
                          "chosen": check(chosen, "validate"), "gain": gain, "z": z, "z_precision": z_sharp,
                          "kept": keep}]
        if not keep:
            chosen = base
    return chosen, records, judge.calls + check.calls + search_calls


@register("ays")
def ays(task: Task, features: Features | None = None, **options: Any) -> OptimizeResult:
    """A portfolio of schedules judged against a teacher, within ``budget`` denoiser calls (module docstring).

    ``features``: a network ``f(x) -> [rows, ...]`` whose outputs the evidence compares (e.g. a
    classifier's penultimate layer); default the samples themselves. ``early_stopping=False``
    returns the KLUB optimum itself (the minimiser). Options: those of
    :class:`~ays.optimize.dp.DPOptions` and :class:`SelectOptions`.
    """
    if features is not None and not callable(features):
        raise AysError(f"features must be a callable network f(x), got {type(features).__name__}")
    dopt, sopt = parse_options(options)
    if not task.early_stopping:  # the minimiser itself: dp's, on the paper's bound, `samples` chains (DESIGN.md)
        return dp(task, **{"objective": "ddim", **{k: v for k, v in options.items() if k in DPOptions.fields()}})
    levels = grid_levels(task, sopt.teacher_grid, 7.0)
    if levels.numel() < task.steps + 1:
        raise AysError(f"{task.steps} steps need a teacher grid of more than {levels.numel() - 1} levels "
                       "(teacher_grid)")
    plan = make_plan(task, dopt, sopt, _count_candidates(task, sopt), "samples" in task.given, levels)
    dopt = replace(dopt, final_samples=plan.final_samples)
    settings = task.settings(jsonable({**asdict(dopt), **asdict(sopt), "budget": plan.budget,
                                       "features": None if features is None else repr(features)}))
    judged = plan.candidates + plan.refine + (2 if sopt.validate else 0)
    task.meter.plan(plan.stages, other=lambda: evidence_seconds(
        task, sopt.select, plan.rows, judged, sopt.bootstrap if sopt.validate else 0, sopt.projections, features))
    # run_dp builds the table inside the meter's stage "table" (the same meter: replace carries it over)
    table, end, history = run_dp(replace(task, samples=plan.chains), dopt, settings)
    calls = table.calls
    sigmas = end
    if sopt.select != "none":
        path = task.checkpoint_path()
        resumed = load_state(path, settings) if (task.resume and path is not None) else None
        state: dict[str, Any] = {k: resumed[k] for k in ("scores", "oss_paths") if resumed and k in resumed}

        def save() -> None:
            if path is not None:
                save_state(path, settings, {"stage": "select", "grid": table.grid.tolist(),
                                            "sums": table.sums.tolist(), "chains": table.chains,
                                            "calls": table.calls, "chunks": table.chunks, **state})

        *evidence, teacher_spent = gather_evidence(task, plan.rows, plan.fresh, levels, sopt.teacher_refine,
                                                   sopt.reference_steps, sopt.reference_solver, features, settings)
        sigmas, records, sel_calls = choose(task, sopt, end, plan, levels, (evidence[0], evidence[1]), state, save,
                                            features)
        history += [{"stage": "plan", "budget": plan.budget, "rows": plan.rows, "fresh": plan.fresh,
                     "oss_rows": plan.oss_rows, "chains": plan.chains, "stages": plan.stages}, *records]
        calls += sel_calls + teacher_spent
    return finish(task, dopt, sigmas, history, calls, settings)  # the final KLUB in the meter's stage "final"


def parse_options(options: dict[str, Any]) -> tuple[DPOptions, SelectOptions]:
    """Split ``ays``'s options into the table/programme part and the selection part."""
    dp_names = DPOptions.fields()
    sel_names = {f.name for f in fields(SelectOptions)}
    unknown = sorted(set(options) - dp_names - sel_names)
    if unknown:
        raise AysError(f"unknown option(s) for method 'ays': {', '.join(unknown)}; "
                       f"valid: {', '.join(sorted(dp_names | sel_names))}")
    # The KLUB candidate is the paper's bound unless asked otherwise: with the 2M solvers' bound the
    # choice was no better in 11 of 12 benchmark cells (BENCHMARKS.md, section 2, ablation). A coarser
    # grid than dp's: the table is a small share of the budget and gives one candidate.
    dp_opts = {"objective": "ddim", "grid": 64, "final_samples": 64,
               **{k: v for k, v in options.items() if k in dp_names}}
    dopt = DPOptions.parse(dp_opts, "ays")
    sopt = SelectOptions.parse({k: v for k, v in options.items() if k in sel_names})
    return dopt, sopt

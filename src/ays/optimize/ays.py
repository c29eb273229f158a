"""The default optimiser (``method="ays"``): the KLUB's path, judged against a teacher, within a budget.

Long because it holds the one default method end to end: its budget plan, its evidence,
the choice along the path, the refinement and the significance gate, and their resume.

The converged KLUB minimum over-aligns: for 5-10 steps it takes one giant first step and
drops the outer modes of a mixture (REFERENCES.md, "What we measured"; the paper stops its
coordinate search early by looking at image metrics). This method makes that call itself,
from evidence, inside a budget of denoiser calls (``budget=``, default
:func:`default_budget`: 50,000 calls at 10 steps) that it splits over five stages:

1. **table**: the KLUB table of :mod:`ays.optimize.dp` at a fraction of the paper's chains
   (``table_share`` of the budget; ``samples=`` sets the chains instead) and its grid optimum,
   the end of the path. The start is ``kl_optimal`` (paper Thm 3.1) at the data's scale ``ĉ``
   (RMS per-coordinate standard deviation), or ``init``.
2. **teacher**: two independent sets of ``select_samples`` noises (one to choose on, one to
   check on), each run through a many-step teacher: ``reference_steps`` steps of the target
   solver itself when it is stochastic, driven by a Brownian tree
   (:class:`ays.solvers.brownian.BrownianTree`) so that every few-step run from the same noise
   shares its Brownian path; of ``reference_solver`` (DPM-Solver++(2M)) for an ODE solver.
3. **candidates**: schedules on the way from the start to the end,
   ``log s(λ) = (1 − λ) log s_start + λ log s_dp`` (and, ``family="grid"``, starts at
   ``ĉ·c_factors``), plus the heuristics named in ``heuristics``. The evidence
   (``select``) compares each schedule's samples with the teacher's from the *same* noises
   and Brownian paths. ``"coupled"`` (default): their sliced W2 distance, a distance between
   laws whose sampling noise is largely shared by the two sets, so that it does not blur the
   comparison. ``"paired"``: the mean over noises ``z_i`` of ``|f(x_s(z_i)) − f(x_teacher(z_i))|² / d``
   (``f``: ``features``, a feature network, or the identity), an upper bound on W2² by the
   coupling, equal to it for an ODE solver on Gaussian data. ``"sw2"``/``"mmd"``/``"energy"``:
   unpaired distances to an independent reference set (the previous evidence, kept for the
   ablation of BENCHMARKS.md).
4. **refine**: coordinate moves of single levels (a fraction ``refine_delta`` of the gap to
   a neighbour in log-sigma, halved each sweep) on the same evidence, while the budget lasts.
5. **validate**: the significance gate. On both noise sets together (the second is fresh to
   the choice), the gain of the chosen schedule over the start must exceed ``significance``
   standard errors (paired: of the per-noise gains; coupled: from a bootstrap of the noises
   that resamples the two schedules' and the teacher's samples together); otherwise the start
   is returned, so the result is never worse beyond noise than ``kl_optimal`` at the data's scale.

Under ``torch.distributed`` every stage shares its rows out (:func:`ays.distributed.map_shards`):
each rank runs its share of the noises, per-noise errors are gathered, and every rank takes
the same decisions. A checkpoint is written after every stage and every schedule judged; a
resumed run reloads the table, the teacher outputs (a ``.teacher.pt`` file beside the
checkpoint) and every score, and judges nothing twice.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from .. import distributed as _dist
from .. import metrics, schedules, solvers
from ..data import Cond, conditioning, draw, in_batches, take, to
from ..io import atomic_write_bytes
from ..klub import seed_for
from ..solvers.brownian import BrownianTree
from ..validate import AysError, check_positive, check_sigmas, check_steps
from .checkpoint import load_state, save_state
from .dp import DPOptions, dp, final_calls, finish, grid_for, jsonable, run_dp
from .result import OptimizeResult
from .task import Task, register

__all__ = [
    "Evidence",
    "Plan",
    "SelectOptions",
    "ays",
    "blend",
    "data_scale",
    "default_budget",
    "evidence_seconds",
    "gather_evidence",
    "make_plan",
    "parse_options",
    "run_rows",
]

Tensor = torch.Tensor
Features = Callable[[Tensor], Tensor]

EVIDENCE = ("paired", "coupled", "sw2", "mmd", "energy")


def default_budget(steps: int) -> int:
    """The default budget in denoiser calls: ``5,000 × steps``, at least 20,000 (50,000 at 10 steps)."""
    return max(20_000, 5_000 * steps)


@dataclass(frozen=True)
class SelectOptions:
    """Options of ``method="ays"`` beyond those of :class:`~ays.optimize.dp.DPOptions` (module docstring)."""

    select: str = "coupled"  #: evidence: "coupled", "paired" (module docstring), "sw2", "mmd", "energy"; "none"
    family: str = "grid"  #: "blend": λ-path kl_optimal(ĉ) → DP optimum; "grid": also c ∈ ĉ·c_factors
    path_points: int = 5  #: λ values on each path, ends included
    c_factors: tuple[float, ...] = (0.7, 1.0, 1.4)  #: scales of the start tried by family="grid"
    heuristics: tuple[str, ...] = ("kl_optimal", "loglinear", "karras")  #: named schedules also tried
    refine_sweeps: int = 3  #: sweeps of coordinate moves on the evidence (0: none)
    refine_delta: float = 0.3  #: first move, as a fraction of the gap to a neighbour (halves per sweep)
    refine_budget: int | None = None  #: at most this many schedules refined (None: what the budget leaves)
    validate: bool = True  #: the significance gate against the start on the second noise set
    significance: float = 2.0  #: standard errors the gain over the start must exceed (one-sided, ~97.7 %)
    bootstrap: int = 200  #: resamples of the noises for the standard error of a coupled gain
    select_samples: int | None = None  #: noises per set (choose, validate); None: from the budget
    reference_steps: int = 32  #: steps of the teacher run
    reference_solver: str | None = None  #: teacher: None = the target solver if stochastic, else "dpmpp_2m"
    projections: int = 256  #: directions of the sliced W2 (select="sw2")
    table_share: float = 0.15  #: share of the budget spent on the KLUB table

    @classmethod
    def parse(cls, options: dict[str, Any]) -> SelectOptions:
        opt = cls(**options)
        if opt.select not in (*EVIDENCE, "none"):
            raise AysError(f"select must be one of {', '.join((*EVIDENCE, 'none'))}, got {opt.select!r}")
        if opt.family not in ("blend", "grid"):
            raise AysError(f"family must be 'blend' or 'grid', got {opt.family!r}")
        check_steps(opt.path_points, name="path_points", minimum=2)
        factors = tuple(check_positive(f, name="c_factors") for f in opt.c_factors)
        if not factors:
            raise AysError("c_factors must hold at least one scale")
        heuristics = tuple(opt.heuristics)
        for h in heuristics:
            if h not in schedules.HEURISTICS or h in ("vp", "time_uniform"):
                raise AysError(f"heuristics: {h!r} is not a heuristic that takes the range; choose from "
                               "karras, loglinear, polyexponential, kl_optimal, beta")
        check_steps(opt.refine_sweeps, name="refine_sweeps", minimum=0)
        if opt.refine_budget is not None:
            check_steps(opt.refine_budget, name="refine_budget", minimum=0)
        delta = check_positive(opt.refine_delta, name="refine_delta")
        if delta >= 1:
            raise AysError(f"refine_delta must be below 1 (a fraction of the gap), got {delta}")
        if not isinstance(opt.validate, bool):
            raise AysError(f"validate must be True or False, got {opt.validate!r}")
        check_positive(opt.significance, name="significance", allow_zero=True)
        if opt.select_samples is not None:
            check_steps(opt.select_samples, name="select_samples", minimum=8)
        check_steps(opt.reference_steps, name="reference_steps", minimum=2)
        if opt.reference_solver is not None:
            if not isinstance(opt.reference_solver, str):
                raise AysError(f"reference_solver must be a solver name, got {opt.reference_solver!r}")
            solvers.info(opt.reference_solver)
        check_steps(opt.projections, name="projections")
        check_steps(opt.bootstrap, name="bootstrap", minimum=10)
        share = check_positive(opt.table_share, name="table_share")
        if share >= 0.9:
            raise AysError(f"table_share must be below 0.9 (a share of the budget), got {share}")
        return cls(**{**asdict(opt), "c_factors": factors, "refine_delta": delta, "heuristics": heuristics,
                      "significance": float(opt.significance), "table_share": share})


def data_scale(data: Any, seed: int, n: int = 4096) -> float:
    """``ĉ``: the RMS per-coordinate standard deviation of ``n`` data samples (the scale in Thm 3.1)."""
    x, _ = draw(data, n, torch.Generator().manual_seed(seed_for(seed, "select", "scale")))
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    c = float(flat.var(dim=0).mean().sqrt())
    if not (c > 0 and math.isfinite(c)):
        raise AysError("the data has no spread (zero variance): cannot set the scale of kl_optimal")
    return c


def blend(start: Tensor, end: Tensor, lam: float) -> Tensor:
    """``exp((1 − λ) log start + λ log end)``: decreasing whenever both are (same length)."""
    if start.shape != end.shape:
        raise AysError("blend needs two schedules of the same length")
    if lam == 0.0 or lam == 1.0:  # the ends themselves, bit for bit
        return (start if lam == 0.0 else end).clone()
    out = torch.exp((1.0 - lam) * start.log() + lam * end.log())
    out[0], out[-1] = start[0], start[-1]
    return out


def teacher_solver(task: Task, opt: SelectOptions) -> str:
    """The teacher's solver: the target itself when stochastic (same SDE, same Brownian path), else 2M."""
    if opt.reference_solver is not None:
        return opt.reference_solver
    return task.solver if solvers.info(task.solver).stochastic else "dpmpp_2m"


def _reference_schedule(task: Task, steps: int) -> Tensor:
    if task.space.is_discrete:
        s = schedules.time_uniform(steps, task.sigma_min, task.sigma_max, noise=task.noise)
        idx = torch.unique(task.space.index(s))
        return task.space.level(idx).to(torch.float64).flip(0)
    return schedules.karras(steps, task.sigma_min, task.sigma_max, rho=7.0)


@dataclass(frozen=True)
class Plan:
    """How the budget is spent: table chains, noises per set, schedules judged, calls per stage."""

    budget: int
    chains: int
    final_samples: int
    rows: int
    candidates: int
    refine: int
    stages: dict[str, int]


def make_plan(task: Task, dopt: DPOptions, sopt: SelectOptions, candidates: int, chains_given: bool) -> Plan:
    """Split ``task.budget`` (or :func:`default_budget`) over the stages (module docstring).

    A schedule costs ``rows × calls per row`` of the target solver, the teacher
    ``2 × rows × its calls per row``. Refused with the minimum named when the budget
    cannot pay for 16 chains, 16 noises per set and every candidate once.
    """
    budget = default_budget(task.steps) if task.budget is None else task.budget
    grid = int(grid_for(task, dopt.grid).numel())
    per_cand = solvers.count_calls(task.solver, schedules.to_sampling(
        schedules.kl_optimal(task.steps, task.sigma_min, task.sigma_max)))
    per_teacher = solvers.count_calls(teacher_solver(task, sopt),
                                      schedules.to_sampling(_reference_schedule(task, sopt.reference_steps)))
    chains = task.samples if chains_given else max(16, int(sopt.table_share * budget) // grid)
    final = dopt.final_samples
    final_cost = final_calls(task.steps, final)
    if sopt.select == "none":
        return Plan(budget, chains, final, 0, 0, 0, {"table": chains * grid, "final": final_cost})
    # Per noise row: its two teacher runs, every candidate and the two checks; a quarter of what is left
    # after the table is kept for the refinement.
    per_row = 2 * per_teacher + (candidates + (2 if sopt.validate else 0)) * per_cand
    fits = int(0.75 * (budget - chains * grid - final_cost)) // per_row
    rows = sopt.select_samples or max(16, min(4096, fits))
    teacher = 2 * rows * per_teacher
    checks = 2 * rows * per_cand if sopt.validate else 0
    left = budget - chains * grid - final_cost - teacher - checks - candidates * rows * per_cand
    if left < 0 and task.budget is not None:
        need = budget - left
        raise AysError(f"a budget of {budget:,} denoiser calls is too small for method 'ays' at {task.steps} steps "
                       f"with these options; it needs at least {need:,} (or fewer select_samples, samples, grid)")
    refine = max(0, left) // (rows * per_cand)
    if sopt.refine_budget is not None:
        refine = min(refine, sopt.refine_budget) if task.budget is not None else sopt.refine_budget
    if sopt.refine_sweeps == 0:
        refine = 0
    stages = {"table": chains * grid, "teacher": teacher, "candidates": candidates * rows * per_cand,
              "refine": refine * rows * per_cand, "validate": checks, "final": final_cost}
    return Plan(budget, chains, final, rows, candidates, refine, stages)


def evidence_seconds(task: Task, opt: SelectOptions, plan: Plan, features: Features | None = None) -> float:
    """The evidence's own work, for the estimate: a sliced W2 per schedule judged (``coupled``, ``sw2``)
    and the gate's bootstrap (``coupled``), timed on this machine at the plan's sizes."""
    if opt.select not in ("coupled", "sw2") or plan.rows == 0:
        return 0.0
    probe, _ = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "select", "probe")))
    one, resample = metrics.sliced_w2_seconds(plan.rows, _features(probe, features).shape[1], opt.projections)
    judged = plan.candidates + plan.refine + (2 if opt.validate else 0)
    return judged * one + (opt.bootstrap * resample if opt.validate and opt.select == "coupled" else 0.0)


def run_rows(
    solver: str, denoiser: Any, noise: Tensor, sigmas: Tensor, rows: slice, tree: BrownianTree,
    batch_size: int | None = None, cond: Cond | None = None,
) -> Tensor:
    """``solver`` on rows ``rows`` of ``noise`` (scaled by ``sigmas[0]``) over ``to_sampling(sigmas)``.

    All solver noise is the Brownian tree's increments (:class:`BrownianTree`), so a run of
    any schedule from the same noise row shares its Brownian path with every other; row i
    is denoised under ``cond``'s row i. The output of row i does not depend on the rest of
    the batch, which is what lets the rows be shared across ranks.
    """
    if rows.stop <= rows.start:  # a rank with no share (more ranks than rows)
        return noise[rows]
    s = schedules.to_sampling(sigmas)
    # One solver run over all the rows, the model called on batches of them: the Brownian tree then
    # draws each node once per run, not once per batch.
    den = in_batches(denoiser, batch_size, take(cond or {}, rows))
    x = solvers.get(solver)(den, noise[rows] * float(s[0]), s, noise_sampler=tree.rows(rows))
    if not torch.isfinite(x).all():
        raise AysError(f"solver {solver!r} produced NaN or inf on a candidate schedule")
    return x


@dataclass
class Evidence:
    """One set of noises and what a schedule is judged against on it.

    ``target``: the teacher's outputs from these noises (paired), or an independent
    reference set (unpaired), all rows, through ``features`` when given.
    """

    noise: Tensor
    cond: Cond
    tree: BrownianTree
    target: Tensor
    bandwidth: float | None = None  #: of the MMD (select="mmd"): the median distance of the first set's target


def _features(x: Tensor, features: Features | None) -> Tensor:
    y = x if features is None else features(x)
    return y.reshape(y.shape[0], -1).to(torch.float64)


def _teacher_file(task: Task) -> Path | None:
    path = task.checkpoint_path()
    return None if path is None else path.with_name(path.name + ".teacher.pt")


def gather_evidence(task: Task, opt: SelectOptions, plan: Plan, features: Features | None = None,
                    settings: dict[str, Any] | None = None) -> tuple[Evidence, Evidence, int]:
    """The two noise sets (choose, validate), their teacher (or reference) outputs (module docstring),
    and the denoiser rows they cost (also when the teacher file of a resumed run had them: the
    result's ``calls`` is what the schedule cost in all)."""
    probe, probe_cond = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "select", "probe")))
    shape, dtype, dev = tuple(probe.shape[1:]), probe.dtype, probe.device
    n = plan.rows
    ref_s = _reference_schedule(task, opt.reference_steps)
    solver = teacher_solver(task, opt)
    saved = _load_teacher(task, settings)

    def normal(*key: object) -> tuple[Tensor, Cond, BrownianTree]:
        """Noise rows, each with the conditioning of a data row of its own, and their Brownian tree."""
        g = torch.Generator().manual_seed(seed_for(task.seed, "select", *key))
        cond = conditioning(task.data, n, torch.Generator().manual_seed(seed_for(task.seed, "select", "cond", *key)),
                            probe_cond)
        noise = torch.randn((n, *shape), generator=g, dtype=dtype).to(dev)
        tree = BrownianTree((n, *shape), task.sigma_min, task.sigma_max, seed_for(task.seed, "select", "tree", *key),
                            dtype=dtype, device=dev)
        return noise, to(cond, dev), tree

    out = []
    for half in ("choose", "validate"):
        noise, cond, tree = normal("noise", half)
        if opt.select in ("paired", "coupled"):
            src_noise, src_cond, src_tree = noise, cond, tree
        else:  # an independent reference set
            src_noise, src_cond, src_tree = normal("reference-noise", half)
        if saved is not None:
            target = saved[half].to(dev)
        else:
            def teach(rows: slice, z: Tensor = src_noise, w: BrownianTree = src_tree, c: Cond = src_cond) -> Tensor:
                return _features(run_rows(solver, task.denoiser, z, ref_s, rows, w, task.batch_size, c), features)

            with task.meter.stage("teacher"):
                target = _dist.map_shards(n, teach, dim=0)
        out.append(Evidence(noise, cond, tree, target))
    calls = 2 * n * solvers.count_calls(solver, schedules.to_sampling(ref_s))  # paid once, here or before a resume
    if saved is None:
        _save_teacher(task, settings, out[0].target, out[1].target)
    if opt.select == "mmd":
        out[0].bandwidth = out[1].bandwidth = metrics.median_bandwidth(out[0].target)
    return out[0], out[1], calls


def _save_teacher(task: Task, settings: dict[str, Any] | None, choose: Tensor, validate: Tensor) -> None:
    path = _teacher_file(task)
    if path is None:
        return
    buf = io.BytesIO()
    torch.save({"settings": settings, "choose": choose.cpu(), "validate": validate.cpu()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_teacher(task: Task, settings: dict[str, Any] | None) -> dict[str, Tensor] | None:
    path = _teacher_file(task)
    if path is None or not task.resume or not path.exists():
        return None

    def read() -> dict[str, Any] | None:
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file is recomputed, not trusted
            return None
        return doc if isinstance(doc, dict) and doc.get("settings") == settings else None

    return _dist.from_rank_zero(read)


class _Judge:
    """Scores schedules on one evidence set, counting denoiser rows; the same noise for all (CRN).

    Paired evidence: the per-noise errors ``[rows]``; unpaired: the discrepancy as ``[1]``.
    ``scores`` keeps every result by schedule, and ``saved()`` checkpoints them after every
    schedule judged, so a resumed run judges nothing twice.
    """

    def __init__(self, task: Task, opt: SelectOptions, ev: Evidence, features: Features | None,
                 scores: dict[str, list[float]], saved: Callable[[], None]) -> None:
        self.task, self.opt, self.ev, self.features = task, opt, ev, features
        self.scores, self.saved = scores, saved
        self.outputs: dict[str, Tensor] = {}  #: unpaired evidence: the samples behind each score
        self.calls = 0  #: rows of every schedule judged, once each, also those a resumed run read back
        self.paid: set[str] = set()

    def samples(self, sigmas: Tensor) -> Tensor:
        """The samples of a schedule judged by unpaired evidence (judged again if only its score was saved)."""
        key = repr(sigmas.tolist())
        if key not in self.outputs:
            self.scores.pop(key, None)
            self(sigmas, "validate")
        return self.outputs[key]

    def __call__(self, sigmas: Tensor, stage: str) -> Tensor:
        key = repr(sigmas.tolist())
        ev, task = self.ev, self.task
        n = ev.noise.shape[0]
        cost = n * solvers.count_calls(task.solver, schedules.to_sampling(sigmas))
        if key in self.scores:
            if key not in self.paid:  # judged before a resume: its cost is the schedule's all the same
                self.calls += cost
                self.paid.add(key)
            return torch.tensor(self.scores[key], dtype=torch.float64)

        def rows_of(rows: slice) -> Tensor:
            x = _features(run_rows(task.solver, task.denoiser, ev.noise, sigmas, rows, ev.tree,
                                   task.batch_size, ev.cond), self.features)
            if self.opt.select == "paired":
                return (x - ev.target[rows]).square().mean(dim=1)
            return x

        with task.meter.stage(stage):
            values = _dist.map_shards(n, rows_of, dim=0)
        self.calls += cost
        self.paid.add(key)
        if self.opt.select != "paired":
            self.outputs[key] = values  # the gate resamples them
            values = torch.tensor([_discrepancy(self.opt, values, ev.target, ev.bandwidth)], dtype=torch.float64)
        self.scores[key] = values.tolist()
        self.saved()
        return values


def _discrepancy(opt: SelectOptions, x: Tensor, target: Tensor, bandwidth: float | None = None) -> float:
    if opt.select in ("sw2", "coupled"):
        return metrics.sliced_w2(x, target, projections=opt.projections,
                                 generator=torch.Generator().manual_seed(0)).value
    if opt.select == "mmd":
        return metrics.mmd(x, target, bandwidth=bandwidth)
    return metrics.energy_distance(x, target)


def _candidates(task: Task, opt: SelectOptions, end: Tensor, c_hat: float) -> list[tuple[dict[str, Any], Tensor]]:
    """The start first, then the λ-paths (one per start scale) and the heuristics, each once."""
    n = task.steps
    starts: list[tuple[float | None, Tensor]]
    if task.init is not None:
        starts = [(None, task.initial(n))]
    else:
        factors = (1.0, *[f for f in opt.c_factors if f != 1.0]) if opt.family == "grid" else (1.0,)
        starts = [(c_hat * f, schedules.kl_optimal(n, task.sigma_min, task.sigma_max, c=c_hat * f)) for f in factors]
    named = [({"heuristic": h}, schedules.build(h, n, task.sigma_min, task.sigma_max)) for h in opt.heuristics]
    paths = [({"lambda": lam, "c": c}, blend(start, end, lam)) for c, start in starts
             for lam in torch.linspace(0.0, 1.0, opt.path_points, dtype=torch.float64).tolist()]
    out: list[tuple[dict[str, Any], Tensor]] = []
    for params, s in paths + named:
        try:
            s = check_sigmas(task.space.snap(s, "candidate"), allow_final_zero=False)
        except AysError:  # collapses onto too few model timesteps
            continue
        if not any(torch.equal(s, t) for _, t in out):
            out.append((params, s))
    return out


def _refine(task: Task, opt: SelectOptions, judge: _Judge, start: Tensor, value: float, budget: int,
            records: list[dict[str, Any]]) -> tuple[Tensor, float]:
    """Coordinate moves of single levels (in log-sigma, a fraction of the gap to a neighbour) on the
    evidence; a move is kept when it lowers the mean error. The fraction halves every sweep; at
    most ``budget`` schedules are judged."""
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
                val = float(judge(s, "refine").mean())
                tried += 1
                records.append({"stage": "refine", "sweep": sweep, "level": i, "evidence": val, "sigmas": s.tolist()})
                if val < best_val:
                    best, best_val, u = s, val, s.log()
                    break
        delta *= 0.5
    return best, best_val


def gate(opt: SelectOptions, start_errors: Tensor, chosen_errors: Tensor) -> tuple[bool, float]:
    """Keep the chosen schedule only if it beats the start beyond noise on the second set: (keep, z).

    ``z = mean(d) / (sd(d)/√n)`` for the per-noise gains ``d = e_start − e_chosen`` (paired
    evidence), kept when ``z > significance``.
    """
    d = start_errors - chosen_errors
    se = float(d.std(unbiased=True)) / math.sqrt(d.numel())
    mean = float(d.mean())
    z = mean / se if se > 0 else (math.inf if mean > 0 else 0.0)
    return z > opt.significance, z


def coupled_gate(opt: SelectOptions, target: Tensor, start: Tensor, chosen: Tensor, seed: int,
                 bandwidth: float | None = None) -> tuple[bool, float]:
    """:func:`gate` for set-level evidence (coupled, sw2, ...): the gain's standard error from a bootstrap
    of the noises, resampled together for the start, the chosen schedule and the target (the coupling
    kept), ``opt.bootstrap`` times; ``z = gain / se``."""

    def gain(i: Tensor | slice, j: Tensor | slice) -> float:
        return (_discrepancy(opt, start[i], target[j], bandwidth)
                - _discrepancy(opt, chosen[i], target[j], bandwidth))

    g = torch.Generator().manual_seed(seed)
    n, m = start.shape[0], target.shape[0]
    coupled = opt.select in ("paired", "coupled")
    if opt.select == "coupled":  # each resample's sliced W2 from one sort per set (metrics.sliced_w2_resampled)
        rows = torch.stack([torch.randint(0, n, (n,), generator=g) for _ in range(opt.bootstrap)])
        sw = metrics.sliced_w2_resampled([start, chosen], target, rows, projections=opt.projections,
                                         generator=torch.Generator().manual_seed(0))
        draws = (sw[0] - sw[1]).tolist()
    else:
        draws = []
        for _ in range(opt.bootstrap):
            i = torch.randint(0, n, (n,), generator=g)
            j = i if coupled else torch.randint(0, m, (m,), generator=g)
            draws.append(gain(i, j))
    se = float(torch.tensor(draws, dtype=torch.float64).std(unbiased=True))
    whole = gain(slice(None), slice(None))
    z = whole / se if se > 0 else (math.inf if whole > 0 else 0.0)
    return z > opt.significance, z


def choose(task: Task, opt: SelectOptions, end: Tensor, plan: Plan, evidence: tuple[Evidence, Evidence],
           state: dict[str, Any], save: Callable[[], None], features: Features | None = None,
           ) -> tuple[Tensor, list[dict[str, Any]], int]:
    """The schedule the evidence prefers on the way to ``end``, gated against the start.

    ``state["scores"]`` holds every schedule judged so far (by set); ``save()`` checkpoints it
    (the judges call it after every schedule).
    Returns (sigmas, history records, denoiser rows spent judging).
    """
    scores = state.setdefault("scores", {"choose": {}, "validate": {}})
    judge = _Judge(task, opt, evidence[0], features, scores["choose"], save)
    check = _Judge(task, opt, evidence[1], features, scores["validate"], save)
    c_hat = data_scale(task.data, task.seed)
    records: list[dict[str, Any]] = []
    cands = _candidates(task, opt, end, c_hat)
    if not cands:  # every candidate collapsed onto too few model timesteps: nothing to choose from
        return end, records, 0
    means = []
    for params, s in cands:
        means.append(float(judge(s, "candidates").mean()))
        records.append({"stage": "select", **params, "c_hat": c_hat, "evidence": means[-1], "sigmas": s.tolist()})
        if task.progress is not None:
            task.progress({"event": "select", "candidates": len(cands), **records[-1]})
    pick = min(range(len(cands)), key=lambda k: means[k])  # ties keep the earlier one, nearer the start
    start = cands[0][1]
    chosen, value = cands[pick][1], means[pick]
    refine = plan.refine + (plan.candidates - len(cands) if plan.refine > 0 else 0)
    if len(cands) < plan.candidates:  # coinciding candidates: their share moves to the refinement, and the plan says so
        per_schedule = plan.stages["candidates"] // plan.candidates
        task.meter.plan({**plan.stages, "candidates": len(cands) * per_schedule, "refine": refine * per_schedule})
    if refine > 0 and task.steps > 1:
        chosen, value = _refine(task, opt, judge, chosen, value, refine, records)
    if opt.validate and not torch.equal(chosen, start):
        # Both sets: twice the noises of one; the second is fresh to the choice, which halves its bias.
        e_start, e_chosen = check(start, "validate"), check(chosen, "validate")
        if opt.select == "paired":
            keep, z = gate(opt, torch.cat([judge(start, "validate"), e_start]),
                           torch.cat([judge(chosen, "validate"), e_chosen]))
        else:
            keep, z = coupled_gate(opt, torch.cat([evidence[0].target, evidence[1].target]),
                                   torch.cat([judge.samples(start), check.samples(start)]),
                                   torch.cat([judge.samples(chosen), check.samples(chosen)]),
                                   seed_for(task.seed, "select", "bootstrap"), evidence[0].bandwidth)
        records.append({"stage": "validate", "start": float(e_start.mean()), "chosen": float(e_chosen.mean()),
                        "z": z, "kept": keep})
        if not keep:
            chosen = start
    return chosen, records, judge.calls + check.calls


@register("ays")
def ays(task: Task, features: Features | None = None, **options: Any) -> OptimizeResult:
    """The KLUB's path judged against a teacher, within ``budget`` denoiser calls (module docstring).

    ``features``: a network ``f(x) -> [rows, ...]`` whose outputs the paired error compares
    (e.g. a classifier's penultimate layer); default the samples themselves.
    ``early_stopping=False`` returns the KLUB optimum itself (the minimiser). Options: those
    of :class:`~ays.optimize.dp.DPOptions` and :class:`SelectOptions`.
    """
    if features is not None and not callable(features):
        raise AysError(f"features must be a callable network f(x), got {type(features).__name__}")
    dopt, sopt = parse_options(options)
    if not task.early_stopping:  # the minimiser itself: dp's, on the paper's bound, `samples` chains (DESIGN.md)
        return dp(task, **{"objective": "ddim", **{k: v for k, v in options.items() if k in DPOptions.fields()}})
    # At most this many candidates (fewer when some coincide); the refinement gets what they leave.
    c_count = sopt.path_points * (len(sopt.c_factors) if sopt.family == "grid" and task.init is None else 1)
    c_count += len(sopt.heuristics)
    plan = make_plan(task, dopt, sopt, c_count, chains_given="samples" in task.given)
    dopt = replace(dopt, final_samples=plan.final_samples)
    settings = task.settings(jsonable({**asdict(dopt), **asdict(sopt), "budget": plan.budget,
                                       "features": None if features is None else repr(features)}))
    task.meter.plan(plan.stages, other=lambda: evidence_seconds(task, sopt, plan, features))
    # run_dp builds the table inside the meter's stage "table" (the same meter: replace carries it over)
    table, end, history = run_dp(replace(task, samples=plan.chains), dopt, settings)
    calls = table.calls
    sigmas = end
    if sopt.select != "none":
        path = task.checkpoint_path()
        resumed = load_state(path, settings) if (task.resume and path is not None) else None
        state: dict[str, Any] = {"scores": resumed["scores"]} if resumed and "scores" in resumed else {}

        def save() -> None:
            if path is not None:
                save_state(path, settings, {"stage": "select", "grid": table.grid.tolist(),
                                            "sums": table.sums.tolist(), "chains": table.chains,
                                            "calls": table.calls, "chunks": table.chunks, **state})

        *evidence, teacher_calls = gather_evidence(task, sopt, plan, features, settings)
        sigmas, records, sel_calls = choose(task, sopt, end, plan, (evidence[0], evidence[1]), state, save, features)
        history += [{"stage": "plan", "budget": plan.budget, "rows": plan.rows, "chains": plan.chains,
                     "stages": plan.stages}, *records]
        calls += sel_calls + teacher_calls
    return finish(task, dopt, sigmas, history, calls, settings)  # the final KLUB in the meter's stage "final"


def parse_options(options: dict[str, Any]) -> tuple[DPOptions, SelectOptions]:
    """Split ``ays``'s options into the table/programme part and the selection part."""
    dp_names = DPOptions.fields()
    sel_names = {f.name for f in fields(SelectOptions)}
    unknown = sorted(set(options) - dp_names - sel_names)
    if unknown:
        raise AysError(f"unknown option(s) for method 'ays': {', '.join(unknown)}; "
                       f"valid: {', '.join(sorted(dp_names | sel_names))}")
    # The path ends at the paper's bound unless asked otherwise: with the 2M solvers' bound as the
    # end the choice was no better in 11 of 12 benchmark cells (BENCHMARKS.md, section 2, ablation).
    # A coarser grid than dp's: the table is a small share of the budget and only sets the path's end.
    dp_opts = {"objective": "ddim", "grid": 64, "final_samples": 64,
               **{k: v for k, v in options.items() if k in dp_names}}
    dopt = DPOptions.parse(dp_opts, "ays")
    sopt = SelectOptions.parse({k: v for k, v in options.items() if k in sel_names})
    return dopt, sopt

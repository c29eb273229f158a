"""Where to stop, chosen from evidence: the replacement for the paper's early stopping (``method="ays"``).

The converged KLUB minimum over-aligns: for 5-10 steps it takes one giant first
step and drops the outer modes of a mixture (REFERENCES.md, "What we measured";
the paper stops its coordinate search early by looking at image metrics). Here the
program makes that call itself, from evidence it can compute without a human:

1. **Candidates on the way to the KLUB optimum.** The start is ``kl_optimal``
   (paper Thm 3.1, the KL-optimal schedule of Euler/DDIM for Gaussian data) with
   ``c`` the data's RMS per-coordinate standard deviation ``ĉ`` estimated from ``data``
   (or ``init`` when given); the end is the global grid optimum of the KLUB
   (:mod:`ays.optimize.dp`; the paper's bound by default, ``objective="solver"`` for the
   solver-aware one, which made no better end in the benchmark's ablation). Candidates
   blend the two in log-sigma, ``log s(λ) = (1 − λ) log s_start + λ log s_dp``,
   ``λ = 0, 1/(P−1), ..., 1`` (a convex combination of two decreasing schedules is
   decreasing); ``family="grid"`` (default) also varies the start's scale,
   ``c ∈ ĉ·c_factors``. The standard heuristics named in ``heuristics`` join the
   candidates, so the evidence can also fall back on one of them.
2. **A cheap output-space discrepancy.** The target solver runs ``select_samples``
   draws with each candidate (the same noise and solver noise for every candidate:
   common random numbers), and their sliced W2 (or MMD, energy distance) to a
   reference set is computed. The reference is a many-step run of the same model
   (``reference_steps`` steps of ``reference_solver``, EDM's rho=7 spacing) on
   held-out noise — or, with ``reference="data"``, fresh data. The ``finalists`` best
   are scored again on independent noise against an independent reference set, and
   the mean of the two scores picks one (less selection noise).
3. **Refinement on the same evidence**: coordinate moves of single levels (a fraction
   ``refine_delta`` of the gap to a neighbour in log-sigma, halved each sweep, at most
   ``refine_budget`` schedules), each kept when it lowers the discrepancy.
4. **A held-out check**: the refined schedule replaces the path's best only if it is
   also better on independent noise against an independent reference set, so the
   refinement cannot win by fitting the noise of the first set.

Denoiser calls: the DP table (``grid × samples``), the two reference sets
(``2 × select_samples × reference_steps``) and ``select_samples × steps`` per schedule
tried — an order of magnitude below the paper's coordinate search (see
``benchmarks/beyond.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .. import metrics, schedules, solvers
from ..data import Cond, bind, conditioning, draw, take, to
from ..klub import DEFAULT_BATCH_SIZE, seed_for
from ..validate import AysError, check_positive, check_sigmas, check_steps
from .dp import DPOptions, finish, jsonable, run_dp
from .result import OptimizeResult
from .task import Task, register

__all__ = ["Evidence", "SelectOptions", "ays", "blend", "choose", "data_scale", "discrepancy", "gather_evidence",
           "parse_options", "run_samples"]

Tensor = torch.Tensor

DISCREPANCIES = ("sw2", "mmd", "energy")


@dataclass(frozen=True)
class SelectOptions:
    """Selection options of ``method="ays"`` (it takes every :class:`~ays.optimize.dp.DPOptions` too)."""

    select: str = "sw2"  #: discrepancy: "sw2", "mmd", "energy"; "none" returns the KLUB optimum
    family: str = "grid"  #: "blend": λ-path kl_optimal(ĉ) → DP optimum; "grid": also c ∈ ĉ·c_factors
    path_points: int = 5  #: λ values on each path, ends included
    c_factors: tuple[float, ...] = (0.7, 1.0, 1.4)  #: scales of the start tried by family="grid"
    heuristics: tuple[str, ...] = ("kl_optimal", "loglinear", "karras")  #: named schedules also tried
    refine_sweeps: int = 2  #: sweeps of coordinate moves on the discrepancy (0: none)
    refine_delta: float = 0.3  #: first move, as a fraction of the gap to a neighbour (halves per sweep)
    refine_budget: int = 40  #: at most this many schedules tried by the refinement
    finalists: int = 3  #: best candidates re-scored on the held-out set; the mean of both scores decides
    validate: bool = True  #: keep the refinement only if it also wins on held-out noise and reference
    select_samples: int = 2048  #: few-step samples per candidate, and reference samples per half
    reference: str = "model"  #: "model": many-step run of the same model; "data": fresh data
    reference_steps: int = 64  #: steps of the reference run
    reference_solver: str = "dpmpp_2m"  #: solver of the reference run
    projections: int = 256  #: directions of the sliced W2

    @classmethod
    def parse(cls, options: dict[str, Any]) -> SelectOptions:
        opt = cls(**options)
        if opt.select not in (*DISCREPANCIES, "none"):
            raise AysError(f"select must be one of {', '.join((*DISCREPANCIES, 'none'))}, got {opt.select!r}")
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
        check_steps(opt.refine_budget, name="refine_budget", minimum=0)
        delta = check_positive(opt.refine_delta, name="refine_delta")
        if delta >= 1:
            raise AysError(f"refine_delta must be below 1 (a fraction of the gap), got {delta}")
        check_steps(opt.finalists, name="finalists")
        if not isinstance(opt.validate, bool):
            raise AysError(f"validate must be True or False, got {opt.validate!r}")
        check_steps(opt.select_samples, name="select_samples", minimum=8)
        if opt.reference not in ("model", "data"):
            raise AysError(f"reference must be 'model' or 'data', got {opt.reference!r}")
        check_steps(opt.reference_steps, name="reference_steps", minimum=2)
        if not isinstance(opt.reference_solver, str):
            raise AysError(f"reference_solver must be a solver name, got {opt.reference_solver!r}")
        solvers.info(opt.reference_solver)
        check_steps(opt.projections, name="projections")
        return cls(**{**asdict(opt), "c_factors": factors, "refine_delta": delta, "heuristics": heuristics})


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


def run_samples(
    solver: str, denoiser: Any, noise: Tensor, sigmas: Tensor, seed: int, batch_size: int | None = None,
    cond: Cond | None = None,
) -> Tensor:
    """``solver`` from ``noise · sigmas[0]`` over ``to_sampling(sigmas)``, in chunks; chunk k's
    solver noise comes from ``seed_for(seed, k)`` (the same for every schedule). Row i is
    denoised under ``cond``'s row i (:mod:`ays.data`)."""
    fn = solvers.get(solver)
    s = schedules.to_sampling(sigmas)
    rows = min(noise.shape[0], DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
    out = []
    for k, r0 in enumerate(range(0, noise.shape[0], rows)):
        g = torch.Generator(device=noise.device).manual_seed(seed_for(seed, k))
        chunk = bind(denoiser, take(cond or {}, slice(r0, r0 + rows)))
        out.append(fn(chunk, noise[r0 : r0 + rows] * float(s[0]), s, generator=g))
    x = torch.cat(out)
    if not torch.isfinite(x).all():
        raise AysError(f"solver {solver!r} produced NaN or inf on a candidate schedule")
    return x


def discrepancy(kind: str, x: Tensor, ref: Tensor, *, projections: int = 256, bandwidth: float | None = None) -> float:
    """Distance between the sample sets ``x`` and ``ref``: sliced W2, MMD² or energy distance."""
    if kind == "sw2":
        return metrics.sliced_w2(x, ref, projections=projections,
                                 generator=torch.Generator().manual_seed(0)).value
    if kind == "mmd":
        return metrics.mmd(x, ref, bandwidth=bandwidth)
    if kind == "energy":
        return metrics.energy_distance(x, ref)
    raise AysError(f"unknown discrepancy {kind!r}; choose one of: {', '.join(DISCREPANCIES)}")


def _reference_schedule(task: Task, steps: int) -> Tensor:
    if task.space.is_discrete:
        s = schedules.time_uniform(steps, task.sigma_min, task.sigma_max, noise=task.noise)
        idx = torch.unique(task.space.index(s))
        return task.space.level(idx).to(torch.float64).flip(0)
    return schedules.karras(steps, task.sigma_min, task.sigma_max, rho=7.0)


def _candidates(task: Task, opt: SelectOptions, end: Tensor, c_hat: float) -> list[tuple[dict[str, Any], Tensor]]:
    n = task.steps
    starts: list[tuple[float | None, Tensor]]
    if task.init is not None:
        starts = [(None, task.initial(n))]
    else:
        factors = opt.c_factors if opt.family == "grid" else (1.0,)
        starts = [(c_hat * f, schedules.kl_optimal(n, task.sigma_min, task.sigma_max, c=c_hat * f)) for f in factors]
    out: list[tuple[dict[str, Any], Tensor]] = []
    seen: list[Tensor] = []
    for c, start in starts:
        for lam in torch.linspace(0.0, 1.0, opt.path_points, dtype=torch.float64).tolist():
            s = blend(start, end, lam)
            try:
                s = check_sigmas(task.space.snap(s, "candidate"), allow_final_zero=False)
            except AysError:  # collapses onto too few model timesteps
                continue
            if any(torch.equal(s, t) for t in seen):
                continue
            seen.append(s)
            out.append(({"lambda": lam, "c": c}, s))
    for name in opt.heuristics:
        try:
            s = check_sigmas(task.space.snap(schedules.build(name, n, task.sigma_min, task.sigma_max), "candidate"),
                             allow_final_zero=False)
        except AysError:
            continue
        if not any(torch.equal(s, t) for t in seen):
            seen.append(s)
            out.append(({"heuristic": name}, s))
    return out


@dataclass
class Evidence:
    """What candidates are judged against: noise for the target solver and reference samples.

    ``noise``/``reference`` drive the choice, ``val_noise``/``val_reference`` (independent draws)
    the held-out check of the refinement. ``calls``: denoiser rows spent on the references.
    """

    noise: Tensor
    reference: Tensor
    val_noise: Tensor
    val_reference: Tensor
    calls: int
    bandwidth: float | None = None
    cond: Cond = field(default_factory=dict)  #: the conditioning of ``noise``'s rows
    val_cond: Cond = field(default_factory=dict)  #: and of ``val_noise``'s


def gather_evidence(task: Task, opt: SelectOptions) -> Evidence:
    """Draw the selection and validation noise and compute the two reference sets (module docstring)."""
    probe, probe_cond = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "select", "probe")))
    shape, dtype, dev = tuple(probe.shape[1:]), probe.dtype, probe.device
    n = opt.select_samples

    def normal(*key: object) -> tuple[Tensor, Cond]:
        """Noise rows, each with the conditioning of a data row of its own."""
        g = torch.Generator().manual_seed(seed_for(task.seed, "select", *key))
        g_cond = torch.Generator().manual_seed(seed_for(task.seed, "select", "cond", *key))
        cond = conditioning(task.data, n, g_cond, probe_cond)
        return torch.randn((n, *shape), generator=g, dtype=dtype).to(dev), to(cond, dev)

    calls = 0
    refs = []
    for half in ("choose", "validate"):
        if opt.reference == "model":
            ref_s = _reference_schedule(task, opt.reference_steps)
            ref_noise, ref_cond = normal("reference-noise", half)
            refs.append(run_samples(opt.reference_solver, task.denoiser, ref_noise, ref_s,
                                    seed_for(task.seed, "select", "reference", half), task.batch_size, ref_cond))
            calls += n * solvers.count_calls(opt.reference_solver, schedules.to_sampling(ref_s))
        else:
            refs.append(draw(task.data, n, torch.Generator().manual_seed(seed_for(task.seed, "select", half)))[0])
    bandwidth = metrics.median_bandwidth(refs[0]) if opt.select == "mmd" else None
    (noise, cond), (val_noise, val_cond) = normal("noise"), normal("val-noise")
    return Evidence(noise, refs[0], val_noise, refs[1], calls, bandwidth, cond, val_cond)


class _Judge:
    """Scores schedules on the evidence, counting denoiser rows; solver noise shared by all (CRN)."""

    def __init__(self, task: Task, opt: SelectOptions, ev: Evidence) -> None:
        self.task, self.opt, self.ev = task, opt, ev
        self.calls = 0

    def __call__(self, sigmas: Tensor, held_out: bool = False) -> float:
        ev = self.ev
        if held_out:
            noise, ref, cond = ev.val_noise, ev.val_reference, ev.val_cond
        else:
            noise, ref, cond = ev.noise, ev.reference, ev.cond
        key = "val-solver" if held_out else "solver"
        x = run_samples(self.task.solver, self.task.denoiser, noise, sigmas, seed_for(self.task.seed, "select", key),
                        self.task.batch_size, cond)
        self.calls += noise.shape[0] * solvers.count_calls(self.task.solver, schedules.to_sampling(sigmas))
        return discrepancy(self.opt.select, x, ref, projections=self.opt.projections, bandwidth=self.ev.bandwidth)


def _refine(task: Task, opt: SelectOptions, judge: _Judge, start: Tensor, value: float,
            records: list[dict[str, Any]]) -> tuple[Tensor, float]:
    """Coordinate moves of single levels (in log-sigma, a fraction of the gap to a neighbour)
    on the discrepancy; a move is kept when it lowers it. The fraction halves every sweep; at most
    ``refine_budget`` schedules are tried."""
    u = start.log()
    best, best_val = start, value
    delta = opt.refine_delta
    n = start.numel() - 1
    tried = 0
    for sweep in range(opt.refine_sweeps):
        for i in range(1, n):
            for toward in (i - 1, i + 1):
                if tried >= opt.refine_budget:
                    return best, best_val
                v = u.clone()
                v[i] = u[i] + delta * (u[toward] - u[i])
                try:
                    s = check_sigmas(task.space.snap(torch.exp(v), "candidate"), allow_final_zero=False)
                except AysError:
                    continue
                if torch.equal(s, best):
                    continue
                val = judge(s)
                tried += 1
                records.append({"stage": "refine", "sweep": sweep, "level": i, "discrepancy": val,
                                "sigmas": s.tolist()})
                if val < best_val:
                    best, best_val, u = s, val, s.log()
                    break
        delta *= 0.5
    return best, best_val


def choose(task: Task, opt: SelectOptions, end: Tensor, evidence: Evidence | None = None
           ) -> tuple[Tensor, list[dict[str, Any]], int]:
    """Pick the schedule on the way to ``end`` (the KLUB optimum) that the evidence prefers.

    Returns (sigmas, history records, denoiser rows spent, references included).
    """
    ev = gather_evidence(task, opt) if evidence is None else evidence
    judge = _Judge(task, opt, ev)
    c_hat = data_scale(task.data, task.seed)
    records: list[dict[str, Any]] = []
    cands = _candidates(task, opt, end, c_hat)
    if not cands:  # every candidate collapsed onto too few model timesteps: nothing to choose from
        return end, records, judge.calls + (ev.calls if evidence is None else 0)
    scores: list[float] = []
    for params, s in cands:
        val = judge(s)
        scores.append(val)
        records.append({"stage": "select", **params, "c_hat": c_hat, "discrepancy": val, "sigmas": s.tolist()})
        if task.progress is not None:
            task.progress({"event": "select", "candidates": len(cands), **records[-1]})
    # The few best are scored again on the held-out set; the mean of the two scores decides
    # (stable sort: ties keep the earlier candidate, the one nearer the start).
    order = sorted(range(len(cands)), key=lambda k: scores[k])[: opt.finalists]
    held: dict[int, float] = {}
    if len(order) > 1:
        for k in order:
            held[k] = judge(cands[k][1], held_out=True)
            records.append({"stage": "finalist", "candidate": k, "discrepancy": scores[k], "held_out": held[k]})
        pick = min(order, key=lambda k: (scores[k] + held[k]) / 2)
    else:
        pick = order[0]
    best, best_val = cands[pick][1], scores[pick]
    chosen = best
    if opt.refine_sweeps > 0 and task.steps > 1:
        refined, _ = _refine(task, opt, judge, best, best_val, records)
        if not torch.equal(refined, best):
            keep = True
            if opt.validate:
                held_path = held[pick] if pick in held else judge(best, held_out=True)
                held_refined = judge(refined, held_out=True)
                keep = held_refined < held_path
                records.append({"stage": "validate", "path": held_path, "refined": held_refined, "kept": keep})
            if keep:
                chosen = refined
    return chosen, records, judge.calls + (ev.calls if evidence is None else 0)


@register("ays")
def ays(task: Task, **options: Any) -> OptimizeResult:
    """The global KLUB optimum (``dp``) plus the evidence-based choice of where to stop (module docstring).

    ``early_stopping=False`` returns the KLUB optimum itself (the minimiser), as for the
    paper's optimiser. Options: those of :class:`~ays.optimize.dp.DPOptions` and
    :class:`SelectOptions`.
    """
    dopt, sopt = parse_options(options)
    if not task.early_stopping:
        sopt = SelectOptions(**{**asdict(sopt), "select": "none"})
    settings = task.settings(jsonable({**asdict(dopt), **asdict(sopt)}))
    table, end, history = run_dp(task, dopt, settings)
    calls = table.calls
    sigmas = end
    if sopt.select != "none":
        sigmas, records, sel_calls = choose(task, sopt, end)
        history += records
        calls += sel_calls
    return finish(task, dopt, sigmas, history, calls, settings)


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
    dp_opts = {"objective": "ddim", **{k: v for k, v in options.items() if k in dp_names}}
    dopt = DPOptions.parse(dp_opts, "ays")
    sopt = SelectOptions.parse({k: v for k, v in options.items() if k in sel_names})
    return dopt, sopt

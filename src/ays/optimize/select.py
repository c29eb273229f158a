"""Where to stop, chosen from evidence: the replacement for the paper's early stopping.

The converged KLUB minimum over-aligns: for 6-10 steps it takes one giant first
step and drops the outer modes of a mixture (REFERENCES.md, "What we measured";
the paper stops its search early by looking at image metrics). Here the program
makes that call itself, from evidence it can compute without a human:

1. **A path of candidates** from a data-aware start to the KLUB optimum. The start
   is ``kl_optimal`` (paper Thm 3.1) with ``c`` the data's RMS per-coordinate std
   ``ĉ`` (estimated from ``data``) — or ``init`` when given; the end is the global
   grid optimum of :mod:`ays.optimize.dp`. Candidates blend the two in log-sigma,
   ``log s(λ) = (1 − λ) log s_start + λ log s_dp``, ``λ = 0, 1/(P−1), ..., 1`` (a convex
   combination of two decreasing schedules is decreasing). ``family="grid"`` also
   varies the start's scale, ``c ∈ ĉ·c_factors``.
2. **A cheap output-space discrepancy** for each candidate: the target solver runs
   ``select_samples`` draws with the candidate (the same noise for every candidate:
   common random numbers), and their sliced W2 (or MMD, energy distance) to a
   reference set is computed. The reference is a many-step run of the same model
   (``reference_steps`` steps of ``reference_solver`` on EDM's rho=7 spacing) on
   held-out noise — or, with ``reference="data"``, fresh data.
3. The candidate with the least discrepancy is the result.

Denoiser calls: the DP table, the reference (``select_samples × reference_steps``) and
``select_samples × steps`` per candidate — far below the paper's coordinate search.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .. import metrics, schedules, solvers
from ..klub import DEFAULT_BATCH_SIZE, _data_sample, seed_for
from ..validate import AysError, check_positive, check_sigmas, check_steps
from .dp import DPOptions, final_estimate, jsonable, run_dp
from .result import OptimizeResult
from .task import Task, register

__all__ = ["SelectOptions", "ays", "blend", "data_scale", "discrepancy", "run_samples"]

Tensor = torch.Tensor

DISCREPANCIES = ("sw2", "mmd", "energy")


@dataclass(frozen=True)
class SelectOptions:
    """Selection options of ``method="ays"`` (it takes every :class:`~ays.optimize.dp.DPOptions` too)."""

    select: str = "sw2"  #: discrepancy: "sw2", "mmd", "energy"; "none" returns the KLUB optimum
    family: str = "blend"  #: "blend": λ-path kl_optimal(ĉ) → DP optimum; "grid": also c ∈ ĉ·c_factors
    path_points: int = 9  #: λ values on the path, ends included
    c_factors: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4)  #: scales of the start tried by family="grid"
    select_samples: int = 2048  #: few-step samples per candidate, and reference samples
    reference: str = "model"  #: "model": many-step run of the same model; "data": fresh data
    reference_steps: int = 128  #: steps of the reference run
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
        check_steps(opt.select_samples, name="select_samples", minimum=8)
        if opt.reference not in ("model", "data"):
            raise AysError(f"reference must be 'model' or 'data', got {opt.reference!r}")
        check_steps(opt.reference_steps, name="reference_steps", minimum=2)
        if not isinstance(opt.reference_solver, str):
            raise AysError(f"reference_solver must be a solver name, got {opt.reference_solver!r}")
        solvers.info(opt.reference_solver)
        check_steps(opt.projections, name="projections")
        return cls(**{**asdict(opt), "c_factors": factors})


def data_scale(data: Any, seed: int, n: int = 4096) -> float:
    """``ĉ``: the RMS per-coordinate standard deviation of ``n`` data samples (the scale in Thm 3.1)."""
    x = _data_sample(data, n, torch.Generator().manual_seed(seed_for(seed, "select", "scale")))
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    c = float(flat.var(dim=0).mean().sqrt())
    if not (c > 0 and math.isfinite(c)):
        raise AysError("the data has no spread (zero variance): cannot set the scale of kl_optimal")
    return c


def blend(start: Tensor, end: Tensor, lam: float) -> Tensor:
    """``exp((1 − λ) log start + λ log end)``: decreasing whenever both are (same length)."""
    if start.shape != end.shape:
        raise AysError("blend needs two schedules of the same length")
    out = torch.exp((1.0 - lam) * start.log() + lam * end.log())
    out[0], out[-1] = start[0], start[-1]
    return out


def run_samples(
    solver: str, denoiser: Any, noise: Tensor, sigmas: Tensor, seed: int, batch_size: int | None = None
) -> Tensor:
    """``solver`` from ``noise · sigmas[0]`` over ``to_sampling(sigmas)``, in chunks; chunk k's
    solver noise comes from ``seed_for(seed, k)`` (the same for every schedule)."""
    fn = solvers.get(solver)
    s = schedules.to_sampling(sigmas)
    rows = min(noise.shape[0], DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
    out = []
    for k, r0 in enumerate(range(0, noise.shape[0], rows)):
        g = torch.Generator(device=noise.device).manual_seed(seed_for(seed, k))
        out.append(fn(denoiser, noise[r0 : r0 + rows] * float(s[0]), s, generator=g))
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


def _candidates(task: Task, opt: SelectOptions, end: Tensor, c_hat: float) -> list[tuple[dict[str, float], Tensor]]:
    n = task.steps
    starts: list[tuple[float | None, Tensor]]
    if task.init is not None:
        starts = [(None, task.initial(n))]
    else:
        factors = opt.c_factors if opt.family == "grid" else (1.0,)
        starts = [(c_hat * f, schedules.kl_optimal(n, task.sigma_min, task.sigma_max, c=c_hat * f)) for f in factors]
    out: list[tuple[dict[str, float], Tensor]] = []
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
            out.append(({"lambda": lam, "c": c if c is not None else float("nan")}, s))
    return out


def choose(task: Task, opt: SelectOptions, end: Tensor) -> tuple[Tensor, list[dict[str, Any]], int]:
    """Evaluate every candidate on the way to ``end`` (the KLUB optimum); return the best."""
    c_hat = data_scale(task.data, task.seed)
    cands = _candidates(task, opt, end, c_hat)
    probe = _data_sample(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "select", "probe")))
    shape, dtype, dev = tuple(probe.shape[1:]), probe.dtype, probe.device
    n = opt.select_samples
    calls = 0
    if opt.reference == "model":
        ref_noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(
            seed_for(task.seed, "select", "reference-noise")), dtype=dtype).to(dev)
        ref_s = _reference_schedule(task, opt.reference_steps)
        ref = run_samples(opt.reference_solver, task.denoiser, ref_noise, ref_s,
                          seed_for(task.seed, "select", "reference"), task.batch_size)
        calls += n * solvers.count_calls(opt.reference_solver, schedules.to_sampling(ref_s))
    else:
        ref = _data_sample(task.data, n, torch.Generator().manual_seed(seed_for(task.seed, "select", "data")))
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(
        seed_for(task.seed, "select", "noise")), dtype=dtype).to(dev)
    bandwidth = metrics.median_bandwidth(ref) if opt.select == "mmd" else None
    records: list[dict[str, Any]] = []
    best, best_val = cands[0][1], math.inf
    for params, s in cands:
        x = run_samples(task.solver, task.denoiser, noise, s, seed_for(task.seed, "select", "solver"), task.batch_size)
        calls += n * solvers.count_calls(task.solver, schedules.to_sampling(s))
        val = discrepancy(opt.select, x, ref, projections=opt.projections, bandwidth=bandwidth)
        records.append({"stage": "select", **params, "c_hat": c_hat, "discrepancy": val, "calls": calls,
                        "sigmas": s.tolist()})
        if task.progress is not None:
            task.progress({"event": "select", "candidates": len(cands), **records[-1]})
        if val < best_val:  # ties keep the earlier candidate: the one nearer the start
            best, best_val = s, val
    return best, records, calls


@register("ays")
def ays(task: Task, **options: Any) -> OptimizeResult:
    """The default candidate: global KLUB optimum (``dp``) plus the evidence-based choice of where to stop.

    ``early_stopping=False`` returns the KLUB optimum itself (the minimiser), as for the
    paper's optimiser. Options: those of :class:`~ays.optimize.dp.DPOptions` and
    :class:`SelectOptions`.
    """
    dp_names = DPOptions.fields()
    sel_names = {f.name for f in fields(SelectOptions)}
    unknown = sorted(set(options) - dp_names - sel_names)
    if unknown:
        raise AysError(f"unknown option(s) for method 'ays': {', '.join(unknown)}; "
                       f"valid: {', '.join(sorted(dp_names | sel_names))}")
    dopt = DPOptions.parse({k: v for k, v in options.items() if k in dp_names}, "ays")
    sopt = SelectOptions.parse({k: v for k, v in options.items() if k in sel_names})
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
    klub_total, klub_se, final_calls = final_estimate(task, sigmas, dopt)
    calls += final_calls
    if task.progress is not None:
        task.progress({"event": "done", "klub": klub_total, "klub_stderr": klub_se, "calls": calls,
                       "sigmas": sigmas.tolist()})
    return OptimizeResult(
        sigmas=sigmas, steps=task.steps, solver=task.solver, method=task.method, klub=klub_total,
        klub_stderr=klub_se, timesteps=task.space.timesteps(sigmas), history=history, calls=calls,
        settings=settings, model=task.model,
    )

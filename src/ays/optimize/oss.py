"""OSS: the optimal stepsize by dynamic programming over a teacher trajectory, with the target solver.

Pei et al., "Optimal Stepsize for Diffusion Sampling" (2025; public code OSS/OSS.py of
bebebe666/OptimalSteps). Take a fine grid of noise levels ``g_0 = sigma_max > g_1 > ... > g_N``
and the teacher's states ``x*_j`` at every grid level (a many-step run from one noise). A
student of ``n`` steps goes from ``g_0`` to ``g_N`` through grid levels, one step of the TARGET
solver each. OSS's recursion (their Eq. for ``z[k][j]``) keeps, for every step count ``k`` and
grid level ``j``, the student state that best matches the teacher there:

    cost_k(j) = min_{i < j} || Φ(state_{k−1}(i), g_i → g_j) − x*_j ||²,
    state_k(j) = Φ(state_{k−1}(i*), g_i* → g_j),

``Φ`` one solver step; ``state_0(0)`` is the noise. The state carries what the solver carries
(for DPM-Solver++(2M)/(3M) the previous denoiser outputs and step lengths), so a multistep
solver is followed exactly as it will run. Tracing ``i*`` back from ``(n, N)`` gives the schedule
of one noise; OSS-ave, the paper's batch variant, takes the per-step median of the grid
indices over a batch of noises (``(l[⌊(B−1)/2⌋] + l[⌊B/2⌋]) // 2`` of the sorted indices).

Choices made here. The grid is EDM's rho=7 spacing on ``[sigma_min, sigma_max]`` without its last
level, then 0: schedules are sampled with their last level replaced by 0
(:func:`ays.schedules.to_sampling`), so the student's last step is the final denoise into
``g_N = 0`` and is matched to the teacher's clean output; the result ends at ``sigma_min`` by
the schedule-file convention. The teacher is ``teacher`` (DPM-Solver++(2M) by default, a
second-order ODE solver) on the grid subdivided ``refine`` times in log-sigma. OSS is an ODE
method: for a stochastic target solver the student steps with its ODE counterpart
(:data:`ODE_COUNTERPART`), as the result's settings record. The recursion is OSS's, with
two repairs of its code: only the noise at ``g_0`` starts a path (the code also starts from the
noise placed at every level), and a ``k``-step state exists only where ``k`` steps can reach.

The teacher is :func:`ays.optimize.teacher.trajectory` (the room every teacher-based method
shares). The one-step machinery (:func:`advance`, :func:`run_student`) is also the student of
:mod:`ays.optimize.ld3`: the same formulas as :mod:`ays.solvers`, with the noise levels as
per-row tensors, so one call batches many ``(i, j)`` pairs and gradients reach the levels.

Denoiser calls: ``B × calls(teacher on the refined grid)`` for the teacher, plus one call per
noise and live source level at every step of the programme (Heun: plus one per source-target
pair that is not the final denoise); ``B = teacher_samples``. Meter stages ``"teacher"`` and
``"search"``; ``budget=`` sets ``B`` and the noises are shared out across ranks (:func:`oss`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .. import distributed as _dist
from .. import solvers
from ..data import Cond, bind, conditioning, draw, in_batches, repeat, take, to
from ..klub import seed_for
from ..validate import AysError, check_choice, check_positive, check_sigmas, check_steps
from .dp import check_fits, fit_budget
from .result import OptimizeResult
from .task import Task, register
from .teacher import grid_levels, trajectory, trajectory_calls

__all__ = [
    "ODE_COUNTERPART", "OssOptions", "advance", "median_path", "oss", "oss_paths", "path_schedule", "programme_calls",
    "run_student",
]

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: Previous (denoised, step length in log-sigma) pairs of a multistep solver, newest first.
History = tuple[tuple[Tensor, Tensor], ...]

#: The deterministic solver a student steps with, for every target solver.
ODE_COUNTERPART = {
    "euler": "euler", "heun": "heun", "dpmpp_2m": "dpmpp_2m", "dpmpp_3m": "dpmpp_3m",
    "stochastic_ddim": "euler", "euler_ancestral": "euler", "edm_stochastic": "heun",
    "dpmpp_2m_sde": "dpmpp_2m", "dpmpp_3m_sde": "dpmpp_3m", "er_sde": "dpmpp_3m",
}  # fmt: skip
_DEPTH = {"euler": 0, "heun": 0, "dpmpp_2m": 1, "dpmpp_3m": 2}  # previous outputs each one carries


def ode_counterpart(solver: str) -> str:
    """The deterministic solver the student of ``solver`` steps with (itself if deterministic)."""
    check_choice(solver, ODE_COUNTERPART, what="solver")
    return ODE_COUNTERPART[solver]


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Per-row coefficients ``[B]`` in ``like``'s dtype (masks stay masks), shaped to broadcast over its rows."""
    v = v if v.dtype == torch.bool else v.to(like.dtype)
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _phi(h: Tensor) -> tuple[Tensor, Tensor]:
    """``phi2, phi3`` of :func:`ays.solvers._common.phi_functions` for a tensor of steps (series below 1e-2)."""
    small = h < 1e-2
    hs = torch.where(small, torch.ones_like(h), h)  # keeps the unused closed form finite
    phi2 = torch.where(small, h * (1 / 2 - h * (1 / 6 - h * (1 / 24 - h * (1 / 120 - h / 720)))),
                       1.0 + torch.expm1(-hs) / hs)
    phi3 = torch.where(small, -h * (1 / 6 - h * (1 / 24 - h * (1 / 120 - h * (1 / 720 - h / 5040)))),
                       phi2 / hs - 0.5)
    return phi2, phi3


def advance(
    solver: str, denoiser: Denoiser, x: Tensor, denoised: Tensor, hist: History, s: Tensor, s_next: Tensor
) -> tuple[Tensor, History, int]:
    """One step of the ODE ``solver`` from ``s`` to ``s_next`` (float64 ``[B]``), given ``D(x, s)``.

    The formulas of :mod:`ays.solvers` (Euler ``x' = D + (s'/s)(x − D)``; Heun's trapezoidal
    corrector, EDM Alg. 1; DPM-Solver++(2M) midpoint and (3M) with their differences of earlier
    outputs); a row with ``s_next = 0`` returns ``D`` (the final denoise). Returns the new state,
    the new history and the denoiser rows spent inside (Heun's corrector).
    """
    final = s_next == 0
    nxt = torch.where(final, 0.5 * s, s_next)  # a stand-in level where the step is the final denoise
    ratio = _col(nxt / s, x)
    x_next = torch.lerp(denoised, x, ratio)
    extra = 0
    if solver == "heun":
        live = (~final).nonzero().flatten()
        if live.numel():
            xe, sn = x_next[live], nxt[live]
            d_next = (xe - denoiser(xe, sn.to(x.dtype))) / _col(sn, x)
            d_now = (x[live] - denoised[live]) / _col(s[live], x)
            x_next = x_next.index_put((live,), x[live] + _col(sn - s[live], x) * 0.5 * (d_now + d_next))
            extra = int(live.numel())
    elif solver in ("dpmpp_2m", "dpmpp_3m"):
        h = torch.log(s / nxt)
        if hist:
            d1_prev, h1 = hist[0]
            d1 = (denoised - d1_prev) * _col(h / h1, x)
            if solver == "dpmpp_2m":
                x_next = x_next + _col(-0.5 * torch.expm1(-h), x) * d1
            elif len(hist) >= 2:
                d2_prev, h2 = hist[1]
                r0, r1 = h1 / h, h2 / h
                d1_1 = (d1_prev - d2_prev) * _col(1.0 / r1, x)
                d2 = (d1 - d1_1) * _col(1.0 / (r0 + r1), x)
                phi2, phi3 = _phi(h)
                x_next = x_next + _col(phi2, x) * (d1 + d2 * _col(r0, x)) - _col(phi3, x) * d2
            else:
                x_next = x_next + _col(_phi(h)[0], x) * d1
        hist = ((denoised, h), *hist)[: _DEPTH[solver]]
    elif solver != "euler":
        raise AysError(f"no student step for solver {solver!r}; one of: euler, heun, dpmpp_2m, dpmpp_3m")
    return torch.where(_col(final, x), denoised, x_next), hist, extra


def run_student(solver: str, denoiser: Denoiser, x: Tensor, levels: Tensor) -> tuple[Tensor, int]:
    """The ODE ``solver`` over the decreasing ``levels`` (a tensor; gradients reach it) from ``x``.

    Equals ``ays.solvers.get(solver)(denoiser, x, levels)``; returns (output, denoiser rows).
    """
    hist: History = ()
    rows = 0
    batch = x.shape[0]
    for k in range(levels.numel() - 1):
        s, s_next = levels[k].expand(batch), levels[k + 1].expand(batch)
        denoised = denoiser(x, s.to(x.dtype))
        x, hist, extra = advance(solver, denoiser, x, denoised, hist, s, s_next)
        rows += batch + extra
    return x, rows


def _tile(t: Tensor, m: int) -> Tensor:
    """``m`` copies of ``t`` stacked along the rows (one per target level)."""
    return t.repeat(m, *([1] * (t.ndim - 1)))


def oss_paths(
    solver: str, denoiser: Denoiser, x: Tensor, levels: Tensor, teacher: Tensor, steps: int,
    batch_size: int | None = None, cond: Cond | None = None,
) -> tuple[Tensor, Tensor, int]:
    """OSS's programme for every noise at once (see the module docstring).

    ``x`` [B, ...] the scaled noise at ``levels[0]``; ``levels`` [G] decreasing float64 (the
    last is where every path ends, 0 for the sampling convention); ``teacher`` [G, B, ...] the
    teacher's states there; ``cond`` the noises' conditioning. Returns (grid indices
    [B, steps + 1] from 0 to G − 1, the final cost [B] as mean squared error per dimension,
    denoiser rows).
    """
    lv = check_sigmas(levels)
    size, last, batch = lv.numel(), lv.numel() - 1, x.shape[0]
    if steps > last:
        raise AysError(f"{steps} steps need a grid of more than {size} levels")
    dims = tuple(range(1, x.ndim))
    states: dict[int, tuple[Tensor, History]] = {0: (x, ())}
    back: list[Tensor] = []
    calls = 0
    best = torch.zeros(batch, dtype=torch.float64)
    for k in range(1, steps + 1):
        targets = list(range(k, last - (steps - k) + 1)) if k < steps else [last]
        src = sorted(states)
        # One denoiser call per (live source level, noise), batched over both.
        xs = torch.cat([states[i][0] for i in src])
        sig = torch.cat([lv[i].expand(batch) for i in src])
        dens = in_batches(denoiser, batch_size, repeat(cond or {}, len(src)))(xs, sig.to(xs.dtype)).split(batch)
        calls += xs.shape[0]
        best = torch.full((size, batch), math.inf, dtype=torch.float64)
        arg = torch.full((size, batch), -1, dtype=torch.long)
        new_x: dict[int, Tensor] = {}
        new_h: dict[int, list[list[Tensor]]] = {}
        for i, den in zip(src, dens):
            js = [j for j in targets if j > i]
            if not js:
                continue
            xi, hi = states[i]
            m = len(js)
            s = lv[i].expand(m * batch)
            s_next = torch.cat([lv[j].expand(batch) for j in js])
            hist = tuple((_tile(d, m), _tile(h, m)) for d, h in hi)
            tiled = bind(denoiser, repeat(cond or {}, m))
            cand, cand_h, extra = advance(solver, tiled, _tile(xi, m), _tile(den, m), hist, s, s_next)
            calls += extra
            err = torch.stack([(c - teacher[j]).to(torch.float64).square().mean(dim=dims)
                               for j, c in zip(js, cand.split(batch))])
            for q, j in enumerate(js):
                better = err[q] < best[j]
                if not bool(better.any()):
                    continue
                best[j] = torch.where(better, err[q], best[j])
                arg[j] = torch.where(better, torch.full_like(arg[j], i), arg[j])
                rows = slice(q * batch, (q + 1) * batch)
                keep = _col(better, xi)
                new_x[j] = torch.where(keep, cand[rows], new_x.get(j, cand[rows]))
                old = new_h.get(j, [[d[rows], h[rows]] for d, h in cand_h])
                new_h[j] = [[torch.where(keep, d[rows], od), torch.where(better, h[rows], oh)]
                            for (d, h), (od, oh) in zip(cand_h, old)]
        back.append(arg)
        states = {j: (new_x[j], tuple((d, h) for d, h in new_h[j])) for j in new_x}
    paths = torch.empty(batch, steps + 1, dtype=torch.long)
    j = torch.full((batch,), last, dtype=torch.long)
    paths[:, steps] = j
    for k in range(steps, 0, -1):
        j = back[k - 1][j, torch.arange(batch)]
        paths[:, k - 1] = j
    return paths, best[last], calls


def median_path(paths: Tensor) -> Tensor:
    """OSS-ave: the per-step median of grid indices over noises (strictly increasing when every path is)."""
    ordered = paths.sort(dim=0).values
    b = paths.shape[0]
    return (ordered[(b - 1) // 2] + ordered[b // 2]) // 2


def path_schedule(task: Task, levels: Tensor, idx: Tensor) -> Tensor:
    """The schedule of grid indices ``idx`` (ending at the grid's 0): its levels, the last replaced by sigma_min
    (the schedule-file convention), snapped to the model's levels."""
    sigmas = torch.cat([levels[idx[:-1]], torch.tensor([task.sigma_min], dtype=torch.float64)])
    return check_sigmas(task.space.snap(sigmas, f"{task.steps}-step schedule"), allow_final_zero=False)


@dataclass(frozen=True)
class OssOptions:
    """Options of ``method="oss"``."""

    grid: int = 100  #: positive levels of the teacher grid, from sigma_max (OSS: 200 teacher steps)
    rho: float = 7.0  #: the grid is EDM's rho spacing
    teacher: str = "dpmpp_2m"  #: the teacher's solver (deterministic)
    refine: int = 2  #: teacher substeps per grid interval
    teacher_samples: int = 32  #: noises, one programme each; the schedule is their median (OSS-ave)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> OssOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AysError(
                f"unknown option(s) for method 'oss': {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        opt = cls(**options)
        check_steps(opt.grid, name="grid", minimum=2)
        check_steps(opt.refine, name="refine")
        check_steps(opt.teacher_samples, name="teacher_samples", minimum=1)
        check_positive(opt.rho, name="rho")
        if not isinstance(opt.teacher, str) or solvers.info(opt.teacher).stochastic:
            raise AysError(f"teacher must be a deterministic solver, got {opt.teacher!r}")
        return cls(**{**asdict(opt), "rho": float(opt.rho)})


def programme_calls(solver: str, levels: Tensor, steps: int) -> int:
    """Denoiser rows :func:`oss_paths` spends per noise: one per live source level and step, Heun's correctors.

    The live sources of step ``k`` are the levels reached in ``k − 1`` steps (all targets of the
    step before), so the count is known before any call.
    """
    lv = check_sigmas(levels)
    last = lv.numel() - 1
    src, calls = [0], 0
    for k in range(1, steps + 1):
        targets = list(range(k, last - (steps - k) + 1)) if k < steps else [last]
        calls += len(src)
        if solver == "heun":
            calls += sum(1 for i in src for j in targets if j > i and float(lv[j]) != 0.0)
        src = sorted({j for i in src for j in targets if j > i})
    return calls


@register("oss")
def oss(task: Task, **options: Any) -> OptimizeResult:
    """OSS-ave (Pei et al. 2025): per-noise dynamic programmes with the target solver, then the median.

    Stages ``"teacher"`` (``B × calls(teacher)``) and ``"search"`` (``B ×``
    :func:`programme_calls`). ``budget=`` sets ``B = teacher_samples`` unless it is given:
    the largest ``B`` whose two stages fit. Under ``torch.distributed`` each rank runs the
    teacher and the programme of its share of the noises (every noise's programme is its
    own), and the grid paths are all-gathered: every rank takes the single-process median.
    """
    opt = OssOptions.parse(options)
    student = ode_counterpart(task.solver)
    levels = grid_levels(task, opt.grid, opt.rho)
    if levels.numel() < task.steps + 1:
        raise AysError(f"{task.steps} steps need a grid of more than {levels.numel() - 1} levels above sigma_min")
    per_teacher = trajectory_calls(levels, opt.teacher, opt.refine)
    per_search = programme_calls(student, levels, task.steps)
    if task.budget is not None and "teacher_samples" not in options:
        b = fit_budget(lambda k: k * (per_teacher + per_search), task.budget, 1, "oss", "teacher noise")
        opt = dataclasses.replace(opt, teacher_samples=b)
    n_noise = opt.teacher_samples
    check_fits(n_noise * (per_teacher + per_search), task.budget, "oss")
    settings = task.settings({**asdict(opt), "student_solver": student})
    task.meter.plan({"teacher": n_noise * per_teacher, "search": n_noise * per_search})
    probe, probe_cond = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "oss", "probe")))
    gen = torch.Generator().manual_seed(seed_for(task.seed, "oss", "noise"))
    noise = torch.randn((n_noise, *probe.shape[1:]), generator=gen, dtype=probe.dtype).to(probe.device)
    x = noise * float(levels[0])
    # each noise is denoised under the conditioning of a data row of its own (ays.data)
    g_cond = torch.Generator().manual_seed(seed_for(task.seed, "oss", "cond"))
    cond = conditioning(task.data, n_noise, g_cond, probe_cond)
    cond = to(cond, probe.device)

    def share(ks: slice) -> Tensor:
        """Grid paths and final costs of the noises ``ks``: float64 ``[|ks|, steps + 2]``."""
        if ks.stop == ks.start:
            return torch.zeros(0, task.steps + 2, dtype=torch.float64)
        xs, cs = x[ks], take(cond, ks)
        with task.meter.stage("teacher"):
            traj, _, _ = trajectory(task.denoiser, xs, levels, opt.teacher, opt.refine, task.batch_size, cs)
        with task.meter.stage("search"):
            paths, cost, _ = oss_paths(student, task.denoiser, xs, levels, traj, task.steps, task.batch_size, cs)
        return torch.cat([paths.to(torch.float64), cost.reshape(-1, 1)], dim=1)

    both = _dist.map_shards(n_noise, share, dim=0)
    paths, cost = both[:, :-1].round().long(), both[:, -1]
    sigmas = path_schedule(task, levels, median_path(paths))
    teacher_calls, dp_calls = n_noise * per_teacher, n_noise * per_search
    calls = teacher_calls + dp_calls
    history = [{"stage": "oss", "grid": int(levels.numel()), "teacher_samples": n_noise,
                "teacher_calls": teacher_calls, "dp_calls": dp_calls, "calls": calls,
                "cost": float(cost.mean()), "paths": paths.tolist(), "sigmas": sigmas.tolist()}]
    if task.progress is not None:
        task.progress({"event": "done", "klub": None, "calls": calls, "sigmas": sigmas.tolist()})
    return OptimizeResult(
        sigmas=sigmas, steps=task.steps, solver=task.solver, method=task.method, timesteps=task.space.timesteps(sigmas),
        history=history, calls=calls, settings=settings, model=task.model,
    )

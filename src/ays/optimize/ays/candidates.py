"""The portfolio of the default method: a candidate schedule from every family the project has.

- **blend** (``family="blend"``): ``log s(λ) = (1 − λ) log s_start + λ log s_klub`` for
  ``path_points`` values of λ, from ``kl_optimal`` at the data's scale ``ĉ`` (paper Thm 3.1;
  or ``init``) to the grid optimum of the KLUB (the paper's objective, :mod:`ays.optimize.dp`);
  ``family="grid"`` adds the paths from ``ĉ·c_factors``.
- **oss**: OSS's programme (:mod:`ays.optimize.oss`) over the shared teacher trajectory of the
  first ``oss_samples`` evidence noises, the median of their paths (OSS-ave).
- **gits**: GITS's programme (:mod:`ays.optimize.gits`) on the one-step errors of the same
  trajectory, all evidence noises.
- **free**: what costs no denoiser call: ``kl_optimal`` at each ``kl_c`` (0.5 among them),
  ``time_uniform`` and the named ``heuristics`` (loglinear, karras, beta by default); the
  start of the blend path counts as free too.

Each candidate is snapped to the model's levels and kept once (the first of coinciding ones).
"""

from __future__ import annotations

from typing import Any

import torch

from ... import schedules
from ...validate import AysError, check_sigmas
from ..gits import gits_path, pair_errors
from ..oss import median_path, ode_counterpart, oss_paths, path_schedule
from ..task import Task

__all__ = ["Candidate", "blend", "free_schedules", "gits_schedule", "named", "oss_grid_paths", "oss_schedule",
           "portfolio"]

Tensor = torch.Tensor
#: (record fields, sigmas, free): ``free`` when it costs no denoiser call
Candidate = tuple[dict[str, Any], Tensor, bool]


def blend(start: Tensor, end: Tensor, lam: float) -> Tensor:
    """``exp((1 − λ) log start + λ log end)``: decreasing whenever both are (same length)."""
    if start.shape != end.shape:
        raise AysError("blend needs two schedules of the same length")
    if lam == 0.0 or lam == 1.0:  # the ends themselves, bit for bit
        return (start if lam == 0.0 else end).clone()
    out = torch.exp((1.0 - lam) * start.log() + lam * end.log())
    out[0], out[-1] = start[0], start[-1]
    return out


def free_schedules(task: Task, kl_c: tuple[float, ...]) -> list[Candidate]:
    """``kl_optimal(c)`` for each ``c``, then ``time_uniform`` (in the model's time)."""
    n, lo, hi = task.steps, task.sigma_min, task.sigma_max
    out: list[Candidate] = [({"family": "free", "heuristic": "kl_optimal", "c": c},
                             schedules.kl_optimal(n, lo, hi, c=c), True) for c in kl_c]
    out.append(({"family": "free", "heuristic": "time_uniform"},
                schedules.time_uniform(n, lo, hi, noise=task.noise), True))
    return out


def named(task: Task, heuristics: tuple[str, ...]) -> list[Candidate]:
    """The named heuristics over the task's range (beta in the model's time)."""
    n, lo, hi = task.steps, task.sigma_min, task.sigma_max
    return [({"family": "free", "heuristic": h},
             schedules.build(h, n, lo, hi, **({"noise": task.noise} if h == "beta" else {})), True)
            for h in heuristics]


def oss_grid_paths(task: Task, levels: Tensor, x: Tensor, states: Tensor, cond: Any) -> Tensor:
    """OSS's grid paths ``[B, steps + 1]`` (float64, to gather) of the noises ``x`` (scaled) whose teacher
    states on ``levels`` are ``states``, with the ODE counterpart of the target solver (as ``method="oss"``)."""
    paths, _, _ = oss_paths(ode_counterpart(task.solver), task.denoiser, x, levels, states, task.steps,
                            task.batch_size, cond)
    return paths.to(torch.float64)


def oss_schedule(task: Task, levels: Tensor, paths: Tensor) -> Tensor:
    """OSS-ave: the schedule of the per-step median of the grid paths."""
    return path_schedule(task, levels, median_path(paths.round().long()))


def gits_schedule(task: Task, levels: Tensor, states: Tensor, dens: Tensor) -> Tensor:
    """GITS's path on ``levels`` (decreasing, ending in 0) from the teacher's states: the mean one-step error
    (L2, GITS's metric) over the noises, its programme, the schedule."""
    cost = pair_errors(states, dens, levels, "l2").mean(dim=0)
    idx = gits_path(cost, task.steps, 1.0)  # increasing-grid indices, from the top level down
    return path_schedule(task, levels, levels.numel() - 1 - idx)


def portfolio(task: Task, start: list[tuple[float | None, Tensor]], end: Tensor, path_points: int,
              taught: list[tuple[str, Tensor]], free: list[Candidate], extra: list[Candidate]) -> list[Candidate]:
    """Every candidate once, in order: the blend paths (start first), the taught ones (oss, gits), the free."""
    paths: list[Candidate] = []
    for c, s0 in start:
        for lam in torch.linspace(0.0, 1.0, path_points, dtype=torch.float64).tolist():
            fam = "klub" if lam == 1.0 else "blend"
            paths.append(({"family": fam, "lambda": lam, "c": c}, blend(s0, end, lam), lam == 0.0))
    taught_c: list[Candidate] = [({"family": name}, s, False) for name, s in taught]
    out: list[Candidate] = []
    for params, s, is_free in paths + taught_c + free + extra:
        try:
            s = check_sigmas(task.space.snap(s, "candidate"), allow_final_zero=False)
        except AysError:  # collapses onto too few model timesteps
            continue
        if not any(torch.equal(s, t) for _, t, _ in out):
            out.append((params, s, is_free))
    return out


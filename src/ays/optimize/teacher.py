"""The teacher room: a many-step ODE run from given noises, its states on a grid, paid for once.

Every teacher-based method reads the same thing: the states ``x*_j`` of a fine
probability-flow run at the levels ``g_0 = sigma_max > g_1 > ... > g_N`` of a grid, and the
teacher's denoiser outputs ``D(x*_j, g_j)`` there. OSS (:mod:`ays.optimize.oss`) matches a
student to the states; GITS (:mod:`ays.optimize.gits`) scores one Euler step from ``x*_i``
(with the teacher's own ``D``) against ``x*_j``; the default method (:mod:`ays.optimize.ays`)
runs one trajectory from its evidence noises and hands the same tensors to both and to its
judge (the state at ``g_N = 0`` is the teacher's sample). So the teacher's calls are paid
once for all three.

The run: ``solver`` (DPM-Solver++(2M) by default, second order) on the positive grid levels
subdivided ``refine`` times in log-sigma, then into 0 when the grid ends there.
Denoiser calls per noise: :func:`trajectory_calls`.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import schedules, solvers
from ..data import Cond, bind, take
from ..validate import check_sigmas
from .task import Task

__all__ = ["grid_levels", "refined", "trajectory", "trajectory_calls"]

Tensor = torch.Tensor


def refined(grid_desc: Tensor, refine: int) -> Tensor:
    """The decreasing grid with ``refine − 1`` log-spaced levels inserted into every interval."""
    if refine == 1:
        return grid_desc
    hi, lo = grid_desc[:-1].log(), grid_desc[1:].log()
    frac = torch.arange(refine, dtype=torch.float64) / refine
    inner = torch.exp(hi[:, None] + frac[None, :] * (lo - hi)[:, None]).reshape(-1)
    return torch.cat([inner, grid_desc[-1:]])


def grid_levels(task: Task, size: int, rho: float) -> Tensor:
    """The decreasing grid: ``size`` rho-spaced levels from sigma_max, above sigma_min, then 0."""
    pos = schedules.karras(size, task.sigma_min, task.sigma_max, rho=rho)[:-1]
    if task.space.is_discrete:
        # the model's own levels nearest to the grid, duplicates merged
        pos = task.space.level(torch.unique(task.space.index(pos))).to(torch.float64).flip(0)
        pos = pos[pos > task.sigma_min * (1 + 1e-12)]
    return torch.cat([pos, pos.new_zeros(1)])


def _fine(levels: Tensor, refine: int) -> Tensor:
    lv = check_sigmas(levels)
    fine = refined(lv[lv > 0], refine)
    return torch.cat([fine, lv.new_zeros(1)]) if lv[-1] == 0 else fine


def trajectory_calls(levels: Tensor, solver: str = "dpmpp_2m", refine: int = 2) -> int:
    """Denoiser calls of :func:`trajectory` per noise."""
    return solvers.count_calls(solver, _fine(levels, refine))


def trajectory(
    denoiser: Any, x: Tensor, levels: Any, solver: str = "dpmpp_2m", refine: int = 2,
    batch_size: int | None = None, cond: Cond | None = None,
) -> tuple[Tensor, Tensor, int]:
    """The teacher's states ``[G, B, ...]`` at the ``G`` decreasing ``levels`` (which may end in 0), its
    denoiser outputs ``[G − 1, B, ...]`` at every level but the last, and its calls.

    ``solver`` runs from ``x`` (the scaled noise at ``levels[0]``) over the fine grid (module
    docstring); the last state is the run's output. Row i of ``x`` is denoised under ``cond``'s
    row i (:mod:`ays.data`); at most ``batch_size`` rows per run.
    """
    lv = check_sigmas(levels)
    positive = int((lv > 0).sum())
    fine = _fine(lv, refine)
    fn = solvers.get(solver)
    rows = x.shape[0] if batch_size is None else max(1, min(x.shape[0], batch_size))
    states, dens = [], []
    for r0 in range(0, x.shape[0], rows):
        seen: list[Tensor] = []
        den: list[Tensor] = []

        def grab(info: dict[str, Any], seen: list[Tensor] = seen, den: list[Tensor] = den) -> None:
            if info["i"] % refine == 0 and info["i"] // refine < positive:
                seen.append(info["x"])
                den.append(info["denoised"])

        out = fn(bind(denoiser, take(cond or {}, slice(r0, r0 + rows))), x[r0 : r0 + rows], fine, callback=grab)
        states.append(torch.stack([*seen, out]))  # the run ends at the last level: its output is the state there
        dens.append(torch.stack(den))
    return torch.cat(states, dim=1), torch.cat(dens, dim=1), x.shape[0] * solvers.count_calls(solver, fine)

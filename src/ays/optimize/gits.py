"""A GITS-style baseline: dynamic programming on the local error against a fine teacher trajectory.

GITS (Chen et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling",
ICML 2024) observes that probability-flow trajectories are nearly straight and
chooses the coarse steps that deviate least from a fine teacher: run the ODE
from ``teacher_samples`` noise draws (256 in the paper) on a fine grid (61 levels,
EDM's rho=7 spacing), and for every pair of grid levels ``g_i > g_j`` set

    cost(i → j) = mean over samples of || step(x_i, g_i → g_j) − x_j ||,

the distance between one coarse solver step taken from the teacher's state at
``g_i`` and the teacher's state at ``g_j``. A dynamic programme over the grid then
picks the ``n``-step path of least total cost (``O(n·G²)``, as :func:`ays.optimize.dp.dp_paths`).

Choices made here, as in the public GITS code: the coarse step is the first-order
(Euler = DDIM) step ``x_j = D_i + (g_j/g_i)(x_i − D_i)`` with the teacher's own ``D_i``,
whatever the target solver; the metric is the L2 norm (``metric="l2"``) or its square
(``"l2sq"``); ``coeff`` scales the cost of the remaining path as in the GITS code
(1 = the plain sum). The teacher is DPM-Solver++(2M) on the grid subdivided
``refine`` times in log-sigma, recording the states at the grid levels. For
stochastic target solvers the teacher is still the ODE (GITS is an ODE method).

Denoiser calls: ``teacher_samples × (G − 1) × refine`` (the meter's stage ``"teacher"``). With
``budget=`` and no explicit ``teacher_samples``, ``teacher_samples = budget // ((G − 1) × refine)``
(at least 1). Under ``torch.distributed`` the teacher runs are shared out across ranks
(:func:`teacher_costs`); the result is the single-process one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .. import distributed as _dist
from .. import schedules
from ..data import Cond, conditioning, draw, take, to
from ..klub import seed_for
from ..validate import AysError, check_positive, check_sigmas, check_steps
from .dp import check_fits, check_option_names, dp_paths, fit_budget
from .result import OptimizeResult
from .task import Task, register
from .teacher import refined, trajectory

__all__ = ["GitsOptions", "gits", "gits_path", "pair_errors", "teacher_costs"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class GitsOptions:
    """Options of ``method="gits"``."""

    grid: int = 61  #: levels of the teacher grid (GITS: 61)
    rho: float = 7.0  #: the grid is EDM's rho spacing (GITS's teacher schedule)
    teacher_samples: int = 256  #: teacher trajectories (GITS: 256)
    refine: int = 2  #: teacher substeps per grid interval
    metric: str = "l2"  #: "l2" (GITS) or "l2sq"
    coeff: float = 1.0  #: weight of the remaining path in the programme (GITS's ``coeff``)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> GitsOptions:
        check_option_names(options, (f.name for f in fields(cls)), "gits")
        opt = cls(**options)
        check_steps(opt.grid, name="grid", minimum=3)
        check_steps(opt.teacher_samples, name="teacher_samples", minimum=1)
        check_steps(opt.refine, name="refine")
        check_positive(opt.rho, name="rho")
        check_positive(opt.coeff, name="coeff")
        if opt.metric not in ("l2", "l2sq"):
            raise AysError(f"metric must be 'l2' or 'l2sq', got {opt.metric!r}")
        return cls(**{**asdict(opt), "rho": float(opt.rho), "coeff": float(opt.coeff)})


#: Noise rows per partial sum of the cost: fixed, so the order of the sum does not depend on the ranks.
_BLOCK = 8


def pair_errors(states: Tensor, dens: Tensor, grid_desc: Tensor, metric: str = "l2") -> Tensor:
    """Per noise, GITS's error of every coarse step: ``[B, G, G]``, ``[r, a, b]`` for ``a < b`` (indices of the
    INCREASING grid), the distance between one Euler step ``D_i + (g_j/g_i)(x_i − D_i)`` from the teacher's
    state at ``g_i`` (its own ``D_i``) and its state at ``g_j`` (``states``/``dens`` of
    :func:`ays.optimize.teacher.trajectory` on ``grid_desc``, which may end in 0: the step there is ``D_i``)."""
    size, b = grid_desc.numel(), states.shape[1]
    x = states.reshape(size, b, -1).to(torch.float64)
    d = dens.reshape(size - 1, b, -1).to(torch.float64)
    out = torch.zeros(b, size, size, dtype=torch.float64)
    for i in range(size - 1):
        for j in range(i + 1, size):
            err = (d[i] + (float(grid_desc[j]) / float(grid_desc[i])) * (x[i] - d[i]) - x[j]).square().sum(dim=1)
            # increasing-grid indices: level g[j] is index size-1-j, g[i] is size-1-i
            out[:, size - 1 - j, size - 1 - i] = err.sqrt() if metric == "l2" else err
    return out


def teacher_costs(
    denoiser: Any, noise: Tensor, grid_desc: Tensor, refine: int = 2, metric: str = "l2", batch_size: int | None = None,
    cond: Cond | None = None,
) -> tuple[Tensor, int]:
    """GITS's cost matrix on a decreasing grid: ``cost[a, b]`` (a < b, indices of the INCREASING grid).

    ``noise`` is standard normal ``[N, ...]``, row i denoised under ``cond``'s row i;
    returns (cost [G, G] float64, denoiser rows of all ranks). The errors are summed in
    blocks of :data:`_BLOCK` rows, then over the blocks in order; under ``torch.distributed``
    each rank runs the teacher on its share of the blocks and the block sums are all-gathered
    (:func:`ays.distributed.map_shards`), so every rank gets the single-process matrix.
    """
    g = check_sigmas(grid_desc, allow_final_zero=False)
    size = g.numel()
    fine = refined(g, refine)
    n = noise.shape[0]
    blocks = -(-n // _BLOCK)
    # rows per teacher run: whole blocks, so that a block never straddles two runs
    per_run = n if batch_size is None else max(_BLOCK, batch_size // _BLOCK * _BLOCK)

    def block_sums(bs: slice) -> Tensor:
        """Summed errors of the noise blocks ``bs``: float64 ``[|bs|, G, G]``."""
        out = torch.zeros(bs.stop - bs.start, size, size, dtype=torch.float64)
        r_lo, r_hi = bs.start * _BLOCK, min(n, bs.stop * _BLOCK)
        for r0 in range(r_lo, r_hi, per_run):
            r1 = min(r_hi, r0 + per_run)
            z = noise[r0:r1]
            states, dens, _ = trajectory(denoiser, z * float(g[0]), g, "dpmpp_2m", refine, None,
                                         take(cond or {}, slice(r0, r1)))
            err = pair_errors(states, dens, g, metric)
            b0, nb = (r0 - r_lo) // _BLOCK, -(-(r1 - r0) // _BLOCK)
            padded = torch.zeros(nb * _BLOCK, size, size, dtype=torch.float64)
            padded[: r1 - r0] = err
            out[b0 : b0 + nb] = padded.reshape(nb, _BLOCK, size, size).sum(dim=1)
        return out

    total = _dist.map_shards(blocks, block_sums, dim=0).sum(dim=0)
    return total / n, n * (fine.numel() - 1)


def gits_path(cost: Tensor, steps: int, coeff: float) -> Tensor:
    """GITS's programme with ``V = cost + coeff · V_rest`` (``coeff = 1``: :func:`dp_paths`)."""
    if coeff == 1.0:
        return dp_paths(cost, steps)[steps][0]
    size = cost.shape[0]
    valid = torch.ones(size, size, dtype=torch.bool).triu(1)
    cm = torch.where(valid, cost, torch.full_like(cost, float("inf")))
    v = torch.full((size,), float("inf"), dtype=torch.float64)
    v[-1] = 0.0
    args = []
    for _ in range(steps):
        v, arg = (cm + coeff * v[None, :]).min(dim=1)
        args.append(arg)
    path, j = [0], 0
    for m in range(steps, 0, -1):
        j = int(args[m - 1][j])
        path.append(j)
    return torch.tensor(path[::-1], dtype=torch.long)


@register("gits")
def gits(task: Task, **options: Any) -> OptimizeResult:
    """GITS-style schedule: DP over a 61-level grid on the one-step error against a fine ODE teacher.

    ``budget=`` sets ``teacher_samples`` unless it is given (module docstring).
    """
    opt = GitsOptions.parse(options)
    grid_desc = schedules.karras(opt.grid - 1, task.sigma_min, task.sigma_max, rho=opt.rho)
    if task.space.is_discrete:
        # the model's own levels nearest to the grid, duplicates merged
        grid_desc = task.space.level(torch.unique(task.space.index(grid_desc))).to(torch.float64).flip(0)
    if grid_desc.numel() < task.steps + 1:
        raise AysError(f"{task.steps} steps need a grid of more than {grid_desc.numel()} levels")
    per_noise = (grid_desc.numel() - 1) * opt.refine
    if task.budget is not None and "teacher_samples" not in options:
        b = fit_budget(lambda k: k * per_noise, task.budget, 1, "gits", "teacher trajectory")
        opt = dataclasses.replace(opt, teacher_samples=b)
    check_fits(opt.teacher_samples * per_noise, task.budget, "gits")
    settings = task.settings(asdict(opt))
    task.meter.plan({"teacher": opt.teacher_samples * per_noise})
    gen = torch.Generator().manual_seed(seed_for(task.seed, "gits", "noise"))
    probe, probe_cond = draw(task.data, 1, torch.Generator().manual_seed(seed_for(task.seed, "gits", "probe")))
    noise = torch.randn((opt.teacher_samples, *probe.shape[1:]), generator=gen, dtype=probe.dtype).to(probe.device)
    g_cond = torch.Generator().manual_seed(seed_for(task.seed, "gits", "cond"))
    cond = conditioning(task.data, opt.teacher_samples, g_cond, probe_cond)
    with task.meter.stage("teacher"):
        cost, calls = teacher_costs(task.denoiser, noise, grid_desc, opt.refine, opt.metric, task.batch_size,
                                    to(cond, probe.device))
    idx = gits_path(cost, task.steps, opt.coeff)
    sigmas = torch.flip(grid_desc, [0])[idx]
    sigmas = check_sigmas(task.space.snap(sigmas, f"{task.steps}-step schedule"), allow_final_zero=False)
    history = [{"stage": "gits", "grid": int(grid_desc.numel()), "teacher_samples": opt.teacher_samples,
                "calls": calls, "sigmas": sigmas.tolist()}]
    if task.progress is not None:
        task.progress({"event": "done", "klub": None, "calls": calls, "sigmas": sigmas.tolist()})
    return OptimizeResult(
        sigmas=sigmas, steps=task.steps, solver=task.solver, method=task.method, timesteps=task.space.timesteps(sigmas),
        history=history, calls=calls, settings=settings, model=task.model,
    )

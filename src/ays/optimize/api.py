"""``ays.optimize``: validate the request, then hand it to the chosen method.

The optimisation methods live beside this module (``coordinate``: the paper's
Alg. 1) and register themselves in :data:`ays.optimize.task.METHODS`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import device as _device
from .. import solvers
from ..data import check_data, draw
from ..klub import seed_for
from ..noise import DiscreteVP, NoiseSchedule
from ..validate import AysError, check_budget, check_choice, check_range, check_sigmas, check_steps
from .result import OptimizeResult
from .task import DEFAULT_METHOD, DEFAULT_SOLVER, METHODS, Denoiser, Progress, Task

__all__ = ["optimize"]

Tensor = torch.Tensor

def _float_or_none(v: Any, name: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise AysError(f"{name} must be a number, got {v!r}")
    return float(v)


def optimize(
    denoiser: Denoiser,
    data: Tensor | Any,
    steps: int = 10,
    solver: str = DEFAULT_SOLVER,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    seed: int = 0,
    method: str = DEFAULT_METHOD,
    samples: int | None = None,
    early_stopping: bool = True,
    init: Tensor | Sequence[float] | None = None,
    noise: NoiseSchedule | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    batch_size: int | None = None,
    progress: Progress | None = None,
    model: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    max_memory: int | str | None = None,
    budget: int | str | None = None,
    **method_options: Any,
) -> OptimizeResult:
    """Optimise a sampling schedule for ``denoiser`` on ``data`` (Align Your Steps).

    Args:
        denoiser: ``denoiser(x, sigma) -> x0_hat`` in the EDM convention, ``sigma`` of shape [batch].
        data: clean samples [N, ...] (cycled through random permutations) or ``data(n, generator)``.
        steps: number of steps n of the result (n + 1 noise levels).
        solver: the solver the schedule is meant for (recorded; the KLUB is that of
            stochastic DDIM, whose schedules transfer to other solvers, paper Sec. 3).
        sigma_min, sigma_max: the range; default 0.002 and 80 (EDM), or the model's own range
            for a discrete-time ``noise``, or ``init``'s ends.
        seed: all randomness derives from it; the same seed gives the same schedule.
        method: a name in ``ays.optimize.METHODS``, default :data:`~ays.optimize.task.DEFAULT_METHOD`
            (also that of every ``ays`` command): ``"coordinate"`` (the paper's Alg. 1), ``"ays"`` (the
            global optimiser ``"dp"`` plus a stopping point chosen
            from evidence, sliced W2 of few-step samples to a many-step reference run),
            ``"dp"`` (the exact grid KLUB minimiser), ``"gits"``, ``"dmn"`` (baselines).
        samples: Monte Carlo chains per KLUB estimate (default 8,192, the paper's; ``"ays"`` sets its
            table's chains from the budget unless this is given).
        early_stopping: stop early (the paper's method; the default). ``False``: run to
            convergence of the KLUB estimate, i.e. return the KLUB minimiser.
        init: starting schedule (else EDM rho=7, or time-uniform for discrete-time models).
        noise: an :class:`ays.noise.DiscreteVP` for discrete-time models (levels snap to
            its timesteps; the result carries ``timesteps``); other parametrisations are
            continuous and need nothing.
        checkpoint: a JSON file the full state is written to (atomically) after every sweep.
        resume: continue from ``checkpoint`` (refused if its settings differ); a missing
            file starts afresh. The result equals that of an uninterrupted run.
        batch_size: denoiser rows per call (default :data:`ays.klub.DEFAULT_BATCH_SIZE`).
        progress: ``progress(event: dict)`` after every sweep (``event["event"] == "sweep"``)
            and once at the end (``"done"``); exceptions it raises propagate (after the
            checkpoint is written), which is how a caller interrupts.
        model: a label stored with the result.
        dtype: run the denoiser in this dtype (``"float16"``, ``"bfloat16"``, ...; default its
            parameters' dtype): inputs are cast to it, outputs cast back; schedule arithmetic and
            KLUB sums stay float64. An ``nn.Module`` denoiser is converted in place.
        device: run the denoiser there (default: its parameters' device); the draws follow.
        max_memory: cap (bytes, or ``"8GiB"``) on the memory of one denoiser call; sets the batch
            size (:func:`ays.device.batch_size_for`) and keeps the draws in host memory.
        budget: denoiser calls the method may spend, all its stages together (an integer, or
            ``"50k"``); the method splits it over its stages (:mod:`ays.optimize.stages`). Default: the
            method's own (``"ays"``: :func:`ays.optimize.ays.default_budget`, 50,000 at 10 steps).
        Under ``torch.distributed`` (e.g. ``torchrun``) every rank evaluates its share of the
        draws and the result equals the single-process one (:mod:`ays.distributed`).
        **method_options: options of the method (see ``CoordinateOptions``).

    Returns:
        :class:`OptimizeResult`.
    """
    if not callable(denoiser):
        raise AysError(f"denoiser must be callable denoiser(x, sigma), got {type(denoiser).__name__}")
    data = check_data(data)
    steps = check_steps(steps)
    check_choice(method, METHODS, what="method")
    if not isinstance(solver, str):
        raise AysError(f"solver must be a name, got {solver!r}")
    check_choice(solver, solvers.names(), what="solver")
    given = frozenset(name for name, v in (("samples", samples), ("budget", budget)) if v is not None)
    samples = 8192 if samples is None else check_steps(samples, name="samples", minimum=2)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise AysError(f"seed must be an integer, got {seed!r}")
    if not isinstance(early_stopping, bool):
        raise AysError(f"early_stopping must be True or False, got {early_stopping!r}")
    if not isinstance(resume, bool):
        raise AysError(f"resume must be True or False, got {resume!r}")
    if batch_size is not None:
        batch_size = check_steps(batch_size, name="batch_size", minimum=2)
    if progress is not None and not callable(progress):
        raise AysError("progress must be a callable progress(event) or None")
    if model is not None and not isinstance(model, str):
        raise AysError(f"model must be a string label, got {model!r}")
    if noise is not None and not all(callable(getattr(noise, a, None)) for a in ("sigma", "t")):
        raise AysError(f"noise must be a noise parametrisation from ays.noise, got {type(noise).__name__}")
    if budget is not None:
        budget = check_budget(budget)
    if resume and checkpoint is None:
        raise AysError("resume=True needs a checkpoint path")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise AysError(f"checkpoint must be a file path, got {checkpoint!r}")

    lo = _float_or_none(sigma_min, "sigma_min")
    hi = _float_or_none(sigma_max, "sigma_max")
    init_t = None
    if init is not None:
        init_t = check_sigmas(init, allow_final_zero=False, name="init")
        if lo is not None and lo != float(init_t[-1]):
            raise AysError(f"init ends at {float(init_t[-1])} but sigma_min={lo}")
        if hi is not None and hi != float(init_t[0]):
            raise AysError(f"init starts at {float(init_t[0])} but sigma_max={hi}")
        lo, hi = float(init_t[-1]), float(init_t[0])
    if isinstance(noise, DiscreteVP):
        lo = noise.sigma_min if lo is None else lo
        hi = noise.sigma_max if hi is None else hi
        if lo < noise.sigma_min * (1 - 1e-9) or hi > noise.sigma_max * (1 + 1e-9):
            raise AysError(
                f"the range [{lo:.6g}, {hi:.6g}] leaves the model's range "
                f"[{noise.sigma_min:.6g}, {noise.sigma_max:.6g}]"
            )
    lo = 0.002 if lo is None else lo
    hi = 80.0 if hi is None else hi
    lo, hi = check_range(lo, hi)
    if isinstance(noise, DiscreteVP):
        # The ends are model levels too.
        ends = noise.sigmas[noise.nearest_timestep(torch.tensor([lo, hi], dtype=torch.float64))]
        lo, hi = float(ends[0]), float(ends[1])
        if not lo < hi:
            raise AysError("sigma_min and sigma_max fall on the same model timestep")
        if init_t is not None:
            init_t = init_t.clone()
            init_t[0], init_t[-1] = hi, lo

    run = _device.prepare(denoiser, dtype, device)
    if max_memory is not None:
        cap = _device.parse_memory(max_memory)
        assert cap is not None
        row, _ = draw(data, 1, torch.Generator().manual_seed(seed_for(int(seed), "probe")))
        batch_size = _device.batch_size_for(run, row, cap, sigma=hi, batch_size=batch_size)
    else:
        data = _device.place_data(data, run.device)

    task = Task(
        denoiser=run,
        data=data,
        steps=steps,
        solver=solver,
        sigma_min=lo,
        sigma_max=hi,
        seed=int(seed),
        samples=samples,
        early_stopping=early_stopping,
        init=init_t,
        noise=noise,
        checkpoint=None if checkpoint is None else Path(os.fspath(checkpoint)),
        resume=resume,
        batch_size=batch_size,
        progress=progress,
        model=model,
        method=method,
        dtype=None if dtype is None else str(run.dtype).removeprefix("torch."),
        budget=budget,
        given=given,
    )
    # The optimiser never needs gradients; without this, a network denoiser would
    # keep every batch's autograd graph alive.
    with torch.no_grad():
        res = METHODS[method](task, **method_options)
    if run.max_rows is not None:  # a CUDA out-of-memory back-off: record the batch that worked
        res.settings["batch_size_after_oom"] = run.max_rows
    return res

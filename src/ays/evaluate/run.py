"""The evaluation driver: sample a model with schedules × solvers × step counts and measure the samples.

A schedule is judged by what it does to samples, not by its KLUB (the bound is not the
error; AYS, arXiv 2404.14507, §3.3 and App. A.3). :func:`evaluate` draws ``samples``
samples for every (schedule, solver, steps) and every seed, from common random numbers
(:mod:`.seeds`), measures them against the truth (:mod:`.measure`), and summarises each
cell over the seeds as a mean with a Student-t confidence interval (:mod:`.stats`).
Under ``torchrun`` each run's rows are shared out by :func:`ays.sample` and every rank
measures all of them, so every rank holds the single-process table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import distributed as _dist
from .. import schedules as _schedules
from .. import solvers as _solvers
from ..data import Cond, Conditioned, conditioning, draw, event_shape, take
from ..validate import AysError, check_batch, check_range, check_steps
from .measure import METRICS, SeedContext, check_metrics, default_metrics, measure, metric_columns
from .schedule_specs import named_schedules, resolve_schedule
from .seeds import seed_generator
from .stats import confidence_interval

__all__ = ["evaluate"]

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------ arguments
def _int_list(values: Any, what: str) -> list[int]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise AysError(f"{what} must be a non-empty list of positive integers, got {values!r}")
    out = [check_steps(v, name=what) for v in values]
    if len(set(out)) != len(out):
        raise AysError(f"{what} lists a value twice: {out}")
    return out


def _names(values: Any, what: str, known: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Sequence) or not values:
        raise AysError(f"{what} must be a non-empty list of names, got {values!r}")
    out = []
    for v in values:
        if not isinstance(v, str) or v not in known:
            one = what[:-1] if what.endswith("s") else what
            raise AysError(f"unknown {one} {v!r}; choose from: {', '.join(known)}")
        if v in out:
            raise AysError(f"{what} lists {v!r} twice")
        out.append(v)
    return out


# -------------------------------------------------------------------- driving
class _Counted:
    """Counts the denoiser calls (invocations) and rows a sampler spends."""

    def __init__(self, fn: Denoiser) -> None:
        self.fn = fn
        self.calls = 0
        self.rows = 0

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.fn(x, sigma, **cond)


def _data_of(problem: Any) -> Any:
    """What :func:`ays.data.draw` takes: a problem's ``sample``, or the data itself."""
    fn = getattr(problem, "sample", None)
    if callable(fn):
        return fn
    if callable(problem) or isinstance(problem, (torch.Tensor, Conditioned, tuple)):
        return problem
    raise AysError(f"problem must have .sample(n, generator) or be data (ays.data), got {type(problem).__name__}")


def _draw(problem: Any, n: int, generator: torch.Generator) -> tuple[Tensor, Cond]:
    x, cond = draw(_data_of(problem), n, generator)
    check_batch(x, name="problem samples")
    return x, cond


def _event_shape(problem: Any, generator: torch.Generator) -> tuple[int, ...]:
    shape = getattr(problem, "shape", None)
    if isinstance(shape, tuple) and shape:
        return tuple(int(s) for s in shape)
    return event_shape(_data_of(problem), generator)


def _sample_chunk(denoiser: Denoiser, noise: Tensor, sigmas: Tensor, solver: str, g: torch.Generator,
                  cond: Cond) -> Tensor:
    from ..sample import sample

    return sample(denoiser, noise, _schedules.to_sampling(sigmas), solver=solver, generator=g, cond=cond)


def evaluate(
    denoiser: Denoiser,
    problem: Any,
    schedules: Any,
    solvers: Sequence[str] | str,
    steps: Sequence[int] | int,
    seeds: int = 3,
    samples: int = 4096,
    metrics: Sequence[str] | None = None,
    progress: Progress | None = None,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    model: str = "model",
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    reference_samples: int | None = None,
    klub_samples: int = 4096,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Sample ``denoiser`` with every schedule × solver × step count and measure the samples.

    Args:
        denoiser: ``denoiser(x, sigma) -> x0_hat`` (EDM convention, ``sigma`` of shape [batch]).
        problem: the data law: an :mod:`ays.problems` problem (``sample``, and where known
            ``log_prob``, ``means``/``stds``, ``sigma_min``/``sigma_max``), or a callable
            ``data(n, generator)``.
        schedules: a dict ``{name: spec}`` or a list of specs (names taken from the spec);
            a spec is anything :func:`resolve_schedule` takes.
        solvers: solver names (:func:`ays.solvers.names`).
        steps: step counts n (n denoiser calls for a first-order solver).
        seeds: independent replicates (seeds 0..seeds-1); the interval needs >= 2.
        samples: samples per (schedule, solver, steps, seed).
        metrics: names in :data:`METRICS` (default :func:`default_metrics`).
        progress: ``progress(event)`` after each run, ``event["event"] == "run"`` with
            ``done``/``total`` and the cell; exceptions propagate (to interrupt).
        sigma_min, sigma_max: the range of named heuristics (default: the problem's, else EDM's).
        model: a label stored in each row.
        batch_size: rows per sampler pass (default: all ``samples`` at once).
        dtype: the dtype the sampler runs in (noise and state).
        reference_samples: fresh data samples per seed for the distances (default ``samples``).
        klub_samples: chains per KLUB estimate (metric ``klub``).
        level: confidence level of the intervals.

    Returns:
        One dict per (schedule, solver, steps) in that nested order, with ``problem``,
        ``model``, ``schedule``, ``solver``, ``steps``, ``nfe`` (denoiser calls per sample),
        ``seeds``, ``samples``, for every metric column its mean and ``<column>_err`` (the
        interval's half width, ``None`` with one seed), ``calls`` (denoiser rows spent in
        all), ``seconds`` (sampling time), ``sigmas`` (the schedule, ending at sigma_min)
        and ``per_seed`` (every column's per-seed values).
    """
    if not callable(denoiser):
        raise AysError(f"denoiser must be callable denoiser(x, sigma), got {type(denoiser).__name__}")
    named = named_schedules(schedules)
    solver_list = _names(solvers, "solvers", _solvers.names())
    step_list = _int_list(steps, "steps")
    n_seeds = check_steps(seeds, name="seeds")
    n_samples = check_steps(samples, name="samples", minimum=2)
    n_ref = n_samples if reference_samples is None else check_steps(reference_samples, name="reference_samples",
                                                                    minimum=2)
    metric_list = default_metrics(problem) if metrics is None else _names(metrics, "metrics", list(METRICS))
    check_metrics(problem, metric_list)
    if batch_size is not None:
        batch_size = check_steps(batch_size, name="batch_size")
    if progress is not None and not callable(progress):
        raise AysError("progress must be a callable progress(event) or None")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise AysError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    lo = float(getattr(problem, "sigma_min", 0.002)) if sigma_min is None else sigma_min
    hi = float(getattr(problem, "sigma_max", 80.0)) if sigma_max is None else sigma_max
    lo, hi = check_range(lo, hi)
    problem_name = str(getattr(problem, "name", type(problem).__name__))

    # Resolve every schedule before any sampling: a bad spec fails fast.
    table = {
        (name, solver, n): resolve_schedule(spec, n, solver, lo, hi, name=name)
        for name, spec in named.items()
        for solver in solver_list
        for n in step_list
    }
    columns = metric_columns(metric_list)
    per_seed: dict[tuple[str, str, int], dict[str, list[float]]] = {k: {c: [] for c in columns} for k in table}
    cost: dict[tuple[str, str, int], dict[str, float]] = {k: {"calls": 0, "seconds": 0.0, "nfe": 0} for k in table}
    shape = _event_shape(problem, seed_generator(0, "shape"))
    total, done = len(table) * n_seeds, 0
    rows_per_pass = n_samples if batch_size is None else min(batch_size, n_samples)

    with torch.no_grad():
        for seed in range(n_seeds):
            g_noise = seed_generator(seed, "noise")
            noise = torch.randn(n_samples, *shape, generator=g_noise, dtype=torch.float64).to(dtype)
            reference, ref_cond = _draw(problem, n_ref, seed_generator(seed, "reference"))
            # Conditioned data: each noise row gets the conditioning of a data row of its own,
            # the same for every schedule (common random numbers); none is drawn for plain data.
            cond = conditioning(_data_of(problem), n_samples, seed_generator(seed, "conditioning"), ref_cond)
            ctx = SeedContext(problem, reference, seed, denoiser, klub_samples, problem)
            for key, sigmas in table.items():
                _, solver, n = key
                counted = _Counted(denoiser)
                # One generator per (seed) for stochastic solvers, re-seeded for every
                # schedule: the same Brownian increments drive each schedule's run.
                g = seed_generator(seed, "solver")
                start = time.perf_counter()
                parts = [
                    _sample_chunk(counted, noise[i : i + rows_per_pass], sigmas, solver, g,
                                  take(cond, slice(i, i + rows_per_pass)))
                    for i in range(0, n_samples, rows_per_pass)
                ]
                cost[key]["seconds"] += time.perf_counter() - start
                x = torch.cat(parts)
                cost[key]["calls"] += _dist.all_sum(counted.rows)  # under torchrun each rank ran its share
                cost[key]["nfe"] = _solvers.count_calls(solver, _schedules.to_sampling(sigmas))
                for metric in metric_list:
                    for col, value in measure(metric, x, sigmas, ctx).items():
                        if not math.isfinite(value):
                            raise AysError(f"metric {col!r} is not finite for schedule {key[0]!r}, {solver}, {n} steps")
                        per_seed[key][col].append(value)
                done += 1
                if progress is not None:
                    progress({"event": "run", "done": done, "total": total, "seed": seed,
                              "schedule": key[0], "solver": solver, "steps": n})

    rows = []
    for key, sigmas in table.items():
        name, solver, n = key
        row: dict[str, Any] = {
            "problem": problem_name, "model": model, "schedule": name, "solver": solver, "steps": n,
            "nfe": int(cost[key]["nfe"]), "seeds": n_seeds, "samples": n_samples,
        }
        for col in columns:
            mean, half = confidence_interval(per_seed[key][col], level)
            row[col], row[col + "_err"] = mean, half
        row["calls"] = int(cost[key]["calls"])
        row["seconds"] = round(float(cost[key]["seconds"]), 4)
        row["sigmas"] = [float(v) for v in sigmas.tolist()]
        row["per_seed"] = per_seed[key]
        rows.append(row)
    return rows

"""Evaluate schedules: sample a model with schedules × solvers × step counts and measure the samples.

A schedule is judged by what it does to samples, not by its KLUB (the bound is not the
error; AYS, arXiv 2404.14507, §3.3 and App. A.3). :func:`evaluate` draws ``samples``
samples for every (schedule, solver, steps) and every seed, measures them against the
truth, and summarises each cell over the seeds as a mean with a Student-t confidence
interval (95 %):

    mean ± t_{0.975, k-1} · sd / sqrt(k),     k = number of seeds.

Common random numbers: within one seed every schedule and every solver starts from the
same Gaussian noise, stochastic solvers draw from a generator seeded identically, and
the metrics compare against the same fresh reference samples. Differences between
schedules are then far more precise than each estimate alone, and the seeds are
independent replicates of the whole comparison.

Metrics (:data:`METRICS`; the defaults depend on the problem, :func:`default_metrics`):

- ``nll``: negative log-likelihood under the true density (the paper's Table 4 metric),
  where the problem has a density; never reported alone (it rewards collapse).
- ``sliced_w2``, ``energy``, ``mmd``: distances to fresh data samples (MMD with the median
  bandwidth of the reference, fixed within a seed so schedules are ranked on one kernel).
- ``modes``: dropped modes, total-variation error of the mass per mode and off-mode mass,
  for mixtures with few modes (:func:`ays.metrics.mode_coverage`).
- ``digits_fd``, ``precision_recall``: the digits' FID (classifier features) and improved
  precision/recall against the training digits.
- ``motion``: for the moving-digits video problem, how far consecutive frames are from a
  rigid integer translation of one another (:func:`ays.problems.video.motion_error`).
- ``klub``: the schedule's KLUB (:func:`ays.klub`), with fresh draws per seed.

Schedules may be given as heuristic names (built over the problem's noise range), as
callables ``steps -> sigmas``, as saved ``ays-schedule/1`` files or
:class:`~ays.optimize.OptimizeResult` objects (log-linearly interpolated to each step
count), or as per-(solver, steps) pre-optimised schedules in a dict. All schedules here
end at ``sigma_min > 0``; sampling uses :func:`ays.schedules.to_sampling` (last level 0).
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import math
import os
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import schedules as _schedules
from . import solvers as _solvers
from .validate import AysError, check_batch, check_range, check_sigmas, check_steps

__all__ = [
    "FORMAT",
    "METRICS",
    "confidence_interval",
    "default_metrics",
    "evaluate",
    "format_pivot",
    "format_table",
    "machine_description",
    "metric_columns",
    "read_results",
    "resolve_schedule",
    "schedule_label",
    "write_results",
]

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[dict[str, Any]], None]

#: The ``"format"`` of the JSON file :func:`write_results` writes.
FORMAT = "ays-evaluation/1"

#: Metric name -> the columns it fills (each column also gets ``<column>_err``).
METRICS: dict[str, tuple[str, ...]] = {
    "nll": ("nll",),
    "sliced_w2": ("sliced_w2",),
    "energy": ("energy",),
    "mmd": ("mmd",),
    "modes": ("dropped_modes", "mode_tv", "off_mode"),
    "digits_fd": ("digits_fd",),
    "precision_recall": ("precision", "recall"),
    "motion": ("motion",),
    "klub": ("klub",),
}

# Modes are judged only when each expects >= 10 samples (ays.metrics.mode_coverage);
# beyond this many components the count says nothing at usual sample sizes.
_MAX_MODES = 256
_IDENTITY_COLUMNS = ("problem", "model", "schedule", "solver", "steps", "nfe", "seeds", "samples")


# ----------------------------------------------------------------------- seeds
def _derive(seed: int, *keys: object) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (the same on every platform and run)."""
    text = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, *keys: object) -> torch.Generator:
    return torch.Generator().manual_seed(_derive(seed, *keys))


# ----------------------------------------------------------------- statistics
def _t_quantile(level: float, dof: int) -> float:
    from scipy.stats import t as student_t  # scipy only when an interval is computed

    return float(student_t.ppf(0.5 + level / 2.0, dof))


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """``(mean, half width)`` of a Student-t interval over independent replicates.

    The half width is ``t_{(1+level)/2, k-1} · sd / sqrt(k)``; with one value it is
    ``None`` (no interval can be given from one replicate).
    """
    vals = [float(v) for v in values]
    if not vals:
        raise AysError("confidence_interval needs at least one value")
    if not all(math.isfinite(v) for v in vals):
        raise AysError(f"confidence_interval got a non-finite value: {vals}")
    if not 0.0 < level < 1.0:
        raise AysError(f"level must be in (0, 1), got {level!r}")
    k = len(vals)
    mean = math.fsum(vals) / k
    if k < 2:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (k - 1))
    return mean, _t_quantile(level, k - 1) * sd / math.sqrt(k)


# ------------------------------------------------------------------ schedules
def schedule_label(spec: Any) -> str:
    """The name a schedule given without one gets in the results."""
    from .optimize import OptimizeResult

    if isinstance(spec, str):
        return Path(spec).stem if _is_path(spec) else spec
    if isinstance(spec, os.PathLike):
        return Path(spec).stem
    if isinstance(spec, OptimizeResult):
        return "ays"
    name = getattr(spec, "__name__", None)
    if callable(spec) and isinstance(name, str) and name != "<lambda>":
        return name
    raise AysError(
        f"cannot name a schedule given as {type(spec).__name__}; pass schedules as a dict {{name: schedule}}"
    )


def _is_path(spec: str) -> bool:
    return spec.endswith(".json") or os.sep in spec or os.path.exists(spec)


def _fit(sigmas: Any, steps: int, what: str) -> Tensor:
    try:
        s = check_sigmas(sigmas, allow_final_zero=False)
    except AysError as e:
        raise AysError(f"schedule {what}: {e}") from None
    return s if s.numel() - 1 == steps else _schedules.interpolate(s, steps)


def resolve_schedule(
    spec: Any, steps: int, solver: str, sigma_min: float, sigma_max: float, *, name: str = "schedule"
) -> Tensor:
    """The ``steps + 1`` levels (ending at ``sigma_min > 0``) a schedule spec gives for (solver, steps).

    ``spec`` is a name of :func:`ays.schedules.names` (heuristics over
    ``[sigma_min, sigma_max]``; published tables keep their own range), a path of an
    ``ays-schedule/1`` file, an :class:`~ays.optimize.OptimizeResult`, a tensor or list of
    levels, a callable ``steps -> sigmas``, or a dict keyed by ``(solver, steps)`` or by
    ``steps`` whose values are any of these (pre-optimised schedules). Saved and given
    schedules are log-linearly interpolated when their step count differs.
    """
    from .optimize import OptimizeResult, load_schedule

    if isinstance(spec, Mapping):
        for key in ((solver, steps), steps, solver):
            if key in spec:
                return resolve_schedule(spec[key], steps, solver, sigma_min, sigma_max, name=name)
        raise AysError(f"schedule {name!r} has no entry for solver {solver!r} at {steps} steps")
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in _schedules.names():
            if text in _schedules.PUBLISHED:
                return _schedules.build(text, steps)
            return _schedules.build(text, steps, sigma_min, sigma_max)
        if _is_path(text):
            return _fit(load_schedule(text).sigmas, steps, repr(name))
        raise AysError(
            f"unknown schedule {text!r}: not a schedule name ({', '.join(_schedules.names())}) nor an existing file"
        )
    if isinstance(spec, OptimizeResult):
        return _fit(spec.sigmas, steps, repr(name))
    if isinstance(spec, (torch.Tensor, list, tuple)):
        return _fit(spec, steps, repr(name))
    if callable(spec):
        out = spec(steps)
        s = _fit(out, steps, repr(name))
        if s.numel() - 1 != steps:  # pragma: no cover - _fit interpolates
            raise AysError(f"schedule {name!r} returned {s.numel() - 1} steps for {steps}")
        return s
    raise AysError(f"schedule {name!r} is a {type(spec).__name__}; expected a name, a file, levels or a callable")


def _named(schedules: Any) -> dict[str, Any]:
    if isinstance(schedules, (str, os.PathLike)):
        schedules = [schedules]
    if isinstance(schedules, Mapping):
        out = {str(k): v for k, v in schedules.items()}
    elif isinstance(schedules, Sequence):
        out = {}
        for spec in schedules:
            label = schedule_label(spec)
            if label in out:
                raise AysError(f"schedule name {label!r} given twice; pass schedules as a dict {{name: schedule}}")
            out[label] = spec
    else:
        raise AysError(f"schedules must be a list or a dict of schedules, got {type(schedules).__name__}")
    if not out:
        raise AysError("no schedules to evaluate")
    return out


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


# -------------------------------------------------------------------- metrics
def _has_density(problem: Any) -> bool:
    return callable(getattr(problem, "log_prob", None)) and not bool(getattr(problem, "has_atoms", False))


def _is_small_mixture(problem: Any) -> bool:
    stds = getattr(problem, "stds", None)
    if not isinstance(stds, torch.Tensor) or not hasattr(problem, "means"):
        return False
    return bool((stds > 0).all()) and 2 <= stds.numel() <= _MAX_MODES


def _is_video(problem: Any) -> bool:
    return str(getattr(problem, "name", "")).startswith("digits-video")


def _is_digits(problem: Any) -> bool:
    return tuple(getattr(problem, "shape", ())) == (1, 8, 8)


def default_metrics(problem: Any) -> list[str]:
    """The metrics that make sense for ``problem``.

    Always ``sliced_w2`` and ``energy``; ``nll`` where a density exists (no point
    masses); ``modes`` for mixtures of 2 to 256 Gaussian modes; ``digits_fd`` and
    ``precision_recall`` for 8×8 digits; ``motion`` for the moving-digits video.
    """
    out = []
    if _has_density(problem):
        out.append("nll")
    out += ["sliced_w2", "energy"]
    if _is_small_mixture(problem):
        out.append("modes")
    if _is_digits(problem):
        out += ["digits_fd", "precision_recall"]
    if _is_video(problem):
        out.append("motion")
    return out


def metric_columns(metrics: Sequence[str]) -> list[str]:
    """The result columns (without ``_err``) that ``metrics`` fill, in order."""
    return [c for m in metrics for c in METRICS[m]]


class _Context:
    """What the metrics of one seed share: the problem, the reference set, cached statistics."""

    def __init__(self, problem: Any, reference: Tensor, seed: int, denoiser: Denoiser, klub_samples: int,
                 klub_data: Any) -> None:
        self.problem = problem
        self.reference = reference
        self.seed = seed
        self.denoiser = denoiser
        self.klub_samples = klub_samples
        self.klub_data = klub_data
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def _measure(name: str, x: Tensor, sigmas: Tensor, ctx: _Context) -> dict[str, float]:
    from . import metrics as M

    if name == "nll":
        return {"nll": float(M.nll(x, ctx.problem))}
    if name == "sliced_w2":
        # The default directions (seed 0) are shared by every call: common random numbers.
        return {"sliced_w2": float(M.sliced_w2(x, ctx.reference))}
    if name == "energy":
        return {"energy": float(M.energy_distance(x, ctx.reference))}
    if name == "mmd":
        h = ctx.cached("bandwidth", lambda: M.median_bandwidth(ctx.reference))
        return {"mmd": float(M.mmd(x, ctx.reference, bandwidth=h))}
    if name == "modes":
        cov = M.mode_coverage(x, ctx.problem)
        return {"dropped_modes": float(len(cov.dropped)), "mode_tv": float(cov.tv), "off_mode": float(cov.off_mode)}
    if name == "digits_fd":
        return {"digits_fd": float(M.digits_fd(x))}
    if name == "precision_recall":
        from .problems import digits_data

        ref = ctx.cached("digits_train", lambda: digits_data("train"))
        pr = M.precision_recall(x, ref)
        return {"precision": float(pr.precision), "recall": float(pr.recall)}
    if name == "motion":
        from .problems.video import motion_error

        return {"motion": float(motion_error(x))}
    if name == "klub":
        from .klub import klub

        est = klub(ctx.denoiser, ctx.klub_data, sigmas, samples=ctx.klub_samples,
                   generator=_generator(ctx.seed, "klub"))
        return {"klub": float(est.total)}
    raise AysError(f"unknown metric {name!r}")  # pragma: no cover - names are checked first


# -------------------------------------------------------------------- driving
class _Counted:
    """Counts the denoiser calls (invocations) and rows a sampler spends."""

    def __init__(self, fn: Denoiser) -> None:
        self.fn = fn
        self.calls = 0
        self.rows = 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.fn(x, sigma)


def _event_shape(problem: Any, generator: torch.Generator) -> tuple[int, ...]:
    shape = getattr(problem, "shape", None)
    if isinstance(shape, tuple) and shape:
        return tuple(int(s) for s in shape)
    return tuple(_draw(problem, 1, generator).shape[1:])


def _draw(problem: Any, n: int, generator: torch.Generator) -> Tensor:
    fn = getattr(problem, "sample", None)
    fn = fn if callable(fn) else problem
    if not callable(fn):
        raise AysError(f"problem must have .sample(n, generator) or be a data callable, got {type(problem).__name__}")
    x = fn(n, generator)
    check_batch(x, name="problem samples")
    if x.shape[0] != n:
        raise AysError(f"problem.sample({n}, ...) returned {x.shape[0]} samples")
    return x


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
    named = _named(schedules)
    solver_list = _names(solvers, "solvers", _solvers.names())
    step_list = _int_list(steps, "steps")
    n_seeds = check_steps(seeds, name="seeds")
    n_samples = check_steps(samples, name="samples", minimum=2)
    n_ref = n_samples if reference_samples is None else check_steps(reference_samples, name="reference_samples",
                                                                    minimum=2)
    metric_list = default_metrics(problem) if metrics is None else _names(metrics, "metrics", list(METRICS))
    if "nll" in metric_list and not _has_density(problem):
        raise AysError(f"metric 'nll' needs a problem with a density; {getattr(problem, 'name', problem)!r} has none")
    if "modes" in metric_list and not _is_small_mixture(problem):
        raise AysError(f"metric 'modes' needs a mixture of at most {_MAX_MODES} Gaussian modes (std > 0)")
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
    shape = _event_shape(problem, _generator(0, "shape"))
    total, done = len(table) * n_seeds, 0
    rows_per_pass = n_samples if batch_size is None else min(batch_size, n_samples)

    with torch.no_grad():
        for seed in range(n_seeds):
            noise = torch.randn(n_samples, *shape, generator=_generator(seed, "noise"), dtype=torch.float64).to(dtype)
            reference = _draw(problem, n_ref, _generator(seed, "reference"))
            ctx = _Context(problem, reference, seed, denoiser, klub_samples, problem)
            for key, sigmas in table.items():
                _, solver, n = key
                counted = _Counted(denoiser)
                # One generator per (seed) for stochastic solvers, re-seeded for every
                # schedule: the same Brownian increments drive each schedule's run.
                g = _generator(seed, "solver")
                start = time.perf_counter()
                parts = [
                    _sample_chunk(counted, noise[i : i + rows_per_pass], sigmas, solver, g)
                    for i in range(0, n_samples, rows_per_pass)
                ]
                cost[key]["seconds"] += time.perf_counter() - start
                x = torch.cat(parts)
                cost[key]["calls"] += counted.rows
                cost[key]["nfe"] = _solvers.count_calls(solver, _schedules.to_sampling(sigmas))
                for metric in metric_list:
                    for col, value in _measure(metric, x, sigmas, ctx).items():
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


def _sample_chunk(denoiser: Denoiser, noise: Tensor, sigmas: Tensor, solver: str, g: torch.Generator) -> Tensor:
    from .sample import sample

    return sample(denoiser, noise, _schedules.to_sampling(sigmas), solver=solver, generator=g)


# --------------------------------------------------------------------- output
def _scalar_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in cols and k not in ("sigmas", "per_seed") and not isinstance(v, (list, dict)):
                cols.append(k)
    return cols


def _metrics_in(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    known = [c for cols in METRICS.values() for c in cols]
    present = {k for r in rows for k in r}
    return [c for c in known if c in present]


def write_results(
    rows: Sequence[Mapping[str, Any]],
    directory: str | os.PathLike[str],
    *,
    name: str = "results",
    plot: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``rows`` (from :func:`evaluate`) as ``<name>.csv`` and ``<name>.json`` in ``directory``,
    atomically, and one plot per metric (``<name>_<metric>.png``: metric vs steps, one line
    per schedule, one panel per solver, error bars = the confidence intervals).

    The CSV holds the scalar columns and the schedule as space-separated levels; the JSON
    ``{"format": "ays-evaluation/1", "created", "ays_version", "meta", "rows"}`` holds
    everything, per-seed values included. Returns ``{"csv", "json", <metric>: png path}``.
    """
    from . import __version__
    from .io import atomic_write_json, atomic_write_text

    if not rows:
        raise AysError("no result rows to write")
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AysError(f"cannot create output folder {str(folder)!r}: {e.strerror or e}") from None
    cols = _scalar_columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*cols, "sigmas"])
    for r in rows:
        cells = ["" if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in cols]
        writer.writerow([*cells, " ".join(repr(float(s)) for s in r.get("sigmas", []))])
    paths = {"csv": str(atomic_write_text(folder / f"{name}.csv", buf.getvalue()))}
    doc = {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ays_version": __version__,
        "meta": dict(meta or {}),
        "rows": [dict(r) for r in rows],
    }
    paths["json"] = str(atomic_write_json(folder / f"{name}.json", doc))
    if plot:
        from .plot import plot_metric_vs_steps

        for metric in _metrics_in(rows):
            clean = [{**r, metric + "_err": r.get(metric + "_err") or 0.0} for r in rows]
            paths[metric] = str(plot_metric_vs_steps(clean, folder / f"{name}_{metric}.png", metric))
    return paths


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read rows back from a file :func:`write_results` wrote (``.json`` or ``.csv``)."""
    from .io import read_json

    p = Path(path)
    if p.suffix == ".csv":
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise AysError(f"cannot read results {str(p)!r}: {e.strerror or e}") from None
        out = []
        for rec in csv.DictReader(io.StringIO(text)):
            row = {k: _parse_cell(v) for k, v in rec.items() if k != "sigmas"}
            row["sigmas"] = [float(s) for s in (rec.get("sigmas") or "").split()]
            out.append(row)
        return out
    doc = read_json(p, what="results file")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise AysError(f"{str(p)!r} is not an {FORMAT} results file")
    return doc["rows"]


def _fmt(value: Any, err: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    text = f"{value:.4g}"
    return text if err is None else f"{text} ± {err:.2g}"


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, markdown: bool = False,
    identity: Sequence[str] = ("schedule", "solver", "steps", "nfe"),
) -> str:
    """An aligned text table (or a markdown table) of results: ``mean ± half width`` per metric."""
    if not rows:
        return ""
    cols = list(columns) if columns is not None else _metrics_in(rows)
    head = [*identity, *cols]
    body = [[str(r.get(c, "")) for c in identity] + [_fmt(r.get(c), r.get(c + "_err")) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    numeric = [c in ("steps", "nfe", "seeds", "samples") for c in identity] + [True] * len(cols)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def format_pivot(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    row_keys: Sequence[str] = ("solver", "schedule"),
    col_key: str = "steps",
    markdown: bool = True,
    digits: int = 4,
) -> str:
    """One metric as a table in the shape of the paper's tables: a line per ``row_keys``
    value, a column per ``col_key`` value (e.g. steps 6 / 8 / 10), cells ``mean ± half width``."""
    cols = sorted({r[col_key] for r in rows if metric in r})
    keys: list[tuple[Any, ...]] = []
    cells: dict[tuple[Any, ...], dict[Any, str]] = {}
    for r in rows:
        if metric not in r:
            continue
        k = tuple(r.get(c, "") for c in row_keys)
        if k not in cells:
            keys.append(k)
            cells[k] = {}
        v, e = r[metric], r.get(metric + "_err")
        text = "-" if v is None else f"{v:.{digits}g}"
        cells[k][r[col_key]] = text if e is None or v is None else f"{text} ± {e:.2g}"
    head = [*row_keys, *(f"{col_key}={c}" for c in cols)]
    body = [[str(x) for x in k] + [cells[k].get(c, "") for c in cols] for k in keys]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def machine_description() -> dict[str, Any]:
    """Where a benchmark ran: CPU model and count, torch threads, versions (for the notes)."""
    import platform

    from . import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ays": __version__,
    }


class _CallableModule(types.ModuleType):
    """``ays.evaluate`` is this module and its main function: ``ays.evaluate(...)`` calls
    :func:`evaluate`, ``ays.evaluate.write_results(...)`` reaches the rest."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

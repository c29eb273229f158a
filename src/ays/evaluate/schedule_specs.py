"""Schedule specs: what a user may pass as a schedule to evaluate, and the levels it stands for.

A spec is a heuristic name of :func:`ays.schedules.names` (built over the problem's
noise range; the published AYS tables keep their own), a saved ``ays-schedule/1`` file,
an :class:`~ays.optimize.OptimizeResult`, a tensor or list of levels, a callable
``steps -> sigmas``, or a dict of pre-optimised schedules keyed by ``(solver, steps)``,
``steps`` or ``solver``. Saved and given schedules are log-linearly interpolated
(:func:`ays.schedules.interpolate`) to each step count. Every schedule resolved here
ends at ``sigma_min > 0``; sampling uses :func:`ays.schedules.to_sampling` (last level 0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import schedules as _schedules
from ..validate import AysError, check_sigmas

__all__ = ["named_schedules", "resolve_schedule", "schedule_label"]

Tensor = torch.Tensor


def _is_path(spec: str) -> bool:
    return spec.endswith(".json") or os.sep in spec or os.path.isfile(spec)


def schedule_label(spec: Any) -> str:
    """The name a schedule given without one gets in the results."""
    from ..optimize import OptimizeResult

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


def named_schedules(schedules: Any) -> dict[str, Any]:
    """``{name: spec}`` from a dict, a list of specs (named by :func:`schedule_label`) or one spec."""
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


def _fit(sigmas: Any, steps: int, what: str) -> Tensor:
    """Checked levels, interpolated log-linearly to ``steps`` steps where they have another count."""
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
    from ..optimize import OptimizeResult, load_schedule

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

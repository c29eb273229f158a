"""The outcome of a schedule optimisation, and the ``ays-schedule/1`` file that keeps it.

A schedule file is JSON (DESIGN.md, "Schedule file")::

    {"format": "ays-schedule/1", "sigmas": [...], "steps": n, "solver": ..., "model": ...,
     "sigma_min": ..., "sigma_max": ..., "method": ..., "klub": ..., "created": ISO-8601,
     "ays_version": ..., "timesteps": [...] (discrete-time models only)}

plus the optional keys ``klub_stderr``, ``calls``, ``settings``, ``history`` and ``model_info``
(what a model integration records: e.g. ``family``, ``noise``, ``shift``, ``resolution``,
``guidance_scale`` of a diffusers pipeline)
that :meth:`OptimizeResult.save` adds. Floats are written with ``repr``, so
the sigmas read back bit for bit. :func:`load_schedule` refuses anything that is
not such a file (bad JSON, another format, a schedule that is not strictly
decreasing and positive, inconsistent fields) with an :class:`~ays.validate.AysError`
that says what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..io import atomic_write_json, read_json
from ..validate import AysError, ScheduleError, check_sigmas

__all__ = ["FORMAT", "OptimizeResult", "exact_ends", "load_schedule"]

#: The value of the ``"format"`` key of a schedule file.
FORMAT = "ays-schedule/1"

Tensor = torch.Tensor


def _version() -> str:
    from .. import __version__

    return __version__


@dataclass(repr=False)
class OptimizeResult:
    """An optimised schedule and how it was found.

    ``sigmas``: float64 [steps + 1], strictly decreasing, ending at ``sigma_min > 0``
    (apply :func:`ays.schedules.to_sampling` before sampling). ``timesteps``: the
    integer model timesteps for discrete-time models, else ``None``. ``klub`` and
    ``klub_stderr``: a fresh Monte Carlo estimate of the final schedule's KLUB.
    ``history``: one dict per sweep (``stage``, ``steps``, ``sweep``, ``klub`` on
    the optimisation draws, ``heldout`` on held-out draws, ``sigmas``, ...).
    ``calls``: denoiser rows spent in total. ``settings``: everything that decided
    the result (enough to reproduce it with the same denoiser and data).
    """

    sigmas: Tensor
    steps: int
    solver: str
    method: str
    klub: float | None = None
    klub_stderr: float | None = None
    timesteps: Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    created: str | None = None
    #: what a model integration records about the model (family, noise, shift, resolution, guidance, ...)
    model_info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.sigmas = exact_ends(self.sigmas, self.settings)

    def __repr__(self) -> str:
        # The history can hold hundreds of schedules: keep the summary readable.
        sig = ", ".join(f"{v:.4g}" for v in self.sigmas.tolist())
        klub = "None" if self.klub is None else f"{self.klub:.6g} ± {self.klub_stderr or 0:.2g}"
        return (
            f"OptimizeResult(steps={self.steps}, solver={self.solver!r}, method={self.method!r}, "
            f"sigmas=[{sig}], klub={klub}, sweeps={len(self.history)}, calls={self.calls}, model={self.model!r})"
        )

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[-1])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[0])

    def to_dict(self) -> dict[str, Any]:
        """The JSON document :meth:`save` writes."""
        created = self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        doc: dict[str, Any] = {
            "format": FORMAT,
            "sigmas": [float(s) for s in self.sigmas.tolist()],
            "steps": int(self.steps),
            "solver": self.solver,
            "model": self.model,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "method": self.method,
            "klub": None if self.klub is None else float(self.klub),
            "klub_stderr": None if self.klub_stderr is None else float(self.klub_stderr),
            "created": created,
            "ays_version": _version(),
        }
        if self.timesteps is not None:
            doc["timesteps"] = [int(t) for t in self.timesteps.tolist()]
        doc["calls"] = int(self.calls)
        doc["settings"] = self.settings
        if self.model_info is not None:
            doc["model_info"] = self.model_info
        doc["history"] = self.history
        return doc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ``ays-schedule/1`` JSON file atomically (temp file, fsync, rename)."""
        atomic_write_json(path, self.to_dict())


def exact_ends(sigmas: Tensor, settings: dict[str, Any]) -> Tensor:
    """``sigmas`` with its ends set to the ``sigma_max``/``sigma_min`` of ``settings`` where they differ by rounding.

    The methods work in log-sigma, so an end comes back as ``exp(log(80)) = 79.99999999999997``;
    the file keeps the range that was asked for. Ends further off (relative 1e-9) are left alone.
    """
    out = sigmas
    for index, key in ((0, "sigma_max"), (-1, "sigma_min")):
        want = settings.get(key) if isinstance(settings, dict) else None
        if not isinstance(out, Tensor) or out.numel() < 2 or isinstance(want, bool):
            return out
        if not isinstance(want, (int, float)) or not math.isfinite(want) or want <= 0:
            continue
        have = float(out[index])
        if have != want and math.isclose(have, want, rel_tol=1e-9):
            out = out.clone() if out is sigmas else out
            out[index] = want
    return out


def _fail(path: Any, why: str) -> AysError:
    return AysError(f"{str(path)!r} is not a valid ays schedule file: {why}")


def _opt_float(doc: dict[str, Any], key: str, path: Any) -> float | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(path, f"{key!r} must be a finite number, got {v!r}")
    return float(v)


def _opt_str(doc: dict[str, Any], key: str, path: Any) -> str | None:
    v = doc.get(key)
    if v is not None and not isinstance(v, str):
        raise _fail(path, f"{key!r} must be a string, got {v!r}")
    return v


def _opt_dict(doc: dict[str, Any], key: str, path: Any) -> dict[str, Any] | None:
    v = doc.get(key)
    if v is not None and not isinstance(v, dict):
        raise _fail(path, f"{key!r} must be an object, got {v!r}")
    return v


def from_dict(doc: Any, path: Any = "<dict>") -> OptimizeResult:
    """Validate a parsed schedule document and build an :class:`OptimizeResult`."""
    if not isinstance(doc, dict):
        raise _fail(path, f"expected a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise _fail(path, f"format is {fmt!r}, expected {FORMAT!r}")
    raw = doc.get("sigmas")
    if not isinstance(raw, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        raise _fail(path, "'sigmas' must be a list of numbers")
    try:
        sigmas = check_sigmas(raw, allow_final_zero=False)
    except ScheduleError as e:
        raise _fail(path, str(e)) from None
    n = sigmas.numel() - 1
    steps = doc.get("steps", n)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps != n:
        raise _fail(path, f"'steps' is {steps!r} but 'sigmas' holds {n + 1} levels ({n} steps)")
    for key, value in (("sigma_min", float(sigmas[-1])), ("sigma_max", float(sigmas[0]))):
        v = _opt_float(doc, key, path)
        if v is not None and not math.isclose(v, value, rel_tol=1e-9):
            raise _fail(path, f"{key!r} is {v} but the sigmas run to {value}")
    timesteps = None
    if doc.get("timesteps") is not None:
        ts = doc["timesteps"]
        if not isinstance(ts, list) or len(ts) != n + 1 or not all(
            isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in ts
        ):
            raise _fail(path, f"'timesteps' must be a list of {n + 1} integers")
        timesteps = torch.tensor(ts, dtype=torch.long)
        if not torch.all(timesteps[1:] < timesteps[:-1]) or timesteps[-1] < 0:
            raise _fail(path, "'timesteps' must be strictly decreasing and >= 0")
    history = doc.get("history") or []
    settings = doc.get("settings") or {}
    if not isinstance(history, list) or not isinstance(settings, dict):
        raise _fail(path, "'history' must be a list and 'settings' an object")
    calls = doc.get("calls", 0)
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
        raise _fail(path, f"'calls' must be a non-negative integer, got {calls!r}")
    return OptimizeResult(
        sigmas=sigmas,
        steps=n,
        solver=_opt_str(doc, "solver", path) or "unknown",
        method=_opt_str(doc, "method", path) or "unknown",
        klub=_opt_float(doc, "klub", path),
        klub_stderr=_opt_float(doc, "klub_stderr", path),
        timesteps=timesteps,
        history=history,
        calls=calls,
        settings=settings,
        model=_opt_str(doc, "model", path),
        created=_opt_str(doc, "created", path),
        model_info=_opt_dict(doc, "model_info", path),
    )


def load_schedule(path: str | os.PathLike[str]) -> OptimizeResult:
    """Read an ``ays-schedule/1`` file written by :meth:`OptimizeResult.save` (or by hand).

    Raises :class:`~ays.validate.AysError` naming the fault for a missing file,
    bad JSON, a foreign ``format``, or sigmas that are not a valid schedule.
    """
    return from_dict(read_json(path, what="schedule file"), path)

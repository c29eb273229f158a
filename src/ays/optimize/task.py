"""What every schedule optimiser is given: the task, the space of noise levels, the method registry.

A :class:`Task` holds the validated arguments of :func:`ays.optimize` (model,
data, step budget, range, randomness, checkpointing). A :class:`LevelSpace` says
which noise levels a schedule may use: any level in the range for
continuous-time models, or only the model's own levels (integer timesteps) for
a discrete-time model, given as an :class:`ays.noise.DiscreteVP`. ``METHODS``
maps a method name to its function ``fn(task, **options) -> OptimizeResult``;
new methods register with :func:`register`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import schedules
from ..noise import DiscreteVP, NoiseSchedule
from ..validate import AysError, check_sigmas
from .stages import Meter

if TYPE_CHECKING:
    from .result import OptimizeResult

__all__ = ["DEFAULT_METHOD", "DEFAULT_SOLVER", "METHODS", "LevelSpace", "Task", "register", "stage_plan"]

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[dict[str, Any]], None]

#: The method ``ays.optimize`` and every ``ays`` command use unless told otherwise (one default, DESIGN.md).
DEFAULT_METHOD = "ays"

#: The solver a schedule is optimised for (and ``ays sample`` samples with) unless told otherwise: the
#: stochastic DPM-Solver++(2M) SDE, the solver of the demo and the README; stochastic, as the KLUB assumes.
DEFAULT_SOLVER = "dpmpp_2m_sde"

#: Optimisation methods: name -> ``fn(task, **options) -> OptimizeResult``.
METHODS: dict[str, Callable[..., OptimizeResult]] = {}


def register(name: str) -> Callable[[Callable[..., OptimizeResult]], Callable[..., OptimizeResult]]:
    """Decorator: add an optimisation method to :data:`METHODS` under ``name``."""

    def deco(fn: Callable[..., OptimizeResult]) -> Callable[..., OptimizeResult]:
        METHODS[name] = fn
        return fn

    return deco


def noise_description(noise: NoiseSchedule | None) -> dict[str, Any] | None:
    """A JSON-able fingerprint of a noise parametrisation (for settings and checkpoints)."""
    if noise is None:
        return None
    desc: dict[str, Any] = {"kind": type(noise).__name__}
    if isinstance(noise, DiscreteVP):
        table = noise.alphas_cumprod.detach().cpu().to(torch.float64).contiguous().numpy().tobytes()
        desc["num_timesteps"] = noise.num_timesteps
        desc["alphas_cumprod_sha256"] = hashlib.sha256(table).hexdigest()[:16]
    else:
        for key in ("sigma_min", "sigma_max", "shift", "beta_min", "beta_d", "eps_s"):
            v = getattr(noise, key, None)
            if isinstance(v, (int, float)):
                desc[key] = float(v)
    return desc


@dataclass(frozen=True)
class LevelSpace:
    """The noise levels a schedule may use: all of ``(0, inf)``, or a discrete model's table."""

    discrete: DiscreteVP | None = None

    @property
    def is_discrete(self) -> bool:
        return self.discrete is not None

    def index(self, sigmas: Tensor) -> Tensor:
        """Nearest integer timestep (in log-sigma) of each level; discrete spaces only."""
        assert self.discrete is not None
        return self.discrete.nearest_timestep(sigmas).reshape(-1)

    def level(self, timesteps: Tensor) -> Tensor:
        assert self.discrete is not None
        return self.discrete.sigmas[timesteps]

    def snap(self, sigmas: Tensor, what: str = "schedule") -> Tensor:
        """Move every level to the nearest allowed one; refuse a schedule that collapses."""
        s = torch.as_tensor(sigmas, dtype=torch.float64)
        if self.discrete is None:
            return s
        ts = self.index(s)
        if not torch.all(ts[1:] < ts[:-1]):
            raise AysError(
                f"the {what} needs {s.numel()} distinct timesteps, more than the model's "
                f"{self.discrete.num_timesteps} levels allow over this range"
            )
        return self.level(ts)

    def timesteps(self, sigmas: Tensor) -> Tensor | None:
        return None if self.discrete is None else self.index(sigmas)


def stage_plan(steps: int, base: int) -> list[int]:
    """Step counts optimised in turn: ``[steps]`` up to ``base``, else ``base, 2·base, ...``.

    Doubling stops at the first count >= ``steps``; when that count is not
    ``steps`` itself, the last stage's schedule is log-linearly interpolated to
    ``steps`` (:func:`ays.schedules.interpolate`).
    """
    if steps <= base:
        return [steps]
    plan = [base]
    while plan[-1] < steps:
        plan.append(2 * plan[-1])
    return plan


@dataclass
class Task:
    """The validated arguments of :func:`ays.optimize`, shared by every method."""

    denoiser: Denoiser
    data: Any
    steps: int
    solver: str
    sigma_min: float
    sigma_max: float
    seed: int
    samples: int
    early_stopping: bool
    init: Tensor | None
    noise: NoiseSchedule | None
    checkpoint: Path | None
    resume: bool
    batch_size: int | None
    progress: Progress | None
    model: str | None
    method: str
    dtype: str | None = None  #: the dtype asked for the denoiser (it changes the result, so it is a setting)
    budget: int | None = None  #: denoiser calls the method may spend, all stages and ranks together (None: its default)
    given: frozenset[str] = frozenset()  #: the arguments the caller set rather than left at their defaults
    #: calls by stage, progress, the estimate; made from ``denoiser`` and ``progress`` when not given, and
    #: carried over by ``dataclasses.replace`` (a task resized for one stage counts into the same plan)
    meter: Meter = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.meter is None:
            self.meter = Meter(self.denoiser, self.progress)

    @property
    def space(self) -> LevelSpace:
        return LevelSpace(self.noise if isinstance(self.noise, DiscreteVP) else None)

    def settings(self, options: dict[str, Any]) -> dict[str, Any]:
        """Everything that decides the result, JSON-able; a checkpoint must match it to resume."""
        out = {
            "method": self.method,
            "steps": self.steps,
            "solver": self.solver,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "seed": self.seed,
            "samples": self.samples,
            "early_stopping": self.early_stopping,
            "init": None if self.init is None else [float(v) for v in self.init.tolist()],
            "noise": noise_description(self.noise),
            "model": self.model,
            "options": options,
        }
        if self.dtype is not None:  # absent unless asked for: older checkpoints stay valid
            out["dtype"] = self.dtype
        if self.budget is not None:
            out["budget"] = self.budget
        return out

    def initial(self, steps: int) -> Tensor:
        """The starting schedule at ``steps`` steps (paper Alg. 1).

        ``init`` when given (log-linearly interpolated if its step count differs);
        else time-uniform for discrete-time models and EDM's rho=7 otherwise.
        Discrete-time schedules are snapped to the model's timesteps.
        """
        if self.init is not None:
            s = self.init if self.init.numel() == steps + 1 else schedules.interpolate(self.init, steps)
        elif self.space.is_discrete:
            s = schedules.time_uniform(steps, self.sigma_min, self.sigma_max, noise=self.noise)
        else:
            s = schedules.karras(steps, self.sigma_min, self.sigma_max, rho=7.0)
        return check_sigmas(self.space.snap(s, "initial schedule"), allow_final_zero=False)

    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint is None else Path(os.fspath(self.checkpoint))


def log_position(lo: float, cur: float, hi: float) -> float:
    """Where ``cur`` sits between ``lo`` and ``hi`` in log-sigma, as a fraction in (0, 1)."""
    return (math.log(cur) - math.log(lo)) / (math.log(hi) - math.log(lo))

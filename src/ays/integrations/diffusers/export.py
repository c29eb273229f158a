"""diffusers: the keyword arguments a scheduler needs for an ays schedule, and a pipeline run with it.

``to_diffusers`` decides from the scheduler's ``set_timesteps`` signature (as diffusers'
own ``retrieve_timesteps`` does) whether it takes ``sigmas=``, ``timesteps=`` or flow
times, undoes the flow shift the scheduler would apply on top, and checks the result on
a copy of the scheduler. diffusers itself is never imported here: the scheduler object
is duck-typed.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from ... import schedules
from ...noise import DiscreteVP, Flow
from ...validate import AysError, ScheduleError, check_choice
from ..resolve import ScheduleLike, resolve, to_sampling_form

__all__ = ["DIFFUSERS_KINDS", "SOLVER_SCHEDULERS", "diffusers_kind", "fixed_schedule", "plain_scheduler",
           "run_diffusers_pipeline", "scheduler_for", "solver_of", "to_diffusers"]

Tensor = torch.Tensor

#: ``kind`` values of :func:`to_diffusers`.
DIFFUSERS_KINDS = ("auto", "sigmas", "timesteps", "flow", "edm")


def _config(scheduler: Any) -> Mapping[str, Any]:
    return getattr(scheduler, "config", {}) or {}


def _scheduler_from(obj: Any) -> Any:
    """A scheduler instance from an instance, a class, or a config dict with ``_class_name``."""
    if obj is None or (hasattr(obj, "set_timesteps") and not isinstance(obj, type)):
        return obj
    import diffusers  # only when a config or class is handed over

    if isinstance(obj, type):
        return obj()
    if isinstance(obj, Mapping):
        name = obj.get("_class_name")
        cls = getattr(diffusers, str(name), None)
        if cls is None or not hasattr(cls, "from_config"):
            raise AysError(f"scheduler config names no known diffusers scheduler (_class_name={name!r})")
        return cls.from_config(dict(obj))
    raise AysError(f"expected a diffusers scheduler, scheduler class or config dict, got {type(obj).__name__}")


def _accepts(scheduler: Any) -> set[str]:
    return set(inspect.signature(scheduler.set_timesteps).parameters)


def _is_flow(scheduler: Any) -> bool:
    cfg = _config(scheduler)
    return "FlowMatch" in type(scheduler).__name__ or bool(cfg.get("use_flow_sigmas", False))


def _is_edm(scheduler: Any) -> bool:
    return hasattr(scheduler, "precondition_noise") and "sigma_schedule" in _config(scheduler)


def diffusers_kind(scheduler: Any) -> str:
    """Which custom schedule a diffusers scheduler takes: ``sigmas``, ``timesteps``, ``flow`` or ``edm``.

    Decided from its ``set_timesteps`` signature (as diffusers' own ``retrieve_timesteps``
    does) and its noise parametrisation; raises :class:`AysError` when it takes neither.
    """
    scheduler = _scheduler_from(scheduler)
    accepts = _accepts(scheduler)
    name = type(scheduler).__name__
    if _is_flow(scheduler):
        if "sigmas" not in accepts:
            raise AysError(f"{name} (flow matching) does not accept custom sigmas; use FlowMatchEulerDiscreteScheduler")
        return "flow"
    if _is_edm(scheduler):
        if "sigmas" not in accepts:
            raise AysError(f"{name} does not accept custom sigmas; use EDMEulerScheduler")
        return "edm"
    has_table = hasattr(scheduler, "alphas_cumprod")
    if "sigmas" in accepts and has_table:
        return "sigmas"
    if "timesteps" in accepts and has_table:
        return "timesteps"
    raise AysError(
        f"{name}.set_timesteps accepts neither custom sigmas nor timesteps; use a scheduler that does, e.g. "
        "EulerDiscreteScheduler (sigmas), DPMSolverMultistepScheduler (timesteps) or "
        "FlowMatchEulerDiscreteScheduler (flow models)"
    )


#: The diffusers scheduler (class, config changes) that runs each ays solver on a custom schedule: what
#: replaces a pipeline's own scheduler when that one takes none (SD 1.5 ships PNDMScheduler). Solvers that
#: diffusers cannot run on a custom schedule (the ancestral and the other stochastic ones) get Euler.
SOLVER_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
}


def scheduler_for(scheduler_or_config: Any, solver: str | None = None, name: str | None = None
                  ) -> tuple[Any, str | None]:
    """``(scheduler, note)``: the scheduler to export a schedule for, and what replaced what (None: kept).

    ``name`` (a diffusers scheduler class, ``--scheduler``) wins, built from the given scheduler's
    config. Otherwise a scheduler that takes custom schedules is kept; one that takes none is
    replaced by the scheduler of the schedule's ``solver`` (:data:`SOLVER_SCHEDULERS`), Euler for
    a solver that has none, on the same config (noise table, prediction type).
    """
    scheduler = _scheduler_from(scheduler_or_config)
    config = dict(_config(scheduler))
    if name is not None:
        import diffusers

        cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
        if cls is None or not hasattr(cls, "from_config"):
            raise AysError(f"--scheduler {name!r} is no diffusers scheduler class; e.g. EulerDiscreteScheduler, "
                           "DPMSolverMultistepScheduler, HeunDiscreteScheduler")
        chosen = cls.from_config(config)
        diffusers_kind(chosen)  # one that takes a custom schedule, or an error that names those that do
        return chosen, f"using {name} (--scheduler)"
    if scheduler is None:
        return None, None
    try:
        diffusers_kind(scheduler)
        return scheduler, None
    except AysError:
        pass
    import diffusers

    cls_name, changes = SOLVER_SCHEDULERS.get(solver or "", ("EulerDiscreteScheduler", {}))
    chosen = getattr(diffusers, cls_name).from_config({**config, **changes})
    why = (f"the schedule's solver {solver}" if solver in SOLVER_SCHEDULERS else
           f"diffusers has no scheduler for the solver {solver} on a custom schedule" if solver else
           "the schedule names no solver")
    return chosen, (f"{type(scheduler).__name__} takes no custom schedule: using {cls_name} ({why}; "
                    "--scheduler NAME picks another)")


def solver_of(schedule: ScheduleLike) -> str | None:
    """The solver a schedule file was optimised for (None for anything else)."""
    if isinstance(schedule, (str, os.PathLike)) and os.path.isfile(schedule):
        from ...optimize import load_schedule

        return load_schedule(schedule).solver
    return None


def plain_scheduler(scheduler: Any) -> Any:
    """A copy of a diffusers scheduler that uses custom schedules exactly as given.

    Turns off what would re-shape a custom schedule: the flow time shift (static
    ``shift``/``flow_shift`` and resolution-dependent ``use_dynamic_shifting``),
    ``shift_terminal``, Karras/exponential/beta/Lu re-spacing, and a non-zero final
    sigma. An ays schedule already *is* the model's noise levels: the shift is a
    schedule heuristic that the optimised schedule replaces. The original is untouched.
    """
    scheduler = _scheduler_from(scheduler)
    cfg = dict(_config(scheduler))
    overrides: dict[str, Any] = {
        "shift": 1.0,
        "flow_shift": 1.0,
        "use_dynamic_shifting": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "final_sigmas_type": "zero",
    }
    if _is_edm(scheduler):
        overrides["sigma_schedule"] = "karras"
    changes = {k: v for k, v in overrides.items() if k in cfg}
    # from_config rather than a deep copy: a live set_shift() is not part of the config.
    return type(scheduler).from_config({**cfg, **changes})


def _flow_unshift(t: Tensor, scheduler: Any, mu: float | None) -> Tensor:
    """Invert the time shift that ``set_timesteps(sigmas=...)`` applies, so the scheduler ends on ``t``.

    Static: ``t' = s·t / (1 + (s - 1)·t)`` => ``t = t' / (s - (s - 1)·t')``.
    Dynamic (``mu``): exponential ``t' = e^mu / (e^mu + 1/t - 1)`` => ``t = 1 / (1 + e^mu·(1/t' - 1))``;
    linear ``t' = mu / (mu + 1/t - 1)`` => ``t = 1 / (1 + mu·(1/t' - 1))``.
    """
    cfg = _config(scheduler)
    name = type(scheduler).__name__
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
        if cfg.get(flag):
            raise AysError(f"{name} has {flag}=True, which re-shapes custom sigmas; "
                           "pass ays.integrations.diffusers.plain_scheduler(scheduler) instead")
    if cfg.get("shift_terminal"):
        raise AysError(f"{name} has shift_terminal={cfg['shift_terminal']}, which stretches custom sigmas; "
                       "pass ays.integrations.diffusers.plain_scheduler(scheduler) instead")
    if cfg.get("use_dynamic_shifting", False):
        if mu is None:
            raise AysError(
                f"{name} uses dynamic (resolution-dependent) shifting: pass the pipeline's mu to to_diffusers, "
                "or use plain_scheduler(scheduler) / run_diffusers_pipeline, which turn the shift off"
            )
        kind = cfg.get("time_shift_type", "exponential")
        scale = math.exp(mu) if kind == "exponential" else float(mu)
        return 1.0 / (1.0 + scale * (1.0 / t - 1.0))
    # FlowMatch* schedulers keep the live shift in .shift (set_shift changes it); UniPC/DPM use flow_shift.
    s = float(getattr(scheduler, "shift", None) or cfg.get("shift") or cfg.get("flow_shift") or 1.0)
    return t / (s - (s - 1.0) * t)


def _edm_ramp(sigmas: Tensor, scheduler: Any) -> Tensor:
    """EDMEulerScheduler's ``sigmas=`` argument is a *ramp* u in [0, 1] fed to its Karras formula.

    ``sigma = (max^(1/rho) + u·(min^(1/rho) - max^(1/rho)))^rho``, inverted here.
    """
    cfg = _config(scheduler)
    if cfg.get("sigma_schedule", "karras") != "karras":
        raise AysError(f"{type(scheduler).__name__} with sigma_schedule={cfg.get('sigma_schedule')!r} ignores "
                       "custom values; pass plain_scheduler(scheduler) instead")
    rho = float(cfg["rho"])
    lo, hi = float(cfg["sigma_min"]) ** (1 / rho), float(cfg["sigma_max"]) ** (1 / rho)
    return (sigmas ** (1 / rho) - hi) / (lo - hi)


def _nearest_timesteps(sigmas: Tensor, scheduler: Any | None) -> Tensor:
    vp = DiscreteVP.from_betas() if scheduler is None else DiscreteVP(scheduler.alphas_cumprod)
    ts = vp.nearest_timestep(sigmas)
    if not torch.all(ts[1:] < ts[:-1]):
        i = int((ts[1:] >= ts[:-1]).nonzero()[0])
        raise ScheduleError(
            f"noise levels {sigmas[i].item():.6g} and {sigmas[i + 1].item():.6g} round to the same timestep "
            f"{int(ts[i])}: use fewer steps, or a scheduler that accepts sigmas (EulerDiscreteScheduler)"
        )
    return ts


def _same_table(scheduler: Any | None) -> bool:
    """Whether the scheduler's noise table is SD's (the one NVIDIA's timesteps refer to)."""
    if scheduler is None:
        return True
    a = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    ref = DiscreteVP.from_betas().alphas_cumprod
    return a.shape == ref.shape and bool(torch.allclose(a, ref, rtol=1e-5, atol=0))


def to_diffusers(schedule: ScheduleLike, scheduler_or_config: Any = None, kind: str = "auto", *,
                 steps: int | None = None, mu: float | None = None, verify: bool = True) -> dict[str, Any]:
    """Keyword arguments that make a diffusers scheduler (or pipeline) run this schedule.

    Use as ``pipe(prompt, **to_diffusers(schedule, pipe.scheduler))`` or
    ``scheduler.set_timesteps(**to_diffusers(schedule, scheduler))``. ``kind``:

    - ``"sigmas"``: ``{"sigmas": [s_0, ..., s_{n-1}, 0]}`` (EulerDiscreteScheduler: n+1 values,
      the scheduler keeps the final 0 and finds fractional timesteps by log-sigma interpolation).
    - ``"timesteps"``: ``{"timesteps": [n ints]}``, the timesteps nearest (in log sigma, under the
      scheduler's ``alphas_cumprod``) to ``s_0 .. s_{n-1}``; for published SD tables on SD's noise
      table, NVIDIA's own timesteps. The scheduler adds the final step to 0 itself.
    - ``"flow"``: ``{"sigmas": [n values]}``, flow times ``t = sigma / (1 + sigma)`` with the
      scheduler's shift inverted, so that after ``set_timesteps`` its ``.sigmas`` are exactly
      ``t_0 .. t_{n-1}, 0``. With ``use_dynamic_shifting`` pass the ``mu`` you will pass to
      ``set_timesteps``; pipelines compute their own ``mu``, so for them use
      :func:`plain_scheduler` or :func:`run_diffusers_pipeline` instead.
    - ``"edm"``: EDMEulerScheduler, whose ``sigmas=`` is a ramp into its Karras formula:
      ``{"sigmas": tensor of n ramp values}`` that reproduce ``s_0 .. s_{n-1}``.
    - ``"auto"``: chosen from the scheduler (:func:`diffusers_kind`); ``"sigmas"`` without one.

    Without a scheduler, a schedule file from ``ays optimize --diffusers`` brings its model's
    scheduler config and ``mu`` (``model_info``); otherwise ``"timesteps"`` uses SD's noise
    table (1000 steps, scaled-linear betas 0.00085..0.012) and ``"flow"`` assumes no shift.
    With ``verify`` (default), the result is checked on a copy of the scheduler: its ``.sigmas`` after ``set_timesteps``
    must equal the schedule (float32), else :class:`AysError`.
    """
    check_choice(kind, DIFFUSERS_KINDS, what="diffusers kind")
    res = resolve(schedule, steps)
    recorded = res.info or {}
    if scheduler_or_config is None and isinstance(recorded.get("scheduler"), Mapping):
        # a schedule file made by `ays optimize --diffusers`: its model's scheduler and mu
        scheduler_or_config = recorded["scheduler"]
    if mu is None and isinstance(recorded.get("mu"), (int, float)):
        mu = float(recorded["mu"])
    scheduler = _scheduler_from(scheduler_or_config)
    if kind == "auto":
        if scheduler is None:
            kind = "flow" if res.is_flow else "sigmas"
        else:
            kind = diffusers_kind(scheduler)
    elif scheduler is not None:
        wanted = "sigmas" if kind in ("flow", "edm") else kind
        if wanted not in _accepts(scheduler):
            raise AysError(f"{type(scheduler).__name__}.set_timesteps does not accept custom {wanted}")
        if kind in ("timesteps", "sigmas") and not hasattr(scheduler, "alphas_cumprod"):
            raise AysError(f"{type(scheduler).__name__} has no alphas_cumprod table for kind={kind!r}")
    sampling = to_sampling_form(res)
    evals = sampling[:-1]  # the n levels at which the model is called
    out: dict[str, Any]
    if kind == "sigmas":
        out = {"sigmas": sampling.tolist()}
    elif kind == "timesteps":
        if scheduler is not None and _config(scheduler).get("use_flow_sigmas"):
            raise AysError(f"{type(scheduler).__name__} with use_flow_sigmas=True ignores custom timesteps")
        if res.timesteps is not None and (res.name not in schedules.PUBLISHED or _same_table(scheduler)):
            # the timesteps the schedule was optimised on (a file or result of a discrete-time model)
            ts = res.timesteps[:-1]
            size = 1000 if scheduler is None else len(scheduler.alphas_cumprod)
            if int(ts.max()) >= size:
                raise AysError(f"the schedule's timesteps reach {int(ts.max())} but the scheduler has {size}")
        else:
            ts = _nearest_timesteps(evals, scheduler)
        out = {"timesteps": [int(t) for t in ts]}
    elif kind == "flow":
        t = Flow().t(evals)
        if scheduler is not None:
            # every shift maps t = 1 to itself: keep a level that is pure noise in float32 at exactly 1
            t = torch.where(t.float() == 1.0, torch.ones_like(t), _flow_unshift(t, scheduler, mu))
        # UniPC/DPM-Solver (use_flow_sigmas) do arithmetic on the argument itself: they need an array.
        flow_sigmas = scheduler is not None and _config(scheduler).get("use_flow_sigmas")
        # Schedulers hold sigmas in float32: give the float32 values, in their shortest decimals, so the
        # pure-noise level (ays' 1e8, t = 1 - 1e-8) reads t = 1.0, as the scheduler will hold it.
        t32 = t.to(torch.float32).numpy()
        out = {"sigmas": t32 if flow_sigmas else [float(str(v)) for v in t32]}
    else:  # edm
        if scheduler is None:
            raise AysError("kind='edm' needs the EDMEulerScheduler (its sigma_min, sigma_max and rho)")
        out = {"sigmas": _edm_ramp(evals, scheduler)}
    if verify and scheduler is not None:
        _verify(scheduler, out, kind, sampling, mu)
    return out


def _verify(scheduler: Any, kwargs: dict[str, Any], kind: str, sampling: Tensor, mu: float | None) -> None:
    """Run ``set_timesteps`` on a copy and check that the scheduler ends up on our schedule."""
    trial = copy.deepcopy(scheduler)
    extra = {"mu": mu} if mu is not None and "mu" in _accepts(trial) else {}
    try:
        # a copy of the arguments too: some schedulers edit the array they are given in place
        trial.set_timesteps(**copy.deepcopy(kwargs), **extra)
    except (ValueError, TypeError, IndexError, AssertionError) as e:
        raise AysError(f"{type(scheduler).__name__}.set_timesteps refused the exported {kind}: {e}; "
                       "ays.integrations.diffusers.plain_scheduler(scheduler) turns off the options that conflict "
                       "with a custom schedule") from None
    name = type(scheduler).__name__
    if kind == "timesteps":
        want_t = torch.as_tensor(kwargs["timesteps"], dtype=torch.float64)
        got_t = torch.as_tensor(trial.timesteps, dtype=torch.float64).cpu()
        if not set(want_t.tolist()) <= set(got_t.tolist()):
            raise AysError(f"{name} did not take the exported timesteps (it has {got_t.tolist()})")
        return
    got = torch.as_tensor(trial.sigmas, dtype=torch.float64).cpu()
    want = sampling if kind != "flow" else Flow().t(sampling)
    if got.numel() != want.numel() or not torch.allclose(got, want.to(torch.float32).double(), rtol=2e-6, atol=1e-7):
        hint = "" if got.numel() != want.numel() else f" (largest deviation {(got - want).abs().max().item():.3g})"
        raise AysError(
            f"{name} does not reproduce the schedule from the exported {kind}{hint}; its config re-shapes custom "
            "schedules: pass ays.integrations.diffusers.plain_scheduler(scheduler)"
        )


def fixed_schedule(scheduler: Any, kwargs: dict[str, Any]) -> Any:
    """A copy of ``scheduler`` whose ``set_timesteps(...)``, whatever it is asked, sets ``kwargs`` (the export)."""
    fixed = copy.deepcopy(scheduler)
    inner = fixed.set_timesteps

    @functools.wraps(inner)  # its signature too: pipelines look for sigmas= in it (retrieve_timesteps)
    def set_timesteps(*args: Any, device: Any = None, **ignored: Any) -> None:
        inner(device=device, **copy.deepcopy(kwargs))

    fixed.set_timesteps = set_timesteps
    return fixed


def run_diffusers_pipeline(pipe: Any, schedule: ScheduleLike, *, steps: int | None = None, **pipe_kwargs: Any) -> Any:
    """Call a diffusers pipeline with this schedule, whatever its scheduler takes.

    The pipeline runs with :func:`plain_scheduler` of its scheduler (so no shift or
    re-spacing alters the schedule) and the matching ``sigmas=``/``timesteps=``
    argument; its own scheduler is restored afterwards. ``num_inference_steps`` is
    refused: the schedule sets the number of steps. Img2img ``strength`` applies on
    top, in diffusers' convention (see :func:`truncate`).
    """
    if "num_inference_steps" in pipe_kwargs:
        raise AysError("num_inference_steps is set by the schedule; pass steps= to interpolate it instead")
    for key in ("sigmas", "timesteps"):
        if key in pipe_kwargs:
            raise AysError(f"{key}= is set by the schedule; do not pass it too")
    original = pipe.scheduler
    scheduler = plain_scheduler(original)
    kwargs = to_diffusers(schedule, scheduler, steps=steps)
    key = next(iter(kwargs))
    if key not in inspect.signature(pipe.__call__).parameters:
        # a pipeline that sets its scheduler's steps itself (Wan): the scheduler keeps to the schedule
        steps_run = len(kwargs[key]) - (1 if diffusers_kind(scheduler) == "sigmas" else 0)  # sigmas= ends with 0
        scheduler = fixed_schedule(scheduler, kwargs)
        kwargs = {"num_inference_steps": steps_run}
    pipe.scheduler = scheduler
    try:
        return pipe(**pipe_kwargs, **kwargs)
    finally:
        pipe.scheduler = original

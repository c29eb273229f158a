"""Hand-off of a schedule to diffusers, k-diffusion, ComfyUI and A1111/Forge.

An ays schedule is ``n + 1`` decreasing noise levels ``s_0 > ... > s_n > 0`` in the
EDM convention (``x = x0 + sigma·eps``); each consumer wants it in its own form:

================  =====================================================================
consumer          what it takes for ``n`` steps
================  =====================================================================
diffusers sigmas  ``s_0 .. s_{n-1}, 0`` (EulerDiscrete; ``pipe(sigmas=...)``)
diffusers t       ``n`` integer timesteps nearest to ``s_0 .. s_{n-1}`` (DPMSolver++, DDPM, ...)
diffusers flow    ``n`` values ``t_i = s_i/(1+s_i)`` in [0, 1]; the scheduler appends 0 and
                  applies its shift on top, which :func:`to_diffusers` undoes
k-diffusion       float32 tensor ``s_0 .. s_{n-1}, 0``
ComfyUI           float32 SIGMAS ``s_0 .. s_{n-1}, 0``; flow models (SD3, Flux) use ``t`` values
A1111/Forge       the table interpolated to ``n`` points (down to ``s_n``), then a 0 appended
================  =====================================================================

So diffusers, k-diffusion and ComfyUI drop ``s_n`` (the last non-zero level is
``s_{n-1}``), while A1111 keeps ``s_n`` and appends 0: the same "10 steps" of a
published table are different schedules there. Img2img/denoise strength also
differs between ComfyUI (a longer schedule, keep its tail: same number of executed
steps) and diffusers (run the last ``int(n·strength)`` steps of the ``n``-step
schedule); see :func:`truncate`.

Every exporter accepts a schedule tensor/list, the name of a published NVIDIA
table (``sd15``, ``sdxl``, ``svd``, ``deepfloyd_if``), a path to an
``ays-schedule/1`` file, or an object with ``.sigmas`` (an optimisation result);
:func:`resolve_schedule` does that once for all of them.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import schedules
from ..noise import DiscreteVP, Flow
from ..validate import AysError, ScheduleError, check_choice, check_positive, check_sigmas, check_steps

__all__ = [
    "DENOISE_CONVENTIONS",
    "DIFFUSERS_KINDS",
    "ResolvedSchedule",
    "diffusers_kind",
    "from_k_diffusion_model",
    "k_diffusion_sampler",
    "plain_scheduler",
    "read_schedule_file",
    "render",
    "resolve",
    "resolve_schedule",
    "run_diffusers_pipeline",
    "to_a1111",
    "to_comfyui",
    "to_diffusers",
    "to_k_diffusion",
    "truncate",
]

Tensor = torch.Tensor
ScheduleLike = Any  # Tensor | Sequence[float] | str | os.PathLike | object with .sigmas

SCHEDULE_FORMAT = "ays-schedule/1"

#: ``kind`` values of :func:`to_diffusers`.
DIFFUSERS_KINDS = ("auto", "sigmas", "timesteps", "flow", "edm")

#: ``convention`` values of :func:`truncate`.
DENOISE_CONVENTIONS = ("comfyui", "comfyui_ays", "diffusers", "diffusers_flow")


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule from any source, with the discrete timesteps that came with it.

    ``sigmas``: float64, strictly decreasing, as produced (ending at ``s_n > 0``) or,
    when the user handed a sampling-form schedule, ending in 0.
    ``timesteps``: int64 timesteps aligned with ``sigmas`` (``n + 1`` values) when the
    source had them (a published SD table, a file with ``"timesteps"``), else None.
    ``noise``: the model's noise parametrisation when the source says (``"Flow"``,
    ``"DiscreteVP"``, ...: the class name in :mod:`ays.noise`), else None.
    """

    sigmas: Tensor
    timesteps: Tensor | None = None
    name: str | None = None  #: the published table's name, for those
    noise: str | None = None

    @property
    def is_flow(self) -> bool:
        return self.noise == "Flow"

    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def sampling_form(self) -> bool:
        """True when the last level is already 0 (``s_n`` is unknown)."""
        return bool(self.sigmas[-1] == 0)


def read_schedule_file(path: str | os.PathLike[str]) -> ResolvedSchedule:
    """Read an ``ays-schedule/1`` JSON file (format in DESIGN.md) with :func:`ays.load_schedule`.

    Its ``timesteps`` (discrete-time models) are kept; anything malformed raises
    :class:`AysError` naming the file and the fault.
    """
    from ..optimize.result import load_schedule

    result = load_schedule(path)
    return ResolvedSchedule(result.sigmas, result.timesteps, noise=_noise_kind(result.settings))


def _noise_kind(settings: Any) -> str | None:
    """The noise parametrisation an optimisation recorded (``settings["noise"]["kind"]``)."""
    noise = settings.get("noise") if isinstance(settings, Mapping) else None
    kind = noise.get("kind") if isinstance(noise, Mapping) else None
    return kind if isinstance(kind, str) else None


def _looks_like_path(obj: str) -> bool:
    return obj.endswith(".json") or os.sep in obj or "/" in obj or os.path.exists(obj)


def resolve(schedule: ScheduleLike, steps: int | None = None) -> ResolvedSchedule:
    """Turn any accepted schedule source into a :class:`ResolvedSchedule`.

    With ``steps``, the schedule is log-linearly interpolated to that many steps
    (NVIDIA's recipe, :func:`ays.schedules.interpolate`); timesteps that came with
    it are kept only at their own step count (published SD tables are recomputed
    by :func:`ays.schedules.published_timesteps`).
    """
    if steps is not None:
        steps = check_steps(steps)
    if isinstance(schedule, ResolvedSchedule):
        res = schedule
    elif isinstance(schedule, (str, os.PathLike)):
        text = os.fspath(schedule)
        if isinstance(schedule, str) and text in schedules.PUBLISHED:
            n = 10 if steps is None else steps
            ts = None
            if text in schedules.PUBLISHED_TIMESTEPS:
                try:
                    ts = schedules.published_timesteps(text, n)
                except AysError:  # too many steps for distinct timesteps: sigmas still work
                    ts = None
            return ResolvedSchedule(schedules.published(text, n), ts, name=text)
        if isinstance(schedule, str) and not _looks_like_path(text):
            raise AysError(
                f"unknown schedule {text!r}: give a published table "
                f"({', '.join(sorted(schedules.PUBLISHED))}), a path to an {SCHEDULE_FORMAT} file or a tensor"
            )
        res = read_schedule_file(text)
    elif hasattr(schedule, "sigmas") and not isinstance(schedule, (Tensor, Sequence)):
        # An OptimizeResult (or anything carrying .sigmas / .timesteps).
        sig = check_sigmas(schedule.sigmas)
        ts = getattr(schedule, "timesteps", None)
        ts = None if ts is None else torch.as_tensor(ts).long()
        if ts is not None and ts.numel() == sig.numel() - 1:
            ts = torch.cat([ts, ts.new_zeros(1)])
        if ts is not None and ts.numel() != sig.numel():
            ts = None
        res = ResolvedSchedule(sig, ts, noise=_noise_kind(getattr(schedule, "settings", None)))
    else:
        res = ResolvedSchedule(check_sigmas(schedule))
    if steps is None or steps == res.steps:
        return res
    if res.sampling_form:
        raise ScheduleError(
            "cannot interpolate a schedule that already ends in 0 (its last noise level is lost); "
            "pass the schedule as produced (ending at sigma_min > 0)"
        )
    return ResolvedSchedule(schedules.interpolate(res.sigmas, steps), None, res.name, res.noise)


def resolve_schedule(schedule: ScheduleLike, steps: int | None = None) -> Tensor:
    """The float64 noise levels of any accepted schedule source (see :func:`resolve`)."""
    return resolve(schedule, steps).sigmas


def _sampling(res: ResolvedSchedule) -> Tensor:
    return schedules.to_sampling(res.sigmas)


def _as_sigma_or_flow(sampling: Tensor, model_sampling: str, res: ResolvedSchedule) -> Tensor:
    """EDM sigmas, or flow times ``t = sigma / (1 + sigma)`` (0 stays 0); ``auto`` asks the source."""
    check_choice(model_sampling, ("auto", "sigma", "flow"), what="model sampling")
    flow = model_sampling == "flow" or (model_sampling == "auto" and res.is_flow)
    return sampling / (1 + sampling) if flow else sampling


# --------------------------------------------------------------------------- k-diffusion


def to_k_diffusion(schedule: ScheduleLike, steps: int | None = None, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``sigmas`` argument of k-diffusion's ``sample_*`` functions.

    ``n + 1`` decreasing values ending in 0, float32 by default (k-diffusion's
    ``get_sigmas_*`` use the default dtype). Equals ``to_sampling(schedule)``.
    """
    return _sampling(resolve(schedule, steps)).to(device=device, dtype=dtype)


def from_k_diffusion_model(model: Callable[..., Tensor], extra_args: Mapping[str, Any] | None = None
                           ) -> Callable[[Tensor, Tensor], Tensor]:
    """An ays denoiser ``D(x, sigma)`` from a k-diffusion wrapped model ``model(x, sigma, **extra_args)``.

    k-diffusion's wrappers (``CompVisDenoiser``, ``DiscreteEpsDDPMDenoiser``, ...) already
    return the x0 estimate in the EDM convention, which is the ays denoiser contract;
    this only binds the conditioning, as k-diffusion's samplers do with ``extra_args``.
    """
    from ..denoisers import bind

    return bind(model, **dict(extra_args or {}))


def k_diffusion_sampler(solver: str, *, generator: torch.Generator | None = None, **options: Any
                        ) -> Callable[..., Tensor]:
    """An ays solver with k-diffusion's sampler signature, for code that expects ``sample_*`` functions.

    The result is called as ``sampler(model, x, sigmas, extra_args=None, callback=None,
    disable=None, **options)`` (``x`` already scaled by ``sigmas[0]``, as k-diffusion and
    ComfyUI's ``KSAMPLER`` pass it); ``disable`` (the progress bar) is ignored, a
    ``noise_sampler`` keyword replaces ``generator`` as in k-diffusion.
    """
    from .. import solvers
    from ..denoisers import bind

    fn = solvers.get(solver)
    solvers.check_options(solver, options)

    def sampler(model: Callable[..., Tensor], x: Tensor, sigmas: Tensor, extra_args: Mapping[str, Any] | None = None,
                callback: Callable[[dict[str, Any]], None] | None = None, disable: bool | None = None,
                **more: Any) -> Tensor:
        noise_sampler = more.pop("noise_sampler", None)
        opts = solvers.check_options(solver, {**options, **more})
        return fn(bind(model, **dict(extra_args or {})), x, sigmas, generator=generator, callback=callback,
                  noise_sampler=noise_sampler, **opts)

    sampler.__name__ = sampler.__qualname__ = f"sample_{solver}"
    return sampler


# --------------------------------------------------------------------------- ComfyUI


def to_comfyui(schedule: ScheduleLike, steps: int | None = None, *, denoise: float = 1.0,
               model_sampling: str = "auto") -> Tensor:
    """A ComfyUI ``SIGMAS`` value (float32, ending in 0), for ``SamplerCustom`` and friends.

    ``denoise < 1`` truncates as ComfyUI's ``BasicScheduler``/``KSampler`` do (see
    :func:`truncate`). ``model_sampling="flow"`` gives the flow times ``t`` that ComfyUI
    uses as SIGMAS for flow-matching models (SD3, Flux, Wan: ``CONST`` sampling,
    ``timestep = 1000·t``); ComfyUI's shift only shapes its own schedules, so no
    shift is involved here. ``"auto"`` (default) takes "flow" for schedules optimised
    with :class:`ays.noise.Flow` (recorded in the schedule file) and "sigma" otherwise.
    """
    res = resolve(schedule)  # interpolated once, inside truncate: the longer denoise schedule comes from the source
    sampling = truncate(res, denoise, steps, convention="comfyui")
    return _as_sigma_or_flow(sampling, model_sampling, res).to(torch.float32)


# --------------------------------------------------------------------------- A1111 / Forge


def to_a1111(schedule: ScheduleLike, steps: int) -> Tensor:
    """The sigmas A1111/Forge's "Align Your Steps" scheduler would build from this table.

    A1111 interpolates the table log-linearly to ``steps`` *points* (down to its last
    level ``s_n``) and appends 0, giving ``steps + 1`` values (float32). Unlike
    diffusers/ComfyUI, the last non-zero level is the table's ``sigma_min``.
    """
    steps = check_steps(steps)
    res = resolve(schedule)
    if res.sampling_form:
        raise ScheduleError("A1111's convention needs the schedule's last level sigma_min > 0, not a trailing 0")
    s = res.sigmas
    if steps == s.numel():  # A1111 keeps the table as it is when it already has `steps` points
        pts = s
    elif steps == 1:
        # np.interp at the single point x=0 of the reversed table: A1111 gives [sigma_min, 0].
        pts = s[-1:]
    else:
        pts = schedules.interpolate(s, steps - 1)
    return torch.cat([pts, pts.new_zeros(1)]).to(torch.float32)


# --------------------------------------------------------------------------- img2img


def truncate(schedule: ScheduleLike, denoise: float, steps: int | None = None, *,
             convention: str = "comfyui") -> Tensor:
    """The part of a schedule that an img2img / partial-denoise run executes (sampling form).

    ``steps`` defaults to the schedule's own step count; other counts interpolate
    log-linearly. Conventions (each copied from the tool's source):

    - ``"comfyui"`` (``KSampler.set_steps``, ``BasicScheduler``): build the schedule for
      ``int(steps / denoise)`` steps and keep its last ``steps + 1`` values: always
      ``steps`` executed steps, starting lower as ``denoise`` falls. ``denoise > 0.9999``
      means the full schedule.
    - ``"comfyui_ays"`` (ComfyUI's ``AlignYourStepsScheduler`` node): build ``steps``
      steps and keep the last ``round(steps·denoise) + 1`` values.
    - ``"diffusers"`` (SD/SDXL img2img ``get_timesteps``): run the last
      ``min(int(steps·strength), steps)`` steps of the ``steps``-step schedule.
    - ``"diffusers_flow"`` (Flux/SD3 img2img): skip the first ``int(steps - steps·strength)``
      steps (can run one step more than ``"diffusers"``, e.g. 8 of 10 at strength 0.75).

    Returns float64 noise levels ending in 0; raises :class:`AysError` when no step
    would run (``denoise`` too small) or ``denoise`` is outside (0, 1].
    """
    check_choice(convention, DENOISE_CONVENTIONS, what="denoise convention")
    d = check_positive(denoise, name="denoise")
    if d > 1.0:
        raise AysError(f"denoise must lie in (0, 1], got {d}")
    base = schedule if isinstance(schedule, ResolvedSchedule) else resolve(schedule)
    n = base.steps if steps is None else check_steps(steps)

    def sampling(k: int) -> Tensor:
        return _sampling(resolve(base, k))

    if convention == "comfyui":
        if d > 0.9999:
            return sampling(n)
        out = sampling(int(n / d))[-(n + 1):]
    elif convention == "comfyui_ays":
        keep = n if d >= 1.0 else round(n * d)
        out = sampling(n)[-(keep + 1):]
    elif convention == "diffusers":
        run = min(int(n * d), n)
        out = sampling(n)[n - run:]
    else:  # diffusers_flow
        start = int(max(n - min(n * d, n), 0))
        out = sampling(n)[start:]
    if out.numel() < 2:
        raise AysError(f"denoise={d} with {n} steps leaves no step to run ({convention} convention)")
    return out


# --------------------------------------------------------------------------- diffusers


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
                           "pass ays.integrations.exports.plain_scheduler(scheduler) instead")
    if cfg.get("shift_terminal"):
        raise AysError(f"{name} has shift_terminal={cfg['shift_terminal']}, which stretches custom sigmas; "
                       "pass ays.integrations.exports.plain_scheduler(scheduler) instead")
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

    Without a scheduler, ``"timesteps"`` uses SD's noise table (1000 steps, scaled-linear
    betas 0.00085..0.012) and ``"flow"`` assumes no shift. With ``verify`` (default), the
    result is checked on a copy of the scheduler: its ``.sigmas`` after ``set_timesteps``
    must equal the schedule (float32), else :class:`AysError`.
    """
    check_choice(kind, DIFFUSERS_KINDS, what="diffusers kind")
    scheduler = _scheduler_from(scheduler_or_config)
    res = resolve(schedule, steps)
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
    sampling = _sampling(res)
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
            t = _flow_unshift(t, scheduler, mu)
        # UniPC/DPM-Solver (use_flow_sigmas) do arithmetic on the argument itself: they need an array.
        flow_sigmas = scheduler is not None and _config(scheduler).get("use_flow_sigmas")
        out = {"sigmas": t.numpy() if flow_sigmas else t.tolist()}
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
                       "ays.integrations.exports.plain_scheduler(scheduler) turns off the options that conflict "
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
            "schedules: pass ays.integrations.exports.plain_scheduler(scheduler)"
        )


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
        raise AysError(f"{type(pipe).__name__} does not take {key}=; it cannot run a custom schedule")
    pipe.scheduler = scheduler
    try:
        return pipe(**pipe_kwargs, **kwargs)
    finally:
        pipe.scheduler = original


# --------------------------------------------------------------------------- text rendering


def render(schedule: ScheduleLike, fmt: str) -> str:
    """One line of JSON for ``ays schedule --format``: ``diffusers``, ``comfyui``, ``a1111`` or ``kdiffusion``."""
    check_choice(fmt, ("diffusers", "comfyui", "a1111", "kdiffusion"), what="export format")
    res = resolve(schedule)
    if fmt == "diffusers":
        return json.dumps(to_diffusers(res))
    if fmt == "a1111":
        values = to_a1111(res, res.steps)
    elif fmt == "comfyui":
        values = to_comfyui(res)
    else:
        values = to_k_diffusion(res)
    # float32 values as the shortest decimal that reads back to the same float32 (numpy's repr)
    import numpy as np

    return json.dumps([float(str(v)) for v in values.numpy().astype(np.float32)])

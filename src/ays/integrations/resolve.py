"""One schedule, any source: resolving tensors, published tables and schedule files, and img2img truncation.

The hand-off of a schedule to diffusers, k-diffusion, ComfyUI and A1111/Forge starts here.

An ays schedule is ``n + 1`` decreasing noise levels ``s_0 > ... > s_n > 0`` in the
EDM convention (``x = x0 + sigma·eps``); each consumer wants it in its own form:

================  =====================================================================
consumer          what it takes for ``n`` steps
================  =====================================================================
diffusers sigmas  ``s_0 .. s_{n-1}, 0`` (EulerDiscrete; ``pipe(sigmas=...)``)
diffusers t       ``n`` integer timesteps nearest to ``s_0 .. s_{n-1}`` (DPMSolver++, DDPM, ...)
diffusers flow    ``n`` values ``t_i = s_i/(1+s_i)`` in [0, 1]; the scheduler appends 0 and
                  applies its shift on top, which :func:`ays.integrations.diffusers.to_diffusers` undoes
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

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import schedules
from ..validate import AysError, ScheduleError, check_choice, check_positive, check_sigmas, check_steps

__all__ = ["DENOISE_CONVENTIONS", "ResolvedSchedule", "ScheduleLike", "read_schedule_file", "resolve",
           "resolve_schedule", "to_sampling_form", "truncate"]

Tensor = torch.Tensor
ScheduleLike = Any  # Tensor | Sequence[float] | str | os.PathLike | object with .sigmas

SCHEDULE_FORMAT = "ays-schedule/1"

#: ``convention`` values of :func:`truncate`.
DENOISE_CONVENTIONS = ("comfyui", "comfyui_ays", "diffusers", "diffusers_flow")


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
    #: what the source recorded about its model (a schedule file's ``model_info``), else None
    info: Mapping[str, Any] | None = None

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
    return ResolvedSchedule(result.sigmas, result.timesteps, noise=_noise_kind(result.settings),
                            info=result.model_info)


def _noise_kind(settings: Any) -> str | None:
    """The noise parametrisation an optimisation recorded (``settings["noise"]["kind"]``)."""
    noise = settings.get("noise") if isinstance(settings, Mapping) else None
    kind = noise.get("kind") if isinstance(noise, Mapping) else None
    return kind if isinstance(kind, str) else None


def _looks_like_path(obj: str) -> bool:
    return obj.endswith(".json") or os.sep in obj or "/" in obj or os.path.isfile(obj)


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
        res = ResolvedSchedule(sig, ts, noise=_noise_kind(getattr(schedule, "settings", None)),
                               info=getattr(schedule, "model_info", None))
    else:
        res = ResolvedSchedule(check_sigmas(schedule))
    if steps is None or steps == res.steps:
        return res
    if res.sampling_form:
        raise ScheduleError(
            "cannot interpolate a schedule that already ends in 0 (its last noise level is lost); "
            "pass the schedule as produced (ending at sigma_min > 0)"
        )
    return ResolvedSchedule(schedules.interpolate(res.sigmas, steps), None, res.name, res.noise, res.info)


def resolve_schedule(schedule: ScheduleLike, steps: int | None = None) -> Tensor:
    """The float64 noise levels of any accepted schedule source (see :func:`resolve`)."""
    return resolve(schedule, steps).sigmas


def to_sampling_form(res: ResolvedSchedule) -> Tensor:
    """The schedule with its last level replaced by 0 (:func:`ays.schedules.to_sampling`)."""
    return schedules.to_sampling(res.sigmas)


def as_sigma_or_flow(sampling: Tensor, model_sampling: str, res: ResolvedSchedule) -> Tensor:
    """EDM sigmas, or flow times ``t = sigma / (1 + sigma)`` (0 stays 0); ``auto`` asks the source."""
    check_choice(model_sampling, ("auto", "sigma", "flow"), what="model sampling")
    flow = model_sampling == "flow" or (model_sampling == "auto" and res.is_flow)
    return sampling / (1 + sampling) if flow else sampling


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
        return to_sampling_form(resolve(base, k))

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

"""Model families: what a text-to-image pipeline's network needs, and which family a pipeline is.

A *family* (SD 1.x/2.x, SDXL, SD3, Flux; one module each) knows, for the pipelines of its
kind, what diffusers' own ``__call__`` does around the network:

- how prompts become the network's keyword arguments (:meth:`Family.encode`: per-row
  conditioning ``[P, ...]`` for the prompts, and one row for the negative prompt);
- how the network is called (:meth:`Family.network`: an ``f(x_model, t, **cond)`` for
  :class:`ays.denoisers.ModelDenoiser`, e.g. SDXL's ``added_cond_kwargs``, Flux's packing);
- its noise parametrisation and prediction type (:meth:`Family.noise`,
  :meth:`Family.prediction`), the model's own range and where sampling starts;
- the default schedule the pipeline runs (:meth:`Family.default_schedule`, with the
  scheduler's shift), its guidance, and what the schedule file records (:meth:`Family.info`).

:func:`~.families.family_of` picks the family of a pipeline, or says what is missing and points to
:func:`ays.integrations.diffusers.denoiser_from_parts` for anything else.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ...data import Cond
from ...denoisers import ModelDenoiser
from ...noise import NoiseSchedule
from ...validate import AysError
from .denoiser import PipelineDenoiser

__all__ = ["Family", "has", "is_class", "lacking", "net_class"]

Tensor = torch.Tensor


class Family:
    """The family of one loaded pipeline ``pipe``; subclasses fill in the hooks."""

    name = ""
    #: the pipeline's network attribute (``unet`` or ``transformer``)
    net_attr = "unet"

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    # ----------------------------------------------------------------- which pipelines

    @classmethod
    def missing(cls, pipe: Any) -> list[str]:
        """What ``pipe`` lacks to be of this family (empty: it is)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- the network

    @property
    def net(self) -> Any:
        return getattr(self.pipe, self.net_attr)

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def device(self) -> torch.device:
        dev = getattr(self.pipe, "_execution_device", None) or getattr(self.pipe, "device", None)
        return torch.device(dev) if dev is not None else torch.device("cpu")

    def encode(self, prompts: Sequence[str], negative_prompt: str | None, resolution: tuple[int, int]
               ) -> tuple[Cond, Cond]:
        """``(cond [P, ...], uncond [1, ...])``: the network's keyword arguments for prompts and negative prompt."""
        raise NotImplementedError

    def network(self, guidance_scale: float) -> nn.Module:
        """``f(x_model, t, **cond) -> output``, for :class:`~ays.denoisers.ModelDenoiser`."""
        raise NotImplementedError

    def denoiser(self, *, guidance_scale: float | None = None, negative_prompt: str | None = None,
                 resolution: tuple[int, int] | None = None, prompts: Sequence[str] | None = None
                 ) -> PipelineDenoiser:
        """The pipeline's denoiser ``D(x, σ, **cond)``, guided as the pipeline guides at ``guidance_scale``.

        ``guidance_scale`` defaults to the pipeline's own default; ``prompts`` (optional) are
        bound as the conditioning of calls that bring none (row ``i`` gets prompt ``i mod P``).
        """
        res = self.check_resolution(resolution or self.default_resolution())
        scale = self.default_guidance() if guidance_scale is None else float(guidance_scale)
        inner = ModelDenoiser(self.network(scale), self.noise(res), self.prediction(), time_scale=self.time_scale())
        cond, uncond = self.encode(list(prompts) if prompts else [""], negative_prompt, res)
        return PipelineDenoiser(inner, uncond=uncond if self.uses_cfg(scale) else None, scale=scale,
                                default=cond if prompts else None)

    def noise(self, resolution: tuple[int, int]) -> NoiseSchedule:
        raise NotImplementedError

    def prediction(self) -> str:
        raise NotImplementedError

    def time_scale(self) -> float:
        """The network's ``timestep`` in units of :meth:`noise`'s time ``t``."""
        return 1.0

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Whether the pipeline runs classifier-free guidance at this scale (two branches)."""
        return guidance_scale > 1.0

    def default_guidance(self) -> float:
        """The pipeline's own default ``guidance_scale``."""
        param = inspect.signature(self.pipe.__call__).parameters.get("guidance_scale")
        return float(param.default) if param is not None and param.default is not inspect.Parameter.empty else 1.0

    # ----------------------------------------------------------------- images and schedules

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell."""
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    def latent_channels(self) -> int:
        return int(self.pipe.vae.config.latent_channels)

    def default_resolution(self) -> tuple[int, int]:
        size = int(self.net.config.sample_size) * self.vae_scale
        return size, size

    def check_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` if the model can take it, else :class:`AysError` naming the multiple it needs."""
        step = self.resolution_multiple()
        h, w = (int(v) for v in resolution)
        if h <= 0 or w <= 0 or h % step or w % step:
            raise AysError(f"resolution {h}x{w} cannot be taken by this {self.name} model: height and width must "
                           f"be positive multiples of {step} pixels")
        return h, w

    def resolution_multiple(self) -> int:
        return self.vae_scale

    def latent_shape(self, resolution: tuple[int, int]) -> tuple[int, int, int]:
        h, w = self.check_resolution(resolution)
        return self.latent_channels(), h // self.vae_scale, w // self.vae_scale

    def latents_from_output(self, latents: Tensor, resolution: tuple[int, int]) -> Tensor:
        """The pipeline's ``output_type="latent"`` result as ``[N, C, h, w]`` latents (Flux unpacks)."""
        return latents

    def default_schedule(self, steps: int, resolution: tuple[int, int]) -> Tensor | None:
        """The pipeline's default noise levels for ``steps`` (EDM sigmas, ``steps + 1``), or None for ays' default."""
        return None

    def pipeline_kwargs(self, resolution: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of ``pipe(...)`` that fix what the schedule was made for."""
        h, w = resolution
        return {"height": h, "width": w}

    def info(self, resolution: tuple[int, int], guidance_scale: float, negative_prompt: str | None) -> dict[str, Any]:
        """What the schedule file records about the model it was made for (the hand-off)."""
        noise = self.noise(resolution)
        return {
            "family": self.name,
            "pipeline": type(self.pipe).__name__,
            "noise": type(noise).__name__,
            "prediction": self.prediction(),
            "shift": self.shift(resolution),
            "resolution": list(resolution),
            "guidance_scale": float(guidance_scale),
            "cfg": self.uses_cfg(guidance_scale),
            "negative_prompt": negative_prompt,
            "scheduler": {k: v for k, v in dict(self.scheduler.config).items() if _jsonable(v)},
        }

    def shift(self, resolution: tuple[int, int]) -> dict[str, Any] | None:
        """The time shift the scheduler applies (flow models), for the record; None when it has none."""
        return None


def _jsonable(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)  # DPM-Solver's lambda_min_clipped=-inf has no JSON; its default comes back
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_jsonable(x) for x in v)
    return False


def has(obj: Any, *names: str) -> list[str]:
    """The attribute names that ``obj`` lacks or holds as None."""
    return [n for n in names if getattr(obj, n, None) is None]


def net_class(pipe: Any, attr: str) -> str:
    return type(getattr(pipe, attr, None)).__name__


def lacking(pipe: Any, attrs: Sequence[str], *checks: Callable[[Any], str | None]) -> list[str]:
    """What :meth:`Family.missing` reports: the ``attrs`` that ``pipe`` lacks (:func:`has`); when none
    lack, the first problem that one of ``checks`` (run in order, each on ``pipe``) names, if any."""
    lack = has(pipe, *attrs)
    for check in checks:
        if lack:
            break
        problem = check(pipe)
        if problem is not None:
            lack.append(problem)
    return lack


def is_class(attr: str, name: str) -> Callable[[Any], str | None]:
    """A check for :func:`lacking`: ``pipe.<attr>`` is of the class named ``name`` (else the problem is ``name``)."""
    return lambda pipe: None if net_class(pipe, attr) == name else name

"""k-diffusion: a schedule as its ``sigmas``, a wrapped model as an ays denoiser, ays solvers as ``sample_*``.

k-diffusion's samplers take a float32 tensor ``s_0 .. s_{n-1}, 0``; its wrapped models
(``CompVisDenoiser`` & co) already return the x0 estimate in the EDM convention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .resolve import ScheduleLike, resolve, to_sampling_form

__all__ = ["from_k_diffusion_model", "k_diffusion_sampler", "to_k_diffusion"]

Tensor = torch.Tensor


def to_k_diffusion(schedule: ScheduleLike, steps: int | None = None, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``sigmas`` argument of k-diffusion's ``sample_*`` functions.

    ``n + 1`` decreasing values ending in 0, float32 by default (k-diffusion's
    ``get_sigmas_*`` use the default dtype). Equals ``ays.schedules.to_sampling(schedule)``.
    """
    return to_sampling_form(resolve(schedule, steps)).to(device=device, dtype=dtype)


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

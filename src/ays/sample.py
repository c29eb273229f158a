"""``ays.sample``: validate, look the solver up, scale the noise, run, check the result.

The solvers in :mod:`ays.solvers` are k-diffusion-style building blocks that
take already scaled noise. :func:`sample` is the checked entry point for users:
it refuses a bad schedule, a bad noise tensor, an unknown solver or an option the
solver does not take - each with a message naming the fault - before any
denoiser call, and refuses to hand back NaN or inf.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import distributed as _dist
from . import solvers
from ._callable import make_callable
from .data import bind, check_cond, take
from .device import guard
from .validate import AysError, check_batch, check_finite, check_sigmas

__all__ = ["sample"]

Tensor = torch.Tensor


def sample(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    sigmas: Any,
    solver: str = "dpmpp_2m",
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    noise_sampler: Callable[[float, float], Tensor] | None = None,
    cond: Mapping[str, Tensor] | None = None,
    **options: Any,
) -> Tensor:
    """Draw samples: ``solver(denoiser, noise * sigmas[0], sigmas, ...)``.

    Args:
        denoiser: ``denoiser(x, sigma) -> x0_hat`` with ``sigma`` of shape ``[batch]``.
        noise: standard normal noise ``[batch, ...]`` (its dtype and device are the sampler's).
        sigmas: a strictly decreasing schedule; ending in 0 returns clean samples (the
            sampling convention, see :func:`ays.schedules.to_sampling`), ending at
            ``sigma_min > 0`` returns the state at ``sigma_min``.
        solver: a name from :func:`ays.solvers.names`.
        generator: the only source of randomness for stochastic solvers.
        callback: called once per step with ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``.
        noise_sampler: ``noise_sampler(sigma, sigma_next) -> Tensor`` replacing the
            generator for every noise draw (k-diffusion's convention).
        cond: per-row conditioning, each tensor with the noise's batch first: the denoiser
            is called as ``denoiser(x, sigma, **cond)`` (k-diffusion's ``extra_args``).
        **options: the solver's own options (see ``ays.solvers.info(solver).options``).

    Under ``torch.distributed`` (e.g. ``torchrun``) each rank runs its share of the rows
    (:func:`ays.distributed.map_shards`; the generator's noise is the single-process draws,
    each rank drawing the whole batch's and keeping its rows) and every rank returns all the
    samples: those of one process for a denoiser that works row by row. With ``callback`` or
    ``noise_sampler`` (which see whole batches) every rank runs every row.

    Raises:
        AysError: bad schedule, noise, solver name or option, or a non-finite result.
    """
    s = check_sigmas(sigmas)
    if not isinstance(solver, str):
        raise AysError(f"solver must be a name (one of {', '.join(solvers.names())}), got {type(solver).__name__}")
    fn = solvers.get(solver)
    solvers.check_options(solver, options)
    check_batch(noise, name="noise")
    if not torch.isfinite(noise).all():
        raise AysError("noise holds NaN or inf")
    rows = check_cond({} if cond is None else cond, noise.shape[0], what="cond")
    x = noise * float(s[0])
    # Every denoiser output is checked, so a NaN is reported at the noise level where it arose.
    what = f"solver {solver!r} returned NaN or inf: the denoiser's output is not finite"
    if not _dist.is_distributed() or callback is not None or noise_sampler is not None:
        checked = guard(bind(denoiser, rows), what=what)
        out = fn(checked, x, s, generator=generator, callback=callback, noise_sampler=noise_sampler, **options)
        return check_finite(out, what=f"solver {solver!r}")

    def share(ks: slice) -> Tensor:
        if ks.stop <= ks.start:  # more ranks than rows
            return x[ks]
        draws = None if generator is None else _dist.shard_noise(generator, tuple(x.shape), ks, x.dtype)
        out = fn(guard(bind(denoiser, take(rows, ks)), what=what), x[ks], s, noise_sampler=draws, **options)
        return check_finite(out, what=f"solver {solver!r}")

    # Under a process group each rank runs its share of the rows (the generator's draws are the
    # single-process ones, drawn whole and cut) and every rank gets all of them, in order.
    return _dist.map_shards(x.shape[0], share, dim=0)


make_callable(__name__, sample)

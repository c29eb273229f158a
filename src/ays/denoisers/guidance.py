"""Classifier-free guidance (Ho & Salimans 2022) and bound conditioning.

Guidance combines a conditional and an unconditional denoiser as ``D = D_u + s·(D_c - D_u)``,
from two calls (:class:`CFGDenoiser`) or one call on a doubled batch
(:class:`BatchedCFGDenoiser`). :func:`bind` fixes conditioning keywords, as
k-diffusion's ``extra_args``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..validate import AysError
from .base import Denoiser, append_dims, batch_sigma, work_dtype

__all__ = ["BatchedCFGDenoiser", "CFGDenoiser", "bind"]

Tensor = torch.Tensor


def _check_scale(scale: float | Tensor) -> float | Tensor:
    if isinstance(scale, Tensor):
        if scale.ndim > 1 or not torch.isfinite(scale).all():
            raise AysError(f"guidance scale must be a finite number or a [batch] tensor, got shape "
                           f"{tuple(scale.shape)}")
        return scale
    try:
        v = float(scale)
    except (TypeError, ValueError):
        raise AysError(f"guidance scale must be a number, got {scale!r}") from None
    if not math.isfinite(v):
        raise AysError(f"guidance scale must be finite, got {v}")
    return v


def _guide(d_uncond: Tensor, d_cond: Tensor, scale: float | Tensor) -> Tensor:
    """``D_u + s·(D_c - D_u)`` (Ho & Salimans 2022, eq. 6, written for the denoiser)."""
    if isinstance(scale, Tensor):
        if scale.ndim == 1 and scale.shape[0] != d_cond.shape[0]:
            raise AysError(f"guidance scale has {scale.shape[0]} entries but the batch has {d_cond.shape[0]}")
        scale = append_dims(scale.to(device=d_cond.device, dtype=d_cond.dtype), d_cond.ndim)
    return d_uncond + scale * (d_cond - d_uncond)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance from two denoisers: ``D = D_u + s·(D_c - D_u)`` (Ho & Salimans 2022).

    ``cond`` and ``uncond`` are denoisers with their conditioning already bound
    (e.g. ``bind(model_denoiser, encoder_hidden_states=c)``); extra keyword
    arguments at call time go to both. Because every adapter of this module is
    affine in the network output with the same coefficients for both branches,
    guiding ``D`` is the same as guiding ``eps``, ``v`` or the flow velocity
    (diffusers' ``guidance_scale``). ``scale`` may be a number or a ``[batch]``
    tensor; a plain 1 or 0 skips the branch it does not need. Two network calls;
    :class:`BatchedCFGDenoiser` does both in one.
    """

    def __init__(self, cond: Denoiser, uncond: Denoiser, scale: float | Tensor) -> None:
        super().__init__()
        if not callable(cond) or not callable(uncond):
            raise AysError("cond and uncond must be callable denoisers")
        self.cond = cond
        self.uncond = uncond
        self.scale = _check_scale(scale)

    def forward(self, x: Tensor, sigma: Tensor | float, **extra_args: Any) -> Tensor:
        if not isinstance(self.scale, Tensor):
            if self.scale == 1.0:
                return self.cond(x, sigma, **extra_args)
            if self.scale == 0.0:
                return self.uncond(x, sigma, **extra_args)
        return _guide(self.uncond(x, sigma, **extra_args), self.cond(x, sigma, **extra_args), self.scale)


def _cat_cond(c: Any, u: Any, key: str) -> Any:
    """Stack a conditioning value for the doubled batch ``[cond; uncond]``."""
    if isinstance(c, Tensor) and isinstance(u, Tensor):
        try:
            return torch.cat([c, u], dim=0)
        except RuntimeError as e:
            raise AysError(f"cannot batch conditioning {key!r}: shapes {tuple(c.shape)} and {tuple(u.shape)} "
                           f"differ beyond the batch dimension ({e})") from None
    if isinstance(c, Mapping) and isinstance(u, Mapping):
        if set(c) != set(u):
            raise AysError(f"conditioning {key!r} has keys {sorted(c)} for cond but {sorted(u)} for uncond")
        return {k: _cat_cond(c[k], u[k], f"{key}.{k}") for k in c}
    if c is u or (not isinstance(c, Tensor) and not isinstance(u, Tensor) and c == u):
        return c
    raise AysError(f"conditioning {key!r} differs between cond and uncond but is not a tensor; cannot batch it")


class BatchedCFGDenoiser(nn.Module):
    """Classifier-free guidance with one network call on a doubled batch.

    ``denoiser(cat[x, x], cat[σ, σ], **cat[cond, uncond])`` is split into
    ``D_c, D_u`` and combined as ``D_u + s·(D_c - D_u)`` (Ho & Salimans 2022). ``cond``
    and ``uncond`` are keyword-argument mappings with the same keys: tensor values
    are concatenated along dim 0 (so they must have ``x``'s batch size and the
    same trailing shape, e.g. text embeddings padded to one length), nested
    mappings (SDXL's ``added_cond_kwargs``) recursively, other values must be equal
    in both. This is what k-diffusion-based UIs do; it is faster than
    :class:`CFGDenoiser` when the network is batch-parallel, at twice the memory.
    """

    def __init__(self, denoiser: Denoiser, cond: Mapping[str, Any], uncond: Mapping[str, Any],
                 scale: float | Tensor) -> None:
        super().__init__()
        if not callable(denoiser):
            raise AysError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if set(cond) != set(uncond):
            raise AysError(f"cond has keys {sorted(cond)} but uncond has {sorted(uncond)}; they must match")
        self.denoiser = denoiser
        self.cond = dict(cond)
        self.uncond = dict(uncond)
        self.scale = _check_scale(scale)

    def forward(self, x: Tensor, sigma: Tensor | float, **extra_args: Any) -> Tensor:
        s = batch_sigma(x, sigma).to(device=x.device, dtype=work_dtype(x))
        if not isinstance(self.scale, Tensor):
            if self.scale == 1.0:
                return self.denoiser(x, s, **self.cond, **extra_args)
            if self.scale == 0.0:
                return self.denoiser(x, s, **self.uncond, **extra_args)
        both = {k: _cat_cond(self.cond[k], self.uncond[k], k) for k in self.cond}
        d = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), **both, **extra_args)
        if not isinstance(d, Tensor) or d.shape[0] != 2 * x.shape[0]:
            raise AysError(f"denoiser returned shape {tuple(getattr(d, 'shape', ()))} for a doubled batch of "
                           f"{2 * x.shape[0]}")
        d_cond, d_uncond = d.chunk(2)
        return _guide(d_uncond, d_cond, self.scale)


def bind(denoiser: Callable[..., Tensor], /, **extra_args: Any) -> Denoiser:
    """A denoiser with conditioning bound: ``bind(D, **kw)(x, σ) == D(x, σ, **kw)``.

    k-diffusion's ``extra_args``, as a ``functools.partial``; keywords given at
    call time override the bound ones. (A k-diffusion wrapped model
    ``model(x, sigma, **extra_args)`` already is a denoiser; this is all it needs.)
    """
    if not callable(denoiser):
        raise AysError(f"denoiser must be callable, got {type(denoiser).__name__}")
    return functools.partial(denoiser, **extra_args)

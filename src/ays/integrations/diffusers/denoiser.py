"""The denoiser of a text-to-image pipeline: its network, per-row captions, guidance as the pipeline applies it.

``D(x, σ, **cond)`` (DESIGN.md: conditioning travels with the data) is the network in its own
parametrisation (:class:`ays.denoisers.ModelDenoiser`), conditioned row by row on ``cond``
(each image's own caption), with classifier-free guidance against the negative prompt:

    D = D_u + s·(D_c − D_u)                                          (Ho & Salimans 2022, eq. 6)

computed, as diffusers' pipelines compute it, from one network call on the doubled batch
``[uncond; cond]``. Every adapter of :mod:`ays.denoisers` is affine in the network output
with the same coefficients for both halves, so guiding ``D`` is guiding ``eps``, ``v`` or the
flow velocity. Without per-row conditioning (``ays.sample`` of one prompt), the bound
``default`` rows are used, spread over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...data import Cond
from ...denoisers import ModelDenoiser
from ...denoisers.base import batch_sigma, work_dtype
from ...validate import AysError

__all__ = ["PipelineDenoiser", "spread"]

Tensor = torch.Tensor


def spread(cond: Mapping[str, Tensor], batch: int) -> Cond:
    """Conditioning of ``P`` rows over ``batch`` rows: row ``i`` takes entry ``i mod P``."""
    out: Cond = {}
    for key, value in cond.items():
        idx = torch.arange(batch, device=value.device) % value.shape[0]
        out[key] = value.index_select(0, idx)
    return out


class PipelineDenoiser(nn.Module):
    """``D(x, σ, **cond)`` with guidance ``scale`` against the one-row ``uncond`` (None: no guidance).

    ``inner`` is the :class:`~ays.denoisers.ModelDenoiser` of the family's network;
    ``default`` the conditioning used when a call brings none (e.g. the prompt of ``ays sample``).
    """

    def __init__(self, inner: ModelDenoiser, *, uncond: Cond | None, scale: float, default: Cond | None = None
                 ) -> None:
        super().__init__()
        self.inner = inner
        self.uncond = None if uncond is None else dict(uncond)
        self.scale = float(scale)
        self.default = None if default is None else dict(default)

    @property
    def sigma_min(self) -> float:
        return self.inner.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.inner.sigma_max

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Tensor) -> Tensor:
        batch = x.shape[0]
        if not cond:
            if self.default is None:
                raise AysError("this pipeline denoiser needs conditioning (the rows' caption embeddings): give "
                               "data with captions, or bind prompts")
            cond = spread(self.default, batch)
        cond = {k: v.to(x.device) for k, v in cond.items()}
        if self.uncond is None:
            return self.inner(x, sigma, **cond)
        if set(cond) != set(self.uncond):
            raise AysError(f"conditioning keys {sorted(cond)} differ from the negative prompt's {sorted(self.uncond)}")
        s = batch_sigma(x, sigma).to(device=x.device, dtype=work_dtype(x))
        negative = spread(self.uncond, batch)
        both = {k: torch.cat([negative[k].to(x.device), cond[k]]) for k in cond}
        d_uncond, d_cond = self.inner(torch.cat([x, x]), torch.cat([s, s]), **both).chunk(2)
        return d_uncond + self.scale * (d_cond - d_uncond)


def call_network(net: Any, *args: Any, **kwargs: Any) -> Tensor:
    """A diffusers network's output tensor, in the input's dtype story: ``return_dict=False`` -> ``[0]``."""
    out = net(*args, return_dict=False, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class NetworkCall(nn.Module):
    """Base of the families' ``f(x_model, t, **cond)``: runs the network in its own dtype, returns ``x``'s."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.net, "dtype", torch.float32)

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        dtype = self.dtype
        cond = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
        tin = t.to(dtype) if t.is_floating_point() else t
        return self.run(x.to(dtype), tin, cond).to(x.dtype)

    def run(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        raise NotImplementedError

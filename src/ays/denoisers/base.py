"""The denoiser contract and what every adapter shares: noise levels per row, dtypes, equation (1).

A denoiser is called as k-diffusion calls its wrapped models, ``D(x, sigma, **extra_args)``
with ``x`` of shape ``[batch, ...]`` and ``sigma`` of shape ``[batch]``. Every adapter of
:mod:`ays.denoisers` is an affine map of the network output ``y``:

    D(x, sigma) = c_skip(sigma) · x + c_out(sigma) · y                       (1)

Coefficients are computed in float64 on the CPU from the ``[batch]`` noise levels
(:func:`batch_sigma`; noise levels are data here, no gradient flows to ``sigma``) and
applied on ``x``'s device in the working dtype (:func:`work_dtype`); the result comes
back in ``x``'s dtype (:func:`affine`). At ``sigma = 0`` the state is the data itself,
so adapters answer those rows with ``x`` exactly, without calling the network
(:func:`exact_at_zero`), where e.g. ``log(sigma)`` or a discrete model's timestep
would be undefined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..noise import NoiseSchedule
from ..validate import AysError, check_batch

__all__ = [
    "Denoiser",
    "affine",
    "alpha_at",
    "append_dims",
    "batch_sigma",
    "check_eps",
    "check_noise",
    "coefficient",
    "exact_at_zero",
    "network_output",
    "work_dtype",
]

Tensor = torch.Tensor


class Denoiser(Protocol):
    """The denoiser contract: ``D(x, sigma, **extra_args) -> x0_hat`` (k-diffusion's wrapped model)."""

    def __call__(self, x: Tensor, sigma: Tensor, /, **extra_args: Any) -> Tensor: ...


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a ``[batch]`` tensor to ``[batch, 1, ..., 1]`` with ``ndim`` dimensions, to broadcast against ``x``."""
    if v.ndim > ndim:
        raise AysError(f"cannot broadcast a tensor of shape {tuple(v.shape)} to {ndim} dimension(s)")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


# ----------------------------------------------------------------------------- checked inputs


def batch_sigma(x: Tensor, sigma: Tensor | float) -> Tensor:
    """Check ``sigma`` against ``x`` and return it as a CPU float64 tensor of shape ``[batch]``.

    A scalar (0-d) noise level is broadcast to the batch; otherwise ``sigma`` must
    have shape ``[batch]``, one level per sample, as k-diffusion passes it.
    """
    check_batch(x, name="x")
    try:
        # Python numbers straight to float64 (torch.as_tensor would round them to float32 first).
        # A tensor keeps its graph: method="ld3" differentiates the model's output in its noise level.
        s = (sigma if isinstance(sigma, Tensor) else torch.as_tensor(sigma, dtype=torch.float64))
        s = s.to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise AysError(f"sigma must be a number or a tensor, got {type(sigma).__name__}") from None
    batch = x.shape[0]
    if s.ndim == 0:
        s = s.expand(batch)
    elif s.ndim != 1 or s.shape[0] != batch:
        raise AysError(
            f"sigma must have shape [batch] = [{batch}] to match x of shape {tuple(x.shape)}, got {tuple(s.shape)}"
        )
    if not torch.isfinite(s).all():
        raise AysError("sigma must be finite, got NaN or inf")
    if (s < 0).any():
        raise AysError(f"sigma must be >= 0, got {s.min().item()}")
    return s


def check_eps(x0: Tensor, eps: Tensor) -> None:
    """A clean batch ``x0`` and noise ``eps`` of the same shape (for a training target)."""
    check_batch(x0, name="x0")
    if eps.shape != x0.shape:
        raise AysError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")


def check_noise(noise: Any) -> None:
    """A noise schedule of :mod:`ays.noise` (it maps ``sigma`` to model time and state scale)."""
    for name in ("sigma", "t", "alpha"):
        if not callable(getattr(noise, name, None)):
            raise AysError(f"noise must be a noise schedule from ays.noise (EDM, DiscreteVP, ContinuousVP, Flow); "
                           f"{type(noise).__name__} has no method {name}()")


def alpha_at(noise: NoiseSchedule, s: Tensor) -> Tensor:
    """The state scale ``alpha(σ)`` for CPU float64 levels ``s``, as a float64 tensor of ``s``'s shape."""
    return torch.as_tensor(noise.alpha(s), dtype=torch.float64).expand_as(s)


# ----------------------------------------------------------------------------- equation (1)


def work_dtype(x: Tensor) -> torch.dtype:
    """The dtype coefficients are applied in."""
    # Half-precision states are combined in float32 (as EDM's reference code does),
    # float64 stays float64.
    return torch.promote_types(x.dtype, torch.float32)


def coefficient(v: Tensor, x: Tensor) -> Tensor:
    """A CPU float64 ``[batch]`` coefficient, on ``x``'s device in the working dtype, broadcastable to ``x``."""
    return append_dims(v.to(device=x.device, dtype=work_dtype(x)), x.ndim)


def affine(x: Tensor, y: Tensor, c_skip: Tensor, c_out: Tensor) -> Tensor:
    """Equation (1): ``c_skip·x + c_out·y`` in the working dtype, returned in ``x``'s dtype."""
    w = work_dtype(x)
    return (coefficient(c_skip, x) * x.to(w) + coefficient(c_out, x) * y.to(w)).to(x.dtype)


def exact_at_zero(x: Tensor, s: Tensor, fill: float, denoise: Callable[[Tensor], Tensor]) -> Tensor:
    """``D(x, s)`` with the rows at ``s = 0`` answered by ``x`` itself (the state there is the data).

    ``denoise(s_eval)`` computes the other rows; it sees ``fill``, a level the network
    knows, in place of 0, and is not called at all when every row is at 0.
    """
    zero = s == 0
    if zero.all():
        return x.clone()
    d = denoise(torch.where(zero, torch.full_like(s, fill), s))
    if zero.any():
        d = torch.where(append_dims(zero.to(x.device), x.ndim), x, d)
    return d


def network_output(out: Any, x: Tensor, *, learned_variance: bool = False, what: str = "model") -> Tensor:
    """Unwrap a network's output to a tensor of ``x``'s shape.

    diffusers models return an output object with ``.sample`` (or a tuple with
    ``return_dict=False``); ADM / DeepFloyd-style models with a learned variance
    return ``2·C`` channels, the prediction first.
    """
    if not isinstance(out, Tensor):
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            out = out[0]
        else:
            raise AysError(f"{what} returned {type(out).__name__}, expected a tensor")
    if learned_variance:
        if out.ndim < 2 or out.shape[1] != 2 * x.shape[1]:
            raise AysError(
                f"{what} output has shape {tuple(out.shape)}; with learned_variance=True it must have "
                f"2×{x.shape[1] if x.ndim > 1 else '?'} channels in dim 1"
            )
        out = out[:, : x.shape[1]]
    if out.shape != x.shape:
        hint = ""
        if out.ndim == x.ndim and out.ndim > 1 and out.shape[1] == 2 * x.shape[1]:
            hint = " (twice the channels: set learned_variance=True if the model also predicts a variance)"
        raise AysError(f"{what} output has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}{hint}")
    return out

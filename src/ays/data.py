"""Data, optionally with per-row conditioning that travels with every draw (DESIGN.md, "data").

The KLUB is an expectation over the joint law of (image, condition),

    KLUB(a, b) = ∫_a^b t⁻³ · E_{(x0, c)} E||D(x_t, t; c) − D(x_b, b; c)||² dt,

so an image is denoised with its own caption and never with another's. ``data`` is

- a tensor of clean samples ``[N, ...]``;
- a callable ``data(n, generator)`` returning ``[n, ...]``;
- either of them with conditioning: :class:`Conditioned` ``(x, cond)`` (or a plain
  ``(x, cond)`` pair), where ``cond`` maps names to tensors whose first dimension
  is the data's (captions' embeddings, class labels, SDXL's time ids); a callable
  may return a :class:`Conditioned` of ``n`` rows.

A draw returns rows and their conditioning together (:func:`draw`); every part of ays
that slices, repeats, shards or micro-batches rows does the same to the
conditioning with :func:`take` and :func:`repeat`, and calls the denoiser as
``denoiser(x, sigma, **cond)`` (k-diffusion's ``extra_args``) through :func:`call`.
Unconditioned data has ``cond == {}`` and the denoiser is called as ``denoiser(x, sigma)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .validate import AysError

__all__ = [
    "Cond", "Conditioned", "as_conditioned", "bind", "call", "check_cond", "check_data", "conditioning", "draw",
    "event_shape", "in_batches",
    "repeat", "take", "to",
]  # fmt: skip

Tensor = torch.Tensor
Cond = dict[str, Tensor]


def check_cond(cond: Any, rows: int, what: str = "conditioning") -> Cond:
    """``cond`` as a dict of tensors with ``rows`` rows each, or an :class:`AysError` naming the fault."""
    if not isinstance(cond, Mapping):
        raise AysError(f"{what} must be a mapping of names to tensors, got {type(cond).__name__}")
    out: Cond = {}
    for key, value in cond.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise AysError(f"{what} keys must be keyword-argument names, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise AysError(f"{what} {key!r} must be a tensor, got {type(value).__name__}")
        if value.ndim < 1 or value.shape[0] != rows:
            raise AysError(f"{what} {key!r} must have the data's {rows} rows first, got shape {tuple(value.shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise AysError(f"{what} {key!r} holds NaN or inf")
        out[key] = value
    return out


@dataclass(frozen=True)
class Conditioned:
    """Clean samples ``x`` ``[N, ...]`` and their per-row conditioning ``cond`` (each ``[N, ...]``)."""

    x: Tensor
    cond: Cond

    def __post_init__(self) -> None:
        x = _check_rows(self.x, "data")
        object.__setattr__(self, "cond", check_cond(self.cond, x.shape[0]))

    def __len__(self) -> int:
        return self.x.shape[0]


def _check_rows(x: Any, what: str, n: int | None = None) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise AysError(f"{what} must be a tensor [N, ...], got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise AysError(f"{what} must be a non-empty tensor [N, ...], got shape {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise AysError(f"{what} must return {n} samples [n, ...], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise AysError(f"{what} must be a floating-point tensor, got {x.dtype}")
    return x


def as_conditioned(value: Any) -> Conditioned | None:
    """A :class:`Conditioned` from itself or an ``(x, cond)`` pair; None for anything else."""
    if isinstance(value, Conditioned):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Mapping):
        return Conditioned(value[0], value[1])
    return None


def check_data(data: Any) -> Any:
    """``data`` as :func:`draw` takes it (a pair becomes a :class:`Conditioned`), refused before any work if not."""
    pair = as_conditioned(data)
    if pair is not None:
        return pair
    if isinstance(data, torch.Tensor):
        return _check_rows(data, "data")
    if callable(data):
        return data
    raise AysError(
        "data must be a tensor [N, ...], a callable data(n, generator) or ays.data.Conditioned(x, cond), "
        f"got {type(data).__name__}"
    )


def draw(data: Any, n: int, generator: torch.Generator) -> tuple[Tensor, Cond]:
    """``n`` clean samples and their conditioning: from a callable, or cycling random permutations of a tensor.

    Whole random permutations, repeated as needed: every row appears ``floor(n/N)`` or
    ``ceil(n/N)`` times, which has less variance than iid resampling. The conditioning
    is indexed with the same rows.
    """
    pair = as_conditioned(data)
    if pair is not None or isinstance(data, torch.Tensor):
        x, cond = (pair.x, pair.cond) if pair is not None else (_check_rows(data, "data"), {})
        big_n = x.shape[0]
        reps = -(-n // big_n)
        idx = torch.cat([torch.randperm(big_n, generator=generator) for _ in range(reps)])[:n]
        x0, c = x[idx.to(x.device)], take(cond, idx)
    elif callable(data):
        out = data(n, generator)
        pair = as_conditioned(out)
        if pair is not None:
            x0, c = _check_rows(pair.x, "data(n, generator)", n), pair.cond
        else:
            x0, c = _check_rows(out, "data(n, generator)", n), {}
    else:
        check_data(data)  # raises: nothing else is data
    if not torch.isfinite(x0).all():
        raise AysError("data holds NaN or inf")
    return x0, c


def conditioning(data: Any, n: int, generator: torch.Generator, probe: Mapping[str, Tensor]) -> Cond:
    """The conditioning of ``n`` data rows, for ``n`` runs from noise: each noise row gets a row's own.

    ``probe`` is the conditioning of a one-row draw; when it is empty the data carries none and
    nothing is drawn (unconditioned data costs no extra draw).
    """
    return draw(data, n, generator)[1] if probe else {}


def event_shape(data: Any, generator: torch.Generator) -> tuple[int, ...]:
    """The shape of one clean sample (a one-row draw from a callable)."""
    pair = as_conditioned(data)
    if pair is not None:
        return tuple(pair.x.shape[1:])
    if isinstance(data, torch.Tensor):
        return tuple(data.shape[1:])
    return tuple(draw(data, 1, generator)[0].shape[1:])


def take(cond: Mapping[str, Tensor], index: slice | Tensor) -> Cond:
    """The rows ``index`` (a slice or an index tensor) of every conditioning tensor."""
    if isinstance(index, torch.Tensor):
        return {k: v[index.to(v.device)] for k, v in cond.items()}
    return {k: v[index] for k, v in cond.items()}


def repeat(cond: Mapping[str, Tensor], times: int) -> Cond:
    """Every conditioning tensor stacked ``times`` times along rows: for ``torch.cat([x] * times)``."""
    return {k: torch.cat([v] * times) for k, v in cond.items()}


def to(cond: Mapping[str, Tensor], device: torch.device | str | None) -> Cond:
    """The conditioning on ``device`` (dtypes kept: ids stay integers)."""
    return {k: v.to(device) for k, v in cond.items()}


def call(denoiser: Callable[..., Tensor], x: Tensor, sigma: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
    """``denoiser(x, sigma, **cond)``; a plain ``denoiser(x, sigma)`` when there is no conditioning."""
    return denoiser(x, sigma, **cond) if cond else denoiser(x, sigma)


def bind(denoiser: Callable[..., Tensor], cond: Mapping[str, Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A two-argument denoiser for a solver run over exactly these rows: ``D(x, σ) = denoiser(x, σ, **cond)``."""
    return functools.partial(denoiser, **cond) if cond else denoiser


def in_batches(denoiser: Callable[..., Tensor], batch_size: int | None,
               cond: Mapping[str, Tensor] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """:func:`bind`, calling the model on at most ``batch_size`` rows at a time (``None``: all at once).

    For a solver run over more rows than one model call should take: the solver (and whatever
    draws its noise) sees every row once per step, the model sees slices of them. Rows are
    independent for a denoiser, so the result is that of one call.
    """
    whole = dict(cond or {})
    if batch_size is None:
        return bind(denoiser, whole)

    def batched(x: Tensor, sigma: Tensor) -> Tensor:
        if x.shape[0] <= batch_size:
            return call(denoiser, x, sigma, whole)
        return torch.cat([call(denoiser, x[a : a + batch_size], sigma[a : a + batch_size],
                               take(whole, slice(a, a + batch_size)))
                          for a in range(0, x.shape[0], batch_size)])

    return batched

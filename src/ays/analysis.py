"""Exact output laws of the solvers for Gaussian data.

For data ``N(0, c² I)`` the ideal denoiser ``D(x, sigma) = c² / (c² + sigma²) x``
is linear, and every solver in :mod:`ays.solvers` is linear in its state, its
denoiser outputs and its noise. So the output of any solver, deterministic or
stochastic, is a linear combination of independent standard normals: the
starting noise and every noise draw. Its law, per dimension, is ``N(0, v)`` with
``v`` the sum of the squared coefficients.

This module computes ``v`` exactly by running the REAL solver code on coefficient
vectors: the scalar state is represented as a ``[1, K]`` float64 row of
coefficients over ``K`` independent standard normals, starting at
``x = init_std * e_0``, and a ``noise_sampler`` hands out a fresh unit basis
vector ``e_j`` at every draw. A first pass with a zero noise sampler counts the
draws (a solver's draws depend only on the schedule and its options), which fixes
``K``. No Monte Carlo, no re-derivation per solver: a bug in a solver shows up
here as it would in sampling, and :func:`output_variance` is the oracle that
proves which schedule is best for a solver on Gaussian data.

KL divergences are per dimension between centred Gaussians,
``KL(N(0, v) || N(0, w)) = (v/w - 1 - log(v/w)) / 2``. :func:`output_kl`
compares the solver's output ``N(0, v)`` with the target ``N(0, w)``: the data
``N(0, c²)`` when the schedule ends in 0 (final denoise), the noised data
``N(0, c² + sigma_min²)`` when it ends at ``sigma_min > 0``. The default
direction is ``KL(output || target)``; ``reverse=True`` gives ``KL(target || output)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from . import solvers as _solvers
from .validate import AysError, check_positive, check_sigmas

__all__ = [
    "exact_ode_variance",
    "gaussian_denoiser",
    "gaussian_kl",
    "marginal_variance",
    "output_coefficients",
    "output_kl",
    "output_variance",
    "target_variance",
]

Tensor = torch.Tensor
SolverSpec = str | Callable[..., Tensor]


def gaussian_denoiser(c: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The ideal denoiser of ``N(0, c² I)``: ``D(x, sigma) = c² / (c² + sigma²) x``."""
    c2 = check_positive(c, name="c", allow_zero=True) ** 2

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x * (c2 / (c2 + sigma * sigma))

    return denoise


def marginal_variance(sigma: float, c: float) -> float:
    """Variance of the noised data ``x0 + sigma z`` for ``x0 ~ N(0, c²)``: ``c² + sigma²``."""
    return float(c) ** 2 + float(sigma) ** 2


def target_variance(sigmas: Any, c: float) -> float:
    """What a perfect sampler returns on this schedule: ``c² + sigmas[-1]²`` (``c²`` after a final denoise)."""
    s = check_sigmas(sigmas)
    return marginal_variance(float(s[-1]), c)


def exact_ode_variance(sigmas: Any, c: float, init_std: float | None = None) -> float:
    """Output variance of the EXACT probability-flow ODE from ``init_std * z`` at ``sigmas[0]``.

    For Gaussian data the ODE solution is ``x(s) = x(s_0) sqrt((c² + s²) / (c² + s_0²))``.
    """
    s = check_sigmas(sigmas)
    s0, s_end = float(s[0]), float(s[-1])
    std0 = s0 if init_std is None else check_positive(init_std, name="init_std")
    return std0**2 * marginal_variance(s_end, c) / marginal_variance(s0, c)


def gaussian_kl(v: float, w: float) -> float:
    """``KL(N(0, v) || N(0, w))`` per dimension."""
    if not (v > 0 and w > 0):
        raise AysError(f"variances must be > 0 for a KL divergence, got {v} and {w}")
    q = v / w
    return 0.5 * (q - 1.0 - math.log(q))


def _resolve(solver: SolverSpec, options: dict[str, Any]) -> Callable[..., Tensor]:
    if callable(solver):
        return solver
    _solvers.check_options(solver, options)
    return _solvers.get(solver)


class _BasisNoise:
    """A noise sampler that returns the next unit basis vector ``e_1, e_2, ...`` of a ``[1, K]`` row."""

    def __init__(self, k: int) -> None:
        self.k, self.next = k, 1

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        if self.next >= self.k:  # the solver drew more than in the counting pass: not a pure function of sigmas
            raise AysError("solver drew more noise than in its counting pass")
        e = torch.zeros(1, self.k, dtype=torch.float64)
        e[0, self.next] = 1.0
        self.next += 1
        return e


def output_coefficients(
    solver: SolverSpec, sigmas: Any, c: float, *, init_std: float | None = None, **options: Any
) -> Tensor:
    """The output as coefficients over independent standard normals (1-D float64).

    Entry 0 belongs to the starting noise (``x = init_std * z_0``, by default
    ``sigmas[0] * z_0``, the sampling convention); entry ``j >= 1`` to the
    solver's ``j``-th noise draw.
    """
    fn = _resolve(solver, options)
    s = check_sigmas(sigmas)
    std0 = float(s[0]) if init_std is None else check_positive(init_std, name="init_std")
    den = gaussian_denoiser(c)
    draws = 0

    def count(sigma: float, sigma_next: float) -> Tensor:
        nonlocal draws
        draws += 1
        return torch.zeros(1, 1, dtype=torch.float64)

    fn(den, torch.ones(1, 1, dtype=torch.float64), s, noise_sampler=count, **options)
    x = torch.zeros(1, draws + 1, dtype=torch.float64)
    x[0, 0] = std0
    out = fn(den, x, s, noise_sampler=_BasisNoise(draws + 1), **options)
    return out[0]


def output_variance(
    solver: SolverSpec, sigmas: Any, c: float, *, init_std: float | None = None, **options: Any
) -> float:
    """Exact per-dimension variance of the solver's output on data ``N(0, c² I)``."""
    coef = output_coefficients(solver, sigmas, c, init_std=init_std, **options)
    return float((coef * coef).sum())


def output_kl(
    solver: SolverSpec,
    sigmas: Any,
    c: float,
    *,
    reverse: bool = False,
    init_std: float | None = None,
    **options: Any,
) -> float:
    """Exact per-dimension KL between the solver's output and its target (see the module docstring).

    ``reverse=False``: ``KL(output || target)``; ``reverse=True``: ``KL(target || output)``.
    """
    v = output_variance(solver, sigmas, c, init_std=init_std, **options)
    w = target_variance(sigmas, c)
    return gaussian_kl(w, v) if reverse else gaussian_kl(v, w)

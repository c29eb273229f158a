"""The paper's importance proposal for the KLUB of one interval, with its closed-form mass and sampler.

The KLUB of ``[a, b]`` is estimated by importance sampling from the paper's proposal
(``c = 0.5`` for every data set, AYS App. B):

    π(t) ∝ f(t) = t⁻³ · (1/(t² + c²) − 1/(b² + c²))   on [a, b],

and a draw ``t ~ π`` gets the weight ``Z / (1/(t² + c²) − 1/(b² + c²))``, ``Z`` being
π's normaliser. ``Z`` is elementary. Substituting ``v = 1/t²`` (so ``t⁻³dt = −dv/2``)
and then ``v = 1/b² + s`` gives ``f`` the form ``s / ((1 + c²/b²)(1 + c²/b² + c²s))``, whence

    Z(a, b) = h(x_ab) / (2c⁴),   h(x) = x − log(1 + x),
    x_ab = c²(1/a² − 1/b²) / (1 + c²/b²) = c²(b² − a²) / (a²(b² + c²)).

The same formula with ``a`` replaced by ``t`` is the mass of ``[t, b]``, so the CDF is
``P(τ ≤ t) = 1 − h(x(t)) / h(x_ab)`` and the inverse-CDF sampler solves
``h(x) = u·h(x_ab)`` for ``x`` (Newton, float64, vectorised; ``h`` is convex and
increasing) and maps back with ``t² = c²b² / (c² + x(b² + c²))``. Written this
way nothing cancels, even for intervals a hair wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..validate import AysError, check_positive

__all__ = ["proposal_cdf", "proposal_density", "proposal_normalizer", "proposal_sample"]

Tensor = torch.Tensor

# u is drawn in [U_MIN, 1]: u = 0 would put t exactly at b, where the weight is
# 0/0 (the squared difference vanishes with the density).
_U_MIN = 2.0**-53


def _f64(x: Tensor | float | Sequence[float]) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _h(x: Tensor) -> Tensor:
    """``h(x) = x − log(1 + x)`` for x ≥ 0, accurate to the last bits also for tiny x."""
    small = x < 1e-3
    xs = torch.where(small, x, torch.zeros_like(x))
    # Taylor series: cancellation-free where x - log1p(x) would lose digits.
    series = xs**2 * (0.5 - xs * (1 / 3 - xs * (0.25 - xs * (0.2 - xs / 6))))
    return torch.where(small, series, x - torch.log1p(x))


def _x_of(t: Tensor, b: Tensor, c: float) -> Tensor:
    """``x(t) = c²(b² − t²) / (t²(b² + c²))``: the mass coordinate of the proposal."""
    c2 = c * c
    return c2 * (b - t) * (b + t) / (t * t * (b * b + c2))


def _check_interval(a: Tensor, b: Tensor) -> None:
    if not (torch.all(torch.isfinite(a)) and torch.all(torch.isfinite(b))):
        raise AysError("interval ends must be finite")
    if torch.any(a <= 0):
        raise AysError("interval lower ends must be > 0")
    if torch.any(a >= b):
        raise AysError("every interval needs lower end < upper end")


def proposal_normalizer(a: Tensor | float, b: Tensor | float, c: float = 0.5) -> Tensor:
    """Closed-form ``Z(a, b) = ∫_a^b t⁻³(1/(t² + c²) − 1/(b² + c²)) dt = h(x_ab) / (2c⁴)``.

    Broadcasts over ``a`` and ``b``; float64.
    """
    a, b = torch.broadcast_tensors(_f64(a), _f64(b))
    c = check_positive(c, name="c")
    _check_interval(a, b)
    return _h(_x_of(a, b, c)) / (2 * c**4)


def proposal_density(t: Tensor | float, a: Tensor | float, b: Tensor | float, c: float = 0.5) -> Tensor:
    """The normalised proposal density ``π(t)`` on ``[a, b]`` (0 outside)."""
    t, a, b = torch.broadcast_tensors(_f64(t), _f64(a), _f64(b))
    z = proposal_normalizer(a, b, c)
    g = (b - t) * (b + t) / ((t * t + c * c) * (b * b + c * c))
    inside = (t >= a) & (t <= b)
    return torch.where(inside, g / t**3 / z, torch.zeros_like(t))


def proposal_cdf(t: Tensor | float, a: Tensor | float, b: Tensor | float, c: float = 0.5) -> Tensor:
    """``P(τ ≤ t) = 1 − h(x(t)) / h(x(a))`` for the proposal on ``[a, b]``."""
    t, a, b = torch.broadcast_tensors(_f64(t), _f64(a), _f64(b))
    c = check_positive(c, name="c")
    _check_interval(a, b)
    tc = torch.minimum(torch.maximum(t, a), b)
    return 1 - _h(_x_of(tc, b, c)) / _h(_x_of(a, b, c))


def _solve_h(y: Tensor) -> Tensor:
    """Solve ``h(x) = y`` for x ≥ 0 (y > 0), vectorised Newton in float64.

    ``x0 = y + sqrt(2y)`` lies above the root (h(x0) ≥ y for every y > 0) and h is
    convex and increasing, so Newton's iterates fall monotonically onto the root:
    no bracketing, no oscillation. Three or four steps reach the 1e-12 relative
    tolerance (h itself is good to ~1e-13 where the series hands over to log1p).
    """
    x = y + torch.sqrt(2 * y)
    for _ in range(60):
        step = (_h(x) - y) * (1 + x) / x.clamp_min(1e-300)
        x_new = (x - step).clamp_min(0.0)
        done = bool(torch.all(step.abs() <= 1e-12 * x_new))
        x = x_new
        if done:
            break
    return x


def proposal_sample(u: Tensor, a: Tensor | float, b: Tensor | float, c: float = 0.5) -> tuple[Tensor, Tensor]:
    """Inverse-CDF draws from the proposal: ``u`` in (0, 1] -> ``(t, b² − t²)``.

    ``u = 1`` gives ``t = a``; ``u -> 0`` gives ``t -> b``. The second value,
    ``b² − t²``, is computed without cancellation (it sets the weight and the
    noise added in the forward chain). Broadcasts over ``u``, ``a``, ``b``.
    """
    u, a, b = torch.broadcast_tensors(_f64(u), _f64(a), _f64(b))
    c = check_positive(c, name="c")
    _check_interval(a, b)
    c2 = c * c
    x = _solve_h(u.clamp(_U_MIN, 1.0) * _h(_x_of(a, b, c)))
    b2 = b * b
    denom = c2 + x * (b2 + c2)
    t = torch.sqrt(c2 * b2 / denom)
    gap = b2 * x * (b2 + c2) / denom  # b² − t², exactly as algebra gives it
    # Round-off must not push t out of [a, b].
    return torch.minimum(torch.maximum(t, a), b), gap

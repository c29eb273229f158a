"""Sampling schedules: the hand-made heuristics, the published AYS tables, and
the arithmetic on schedules (interpolation, subdivision, the sampling form).

Convention (DESIGN.md): a schedule of ``n`` steps is ``n + 1`` strictly
decreasing float64 noise levels from ``sigma_max`` down to ``sigma_min > 0``.
:func:`to_sampling` replaces the last level by 0 for sampling, as k-diffusion,
ComfyUI and diffusers do. Mind the difference from k-diffusion:
``karras(n, ...)`` equals ``get_sigmas_karras(n + 1, ...)[:-1]``, so after
``to_sampling`` the last non-zero level is ``s_{n-1}``, as with the published
AYS tables in ComfyUI and diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .noise import ContinuousVP, DiscreteVP, NoiseSchedule
from .validate import AysError, check_choice, check_positive, check_range, check_sigmas, check_steps

__all__ = [
    "HEURISTICS",
    "PUBLISHED",
    "PUBLISHED_TIMESTEPS",
    "beta",
    "build",
    "interpolate",
    "karras",
    "kl_optimal",
    "loglinear",
    "names",
    "polyexponential",
    "published",
    "published_timesteps",
    "subdivide",
    "time_uniform",
    "to_sampling",
    "vp",
]

Tensor = torch.Tensor


def _ramp(n: int) -> Tensor:
    """``u_i = i / n`` for i = 0..n, in float64."""
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)


def _finish(sigmas: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    # Pin the endpoints exactly: float round-off in pow/tan/exp must not move them.
    sigmas = sigmas.clone()
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return check_sigmas(sigmas, allow_final_zero=False)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's schedule (Karras et al. 2022, Eq. 5): uniform in ``sigma**(1/rho)``."""
    n = check_steps(n)
    lo, hi = check_range(sigma_min, sigma_max)
    rho = check_positive(rho, name="rho")
    u = _ramp(n)
    s = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _finish(s, lo, hi)


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """k-diffusion's polyexponential: ``log sigma`` follows ``(1 - u)**rho``."""
    n = check_steps(n)
    lo, hi = check_range(sigma_min, sigma_max)
    rho = check_positive(rho, name="rho")
    ramp = (1 - _ramp(n)) ** rho
    return _finish(torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo)), lo, hi)


def loglinear(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in ``log sigma``, i.e. uniform in logSNR (= polyexponential, rho=1)."""
    return polyexponential(n, sigma_min, sigma_max, rho=1.0)


def kl_optimal(n: int, sigma_min: float, sigma_max: float, c: float = 0.5) -> Tensor:
    """The KL-optimal schedule for DDIM on Gaussian data ``N(0, c²I)`` (paper Thm 3.1).

    ``t_i = c·tan((1 - i/n)·atan(t_min/c) + (i/n)·atan(t_max/c))``, listed here from
    ``t_max`` down. ComfyUI's ``kl_optimal`` is this with ``c = 1``.
    """
    n = check_steps(n)
    lo, hi = check_range(sigma_min, sigma_max)
    c = check_positive(c, name="c")
    u = _ramp(n)
    s = c * torch.tan((1 - u) * math.atan(hi / c) + u * math.atan(lo / c))
    return _finish(s, lo, hi)


def _noise(noise: NoiseSchedule | None) -> NoiseSchedule:
    return ContinuousVP() if noise is None else noise


def _in_time(q: Tensor, sigma_min: float, sigma_max: float, noise: NoiseSchedule | None) -> Tensor:
    """Map fractions ``q`` (1 -> sigma_max, 0 -> sigma_min) linearly in model time."""
    ns = _noise(noise)
    t_hi, t_lo = ns.t(sigma_max), ns.t(sigma_min)
    return ns.sigma(t_lo + q * (t_hi - t_lo))


def time_uniform(
    n: int, sigma_min: float, sigma_max: float, noise: NoiseSchedule | None = None
) -> Tensor:
    """Uniform in the model's own time (default: the continuous VP SDE, beta 0.1..20).

    For a discrete-time model pass its :class:`~ays.noise.DiscreteVP`: this is
    the "time-uniform" (``leading``/``trailing``-free) spacing of DDPM samplers,
    the paper's initial schedule for discrete-time models.
    """
    n = check_steps(n)
    lo, hi = check_range(sigma_min, sigma_max)
    return _finish(_in_time(1 - _ramp(n), lo, hi, noise), lo, hi)


def vp(
    n: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    beta_d: float = 19.9,
    beta_min: float = 0.1,
    eps_s: float = 1e-3,
) -> Tensor:
    """k-diffusion's ``get_sigmas_vp``: time-uniform on the VP SDE from t=1 to ``eps_s``.

    Without a range, the endpoints are the SDE's own ``sigma(1)`` and ``sigma(eps_s)``.
    """
    ns = ContinuousVP(beta_min=beta_min, beta_d=beta_d, eps_s=eps_s)
    lo = ns.sigma_min if sigma_min is None else sigma_min
    hi = ns.sigma_max if sigma_max is None else sigma_max
    return time_uniform(n, lo, hi, noise=ns)


def beta(
    n: int,
    sigma_min: float,
    sigma_max: float,
    alpha: float = 0.6,
    beta: float = 0.6,
    noise: NoiseSchedule | None = None,
) -> Tensor:
    """Beta-quantile spacing in model time (Lee et al. 2024; ComfyUI's ``beta``).

    Step ``i`` sits at the ``1 - i/n`` quantile of Beta(alpha, beta) along the
    model's time axis, which crowds steps at both ends for alpha, beta < 1.
    """
    from scipy.stats import beta as beta_dist  # scipy only when this schedule is used

    n = check_steps(n)
    lo, hi = check_range(sigma_min, sigma_max)
    a = check_positive(alpha, name="alpha")
    b = check_positive(beta, name="beta")
    q = torch.as_tensor(beta_dist.ppf((1 - _ramp(n)).numpy(), a, b), dtype=torch.float64)
    return _finish(_in_time(q, lo, hi, noise), lo, hi)


# --- Published AYS tables (NVIDIA, 10 steps, sigma from t_max down to t_min) ---

PUBLISHED: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
    "deepfloyd_if": (160.41, 8.081, 3.315, 1.885, 1.207, 0.785, 0.553, 0.293, 0.186, 0.030, 0.006),
}

#: Discrete timesteps published alongside (1000-step DDPM models), 10 steps.
PUBLISHED_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0),
    "sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0),
}


def interpolate(sigmas: Tensor, steps: int) -> Tensor:
    """Resample a schedule to ``steps`` steps, linearly in log-sigma against a uniform index.

    This is NVIDIA's recipe for the published tables
    (``np.interp(linspace(0, 1, N), linspace(0, 1, 11), log(sigmas))``); at the
    schedule's own step count it returns the schedule unchanged.
    """
    s = check_sigmas(sigmas, allow_final_zero=False)
    steps = check_steps(steps)
    pos = _ramp(steps) * (s.numel() - 1)
    lo = pos.floor().long().clamp(max=s.numel() - 2)
    w = pos - lo
    log_s = s.log()
    out = torch.exp((1 - w) * log_s[lo] + w * log_s[lo + 1])
    return _finish(out, float(s[-1]), float(s[0]))


def subdivide(sigmas: Tensor) -> Tensor:
    """Double the steps: insert the log-midpoint ``sqrt(s_i·s_{i+1})`` into every interval."""
    s = check_sigmas(sigmas, allow_final_zero=False)
    mids = torch.sqrt(s[:-1] * s[1:])
    out = torch.empty(2 * s.numel() - 1, dtype=torch.float64)
    out[0::2], out[1::2] = s, mids
    return out


def published(name: str, steps: int = 10) -> Tensor:
    """A published AYS table, log-linearly interpolated to ``steps`` steps (steps + 1 sigmas)."""
    check_choice(name, PUBLISHED, what="published schedule")
    return interpolate(torch.tensor(PUBLISHED[name], dtype=torch.float64), steps)


def published_timesteps(name: str, steps: int = 10) -> Tensor:
    """Integer timesteps of a published table for a 1000-step model (SD 1.5 / SDXL).

    At 10 steps these are NVIDIA's own; at other step counts, the nearest timestep
    (in log-sigma) of SD's noise schedule to each interpolated sigma, last one 0.
    """
    check_choice(name, PUBLISHED_TIMESTEPS, what="published timestep table")
    steps = check_steps(steps)
    if steps == 10:
        return torch.tensor(PUBLISHED_TIMESTEPS[name], dtype=torch.long)
    ts = DiscreteVP.from_betas().nearest_timestep(published(name, steps))
    ts[0], ts[-1] = 999, 0
    if not torch.all(ts[1:] < ts[:-1]):
        raise AysError(f"{steps} steps are too many for distinct timesteps of {name!r}")
    return ts


def to_sampling(sigmas: Tensor) -> Tensor:
    """The sampling form of a schedule: the last level replaced by 0.

    ``n + 1`` levels still make ``n`` steps; a first-order solver spends ``n``
    denoiser calls and its final call, at ``s_{n-1}``, returns the clean estimate.
    """
    s = check_sigmas(sigmas).clone()
    s[-1] = 0.0
    return s


HEURISTICS: dict[str, Callable[..., Tensor]] = {
    "karras": karras,
    "loglinear": loglinear,
    "time_uniform": time_uniform,
    "vp": vp,
    "polyexponential": polyexponential,
    "kl_optimal": kl_optimal,
    "beta": beta,
}


def names() -> list[str]:
    """Every schedule name :func:`build` accepts."""
    return sorted([*HEURISTICS, *PUBLISHED])


def build(name: str, steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
          **options: Any) -> Tensor:
    """Any named schedule: a heuristic over ``[sigma_min, sigma_max]`` or a published table.

    Published tables carry their own range; ``sigma_min``/``sigma_max`` are refused for them.
    """
    check_choice(name, names(), what="schedule")
    if name in PUBLISHED:
        if sigma_min is not None or sigma_max is not None or options:
            raise AysError(f"published schedule {name!r} has its own noise range and takes no options")
        return published(name, steps)
    fn = HEURISTICS[name]
    if name == "vp":
        return fn(steps, sigma_min, sigma_max, **options)
    if sigma_min is None or sigma_max is None:
        raise AysError(f"schedule {name!r} needs sigma_min and sigma_max")
    try:
        return fn(steps, sigma_min, sigma_max, **options)
    except TypeError as e:  # an option the heuristic does not take
        raise AysError(f"schedule {name!r}: {e}") from None

"""Noise level <-> model time, for every family of diffusion model ays meets.

ays works in the EDM convention: ``x_sigma = x0 + sigma * eps`` (s(t) = 1,
sigma(t) = t). Models are trained in other parametrisations; each class here
maps its own time variable ``t`` to the EDM noise level ``sigma`` and back, and
gives ``alpha(sigma)``, the factor that turns an EDM state into the model's state
(``x_model = alpha(sigma) * x_edm``).

- :class:`EDM`: ``t = sigma``, ``alpha = 1``.
- :class:`DiscreteVP`: DDPM-style models with ``alphas_cumprod`` over integer
  timesteps (SD 1.5, SDXL, DeepFloyd); ``sigma = sqrt((1 - abar) / abar)`` and
  ``alpha = 1 / sqrt(1 + sigma**2)``. Fractional timesteps interpolate log-sigma
  linearly, as k-diffusion's ``DiscreteSchedule`` does.
- :class:`ContinuousVP`: Song et al.'s VP SDE, ``sigma(t) = sqrt(exp(beta_d t²/2 +
  beta_min t) - 1)`` (EDM paper, Table 1).
- :class:`Flow`: rectified flow / flow matching, ``x_t = (1 - t) x0 + t eps``, so
  ``sigma = t / (1 - t)`` and ``alpha = 1 - t = 1 / (1 + sigma)``; ``shift`` is the
  time shift of SD3/Flux, ``t' = shift·t / (1 + (shift - 1)·t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .validate import AysError, check_positive

__all__ = ["EDM", "ContinuousVP", "DiscreteVP", "Flow", "NoiseSchedule", "betas_for"]

Tensor = torch.Tensor


def _f64(x: Tensor | float) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class NoiseSchedule(Protocol):
    """What every time parametrisation provides."""

    sigma_min: float
    sigma_max: float

    def sigma(self, t: Tensor | float) -> Tensor: ...

    def t(self, sigma: Tensor | float) -> Tensor: ...

    def alpha(self, sigma: Tensor | float) -> Tensor: ...


@dataclass(frozen=True)
class EDM:
    """The EDM parametrisation: time is the noise level."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def sigma(self, t: Tensor | float) -> Tensor:
        return _f64(t)

    def t(self, sigma: Tensor | float) -> Tensor:
        return _f64(sigma)

    def alpha(self, sigma: Tensor | float) -> Tensor:
        return torch.ones_like(_f64(sigma))


@dataclass(frozen=True)
class ContinuousVP:
    """VP SDE with linear beta(t) = beta_min + beta_d·t on t in [eps_s, 1]."""

    beta_min: float = 0.1
    beta_d: float = 19.9
    eps_s: float = 1e-3

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _f64(t)
        return torch.sqrt(torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def t(self, sigma: Tensor | float) -> Tensor:
        # Inverse of sigma(t): solve beta_d/2 t² + beta_min t = log(1 + sigma²).
        s = _f64(sigma)
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * torch.log1p(s**2)) - self.beta_min) / self.beta_d

    def alpha(self, sigma: Tensor | float) -> Tensor:
        return torch.rsqrt(1 + _f64(sigma) ** 2)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.eps_s))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(1.0))


def betas_for(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
              kind: str = "scaled_linear") -> Tensor:
    """DDPM beta tables as diffusers builds them (``linear``, ``scaled_linear``, ``cosine``)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":  # Nichol & Dhariwal, "squaredcos_cap_v2" in diffusers
        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor(
            [min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999) for i in range(num_timesteps)],
            dtype=torch.float64,
        )
    raise AysError(f"unknown beta schedule {kind!r}; choose one of: cosine, linear, scaled_linear")


@dataclass(frozen=True)
class DiscreteVP:
    """A discrete-time VP model, defined by its ``alphas_cumprod`` table.

    Timestep ``i`` (0-based, as diffusers counts) has noise level
    ``sigmas[i] = sqrt((1 - abar_i) / abar_i)``, increasing with ``i``.
    """

    alphas_cumprod: Tensor = field(repr=False)

    def __post_init__(self) -> None:
        a = _f64(self.alphas_cumprod).flatten()
        if a.numel() < 2 or not torch.all((a > 0) & (a < 1)):
            raise AysError("alphas_cumprod must hold at least 2 values strictly between 0 and 1")
        if not torch.all(a[1:] < a[:-1]):
            raise AysError("alphas_cumprod must be strictly decreasing")
        object.__setattr__(self, "alphas_cumprod", a)

    @classmethod
    def from_betas(cls, betas: Tensor | None = None, **kw: object) -> DiscreteVP:
        """Build from a beta table, or from :func:`betas_for` keywords (SD's by default)."""
        b = betas_for(**kw) if betas is None else _f64(betas)  # type: ignore[arg-type]
        return cls(torch.cumprod(1 - b, dim=0))

    @property
    def sigmas(self) -> Tensor:
        return torch.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, t: Tensor | float) -> Tensor:
        """Noise level at (possibly fractional) timestep ``t``: log-sigma interpolation."""
        t = _f64(t)
        if torch.any((t < 0) | (t > self.num_timesteps - 1)):
            raise AysError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
        log_sigmas = self.sigmas.log()
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        return torch.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1])

    def t(self, sigma: Tensor | float) -> Tensor:
        """Fractional timestep of noise level ``sigma`` (k-diffusion's ``sigma_to_t``)."""
        s = _f64(sigma)
        if torch.any((s < self.sigma_min * (1 - 1e-9)) | (s > self.sigma_max * (1 + 1e-9))):
            raise AysError(f"sigma must lie in the model's range [{self.sigma_min:.6g}, {self.sigma_max:.6g}]")
        log_sigmas = self.sigmas.log()
        ls = s.log().clamp(log_sigmas[0], log_sigmas[-1])
        hi = torch.searchsorted(log_sigmas, ls.reshape(-1).contiguous()).clamp(1, self.num_timesteps - 1)
        hi = hi.reshape(ls.shape)
        lo = hi - 1
        w = (ls - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return lo.to(torch.float64) + w

    def nearest_timestep(self, sigma: Tensor | float) -> Tensor:
        """The integer timestep whose noise level is nearest in log-sigma."""
        ls = _f64(sigma).log()
        d = (ls.reshape(-1, 1) - self.sigmas.log().reshape(1, -1)).abs()
        return d.argmin(dim=1).reshape(ls.shape)

    def alpha(self, sigma: Tensor | float) -> Tensor:
        return torch.rsqrt(1 + _f64(sigma) ** 2)


@dataclass(frozen=True)
class Flow:
    """Flow matching / rectified flow: ``x_t = (1 - t)·x0 + t·eps`` for t in [0, 1)."""

    shift: float = 1.0
    sigma_min: float = 1e-3
    sigma_max: float = 1e3

    def __post_init__(self) -> None:
        check_positive(self.shift, name="shift")

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _f64(t)
        if torch.any((t < 0) | (t >= 1)):
            raise AysError("flow time t must lie in [0, 1)")
        return t / (1 - t)

    def t(self, sigma: Tensor | float) -> Tensor:
        s = _f64(sigma)
        return s / (1 + s)

    def alpha(self, sigma: Tensor | float) -> Tensor:
        return 1 / (1 + _f64(sigma))

    def apply_shift(self, t: Tensor | float) -> Tensor:
        """SD3/Flux time shift ``t' = shift·t / (1 + (shift - 1)·t)``."""
        t = _f64(t)
        return self.shift * t / (1 + (self.shift - 1) * t)

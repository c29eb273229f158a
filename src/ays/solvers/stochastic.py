"""Stochastic one-step solvers: stochastic DDIM, Euler ancestral, EDM's stochastic sampler.

- :func:`stochastic_ddim` (DDIM with eta = 1, i.e. DDPM's ancestral step in the
  EDM convention) takes the exact solution of the reverse SDE
  ``dx = -2 sigma score dsigma + sqrt(2 sigma) dW`` over ``[s_next, s]`` with the
  denoiser frozen at ``D = D(x_s, s)``:
  ``x_next = (s_next²/s²) x + (1 - s_next²/s²) D + s_next sqrt(1 - s_next²/s²) z``.
  This is the solver the AYS KLUB is derived for (Sabour et al. 2024, Sec. 3).
  It is exact only when the true denoiser is constant along the path (data
  concentrated on one point); for any other data it loses variance (for Gaussian
  data ``N(0, c²)``, exactly ``c² (s² - s_next²)² / (s² (c² + s²))`` per step
  started on the true marginal - the tests check this).
- :func:`euler_ancestral` is k-diffusion's ``sample_euler_ancestral``: DDIM(eta)
  as an ODE step down to ``sigma_down`` plus fresh noise ``sigma_up``; at
  ``eta = 1`` it is algebraically stochastic DDIM.
- :func:`edm_stochastic` is EDM's Algorithm 2: "churn" the state up to
  ``s_hat = s (1 + gamma)`` by adding exactly the forward noise
  ``sqrt(s_hat² - s²) S_noise z``, then take a Heun step from ``s_hat`` to ``s_next``.

The ER-SDE solvers are in :mod:`ays.solvers.er_sde`, the DPM-Solver++ SDE
solvers in :mod:`ays.solvers.dpmpp`.
"""

from __future__ import annotations

import math
from typing import Unpack

import torch

from ..validate import check_positive
from ._common import Denoiser, Run, RunArgs, ancestral_split, check_eta, log_step
from .deterministic import heun_step

__all__ = ["edm_stochastic", "euler_ancestral", "stochastic_ddim"]

Tensor = torch.Tensor


def ddim_step(run: Run, x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One stochastic DDIM step: ``(s_next²/s²) x + (1 - s_next²/s²) D + s_next sqrt(1 - s_next²/s²) z``."""
    # s_next² / s² = e^{-2h}; into sigma = 0 it is 0, the noise scale too: the final denoise
    h = log_step(sigma, sigma_next)
    ratio, scale = math.exp(-2.0 * h), sigma_next * math.sqrt(-math.expm1(-2.0 * h))
    return run.ancestral_step(x, denoised, sigma, sigma_next, ratio, scale)


def stochastic_ddim(denoiser: Denoiser, x: Tensor, sigmas: Tensor, **run_args: Unpack[RunArgs]) -> Tensor:
    """Stochastic DDIM (eta = 1): the exact step of the linearised reverse SDE. Weak order 1."""
    return Run(denoiser, x, sigmas, **run_args).walk(x, ddim_step)


def euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    **run_args: Unpack[RunArgs],
) -> Tensor:
    """Euler ancestral (k-diffusion): ODE step to ``sigma_down``, then noise ``sigma_up * s_noise``.

    ``eta = 0`` is :func:`euler`; ``eta = 1`` is :func:`stochastic_ddim`.
    """
    eta = check_eta(eta)
    s_noise = check_positive(s_noise, name="s_noise", allow_zero=True)

    def step(run: Run, x: Tensor, denoised: Tensor, s: float, s_next: float) -> Tensor:
        down, up = ancestral_split(s, s_next, eta)
        return run.ancestral_step(x, denoised, s, s_next, down / s, up * s_noise)

    return Run(denoiser, x, sigmas, **run_args).walk(x, step)


def edm_stochastic(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    S_churn: float = 40.0,
    S_min: float = 0.05,
    S_max: float = 50.0,
    S_noise: float = 1.0,
    **run_args: Unpack[RunArgs],
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2).

    On steps with ``S_min <= s_i <= S_max`` the state is churned to
    ``s_hat = s_i (1 + gamma)``, ``gamma = min(S_churn / n, sqrt(2) - 1)``, with
    noise ``sqrt(s_hat² - s_i²) S_noise z``; then a Heun step runs from ``s_hat``
    to ``s_{i+1}`` (Euler into 0). The churn noise is drawn as the noise of step
    ``(s_i, s_{i+1})`` - also on a step into 0 when ``s_i >= S_min``, as in EDM.
    Defaults are EDM's ImageNet-64 settings except
    ``S_noise = 1`` (EDM used 1.003 to offset its network's bias; with an exact
    denoiser 1 keeps the marginals right). ``S_churn = 0`` is :func:`heun`.
    """
    S_churn = check_positive(S_churn, name="S_churn", allow_zero=True)
    S_min = check_positive(S_min, name="S_min", allow_zero=True)
    S_max = math.inf if S_max == math.inf else check_positive(S_max, name="S_max", allow_zero=True)
    S_noise = check_positive(S_noise, name="S_noise", allow_zero=True)
    run = Run(denoiser, x, sigmas, **run_args)
    gamma_max = min(S_churn / run.steps, math.sqrt(2.0) - 1.0)
    for i, s, s_next in run.intervals():
        gamma = gamma_max if S_min <= s <= S_max else 0.0
        s_hat = s * (1.0 + gamma)
        if gamma > 0 and S_noise > 0:
            x = x + run.noise(x, s, s_next) * (s * math.sqrt(gamma * (2.0 + gamma)) * S_noise)
        denoised = run.denoise_step(i, x, s, s_hat)
        x = heun_step(run, x, denoised, s_hat, s_next)
    return x

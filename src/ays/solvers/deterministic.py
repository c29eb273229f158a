"""Deterministic one-step solvers of the probability-flow ODE: Euler (= DDIM) and Heun.

In the EDM convention the probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. 2022, Eq. 3). With the denoiser frozen over a step it solves
exactly to ``x_next = D + (s_next / s)(x - D)``: that is DDIM (Song et al. 2021,
eta = 0) and, since the ODE is linear in ``sigma`` for frozen ``D``, also Euler's
method in ``sigma`` - the two coincide here. Heun's method (EDM Algorithm 1)
corrects with a second denoiser call at ``s_next``; on a step into ``sigma = 0``
that call is impossible (division by 0) and the step stays Euler, as in EDM and
k-diffusion.

The DPM-Solver++ multistep solvers live in :mod:`ays.solvers.dpmpp`.
"""

from __future__ import annotations

from typing import Unpack

import torch

from ._common import Denoiser, Run, RunArgs, exp_step, to_d

__all__ = ["euler", "heun", "heun_step"]

Tensor = torch.Tensor


def euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, **run_args: Unpack[RunArgs]) -> Tensor:
    """Euler's method = DDIM (eta = 0): ``x_next = D + (s_next / s)(x - D)``. First order, one call per step."""
    return Run(denoiser, x, sigmas, **run_args).walk(x, lambda run, x, d, s, s_next: exp_step(x, d, s_next / s))


def heun_step(run: Run, x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One step of EDM's Heun method from ``sigma`` (with ``D(x, sigma)`` given) to ``sigma_next``.

    The Euler predictor is followed by the trapezoidal corrector
    ``x + (s_next - s)(d + d') / 2`` (EDM Algorithm 1, lines 5-8); into ``sigma = 0``
    only the predictor is taken.
    """
    x_euler = exp_step(x, denoised, sigma_next / sigma)
    if sigma_next == 0:
        return x_euler
    d_next = to_d(x_euler, sigma_next, run.denoise(x_euler, sigma_next))
    return x + (sigma_next - sigma) * 0.5 * (to_d(x, sigma, denoised) + d_next)


def heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, **run_args: Unpack[RunArgs]) -> Tensor:
    """Heun's second-order method (EDM Algorithm 1): two calls per step, one on a step into 0."""
    return Run(denoiser, x, sigmas, **run_args).walk(x, heun_step)

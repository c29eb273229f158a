"""DPM-Solver++ multistep solvers (Lu et al. 2022, arXiv 2211.01095), ODE and SDE forms.

Data prediction in ``lambda = -log sigma``. Over a step of length
``h = log(s / s_next)`` the (eta-scaled) reverse SDE with the denoiser written
as a polynomial in ``lambda`` solves exactly to

    x_next = e^-H x + (1 - e^-H) D + h phi2(H) D' + ...  +  s_next sqrt(1 - e^(-2 eta h)) z,

with ``H = (1 + eta) h`` and ``D'`` the derivative in ``lambda``; ``eta = 0`` is the
probability-flow ODE, ``eta = 1`` the reverse SDE (SDE-DPM-Solver++, Lu et al. 2022;
k-diffusion's ``sample_dpmpp_2m_sde``). The
derivatives of ``D`` come from the denoiser outputs of previous steps (multistep:
one denoiser call per step). The 2M correction comes in two variants, as in
k-diffusion and diffusers: ``midpoint`` weighs the first difference by
``(1 - e^-H) / 2``, ``heun`` by ``phi2(H)``; they agree to second order.

DPM-Solver++(3M) here is exactly k-diffusion's ``sample_dpmpp_3m_sde`` (the ODE
solver is its ``eta = 0`` case, and the formula of diffusers' ``solver_order=3``):
the first step is first order, the second uses one difference (``heun`` weight),
later steps add the second difference with weight ``-phi3``. Two facts keep its
global order at 2 rather than 3, and the tests measure it: ``-phi3 = H/6 + O(H²)``
is half the Taylor weight ``H/3`` of the second difference ``D2 ~ h² D''/2``, and
the first-order start alone already leaves an ``O(h²)`` global error. Its error
constant is still well below 2M's.

Every solver here takes its last step into ``sigma = 0`` as the final denoise
``x = D`` (k-diffusion's convention; for the ODE this is also the first-order
step's limit).
"""

from __future__ import annotations

import math
from typing import Unpack

import torch

from ..validate import check_choice, check_positive
from ._common import Denoiser, Run, RunArgs, check_eta, exp_step, log_step, phi_functions

__all__ = ["dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "dpmpp_3m_sde", "dpmpp_multistep"]

Tensor = torch.Tensor


def dpmpp_multistep(
    run: Run,
    x: Tensor,
    *,
    order: int,
    eta: float = 0.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """The one loop behind every DPM-Solver++ multistep variant (``order`` 2 or 3)."""
    eta = check_eta(eta)
    s_noise = check_positive(s_noise, name="s_noise", allow_zero=True)
    check_choice(solver_type, ("midpoint", "heun"), what="solver_type")
    # history of (denoised, h) of the previous steps, newest first
    history: list[tuple[Tensor, float]] = []
    for i, s, s_next in run.intervals():
        denoised = run.denoise_step(i, x, s)
        if s_next == 0:
            x = denoised
            continue
        h = log_step(s, s_next)
        H = (1.0 + eta) * h
        c1, phi2, phi3 = phi_functions(H)
        x = exp_step(x, denoised, math.exp(-H))
        if history and order >= 2:
            d1_prev, h1 = history[0]
            # first difference scaled to this step: (h / h1)(D - D1) ~ h D'
            d1 = (denoised - d1_prev) * (h / h1)
            if len(history) >= 2 and order >= 3:
                d2_prev, h2 = history[1]
                r0, r1 = h1 / h, h2 / h
                d1_1 = (d1_prev - d2_prev) * (1.0 / r1)
                d2 = (d1 - d1_1) * (1.0 / (r0 + r1))
                x = x + phi2 * (d1 + d2 * r0) - phi3 * d2
            elif order >= 3 or solver_type == "heun":
                x = x + phi2 * d1
            else:
                x = x + (0.5 * c1) * d1
        if eta > 0 and s_noise > 0:
            x = x + run.noise(x, s, s_next) * (s_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * s_noise)
        history = [(denoised, h), *history[:1]]
    return x


def dpmpp_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, **run_args: Unpack[RunArgs]) -> Tensor:
    """DPM-Solver++(2M) on the probability-flow ODE (k-diffusion's ``sample_dpmpp_2m``). Second order."""
    run = Run(denoiser, x, sigmas, **run_args)
    return dpmpp_multistep(run, x, order=2)


def dpmpp_3m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, **run_args: Unpack[RunArgs]) -> Tensor:
    """DPM-Solver++(3M) on the ODE: k-diffusion's ``sample_dpmpp_3m_sde`` with ``eta = 0``.

    Global order 2 (see the module docstring), with a smaller error than 2M.
    """
    run = Run(denoiser, x, sigmas, **run_args)
    return dpmpp_multistep(run, x, order=3)


def dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    **run_args: Unpack[RunArgs],
) -> Tensor:
    """SDE-DPM-Solver++(2M) (k-diffusion's ``sample_dpmpp_2m_sde``; diffusers' ``sde-dpmsolver++``).

    ``eta`` scales the noise (0: the ODE solver 2M), ``s_noise`` the drawn noise,
    ``solver_type`` is ``"midpoint"`` (default, as k-diffusion and diffusers) or ``"heun"``.
    """
    run = Run(denoiser, x, sigmas, **run_args)
    return dpmpp_multistep(run, x, order=2, eta=eta, s_noise=s_noise, solver_type=solver_type)


def dpmpp_3m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    **run_args: Unpack[RunArgs],
) -> Tensor:
    """SDE-DPM-Solver++(3M) (k-diffusion's ``sample_dpmpp_3m_sde``); ``eta = 0`` is :func:`dpmpp_3m`."""
    run = Run(denoiser, x, sigmas, **run_args)
    return dpmpp_multistep(run, x, order=3, eta=eta, s_noise=s_noise)

"""Diffusion solvers and their registry.

Every solver is a plain function with one signature, k-diffusion compatible::

    solver(denoiser, x, sigmas, *, generator=None, callback=None, noise_sampler=None, **options) -> x

``x`` is already scaled noise (``x = noise * sigmas[0]``); ``sigmas`` is a
strictly decreasing schedule that may end in 0 (then the last step returns the
denoised value, as in k-diffusion) or at ``sigma_min > 0`` (then the result is
the state at ``sigma_min``). ``denoiser(x, sigma)`` receives ``sigma`` as a
``[batch]`` tensor in ``x``'s dtype and device; ``callback`` receives
``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` once per step. All noise comes
from ``generator`` or, when given, ``noise_sampler(sigma, sigma_next)``.

The registry (:func:`get`, :func:`info`, :func:`names`, :func:`count_calls`)
records each solver's order, whether it is stochastic and how many denoiser
calls it spends. For stochastic solvers ``order`` is the weak order (of the
output law), as measured on Gaussian data by the tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..validate import AysError, check_choice, check_sigmas
from ._common import Callback, Denoiser, NoiseSampler
from .brownian import BrownianTree
from .deterministic import euler, heun
from .dpmpp import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde
from .er_sde import er_sde
from .stochastic import edm_stochastic, euler_ancestral, stochastic_ddim

__all__ = [
    "BrownianTree",
    "Callback",
    "Denoiser",
    "NoiseSampler",
    "Solver",
    "SolverInfo",
    "check_options",
    "count_calls",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m",
    "dpmpp_3m_sde",
    "edm_stochastic",
    "er_sde",
    "euler",
    "euler_ancestral",
    "get",
    "heun",
    "info",
    "names",
    "stochastic_ddim",
]

Solver = Callable[..., torch.Tensor]

#: Keyword arguments every solver takes; everything else is a solver-specific option.
COMMON_KEYWORDS = ("generator", "callback", "noise_sampler")


@dataclass(frozen=True)
class SolverInfo:
    """What the registry knows about one solver.

    ``order``: global convergence order on the probability-flow ODE for a
    deterministic solver, weak order (error of the output law) for a stochastic
    one. ``calls_per_step``: denoiser calls on a step between two positive noise
    levels; ``final_calls``: on a step into ``sigma = 0``. ``options``: the
    solver's own keyword options with their defaults.
    """

    name: str
    fn: Solver
    order: int
    stochastic: bool
    calls_per_step: int
    description: str
    final_calls: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)


def _options_of(fn: Solver) -> Mapping[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return MappingProxyType({
        p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in COMMON_KEYWORDS
    })


def _entry(fn: Solver, order: int, stochastic: bool, description: str, calls: int = 1, final: int = 1) -> SolverInfo:
    return SolverInfo(fn.__name__, fn, order, stochastic, calls, description, final, _options_of(fn))


_REGISTRY: dict[str, SolverInfo] = {
    e.name: e
    for e in (
        _entry(euler, 1, False, "Euler = DDIM (eta 0) on the probability-flow ODE"),
        _entry(heun, 2, False, "Heun's method, EDM Algorithm 1 (Euler on the step into 0)", calls=2),
        _entry(dpmpp_2m, 2, False, "DPM-Solver++(2M), data-prediction multistep"),
        _entry(dpmpp_3m, 2, False, "DPM-Solver++(3M) as k-diffusion/diffusers define it (global order 2)"),
        _entry(stochastic_ddim, 1, True, "stochastic DDIM (eta 1): exact step of the linearised reverse SDE"),
        _entry(euler_ancestral, 1, True, "Euler ancestral, DDIM(eta) with fresh noise (k-diffusion)"),
        _entry(dpmpp_2m_sde, 2, True, "SDE-DPM-Solver++(2M), midpoint or heun variant"),
        _entry(dpmpp_3m_sde, 2, True, "SDE-DPM-Solver++(3M) (k-diffusion)"),
        _entry(er_sde, 2, True, "ER-SDE-Solver orders 1-3 (Cui et al. 2023), ComfyUI's noise scale"),
        _entry(edm_stochastic, 2, True, "EDM Algorithm 2: churn then Heun", calls=2),
    )
}


def names() -> list[str]:
    """The registered solver names, sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> SolverInfo:
    """The :class:`SolverInfo` of a solver; an unknown name raises :class:`~ays.validate.AysError` listing names."""
    check_choice(name, _REGISTRY, what="solver")
    return _REGISTRY[name]


def get(name: str) -> Solver:
    """The solver function registered under ``name``."""
    return info(name).fn


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse options the solver does not take, naming them and the ones it does take."""
    known = info(name).options
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "none"
        raise AysError(f"solver {name!r} has no option(s) {', '.join(map(repr, unknown))}; its options: {takes}")
    return dict(options)


def count_calls(name: str, sigmas: Any) -> int:
    """Exact number of denoiser calls ``name`` spends on the schedule ``sigmas``.

    A step into ``sigma = 0`` costs ``final_calls`` (Heun's last step is one Euler
    step), every other step ``calls_per_step``.
    """
    entry = info(name)
    s = check_sigmas(sigmas)
    steps = s.numel() - 1
    if s[-1] == 0:
        return entry.calls_per_step * (steps - 1) + entry.final_calls
    return entry.calls_per_step * steps

"""A DMN-style baseline: optimised time steps from the noise schedule alone, no model calls.

Xue et al. ("Accelerating Diffusion Sampling with Optimized Time Steps", CVPR 2024;
public code ``step_optim.py`` of scxue/DM-NonUniform) choose the steps of a
multistep exponential integrator (UniPC / DPM-Solver++) by minimising a bound on
how far the solver's polynomial approximation of the data prediction carries the
solution from the exact one. In ``λ = −log σ`` (EDM; VP's half-logSNR) the exact
solution is ``x_{i+1}/σ_{i+1} = x_i/σ_i + ∫_{λ_i}^{λ_{i+1}} e^λ D dλ`` and step ``i`` of an
order-``k`` multistep method integrates the Lagrange polynomial through the last
``k`` data predictions, with weights ``J`` built from ``H0(h) = e^h − 1``,
``H1 = h e^h − H0``, ``H2 = h² e^h − 2H1``. Assuming the data prediction at level
``σ`` errs by ``ε(σ) = σ_vp²/α_vp = σ²/sqrt(1 + σ²)`` (the code's ``data_err_vec``), the
objective is

    Σ_{early steps} sqrt(Σ_m (J_m ε_m)²)  +  Σ_m |c_m|,   c_m = Σ_{later steps} J_{·,m} ε_m,

(errors of the first ``trunc`` steps treated as independent, later ones as
accumulating), minimised over the interior ``λ`` by SciPy's constrained
trust-region method with the steps kept in order. The first and last steps are
first order, the second and second-to-last at most second order (as UniPC's
warm-up and ``lower_order_final``).

Honest differences from the paper: the paper targets UniPC of order 3. Here the
order is the target solver's (``order=None``: 1 for Euler / stochastic DDIM,
2 for DPM-Solver++(2M) and its SDE form, 3 for the 3M solvers), the formula is
written in the EDM sigma (mapped through ``α = 1/sqrt(1 + σ²)``), and the start is
uniform in λ (log-linear). No data and no denoiser are used: the schedule depends
only on the range, the step count and the order.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from .. import schedules
from ..validate import AysError, check_range, check_sigmas, check_steps
from .result import OptimizeResult
from .task import Task, register

__all__ = ["DmnOptions", "dmn", "dmn_objective", "dmn_schedule", "step_order", "step_weights"]

Tensor = torch.Tensor

_SOLVER_ORDER = {"dpmpp_2m": 2, "dpmpp_2m_sde": 2, "dpmpp_3m": 3, "dpmpp_3m_sde": 3, "er_sde": 3}


def _h0(h: float) -> float:
    return math.expm1(h)


def _h1(h: float) -> float:
    return math.exp(h) * h - _h0(h)


def _h2(h: float) -> float:
    return math.exp(h) * h * h - 2.0 * _h1(h)


def step_weights(lam: np.ndarray, s: int, kp: int) -> list[tuple[int, float]]:
    """The weights ``J`` of step ``s`` (``λ_s → λ_{s+1}``) of an order-``kp`` multistep method.

    ``Σ_m J_m D_m = ∫_{λ_s}^{λ_{s+1}} e^λ P(λ) dλ`` with ``P`` the Lagrange polynomial through
    ``(λ_m, D_m)``, ``m = s − kp + 1 .. s``; returned as ``[(m, J_m)]`` (Xue et al.'s formulas).
    """
    hv = np.diff(lam)
    e = math.exp(lam[s])
    if kp == 1:
        return [(s, math.exp(lam[s + 1]) - e)]
    if kp == 2:
        m = s - 1
        j0 = -e * _h1(hv[s]) / hv[m]
        j1 = e * (_h1(hv[s]) + hv[m] * _h0(hv[s])) / hv[m]
        return [(m, j0), (m + 1, j1)]
    if kp == 3:
        m = s - 2
        h_a, h_b, h_c = hv[m], hv[m + 1], hv[m + 2]
        j0 = e * (_h2(h_c) + h_b * _h1(h_c)) / (h_a * (h_a + h_b))
        j1 = -e * (_h2(h_c) + (h_a + h_b) * _h1(h_c)) / (h_a * h_b)
        j2 = e * (_h2(h_c) + (2 * h_b + h_a) * _h1(h_c) + h_b * (h_a + h_b) * _h0(h_c)) / (h_b * (h_a + h_b))
        return [(m, j0), (m + 1, j1), (m + 2, j2)]
    raise AysError(f"order must be 1, 2 or 3, got {kp!r}")


def step_order(s: int, n: int, order: int) -> int:
    """Order used at step ``s`` of ``n``: warm-up at the start, lower order at the end (UniPC)."""
    return min(order, s + 1, n - s)


def dmn_objective(lam: np.ndarray, order: int = 3, trunc: int = 3) -> float:
    """Xue et al.'s objective for the full λ sequence ``lam`` (increasing: noisy → clean)."""
    n = len(lam) - 1
    sig = np.exp(-lam)  # EDM sigma
    err = sig * sig / np.sqrt(1.0 + sig * sig)  # σ_vp² / α_vp
    res = 0.0
    acc = np.zeros(n + 1)
    for s in range(n):
        kp = step_order(s, n, order)
        terms = step_weights(lam, s, kp)
        if kp == 1:
            res += abs(terms[0][1] * err[s])
        elif s >= trunc:
            for k, j in terms:
                acc[k] += err[k] * j
        else:
            res += math.sqrt(sum((err[k] * j) ** 2 for k, j in terms))
    return float(res + np.abs(acc).sum())


def dmn_schedule(steps: int, sigma_min: float, sigma_max: float, order: int = 3, trunc: int = 3) -> Tensor:
    """The DMN schedule (``steps + 1`` decreasing sigmas), by constrained trust-region minimisation."""
    from scipy.optimize import LinearConstraint, minimize  # scipy is a dependency of the metrics

    steps = check_steps(steps)
    lo, hi = check_range(sigma_min, sigma_max)
    if order not in (1, 2, 3):
        raise AysError(f"order must be 1, 2 or 3, got {order!r}")
    lam0, lam1 = -math.log(hi), -math.log(lo)
    init = np.linspace(lam0, lam1, steps + 1)
    if steps == 1:
        return check_sigmas(torch.tensor([hi, lo], dtype=torch.float64), allow_final_zero=False)
    # Steps at least 1e-4 of the range apart in λ, in order, inside the ends.
    gap = 1e-4 * (lam1 - lam0) / steps
    k = steps - 1
    a = np.zeros((steps, k))
    for i in range(k):
        a[i, i] = 1.0
        a[i + 1, i] = -1.0
    lb = np.full(steps, gap)
    lb[0], lb[-1] = lam0 + gap, -lam1 + gap
    cons = LinearConstraint(a, lb, np.full(steps, np.inf))

    def f(inner: np.ndarray) -> float:
        return dmn_objective(np.concatenate([[lam0], inner, [lam1]]), order, trunc)

    best = init[1:-1]
    try:
        with warnings.catch_warnings():  # SciPy's quasi-Newton notes on flat directions are not faults
            warnings.simplefilter("ignore")
            res = minimize(f, init[1:-1], method="trust-constr", constraints=[cons], options={"maxiter": 500})
        cand = np.asarray(res.x)
        full = np.concatenate([[lam0], cand, [lam1]])
        if np.all(np.diff(full) > 0) and np.isfinite(f(cand)) and f(cand) <= f(best):
            best = cand
    except (ValueError, np.linalg.LinAlgError):  # an ill-conditioned start: keep log-linear
        pass
    sig = torch.exp(-torch.as_tensor(np.concatenate([[lam0], best, [lam1]]), dtype=torch.float64))
    sig[0], sig[-1] = hi, lo
    return check_sigmas(sig, allow_final_zero=False)


@dataclass(frozen=True)
class DmnOptions:
    """Options of ``method="dmn"``."""

    order: int | None = None  #: interpolation order (None: the target solver's, see the module docstring)
    trunc: int = 3  #: steps whose errors count as independent (the code's ``truncNum``)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> DmnOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AysError(
                f"unknown option(s) for method 'dmn': {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        opt = cls(**options)
        if opt.order is not None and opt.order not in (1, 2, 3):
            raise AysError(f"order must be 1, 2, 3 or None, got {opt.order!r}")
        check_steps(opt.trunc, name="trunc", minimum=0)
        return opt


@register("dmn")
def dmn(task: Task, **options: Any) -> OptimizeResult:
    """DMN-style schedule (Xue et al., CVPR 2024): no model calls, from the noise range and the solver order.

    ``budget=`` is accepted and has nothing to size: the method makes no denoiser call (its plan is empty).
    """
    opt = DmnOptions.parse(options)
    task.meter.plan({})
    order = opt.order if opt.order is not None else _SOLVER_ORDER.get(task.solver, 1)
    sigmas = dmn_schedule(task.steps, task.sigma_min, task.sigma_max, order=order, trunc=opt.trunc)
    if task.space.is_discrete:
        try:
            sigmas = task.space.snap(sigmas, f"{task.steps}-step schedule")
        except AysError:  # steps collapsed onto one timestep: fall back to time-uniform
            tu = schedules.time_uniform(task.steps, task.sigma_min, task.sigma_max, noise=task.noise)
            sigmas = task.space.snap(tu)
    sigmas = check_sigmas(sigmas, allow_final_zero=False)
    settings = task.settings({**asdict(opt), "resolved_order": order})
    if task.progress is not None:
        task.progress({"event": "done", "klub": None, "calls": 0, "sigmas": sigmas.tolist()})
    return OptimizeResult(
        sigmas=sigmas, steps=task.steps, solver=task.solver, method=task.method,
        timesteps=task.space.timesteps(sigmas), history=[{"stage": "dmn", "order": order, "sigmas": sigmas.tolist()}],
        calls=0, settings=settings, model=task.model,
    )

"""Competing optimisers under ays.optimize: GITS-style (teacher-trajectory DP) and DMN-style (no model calls)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from ays import schedules
from ays.optimize import optimize
from ays.optimize.dmn import dmn_objective, dmn_schedule, step_order, step_weights
from ays.optimize.gits import teacher_costs
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser


def valid(s: torch.Tensor, steps: int, lo: float = 0.002, hi: float = 80.0) -> bool:
    return (s.dtype == torch.float64 and s.numel() == steps + 1 and bool(torch.all(s[1:] < s[:-1]))
            and float(s[0]) == hi and float(s[-1]) == lo)


# ------------------------------------------------------------- GITS
def test_gits_costs_match_the_gaussian_closed_form():
    # N(0, c²I): the exact ODE scales x by sqrt((c² + t²)/(c² + s²)); one DDIM step by
    # k_s + (t/s)(1 − k_s), k_s = c²/(c² + s²). The squared error is E||x_s||²·(difference)².
    c, d, n = 0.5, 2, 4096
    grid = schedules.karras(20, 0.002, 80.0)
    noise = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cost, calls = teacher_costs(gaussian_denoiser(c), noise, grid, refine=8, metric="l2sq")
    assert calls == n * 20 * 8
    m2 = float(noise.square().sum(1).mean())  # E||z||² of these draws
    size = grid.numel()
    for i, j in [(0, 5), (2, 10), (5, 15), (10, 20), (3, 19)]:
        s, t = float(grid[i]), float(grid[j])
        k = c * c / (c * c + s * s)
        r_ddim = k + (t / s) * (1 - k)
        r_exact = math.sqrt((c * c + t * t) / (c * c + s * s))
        var_s = 80.0**2 * (c * c + s * s) / (c * c + 80.0**2)
        expected = m2 * var_s * (r_ddim - r_exact) ** 2
        got = float(cost[size - 1 - j, size - 1 - i])
        assert got == pytest.approx(expected, rel=0.02), (i, j)


def test_gits_method_returns_a_valid_reproducible_schedule():
    den, data = gaussian_denoiser(0.5), gaussian_data(0.5, 2)
    kw = dict(steps=7, solver="dpmpp_2m", teacher_samples=64, grid=31)
    a = optimize(den, data, method="gits", seed=2, **kw)
    b = optimize(den, data, method="gits", seed=2, **kw)
    assert valid(a.sigmas, 7) and torch.equal(a.sigmas, b.sigmas)
    assert a.calls == 64 * 30 * 2
    # every level is a grid level (EDM rho=7 spacing)
    grid = schedules.karras(30, 0.002, 80.0)
    assert all(bool(torch.isclose(grid, v, rtol=1e-12).any()) for v in a.sigmas)
    with pytest.raises(AysError, match="unknown option"):
        optimize(den, data, method="gits", bogus=1)


# ------------------------------------------------------------- DMN
@pytest.mark.parametrize("kp", [1, 2, 3])
def test_dmn_weights_integrate_polynomials_exactly(kp):
    lam = np.array([-4.2, -2.5, -1.1, 0.3, 1.9])
    s = 3
    w = step_weights(lam, s, kp)
    for deg in range(kp):
        lhs = sum(j * lam[m] ** deg for m, j in w)
        rhs = integrate.quad(lambda x, deg=deg: math.exp(x) * x**deg, lam[s], lam[s + 1], epsrel=1e-13)[0]
        assert lhs == pytest.approx(rhs, rel=1e-10)


def test_dmn_objective_first_order_closed_form_and_optimum():
    sig = schedules.loglinear(6, 0.002, 80.0)
    lam = (-sig.log()).numpy()
    direct = sum((1 / float(sig[i + 1]) - 1 / float(sig[i])) * float(sig[i]) ** 2 / math.sqrt(1 + float(sig[i]) ** 2)
                 for i in range(6))
    assert dmn_objective(lam, order=1) == pytest.approx(direct, rel=1e-12)
    assert [step_order(s, 8, 3) for s in range(8)] == [1, 2, 3, 3, 3, 3, 2, 1]
    for order in (1, 2, 3):
        s = dmn_schedule(6, 0.002, 80.0, order=order)
        assert valid(s, 6)
        obj = dmn_objective((-s.log()).numpy(), order=order)
        assert obj <= dmn_objective(lam, order=order) + 1e-12
        # a local optimum: moving one level a little does not lower the objective much
        rng = np.random.default_rng(order)
        base = (-s.log()).numpy()
        for _ in range(20):
            trial = base.copy()
            i = rng.integers(1, 6)
            trial[i] += rng.normal() * 0.01 * (trial[i + 1] - trial[i - 1])
            assert dmn_objective(trial, order=order) >= obj * (1 - 1e-3)


def test_dmn_method_uses_no_model_calls_and_the_solver_order():
    def never(x, s):
        raise AssertionError("DMN must not call the model")

    a = optimize(never, gaussian_data(0.5, 2), method="dmn", steps=6, solver="dpmpp_2m")
    b = optimize(never, gaussian_data(0.5, 2), method="dmn", steps=6, solver="euler")
    assert valid(a.sigmas, 6) and valid(b.sigmas, 6) and a.calls == 0
    assert a.history[0]["order"] == 2 and b.history[0]["order"] == 1
    assert torch.equal(a.sigmas, optimize(never, gaussian_data(0.5, 2), method="dmn", steps=6,
                                          solver="dpmpp_2m").sigmas)
    assert torch.equal(a.sigmas, dmn_schedule(6, 0.002, 80.0, order=2))
    with pytest.raises(AysError, match="order"):
        optimize(never, gaussian_data(0.5, 2), method="dmn", order=4)

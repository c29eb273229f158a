"""Exact output laws on Gaussian data: closed forms, Monte Carlo, and the KL-optimal schedule (Thm 3.1).

Closed forms used as oracles (data N(0, c²), ideal denoiser D = c²/(c² + s²) x):
- one Euler/DDIM step multiplies x by (c² + s s') / (c² + s²); with s = c tan(theta) this is
  cos(theta - theta') cos(theta) / cos(theta'), so a schedule's output variance is the exact
  ODE's times prod_i cos²(theta_i - theta_{i+1}). For fixed end points the product is largest,
  and the KL to the target smallest, when the theta_i are evenly spaced: the tan schedule of
  AYS Thm 3.1. It holds with the end points fixed - a schedule ending at sigma_min compared with
  the noised data N(0, c² + sigma_min²), or a schedule ending in 0 (final denoise) compared with
  the data, whose optimum is then evenly spaced theta down to theta = 0, not ays' kl_optimal
  (which ends at sigma_min) with its last value set to 0.
- one stochastic-DDIM step: V' = (a + (1 - a) k)² V + s'² (1 - a), a = s'²/s², k = c²/(c² + s²).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import ays
from ays import analysis, schedules, solvers
from ays.validate import AysError

C = 0.5


def euler_closed_form(sigmas: torch.Tensor, c: float) -> float:
    theta = torch.atan(sigmas / c)
    shrink = torch.prod(torch.cos(theta[:-1] - theta[1:]) ** 2)
    return analysis.exact_ode_variance(sigmas, c) * float(shrink)


def test_gaussian_denoiser_is_the_posterior_mean():
    den = analysis.gaussian_denoiser(2.0)
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 1.0, 3.0])
    expected = x * (4.0 / (4.0 + sigma**2)).reshape(3, 1, 1)
    torch.testing.assert_close(den(x, sigma), expected)


@pytest.mark.parametrize("final_zero", [False, True])
def test_euler_variance_is_the_tan_product(final_zero):
    s = schedules.karras(9, 0.01, 40.0, rho=5.0)
    if final_zero:
        s = schedules.to_sampling(s)
    v = analysis.output_variance("euler", s, C)
    assert v == pytest.approx(euler_closed_form(s, C), rel=1e-12)
    assert v < analysis.exact_ode_variance(s, C)


def test_stochastic_ddim_variance_follows_its_recursion():
    s = schedules.loglinear(12, 0.02, 30.0).tolist()
    var = s[0] ** 2
    for a_s, b_s in itertools.pairwise(s):
        a, k = (b_s / a_s) ** 2, C * C / (C * C + a_s * a_s)
        var = (a + (1 - a) * k) ** 2 * var + b_s * b_s * (1 - a)
    assert analysis.output_variance("stochastic_ddim", s, C) == pytest.approx(var, rel=1e-12)
    # one coefficient per draw: the start plus one draw per step
    assert analysis.output_coefficients("stochastic_ddim", s, C).numel() == len(s)


def test_init_std_and_targets():
    s = schedules.loglinear(6, 0.1, 5.0)
    v1 = analysis.output_variance("heun", s, C, init_std=1.0)
    v2 = analysis.output_variance("heun", s, C, init_std=2.0)
    assert v2 == pytest.approx(4 * v1, rel=1e-12)  # a deterministic linear map
    assert analysis.target_variance(s, C) == pytest.approx(C * C + 0.01)
    assert analysis.target_variance(schedules.to_sampling(s), C) == pytest.approx(C * C)
    assert analysis.exact_ode_variance(s, C, init_std=math.hypot(C, 5.0)) == pytest.approx(C * C + 0.01)


def test_kl_directions_and_zero():
    assert analysis.gaussian_kl(2.0, 2.0) == 0.0
    v, w = 1.3, 0.7
    assert analysis.gaussian_kl(v, w) == pytest.approx(0.5 * (v / w - 1 - math.log(v / w)))
    s = schedules.karras(5, 0.05, 10.0)
    out = analysis.output_variance("euler", s, C)
    assert analysis.output_kl("euler", s, C) == pytest.approx(analysis.gaussian_kl(out, C * C + 0.0025))
    assert analysis.output_kl("euler", s, C, reverse=True) == pytest.approx(analysis.gaussian_kl(C * C + 0.0025, out))
    # point-mass data: every solver is exact, the KL vanishes
    assert analysis.output_kl("dpmpp_2m_sde", s, 0.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(AysError):
        analysis.gaussian_kl(0.0, 1.0)


def test_unknown_solver_or_option_is_refused():
    s = [10.0, 1.0, 0.1]
    with pytest.raises(AysError, match="unknown solver"):
        analysis.output_variance("ddpm", s, C)
    with pytest.raises(AysError, match="'eta'"):
        analysis.output_variance("euler", s, C, eta=1.0)
    assert analysis.output_variance(solvers.euler, s, C) == analysis.output_variance("euler", s, C)


def test_a_solver_whose_draws_vary_is_detected():
    calls = 0

    def erratic(denoiser, x, sigmas, *, noise_sampler, **_):
        nonlocal calls
        calls += 1
        for _ in range(calls):  # one draw more on every run
            x = x + noise_sampler(1.0, 0.5)
        return x

    with pytest.raises(AysError, match="counting pass"):
        analysis.output_variance(erratic, [2.0, 1.0], C)


# --- Monte Carlo against the exact analysis ---------------------------------------------------


@pytest.mark.parametrize("name", solvers.names())
@pytest.mark.parametrize("final_zero", [True, False])
def test_analysis_matches_monte_carlo(name, final_zero):
    """200k scalars through ays.sample: the sample variance within 4 standard errors of the
    exact variance (E[x²] estimator, standard error v sqrt(2/N))."""
    s = schedules.karras(8, 0.03, 15.0) if final_zero else schedules.loglinear(6, 0.1, 15.0)
    if final_zero:
        s = schedules.to_sampling(s)
    v = analysis.output_variance(name, s, C)
    g = torch.Generator().manual_seed(1234)
    n = 200_000
    noise = torch.randn(n, 1, generator=g)
    out = ays.sample(analysis.gaussian_denoiser(C), noise, s, solver=name, generator=g)
    est = float((out * out).mean())
    assert abs(est - v) < 4 * v * math.sqrt(2 / n), (est, v)
    assert abs(float(out.mean())) < 4 * math.sqrt(v / n)


# --- AYS Thm 3.1: the KL-optimal schedule of Euler/DDIM on Gaussian data ----------------------

LO, HI = 0.002, 80.0


def _heuristic(name: str, n: int) -> torch.Tensor:
    return schedules.build(name, n, LO, HI, **({"c": C} if name == "kl_optimal" else {}))


@pytest.mark.parametrize("n", [5, 10, 20])
@pytest.mark.parametrize("reverse", [False, True])
def test_kl_optimal_beats_the_heuristics_for_euler(n, reverse):
    """Schedules ending at sigma_min (end points fixed, as in the paper): the output of Euler/DDIM
    compared with the noised data N(0, c² + sigma_min²)."""
    kl = {name: analysis.output_kl("euler", _heuristic(name, n), C, reverse=reverse)
          for name in ("kl_optimal", "karras", "loglinear", "time_uniform")}
    best = kl.pop("kl_optimal")
    assert all(best < other for other in kl.values()), (best, kl)


def _perturbations(s: torch.Tensor, delta: float):
    for i in range(1, s.numel() - 1):
        for sign in (-1.0, 1.0):
            p = s.clone()
            p[i] = p[i] * math.exp(sign * delta)
            yield p


@pytest.mark.parametrize("n", [5, 10])
def test_tan_schedule_is_a_local_minimum(n):
    s = schedules.kl_optimal(n, LO, HI, c=C)
    best = analysis.output_kl("euler", s, C)
    for p in _perturbations(s, 0.02):
        assert analysis.output_kl("euler", p, C) > best


@pytest.mark.parametrize("n", [5, 10])
def test_with_a_final_denoise_the_optimum_is_even_in_theta_down_to_zero(n):
    """Ending in 0, the same argument puts theta_n = 0: evenly spaced theta from atan(sigma_max/c)
    to 0 is the local minimum, and it beats ays' kl_optimal with its last value set to 0."""
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    s = C * torch.tan((1 - u) * math.atan(HI / C))
    s[-1] = 0.0
    best = analysis.output_kl("euler", s, C)
    for p in _perturbations(s, 0.02):
        assert analysis.output_kl("euler", p, C) > best
    assert best < analysis.output_kl("euler", schedules.to_sampling(schedules.kl_optimal(n, LO, HI, c=C)), C)

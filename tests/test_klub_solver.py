"""The solver-aware KLUB: the solver's step is the frozen-drift step it claims, the bound reduces to the
paper's where it must, and it matches the Gaussian closed form (and a direct covariance computation)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from ays import solvers
from ays.klub import estimate_schedule, interval_klub
from ays.klub import gaussian_klub as gaussian_klub_ddim
from ays.klub import solver as KS
from ays.klub import table as T
from ays.optimize import dp as D
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser


def nonlinear_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape(-1, 1)
    return torch.tanh(x) / (1 + s) + 0.1 * s * x.flip(1)


# ------------------------------------------------------------- the frozen drift is the solver's step
@pytest.mark.parametrize("solver,options", [
    ("dpmpp_2m", {}), ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_2m_sde", {"eta": 0.5, "solver_type": "heun"}),
])
def test_the_2m_step_is_the_frozen_step_with_the_extrapolated_denoiser(solver, options):
    p, b, a = 3.0, 1.1, 0.45
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * p
    zs = [torch.randn(5, 2, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in (1, 2)]
    it = iter(zs)
    seen = []
    x = solvers.get(solver)(nonlinear_denoiser, x0, torch.tensor([p, b, a], dtype=torch.float64),
                            noise_sampler=lambda s, t: next(it), callback=seen.append, **options)
    d_p, d_b = seen[0]["denoised"], seen[1]["denoised"]
    x_b = seen[1]["x"]
    bet = float(KS.beta(solver, a, b, p, **options))
    d_hat = d_b + bet * (d_b - d_p)
    eta = options.get("eta", 1.0) if solver == "dpmpp_2m_sde" else 0.0
    h = math.log(b / a)
    ratio = math.exp(-(1 + eta) * h)
    manual = d_hat + ratio * (x_b - d_hat)
    if eta > 0:
        manual = manual + zs[1] * a * math.sqrt(-math.expm1(-2 * eta * h))
    assert torch.allclose(x, manual, rtol=1e-12, atol=1e-12)


def test_beta_values():
    a, b, p = 0.5, 1.0, 3.0
    h, h1 = math.log(b / a), math.log(p / b)
    assert float(KS.beta("dpmpp_2m_sde", a, b, p)) == pytest.approx(h / (2 * h1), rel=1e-14)
    assert float(KS.beta("dpmpp_2m", a, b, p)) == pytest.approx(h / (2 * h1), rel=1e-14)
    for s in ("stochastic_ddim", "euler", "euler_ancestral", "heun", "dpmpp_3m_sde"):
        assert float(KS.beta(s, a, b, p)) == 0.0
    # heun variant -> midpoint as the step shrinks (φ₂(H)/(1 − e^{−H}) → 1/2)
    tiny = float(KS.beta("dpmpp_2m_sde", 1.0 - 1e-7, 1.0, 3.0, solver_type="heun"))
    assert tiny == pytest.approx(float(KS.beta("dpmpp_2m_sde", 1.0 - 1e-7, 1.0, 3.0)), rel=1e-6)
    with pytest.raises(AysError):
        KS.beta("dpmpp_2m", 1.0, 0.5, 3.0)


def test_schedule_betas_first_and_final_steps_are_first_order():
    s = torch.tensor([80.0, 5.0, 1.0, 0.2, 0.002], dtype=torch.float64)
    bet = KS.schedule_betas("dpmpp_2m_sde", s)
    assert bet[0] == 0 and bet[-1] == 0 and torch.all(bet[1:-1] > 0)
    assert KS.schedule_betas("dpmpp_2m_sde", s, final_first_order=False)[-1] > 0
    assert torch.all(KS.schedule_betas("stochastic_ddim", s) == 0)


# ------------------------------------------------------------- reductions to the paper's bound
def test_zero_beta_is_exactly_the_paper_estimator():
    draws = KS.SolverDraws.create(gaussian_data(0.7, 3), 512, torch.Generator().manual_seed(3))
    lo = torch.tensor([0.01, 0.3, 2.0], dtype=torch.float64)
    hi = torch.tensor([0.05, 1.5, 40.0], dtype=torch.float64)
    den = gaussian_denoiser(0.7)
    vals, calls = KS.interval_klub_extrapolated(den, draws, lo, hi, hi * 2, torch.zeros(3))
    ref = interval_klub(den, draws.base, lo, hi)
    assert calls == ref.calls
    assert torch.allclose(vals, ref.values, rtol=1e-12, atol=0)


def test_frozen_solvers_get_the_paper_bound():
    s = torch.tensor([80.0, 3.0, 0.7, 0.1, 0.002], dtype=torch.float64)
    draws = KS.SolverDraws.create(gaussian_data(0.5, 2), 256, torch.Generator().manual_seed(4))
    den = gaussian_denoiser(0.5)
    ref = estimate_schedule(den, draws.base, s)
    for solver in ("stochastic_ddim", "euler"):
        est = KS.klub(den, None, s, solver=solver, draws=draws)
        assert torch.allclose(est.per_interval, ref.per_interval, rtol=1e-12)
    # for 2M the first and the final interval are the paper's too
    est = KS.klub(den, None, s, solver="dpmpp_2m_sde", draws=draws)
    assert est.per_interval[0] == pytest.approx(float(ref.per_interval[0]), rel=1e-12)
    assert est.per_interval[-1] == pytest.approx(float(ref.per_interval[-1]), rel=1e-12)
    assert torch.all(est.per_interval[1:-1] != ref.per_interval[1:-1])


def test_equal_outputs_give_the_paper_bound():
    # A denoiser that returns the data mean (0) above sigma = 1: D_b = D_p for b, p >= 1.
    def den(x, sigma):
        s = sigma.reshape(-1, 1)
        return torch.where(s >= 1.0, torch.zeros_like(x), 0.25 / (0.25 + s * s) * x)

    s = torch.tensor([80.0, 20.0, 4.0, 1.5, 0.5, 0.1, 0.002], dtype=torch.float64)
    draws = KS.SolverDraws.create(gaussian_data(0.5, 2), 256, torch.Generator().manual_seed(5))
    ref = estimate_schedule(den, draws.base, s)
    est = KS.klub(den, None, s, solver="dpmpp_2m_sde", draws=draws)
    # intervals 1..3 have upper level b and previous p both >= 1; interval 4 (b = 0.5) extrapolates
    assert torch.allclose(est.per_interval[:4], ref.per_interval[:4], rtol=1e-12)
    assert est.per_interval[4] != ref.per_interval[4]


# ------------------------------------------------------------- Gaussian closed form
def direct_integrand(t: float, a: float, b: float, p: float, beta: float, c: float, dim: int) -> float:
    """E||D_t − (1+β)D_b + βD_p||² from the joint covariance Cov(x_u, x_v) = c² + min(u, v)²."""
    lv = [t, b, p]
    coef = [c * c / (c * c + t * t), -(1 + beta) * c * c / (c * c + b * b), beta * c * c / (c * c + p * p)]
    var = sum(coef[i] * coef[j] * (c * c + min(lv[i], lv[j]) ** 2) for i in range(3) for j in range(3))
    return dim * var * t**-3


def test_closed_form_against_direct_covariance_integration():
    c, dim = 0.6, 3
    s = torch.tensor([20.0, 4.0, 1.3, 0.5, 0.1, 0.01], dtype=torch.float64)
    got = KS.gaussian_klub(s, c, dim, solver="dpmpp_2m_sde", per_interval=True)
    bet = KS.schedule_betas("dpmpp_2m_sde", s)
    for i in range(5):
        b, a = float(s[i]), float(s[i + 1])
        p = float(s[i - 1]) if i > 0 else 2 * b
        beta_i = float(bet[i])

        def f(y, a=a, b=b, p=p, beta_i=beta_i):
            return direct_integrand(math.exp(y), a, b, p, beta_i, c, dim) * math.exp(y)

        val, _ = integrate.quad(f, math.log(a), math.log(b), epsabs=0.0, epsrel=1e-11, limit=400)
        assert float(got[i]) == pytest.approx(val, rel=1e-8)


def test_monte_carlo_matches_the_gaussian_closed_form():
    c, dim = 0.5, 2
    s = torch.tensor([80.0, 2.0, 0.6, 0.2, 0.05, 0.002], dtype=torch.float64)
    est = KS.klub(gaussian_denoiser(c), gaussian_data(c, dim), s, solver="dpmpp_2m_sde", samples=8192,
                  generator=torch.Generator().manual_seed(6))
    exact = KS.gaussian_klub(s, c, dim, solver="dpmpp_2m_sde", per_interval=True)
    z = (est.per_interval - exact) / est.stderr
    assert torch.all(z.abs() < 4.5), z
    assert abs(est.total - float(exact.sum())) < 4.5 * est.total_stderr
    # the extrapolation only adds (martingale property): the bound exceeds the paper's
    assert float(exact.sum()) > float(gaussian_klub_ddim(s, c, dim))


def test_solver_table_objective_beats_the_ddim_schedule_for_the_2m_bound():
    c, dim = 0.5, 2
    grid = T.log_grid(0.002, 80.0, 121)
    m = c**4 * dim * (1 / (grid[:, None] ** 2 + c * c) - 1 / (grid[None, :] ** 2 + c * c)).abs()
    tab = T.KlubTable(grid, m * 1000.0, chains=1000)
    s_2m, cost = D.schedules_from_table(tab, 8, objective="solver", solver="dpmpp_2m_sde", c=c)[8]
    s_dd, _ = D.schedules_from_table(tab, 8, objective="ddim", c=c)[8]
    exact_2m = float(KS.gaussian_klub(s_2m, c, dim, solver="dpmpp_2m_sde"))
    assert cost == pytest.approx(exact_2m, rel=1e-9)  # exact quadrature: c is the data scale
    assert exact_2m < float(KS.gaussian_klub(s_dd, c, dim, solver="dpmpp_2m_sde"))
    # and it is a local minimum of the closed form: nudging any interior level does not help
    for i in range(1, 8):
        for f in (0.9, 1.1):
            t = s_2m.clone()
            t[i] *= f
            if torch.all(t[1:] < t[:-1]):
                # within the grid's resolution
                assert float(KS.gaussian_klub(t, c, dim, solver="dpmpp_2m_sde")) > exact_2m * (1 - 2e-3)


def test_bad_input():
    with pytest.raises(AysError, match="unknown solver option"):
        KS.klub(gaussian_denoiser(0.5), gaussian_data(0.5, 2), [1.0, 0.1], samples=8, bogus=1)
    with pytest.raises(AysError, match="previous > upper"):
        draws = KS.SolverDraws.create(gaussian_data(0.5, 2), 8, torch.Generator().manual_seed(0))
        KS.interval_klub_extrapolated(gaussian_denoiser(0.5), draws, [0.1], [1.0], [0.5], [0.3])

"""Solvers and their registry: convergence orders, exactness, call counts, noise, reproducibility.

The mathematics is checked on Gaussian data N(0, c²), where the ideal denoiser
is linear and everything is known in closed form: the probability-flow ODE
solution x(s) = x(s_0) sqrt((c² + s²) / (c² + s_0²)), the marginal variance
c² + s², and (through ays.analysis) the exact output variance of every solver.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import ays
from ays import analysis, schedules, solvers
from ays.solvers._common import phi_functions
from ays.validate import AysError, ScheduleError

C = 0.5
LO, HI = 0.05, 10.0
ALL = solvers.names()
STOCHASTIC = [n for n in ALL if solvers.info(n).stochastic]
DETERMINISTIC = [n for n in ALL if not solvers.info(n).stochastic]


def smooth_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A nonlinear, sigma-dependent stand-in for a network."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x) * (1.0 / (1.0 + s * s)) + 0.1 * torch.sin(x) * s / (1.0 + s)


def fitted_slope(steps: list[int], errors: list[float]) -> float:
    """Least-squares slope of log|error| against log(step size), step size ∝ 1/n."""
    return float(np.polyfit(-np.log(steps), np.log(np.abs(errors)), 1)[0])


# --- the registry ---------------------------------------------------------------------------


def test_registry_holds_the_design_names():
    assert set(ALL) == {
        "euler", "heun", "dpmpp_2m", "dpmpp_3m", "stochastic_ddim", "euler_ancestral",
        "dpmpp_2m_sde", "dpmpp_3m_sde", "er_sde", "edm_stochastic",
    }
    assert ALL == sorted(ALL)
    assert ays.solvers is solvers


@pytest.mark.parametrize("name", ALL)
def test_info_describes_the_solver(name):
    entry = solvers.info(name)
    assert isinstance(entry, solvers.SolverInfo)
    assert entry.name == name and entry.fn is solvers.get(name) is getattr(solvers, name)
    assert entry.order in (1, 2) and entry.calls_per_step in (1, 2) and entry.final_calls == 1
    assert isinstance(entry.stochastic, bool) and entry.description
    assert not set(entry.options) & {"generator", "callback", "noise_sampler"}


def test_solver_options_come_from_the_signatures():
    assert dict(solvers.info("dpmpp_2m_sde").options) == {"eta": 1.0, "s_noise": 1.0, "solver_type": "midpoint"}
    assert dict(solvers.info("er_sde").options) == {"order": 3, "s_noise": 1.0, "noise_scaler": None}
    assert set(solvers.info("edm_stochastic").options) == {"S_churn", "S_min", "S_max", "S_noise"}
    assert dict(solvers.info("euler").options) == {}


def test_unknown_solver_lists_the_names():
    with pytest.raises(AysError) as err:
        solvers.get("ddpm")
    assert "'ddpm'" in str(err.value)
    assert all(n in str(err.value) for n in ALL)
    with pytest.raises(AysError):
        solvers.info("Euler")


def test_unknown_option_is_named():
    with pytest.raises(AysError, match="'eta'"):
        solvers.check_options("euler", {"eta": 0.5})
    with pytest.raises(AysError, match=r"'rho'.*eta, s_noise"):
        solvers.check_options("euler_ancestral", {"rho": 1, "eta": 0.5})
    assert solvers.check_options("er_sde", {"order": 2}) == {"order": 2}


# --- convergence orders on the Gaussian problem -----------------------------------------------

# (solver, options, declared order): the defaults of every registered solver, plus option
# variants whose order differs or must be kept.
ORDER_CASES = [(n, {}, solvers.info(n).order) for n in ALL] + [
    ("er_sde", {"order": 1}, 1),
    ("er_sde", {"order": 2}, 2),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, 2),
    ("dpmpp_2m_sde", {"eta": 0.5}, 2),
    ("euler_ancestral", {"eta": 0.5}, 1),
]


def _order_steps(name: str) -> list[int]:
    # EDM's churn gamma = min(S_churn / n, sqrt(2) - 1) stops growing the step only for
    # n > S_churn / (sqrt(2) - 1) ~ 97: the asymptotic regime starts there.
    return [128, 256, 512] if name == "edm_stochastic" else [16, 32, 64, 128]


@pytest.mark.parametrize(("name", "options", "order"), ORDER_CASES, ids=lambda v: str(v) if v != {} else "")
def test_empirical_convergence_order(name, options, order):
    """Deterministic: error of the final state vs the exact ODE solution. Stochastic (weak
    order): error of the exact output variance vs the true marginal c² + s_min², started on
    the true marginal at s_max. Slope of log|error| against log step within 0.3 of the order."""
    steps = _order_steps(name)
    errors = []
    for n in steps:
        s = schedules.loglinear(n, LO, HI)
        if solvers.info(name).stochastic:
            v = analysis.output_variance(name, s, C, init_std=math.hypot(C, HI), **options)
            errors.append(v - (C * C + LO * LO))
        else:
            coef = analysis.output_coefficients(name, s, C, **options)
            assert coef.numel() == 1  # a deterministic solver draws no noise
            errors.append(float(coef[0]) - HI * math.sqrt((C * C + LO * LO) / (C * C + HI * HI)))
    slope = fitted_slope(steps, errors)
    assert abs(slope - order) < 0.3, (name, options, slope, errors)
    assert all(abs(e) > 0 for e in errors)


def test_dpmpp_3m_beats_2m_although_both_are_second_order():
    for n in (32, 64, 128):
        s = schedules.loglinear(n, LO, HI)
        exact = HI * math.sqrt((C * C + LO * LO) / (C * C + HI * HI))
        e2 = abs(float(analysis.output_coefficients("dpmpp_2m", s, C)[0]) - exact)
        e3 = abs(float(analysis.output_coefficients("dpmpp_3m", s, C)[0]) - exact)
        assert e3 < 0.5 * e2


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_solvers_keep_the_marginal_variance(name):
    """Started on the true marginal, the exact output variance tends to c² + s_min²."""
    first_order = solvers.info(name).order == 1
    s = schedules.loglinear(4096 if first_order else 512, LO, HI)
    v = analysis.output_variance(name, s, C, init_std=math.hypot(C, HI))
    assert v == pytest.approx(C * C + LO * LO, rel=1.5e-3 if first_order else 5e-4)


@pytest.mark.parametrize("name", ALL)
def test_every_solver_is_exact_when_the_denoiser_is_constant(name):
    """Data on one point (c = 0): D is constant, the frozen-denoiser steps are exact, and
    every solver maps N(0, s_0²) to exactly N(0, s_min²) on any schedule."""
    s = schedules.karras(7, LO, HI)
    assert analysis.output_variance(name, s, 0.0) == pytest.approx(LO * LO, rel=1e-12)


def test_stochastic_ddim_loses_variance_by_the_closed_form():
    """One stochastic-DDIM step from the true marginal at s to s': the variance falls short of
    c² + s'² by exactly c² (s² - s'²)² / (s² (c² + s²)). So it is exact only for c = 0."""
    for s, s_next in [(10.0, 3.0), (1.0, 0.5), (0.3, 0.29)]:
        v = analysis.output_variance("stochastic_ddim", [s, s_next], C, init_std=math.hypot(C, s))
        deficit = C * C * (s * s - s_next * s_next) ** 2 / (s * s * (C * C + s * s))
        assert v == pytest.approx(C * C + s_next * s_next - deficit, rel=1e-13)
        assert deficit > 1e-6


# --- the shared helpers -----------------------------------------------------------------------


@pytest.mark.parametrize("H", [1e-7, 1e-4, 0.0099, 0.0101, 0.3, 4.0])
def test_phi_functions_are_the_exponential_integrals(H):
    c1, phi2, phi3 = phi_functions(H)
    w1 = integrate.quad(lambda u: math.exp(-(H - u)), 0, H, epsabs=0, epsrel=1e-13)[0]
    w2 = integrate.quad(lambda u: math.exp(-(H - u)) * u, 0, H, epsabs=0, epsrel=1e-13)[0]
    w3 = integrate.quad(lambda u: math.exp(-(H - u)) * u * u / 2, 0, H, epsabs=0, epsrel=1e-13)[0]
    assert c1 == pytest.approx(w1, rel=1e-12)
    assert phi2 == pytest.approx(w2 / H, rel=1e-11)
    # k-diffusion's phi3 = phi2/H - 1/2 is -(1/H²) int e^{-(H-u)} u²/2 du
    assert phi3 == pytest.approx(-w3 / H**2, rel=1e-9)


# --- denoiser calls ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("final_zero", [True, False])
def test_denoiser_calls_match_the_metadata(name, final_zero):
    s = schedules.karras(6, 0.03, 20.0)
    if final_zero:
        s = schedules.to_sampling(s)
    calls = 0

    def counted(x, sigma):
        nonlocal calls
        calls += 1
        return smooth_denoiser(x, sigma)

    g = torch.Generator().manual_seed(0)
    solvers.get(name)(counted, torch.randn(3, 2, generator=g) * 20.0, s, generator=g)
    entry = solvers.info(name)
    expected = entry.calls_per_step * 6 - (entry.calls_per_step - entry.final_calls) * final_zero
    assert calls == expected == solvers.count_calls(name, s)


def test_count_calls_heun_and_validation():
    assert solvers.count_calls("heun", [10.0, 1.0, 0.0]) == 3
    assert solvers.count_calls("heun", [10.0, 1.0, 0.1]) == 4
    assert solvers.count_calls("dpmpp_2m", [10.0, 1.0, 0.0]) == 2
    with pytest.raises(ScheduleError):
        solvers.count_calls("euler", [1.0, 2.0])


# --- the calling convention -------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigma_reaches_the_denoiser_as_a_batch_tensor_and_dtype_is_kept(name, dtype):
    seen = []

    def checking(x, sigma):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype == dtype and sigma.device == x.device
        assert torch.all(sigma == sigma[0]) and sigma[0] > 0
        seen.append(float(sigma[0]))
        return smooth_denoiser(x, sigma)

    g = torch.Generator().manual_seed(1)
    s = schedules.to_sampling(schedules.loglinear(5, 0.05, 10.0))
    out = solvers.get(name)(checking, torch.randn(4, 3, 2, generator=g, dtype=dtype) * 10, s, generator=g)
    assert out.dtype == dtype and out.shape == (4, 3, 2) and torch.isfinite(out).all()
    assert seen[0] >= 10.0 * (1 - 1e-6)


@pytest.mark.parametrize("name", ALL)
def test_callback_gets_the_k_diffusion_dict(name):
    s = schedules.to_sampling(schedules.loglinear(5, 0.05, 10.0))
    events = []
    g = torch.Generator().manual_seed(2)
    out = solvers.get(name)(smooth_denoiser, torch.randn(2, 3, generator=g) * 10, s, generator=g,
                            callback=events.append)
    assert [e["i"] for e in events] == list(range(5))
    for e in events:
        assert set(e) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(e["sigma"]) == pytest.approx(float(s[e["i"]]))
        assert float(e["sigma_hat"]) >= float(e["sigma"])
        assert e["denoised"].shape == e["x"].shape == (2, 3)
    # the last step into 0 returns the denoised value (k-diffusion's convention)
    torch.testing.assert_close(out, events[-1]["denoised"], rtol=1e-6, atol=1e-6)


# --- randomness -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STOCHASTIC)
def test_generator_makes_stochastic_solvers_reproducible(name):
    s = schedules.to_sampling(schedules.karras(8, 0.02, 20.0))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(9)) * 20.0
    fn = solvers.get(name)
    a = fn(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(3))
    b = fn(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(3))
    c = fn(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_solvers_ignore_the_generator(name):
    s = schedules.to_sampling(schedules.karras(8, 0.02, 20.0))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(9)) * 20.0
    fn = solvers.get(name)
    a = fn(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, fn(smooth_denoiser, x, s))


@pytest.mark.parametrize("name", STOCHASTIC)
def test_all_noise_goes_through_the_noise_sampler(name):
    s = schedules.to_sampling(schedules.karras(8, 0.02, 20.0))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(9)) * 20.0
    fn = solvers.get(name)
    # 1) a zero noise sampler removes every trace of the generator
    zero = lambda sigma, sigma_next: torch.zeros_like(x)
    a = fn(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(1), noise_sampler=zero)
    b = fn(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(2), noise_sampler=zero)
    assert torch.equal(a, b)
    # 2) the default draws are torch.randn(x.shape, generator): replaying them reproduces the run
    g = torch.Generator().manual_seed(5)
    replay = lambda sigma, sigma_next: torch.randn(x.shape, generator=g)
    c = fn(smooth_denoiser, x, s, noise_sampler=replay)
    d = fn(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(5))
    assert torch.equal(c, d)
    # 3) the sampler is asked for the noise of a step (sigma_i, sigma_{i+1}) of the schedule; only
    #    EDM's churn, which happens before the step, may draw on a step into 0
    asked = []

    def recording(sigma, sigma_next):
        asked.append((sigma, sigma_next))
        return torch.zeros_like(x)

    fn(smooth_denoiser, x, s, noise_sampler=recording)
    steps = list(zip(s.tolist(), s.tolist()[1:]))
    assert asked and all(pair in steps for pair in asked)
    if name != "edm_stochastic":
        assert all(sigma_next > 0 for _, sigma_next in asked)


def test_noise_sampler_of_the_wrong_shape_is_refused():
    with pytest.raises(AysError, match="noise_sampler returned"):
        solvers.stochastic_ddim(smooth_denoiser, torch.ones(2, 3), [2.0, 1.0, 0.5],
                                noise_sampler=lambda a, b: torch.zeros(3))


# --- identities between solvers ---------------------------------------------------------------


def _run(name, seed=0, **options):
    s = schedules.to_sampling(schedules.karras(9, 0.02, 30.0))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * 30.0
    return solvers.get(name)(smooth_denoiser, x, s, generator=torch.Generator().manual_seed(seed), **options)


def test_identities_between_solvers():
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # DDIM(eta = 1) written as Euler-to-sigma_down plus noise is stochastic DDIM
    close(_run("euler_ancestral", eta=1.0), _run("stochastic_ddim"))
    close(_run("euler_ancestral", eta=0.0), _run("euler"))
    # the deterministic DPM-Solver++ multistep solvers are the SDE ones at eta = 0
    close(_run("dpmpp_2m_sde", eta=0.0), _run("dpmpp_2m"))
    close(_run("dpmpp_3m_sde", eta=0.0), _run("dpmpp_3m"))
    # EDM Algorithm 2 without churn is Algorithm 1
    close(_run("edm_stochastic", S_churn=0.0), _run("heun"))
    # ER-SDE: noise scale phi(l) = l is the ODE (DDIM), phi(l) = l² the reverse SDE (stochastic DDIM)
    close(_run("er_sde", order=1, noise_scaler=lambda lam: lam), _run("euler"))
    close(_run("er_sde", order=1, noise_scaler=lambda lam: lam * lam), _run("stochastic_ddim"))


def test_options_change_what_they_should():
    base = _run("dpmpp_2m_sde")
    assert not torch.allclose(base, _run("dpmpp_2m_sde", solver_type="heun"))
    assert not torch.allclose(base, _run("dpmpp_2m_sde", eta=0.5))
    assert not torch.allclose(_run("er_sde", order=2), _run("er_sde", order=3))
    assert not torch.allclose(_run("edm_stochastic"), _run("edm_stochastic", S_noise=1.003))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("euler_ancestral", {"eta": -0.1}, "eta"),
        ("dpmpp_2m_sde", {"solver_type": "rk4"}, "solver_type"),
        ("dpmpp_3m_sde", {"s_noise": float("nan")}, "s_noise"),
        ("er_sde", {"order": 4}, "order"),
        ("er_sde", {"noise_scaler": lambda lam: -lam}, "noise_scaler"),
        ("edm_stochastic", {"S_churn": -1.0}, "S_churn"),
    ],
)
def test_bad_options_are_refused(name, options, match):
    with pytest.raises(AysError, match=match):
        _run(name, **options)


def test_bad_inputs_are_refused():
    with pytest.raises(ScheduleError):
        solvers.euler(smooth_denoiser, torch.ones(2, 2), [1.0, 2.0])
    with pytest.raises(AysError, match="shape"):
        solvers.heun(lambda x, s: x[:1], torch.ones(2, 2), [2.0, 1.0])
    with pytest.raises(AysError, match="callable"):
        solvers.euler(None, torch.ones(2, 2), [2.0, 1.0])
    with pytest.raises(AysError, match="floating"):
        solvers.euler(smooth_denoiser, torch.ones(2, 2, dtype=torch.long), [2.0, 1.0])


def test_sigmas_may_live_on_any_dtype_and_a_final_sigma_min_is_kept():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0)) * 10
    s64 = schedules.loglinear(4, 0.1, 10.0)
    a = solvers.dpmpp_2m(smooth_denoiser, x, s64)
    b = solvers.dpmpp_2m(smooth_denoiser, x, s64.float().tolist())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # ending at sigma_min > 0 returns the noisy state there, not a denoised one
    last = []
    solvers.dpmpp_2m(smooth_denoiser, x, s64, callback=last.append)
    assert not torch.allclose(a, last[-1]["denoised"], atol=1e-3)

"""Schedules: shape, endpoints and monotonicity of every heuristic; the closed
forms each one is defined by; the published tables and their interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ays import schedules as S
from ays.noise import ContinuousVP, DiscreteVP
from ays.validate import AysError, ScheduleError

LO, HI = 0.002, 80.0
STEPS = [1, 2, 3, 5, 10, 20, 40]


@pytest.mark.parametrize("name", sorted(S.HEURISTICS))
@pytest.mark.parametrize("n", STEPS)
def test_every_heuristic_has_n_plus_one_decreasing_levels_between_the_endpoints(name: str, n: int) -> None:
    s = S.build(name, n, LO, HI)
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[0].item() == HI and s[-1].item() == LO
    assert torch.all(s[1:] < s[:-1])


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("c", [0.1, 0.5, 1.0, 3.0])
def test_kl_optimal_is_the_tan_formula_of_theorem_3_1(n: int, c: float) -> None:
    # Thm 3.1, with t_0 = t_min < ... < t_n = t_max.
    i = np.arange(n + 1) / n
    t = c * np.tan((1 - i) * np.arctan(LO / c) + i * np.arctan(HI / c))
    np.testing.assert_allclose(S.kl_optimal(n, LO, HI, c=c).numpy(), t[::-1], rtol=1e-12)


def _second_difference(x: torch.Tensor) -> torch.Tensor:
    return x[2:] - 2 * x[1:-1] + x[:-2]


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_is_uniform_in_sigma_to_the_one_over_rho(rho: float) -> None:
    s = S.karras(12, LO, HI, rho=rho)
    u = s ** (1 / rho)
    assert torch.allclose(_second_difference(u), torch.zeros(11, dtype=torch.float64), atol=1e-12)


def test_karras_matches_k_diffusion_with_one_more_point() -> None:
    # k-diffusion: get_sigmas_karras(n) = (max^(1/rho) + linspace(0,1,n)(min^(1/rho) - max^(1/rho)))^rho
    # with a trailing zero; ours for n steps equals its n+1 points without that zero.
    n, rho = 10, 7.0
    ramp = np.linspace(0, 1, n + 1)
    kd = (HI ** (1 / rho) + ramp * (LO ** (1 / rho) - HI ** (1 / rho))) ** rho
    np.testing.assert_allclose(S.karras(n, LO, HI, rho).numpy(), kd, rtol=1e-12)


def test_loglinear_is_uniform_in_log_sigma_and_equals_polyexponential_rho_1() -> None:
    s = S.loglinear(9, LO, HI)
    assert torch.allclose(_second_difference(s.log()), torch.zeros(8, dtype=torch.float64), atol=1e-12)
    assert torch.equal(s, S.polyexponential(9, LO, HI, rho=1.0))


def test_polyexponential_log_sigma_follows_the_power_ramp() -> None:
    rho = 2.0
    s = S.polyexponential(8, LO, HI, rho=rho)
    frac = (s.log() - math.log(LO)) / (math.log(HI) - math.log(LO))
    expected = (1 - torch.linspace(0, 1, 9, dtype=torch.float64)) ** rho
    assert torch.allclose(frac, expected, atol=1e-12)


def test_time_uniform_is_uniform_in_vp_time() -> None:
    vp = ContinuousVP()
    s = S.time_uniform(10, 0.01, 50.0, noise=vp)
    t = vp.t(s)
    assert torch.allclose(_second_difference(t), torch.zeros(9, dtype=torch.float64), atol=1e-12)


def test_time_uniform_on_a_discrete_model_is_uniform_in_timesteps() -> None:
    model = DiscreteVP.from_betas()
    s = S.time_uniform(9, model.sigma_min, model.sigma_max, noise=model)
    t = model.t(s)
    assert torch.allclose(t, torch.linspace(999, 0, 10, dtype=torch.float64), atol=1e-9)


def test_vp_matches_k_diffusions_get_sigmas_vp() -> None:
    # k-diffusion: t = linspace(1, eps_s, n); sigma = sqrt(exp(beta_d t²/2 + beta_min t) - 1)
    n, beta_d, beta_min, eps_s = 7, 19.9, 0.1, 1e-3
    t = np.linspace(1, eps_s, n + 1)
    expected = np.sqrt(np.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    np.testing.assert_allclose(S.vp(n).numpy(), expected, rtol=1e-10)


def test_beta_with_alpha_beta_one_is_time_uniform_and_crowds_the_ends_below_one() -> None:
    assert torch.allclose(S.beta(8, LO, HI, alpha=1.0, beta=1.0), S.time_uniform(8, LO, HI), rtol=1e-12)
    vp = ContinuousVP()
    t = vp.t(S.beta(20, LO, HI, alpha=0.6, beta=0.6))
    gaps = (t[:-1] - t[1:]).numpy()
    assert gaps[0] < gaps[10] and gaps[-1] < gaps[10]


@pytest.mark.parametrize("name", sorted(S.PUBLISHED))
def test_published_tables_interpolate_back_to_themselves(name: str) -> None:
    table = torch.tensor(S.PUBLISHED[name], dtype=torch.float64)
    assert torch.allclose(S.published(name, 10), table, rtol=1e-12)
    # At 20 steps the even points are the table and the odd ones its log-midpoints.
    s20 = S.published(name, 20)
    assert torch.allclose(s20[0::2], table, rtol=1e-12)
    assert torch.allclose(s20[1::2], torch.sqrt(table[:-1] * table[1:]), rtol=1e-12)


def test_published_interpolation_is_nvidias_numpy_recipe() -> None:
    table = np.array(S.PUBLISHED["sd15"])
    for n in (4, 7, 15, 32):
        xs = np.linspace(0, 1, len(table))
        expected = np.exp(np.interp(np.linspace(0, 1, n + 1), xs, np.log(table[::-1])))[::-1]
        np.testing.assert_allclose(S.published("sd15", n).numpy(), expected, rtol=1e-12)


def test_published_timesteps_are_nvidias_at_ten_steps_and_decreasing_elsewhere() -> None:
    assert S.published_timesteps("sdxl").tolist() == [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0]
    for n in (5, 20, 40):
        ts = S.published_timesteps("sd15", n)
        assert ts.shape == (n + 1,) and ts[0] == 999 and ts[-1] == 0
        assert torch.all(ts[1:] < ts[:-1])


def test_published_timesteps_match_the_sigma_table_on_sds_noise_schedule() -> None:
    # The published SD timesteps and sigmas describe the same levels: the sigma of each
    # interior timestep on SD's scaled-linear schedule is within 3% of the sigma table.
    model = DiscreteVP.from_betas()
    ts = torch.tensor(S.PUBLISHED_TIMESTEPS["sd15"][1:-1], dtype=torch.float64)
    table = torch.tensor(S.PUBLISHED["sd15"][1:-1], dtype=torch.float64)
    assert torch.allclose(model.sigma(ts), table, rtol=0.03)


def test_subdivide_inserts_log_midpoints_and_equals_interpolation_to_twice_the_steps() -> None:
    s = S.karras(7, LO, HI)
    d = S.subdivide(s)
    assert d.shape == (15,)
    assert torch.equal(d[0::2], s)
    assert torch.allclose(d, S.interpolate(s, 14), rtol=1e-12)


def test_interpolate_to_its_own_step_count_is_the_identity() -> None:
    s = S.kl_optimal(9, LO, HI)
    assert torch.allclose(S.interpolate(s, 9), s, rtol=1e-12)


def test_to_sampling_replaces_the_last_level_by_zero() -> None:
    s = S.karras(5, LO, HI)
    z = S.to_sampling(s)
    assert z[-1].item() == 0.0 and torch.equal(z[:-1], s[:-1])
    assert s[-1].item() == LO  # the input is not modified


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1.0, 2.0, 0.5], "strictly decreasing"),
        ([3.0, -1.0, 0.5], "must be > 0"),
        ([3.0, float("nan"), 0.5], "not finite"),
        ([3.0], "at least 2"),
        ([[3.0, 1.0]], "1-D"),
        ([3.0, 0.0, 0.0], "must be > 0"),
    ],
)
def test_bad_schedules_are_refused_with_the_fault_named(bad: list, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        S.to_sampling(torch.tensor(bad, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: S.karras(0, LO, HI), "steps must be at least 1"),
        (lambda: S.karras(2.5, LO, HI), "steps must be an integer"),
        (lambda: S.karras(5, 1.0, 1.0), "sigma_min must be below sigma_max"),
        (lambda: S.loglinear(5, -1.0, 1.0), "sigma_min must be > 0"),
        (lambda: S.kl_optimal(5, LO, HI, c=0), "c must be > 0"),
        (lambda: S.karras(5, LO, float("inf")), "sigma_max must be finite"),
        (lambda: S.build("nope", 5, LO, HI), "unknown schedule 'nope'"),
        (lambda: S.published("sd3"), "unknown published schedule"),
        (lambda: S.build("sdxl", 5, LO, HI), "has its own noise range"),
        (lambda: S.build("karras", 5), "needs sigma_min and sigma_max"),
        (lambda: S.build("karras", 5, LO, HI, cc=1), "unexpected keyword"),
    ],
)
def test_bad_arguments_raise_errors_that_name_the_fault(call, message: str) -> None:
    with pytest.raises(AysError, match=message):
        call()

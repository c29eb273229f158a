"""The KLUB estimator: its proposal against quadrature, its estimates against the Gaussian closed form."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

import ays
from ays import schedules
from ays.klub import (
    KlubDraws,
    estimate_schedule,
    gaussian_klub,
    gaussian_klub_optimal,
    interval_klub,
    klub,
    proposal_cdf,
    proposal_density,
    proposal_normalizer,
    proposal_sample,
)
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser


def _quad(f, a, b):
    # Integrate in log t: the integrands span many decades.
    val, _ = integrate.quad(lambda y: f(math.exp(y)) * math.exp(y), math.log(a), math.log(b),
                            epsabs=0.0, epsrel=1e-11, limit=400)
    return val


INTERVALS = [(0.002, 80.0), (0.002, 0.003), (0.3, 0.31), (10.0, 80.0), (0.05, 2.0), (1.0, 1.0 + 1e-6)]


@pytest.mark.parametrize("c", [0.5, 1.7])
@pytest.mark.parametrize(("a", "b"), INTERVALS)
def test_normalizer_is_the_integral_of_the_unnormalised_density(a, b, c):
    f = lambda t: t**-3 * (1 / (t * t + c * c) - 1 / (b * b + c * c))
    assert float(proposal_normalizer(a, b, c)) == pytest.approx(_quad(f, a, b), rel=1e-8)


@pytest.mark.parametrize(("a", "b"), [(0.002, 80.0), (0.05, 2.0), (0.3, 0.31)])
def test_cdf_integrates_the_density_and_sampler_inverts_it(a, b):
    c = 0.5
    for t in torch.exp(torch.linspace(math.log(a), math.log(b), 7, dtype=torch.float64))[1:-1].tolist():
        expect = _quad(lambda s: float(proposal_density(s, a, b, c)), a, t)
        assert float(proposal_cdf(t, a, b, c)) == pytest.approx(expect, rel=1e-7, abs=1e-12)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp_min(1e-9)
    t, gap = proposal_sample(u, a, b, c)
    assert torch.all((t >= a) & (t <= b))
    # u = 1 -> t = a and u -> 0 -> t -> b: P(τ <= t) = 1 - u.
    torch.testing.assert_close(proposal_cdf(t, a, b, c), 1 - u, rtol=0, atol=1e-9)
    torch.testing.assert_close(gap, b * b - t * t, rtol=1e-9, atol=1e-15)
    assert float(proposal_sample(torch.tensor(1.0), a, b, c)[0]) == pytest.approx(a, rel=1e-12)


def test_sampler_histogram_matches_the_density():
    a, b, c, n = 0.01, 5.0, 0.5, 200_000
    u = 1 - torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, _ = proposal_sample(u, a, b, c)
    edges = torch.exp(torch.linspace(math.log(a), math.log(b), 21, dtype=torch.float64)).tolist()
    counts = torch.histogram(t, torch.tensor(edges, dtype=torch.float64)).hist
    for k in range(20):
        p = _quad(lambda s: float(proposal_density(s, a, b, c)), edges[k], edges[k + 1])
        sd = math.sqrt(n * p * (1 - p)) + 1.0
        assert abs(float(counts[k]) - n * p) < 5 * sd, (k, float(counts[k]), n * p)


@pytest.mark.parametrize(("c", "dim"), [(0.5, 1), (1.3, 3)])
def test_gaussian_klub_closed_form_against_quadrature(c, dim):
    s = schedules.karras(5, 0.002, 80.0)
    terms = gaussian_klub(s, c, dim, per_interval=True)
    for i in range(5):
        a, b = float(s[i + 1]), float(s[i])
        f = lambda t, b=b: c**4 * dim * t**-3 * (1 / (t * t + c * c) - 1 / (b * b + c * c))
        assert float(terms[i]) == pytest.approx(_quad(f, a, b), rel=1e-8)
    assert float(gaussian_klub(s, c, dim)) == pytest.approx(float(terms.sum()), rel=1e-14)


@pytest.mark.parametrize(("c_data", "dim"), [(0.5, 2), (1.0, 1), (0.2, 4)])
def test_estimator_agrees_with_gaussian_closed_form(c_data, dim):
    s = schedules.karras(6, 0.002, 80.0)
    est = klub(gaussian_denoiser(c_data), gaussian_data(c_data, dim), s, samples=4096,
               generator=torch.Generator().manual_seed(3))
    exact = gaussian_klub(s, c_data, dim, per_interval=True)
    assert est.per_interval.dtype == torch.float64 and est.per_interval.shape == (6,)
    z = (est.per_interval - exact) / est.stderr
    assert torch.all(z.abs() < 4), z
    assert abs(est.total - float(exact.sum())) < 4 * est.total_stderr
    assert est.calls == 2 * 6 * 4096


def test_stderr_is_honest():
    # Coverage of the ±1.96·stderr interval over repeated seeds (data N(0, 1) in 2-D:
    # the proposal's c = 0.5 does not match, so the weights really vary).
    s = schedules.karras(4, 0.002, 80.0)
    exact = gaussian_klub(s, 1.0, 2, per_interval=True)
    inside, total_inside = 0, 0
    seeds = 60
    for seed in range(seeds):
        est = klub(gaussian_denoiser(1.0), gaussian_data(1.0, 2), s, samples=256,
                   generator=torch.Generator().manual_seed(seed))
        inside += int(((est.per_interval - exact).abs() < 1.96 * est.stderr).sum())
        total_inside += int(abs(est.total - float(exact.sum())) < 1.96 * est.total_stderr)
    assert 0.88 <= inside / (4 * seeds) <= 0.99
    assert 0.83 <= total_inside / seeds <= 1.0


def test_common_random_numbers_make_differences_precise():
    c_data, dim = 1.0, 2
    den, data = gaussian_denoiser(c_data), gaussian_data(c_data, dim)
    s1 = schedules.karras(5, 0.002, 80.0)
    s2 = s1.clone()
    s2[2] *= 1.05
    draws = KlubDraws.create(data, 4096, torch.Generator().manual_seed(0))
    e1 = estimate_schedule(den, draws, s1)
    e2 = estimate_schedule(den, draws, s2)
    exact = float(gaussian_klub(s2, c_data, dim) - gaussian_klub(s1, c_data, dim))
    # Paired per-draw differences (same draws) against an independent estimate.
    i1 = interval_klub(den, draws, s1[1:], s1[:-1]).values.sum(0)
    i2 = interval_klub(den, draws, s2[1:], s2[:-1]).values.sum(0)
    paired_se = float((i2 - i1).std() / math.sqrt(4096))
    unpaired_se = math.hypot(e1.total_stderr, e2.total_stderr)
    assert abs((e2.total - e1.total) - exact) < 4 * paired_se
    assert paired_se < 0.2 * unpaired_se
    # Same draws, same numbers.
    assert estimate_schedule(den, draws, s1).total == e1.total


def test_batching_and_call_counting():
    sizes: list[int] = []
    base = gaussian_denoiser(0.7)

    def counting(x, sigma):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        sizes.append(x.shape[0])
        return base(x, sigma)

    s = schedules.loglinear(3, 0.01, 10.0)
    draws = KlubDraws.create(gaussian_data(0.7, 2), 100, torch.Generator().manual_seed(0))
    small = estimate_schedule(counting, draws, s, batch_size=14)
    assert max(sizes) <= 14 and sum(sizes) == small.calls == 2 * 3 * 100
    big = estimate_schedule(base, draws, s, batch_size=10_000)
    torch.testing.assert_close(small.per_interval, big.per_interval, rtol=1e-12, atol=0)


def test_float32_model_still_accumulates_in_float64():
    c = 0.5
    data = lambda n, g: c * torch.randn(n, 3, generator=g)  # float32
    s = schedules.karras(4, 0.002, 80.0)
    est = klub(gaussian_denoiser(c), data, s, samples=2048, generator=torch.Generator().manual_seed(0))
    assert est.per_interval.dtype == torch.float64
    exact = gaussian_klub(s, c, 3, per_interval=True)
    assert torch.all(((est.per_interval - exact) / est.stderr).abs() < 4)


def test_tensor_data_is_cycled_through_permutations():
    data = torch.arange(10, dtype=torch.float64).reshape(10, 1)
    draws = KlubDraws.create(data, 25, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.x0.reshape(-1).long(), minlength=10)
    assert counts.min() >= 2 and counts.max() <= 3 and counts.sum() == 25


def test_nan_denoiser_is_named():
    def bad(x, sigma):
        out = x.clone()
        out[sigma > 1] = float("nan")
        return out

    with pytest.raises(AysError, match=r"NaN or inf at sigma="):
        klub(bad, gaussian_data(1.0, 1), schedules.karras(3, 0.002, 80.0), samples=64,
             generator=torch.Generator().manual_seed(0))


def test_bad_inputs():
    g = torch.Generator().manual_seed(0)
    den, data = gaussian_denoiser(1.0), gaussian_data(1.0, 1)
    with pytest.raises(AysError):
        klub(den, data, [1.0, 2.0], samples=64, generator=g)  # increasing
    with pytest.raises(AysError):
        klub(den, data, [2.0, 0.0], samples=64, generator=g)  # ends at 0
    with pytest.raises(AysError, match="samples"):
        klub(den, data, [2.0, 1.0], samples=1, generator=g)
    with pytest.raises(AysError, match="shape"):
        klub(lambda x, s: x[:, :0], data, [2.0, 1.0], samples=64, generator=g)
    with pytest.raises(AysError, match="data"):
        klub(den, lambda n, g: torch.zeros(n + 1, 1), [2.0, 1.0], samples=64, generator=g)
    with pytest.raises(AysError, match="data"):
        klub(den, [1.0, 2.0], [2.0, 1.0], samples=64, generator=g)
    with pytest.raises(AysError):
        proposal_normalizer(1.0, 1.0)


def test_klub_optimal_gaussian_schedule_is_the_app_a3_fixed_point():
    c, n = 0.5, 8
    s = gaussian_klub_optimal(n, 0.002, 80.0, c).tolist()
    for i in range(1, n):
        prev, nxt = s[i - 1], s[i + 1]
        rhs = c * math.sqrt(prev * nxt / (math.sqrt((prev**2 + c * c) * (nxt**2 + c * c)) - prev * nxt))
        assert s[i] == pytest.approx(rhs, rel=1e-9)
    opt = float(gaussian_klub(s, c, 1))
    # A strict minimum: moving any point either way raises the KLUB ...
    for i in range(1, n):
        for f in (0.99, 1.01):
            t = torch.tensor(s, dtype=torch.float64)
            t[i] *= f
            assert float(gaussian_klub(t, c, 1)) > opt
    # ... and it beats every heuristic.
    for name in ("karras", "loglinear", "kl_optimal"):
        assert float(gaussian_klub(schedules.build(name, n, 0.002, 80.0), c, 1)) > opt


def test_ays_klub_is_callable_after_the_submodule_is_imported():
    import ays.klub as module

    s = schedules.karras(2, 0.1, 10.0)
    est = ays.klub(gaussian_denoiser(1.0), gaussian_data(1.0, 1), s, samples=32,
                   generator=torch.Generator().manual_seed(0))
    assert isinstance(est, module.KlubEstimate)

"""Tests for ays.metrics: every metric against a case with a known answer.

Closed forms: Gaussian entropy (NLL), exact 1-D W2 between empirical laws and the sphere
average |m|²/d (sliced W2), E|X - Y| for 1-D Gaussians (energy distance), Gaussian kernel
expectations (MMD), the Gaussian Fréchet distance (peer: scipy.linalg.sqrtm), hand-counted
k-NN manifolds (precision/recall), mass removed from known modes (mode coverage), and the
shipped digits classifier's stated accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import norm

import ays.metrics as M
from ays.problems import digits_data, gaussian, get, gmm
from ays.validate import AysError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small conv nets and pairwise blocks gain nothing from threads on a shared 2-core machine,
    # where intra-op thread synchronisation can make them many times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal_grid(n: int) -> torch.Tensor:
    """n deterministic points whose empirical law is N(0, 1) up to O(1/n): the normal quantiles."""
    return torch.as_tensor(norm.ppf((np.arange(n) + 0.5) / n), dtype=torch.float64)[:, None]


def whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """n points in d dims with sample mean exactly 0 and (1/n) sample covariance exactly I."""
    z = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    z = z - z.mean(dim=0)
    chol = torch.linalg.cholesky(z.T @ z / n)
    return torch.linalg.solve_triangular(chol, z.T, upper=False).T


def sample_mixture(means, stds, weights, n: int, g: torch.Generator) -> torch.Tensor:
    """Exact mixture samples, drawn here (independently of ays.problems' sampler)."""
    k = torch.multinomial(weights, n, replacement=True, generator=g)
    return means[k] + stds[k, None] * torch.randn(n, means.shape[1], generator=g, dtype=torch.float64)


# ------------------------------------------------------------------- NLL
def test_nll_of_gaussian_samples_is_its_entropy() -> None:
    c, d, n = 0.5, 3, 20000
    prob = gaussian(c, d)
    x = prob.sample(n, gen(0), dtype=torch.float64)
    est = M.nll(x, prob)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * c * c)
    assert abs(est.value - entropy) < 4 * est.stderr
    # the stderr is that of a mean: Var(log p) = d/2 for a Gaussian
    assert est.stderr == pytest.approx(math.sqrt(d / 2 / n), rel=0.05)
    # a log-density callable works as well
    assert M.nll(x, prob.log_prob).value == est.value


def test_nll_is_blind_to_dropped_modes_and_rewards_collapse() -> None:
    prob = get("gmm-8x8")
    means, stds, w = M.mixture_parameters(prob)
    g = gen(1)
    full = sample_mixture(means, stds, w, 8000, g)
    half_w = torch.where(torch.arange(64) < 32, w, torch.zeros_like(w))
    half = sample_mixture(means, stds, half_w / half_w.sum(), 8000, g)
    a, b = M.nll(full, prob), M.nll(half, prob)
    # Same NLL (within error) although half of the modes are gone...
    assert abs(a.value - b.value) < 4 * math.hypot(a.stderr, b.stderr)
    # ...which mode coverage sees: exactly the 32 emptied modes are dropped.
    assert M.mode_coverage(half, prob).dropped == tuple(range(32, 64))
    # Samples collapsed onto the mode centres beat the exact samples' NLL by a wide margin.
    collapsed = means[torch.multinomial(w, 8000, replacement=True, generator=g)]
    assert M.nll(collapsed, prob).value < a.value - 0.5
    # A distance sees the collapse: SW2² ≈ std² = 8.2e-4 (each sample is std·z from where it should be),
    # well above the ≈ 1.3e-4 between two exact sample sets of this size.
    exact2 = sample_mixture(means, stds, w, 8000, g)
    assert M.sliced_w2(collapsed, full).squared > 3 * M.sliced_w2(exact2, full).squared


def test_nll_refuses_bad_input() -> None:
    prob = gaussian(1.0, 2)
    with pytest.raises(AysError, match="NaN"):
        M.nll(torch.tensor([[0.0, float("nan")]]), prob)
    with pytest.raises(AysError, match="log_prob"):
        M.nll(torch.zeros(3, 2), object())


# ---------------------------------------------------------- mode coverage
def test_mode_coverage_of_exact_samples() -> None:
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]], dtype=torch.float64)
    stds = torch.tensor([0.5, 0.3, 0.6, 0.4], dtype=torch.float64)
    prob = gmm(means, stds, weights)
    x = sample_mixture(means, stds, weights, 20000, gen(2))
    cov = M.mode_coverage(x, prob)
    assert cov.dropped == ()
    assert cov.off_mode < 5e-4
    assert cov.tv < 3 * cov.tv_noise
    assert torch.all((cov.fractions - weights).abs() < 4.5 * cov.stderr)
    assert int(cov.counts.sum()) + round(cov.off_mode * cov.n) == cov.n


def test_mode_coverage_reports_exactly_the_removed_mode() -> None:
    prob = get("gmm-6x6")
    means, stds, w = M.mixture_parameters(prob)
    w = torch.linspace(1.0, 2.0, 36, dtype=torch.float64)
    w = w / w.sum()
    prob = gmm(means, stds, w)
    j = 17
    wj = w.clone()
    wj[j] = 0
    x = sample_mixture(means, stds, wj / wj.sum(), 20000, gen(3))
    cov = M.mode_coverage(x, prob)
    assert cov.dropped == (j,)
    assert int(cov.counts[j]) == 0
    # removing mode j and renormalising moves exactly w_j of mass: TV = w_j
    assert abs(cov.tv - float(w[j])) < 3 * cov.tv_noise


def test_mode_coverage_assigns_by_posterior_and_flags_off_mode() -> None:
    # 1-D: means 0 and 3, stds 1 and 0.1. x = 2.5 is nearer mean 3 (5 of its stds) than mean 0
    # (2.5 stds), yet the posterior prefers component 0: log r0 - log r1 = -3.125 - (2.303 - 12.5) > 0.
    prob = gmm(torch.tensor([[0.0], [3.0]]), torch.tensor([1.0, 0.1]), torch.tensor([0.5, 0.5]))
    x = torch.tensor([[2.5], [3.05], [100.0], [-0.2]], dtype=torch.float64)
    cov = M.mode_coverage(x, prob, min_expected=0)
    assert cov.counts.tolist() == [2, 1]
    assert cov.off_mode == 0.25
    # default radius: 1e-4 of a component's mass outside, in 1-D: Φ^-1(1 - 5e-5)
    assert cov.radius == pytest.approx(norm.isf(5e-5), rel=1e-9)
    # tv = (|0.5 - 0.5| + |0.25 - 0.5| + 0.25) / 2
    assert cov.tv == pytest.approx(0.25)


def test_mode_coverage_minimum_count_rule() -> None:
    prob = get("gmm-8x8")
    means, stds, w = M.mixture_parameters(prob)
    x = sample_mixture(means, stds, w, 64, gen(4))  # one expected sample per mode
    cov = M.mode_coverage(x, prob)
    assert int((cov.counts == 0).sum()) > 5  # many empty modes by chance...
    assert cov.dropped == () and not cov.judged.any()  # ...none of them evidence of a drop


def test_grid_rings_and_ring_mass() -> None:
    prob = get("gmm-8x8")
    rings = M.grid_rings(prob.means)
    assert torch.bincount(rings).tolist() == [28, 20, 12, 4]
    perm = torch.randperm(64, generator=gen(5))
    assert torch.equal(M.grid_rings(prob.means[perm]), rings[perm])
    means, stds, w = M.mixture_parameters(prob)
    x = sample_mixture(means, stds, w, 8000, gen(6))
    observed, truth = M.mode_coverage(x, prob).mass(rings == 0)
    assert truth == pytest.approx(28 / 64)
    assert abs(observed.value - truth) < 4 * observed.stderr
    with pytest.raises(AysError, match="grid"):
        M.grid_rings(prob.means[:-1])


# ------------------------------------------------------------ sliced W2
def test_sliced_w2_hand_computed_unequal_sizes() -> None:
    # Quantile functions: x = 0,1,2 on thirds; y = 0,3 on halves. W2² = 1/6·1 + 1/6·4 + 1/3·1 = 7/6.
    x = torch.tensor([[2.0], [0.0], [1.0]])
    y = torch.tensor([[3.0], [0.0]])
    r = M.sliced_w2(x, y, projections=8)
    assert r.squared == pytest.approx(7 / 6, rel=1e-12)
    assert r.value == pytest.approx(math.sqrt(7 / 6), rel=1e-12)
    assert r.squared_stderr == pytest.approx(0.0, abs=1e-12)


def test_sliced_w2_unequal_sizes_equal_replicated_sets() -> None:
    g = gen(7)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64) + 1.0
    a = M.sliced_w2(x, y, projections=64, generator=gen(8))
    b = M.sliced_w2(x.repeat(2, 1), y.repeat(3, 1), projections=64, generator=gen(8))  # same empirical laws
    assert a.squared == pytest.approx(b.squared, rel=1e-12)
    assert M.sliced_w2(x, x).value == 0.0


def test_sliced_w2_one_dimensional_gaussians_closed_form() -> None:
    # W2²(N(0,1), N(mu, s²)) = mu² + (1 - s)²; in 1-D every direction is ±1.
    mu, s = 0.7, 1.6
    x = normal_grid(30000)
    y = mu + s * normal_grid(20000)
    y = y[torch.randperm(20000, generator=gen(9))]
    r = M.sliced_w2(x, y, projections=4)
    assert r.squared == pytest.approx(mu**2 + (1 - s) ** 2, abs=2e-3)


def test_sliced_w2_sphere_average_closed_form() -> None:
    # x with mean 0 and covariance I exactly, y = m + s x: for every θ the 1-D laws are
    # affine images, W2²(θ) = (m·θ)² + (1-s)², and E_θ (m·θ)² = |m|²/d.
    d, s = 4, 1.5
    m = torch.tensor([1.0, 0.5, 0.0, -0.5], dtype=torch.float64)
    x = whitened(4000, d, 10)
    y = m + s * x
    r = M.sliced_w2(x, y, projections=2000, generator=gen(11))
    truth = float(m.square().sum()) / d + (1 - s) ** 2
    assert abs(r.squared - truth) < 4 * r.squared_stderr
    assert r.squared_stderr < 0.01
    assert abs(r.value - math.sqrt(truth)) < 4 * r.stderr


def test_sliced_w2_directions_come_from_the_generator() -> None:
    g = gen(12)
    x = torch.randn(200, 5, generator=g)
    y = torch.randn(300, 5, generator=g) * 2
    assert M.sliced_w2(x, y, generator=gen(1)).squared == M.sliced_w2(x, y, generator=gen(1)).squared
    assert M.sliced_w2(x, y, generator=gen(1)).squared != M.sliced_w2(x, y, generator=gen(2)).squared
    assert M.sliced_w2(x, y).squared == M.sliced_w2(x, y).squared  # default: fixed seed
    with pytest.raises(AysError, match="dimensions"):
        M.sliced_w2(x, torch.randn(10, 4))


def test_sliced_w2_resampled_equals_sliced_w2_of_each_resample() -> None:
    # A bootstrap of coupled rows: sorted once and repeated by the draw counts, each value is the
    # sliced W2 of that resample itself (same directions), ties from repeated rows included.
    g = gen(3)
    y = torch.randn(300, 4, generator=g, dtype=torch.float64)
    sets = [y + 0.1 * torch.randn(300, 4, generator=g, dtype=torch.float64), 1.3 * y]
    rows = torch.stack([torch.arange(300), *[torch.randint(0, 300, (300,), generator=g) for _ in range(5)]])
    got = M.sliced_w2_resampled(sets, y, rows, projections=64, generator=gen(7))
    assert got.shape == (2, 6)
    for k, x in enumerate(sets):
        for r, i in enumerate(rows):
            want = M.sliced_w2(x[i], y[i], projections=64, generator=gen(7)).value
            assert float(got[k, r]) == pytest.approx(want, rel=1e-12)
    with pytest.raises(AysError, match="target's rows"):
        M.sliced_w2_resampled([y[:10]], y, rows)


# ------------------------------------------------------ energy distance / MMD
def test_energy_distance_hand_case() -> None:
    # cross mean (3+5+2+4)/4 = 3.5; within x: 1; within y: 2 -> 2*3.5 - 1 - 2 = 4
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0], [5.0]])
    assert M.energy_distance(x, y) == pytest.approx(4.0, rel=1e-12)
    assert M.energy_distance(y, x) == pytest.approx(4.0, rel=1e-12)


def test_energy_distance_one_dimensional_gaussians_closed_form() -> None:
    mu, s1, s2 = 0.8, 1.0, 1.5
    x = s1 * normal_grid(3000)
    y = mu + s2 * normal_grid(2000)
    s = math.hypot(s1, s2)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s * s)) + mu * (1 - 2 * norm.cdf(-mu / s))
    e_xx, e_yy = 2 * s1 / math.sqrt(math.pi), 2 * s2 / math.sqrt(math.pi)
    truth = 2 * e_xy - e_xx - e_yy
    # Deterministic grids: their all-pairs means match the expectations, and the U-statistic's
    # within-set means (pairs i ≠ j, the diagonal being 0) are those times n/(n - 1).
    expected = 2 * e_xy - e_xx * 3000 / 2999 - e_yy * 2000 / 1999
    assert abs(truth - expected) > 1e-3  # the correction is resolved by the test below
    assert M.energy_distance(x, y) == pytest.approx(expected, abs=2e-4)


def _replicates(fn, n: int, reps: int, seed: int) -> torch.Tensor:
    g = gen(seed)
    return torch.tensor([fn(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)) for _ in range(reps)])


def test_energy_distance_and_mmd_are_unbiased_for_equal_laws() -> None:
    # Small sets from one law: the U-statistics average to 0. A biased (V-statistic) version
    # would average (1/n + 1/m) E|X - X'| ≈ 0.35 (energy) here, far outside the error bar.
    n, reps = 10, 300
    for fn in (M.energy_distance, lambda a, b: M.mmd(a, b, bandwidth=1.0)):
        vals = _replicates(fn, n, reps, 13)
        se = float(vals.std()) / math.sqrt(reps)
        assert abs(float(vals.mean())) < 4 * se
    v_bias = 2 / n * 2 * math.sqrt(math.pi) / 2  # (1/n + 1/m) E|X-X'|, E|X-X'| = sqrt(pi) in 2-D
    assert 4 * float(_replicates(M.energy_distance, n, reps, 14).std()) / math.sqrt(reps) < v_bias / 2


def test_mmd_gaussian_closed_form_and_positivity() -> None:
    h, mu, s = 1.0, 0.6, 1.4
    x = normal_grid(3000)
    y = mu + s * normal_grid(2500)

    def ek(v: float, shift: float = 0.0) -> float:  # E exp(-(X-Y)²/2h²) for X - Y ~ N(shift, v)
        return math.sqrt(h * h / (h * h + v)) * math.exp(-(shift**2) / (2 * (h * h + v)))

    kxx, kyy, kxy = ek(2.0), ek(2 * s * s), ek(1 + s * s, mu)
    truth = kxx + kyy - 2 * kxy
    assert truth > 0.01
    # The grids are deterministic stand-ins for the laws, so their V-statistics (all pairs) match the
    # expectations; the unbiased estimator leaves out the diagonal (k = 1): U = V - (1 - V)/(n - 1).
    expected = truth - (1 - kxx) / (3000 - 1) - (1 - kyy) / (2500 - 1)
    assert M.mmd(x, y, bandwidth=h) == pytest.approx(expected, rel=5e-4)
    assert abs(M.mmd(x, x[torch.randperm(3000, generator=gen(15))], bandwidth=h)) < 1e-3


def test_median_bandwidth_of_a_normal() -> None:
    # |X - X'| for X ~ N(0, 1): median sqrt(2) Φ^-1(3/4)
    x = normal_grid(2000)
    assert M.median_bandwidth(x) == pytest.approx(math.sqrt(2) * norm.ppf(0.75), rel=5e-3)


# ------------------------------------------------------------- Fréchet
def _spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_from_stats_matches_scipy_sqrtm() -> None:
    d = 6
    s1, s2 = _spd(d, 16), _spd(d, 17)  # do not commute
    mu1 = torch.randn(d, generator=gen(18), dtype=torch.float64)
    mu2 = torch.randn(d, generator=gen(19), dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float((mu1 - mu2).square().sum()) + float(np.trace(s1.numpy() + s2.numpy() - 2 * covmean))
    assert M.frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert M.frechet_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples_with_known_moments() -> None:
    # Samples built to have exactly the target mean and (unbiased) covariance: the fitted
    # Gaussians are the targets, so the distance is the closed form.
    d, n = 3, 500
    s1, s2 = _spd(d, 20), _spd(d, 21)
    mu1 = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    mu2 = torch.tensor([0.0, 2.0, 0.5], dtype=torch.float64)
    unbiased = math.sqrt((n - 1) / n)
    x = mu1 + unbiased * whitened(n, d, 22) @ torch.linalg.cholesky(s1).T
    y = mu2 + unbiased * whitened(n, d, 23) @ torch.linalg.cholesky(s2).T
    r1 = torch.as_tensor(scipy.linalg.sqrtm(s1.numpy()).real)
    inner = scipy.linalg.sqrtm((r1 @ s2 @ r1).numpy()).real
    truth = float((mu1 - mu2).square().sum()) + float(torch.trace(s1 + s2)) - 2 * float(np.trace(inner))
    assert M.frechet_distance(x, y) == pytest.approx(truth, rel=1e-9)
    assert M.frechet_distance(y, x) == pytest.approx(truth, rel=1e-9)
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------- precision / recall
def test_precision_recall_hand_case() -> None:
    ref = torch.arange(10, dtype=torch.float64)[:, None]  # k=1 radii: all 1
    samples = torch.tensor([[0.5], [20.0]])  # k=1 radii: both 19.5
    r = M.precision_recall(samples, ref, k=1)
    assert r.precision.value == 0.5  # 0.5 lies in the ball of 0; 20 lies in none
    assert r.recall.value == 1.0  # the ball of 0.5 (radius 19.5) covers every reference point
    with pytest.raises(AysError, match="k=2"):
        M.precision_recall(samples, ref, k=2)


def test_precision_recall_equal_laws_and_missing_modes() -> None:
    prob = get("gmm-8x8")
    means, stds, w = M.mixture_parameters(prob)
    g = gen(24)
    ref = sample_mixture(means, stds, w, 3000, g)
    same = M.precision_recall(sample_mixture(means, stds, w, 3000, g), ref)
    assert same.precision.value > 0.9 and same.recall.value > 0.9
    half_w = torch.where(torch.arange(64) < 32, w, torch.zeros_like(w))
    half = M.precision_recall(sample_mixture(means, stds, half_w / half_w.sum(), 3000, g), ref)
    assert half.precision.value > 0.9  # what is generated is realistic...
    assert abs(half.recall.value - 0.5 * same.recall.value) < 0.05  # ...but half the data is missed


# -------------------------------------------------------------- digits FD
def test_shipped_digits_classifier_has_its_stated_accuracy() -> None:
    from ays.metrics.digits import DIGITS_CLASSIFIER_PATH, digits_accuracy

    assert DIGITS_CLASSIFIER_PATH.stat().st_size < 200_000
    model, meta = M.load_digits_classifier()
    assert meta["command"] == "python benchmarks/train_digits_classifier.py"
    acc = digits_accuracy(model, "test")
    assert meta["test_accuracy"] > 0.95
    assert acc == pytest.approx(meta["test_accuracy"], abs=0.005)
    assert M.load_digits_classifier()[0] is model  # cached


def test_digits_fd_orders_sample_sets_sensibly() -> None:
    train, test = digits_data("train"), digits_data("test")
    assert M.digits_features(train).shape == (train.shape[0], 64)
    assert M.digits_fd(train, train) == pytest.approx(0.0, abs=1e-6)
    held_out = M.digits_fd(test)  # default reference: the train split
    noise = torch.rand(360, 1, 8, 8, generator=gen(25)) * 2 - 1
    blurred = 0.5 * test + 0.5 * test.mean(dim=0, keepdim=True)
    assert held_out < M.digits_fd(blurred) < M.digits_fd(noise)
    assert 10 * held_out < M.digits_fd(noise)


def test_digits_training_is_deterministic() -> None:
    from ays.metrics.digits import train_digits_classifier

    a = train_digits_classifier(seed=3, epochs=1).state_dict()
    b = train_digits_classifier(seed=3, epochs=1).state_dict()
    c = train_digits_classifier(seed=4, epochs=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)

"""Tests for ays.problems: the exact denoisers must be the posterior mean of their data."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from ays import problems as P
from ays.problems import digits as PD
from ays.validate import AysError

# A mixture whose components differ in mean, std and weight, so that a wrong
# per-component shrinkage or weighting cannot hide.
MEANS = [[0.0, 0.0], [1.5, -0.5], [-1.0, 1.2]]
STDS = [0.1, 0.3, 0.6]
WEIGHTS = [0.5, 0.3, 0.2]


def _mix() -> P.GaussianMixture:
    return P.gmm(MEANS, STDS, WEIGHTS, name="test-mix")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ Gaussian
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_denoiser_is_linear_shrinkage(dtype: torch.dtype) -> None:
    c = 0.5
    prob = P.gaussian(c, 3)
    assert isinstance(prob, P.Gaussian) and prob.c == c and prob.shape == (3,)
    x = torch.randn(64, 3, generator=_gen(), dtype=dtype) * 3
    sigma = torch.logspace(-3, 2, 64, dtype=dtype)
    want = (c**2 / (c**2 + sigma.double() ** 2))[:, None] * x.double()
    got = prob.denoiser(x, sigma)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    # scalar sigma broadcasts; sigma 0 returns x; the score is -x / (c² + sigma²)
    torch.testing.assert_close(prob.denoiser(x, 0.7).double(), c**2 / (c**2 + 0.49) * x.double(), rtol=tol, atol=tol)
    torch.testing.assert_close(prob.denoiser(x, torch.tensor(0.0)), x)
    torch.testing.assert_close(prob.score(x, sigma).double(), -x.double() / (c**2 + sigma.double()[:, None] ** 2),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------- mixture denoiser
@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_mixture_denoiser_equals_monte_carlo_posterior_mean(sigma: float) -> None:
    """E[x0 | x] by self-normalised importance sampling from the prior, weights N(x; x0, sigma²)."""
    prob = _mix()
    x0 = prob.sample(200_000, _gen(1), dtype=torch.float64)
    xs = torch.tensor([[0.2, 0.1], [1.0, 0.0], [-0.5, 0.8], [0.7, 0.6]], dtype=torch.float64)
    got = prob.denoiser(xs, sigma)
    for x, d in zip(xs, got):
        logw = -0.5 * ((x0 - x) ** 2).sum(1) / sigma**2
        w = torch.softmax(logw, 0)
        est = (w[:, None] * x0).sum(0)
        # delta-method standard error of a self-normalised importance-sampling mean
        se = torch.sqrt((w[:, None] ** 2 * (x0 - est) ** 2).sum(0))
        assert (1.0 / (w**2).sum()) > 1000  # enough effective samples for the SE to hold
        assert torch.all((d - est).abs() <= 5 * se + 1e-4), (d, est, se)


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 30.0])
def test_tweedie_formula_with_autograd_score(sigma: float) -> None:
    """D(x, sigma) = x + sigma² ∇ log p_sigma(x), p_sigma = same means, stds sqrt(s² + sigma²)."""
    prob = _mix()
    x = (prob.sample(50, _gen(2), dtype=torch.float64) + sigma * torch.randn(50, 2, generator=_gen(3),
                                                                              dtype=torch.float64))
    x.requires_grad_(True)
    noised = P.gmm(MEANS, [math.sqrt(s * s + sigma * sigma) for s in STDS], WEIGHTS)
    (grad,) = torch.autograd.grad(noised.log_prob(x).sum(), x)
    x = x.detach()
    scale = 1.0 + x.abs()
    torch.testing.assert_close(prob.denoiser(x, sigma), x + sigma**2 * grad, rtol=0, atol=1e-10 * scale.max().item())
    torch.testing.assert_close(prob.score(x, sigma), grad, rtol=1e-9, atol=1e-9)
    # noised() builds the same law
    torch.testing.assert_close(prob.noised(sigma).log_prob(x), noised.log_prob(x))


def test_denoiser_on_image_shapes_and_chunks() -> None:
    means = torch.randn(5, 1, 2, 2, generator=_gen(4), dtype=torch.float64)
    prob = P.gmm(means, [0.1, 0.2, 0.3, 0.4, 0.5], name="img")
    assert prob.shape == (1, 2, 2) and prob.dim == 4
    flat = P.gmm(means.reshape(5, 4), [0.1, 0.2, 0.3, 0.4, 0.5])
    x = torch.randn(23, 1, 2, 2, generator=_gen(5))
    sigma = torch.rand(23, generator=_gen(6)) * 2
    d = prob.denoiser(x, sigma)
    assert d.shape == x.shape and d.dtype == torch.float32
    torch.testing.assert_close(d.reshape(23, 4), flat.denoiser(x.reshape(23, 4), sigma))
    torch.testing.assert_close(prob.denoiser(x, sigma, chunk_size=4), d)
    # k-diffusion style sigma [n, 1, 1, 1]
    torch.testing.assert_close(prob.denoiser(x, sigma[:, None, None, None]), d)


# ------------------------------------------------------------------- samples
def test_samples_have_mixture_mean_and_covariance() -> None:
    prob = _mix()
    n = 200_000
    x = prob.sample(n, _gen(7), dtype=torch.float64).numpy()
    mu, s, w = np.array(MEANS), np.array(STDS), np.array(WEIGHTS)
    mean = w @ mu
    # law of total covariance: E[Cov | k] + Cov[E | k]
    cov = np.eye(2) * (w @ s**2) + (mu - mean).T @ np.diag(w) @ (mu - mean)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se_mean)
    assert np.allclose(np.cov(x.T), cov, atol=0.01)
    np.testing.assert_allclose(prob.mean().numpy(), mean, atol=1e-14)
    np.testing.assert_allclose(prob.covariance().numpy(), cov, atol=1e-14)
    # component frequencies: binomial bounds on the well-separated first component
    frac = (np.linalg.norm(x - mu[0], axis=1) < 0.5).mean()  # std 0.1 -> all of comp 0, ~none of the others
    assert abs(frac - w[0]) < 5 * math.sqrt(w[0] * (1 - w[0]) / n) + 2e-3
    # determinism from the generator alone
    torch.testing.assert_close(prob.sample(10, _gen(8)), prob.sample(10, _gen(8)))
    assert prob.sample(10, _gen(8)).dtype == torch.float32


def test_log_prob_matches_scipy_and_normalises() -> None:
    means, stds, weights = [[0.0, 0.0], [1.0, 0.5]], [0.4, 0.7], [0.35, 0.65]
    prob = P.gmm(means, stds, weights)
    x = torch.randn(100, 2, generator=_gen(9), dtype=torch.float64) * 2
    want = sum(w * multivariate_normal(m, s**2 * np.eye(2)).pdf(x.numpy()) for m, s, w in zip(means, stds, weights))
    lp = prob.log_prob(x)
    assert lp.dtype == torch.float64 and lp.shape == (100,)
    np.testing.assert_allclose(lp.numpy(), np.log(want), rtol=1e-12)
    # Riemann sum over a wide grid: a smooth density integrates to 1
    h = 0.02
    g = torch.arange(-6.0, 7.0, h, dtype=torch.float64)
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    total = prob.log_prob(pts).exp().sum().item() * h * h
    assert abs(total - 1.0) < 1e-6


def test_responsibilities_are_bayes_posterior() -> None:
    means, stds, weights = [[0.0, 0.0], [1.0, 0.5]], [0.4, 0.7], [0.35, 0.65]
    prob = P.gmm(means, stds, weights)
    x = torch.randn(30, 2, generator=_gen(10), dtype=torch.float64)
    sigma = 0.5
    lik = np.stack([w * multivariate_normal(m, (s**2 + sigma**2) * np.eye(2)).pdf(x.numpy())
                    for m, s, w in zip(means, stds, weights)], 1)
    r = prob.responsibilities(x, sigma)
    np.testing.assert_allclose(r.numpy(), lik / lik.sum(1, keepdims=True), rtol=1e-10)
    lik0 = np.stack([w * multivariate_normal(m, s**2 * np.eye(2)).pdf(x.numpy())
                     for m, s, w in zip(means, stds, weights)], 1)
    np.testing.assert_array_equal(prob.component_of(x).numpy(), lik0.argmax(1))
    # as sigma -> inf the posterior tends to the prior weights
    np.testing.assert_allclose(prob.responsibilities(x, 1e4).numpy(), np.tile(weights, (30, 1)), atol=1e-6)


# ----------------------------------------------------------------- stability
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["gmm-8x8", "empirical"])
def test_denoiser_stable_at_extreme_sigma(dtype: torch.dtype, name: str) -> None:
    if name == "empirical":
        prob = P.empirical(torch.rand(40, 3, generator=_gen(11), dtype=torch.float64) * 2 - 1)
    else:
        prob = P.get(name)
    x = prob.sample(64, _gen(12), dtype=dtype)
    x = torch.cat([x + 0.05 * torch.randn(x.shape, generator=_gen(13), dtype=dtype), x[:4] * 50])  # far outliers too
    for sigma in [0.0, 1e-8, 1e-4, 0.002, 1.0, 80.0, 1e4, 1e6]:
        d = prob.denoiser(x, sigma)
        assert d.dtype == dtype and torch.isfinite(d).all(), sigma
    mean = prob.mean().to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(prob.denoiser(x, 1e6), mean.expand_as(x), rtol=0, atol=tol)
    if name == "gmm-8x8":  # every std > 0: D -> x as sigma -> 0
        torch.testing.assert_close(prob.denoiser(x, 1e-8), x, rtol=0, atol=tol)
        torch.testing.assert_close(prob.denoiser(x, 0.0), x)


def test_empirical_denoiser_returns_nearest_data_point() -> None:
    data = torch.rand(50, 3, generator=_gen(14), dtype=torch.float64) * 2 - 1
    prob = P.empirical(data)
    assert prob.has_atoms and prob.n_components == 50
    x = torch.cat([data[:20] + 0.01 * torch.randn(20, 3, generator=_gen(15), dtype=torch.float64),
                   torch.rand(20, 3, generator=_gen(16), dtype=torch.float64) * 4 - 2])
    nearest = data[torch.cdist(x, data).argmin(1)]
    d2 = torch.cdist(x, data).square().sort(1).values
    gap = (d2[:, 1] - d2[:, 0]).min().item()
    sigma = math.sqrt(gap / (2 * 40))  # runner-up weight below e^-40: the nearest must win to round-off
    torch.testing.assert_close(prob.denoiser(x, sigma), nearest, rtol=0, atol=1e-12)
    torch.testing.assert_close(prob.denoiser(x, 0.0), nearest, rtol=0, atol=0)
    torch.testing.assert_close(prob.denoiser(x, 1e6), data.mean(0).expand_as(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(prob.component_of(x), torch.cdist(x, data).argmin(1))
    with pytest.raises(AysError, match="point masses"):
        prob.log_prob(x)
    with pytest.raises(AysError, match="point masses"):
        prob.score(x, 0.0)


# ---------------------------------------------------------- named problems
@pytest.mark.parametrize(("name", "rows", "cols"), [("gmm-8x8", 8, 8), ("gmm-8x4", 8, 4), ("gmm-6x6", 6, 6)])
def test_grid_geometry(name: str, rows: int, cols: int) -> None:
    prob = P.get(name)
    h = 2.0 / (max(rows, cols) - 1)
    assert prob.n_components == rows * cols and prob.shape == (2,)
    m = prob.means
    assert len(torch.unique(m[:, 0].round(decimals=9))) == cols
    assert len(torch.unique(m[:, 1].round(decimals=9))) == rows
    assert m.abs().max().item() == pytest.approx(1.0)
    assert m.min(0).values.add(m.max(0).values).abs().max() < 1e-12  # centred
    nn = torch.cdist(m, m).fill_diagonal_(torch.inf).min(1).values
    torch.testing.assert_close(nn, torch.full_like(nn, h))
    torch.testing.assert_close(prob.stds, torch.full_like(prob.stds, 0.1 * h))
    torch.testing.assert_close(prob.weights, torch.full_like(prob.weights, 1.0 / (rows * cols)))
    assert (prob.sigma_min, prob.sigma_max) == (0.002, 80.0)


def test_curves_and_registry() -> None:
    assert set(P.names()) >= {"gaussian", "gmm-8x8", "gmm-8x4", "gmm-6x6", "rings", "moons", "swissroll",
                              "digits", "digits-gmm"}
    g = P.get("gaussian")
    assert isinstance(g, P.Gaussian) and g.c == 0.5
    assert P.get("gmm-3x5").n_components == 15
    # rings: samples lie near radii 1/3, 2/3, 1, with mass proportional to circumference
    rings = P.get("rings")
    r = rings.sample(60_000, _gen(17), dtype=torch.float64).norm(dim=1)
    which = torch.bucketize(r, torch.tensor([0.5, 5 / 6], dtype=torch.float64))
    frac = torch.bincount(which, minlength=3).double() / r.numel()
    torch.testing.assert_close(frac, torch.tensor([1 / 6, 1 / 3, 1 / 2], dtype=torch.float64), rtol=0, atol=0.01)
    for name in ("moons", "swissroll", "rings"):
        prob = P.get(name)
        x = prob.sample(2000, _gen(18))
        assert x.abs().max() < 1.3  # unit scale
        assert torch.isfinite(prob.log_prob(x)).all()
        for sigma in (0.002, 0.5, 80.0):
            assert torch.isfinite(prob.denoiser(x, sigma)).all()


# -------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits_raw() -> np.ndarray:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    return load_digits().data


def test_digits_split(digits_raw: np.ndarray) -> None:
    train, test, full = (P.digits_data(s) for s in ("train", "test", "all"))
    assert train.shape == (1437, 1, 8, 8) and test.shape == (360, 1, 8, 8) and full.shape == (1797, 1, 8, 8)
    assert train.dtype == torch.float32
    assert full.min().item() == -1.0 and full.max().item() == 1.0
    torch.testing.assert_close(full, torch.cat([train, test]))
    torch.testing.assert_close(P.digits_data("train"), train)  # deterministic
    # a permutation of scikit-learn's images, scaled by x / 8 - 1
    rows = Counter(map(tuple, ((full.reshape(-1, 64).double() + 1) * 8).round().int().tolist()))
    assert rows == Counter(map(tuple, digits_raw.astype(int).tolist()))
    assert not torch.equal(full.reshape(-1, 64).double(), torch.as_tensor(digits_raw) / 8 - 1)  # shuffled


def test_digits_problems(digits_raw: np.ndarray) -> None:
    train = P.digits_data("train", dtype=torch.float64)
    emp = P.get("digits")
    assert emp.shape == (1, 8, 8) and emp.n_components == 1437 and emp.has_atoms
    x = train[:16].float()
    torch.testing.assert_close(emp.denoiser(x, 1e-3), x)  # the memorising denoiser
    assert emp.sample(8, _gen(19)).shape == (8, 1, 8, 8)

    kde = P.get("digits-gmm")
    s = kde.stds[0].item()
    assert torch.all(kde.stds == s) and 0 < s < 2
    # s maximises the leave-one-out likelihood of one Gaussian per training image
    flat = train.reshape(-1, 64)
    d2 = torch.cdist(flat, flat).square().fill_diagonal_(torch.inf)

    def loo(std: float) -> float:
        n = flat.shape[0]
        lse = torch.logsumexp(-d2 / (2 * std**2), 1) - math.log(n - 1) - 32 * math.log(2 * math.pi * std**2)
        return lse.mean().item()

    assert loo(s) >= loo(s * 1.03) and loo(s) >= loo(s / 1.03)
    xt = P.digits_data("test")[:32]
    assert torch.isfinite(kde.log_prob(xt)).all()
    assert torch.isfinite(kde.denoiser(xt, 0.5)).all()


def test_sklearn_is_imported_lazily_and_missing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import sys, ays.problems as p; p.get('gmm-8x8'); assert 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    PD._digits_permuted.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(AysError, match="scikit-learn"):
            P.digits_data()
    finally:
        PD._digits_permuted.cache_clear()


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stds": [0.1, -0.2]}, r"stds must be >= 0.*stds\[1\]"),
        ({"weights": [0.5, 0.6]}, "weights must sum to 1"),
        ({"weights": [1.5, -0.5]}, r"weights must be >= 0.*weights\[1\]"),
        ({"weights": [1.0]}, r"weights must have shape \[K\]"),
        ({"stds": [0.1, 0.2, 0.3]}, r"stds must be a scalar or have shape \[K\]"),
        ({"shape": (3,)}, "shape"),
        ({"means": [[0.0, float("nan")], [1.0, 1.0]]}, "means must be finite"),
        ({"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min must be below sigma_max"),
    ],
)
def test_bad_mixture_is_refused(kwargs: dict, match: str) -> None:
    args = {"means": [[0.0, 0.0], [1.0, 1.0]], "stds": [0.1, 0.2], "weights": [0.5, 0.5]}
    args.update(kwargs)
    with pytest.raises(AysError, match=match):
        P.gmm(args.pop("means"), args.pop("stds"), args.pop("weights"), **args)


def test_bad_calls_are_refused() -> None:
    prob = _mix()
    x = torch.zeros(4, 2)
    with pytest.raises(AysError, match=r"x has shape \(4, 3\)"):
        prob.denoiser(torch.zeros(4, 3), 1.0)
    with pytest.raises(AysError, match="floating-point"):
        prob.denoiser(torch.zeros(4, 2, dtype=torch.int64), 1.0)
    with pytest.raises(AysError, match="sigma has shape"):
        prob.denoiser(x, torch.ones(3))
    with pytest.raises(AysError, match=">= 0"):
        prob.denoiser(x, -1.0)
    with pytest.raises(AysError, match="finite"):
        prob.denoiser(x, float("nan"))
    with pytest.raises(AysError, match="chunk_size"):
        prob.denoiser(x, 1.0, chunk_size=0)
    with pytest.raises(AysError, match=r"unknown problem 'nope'.*gmm-8x8"):
        P.get("nope")
    with pytest.raises(AysError, match="split"):
        P.digits_data("validation")
    with pytest.raises(AysError, match="c must be"):
        P.gaussian(0.0, 2)
    with pytest.raises(AysError, match="n must be"):
        prob.sample(0)

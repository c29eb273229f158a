"""scikit-learn's bundled 8×8 handwritten digits as exact problems (no download).

``digits`` is the empirical distribution of the 1,437 training digits (the memorising
denoiser), ``digits-gmm`` one Gaussian per training digit with the bandwidth that
maximises the leave-one-out likelihood.
"""

from __future__ import annotations

import functools
import math

import torch

from ..validate import AysError
from .mixture import GaussianMixture, empirical, gmm

__all__ = ["DIGITS_TEST_FRACTION", "digits_data", "digits_empirical", "digits_gmm"]

Tensor = torch.Tensor

DIGITS_TEST_FRACTION = 0.2
_DIGITS_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits_permuted() -> Tensor:
    """All 1,797 digits as ``[N, 1, 8, 8]`` float64 in [-1, 1], in a fixed random order."""
    try:
        from sklearn.datasets import load_digits  # lazy: scikit-learn is an optional dependency
    except ImportError:
        raise AysError(
            "the digits problems need scikit-learn (its bundled 8x8 digits data set): pip install 'ays[digits]'"
        ) from None
    raw = torch.as_tensor(load_digits().data, dtype=torch.float64)  # [1797, 64], values 0..16
    x = raw / 8.0 - 1.0
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(_DIGITS_SEED))
    return x[perm].reshape(-1, 1, 8, 8)


def digits_data(split: str = "train", *, dtype: torch.dtype = torch.float32) -> Tensor:
    """scikit-learn's 8x8 handwritten digits, scaled to [-1, 1], as ``[N, 1, 8, 8]``.

    A fixed permutation (seed 0) splits them: ``"train"`` is the first 80 % (1,437
    images), ``"test"`` the last 20 % (360), ``"all"`` both in that order (1,797).
    """
    if split not in ("train", "test", "all"):
        raise AysError(f"unknown digits split {split!r}; choose one of: all, test, train")
    x = _digits_permuted()
    n_train = math.floor(x.shape[0] * (1.0 - DIGITS_TEST_FRACTION) + 1e-9)
    part = {"train": x[:n_train], "test": x[n_train:], "all": x}[split]
    return part.to(dtype).clone()


def _loo_log_likelihood(d2: Tensor, std: float) -> float:
    """Mean leave-one-out log likelihood of a Gaussian kernel density with bandwidth ``std``.

    ``d2`` is the ``[N, d]``-data's ``[N, N]`` squared-distance matrix with ``inf`` on the
    diagonal; ``d`` is taken as 64 (the digits). ``(1/N) Σ_i log (1/(N-1)) Σ_{j≠i} N(x_i; x_j, std² I)``.
    """
    n, d = d2.shape[0], 64
    lse = torch.logsumexp(d2 * (-0.5 / (std * std)), dim=1)
    return float(lse.mean()) - math.log(n - 1) - 0.5 * d * math.log(2 * math.pi * std * std)


@functools.lru_cache(maxsize=1)
def _digits_loo_std() -> float:
    """Bandwidth of the digits kernel density (one Gaussian per training image) that
    maximises the leave-one-out likelihood: a coarse log grid, then golden section."""
    x = digits_data("train", dtype=torch.float64).reshape(-1, 64)
    d2 = torch.cdist(x, x).square()
    d2.fill_diagonal_(torch.inf)
    f = lambda log_s: _loo_log_likelihood(d2, 10.0**log_s)
    grid_pts = [-2.0 + 0.25 * i for i in range(13)]  # 0.01 .. 10
    vals = [f(g) for g in grid_pts]
    i = max(range(len(vals)), key=vals.__getitem__)
    lo, hi = grid_pts[max(i - 1, 0)], grid_pts[min(i + 1, len(grid_pts) - 1)]
    # Golden-section search on log10(std): the LOO curve is unimodal in the bracket.
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > 1e-4:
        if fa >= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return 10.0 ** ((lo + hi) / 2.0)


def digits_empirical() -> GaussianMixture:
    return empirical(digits_data("train", dtype=torch.float64), name="digits")


def digits_gmm() -> GaussianMixture:
    train = digits_data("train", dtype=torch.float64)
    return gmm(train, _digits_loo_std(), name="digits-gmm")

"""Distances between two sample sets: sliced Wasserstein-2, energy distance, MMD, Fréchet distance.

All take ``x [N, ...]`` and ``y [M, ...]``, flatten them to ``[N, d]`` and compute in float64.

- :func:`sliced_w2` — ``SW2(p, q)² = E_θ W2²(θ#p, θ#q)`` over uniform unit directions θ
  (Rabin et al. 2011; Bonneel et al. 2015). Each 1-D W2 is computed *exactly* between the two
  empirical distributions by matching their quantile functions on the merged grid of
  levels ``{i/N} ∪ {j/M}``, so unequal sizes need no resampling. The standard error is
  over the random directions (not over the samples).
- :func:`energy_distance` — ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (Székely & Rizzo 2004, 2013),
  the unbiased U-statistic (pairs ``i ≠ j`` within a set). Zero iff the laws agree.
- :func:`mmd` — the unbiased MMD² (Gretton et al. 2012, Eq. 3) with the Gaussian kernel
  ``k(a, b) = exp(-|a - b|² / (2 h²))``; by default ``h`` is the median pairwise distance of
  the pooled samples (median heuristic).
- :func:`frechet_distance` — ``|μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^{1/2})`` between Gaussians fitted
  to the two sets (Dowson & Landau 1982; the formula of FID, Heusel et al. 2017).

The U-statistics can be slightly negative when the laws are equal; that is their unbiasedness.
Pairwise work is done block by block, so memory stays bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ays.metrics._common import Estimate, as_samples, pair, pairwise_blocks, sqrt_stderr
from ays.validate import AysError, check_positive, check_steps

__all__ = [
    "SlicedW2",
    "energy_distance",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "median_bandwidth",
    "mmd",
    "sliced_w2",
    "sliced_w2_resampled",
    "sliced_w2_seconds",
]

# float64 numbers per block of sorted projections.
_PROJ_BLOCK = 1 << 23


@dataclass(frozen=True)
class SlicedW2(Estimate):
    """Sliced W2 (``value``, with ``stderr``), its square ``squared`` (with ``squared_stderr``).

    The errors are Monte Carlo errors over the ``projections`` random directions.
    """

    squared: float = 0.0
    squared_stderr: float = 0.0
    projections: int = 0


def _quantile_grid(n: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merged quantile grid of two empirical laws of sizes n and m.

    Levels are integers over the common denominator ``n m``: ``{i m} ∪ {j n}``. On the
    segment ending at level ``L`` the x-quantile is ``xs[ceil(L / m) - 1]`` and the
    y-quantile ``ys[ceil(L / n) - 1]``; the segment has width ``ΔL / (n m)``.
    """
    if n == m:
        idx = torch.arange(n, device=device)
        return idx, idx, torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    levels = torch.cat([torch.arange(1, n + 1, device=device) * m, torch.arange(1, m + 1, device=device) * n])
    levels = torch.unique(levels)  # sorted
    widths = torch.diff(levels, prepend=levels.new_zeros(1)).to(torch.float64) / (n * m)
    ix = (levels + m - 1) // m - 1
    iy = (levels + n - 1) // n - 1
    return ix, iy, widths


def _directions(p: int, d: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``p`` uniform unit directions in ``R^d`` from ``generator`` (a fresh one seeded 0 without), ``[p, d]``."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(p, d, generator=generator, dtype=torch.float64, device=generator.device).to(device)
    norms = theta.norm(dim=1, keepdim=True)
    if (norms == 0).any():  # probability zero, but never divide by it
        raise AysError("drew a zero projection direction; use another generator seed")
    return theta / norms


def sliced_w2(
    x: torch.Tensor,
    y: torch.Tensor,
    projections: int = 256,
    generator: torch.Generator | None = None,
) -> SlicedW2:
    """Sliced Wasserstein-2 distance between two sample sets, with its Monte Carlo error.

    ``SW2² = mean_θ W2²(θᵀx, θᵀy)`` over ``projections`` directions drawn uniformly on the unit
    sphere from ``generator``. Without a generator the directions come from a fresh generator
    seeded 0, so repeated calls use the same directions (common random numbers: comparisons
    between sample sets are then not blurred by direction noise). The 1-D distances are exact
    for the empirical laws, whatever the sizes of ``x`` and ``y``.

    For ``x ~ N(0, I_d)`` and ``y ~ N(m, s² I_d)``: ``W2²(θ) = (m·θ)² + (1 - s)²`` and
    ``E_θ (m·θ)² = |m|² / d``, so ``SW2² = |m|²/d + (1 - s)²``.
    """
    a, b = pair(x, y)
    p = check_steps(projections, name="projections")
    theta = _directions(p, a.shape[1], generator, a.device)
    n, m = a.shape[0], b.shape[0]
    ix, iy, widths = _quantile_grid(n, m, a.device)
    per = torch.empty(p, dtype=torch.float64, device=a.device)
    block = max(1, _PROJ_BLOCK // (n + m))
    for s in range(0, p, block):
        t = theta[s : s + block].T  # [d, b]
        xs = (a @ t).sort(dim=0).values
        ys = (b @ t).sort(dim=0).values
        per[s : s + block] = (widths[:, None] * (xs[ix] - ys[iy]).square()).sum(dim=0)
    sq = float(per.mean())
    sq_se = float(per.std(correction=1)) / math.sqrt(p) if p > 1 else math.inf
    value = math.sqrt(max(sq, 0.0))
    return SlicedW2(value=value, stderr=sqrt_stderr(sq, sq_se), squared=sq, squared_stderr=sq_se, projections=p)


def sliced_w2_resampled(
    sets: list[torch.Tensor] | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    resamples: torch.Tensor,
    projections: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``sliced_w2(s[i], target[i]).value`` for every set ``s`` and every row draw ``i`` (a row of ``resamples``).

    For a bootstrap of coupled samples: row ``k`` of every set goes with row ``k`` of ``target``
    (same size ``n``), and a resample ``i`` (``[n]`` row indices, drawn with replacement) keeps
    them together. The directions are :func:`sliced_w2`'s for ``projections`` and ``generator``,
    so each value equals that call's. But a resample's sorted projections are the original's,
    each repeated as often as its row was drawn: the sets are projected and sorted once, and each
    resample then costs O(n·p) (a gather and a repeat), not a sort. Returns float64
    ``[len(sets), R]``.
    """
    pairs = [pair(s, target) for s in sets]
    b = pairs[0][1]
    n = b.shape[0]
    if any(a.shape[0] != n for a, _ in pairs):
        raise AysError("sliced_w2_resampled: every set must have the target's rows (coupled samples)")
    idx = torch.as_tensor(resamples, device=b.device)
    if idx.ndim != 2 or idx.shape[1] != n:
        raise AysError(f"resamples must be [R, {n}] row indices, got {tuple(idx.shape)}")
    p = check_steps(projections, name="projections")
    theta = _directions(p, b.shape[1], generator, b.device)

    def sorted_once(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        proj = theta @ v.T  # [p, n]: a direction per row, contiguous for the sort
        order = proj.argsort(dim=1)
        return proj.gather(1, order).reshape(-1), order.reshape(-1)

    ordered = [sorted_once(v) for v in (b, *(a for a, _ in pairs))]
    out = torch.empty(len(pairs), idx.shape[0], dtype=torch.float64)
    for r in range(idx.shape[0]):
        counts = torch.bincount(idx[r], minlength=n)
        ys, *xs = (torch.repeat_interleave(v, counts.index_select(0, o), output_size=n * p).reshape(p, n)
                   for v, o in ordered)
        for k, xk in enumerate(xs):
            per = (xk - ys).square().sum(dim=1) / n
            out[k, r] = math.sqrt(max(float(per.mean()), 0.0))
    return out


def sliced_w2_seconds(rows: int, dim: int, projections: int = 256) -> tuple[float, float]:
    """``(one, resample)``: wall seconds, timed here, of one :func:`sliced_w2` between two ``rows``-row
    sets in ``dim`` dimensions, and of one more resample of :func:`sliced_w2_resampled` for two sets
    against a ``2·rows``-row target (a gate's bootstrap): what a method's evidence costs besides the model.
    """
    import time

    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    start = time.perf_counter()
    sliced_w2(x, x.flip(0), projections=projections)
    one = time.perf_counter() - start
    both = torch.cat([x, x.flip(0)])
    spent = []
    for r in (1, 3):  # the difference is the resamples' own cost, without the sorts made once
        draws = torch.randint(0, both.shape[0], (r, both.shape[0]), generator=g)
        start = time.perf_counter()
        sliced_w2_resampled([both, both.flip(0)], both, draws, projections=projections)
        spent.append(time.perf_counter() - start)
    return one, max(spent[1] - spent[0], 0.0) / 2


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased energy distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` between two sample sets.

    Within-set means run over pairs ``i ≠ j`` (U-statistic), so the estimate has mean exactly 0
    when both sets come from the same law (it may then be slightly negative). For 1-D
    Gaussians ``N(μ1, s1²)``, ``N(μ2, s2²)`` with ``δ = μ1 - μ2`` and ``s² = s1² + s2²``:
    ``E|X-Y| = s √(2/π) exp(-δ²/2s²) + δ (1 - 2Φ(-δ/s))`` and ``E|X-X'| = 2 s1/√π``.
    Needs at least 2 samples in each set. Cost ``O((N + M)²)``, memory bounded by blocks.
    """
    a, b = pair(x, y, min_n=2)
    n, m = a.shape[0], b.shape[0]
    sxy = sum(float(blk.sum()) for _, blk in pairwise_blocks(a, b))
    sxx = sum(float(blk.sum()) for _, blk in pairwise_blocks(a, a))  # diagonal is exactly 0
    syy = sum(float(blk.sum()) for _, blk in pairwise_blocks(b, b))
    return 2.0 * sxy / (n * m) - sxx / (n * (n - 1)) - syy / (m * (m - 1))


def median_bandwidth(*sets: torch.Tensor, max_points: int = 2048) -> float:
    """Median pairwise Euclidean distance of the pooled sets (the median heuristic for ``h``).

    At most ``max_points`` points are used, taken at an even stride (deterministic). Pass the
    result to :func:`mmd` to compare several sample sets against one reference with one kernel.
    """
    if not sets:
        raise AysError("median_bandwidth needs at least one sample set")
    flat = [as_samples(s, name=f"set {i}") for i, s in enumerate(sets)]
    dims = {f.shape[1] for f in flat}
    if len(dims) != 1:
        raise AysError(f"sample sets have different dimensions: {sorted(dims)}")
    pooled = torch.cat([f.to(flat[0].device) for f in flat])
    if pooled.shape[0] < 2:
        raise AysError("median_bandwidth needs at least 2 points")
    if pooled.shape[0] > max_points:
        step = pooled.shape[0] / max_points
        pooled = pooled[(torch.arange(max_points, dtype=torch.float64) * step).long().to(pooled.device)]
    dist = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1, device=pooled.device)
    h = float(dist[iu[0], iu[1]].median())
    if h <= 0:
        raise AysError("median pairwise distance is 0 (most points coincide); pass a bandwidth")
    return h


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel.

    ``MMD² = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)`` with
    ``k(a, b) = exp(-|a - b|² / (2 h²))`` (Gretton et al. 2012, Eq. 3). ``bandwidth`` is ``h``;
    by default the median pairwise distance of the pooled samples (:func:`median_bandwidth`).
    The heuristic depends on the samples, so when ranking several sample sets against one
    reference, fix ``h`` once (e.g. ``median_bandwidth(reference)``).

    For ``X ~ N(μ1, s1² I_d)``, ``Y ~ N(μ2, s2² I_d)``:
    ``E k(X, Y) = (h² / (h² + s1² + s2²))^{d/2} exp(-|μ1 - μ2|² / (2 (h² + s1² + s2²)))``.
    """
    a, b = pair(x, y, min_n=2)
    h = median_bandwidth(a, b) if bandwidth is None else check_positive(bandwidth, name="bandwidth")
    n, m = a.shape[0], b.shape[0]
    inv = -0.5 / (h * h)

    def ksum(u: torch.Tensor, v: torch.Tensor) -> float:
        return sum(float(torch.exp(blk.square() * inv).sum()) for _, blk in pairwise_blocks(u, v))

    # Diagonal distances are exactly 0, so each within-set sum holds exactly n (or m) ones.
    kxx = (ksum(a, a) - n) / (n * (n - 1))
    kyy = (ksum(b, b) - m) / (m * (m - 1))
    kxy = ksum(a, b) / (n * m)
    return kxx + kyy - 2.0 * kxy


def gaussian_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` of a sample set, in float64."""
    a = as_samples(x, name="x", min_n=2)
    mu = a.mean(dim=0)
    c = a - mu
    return mu, (c.T @ c) / (a.shape[0] - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix by eigen-decomposition."""
    evals, evecs = torch.linalg.eigh(0.5 * (s + s.T))
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_from_stats(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet (W2²) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    ``|μ1 - μ2|² + tr Σ1 + tr Σ2 - 2 tr (Σ1 Σ2)^{1/2}``. The trace term is computed stably as
    ``Σ sqrt(eig(Σ1^{1/2} Σ2 Σ1^{1/2}))`` (a symmetric PSD matrix with the eigenvalues of
    ``Σ1 Σ2``), which avoids the complex round-off of a general ``sqrtm``.
    """
    mu1, mu2 = (torch.as_tensor(v).to(torch.float64).reshape(-1) for v in (mu1, mu2))
    c1, c2 = (torch.as_tensor(v).to(torch.float64) for v in (cov1, cov2))
    d = mu1.numel()
    if mu2.numel() != d or c1.shape != (d, d) or c2.shape != (d, d):
        raise AysError(
            f"Gaussian statistics do not match: means {mu1.numel()} and {mu2.numel()}, "
            f"covariances {tuple(c1.shape)} and {tuple(c2.shape)}"
        )
    c2 = c2.to(c1.device)
    r1 = _psd_sqrt(c1)
    inner = r1 @ c2 @ r1
    tr_sqrt = float(torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp(min=0).sqrt().sum())
    fd = float((mu1 - mu2.to(mu1.device)).square().sum()) + float(torch.trace(c1) + torch.trace(c2)) - 2 * tr_sqrt
    # The distance is >= 0; only round-off can take it below.
    return max(fd, 0.0)


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets.

    The estimate is biased upwards by ``O(d / N)``; compare values computed at equal sample sizes.
    """
    a, b = pair(x, y, min_n=2)
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))

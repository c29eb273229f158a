"""Mode coverage: how much of the samples' mass lands in each mode of a Gaussian mixture.

NLL and even a distance can hide that a sampler moves mass between modes (for a 2-D
grid, an over-aligned schedule can empty the outer ring of modes while the NLL improves).
This metric counts it directly.

Each sample is assigned to the component of highest posterior responsibility under the
clean mixture (sigma = 0),

    k(x) = argmax_k  log w_k - d log s_k - |x - mu_k|² / (2 s_k²),

which for equal weights and stds is the nearest mean. A sample farther than ``radius``
component standard deviations from *every* mean is "off-mode" and assigned to none. The
default radius is the one outside which an exact component leaves ``1e-4`` of its mass,
``sqrt(chi2_d.isf(1e-4))`` (≈ 4.3 std in 2-D, 3.9 std in 1-D, ≈ 9.9 std in 64-D), so that
exact samples are almost never off-mode whatever the dimension.

The result holds the fraction of all samples per mode against the truth (the weights),
its binomial standard error, the total variation distance between the two (the off-mode
samples form one more bin, of true mass ≈ 0), the TV that exact samples of the same size
show on average from sampling noise alone, and the dropped modes: those whose count is
below ``drop_fraction`` of the expected count ``w_k N``. A mode is only judged when its
expected count is at least ``min_expected`` (below that, an empty mode is not evidence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import chi2

from ays.metrics._common import _BLOCK, Estimate, as_samples
from ays.validate import AysError, check_positive

__all__ = ["ModeCoverage", "grid_rings", "mixture_parameters", "mode_coverage"]


def mixture_parameters(problem: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(means [K, d], stds [K], weights [K])`` in float64 from an isotropic Gaussian mixture.

    Accepts an object with ``means``, ``stds`` and ``weights`` attributes (``ays.problems``'
    GaussianMixture), or one holding such an object as ``.mixture``.
    """
    obj = problem
    if not all(hasattr(obj, a) for a in ("means", "stds", "weights")):
        obj = getattr(problem, "mixture", None)
    if obj is None or not all(hasattr(obj, a) for a in ("means", "stds", "weights")):
        raise AysError(
            f"mode_coverage needs a Gaussian mixture (with means, stds and weights), got {type(problem).__name__}"
        )
    means = torch.as_tensor(obj.means).detach().to(torch.float64)
    if means.ndim != 2:
        raise AysError(f"mixture means must have shape [K, d], got {tuple(means.shape)}")
    k = means.shape[0]
    stds = torch.as_tensor(obj.stds).detach().to(device=means.device, dtype=torch.float64).reshape(-1)
    if stds.numel() == 1:
        stds = stds.expand(k).clone()
    weights = torch.as_tensor(obj.weights).detach().to(device=means.device, dtype=torch.float64).reshape(-1)
    if stds.numel() != k or weights.numel() != k:
        raise AysError(f"mixture has {k} means but {stds.numel()} stds and {weights.numel()} weights")
    if not (stds > 0).all():
        raise AysError(
            "mode coverage needs every component std > 0 (a point mass has no radius); "
            "for an empirical problem use precision_recall or a distance"
        )
    if (weights < 0).any() or not math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6):
        raise AysError(f"mixture weights must be non-negative and sum to 1, got sum {float(weights.sum())}")
    return means, stds, weights


@dataclass(frozen=True)
class ModeCoverage:
    """Mass per mode of a sample set against the true mixture weights (see the module docstring).

    Attributes:
        counts: samples assigned to each mode, ``[K]`` (int64).
        fractions: ``counts / n`` (off-mode samples are in the denominator), ``[K]`` float64.
        stderr: binomial standard error of each fraction, ``sqrt(f (1 - f) / n)``.
        weights: the true mass of each mode, ``[K]``.
        tv: total variation distance between (fractions, off_mode) and (weights, 0).
        tv_noise: the TV that exact samples of size ``n`` show on average (normal approximation,
            ``Σ_k sqrt(w_k (1 - w_k) / (2 π n))``); a ``tv`` well above it is a real mass error.
        dropped: indices of the modes judged dropped.
        judged: which modes had enough expected samples (``w_k n >= min_expected``) to be judged.
        off_mode: fraction of samples farther than ``radius`` stds from every mode.
        n: number of samples.
        radius: the off-mode radius used, in component standard deviations.
    """

    counts: torch.Tensor
    fractions: torch.Tensor
    stderr: torch.Tensor
    weights: torch.Tensor
    tv: float
    tv_noise: float
    dropped: tuple[int, ...]
    judged: torch.Tensor
    off_mode: float
    n: int
    radius: float

    @property
    def n_dropped(self) -> int:
        """Number of modes judged dropped."""
        return len(self.dropped)

    def mass(self, components: Sequence[int] | torch.Tensor) -> tuple[Estimate, float]:
        """Observed mass of a group of modes (with its binomial error) and its true mass.

        ``components`` is a list of mode indices or a boolean mask ``[K]``; e.g. the outer ring of
        a grid is ``cov.mass(grid_rings(means) == 0)``.
        """
        idx = torch.as_tensor(components, device=self.counts.device)
        if idx.dtype == torch.bool:
            if idx.shape != self.counts.shape:
                raise AysError(f"mask must have shape {tuple(self.counts.shape)}, got {tuple(idx.shape)}")
            idx = idx.nonzero().reshape(-1)
        idx = idx.long().reshape(-1).unique()
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.counts.numel()):
            raise AysError(f"mode indices must lie in [0, {self.counts.numel()}), got {idx.tolist()}")
        f = float(self.counts[idx].sum()) / self.n
        se = math.sqrt(f * (1.0 - f) / self.n)
        return Estimate(value=f, stderr=se), float(self.weights[idx].sum())

    def __str__(self) -> str:
        return (
            f"ModeCoverage(n={self.n}, modes={self.counts.numel()}, tv={self.tv:.4f} "
            f"(noise ≈ {self.tv_noise:.4f}), dropped={list(self.dropped)}, off_mode={self.off_mode:.4f})"
        )


def mode_coverage(
    samples: torch.Tensor,
    problem: Any,
    *,
    radius: float | None = None,
    drop_fraction: float = 0.1,
    min_expected: float = 10.0,
) -> ModeCoverage:
    """Assign samples to mixture components and compare the mass per mode with the truth.

    Args:
        samples: ``[N, ...]`` samples, flattened to the mixture's dimension ``d``.
        problem: an isotropic Gaussian mixture (``means [K, d]``, ``stds [K]``, ``weights [K]``), or an
            object holding one as ``.mixture``.
        radius: off-mode radius in component stds; default ``sqrt(chi2_d.isf(1e-4))``.
        drop_fraction: a judged mode is dropped when it holds fewer than this fraction of its
            expected count ``w_k N``.
        min_expected: modes whose expected count is below this are not judged.

    Returns:
        A :class:`ModeCoverage`.
    """
    means, stds, weights = mixture_parameters(problem)
    x = as_samples(samples, name="samples").to(means.device)
    n, d = x.shape
    if d != means.shape[1]:
        raise AysError(f"samples have {d} features but the mixture lives in {means.shape[1]} dimensions")
    if radius is None:
        radius = math.sqrt(float(chi2.isf(1e-4, d)))
    radius = check_positive(radius, name="radius")
    drop_fraction = check_positive(drop_fraction, name="drop_fraction", allow_zero=True)
    if drop_fraction > 1:
        raise AysError(f"drop_fraction must be at most 1, got {drop_fraction}")
    min_expected = check_positive(min_expected, name="min_expected", allow_zero=True)

    k = means.shape[0]
    # Posterior log-responsibility up to a constant; -inf for zero-weight components.
    log_prior = torch.log(weights) - d * torch.log(stds)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    off = torch.empty(n, dtype=torch.bool, device=x.device)
    rows = max(1, _BLOCK // k)
    for s in range(0, n, rows):
        dist = torch.cdist(x[s : s + rows], means, compute_mode="donot_use_mm_for_euclid_dist")  # [b, K]
        z = dist / stds  # distance in component stds
        labels[s : s + rows] = (log_prior - 0.5 * z.square()).argmax(dim=1)
        off[s : s + rows] = z.min(dim=1).values > radius

    counts = torch.bincount(labels[~off], minlength=k)
    fractions = counts.to(torch.float64) / n
    stderr = (fractions * (1 - fractions) / n).sqrt()
    off_frac = float(off.sum()) / n
    tv = 0.5 * (float((fractions - weights).abs().sum()) + off_frac)
    tv_noise = float((weights * (1 - weights) / (2 * math.pi * n)).sqrt().sum())
    expected = weights * n
    judged = expected >= min_expected
    dropped_mask = judged & (counts.to(torch.float64) < drop_fraction * expected)
    dropped = tuple(int(i) for i in dropped_mask.nonzero().reshape(-1))
    return ModeCoverage(
        counts=counts,
        fractions=fractions,
        stderr=stderr,
        weights=weights,
        tv=tv,
        tv_noise=tv_noise,
        dropped=dropped,
        judged=judged,
        off_mode=off_frac,
        n=n,
        radius=radius,
    )


def grid_rings(means: torch.Tensor, *, tol: float = 1e-6) -> torch.Tensor:
    """Ring index of each mode of a 2-D rectangular grid: 0 for the outer ring, 1 the next, ...

    ``means [K, 2]`` must form a full ``rows × cols`` grid (in any order). The ring of the
    mode in column ``i`` and row ``j`` is ``min(i, j, cols - 1 - i, rows - 1 - j)``. With
    :meth:`ModeCoverage.mass` this gives the mass per ring, e.g. the outer-ring mass.
    """
    m = torch.as_tensor(means).detach().to(torch.float64).cpu()
    if m.ndim != 2 or m.shape[1] != 2:
        raise AysError(f"grid_rings needs 2-D means of shape [K, 2], got {tuple(m.shape)}")
    scale = float((m.max(dim=0).values - m.min(dim=0).values).max()) or 1.0
    idx = []
    sizes = []
    for c in range(2):
        q = torch.round(m[:, c] / (scale * tol))
        levels, inverse = torch.unique(q, return_inverse=True)
        idx.append(inverse)
        sizes.append(levels.numel())
    cols, rows = sizes
    if cols * rows != m.shape[0] or torch.unique(idx[0] * rows + idx[1]).numel() != m.shape[0]:
        raise AysError(f"means do not form a full rectangular grid ({m.shape[0]} means, {cols}×{rows} levels)")
    i, j = idx
    return torch.minimum(torch.minimum(i, j), torch.minimum(cols - 1 - i, rows - 1 - j))

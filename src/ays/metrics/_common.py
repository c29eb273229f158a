"""Shared plumbing for the metrics: input checks, float64 flattening, chunked pairwise distances.

Every metric flattens its inputs ``[N, ...]`` to ``[N, d]`` and computes in float64, so that
differences between good samplers (often in the third decimal) are not lost to rounding.
Pairwise work is done in row blocks so that memory stays bounded (about ``_BLOCK`` float64
numbers per block) whatever the sample sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ays.validate import AysError, check_batch

__all__ = ["Estimate", "as_samples", "pair", "pairwise_blocks"]

# Elements (float64) per block of a pairwise matrix: 2**22 numbers = 32 MiB.
_BLOCK = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate: ``value`` with its standard error ``stderr``.

    ``float(est)`` gives the value, so an Estimate can be used where a number is expected.
    """

    value: float
    stderr: float

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:.6g} ± {self.stderr:.2g}"


def as_samples(x: torch.Tensor, *, name: str = "samples", min_n: int = 1) -> torch.Tensor:
    """Check ``x`` (floating, ``[N, ...]``, finite) and return it as a float64 ``[N, d]`` tensor.

    A metric computed on NaN samples would be a silent NaN, so non-finite values are refused.
    """
    check_batch(x, name=name)
    if x.shape[0] < min_n:
        raise AysError(f"{name} needs at least {min_n} samples, got {x.shape[0]}")
    x = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise AysError(f"{name} has no features (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise AysError(f"{name} contains NaN or inf ({bad} of {x.shape[0]} samples)")
    return x


def pair(
    x: torch.Tensor, y: torch.Tensor, *, names: tuple[str, str] = ("x", "y"), min_n: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten two sample sets, check they live in the same space, put ``y`` on ``x``'s device."""
    a = as_samples(x, name=names[0], min_n=min_n)
    b = as_samples(y, name=names[1], min_n=min_n)
    if a.shape[1] != b.shape[1]:
        raise AysError(
            f"{names[0]} and {names[1]} have different dimensions: {tuple(x.shape[1:])} "
            f"({a.shape[1]} features) vs {tuple(y.shape[1:])} ({b.shape[1]} features)"
        )
    return a, b.to(a.device)


def pairwise_blocks(a: torch.Tensor, b: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, D)`` where ``D[i, j] = |a[start + i] - b[j]|`` (Euclidean), block by block.

    Distances are computed directly (not via ``|a|² + |b|² - 2ab``), so a point's distance to
    itself is exactly 0: the unbiased U-statistics rely on that to drop the diagonal.
    """
    rows = max(1, _BLOCK // max(1, b.shape[0]))
    for start in range(0, a.shape[0], rows):
        yield start, torch.cdist(a[start : start + rows], b, compute_mode="donot_use_mm_for_euclid_dist")


def sqrt_stderr(value_sq: float, stderr_sq: float) -> float:
    """Standard error of ``sqrt(m)`` from that of ``m`` (delta method); 0 when both are 0."""
    if value_sq <= 0.0:
        return math.sqrt(stderr_sq) if stderr_sq > 0 else 0.0
    return stderr_sq / (2.0 * math.sqrt(value_sq))

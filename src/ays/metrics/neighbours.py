"""Improved precision and recall by k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019).

The manifold of a sample set is the union of balls centred on its points, each with
radius the distance to that point's k-th nearest neighbour within the set (the point
itself excluded). Then

- precision = fraction of *generated* samples inside the manifold of the reference set
  (are the samples realistic?),
- recall    = fraction of *reference* samples inside the manifold of the generated set
  (is the reference covered? dropped modes lower it).

Both are binomial proportions; their standard errors ``sqrt(p (1 - p) / n)`` treat the
manifold as fixed. With equal laws both are close to, but below, 1 (how close depends
on k and the dimension); compare values computed at equal sizes and equal k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ays.metrics._common import Estimate, pair, pairwise_blocks
from ays.validate import AysError, check_steps

__all__ = ["PrecisionRecall", "knn_radii", "precision_recall"]


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision and recall (each an :class:`Estimate`) with the ``k`` used."""

    precision: Estimate
    recall: Estimate
    k: int

    def __str__(self) -> str:
        return f"PrecisionRecall(precision={self.precision}, recall={self.recall}, k={self.k})"


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point of ``x [N, d]`` to its k-th nearest neighbour in ``x`` (itself excluded)."""
    n = x.shape[0]
    if k >= n:
        raise AysError(f"k={k} needs more than {k} points in each set, got {n}")
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    for s, blk in pairwise_blocks(x, x):
        # The smallest distance of each row is the point itself (exactly 0); the (k+1)-th is the k-th neighbour.
        out[s : s + blk.shape[0]] = blk.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each point lies in some ball ``|p - c_j| <= r_j``."""
    inside = torch.empty(points.shape[0], dtype=torch.bool, device=points.device)
    for s, blk in pairwise_blocks(points, centres):
        inside[s : s + blk.shape[0]] = (blk <= radii).any(dim=1)
    return inside


def _proportion(mask: torch.Tensor) -> Estimate:
    p = float(mask.double().mean())
    return Estimate(value=p, stderr=math.sqrt(p * (1 - p) / mask.numel()))


def precision_recall(samples: torch.Tensor, reference: torch.Tensor, *, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of ``samples`` (generated) against ``reference`` (real data).

    Args:
        samples: generated samples ``[N, ...]``.
        reference: reference (real) samples ``[M, ...]`` of the same shape per sample.
        k: neighbour rank that sets each ball's radius (the paper uses 3).
    """
    k = check_steps(k, name="k")
    gen, ref = pair(samples, reference, names=("samples", "reference"))
    precision = _inside(gen, ref, knn_radii(ref, k))
    recall = _inside(ref, gen, knn_radii(gen, k))
    return PrecisionRecall(precision=_proportion(precision), recall=_proportion(recall), k=k)

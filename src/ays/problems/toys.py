"""Toy geometries in 2-D: the paper's grid of Gaussians, rings, moons and a swiss roll.

Each is an isotropic Gaussian mixture (:mod:`ays.problems.mixture`), so its denoiser is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..validate import AysError
from .mixture import GaussianMixture, gmm

__all__ = ["grid", "moons", "rings", "swissroll"]

Tensor = torch.Tensor


def grid(rows: int, cols: int, *, name: str | None = None) -> GaussianMixture:
    """A ``rows × cols`` grid of equal-weight isotropic Gaussians in 2-D (the paper's toy shape).

    Unit scale: the longer side spans [-1, 1], spacing ``h = 2 / (max(rows, cols) - 1)``,
    the grid centred at 0, std ``0.1 h``. Columns run along the first coordinate, rows
    along the second. Noise range 0.002..80.
    """
    for v, what in ((rows, "rows"), (cols, "cols")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise AysError(f"{what} must be a positive integer, got {v!r}")
    if max(rows, cols) < 2:
        raise AysError("a grid needs at least 2 modes along one side")
    h = 2.0 / (max(rows, cols) - 1)
    xs = (torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2) * h
    ys = (torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2) * h
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    return gmm(means, 0.1 * h, name=name or f"gmm-{rows}x{cols}")


def _along_curve(points: Tensor, std: float, name: str) -> GaussianMixture:
    # Equal weights per component: with centres spaced below ~1.6 std the mixture is a
    # smooth band (the ripple of a sum of Gaussians spaced h is ~2 exp(-2π² std²/h²)).
    return gmm(points, std, name=name)


def rings(radii: Sequence[float] = (1 / 3, 2 / 3, 1.0), per_unit: int = 96, std: float = 0.04) -> GaussianMixture:
    """Concentric rings, each approximated by equal small Gaussians on a circle.

    Ring of radius r gets ``round(per_unit * r)`` components, so mass is proportional to
    circumference (uniform along the rings); 32 + 64 + 96 = 192 components, std 0.04.
    """
    pts = []
    for r in radii:
        m = max(3, round(per_unit * r))
        t = torch.arange(m, dtype=torch.float64) * (2 * math.pi / m)
        pts.append(torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1))
    return _along_curve(torch.cat(pts), std, "rings")


def moons(per_moon: int = 50, std: float = 0.05) -> GaussianMixture:
    """Two interleaved half circles (scikit-learn's ``make_moons`` geometry) as a mixture.

    Upper moon ``(cos t, sin t)``, lower ``(1 - cos t, 0.5 - sin t)``, t in [0, π], then
    centred and scaled by 2/3 so that x spans [-1, 1]; 50 components per moon, std 0.05.
    """
    t = torch.linspace(0.0, math.pi, per_moon, dtype=torch.float64)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    pts = (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)) * (2.0 / 3.0)
    return _along_curve(pts, std, "moons")


def swissroll(n: int = 200, std: float = 0.03) -> GaussianMixture:
    """A 2-D swiss roll ``t (cos t, sin t) / (4.5π)``, t uniform on [1.5π, 4.5π] (as scikit-learn).

    200 equal components at evenly spaced t, std 0.03; the roll fits in the unit disc.
    """
    t = torch.linspace(1.5 * math.pi, 4.5 * math.pi, n, dtype=torch.float64)
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / (4.5 * math.pi)
    return _along_curve(pts, std, "swissroll")

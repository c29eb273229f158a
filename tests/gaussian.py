"""Gaussian data N(0, c²I), the problem whose every answer is known in closed form."""

from __future__ import annotations

from collections.abc import Callable

import torch


def gaussian_denoiser(c: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact denoiser of N(0, c²I): D(x, σ) = c²/(c² + σ²)·x."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return c * c / (c * c + s * s) * x

    return denoise


def gaussian_data(c: float, dim: int) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``data(n, generator)``: n float64 samples of N(0, c²I) in ``dim`` dimensions."""
    return lambda n, g: c * torch.randn(n, dim, generator=g, dtype=torch.float64)

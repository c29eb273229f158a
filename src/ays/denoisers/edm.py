"""EDM preconditioning (Karras et al. 2022, eq. 7 and Table 1): ``D = c_skip x + c_out F(c_in x, c_noise)``.

The four coefficient functions (:func:`edm_coefficients`), the loss weight that makes
the raw network's loss unit-weight at every level (:func:`edm_loss_weight`), the raw
network's effective target (:func:`edm_target`, eq. 8) and the adapter around a raw
network (:class:`EDMPrecond`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from ..validate import AysError, check_positive
from .base import affine, batch_sigma, check_eps, coefficient, exact_at_zero, network_output, work_dtype

__all__ = ["EDMCoefficients", "EDMPrecond", "edm_coefficients", "edm_loss_weight", "edm_target"]

Tensor = torch.Tensor


class EDMCoefficients(NamedTuple):
    """The four EDM preconditioning functions at given noise levels (Karras et al. 2022, Table 1)."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def edm_coefficients(sigma: Tensor | float, sigma_data: float = 0.5) -> EDMCoefficients:
    """EDM's preconditioning (Karras et al. 2022, Table 1, "Ours"), for ``D = c_skip x + c_out F(c_in x, c_noise)``:

    - ``c_skip = sd² / (σ² + sd²)``
    - ``c_out  = σ·sd / sqrt(σ² + sd²)``
    - ``c_in   = 1 / sqrt(σ² + sd²)``
    - ``c_noise = ln(σ) / 4``

    with ``sd = sigma_data``. ``c_in`` gives the network input unit variance and
    ``c_skip`` minimises the variance of the effective target, which ``c_out``
    then scales to one (eq. 8 and App. B.6). Computed elementwise in ``sigma``'s
    dtype and device (a Python number becomes float64). At ``σ = 0``:
    ``c_skip = 1``, ``c_out = 0``, ``c_in = 1/sd`` and ``c_noise = -inf``.
    """
    sd = check_positive(sigma_data, name="sigma_data")
    s = torch.as_tensor(sigma) if isinstance(sigma, Tensor) else torch.as_tensor(sigma, dtype=torch.float64)
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if torch.isnan(s).any():
        raise AysError("sigma must not be NaN")
    if (s < 0).any():
        raise AysError(f"sigma must be >= 0, got {s.min().item()}")
    r = torch.rsqrt(s**2 + sd**2)
    return EDMCoefficients(
        c_skip=sd**2 * r**2,
        c_out=s * sd * r,
        c_in=r,
        c_noise=torch.log(s) / 4,
    )


def edm_loss_weight(sigma: Tensor | float, sigma_data: float = 0.5) -> Tensor:
    """EDM's loss weight ``λ(σ) = (σ² + sd²) / (σ·sd)²`` (Karras et al. 2022, Table 1).

    ``λ = 1 / c_out²``, so ``λ(σ)·||D(x, σ) - x0||² = ||F - F_target||²`` with
    ``F_target`` from :func:`edm_target`: the network sees a unit-weight loss at
    every noise level (eq. 8). Infinite at ``σ = 0``.
    """
    c = edm_coefficients(sigma, sigma_data)
    return 1 / c.c_out**2


def edm_target(x0: Tensor, eps: Tensor, sigma: Tensor | float, sigma_data: float = 0.5) -> Tensor:
    """The effective training target of EDM's raw network ``F`` (Karras et al. 2022, eq. 8).

    With ``x = x0 + σ·eps``: ``F_target = (x0 - c_skip·x) / c_out``, evaluated in the
    algebraically equal form ``(σ·x0 - sd²·eps) / (sd·sqrt(σ² + sd²))``, which
    has no ``0/0`` at ``σ = 0``. For data of variance ``sd²`` it has unit variance.
    Returned in ``x0``'s dtype.
    """
    check_eps(x0, eps)
    sd = check_positive(sigma_data, name="sigma_data")
    s = batch_sigma(x0, sigma)
    a = s / (sd * torch.sqrt(s**2 + sd**2))
    b = -sd / torch.sqrt(s**2 + sd**2)
    return affine(x0, eps, a, b)


class EDMPrecond(nn.Module):
    """EDM preconditioning around a raw network ``F`` (Karras et al. 2022, eq. 7, Table 1).

    ``D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ), **cond)`` with the
    coefficients of :func:`edm_coefficients`. ``net`` is called as
    ``net(x_in, c_noise, **cond)``, ``c_noise`` of shape ``[batch]`` (the
    signature of :mod:`ays.nets` and of EDM's ``SongUNet`` / ``DhariwalUNet``).
    At ``σ = 0`` it returns ``x`` (``c_skip = 1``, ``c_out = 0``) without calling ``net``.
    """

    def __init__(self, net: Callable[..., Any], sigma_data: float = 0.5) -> None:
        super().__init__()
        if not callable(net):
            raise AysError(f"net must be callable, got {type(net).__name__}")
        self.net = net
        self.sigma_data = check_positive(sigma_data, name="sigma_data")

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}"

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        def denoise(s: Tensor) -> Tensor:
            c = edm_coefficients(s, self.sigma_data)
            w = work_dtype(x)
            x_in = (coefficient(c.c_in, x) * x.to(w)).to(x.dtype)
            c_noise = c.c_noise.to(device=x.device, dtype=w)
            f = network_output(self.net(x_in, c_noise, **cond), x, what="net")
            return affine(x, f, c.c_skip, c.c_out)

        # Rows at sigma = 0 are answered by x itself; the network sees a harmless level there.
        return exact_at_zero(x, batch_sigma(x, sigma), self.sigma_data, denoise)

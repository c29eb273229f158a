"""Networks trained in another parametrisation, seen as EDM denoisers: epsilon, v, x0 and flow velocity.

A network predicting ``y`` of prediction type ``epsilon`` (Ho et al. 2020), ``v``
(Salimans & Ho 2022), ``x0`` or ``flow`` velocity (rectified flow / flow matching) is
turned into ``x0`` by equation (1) of :mod:`ays.denoisers.base` with the coefficients of
:func:`conversion`; :func:`target_for` is the inverse direction (the regression target
of each type given ``x0``, ``eps`` and ``sigma``), for training and tests.
:class:`ModelDenoiser` calls the network as ``model(x_model, t, **cond)`` with
``x_model = alpha(sigma)·x`` and ``t = noise.t(sigma)`` (:mod:`ays.noise` keeps the
schedule apart from the adapter, as DPM-Solver does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..noise import DiscreteVP, NoiseSchedule
from ..validate import AysError, check_choice, check_positive
from .base import (
    affine,
    alpha_at,
    batch_sigma,
    check_eps,
    check_noise,
    coefficient,
    exact_at_zero,
    network_output,
    work_dtype,
)

__all__ = ["PREDICTIONS", "ModelDenoiser", "NoiseRange", "conversion", "denoised_from", "prediction_name", "target_for"]

Tensor = torch.Tensor

#: The prediction types, by their canonical names.
PREDICTIONS: tuple[str, ...] = ("epsilon", "v", "x0", "flow")

# Other names in use for the same things (diffusers' ``prediction_type`` values among them).
_ALIASES: dict[str, str] = {
    "epsilon": "epsilon",
    "eps": "epsilon",
    "v": "v",
    "v_prediction": "v",
    "x0": "x0",
    "sample": "x0",
    "flow": "flow",
    "flow_prediction": "flow",
}

# A noise level above the model's largest one by more than this (relative) is a
# mistake, not float32 round-off or a published table rounded to 5 digits.
_RANGE_RTOL = 1e-3


def prediction_name(prediction: str) -> str:
    """The canonical name (one of :data:`PREDICTIONS`) of a prediction type or its alias.

    Accepted aliases: ``eps``; ``v_prediction``; ``sample`` (diffusers' name for x0);
    ``flow_prediction``.
    """
    if not isinstance(prediction, str):
        raise AysError(f"prediction type must be a string, got {prediction!r}")
    check_choice(prediction, _ALIASES, what="prediction type")
    return _ALIASES[prediction]


def conversion(prediction: str, sigma: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` of equation (1) for a network predicting ``prediction``.

    The model state is ``x_model = a·x0 + s·eps`` with ``a = alpha(σ)`` and
    ``s = a·σ`` (so ``x_model = a·x`` for the EDM state ``x = x0 + σ·eps``):

    - ``epsilon`` (Ho et al. 2020): ``x0 = x - σ·eps``  → ``(1, -σ)``.
    - ``x0`` ("sample"): ``x0 = y``  → ``(0, 1)``.
    - ``v`` (Salimans & Ho 2022, ``v = a·eps - s·x0``): ``x0 = (a·x_model - s·v)/(a² + s²)``
      → ``(1/(1+σ²), -σ/(a·(1+σ²)))``. For VP models (``a = 1/sqrt(1+σ²)``,
      ``a² + s² = 1``) this is the familiar ``x0 = a·x_model - s·v``.
    - ``flow`` (rectified flow / flow matching, ``v = eps - x0``):
      ``x0 = (x_model - s·v)/(a + s)`` → ``(1/(1+σ), -σ/(1+σ))``; for flow
      models (``a = 1 - t``, ``s = t``) this is ``x0 = x_t - t·v``.

    ``sigma`` and ``alpha`` are ``[batch]`` tensors; the result is in their dtype.
    At ``σ = 0`` every type except ``x0`` gives ``(1, 0)``, i.e. ``D = x``.
    """
    p = prediction_name(prediction)
    one = torch.ones_like(sigma)
    if p == "epsilon":
        return one, -sigma
    if p == "x0":
        return torch.zeros_like(sigma), one
    if p == "v":
        return 1 / (1 + sigma**2), -sigma / (alpha * (1 + sigma**2))
    return 1 / (1 + sigma), -sigma / (1 + sigma)


def denoised_from(prediction: str, output: Tensor, x: Tensor, sigma: Tensor | float, noise: NoiseSchedule) -> Tensor:
    """The denoised estimate ``x0_hat`` from a network ``output`` of the given prediction type.

    ``x`` is the EDM state ``x0 + σ·eps`` (not the model state); the formulas are
    in :func:`conversion`. The inverse of :func:`target_for`:
    ``denoised_from(p, target_for(p, x0, eps, σ, noise), x0 + σ·eps, σ, noise) == x0``.
    """
    s = batch_sigma(x, sigma)
    check_noise(noise)
    if output.shape != x.shape:
        raise AysError(f"output has shape {tuple(output.shape)} but x has shape {tuple(x.shape)}")
    c_skip, c_out = conversion(prediction, s, alpha_at(noise, s))
    return affine(x, output, c_skip, c_out)


def target_for(prediction: str, x0: Tensor, eps: Tensor, sigma: Tensor | float, noise: NoiseSchedule) -> Tensor:
    """The regression target of a network of the given prediction type, for ``x = x0 + σ·eps``.

    - ``epsilon``: ``eps``; ``x0``: ``x0``;
    - ``v``: ``a·eps - s·x0`` with ``a = alpha(σ)``, ``s = a·σ`` (Salimans & Ho 2022,
      eq. for ``v``; for VP ``a = 1/sqrt(1+σ²)``, ``s = σ/sqrt(1+σ²)``);
    - ``flow``: ``eps - x0``, the velocity ``d x_t / dt`` of ``x_t = (1-t)·x0 + t·eps``.

    The network input that goes with it is ``alpha(σ)·x`` at time ``noise.t(σ)``
    (see :meth:`ModelDenoiser.model_inputs`). Returned in ``x0``'s dtype.
    """
    p = prediction_name(prediction)
    check_eps(x0, eps)
    s = batch_sigma(x0, sigma)
    check_noise(noise)
    if p == "epsilon":
        return eps.clone()
    if p == "x0":
        return x0.clone()
    if p == "v":
        a = alpha_at(noise, s)
        return affine(x0, eps, -a * s, a)
    return affine(x0, eps, -torch.ones_like(s), torch.ones_like(s))


class NoiseRange:
    """``sigma_min`` / ``sigma_max``: the trained noise range of a model, read from its ``noise`` schedule."""

    noise: NoiseSchedule

    @property
    def sigma_min(self) -> float:
        """The model's smallest trained noise level (from its noise schedule)."""
        return float(self.noise.sigma_min)

    @property
    def sigma_max(self) -> float:
        """The model's largest trained noise level (from its noise schedule)."""
        return float(self.noise.sigma_max)


class ModelDenoiser(NoiseRange, nn.Module):
    """A network trained in its own parametrisation, seen as an EDM denoiser ``D(x, σ)``.

    ``model`` is called as ``model(x_model, t, **cond)`` with

    - ``x_model = alpha(σ)·x`` (VP: ``x/sqrt(1+σ²)``; flow: ``x/(1+σ)``; EDM: ``x``),
    - ``t = time_scale · noise.t(σ)``, shape ``[batch]``: a fractional timestep for
      :class:`ays.noise.DiscreteVP` (log-sigma interpolation, k-diffusion's
      ``DiscreteSchedule``), or with ``quantize=True`` the nearest integer timestep
      (an int64 tensor, as k-diffusion passes it); ``t`` in ``[0, 1)`` for
      :class:`ays.noise.Flow` (``time_scale=1000`` for diffusers' SD3-style
      transformers, which take ``1000·t``; Flux's takes ``t``);
      ``t = σ`` for :class:`ays.noise.EDM`.

    and its output ``y`` (of prediction type ``epsilon``, ``v``, ``x0`` or ``flow``;
    diffusers' names ``sample``, ``v_prediction``, ``flow_prediction`` are accepted)
    is turned into ``x0`` by :func:`conversion`: e.g. ``D = x - σ·eps``. The
    time shift of SD3/Flux needs no option here: it changes which ``σ`` a sampler
    visits, not the map between ``σ`` and the model's ``t``.

    Outputs that are diffusers output objects (``.sample``) or tuples are unwrapped;
    ``learned_variance=True`` keeps the first half of ``2·C`` output channels
    (ADM, DeepFloyd IF). For a :class:`~ays.noise.DiscreteVP` model, noise levels
    below its smallest level are evaluated at timestep 0 (the conversion still
    uses the true ``σ``, so the error vanishes as ``σ → 0``); levels above its
    largest by more than 0.1 % are refused. At ``σ = 0`` the result is ``x``.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        noise: NoiseSchedule,
        prediction: str = "epsilon",
        *,
        time_scale: float = 1.0,
        quantize: bool = False,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise AysError(f"model must be callable, got {type(model).__name__}")
        check_noise(noise)
        self.model = model
        self.noise = noise
        self.prediction = prediction_name(prediction)
        self.time_scale = check_positive(time_scale, name="time_scale")
        if quantize and not isinstance(noise, DiscreteVP):
            raise AysError(f"quantize=True needs a discrete-time model (ays.noise.DiscreteVP), "
                           f"got {type(noise).__name__}")
        self.quantize = bool(quantize)
        self.learned_variance = bool(learned_variance)

    def extra_repr(self) -> str:
        return (f"noise={type(self.noise).__name__}, prediction={self.prediction!r}, "
                f"time_scale={self.time_scale}, quantize={self.quantize}")

    def _time(self, s: Tensor, x: Tensor) -> Tensor:
        """Model time for CPU float64 noise levels ``s > 0``, on ``x``'s device."""
        noise = self.noise
        if isinstance(noise, DiscreteVP):
            hi = noise.sigma_max
            if (s > hi * (1 + _RANGE_RTOL)).any():
                raise AysError(f"sigma={s.max().item():.6g} exceeds the model's largest noise level "
                               f"sigma_max={hi:.6g}")
            # Clamp as k-diffusion does: float32 round-off at the top, timestep 0 below sigma_min.
            s = s.clamp(noise.sigma_min, hi)
            if self.quantize:
                t = noise.nearest_timestep(s)
                if self.time_scale == 1.0:
                    return t.to(device=x.device, dtype=torch.long)
                return (t.to(torch.float64) * self.time_scale).to(device=x.device, dtype=work_dtype(x))
        t = torch.as_tensor(noise.t(s), dtype=torch.float64).expand_as(s) * self.time_scale
        return t.to(device=x.device, dtype=work_dtype(x))

    def model_inputs(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(x_model, t)``: what the network receives for the EDM state ``x`` at noise level ``sigma``.

        ``x_model = alpha(σ)·x`` in ``x``'s dtype and ``t`` as described in the
        class docstring. Trainers use it with :func:`target_for`. Needs ``σ > 0``
        for discrete-time models.
        """
        s = batch_sigma(x, sigma)
        return self._inputs(x, s)

    def _inputs(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        a = alpha_at(self.noise, s)
        x_model = (coefficient(a, x) * x.to(work_dtype(x))).to(x.dtype)
        return x_model, self._time(s, x)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        def denoise(s: Tensor) -> Tensor:
            x_model, t = self._inputs(x, s)
            y = network_output(self.model(x_model, t, **cond), x, learned_variance=self.learned_variance)
            c_skip, c_out = conversion(self.prediction, s, alpha_at(self.noise, s))
            return affine(x, y, c_skip, c_out)

        # Rows at sigma = 0 are answered by x itself; the model sees a level it knows there.
        return exact_at_zero(x, batch_sigma(x, sigma), float(self.noise.sigma_min), denoise)

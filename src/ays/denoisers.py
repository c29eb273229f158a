"""Model adapters: turn a trained network into a denoiser ``D(x, sigma) -> x0_hat``.

ays speaks one language, the EDM convention (Karras et al. 2022): the noisy state
is ``x = x0 + sigma * eps`` and a *denoiser* returns the estimate of ``x0``. It is
called as k-diffusion calls its wrapped models, ``D(x, sigma, **extra_args)`` with
``x`` of shape ``[batch, ...]`` and ``sigma`` of shape ``[batch]``; conditioning
is bound beforehand (:func:`bind`, ``functools.partial`` or adapter attributes).

Following the separation of DPM-Solver (Lu et al. 2022), three things are kept
apart: the *noise schedule* (:mod:`ays.noise`: model time ``t`` <-> ``sigma`` and
the state scale ``alpha(sigma)``), the *model adapter* (this module: what the
network predicts and how to turn it into ``x0``) and the *solver*
(:mod:`ays.solvers`, which only ever sees ``D``).

Every adapter here is an affine map of the network output ``y``:

    D(x, sigma) = c_skip(sigma) · x + c_out(sigma) · y                       (1)

- :class:`EDMPrecond`: EDM preconditioning (Karras et al. 2022, eq. 7 and
  Table 1), ``y = F(c_in x, c_noise)``.
- :class:`ModelDenoiser`: a network trained in another parametrisation, called as
  ``model(x_model, t, **cond)`` with ``x_model = alpha(sigma)·x`` and
  ``t = noise.t(sigma)``, predicting ``epsilon``, ``v``, ``x0`` or ``flow``
  velocity; the coefficients of (1) are in :func:`conversion`.
- :class:`CFGDenoiser`, :class:`BatchedCFGDenoiser`: classifier-free guidance
  (Ho & Salimans 2022), ``D = D_u + s·(D_c - D_u)``.
- :func:`target_for` is the inverse direction (the regression target of each
  prediction type given ``x0``, ``eps`` and ``sigma``), for training and tests.

Coefficients are computed in float64 on the CPU from the ``[batch]`` noise
levels (they are tiny; noise levels are data here, no gradient flows to ``sigma``)
and applied on ``x``'s device; the network runs in ``x``'s dtype and the result
comes back in ``x``'s dtype. At ``sigma = 0`` the state is
the data itself, so every adapter returns ``x`` exactly there without calling the
network (where e.g. ``log(sigma)`` or a discrete model's timestep would be undefined).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from .noise import DiscreteVP, NoiseSchedule
from .validate import AysError, check_batch, check_choice, check_positive

__all__ = [
    "PREDICTIONS",
    "BatchedCFGDenoiser",
    "CFGDenoiser",
    "Denoiser",
    "EDMCoefficients",
    "EDMPrecond",
    "ModelDenoiser",
    "append_dims",
    "bind",
    "conversion",
    "denoised_from",
    "edm_coefficients",
    "edm_loss_weight",
    "edm_target",
    "prediction_name",
    "target_for",
]

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


class Denoiser(Protocol):
    """The denoiser contract: ``D(x, sigma, **extra_args) -> x0_hat`` (k-diffusion's wrapped model)."""

    def __call__(self, x: Tensor, sigma: Tensor, /, **extra_args: Any) -> Tensor: ...


# ----------------------------------------------------------------------------- helpers


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a ``[batch]`` tensor to ``[batch, 1, ..., 1]`` with ``ndim`` dimensions, to broadcast against ``x``."""
    if v.ndim > ndim:
        raise AysError(f"cannot broadcast a tensor of shape {tuple(v.shape)} to {ndim} dimension(s)")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def prediction_name(prediction: str) -> str:
    """The canonical name (one of :data:`PREDICTIONS`) of a prediction type or its alias.

    Accepted aliases: ``eps``; ``v_prediction``; ``sample`` (diffusers' name for x0);
    ``flow_prediction``.
    """
    if not isinstance(prediction, str):
        raise AysError(f"prediction type must be a string, got {prediction!r}")
    check_choice(prediction, _ALIASES, what="prediction type")
    return _ALIASES[prediction]


def _sigma_for(x: Tensor, sigma: Tensor | float) -> Tensor:
    """Check ``sigma`` against ``x`` and return it as a CPU float64 tensor of shape ``[batch]``.

    A scalar (0-d) noise level is broadcast to the batch; otherwise ``sigma`` must
    have shape ``[batch]``, one level per sample, as k-diffusion passes it.
    """
    check_batch(x, name="x")
    try:
        # Python numbers straight to float64 (torch.as_tensor would round them to float32 first).
        s = (sigma.detach() if isinstance(sigma, Tensor) else torch.as_tensor(sigma, dtype=torch.float64))
        s = s.to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise AysError(f"sigma must be a number or a tensor, got {type(sigma).__name__}") from None
    batch = x.shape[0]
    if s.ndim == 0:
        s = s.expand(batch)
    elif s.ndim != 1 or s.shape[0] != batch:
        raise AysError(
            f"sigma must have shape [batch] = [{batch}] to match x of shape {tuple(x.shape)}, got {tuple(s.shape)}"
        )
    if not torch.isfinite(s).all():
        raise AysError("sigma must be finite, got NaN or inf")
    if (s < 0).any():
        raise AysError(f"sigma must be >= 0, got {s.min().item()}")
    return s


def _work_dtype(x: Tensor) -> torch.dtype:
    # Half-precision states are combined in float32 (as EDM's reference code does),
    # float64 stays float64.
    return torch.promote_types(x.dtype, torch.float32)


def _on(v: Tensor, x: Tensor) -> Tensor:
    """A CPU float64 ``[batch]`` coefficient, on ``x``'s device in the working dtype, broadcastable to ``x``."""
    return append_dims(v.to(device=x.device, dtype=_work_dtype(x)), x.ndim)


def _combine(x: Tensor, y: Tensor, c_skip: Tensor, c_out: Tensor) -> Tensor:
    """Equation (1): ``c_skip·x + c_out·y`` in the working dtype, returned in ``x``'s dtype."""
    w = _work_dtype(x)
    return (_on(c_skip, x) * x.to(w) + _on(c_out, x) * y.to(w)).to(x.dtype)


def _network_output(out: Any, x: Tensor, *, learned_variance: bool = False, what: str = "model") -> Tensor:
    """Unwrap a network's output to a tensor of ``x``'s shape.

    diffusers models return an output object with ``.sample`` (or a tuple with
    ``return_dict=False``); ADM / DeepFloyd-style models with a learned variance
    return ``2·C`` channels, the prediction first.
    """
    if not isinstance(out, Tensor):
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            out = out[0]
        else:
            raise AysError(f"{what} returned {type(out).__name__}, expected a tensor")
    if learned_variance:
        if out.ndim < 2 or out.shape[1] != 2 * x.shape[1]:
            raise AysError(
                f"{what} output has shape {tuple(out.shape)}; with learned_variance=True it must have "
                f"2×{x.shape[1] if x.ndim > 1 else '?'} channels in dim 1"
            )
        out = out[:, : x.shape[1]]
    if out.shape != x.shape:
        hint = ""
        if out.ndim == x.ndim and out.ndim > 1 and out.shape[1] == 2 * x.shape[1]:
            hint = " (twice the channels: set learned_variance=True if the model also predicts a variance)"
        raise AysError(f"{what} output has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}{hint}")
    return out


def _check_noise(noise: Any) -> None:
    for name in ("sigma", "t", "alpha"):
        if not callable(getattr(noise, name, None)):
            raise AysError(f"noise must be a noise schedule from ays.noise (EDM, DiscreteVP, ContinuousVP, Flow); "
                           f"{type(noise).__name__} has no method {name}()")


def _alpha(noise: NoiseSchedule, s: Tensor) -> Tensor:
    return torch.as_tensor(noise.alpha(s), dtype=torch.float64).expand_as(s)


# ----------------------------------------------------------------------------- EDM preconditioning


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
    check_batch(x0, name="x0")
    if eps.shape != x0.shape:
        raise AysError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")
    sd = check_positive(sigma_data, name="sigma_data")
    s = _sigma_for(x0, sigma)
    a = s / (sd * torch.sqrt(s**2 + sd**2))
    b = -sd / torch.sqrt(s**2 + sd**2)
    return _combine(x0, eps, a, b)


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
        s = _sigma_for(x, sigma)
        zero = s == 0
        if zero.all():
            return x.clone()
        # Rows at sigma = 0 are answered by x itself; give the network a harmless level there.
        s_eval = torch.where(zero, torch.full_like(s, self.sigma_data), s)
        c = edm_coefficients(s_eval, self.sigma_data)
        w = _work_dtype(x)
        x_in = (_on(c.c_in, x) * x.to(w)).to(x.dtype)
        c_noise = c.c_noise.to(device=x.device, dtype=w)
        f = _network_output(self.net(x_in, c_noise, **cond), x, what="net")
        d = _combine(x, f, c.c_skip, c.c_out)
        if zero.any():
            d = torch.where(append_dims(zero.to(x.device), x.ndim), x, d)
        return d


# ----------------------------------------------------------------------------- prediction types


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
    s = _sigma_for(x, sigma)
    _check_noise(noise)
    if output.shape != x.shape:
        raise AysError(f"output has shape {tuple(output.shape)} but x has shape {tuple(x.shape)}")
    c_skip, c_out = conversion(prediction, s, _alpha(noise, s))
    return _combine(x, output, c_skip, c_out)


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
    check_batch(x0, name="x0")
    if eps.shape != x0.shape:
        raise AysError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")
    s = _sigma_for(x0, sigma)
    _check_noise(noise)
    if p == "epsilon":
        return eps.clone()
    if p == "x0":
        return x0.clone()
    if p == "v":
        a = _alpha(noise, s)
        return _combine(x0, eps, -a * s, a)
    return _combine(x0, eps, -torch.ones_like(s), torch.ones_like(s))


class ModelDenoiser(nn.Module):
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
        _check_noise(noise)
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

    @property
    def sigma_min(self) -> float:
        """The model's smallest trained noise level (from its noise schedule)."""
        return float(self.noise.sigma_min)

    @property
    def sigma_max(self) -> float:
        """The model's largest trained noise level (from its noise schedule)."""
        return float(self.noise.sigma_max)

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
                return (t.to(torch.float64) * self.time_scale).to(device=x.device, dtype=_work_dtype(x))
        t = torch.as_tensor(noise.t(s), dtype=torch.float64).expand_as(s) * self.time_scale
        return t.to(device=x.device, dtype=_work_dtype(x))

    def model_inputs(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(x_model, t)``: what the network receives for the EDM state ``x`` at noise level ``sigma``.

        ``x_model = alpha(σ)·x`` in ``x``'s dtype and ``t`` as described in the
        class docstring. Trainers use it with :func:`target_for`. Needs ``σ > 0``
        for discrete-time models.
        """
        s = _sigma_for(x, sigma)
        return self._inputs(x, s)

    def _inputs(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        a = _alpha(self.noise, s)
        x_model = (_on(a, x) * x.to(_work_dtype(x))).to(x.dtype)
        return x_model, self._time(s, x)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = _sigma_for(x, sigma)
        zero = s == 0
        if zero.all():
            return x.clone()
        # Rows at sigma = 0 are answered by x itself; give the model a level it knows there.
        s_eval = torch.where(zero, torch.full_like(s, float(self.noise.sigma_min)), s)
        x_model, t = self._inputs(x, s_eval)
        y = _network_output(self.model(x_model, t, **cond), x, learned_variance=self.learned_variance)
        c_skip, c_out = conversion(self.prediction, s_eval, _alpha(self.noise, s_eval))
        d = _combine(x, y, c_skip, c_out)
        if zero.any():
            d = torch.where(append_dims(zero.to(x.device), x.ndim), x, d)
        return d


# ----------------------------------------------------------------------------- guidance and binding


def _check_scale(scale: float | Tensor) -> float | Tensor:
    if isinstance(scale, Tensor):
        if scale.ndim > 1 or not torch.isfinite(scale).all():
            raise AysError(f"guidance scale must be a finite number or a [batch] tensor, got shape "
                           f"{tuple(scale.shape)}")
        return scale
    try:
        v = float(scale)
    except (TypeError, ValueError):
        raise AysError(f"guidance scale must be a number, got {scale!r}") from None
    if not math.isfinite(v):
        raise AysError(f"guidance scale must be finite, got {v}")
    return v


def _guide(d_uncond: Tensor, d_cond: Tensor, scale: float | Tensor) -> Tensor:
    """``D_u + s·(D_c - D_u)`` (Ho & Salimans 2022, eq. 6, written for the denoiser)."""
    if isinstance(scale, Tensor):
        if scale.ndim == 1 and scale.shape[0] != d_cond.shape[0]:
            raise AysError(f"guidance scale has {scale.shape[0]} entries but the batch has {d_cond.shape[0]}")
        scale = append_dims(scale.to(device=d_cond.device, dtype=d_cond.dtype), d_cond.ndim)
    return d_uncond + scale * (d_cond - d_uncond)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance from two denoisers: ``D = D_u + s·(D_c - D_u)`` (Ho & Salimans 2022).

    ``cond`` and ``uncond`` are denoisers with their conditioning already bound
    (e.g. ``bind(model_denoiser, encoder_hidden_states=c)``); extra keyword
    arguments at call time go to both. Because every adapter of this module is
    affine in the network output with the same coefficients for both branches,
    guiding ``D`` is the same as guiding ``eps``, ``v`` or the flow velocity
    (diffusers' ``guidance_scale``). ``scale`` may be a number or a ``[batch]``
    tensor; a plain 1 or 0 skips the branch it does not need. Two network calls;
    :class:`BatchedCFGDenoiser` does both in one.
    """

    def __init__(self, cond: Denoiser, uncond: Denoiser, scale: float | Tensor) -> None:
        super().__init__()
        if not callable(cond) or not callable(uncond):
            raise AysError("cond and uncond must be callable denoisers")
        self.cond = cond
        self.uncond = uncond
        self.scale = _check_scale(scale)

    def forward(self, x: Tensor, sigma: Tensor | float, **extra_args: Any) -> Tensor:
        if not isinstance(self.scale, Tensor):
            if self.scale == 1.0:
                return self.cond(x, sigma, **extra_args)
            if self.scale == 0.0:
                return self.uncond(x, sigma, **extra_args)
        return _guide(self.uncond(x, sigma, **extra_args), self.cond(x, sigma, **extra_args), self.scale)


def _cat_cond(c: Any, u: Any, key: str) -> Any:
    """Stack a conditioning value for the doubled batch ``[cond; uncond]``."""
    if isinstance(c, Tensor) and isinstance(u, Tensor):
        try:
            return torch.cat([c, u], dim=0)
        except RuntimeError as e:
            raise AysError(f"cannot batch conditioning {key!r}: shapes {tuple(c.shape)} and {tuple(u.shape)} "
                           f"differ beyond the batch dimension ({e})") from None
    if isinstance(c, Mapping) and isinstance(u, Mapping):
        if set(c) != set(u):
            raise AysError(f"conditioning {key!r} has keys {sorted(c)} for cond but {sorted(u)} for uncond")
        return {k: _cat_cond(c[k], u[k], f"{key}.{k}") for k in c}
    if c is u or (not isinstance(c, Tensor) and not isinstance(u, Tensor) and c == u):
        return c
    raise AysError(f"conditioning {key!r} differs between cond and uncond but is not a tensor; cannot batch it")


class BatchedCFGDenoiser(nn.Module):
    """Classifier-free guidance with one network call on a doubled batch.

    ``denoiser(cat[x, x], cat[σ, σ], **cat[cond, uncond])`` is split into
    ``D_c, D_u`` and combined as ``D_u + s·(D_c - D_u)`` (Ho & Salimans 2022). ``cond``
    and ``uncond`` are keyword-argument mappings with the same keys: tensor values
    are concatenated along dim 0 (so they must have ``x``'s batch size and the
    same trailing shape, e.g. text embeddings padded to one length), nested
    mappings (SDXL's ``added_cond_kwargs``) recursively, other values must be equal
    in both. This is what k-diffusion-based UIs do; it is faster than
    :class:`CFGDenoiser` when the network is batch-parallel, at twice the memory.
    """

    def __init__(self, denoiser: Denoiser, cond: Mapping[str, Any], uncond: Mapping[str, Any],
                 scale: float | Tensor) -> None:
        super().__init__()
        if not callable(denoiser):
            raise AysError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if set(cond) != set(uncond):
            raise AysError(f"cond has keys {sorted(cond)} but uncond has {sorted(uncond)}; they must match")
        self.denoiser = denoiser
        self.cond = dict(cond)
        self.uncond = dict(uncond)
        self.scale = _check_scale(scale)

    def forward(self, x: Tensor, sigma: Tensor | float, **extra_args: Any) -> Tensor:
        s = _sigma_for(x, sigma).to(device=x.device, dtype=_work_dtype(x))
        if not isinstance(self.scale, Tensor):
            if self.scale == 1.0:
                return self.denoiser(x, s, **self.cond, **extra_args)
            if self.scale == 0.0:
                return self.denoiser(x, s, **self.uncond, **extra_args)
        both = {k: _cat_cond(self.cond[k], self.uncond[k], k) for k in self.cond}
        d = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), **both, **extra_args)
        if not isinstance(d, Tensor) or d.shape[0] != 2 * x.shape[0]:
            raise AysError(f"denoiser returned shape {tuple(getattr(d, 'shape', ()))} for a doubled batch of "
                           f"{2 * x.shape[0]}")
        d_cond, d_uncond = d.chunk(2)
        return _guide(d_uncond, d_cond, self.scale)


def bind(denoiser: Callable[..., Tensor], /, **extra_args: Any) -> Denoiser:
    """A denoiser with conditioning bound: ``bind(D, **kw)(x, σ) == D(x, σ, **kw)``.

    k-diffusion's ``extra_args``, as a ``functools.partial``; keywords given at
    call time override the bound ones. (A k-diffusion wrapped model
    ``model(x, sigma, **extra_args)`` already is a denoiser; this is all it needs.)
    """
    if not callable(denoiser):
        raise AysError(f"denoiser must be callable, got {type(denoiser).__name__}")
    return functools.partial(denoiser, **extra_args)

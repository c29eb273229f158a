"""Model adapters: turn a trained network into a denoiser ``D(x, sigma) -> x0_hat``.

ays speaks one language, the EDM convention (Karras et al. 2022): the noisy state
is ``x = x0 + sigma * eps`` and a *denoiser* returns the estimate of ``x0``. It is
called as k-diffusion calls its wrapped models, ``D(x, sigma, **extra_args)`` with
``x`` of shape ``[batch, ...]`` and ``sigma`` of shape ``[batch]``; conditioning
is bound beforehand (:func:`bind`, ``functools.partial`` or adapter attributes).

Following the separation of DPM-Solver (Lu et al. 2022), three things are kept
apart: the *noise schedule* (:mod:`ays.noise`: model time ``t`` <-> ``sigma`` and
the state scale ``alpha(sigma)``), the *model adapter* (this package: what the
network predicts and how to turn it into ``x0``) and the *solver*
(:mod:`ays.solvers`, which only ever sees ``D``).

Every adapter here is an affine map of the network output ``y``:

    D(x, sigma) = c_skip(sigma) · x + c_out(sigma) · y                       (1)

- :mod:`.base`: the :class:`Denoiser` contract, :func:`append_dims` and what every
  adapter shares (noise levels per row, dtypes, equation (1), ``D = x`` at ``sigma = 0``).
- :mod:`.edm`: :class:`EDMPrecond`, EDM preconditioning (Karras et al. 2022, eq. 7 and
  Table 1), ``y = F(c_in x, c_noise)``, with :func:`edm_coefficients`,
  :func:`edm_loss_weight` and :func:`edm_target`.
- :mod:`.prediction`: :class:`ModelDenoiser`, a network trained in another
  parametrisation, called as ``model(x_model, t, **cond)`` with ``x_model = alpha(sigma)·x``
  and ``t = noise.t(sigma)``, predicting ``epsilon``, ``v``, ``x0`` or ``flow`` velocity;
  the coefficients of (1) are in :func:`conversion`, and :func:`target_for` is the
  inverse direction (the regression target of each prediction type given ``x0``,
  ``eps`` and ``sigma``), for training and tests.
- :mod:`.guidance`: :class:`CFGDenoiser`, :class:`BatchedCFGDenoiser`: classifier-free
  guidance (Ho & Salimans 2022), ``D = D_u + s·(D_c - D_u)``; and :func:`bind`.
"""

from __future__ import annotations

from .base import Denoiser, append_dims
from .edm import EDMCoefficients, EDMPrecond, edm_coefficients, edm_loss_weight, edm_target
from .guidance import BatchedCFGDenoiser, CFGDenoiser, bind
from .prediction import PREDICTIONS, ModelDenoiser, conversion, denoised_from, prediction_name, target_for

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

"""What every solver shares: one sampling run, its noise source and small step formulas.

A solver walks a schedule ``s_0 > s_1 > ... > s_n`` (EDM convention,
``x_sigma = x0 + sigma * eps``) calling a denoiser ``D(x, sigma)``. The pieces
that do not depend on the method live here, once:

- :class:`Run` holds one sampling run. It turns the schedule into float64 Python
  numbers (all schedule arithmetic - ``h = log(s / s_next)``, ``expm1`` - is done
  in double precision, while the state ``x`` keeps its own dtype, because a float
  times a tensor does not change the tensor's dtype), calls the denoiser with
  ``sigma`` as a ``[batch]`` tensor in ``x``'s dtype and device (k-diffusion's
  convention), reports each step to the callback in k-diffusion's dict form, and
  draws ALL Gaussian noise through :meth:`Run.noise`. That single noise helper is
  what lets a ``noise_sampler(sigma, sigma_next) -> Tensor`` (k-diffusion's
  convention, e.g. a Brownian tree, or the basis-vector sampler of
  :mod:`ays.analysis`) replace the generator entirely. :class:`RunArgs` names its
  keywords (``generator``, ``callback``, ``noise_sampler``), which every solver takes as
  ``**run_args``; :meth:`Run.walk` is the loop of every one-step solver (denoise at
  ``s_i``, report, ``x = step(...)``), :meth:`Run.ancestral_step` an ODE step plus fresh noise.
- :func:`exp_step` is the exact step of the probability-flow ODE with the
  denoiser frozen, ``x_next = D + (s_next / s) (x - D)``: DDIM, and Euler's
  method in ``sigma`` (Karras et al. 2022, Eq. 3 with ``D`` held fixed).
- :func:`phi_functions` gives the exponential-integrator weights of the
  DPM-Solver++ family in a form that stays accurate as ``h -> 0``.
- :func:`ancestral_split` is k-diffusion's ``get_ancestral_step``: the DDIM(eta)
  split of one step into a deterministic part and fresh noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

import torch

from ..validate import AysError, check_batch, check_positive, check_sigmas

__all__ = [
    "Callback",
    "Denoiser",
    "NoiseSampler",
    "Run",
    "RunArgs",
    "Step",
    "ancestral_split",
    "check_eta",
    "exp_step",
    "log_step",
    "phi_functions",
    "to_d",
]

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: ``noise_sampler(sigma, sigma_next) -> Tensor`` of ``x``'s shape, unit variance.
NoiseSampler = Callable[[float, float], Tensor]
Callback = Callable[[dict[str, Any]], None]
#: ``step(run, x, denoised, sigma, sigma_next) -> x_next``: one step of a one-step solver.
Step = Callable[["Run", Tensor, Tensor, float, float], Tensor]


class RunArgs(TypedDict, total=False):
    """The keywords every solver takes, k-diffusion's (``solver(denoiser, x, sigmas, **run)``): see :class:`Run`."""

    generator: torch.Generator | None
    callback: Callback | None
    noise_sampler: NoiseSampler | None


class Run:
    """One sampling run of one solver: schedule, denoiser, noise source, callback.

    ``sigmas`` is validated by :func:`ays.validate.check_sigmas` (strictly
    decreasing, may end in 0) and kept as float64 numbers. Noise comes from
    ``noise_sampler`` when given, otherwise from ``torch.randn`` with
    ``generator``; without either, a private generator seeded from the operating
    system is made on first use (the global RNG is never touched).
    """

    __slots__ = ("_generator", "_noise_sampler", "callback", "denoiser", "schedule", "sigmas", "steps")

    def __init__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Any,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        noise_sampler: NoiseSampler | None = None,
    ) -> None:
        if not callable(denoiser):
            raise AysError(f"denoiser must be callable, got {type(denoiser).__name__}")
        check_batch(x, name="x")
        self.schedule = check_sigmas(sigmas)
        self.sigmas: list[float] = self.schedule.tolist()
        self.steps = len(self.sigmas) - 1
        self.denoiser = denoiser
        self.callback = callback
        self._generator = generator
        self._noise_sampler = noise_sampler

    def intervals(self) -> Iterator[tuple[int, float, float]]:
        """Yield ``(i, s_i, s_{i+1})`` for every step."""
        s = self.sigmas
        for i in range(self.steps):
            yield i, s[i], s[i + 1]

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        """``D(x, sigma)`` with ``sigma`` as a ``[batch]`` tensor in ``x``'s dtype and device."""
        out = self.denoiser(x, x.new_full((x.shape[0],), sigma))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise AysError(f"denoiser returned {got} for an input of shape {tuple(x.shape)}; it must match")
        return out

    def noise(self, x: Tensor, sigma: float, sigma_next: float) -> Tensor:
        """Standard normal noise of ``x``'s shape for the step ``sigma -> sigma_next``.

        Every random draw of every solver goes through here.
        """
        if self._noise_sampler is not None:
            z = self._noise_sampler(sigma, sigma_next)
            if not isinstance(z, torch.Tensor) or z.shape != x.shape:
                got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise AysError(f"noise_sampler returned {got}; the state has shape {tuple(x.shape)}")
            return z.to(dtype=x.dtype, device=x.device)
        if self._generator is None:
            # No seed given: fresh entropy, but from a private generator, never the global RNG.
            self._generator = torch.Generator(device=x.device)
            self._generator.seed()
        g = self._generator
        # Draw on the generator's device, so that a CPU generator gives the same noise for
        # a state on any device.
        z = torch.randn(x.shape, generator=g, dtype=x.dtype, device=g.device)
        return z.to(x.device)

    def denoise_step(self, i: int, x: Tensor, sigma: float, sigma_hat: float | None = None) -> Tensor:
        """``D(x, sigma_hat)`` at the start of step ``i`` (``sigma_hat`` defaults to ``sigma``), reported."""
        sigma_hat = sigma if sigma_hat is None else sigma_hat
        denoised = self.denoise(x, sigma_hat)
        self.report(i, x, sigma, sigma_hat, denoised)
        return denoised

    def walk(self, x: Tensor, step: Step) -> Tensor:
        """The loop of a one-step solver: per step ``x = step(run, x, D(x, s_i), s_i, s_{i+1})``, ``D`` reported."""
        for i, s, s_next in self.intervals():
            x = step(self, x, self.denoise_step(i, x, s), s, s_next)
        return x

    def ancestral_step(
        self, x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, ratio: float, scale: float
    ) -> Tensor:
        """:func:`exp_step` with ``ratio``, then fresh noise times ``scale`` (drawn only if ``scale > 0``)."""
        x = exp_step(x, denoised, ratio)
        return x + self.noise(x, sigma, sigma_next) * scale if scale > 0 else x

    def report(self, i: int, x: Tensor, sigma: float, sigma_hat: float, denoised: Tensor) -> None:
        """Call the callback with k-diffusion's dict ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``."""
        if self.callback is not None:
            self.callback(
                {
                    "x": x,
                    "i": i,
                    "sigma": torch.tensor(sigma, dtype=torch.float64),
                    "sigma_hat": torch.tensor(sigma_hat, dtype=torch.float64),
                    "denoised": denoised,
                }
            )


def log_step(sigma: float, sigma_next: float) -> float:
    """``h = log(sigma / sigma_next)``, the step in ``lambda = -log sigma`` (half-logSNR); inf into 0."""
    return math.inf if sigma_next == 0 else math.log(sigma / sigma_next)


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's derivative ``dx/dsigma = (x - D) / sigma`` (Karras et al. 2022, Eq. 3)."""
    return (x - denoised) / sigma


def exp_step(x: Tensor, denoised: Tensor, ratio: float) -> Tensor:
    """``D + ratio * (x - D)``: the ODE step with ``D`` frozen when ``ratio = s_next / s``.

    With ``ratio = exp(-H)`` it is the first-order exponential-integrator step of
    DPM-Solver++; ``ratio = 0`` returns ``D`` exactly (the final denoise).
    """
    return torch.lerp(denoised, x, ratio)


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ``get_ancestral_step``: ``(sigma_down, sigma_up)`` with ``down² + up² = sigma_next²``.

    ``sigma_up = min(sigma_next, eta * sigma_next * sqrt(1 - sigma_next² / sigma²))``
    is the fresh noise of DDIM(eta) (Song et al. 2021, Eq. 16, in the EDM
    convention); the deterministic part steps the ODE down to ``sigma_down``.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * sigma_next * math.sqrt(-math.expm1(-2.0 * log_step(sigma, sigma_next))))
    return math.sqrt(max(sigma_next * sigma_next - up * up, 0.0)), up


def phi_functions(H: float) -> tuple[float, float, float]:
    """Weights ``(1 - e^-H, phi2, phi3)`` of DPM-Solver++ (Lu et al. 2022, data prediction).

    With ``u`` the distance from the start of the step in ``lambda``,
    ``int_0^H e^{-(H-u)} du = 1 - e^-H``,
    ``int_0^H e^{-(H-u)} u du = H * phi2`` with ``phi2 = 1 + expm1(-H) / H``, and
    ``phi3 = phi2 / H - 1/2`` (the weight k-diffusion and diffusers give the second
    difference in DPM-Solver++(3M)). Below ``H = 1e-2`` the closed forms lose
    digits to cancellation, so their Taylor series are used instead.
    """
    c1 = -math.expm1(-H)
    if H < 1e-2:
        phi2 = H * (1 / 2 - H * (1 / 6 - H * (1 / 24 - H * (1 / 120 - H / 720))))
        phi3 = -H * (1 / 6 - H * (1 / 24 - H * (1 / 120 - H * (1 / 720 - H / 5040))))
    else:
        phi2 = 1.0 + math.expm1(-H) / H
        phi3 = phi2 / H - 0.5
    return c1, phi2, phi3


def check_eta(eta: Any, name: str = "eta") -> float:
    """A noise amount ``>= 0``."""
    return check_positive(eta, name=name, allow_zero=True)

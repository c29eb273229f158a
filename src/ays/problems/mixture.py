"""Exact problems: data distributions whose ideal denoiser is known in closed form.

Every problem here is an isotropic Gaussian mixture

    p(x0) = Σ_k w_k N(x0; mu_k, s_k² I),     s_k >= 0 (s_k = 0 is a point mass),

so that, in the EDM convention ``x_sigma = x0 + sigma * eps``, the noised marginal is
again a mixture, ``p_sigma = Σ_k w_k N(mu_k, (s_k² + sigma²) I)``, and the ideal
denoiser ``D(x, sigma) = E[x0 | x_sigma = x]`` (the posterior mean) is exact:

    r_k(x, sigma) ∝ w_k N(x; mu_k, (s_k² + sigma²) I)              (responsibilities)
    D(x, sigma)   = Σ_k r_k [mu_k + s_k² / (s_k² + sigma²) (x - mu_k)]
    ∇ log p_sigma = Σ_k r_k (mu_k - x) / (s_k² + sigma²) = (D - x) / sigma²   (Tweedie)

Schedules and solvers can therefore be judged against the truth (Karras et al. 2022,
"Elucidating the design space", §2; the toy problems of Align Your Steps, arXiv
2404.14507, App. D). The empirical distribution of a finite data set (all ``s_k = 0``)
gives the exact denoiser of a training set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..validate import AysError, check_range

__all__ = ["Gaussian", "GaussianMixture", "empirical", "gaussian", "gmm"]

Tensor = torch.Tensor

# Bound on rows x components of the [n, K] matrices held at once (float64: 32 MiB each).
_CHUNK_ELEMENTS = 1 << 22
_LOG_2PI = math.log(2.0 * math.pi)
#: ``f(x, sigma, r, v, zero_v)`` on one chunk of rows: see :meth:`GaussianMixture._per_chunk`
_ChunkFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 for stability (exponents like |x - mu|² / (2 sigma²) at sigma = 0.002);
    # Apple's MPS backend has no float64, so there float32 is the best available.
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True, eq=False, repr=False)
class GaussianMixture:
    """An isotropic Gaussian mixture with its exact denoiser.

    Attributes:
        means: ``[K, d]`` float64 component means (``d`` = prod(shape)).
        stds: ``[K]`` float64 component standard deviations, ``>= 0`` (0: a point mass).
        weights: ``[K]`` float64 mixture weights, ``>= 0``, summing to 1.
        shape: the event shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``; data are
            flattened to ``d`` internally.
        name: a label for reports.
        sigma_min, sigma_max: the noise range schedules for this problem should cover.

    Construct with :func:`gmm`, :func:`gaussian`, :func:`empirical` or :func:`get`.
    Inputs are validated and converted to float64 on construction.
    """

    means: Tensor
    stds: Tensor
    weights: Tensor
    shape: tuple[int, ...] = ()
    name: str = "gmm"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    _cache: dict[Any, tuple[Tensor, ...]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        means, stds, weights, shape = _check_mixture(self.means, self.stds, self.weights, self.shape)
        lo, hi = check_range(self.sigma_min, self.sigma_max)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "sigma_min", lo)
        object.__setattr__(self, "sigma_max", hi)
        object.__setattr__(self, "name", str(self.name))

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        """Flattened event dimension ``d``."""
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return int(self.means.shape[0])

    @property
    def has_atoms(self) -> bool:
        """Whether some component is a point mass (std 0): then no density exists."""
        return bool((self.stds == 0).any())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, components={self.n_components}, "
            f"shape={self.shape}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
        )

    def mean(self) -> Tensor:
        """The mixture mean ``Σ w_k mu_k`` as ``[*shape]`` float64 (the denoiser's limit as sigma → ∞)."""
        return (self.weights @ self.means).reshape(self.shape)

    def covariance(self) -> Tensor:
        """The ``[d, d]`` float64 covariance ``Σ w_k (s_k² I + mu_k mu_kᵀ) - m mᵀ``."""
        m = self.weights @ self.means
        second = (self.means * self.weights[:, None]).T @ self.means
        eye = torch.eye(self.dim, dtype=torch.float64)
        return second + float(self.weights @ self.stds**2) * eye - torch.outer(m, m)

    def noised(self, sigma: float) -> GaussianMixture:
        """The law of ``x0 + sigma * eps``: same means and weights, stds ``sqrt(s_k² + sigma²)``."""
        s = float(sigma)
        if not math.isfinite(s) or s < 0:
            raise AysError(f"sigma must be a finite number >= 0, got {sigma!r}")
        return GaussianMixture(
            self.means,
            torch.sqrt(self.stds**2 + s * s),
            self.weights,
            self.shape,
            name=f"{self.name}+noise({s:g})",
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
        )

    # ---------------------------------------------------------------- sampling
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``n`` exact samples ``[n, *shape]``: a component by weight, then ``mu_k + s_k z``.

        Randomness comes only from ``generator`` (drawn on its device); the result is
        cast to ``dtype`` and moved to ``device`` (default: the generator's device, or CPU).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AysError(f"n must be a positive integer, got {n!r}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        work = _work_dtype(gen_device)
        weights = self.weights.to(gen_device, work)
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=work)
        x = self.means.to(gen_device, work)[k] + self.stds.to(gen_device, work)[k, None] * z
        out_device = torch.device(device) if device is not None else gen_device
        return x.reshape(n, *self.shape).to(device=out_device, dtype=dtype)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``problem(n, generator)`` = :meth:`sample`, so a problem is a ``data`` callable."""
        return self.sample(n, generator)

    # ------------------------------------------------------------ exact maths
    def log_prob(self, x: Tensor, *, chunk_size: int | None = None) -> Tensor:
        """Log density ``log p(x)`` of clean data, ``[n]`` float64 on the device of ``x``.

        Differentiable in ``x``. Raises :class:`AysError` when some std is 0 (point
        masses have no density); for the noised density use ``noised(sigma).log_prob``.
        """
        if self.has_atoms:
            raise AysError(
                f"log_prob is undefined for {self.name!r}: it has point masses (std 0), so no density exists"
            )
        xf, _ = self._flatten(x)
        sig = torch.zeros(xf.shape[0], dtype=xf.dtype, device=xf.device)
        parts = [
            torch.logsumexp(self._logits(xc, sc)[0], dim=1)
            for xc, sc in self._chunks(xf, sig, chunk_size)
        ]
        return torch.cat(parts)

    def responsibilities(self, x: Tensor, sigma: Tensor | float = 0.0, *, chunk_size: int | None = None) -> Tensor:
        """Posterior component probabilities ``r_k(x, sigma)``, ``[n, K]`` float64.

        At sigma 0 point masses get probability 0 unless every component is a point mass,
        in which case the nearest atom gets probability 1 (the limit sigma → 0+).
        """
        xf, _ = self._flatten(x)
        sig = self._sigma(sigma, xf)
        parts = [torch.softmax(self._logits(xc, sc)[0], dim=1) for xc, sc in self._chunks(xf, sig, chunk_size)]
        return torch.cat(parts)

    def component_of(self, x: Tensor, *, chunk_size: int | None = None) -> Tensor:
        """The most likely component of each clean sample (argmax of the sigma-0 posterior), ``[n]`` int64."""
        xf, _ = self._flatten(x)
        sig = torch.zeros(xf.shape[0], dtype=xf.dtype, device=xf.device)
        parts = [self._logits(xc, sc)[0].argmax(dim=1) for xc, sc in self._chunks(xf, sig, chunk_size)]
        return torch.cat(parts)

    def denoiser(self, x: Tensor, sigma: Tensor | float, *, chunk_size: int | None = None) -> Tensor:
        """The ideal denoiser ``D(x, sigma) = E[x0 | x0 + sigma eps = x]`` (posterior mean).

        ``x`` is ``[n, *shape]``; ``sigma`` is ``[n]``, a python float or a 0-d tensor
        (broadcast). Computed in float64 in log space (log-sum-exp over components) as
        ``D = x + Σ_k r_k sigma²/(s_k² + sigma²) (mu_k - x)``, returned in the dtype and
        on the device of ``x``. At sigma 0 it returns ``x`` (every std > 0), the nearest
        atom (every std = 0), or ``x`` off the atoms (a mix). Batches are processed in
        chunks so that the ``[rows, K]`` matrices stay bounded.
        """

        def posterior_mean(xc: Tensor, sc: Tensor, r: Tensor, v: Tensor, zero_v: Tensor | None) -> Tensor:
            s2 = sc[:, None] ** 2
            # b_k = sigma²/(s_k² + sigma²): how far component k pulls x toward mu_k;
            # a point mass at sigma 0 pulls all the way (b = 1).
            b = s2 / v if zero_v is None else torch.where(zero_v, torch.ones_like(v), s2 / v)
            rb = r * b
            mu = self._params(xc.device, xc.dtype)[0]
            return xc * (1.0 - rb.sum(dim=1, keepdim=True)) + rb @ mu

        return self._per_chunk(x, sigma, chunk_size, posterior_mean)

    def score(self, x: Tensor, sigma: Tensor | float, *, chunk_size: int | None = None) -> Tensor:
        """The score ``∇_x log p_sigma(x) = (D(x, sigma) - x) / sigma²``.

        Computed directly as ``Σ_k r_k (mu_k - x) / (s_k² + sigma²)``, which avoids the
        cancellation in ``D - x`` at small sigma. Undefined at sigma 0 for point masses.
        """

        def score_of(xc: Tensor, sc: Tensor, r: Tensor, v: Tensor, zero_v: Tensor | None) -> Tensor:
            if zero_v is not None and bool((zero_v & (r > 0)).any()):
                raise AysError(f"the score of {self.name!r} is undefined at sigma 0: it has point masses (std 0)")
            rv = r / v
            mu = self._params(xc.device, xc.dtype)[0]
            return rv @ mu - xc * rv.sum(dim=1, keepdim=True)

        return self._per_chunk(x, sigma, chunk_size, score_of)

    def _per_chunk(self, x: Tensor, sigma: Tensor | float, chunk_size: int | None, f: _ChunkFn) -> Tensor:
        """``f(x, sigma, r, v, zero_v)`` per chunk of rows, in float64, reshaped to ``x`` and in its dtype.

        ``r`` are the responsibilities ``r_k(x, sigma)``; ``v = s_k² + sigma²`` (zeros replaced by 1)
        and ``zero_v`` (the mask of ``v == 0``, or None) are as :meth:`_logits` gives them.
        """
        xf, dtype = self._flatten(x)
        sig = self._sigma(sigma, xf)
        parts = []
        for xc, sc in self._chunks(xf, sig, chunk_size):
            logits, v, zero_v = self._logits(xc, sc)
            parts.append(f(xc, sc, torch.softmax(logits, dim=1), v, zero_v))
        return torch.cat(parts).reshape(x.shape).to(dtype)

    # --------------------------------------------------------------- internals
    def _params(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """(means, stds², log weights, |mu|²) on ``device`` in ``dtype``, cached."""
        key = (str(device), dtype)
        got = self._cache.get(key)
        if got is None:
            mu = self.means.to(device, dtype)
            got = (
                mu,
                (self.stds**2).to(device, dtype),
                torch.log(self.weights).to(device, dtype),  # log 0 = -inf: a weight-0 component never wins
                (self.means**2).sum(dim=1).to(device, dtype),
            )
            self._cache[key] = got
        return got

    def _flatten(self, x: Tensor) -> tuple[Tensor, torch.dtype]:
        if not isinstance(x, torch.Tensor):
            raise AysError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise AysError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.ndim < 1 or tuple(x.shape[1:]) != self.shape:
            raise AysError(
                f"x has shape {tuple(x.shape)} but problem {self.name!r} expects [batch, *{self.shape}]"
            )
        if x.shape[0] == 0:
            raise AysError("x is empty (batch size 0)")
        return x.reshape(x.shape[0], self.dim).to(_work_dtype(x.device)), x.dtype

    def _sigma(self, sigma: Tensor | float, xf: Tensor) -> Tensor:
        n = xf.shape[0]
        try:
            s = torch.as_tensor(sigma, dtype=xf.dtype, device=xf.device)
        except (TypeError, ValueError, RuntimeError):
            raise AysError(f"sigma must be a number or a tensor of shape [batch], got {sigma!r}") from None
        if s.numel() == 1:
            s = s.reshape(1).expand(n)
        elif s.numel() == n and (s.ndim == 1 or all(k == 1 for k in s.shape[1:])):
            # [n] or k-diffusion style [n, 1, 1, 1]
            s = s.reshape(n)
        else:
            raise AysError(f"sigma has shape {tuple(s.shape)}; expected a scalar or [batch] with batch = {n}")
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise AysError("sigma must be finite and >= 0")
        return s

    def _chunks(self, xf: Tensor, sig: Tensor, chunk_size: int | None) -> Iterator[tuple[Tensor, Tensor]]:
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // self.n_components)
        elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise AysError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        for i in range(0, xf.shape[0], chunk_size):
            yield xf[i : i + chunk_size], sig[i : i + chunk_size]

    def _logits(self, xc: Tensor, sc: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Unnormalised log posterior ``log w_k + log N(x; mu_k, v_k I)``, ``v_k = s_k² + sigma²``.

        Returns (logits [m, K], v [m, K] with zeros replaced by 1, mask of v == 0 or None).
        """
        mu, s2, logw, mu2 = self._params(xc.device, xc.dtype)
        v = s2[None, :] + sc[:, None] ** 2
        # |x - mu|² by expansion (one matmul); clamp the round-off below 0.
        d2 = ((xc * xc).sum(dim=1, keepdim=True) - 2.0 * (xc @ mu.T) + mu2[None, :]).clamp_min(0.0)
        zero_v: Tensor | None = None
        if self.has_atoms:
            zero_v = v == 0
            if bool(zero_v.any()):
                v = torch.where(zero_v, torch.ones_like(v), v)
            else:
                zero_v = None
        logits = logw[None, :] - 0.5 * d2 / v - (0.5 * self.dim) * (_LOG_2PI + torch.log(v))
        if zero_v is not None:
            # sigma = 0 on a point mass: its density is a delta. Off the atoms the limit
            # sigma -> 0+ gives it no posterior mass when some std is positive; when every
            # component is a point mass the nearest atom takes it all (ties: by weight).
            all_atoms = zero_v.all(dim=1, keepdim=True)
            nearest = d2 <= d2.min(dim=1, keepdim=True).values
            atom_logits = torch.where(all_atoms & nearest, logw[None, :].expand_as(d2), -torch.inf)
            logits = torch.where(zero_v, atom_logits, logits)
        return logits, v, zero_v


@dataclass(frozen=True, eq=False, repr=False)
class Gaussian(GaussianMixture):
    """``N(0, c² I)``: a one-component mixture that keeps its scale ``c``.

    The denoiser is ``c² / (c² + sigma²) x``; :mod:`ays.analysis` uses ``c`` for the
    closed-form output laws of Gaussian data. Construct with :func:`gaussian`.
    """

    c: float = 0.5

    def __repr__(self) -> str:
        return f"Gaussian(c={self.c}, dim={self.dim}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


# ---------------------------------------------------------------- validation
def _as_f64(value: Any, what: str) -> Tensor:
    try:
        if isinstance(value, torch.Tensor):
            t = value.detach().to(device="cpu", dtype=torch.float64)
        else:
            t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise AysError(f"{what} must be numbers, got {value!r}") from None
    if not bool(torch.isfinite(t).all()):
        raise AysError(f"{what} must be finite")
    return t.clone()


def _check_mixture(
    means: Any, stds: Any, weights: Any, shape: Any
) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
    mu = _as_f64(means, "means")
    if mu.ndim < 2 or mu.shape[0] == 0:
        raise AysError(f"means must have shape [K, d] (or [K, *shape]) with K >= 1, got {tuple(mu.shape)}")
    k = mu.shape[0]
    if shape is None or (isinstance(shape, Sequence) and len(shape) == 0):
        shape_t = tuple(int(s) for s in mu.shape[1:])
    else:
        try:
            shape_t = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise AysError(f"shape must be a tuple of positive integers, got {shape!r}") from None
        if not shape_t or any(s < 1 for s in shape_t):
            raise AysError(f"shape must be a tuple of positive integers, got {shape!r}")
    d = math.prod(shape_t)
    if math.prod(mu.shape[1:]) != d:
        raise AysError(f"means have {math.prod(mu.shape[1:])} values per component but shape {shape_t} needs {d}")
    mu = mu.reshape(k, d)

    s = _as_f64(stds, "stds")
    if s.ndim == 0:
        s = s.expand(k).clone()
    if s.shape != (k,):
        raise AysError(f"stds must be a scalar or have shape [K] = [{k}], got {tuple(s.shape)}")
    if bool((s < 0).any()):
        i = int((s < 0).nonzero()[0])
        raise AysError(f"stds must be >= 0, got stds[{i}] = {s[i].item()}")

    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    else:
        w = _as_f64(weights, "weights")
        if w.shape != (k,):
            raise AysError(f"weights must have shape [K] = [{k}], got {tuple(w.shape)}")
        if bool((w < 0).any()):
            i = int((w < 0).nonzero()[0])
            raise AysError(f"weights must be >= 0, got weights[{i}] = {w[i].item()}")
        total = float(w.sum())
        if abs(total - 1.0) > 1e-6:
            raise AysError(f"weights must sum to 1, got sum {total:.9g}")
        w = w / total  # remove the round-off within the tolerance
    return mu, s, w, shape_t


# -------------------------------------------------------------- constructors
def gmm(
    means: Any,
    stds: Any,
    weights: Any = None,
    *,
    name: str = "gmm",
    shape: Sequence[int] | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> GaussianMixture:
    """Any isotropic Gaussian mixture.

    Args:
        means: ``[K, d]`` or ``[K, *shape]`` component means.
        stds: a scalar or ``[K]`` standard deviations, ``>= 0`` (0: a point mass).
        weights: ``[K]`` non-negative weights summing to 1 (default: equal).
        shape: the event shape (default: ``means.shape[1:]``).
    """
    return GaussianMixture(
        means, stds, weights, shape, name=name, sigma_min=sigma_min, sigma_max=sigma_max  # type: ignore[arg-type]
    )


def gaussian(
    c: float = 0.5, dim: int = 2, *, name: str | None = None, sigma_min: float = 0.002, sigma_max: float = 80.0
) -> Gaussian:
    """``N(0, c² I_dim)``, the data of the paper's analysis (Thm 3.1); exposes ``.c``."""
    c_val = float(c)
    if not math.isfinite(c_val) or c_val <= 0:
        raise AysError(f"c must be a finite number > 0, got {c!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise AysError(f"dim must be a positive integer, got {dim!r}")
    return Gaussian(
        torch.zeros(1, dim, dtype=torch.float64),
        torch.tensor([c_val], dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
        (dim,),
        name=name or f"gaussian(c={c_val:g}, dim={dim})",
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        c=c_val,
    )


def empirical(
    data: Tensor,
    *,
    name: str = "empirical",
    shape: Sequence[int] | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> GaussianMixture:
    """Uniform point masses on the rows of a finite data set ``[N, *shape]``.

    Its denoiser is the exact (memorising) denoiser of that training set: at small
    sigma it returns the nearest data point.
    """
    x = _as_f64(data, "data")
    if x.ndim < 2:
        raise AysError(f"data must have shape [N, *shape] with at least 2 dimensions, got {tuple(x.shape)}")
    n = x.shape[0]
    return GaussianMixture(
        x,
        torch.zeros(n, dtype=torch.float64),
        None,  # type: ignore[arg-type]
        shape if shape is not None else tuple(x.shape[1:]),  # type: ignore[arg-type]
        name=name,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
    )

"""The KLUB of a schedule, estimated by importance-sampled Monte Carlo (AYS, Alg. 2).

For one interval ``[a, b]`` of a schedule (``a < b``), the Kullback-Leibler upper
bound of Align Your Steps (Sabour et al. 2024, Eq. 8 and App. B) is

    KLUB(a, b) = ∫_a^b t⁻³ · E||D(x_t, t) − D(x_b, b)||² dt,
    x0 ~ data,  x_t = x0 + t·z1,  x_b = x_t + sqrt(b² − t²)·z2,

a nested forward chain (``x_b`` reuses ``x_t``). The schedule's KLUB is the sum
over its intervals; it bounds the path-space KL between the true reverse SDE and
the one stochastic DDIM solves exactly.

Importance sampling: ``t`` is drawn from the paper's proposal ``π(t) ∝ t⁻³ψ(t, b)``,
``ψ(t, b) = 1/(t² + c²) − 1/(b² + c²)`` (:mod:`ays.klub.proposal`), and weighted by ``Z(a, b)/ψ(t, b)``.

For Gaussian data ``N(0, c²I)`` with the exact denoiser,
``E||D(x_t,t) − D(x_b,b)||² = c⁴·d·(1/(t² + c²) − 1/(b² + c²))``, so the interval's KLUB is
``c⁴·d·Z_c(a, b) = (d/2)·h(x_ab)`` in closed form (:func:`gaussian_klub`; ``h``, ``x_ab`` as in
:mod:`ays.klub.proposal`). Writing
``W = 1 + c²/σ²`` the schedule's KLUB is ``(d/2)·Σ(r_i − 1 − log r_i)`` with
``r_i = W_{i+1}/W_i``; the logs telescope, so the minimiser makes ``W`` geometric
in the step index (:func:`gaussian_klub_optimal`), which is the recursion of
paper App. A.3, ``W_i² = W_{i−1}W_{i+1}``.

Common random numbers: a :class:`KlubDraws` holds one set of draws
``(x0, z1, z2, u)``; every interval and every candidate schedule evaluated on the
same draws is compared on the same randomness, so differences between candidates
are far more precise than each estimate alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import device as _device
from .. import distributed as _dist
from ..data import Cond, call, check_cond, draw, repeat, take, to
from ..seeds import seed_for
from ..solvers import Denoiser
from ..validate import AysError, check_positive, check_range, check_sigmas, check_steps
from .proposal import _check_interval, _f64, _h, _x_of, proposal_normalizer, proposal_sample

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Denoiser",
    "IntervalEstimate",
    "KlubDraws",
    "KlubEstimate",
    "estimate_schedule",
    "gaussian_klub",
    "gaussian_klub_optimal",
    "interval_klub",
    "klub",
    "seed_for",
]

Tensor = torch.Tensor
Data = Any  # a tensor [N, ...], data(n, generator), or either with conditioning: see ays.data

#: Denoiser rows per call when the caller gives no ``batch_size``.
DEFAULT_BATCH_SIZE = 8192

# --------------------------------------------------------------------------
# Draws (common random numbers)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class KlubDraws:
    """One set of draws for KLUB estimates: common random numbers.

    ``x0`` [S, ...] clean samples, ``z1`` and ``z2`` [S, ...] standard normal
    noise in the data's dtype and device, ``u`` [S] float64 uniforms in (0, 1]
    that place ``t`` in each interval by inverse CDF, ``cond`` each chain's own
    conditioning (:mod:`ays.data`; empty for unconditioned data). Reuse one object
    for every interval and candidate schedule that must be compared.
    """

    x0: Tensor
    z1: Tensor
    z2: Tensor
    u: Tensor
    cond: Cond = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.x0.shape[0]
        if self.z1.shape != self.x0.shape or self.z2.shape != self.x0.shape:
            raise AysError("KlubDraws: x0, z1 and z2 must have the same shape")
        if self.u.shape != (s,):
            raise AysError(f"KlubDraws: u must have shape ({s},), got {tuple(self.u.shape)}")
        object.__setattr__(self, "cond", check_cond(self.cond, s, what="KlubDraws: cond"))

    @property
    def samples(self) -> int:
        return int(self.x0.shape[0])

    @classmethod
    def create(cls, data: Data, samples: int, generator: torch.Generator | None = None) -> KlubDraws:
        """Draw ``samples`` chains from ``data`` (a tensor [N, ...] or ``data(n, generator)``).

        All randomness comes from ``generator`` (a CPU generator; without one, a
        fresh generator seeded from OS entropy). Noise is drawn on the CPU and
        moved to the data's device, so draws do not depend on the device.
        """
        samples = check_steps(samples, name="samples", minimum=2)
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        x0, cond = draw(data, samples, generator)
        z1 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
        z2 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
        u = 1.0 - torch.rand(samples, generator=generator, dtype=torch.float64, device=generator.device).cpu()
        return cls(x0=x0, z1=z1, z2=z2, u=u, cond=to(cond, x0.device))  # u in (0, 1]

    @classmethod
    def from_seed(cls, data: Data, samples: int, seed: int, *keys: object) -> KlubDraws:
        """Draws from a CPU generator seeded with :func:`seed_for(seed, *keys) <seed_for>`."""
        g = torch.Generator().manual_seed(seed_for(seed, *keys))
        return cls.create(data, samples, g)


# --------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalEstimate:
    """Estimates for a batch of intervals ``[lower[j], upper[j]]`` on one set of draws.

    ``values`` [m, S] float64 are the weighted per-draw terms (their mean is the
    estimate); ``calls`` counts denoiser rows evaluated.
    """

    lower: Tensor
    upper: Tensor
    mean: Tensor
    stderr: Tensor
    values: Tensor
    calls: int


def _call(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Cond | None = None) -> Tensor:
    """``denoiser(x, sigma, **cond)``, refusing a wrong shape or a non-finite row (named by its sigma)."""
    out = call(denoiser, x, sigma, cond or {})
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AysError(f"denoiser must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
    bad = ~torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AysError(f"denoiser returned NaN or inf at sigma={float(sigma[i]):.6g}")
    return out


def interval_klub(
    denoiser: Denoiser,
    draws: KlubDraws,
    lower: Tensor | Sequence[float],
    upper: Tensor | Sequence[float],
    c: float = 0.5,
    batch_size: int | None = None,
) -> IntervalEstimate:
    """KLUB of each interval ``[lower[j], upper[j]]``, all on the same ``draws``.

    Every draw k gives, for interval j, ``t = F_j⁻¹(u_k)``, ``x_t = x0_k + t·z1_k``,
    ``x_b = x_t + sqrt(b² − t²)·z2_k`` and the term
    ``Z_j · ||D(x_t, t) − D(x_b, b)||² / (1/(t² + c²) − 1/(b² + c²))``. Rows of all
    intervals are packed into denoiser calls of at most ``batch_size`` rows; the
    terms are accumulated in float64.
    """
    a = _f64(lower).reshape(-1)
    b = _f64(upper).reshape(-1)
    if a.shape != b.shape:
        raise AysError(f"lower and upper must have the same length, got {a.numel()} and {b.numel()}")
    c = check_positive(c, name="c")
    _check_interval(a, b)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else check_steps(batch_size, name="batch_size", minimum=2)
    m, s = a.numel(), draws.samples
    if m == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return IntervalEstimate(a, b, empty, empty, torch.zeros(0, s, dtype=torch.float64), 0)

    # t and b² - t² for every (interval, draw), float64, on the CPU.
    t, gap = proposal_sample(draws.u.reshape(1, s), a.reshape(m, 1), b.reshape(m, 1), c)
    bb = b.reshape(m, 1).expand(m, s)
    g = gap / ((t * t + c * c) * (bb * bb + c * c))  # 1/(t²+c²) - 1/(b²+c²), without cancellation
    weight = proposal_normalizer(a, b, c).reshape(m, 1) / g

    x0, z1, z2 = draws.x0, draws.z1, draws.z2
    dev, dt = x0.device, x0.dtype
    view = (-1,) + (1,) * (x0.ndim - 1)
    rows = max(1, batch_size // 2)  # each (interval, draw) needs two denoiser rows

    def terms(ks: slice) -> Tensor:
        """Per-draw terms [m, |ks|] of the draws ``ks`` (all of them, or this rank's share)."""
        sl = ks.stop - ks.start
        tl, gl, bl, wl = (v[:, ks].reshape(-1) for v in (t, gap, bb, weight))
        pieces: list[Tensor] = [torch.zeros(0, dtype=torch.float64)]
        for r0 in range(0, m * sl, rows):
            r1 = min(r0 + rows, m * sl)
            kd = (ks.start + torch.arange(r0, r1) % sl).to(dev)
            tt = tl[r0:r1].to(device=dev, dtype=dt)
            sb = bl[r0:r1].to(device=dev, dtype=dt)
            x_t = x0[kd] + tt.view(view) * z1[kd]
            x_b = x_t + gl[r0:r1].sqrt().to(device=dev, dtype=dt).view(view) * z2[kd]
            out = _call(denoiser, torch.cat([x_t, x_b]), torch.cat([tt, sb]), repeat(take(draws.cond, kd), 2))
            n = r1 - r0
            diff = (out[:n] - out[n:]).reshape(n, -1).to(torch.float64)
            pieces.append((diff * diff).sum(dim=1).cpu() * wl[r0:r1])
        return torch.cat(pieces).reshape(m, sl)

    # Under torch.distributed each rank evaluates its share of the draws and the
    # shares are all-gathered: every rank holds the single-process terms (ays.distributed).
    values = _dist.map_shards(s, terms, dim=1)
    mean = values.mean(dim=1)
    stderr = values.std(dim=1) / math.sqrt(s)
    return IntervalEstimate(a, b, mean, stderr, values, 2 * m * s)


@dataclass(frozen=True)
class KlubEstimate:
    """The estimated KLUB of a schedule.

    ``per_interval[i]`` is the KLUB of ``[sigmas[i+1], sigmas[i]]`` (float64 [n]),
    ``stderr[i]`` its Monte Carlo standard error; ``total`` is their sum and
    ``total_stderr`` its standard error (the intervals share draws, so it comes
    from the per-draw sums, not from adding variances). ``calls`` counts
    denoiser rows evaluated.
    """

    sigmas: Tensor
    per_interval: Tensor
    stderr: Tensor
    total: float
    total_stderr: float
    samples: int
    calls: int


def estimate_schedule(
    denoiser: Denoiser, draws: KlubDraws, sigmas: Tensor, c: float = 0.5, batch_size: int | None = None
) -> KlubEstimate:
    """The KLUB of every interval of ``sigmas`` (ending at ``sigma_min > 0``) on ``draws``."""
    s = check_sigmas(sigmas, allow_final_zero=False)
    est = interval_klub(denoiser, draws, s[1:], s[:-1], c=c, batch_size=batch_size)
    per_draw = est.values.sum(dim=0)
    return KlubEstimate(
        sigmas=s,
        per_interval=est.mean,
        stderr=est.stderr,
        total=float(per_draw.mean()),
        total_stderr=float(per_draw.std() / math.sqrt(draws.samples)),
        samples=draws.samples,
        calls=est.calls,
    )


def klub(
    denoiser: Denoiser,
    data: Data,
    sigmas: Tensor | Sequence[float],
    samples: int = 4096,
    generator: torch.Generator | None = None,
    c: float = 0.5,
    batch_size: int | None = None,
    draws: KlubDraws | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    max_memory: int | str | None = None,
) -> KlubEstimate:
    """Estimate the KLUB of each interval of a schedule (paper Alg. 2).

    ``denoiser(x, sigma)`` with ``sigma`` of shape [batch]; ``data`` a tensor of
    clean samples [N, ...] (cycled through random permutations) or a callable
    ``data(n, generator) -> [n, ...]``; ``sigmas`` n+1 decreasing levels ending at
    ``sigma_min > 0``. ``samples`` chains are drawn from ``generator`` unless
    ``draws`` (a :class:`KlubDraws`, for common random numbers) is given.
    ``c`` is the proposal's scale (0.5 in the paper). Returns a :class:`KlubEstimate`.

    Scale (:mod:`ays.device`, :mod:`ays.distributed`): ``dtype`` (``"float16"``, ``"bfloat16"``, ...) and
    ``device`` run the denoiser there (default: its parameters' dtype and device;
    draws follow the device); ``max_memory`` (bytes, or ``"8GiB"``) caps the memory of
    each denoiser call, which sets the batch size (draws then stay in host memory).
    Under ``torch.distributed`` the draws are shared out across ranks.
    """
    s = check_sigmas(sigmas, allow_final_zero=False)
    run = _device.prepare(denoiser, dtype, device)
    if max_memory is not None:
        cap = _device.parse_memory(max_memory)
        assert cap is not None
        row = draws.x0[:1] if draws is not None else KlubDraws.create(data, 2, torch.Generator().manual_seed(0)).x0[:1]
        batch_size = _device.batch_size_for(run, row, cap, sigma=float(s[0]), batch_size=batch_size)
    elif draws is None:
        data = _device.place_data(data, run.device)
    if draws is None:
        draws = KlubDraws.create(data, samples, generator)
    return estimate_schedule(run, draws, s, c=c, batch_size=batch_size)


# --------------------------------------------------------------------------
# Gaussian data: closed forms (test oracles, benchmarks)
# --------------------------------------------------------------------------


def gaussian_klub(
    sigmas: Tensor | Sequence[float], c: float, dim: int = 1, per_interval: bool = False
) -> Tensor:
    """Exact KLUB of a schedule for data ``N(0, c²I_dim)`` and its exact denoiser.

    Interval ``[a, b]``: ``c⁴·dim·∫_a^b t⁻³(1/(t² + c²) − 1/(b² + c²)) dt = (dim/2)·h(x_ab)``
    with ``h(x) = x − log(1 + x)``, ``x_ab = c²(b² − a²)/(a²(b² + c²))``. Returns the
    total (a 0-d float64 tensor) or, with ``per_interval``, the [n] terms.
    """
    s = check_sigmas(sigmas, allow_final_zero=False)
    c = check_positive(c, name="c")
    dim = check_steps(dim, name="dim")
    terms = 0.5 * dim * _h(_x_of(s[1:], s[:-1], c))
    return terms if per_interval else terms.sum()


def gaussian_klub_optimal(steps: int, sigma_min: float, sigma_max: float, c: float) -> Tensor:
    """The schedule minimising :func:`gaussian_klub` (paper App. A.3), in closed form.

    With ``W = 1 + c²/σ²`` the total KLUB is ``(dim/2)·Σ(r_i − 1 − log r_i)``,
    ``r_i = W_{i+1}/W_i``; ``Σ log r_i`` telescopes, and ``Σ r_i`` with fixed ends is
    least when ``W`` is geometric in i (AM-GM). This is App. A.3's recursion
    ``t_i = c·sqrt(t_{i−1}t_{i+1} / (sqrt((t_{i−1}² + c²)(t_{i+1}² + c²)) − t_{i−1}t_{i+1}))``,
    i.e. ``W_i² = W_{i−1}W_{i+1}``, solved.
    """
    steps = check_steps(steps)
    lo, hi = check_range(sigma_min, sigma_max)
    c = check_positive(c, name="c")
    # log W, computed as log1p to keep the top end (c²/σ² tiny) exact.
    lw0, lwn = math.log1p(c * c / hi**2), math.log1p(c * c / lo**2)
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    w_minus_1 = torch.expm1(lw0 + frac * (lwn - lw0))
    s = c / torch.sqrt(w_minus_1)
    s[0], s[-1] = hi, lo
    return check_sigmas(s, allow_final_zero=False)


"""The KLUB of a multistep solver: Align Your Steps' bound with the solver's own extrapolated drift.

The paper derives its bound for stochastic DDIM only: on ``[a, b]`` the drift uses
the denoiser frozen at ``D(x_b, b)``. Its Theorem 3.2 (Girsanov) allows any
drift that depends on the path so far, so the same argument bounds every solver
whose step is the exact solution of the reverse SDE with *some* frozen estimate
``D̂`` of the denoiser (data processing: the solver's chain is a marginal of that
continuous process). In the EDM convention the reverse SDE
``dx = 2(x − D̂)/t dt + sqrt(2t) dW̄`` with ``D̂`` constant over ``[a, b]`` solves to

    x_a = (a²/b²) x_b + (1 − a²/b²) D̂ + a·sqrt(1 − a²/b²) z,

and the probability-flow ODE ``dx/dt = (x − D̂)/t`` to ``x_a = (a/b) x_b + (1 − a/b) D̂``.

**DPM-Solver++(2M)**, ODE and SDE, as :mod:`ays.solvers.dpmpp` implements it
(k-diffusion's ``midpoint`` form): with ``h = log(b/a)``, ``h₁ = log(p/b)`` the
previous step (``p`` the level before ``b``) and ``H = (1 + η)h``,

    x_a = e^{−H} x_b + (1 − e^{−H}) D_b + ½(1 − e^{−H})·(h/h₁)(D_b − D_p)   (+ noise),

which is *exactly* the frozen-denoiser step with

    D̂ = D_b + β (D_b − D_p),   β = h / (2h₁)   (midpoint; any η),
    β = φ₂(H)/(1 − e^{−H}) · h/h₁              (the ``heun`` variant, φ₂(H) = 1 + expm1(−H)/H),

i.e. the linear extrapolation of ``D`` in ``λ = −log σ`` to the λ-midpoint of the
step. The bound of step ``[a, b]`` with previous level ``p`` is therefore

    KLUB₂ₘ(a, b; p) = ∫_a^b t⁻³ E||D(x_t, t) − D_b − β(D_b − D_p)||² dt,

over the nested forward chain ``x_t ⊂ x_b ⊂ x_p`` (``x_b = x_t + sqrt(b² − t²) z₂``,
``x_p = x_b + sqrt(p² − b²) z₃``): it depends on three consecutive levels. The first
step has no history (``β = 0``, DDIM), and so has the final step into ``σ = 0`` of
the sampling form (the solver returns ``D`` there; ``final_first_order=True``).

Expanding with ``u = D_t − D_b`` and ``v = D_b − D_p``,

    E||u − βv||² = E||u||² − 2β E<u, v> + β² E||v||²,

so ``KLUB₂ₘ = KLUB_DDIM(a, b) − 2β ∫ t⁻³ E<u, v> dt + β² · ½(a⁻² − b⁻²) · E||D_b − D_p||²``.

**A fact worth knowing.** For the ideal denoiser ``D(x_t, t) = E[x0 | x_t]`` is a
martingale along the chain run from high to low noise (``x_b`` and ``x_p`` are
``x_t`` plus independent noise, so ``E[x0 | x_t] = E[x0 | x_t, x_b, x_p]``), hence
``E<u, v> = 0``: the extrapolated bound is the DDIM bound *plus* a non-negative
term. Among drifts that depend on the path so far, the frozen ``D_b`` of
stochastic DDIM is the path-KL-optimal one; the extrapolation pays off for the
smooth ODE trajectory, not in path space. The solver-aware bound therefore acts on
a schedule as the DDIM bound plus a penalty ``β²·½(a⁻² − b⁻²)·E||D_b − D_p||²`` on
steps much longer (in log σ) than their predecessor at low noise.

**Estimator** (importance sampling as :mod:`ays.klub`): ``t`` from the paper's proposal
``π(t) ∝ t⁻³ψ(t, b)``, ``ψ(t, b) = 1/(t² + c²) − 1/(b² + c²)``, weight ``w = Z/ψ(t, b)``; per draw

    w·(||u||² − 2β<u, v>) + β²·½(a⁻² − b⁻²)·||v||².

``u`` vanishes as ``t → b`` (where ``w`` blows up), ``v`` does not, which is why the
``β²`` term is integrated in closed form instead of being weighted: the variance stays
finite. With ``β = 0`` the per-draw terms are those of :func:`ays.klub.interval_klub`
on the same draws.

**Gaussian data** ``N(0, c²I)``: the cross term vanishes (martingale) and
``E||D_b − D_p||² = c⁴ d ψ_c(b, p)``, so (:func:`gaussian_klub`)

    KLUB₂ₘ(a, b; p) = (d/2) h(x_ab) + β² · ½(a⁻² − b⁻²) · c⁴ d ψ_c(b, p).

Solvers without a frozen-drift form here (Heun, the 3M and ER-SDE families, EDM's
churn) fall back to the DDIM bound (:func:`bound_of` says which bound applies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data import repeat, take
from ..validate import AysError, check_choice, check_positive, check_sigmas, check_steps
from .estimator import (
    DEFAULT_BATCH_SIZE,
    Data,
    Denoiser,
    KlubDraws,
    KlubEstimate,
    _call,
    seed_for,
)
from .estimator import gaussian_klub as _gaussian_klub_ddim
from .proposal import _f64, proposal_normalizer, proposal_sample

__all__ = [
    "EXTRAPOLATING",
    "SolverDraws",
    "beta",
    "bound_of",
    "estimate_schedule",
    "gaussian_klub",
    "interval_klub_extrapolated",
    "klub",
    "schedule_betas",
]

Tensor = torch.Tensor

#: Solvers whose step is the frozen-denoiser step with ``D̂ = D_b + β(D_b − D_p)``.
EXTRAPOLATING = ("dpmpp_2m", "dpmpp_2m_sde")
#: Solvers whose step freezes ``D_b`` itself (β = 0): the paper's bound is theirs.
_FROZEN = ("stochastic_ddim", "euler", "euler_ancestral")


def bound_of(solver: str) -> str:
    """Which bound applies to ``solver``: ``"2m"`` (extrapolated drift) or ``"ddim"`` (frozen ``D_b``)."""
    if not isinstance(solver, str):
        raise AysError(f"solver must be a name, got {solver!r}")
    return "2m" if solver in EXTRAPOLATING else "ddim"


def _phi2_ratio(H: Tensor) -> Tensor:
    """``φ₂(H)/(1 − e^{−H})`` with ``φ₂(H) = 1 + expm1(−H)/H``; → 1/2 as H → 0, series below 1e-2."""
    small = H < 1e-2
    hs = torch.where(small, torch.ones_like(H), H)  # a dummy where the series takes over
    exact = (1.0 + torch.expm1(-hs) / hs) / (-torch.expm1(-hs))
    # φ₂/(1 − e^{−H}) = 1/2 + H/12 − H³/720 + ...
    series = 0.5 + H / 12.0 - H**3 / 720.0
    return torch.where(small, series, exact)


def beta(
    solver: str,
    a: Tensor | float,
    b: Tensor | float,
    p: Tensor | float,
    *,
    eta: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """The extrapolation weight β of a step ``b → a`` whose previous level was ``p`` (``a < b < p``).

    ``D̂ = D_b + β(D_b − D_p)`` reproduces the solver's step exactly (module docstring):
    ``β = h/(2h₁)`` for the ``midpoint`` 2M solvers (ODE or SDE), ``φ₂(H)/(1 − e^{−H})·h/h₁``
    for ``solver_type="heun"`` (``H = (1 + η)h``; ``η = 0`` for ``dpmpp_2m``), ``0`` for the
    frozen-denoiser solvers. Broadcasts; float64.
    """
    a, b, p = torch.broadcast_tensors(_f64(a), _f64(b), _f64(p))
    if bound_of(solver) == "ddim":
        return torch.zeros_like(a)
    check_choice(solver_type, ("midpoint", "heun"), what="solver_type")
    if torch.any(a <= 0) or torch.any(a >= b) or torch.any(b >= p):
        raise AysError("beta needs levels a < b < p, all > 0")
    h = torch.log(b / a)
    h1 = torch.log(p / b)
    if solver_type == "midpoint":
        return h / (2.0 * h1)
    eta = 0.0 if solver == "dpmpp_2m" else check_positive(eta, name="eta", allow_zero=True)
    return _phi2_ratio((1.0 + eta) * h) * h / h1


def schedule_betas(
    solver: str,
    sigmas: Tensor | Sequence[float],
    *,
    final_first_order: bool = True,
    eta: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """β of every step of a schedule ``s_0 > ... > s_n`` (ending at ``sigma_min > 0``), float64 [n].

    Step ``i`` runs ``s_i → s_{i+1}``; step 0 has no history (β = 0); with
    ``final_first_order`` (the sampling form, where the last step is the final
    denoise into 0) the last step has β = 0 too.
    """
    s = check_sigmas(sigmas, allow_final_zero=False)
    n = s.numel() - 1
    out = torch.zeros(n, dtype=torch.float64)
    if n >= 2 and bound_of(solver) == "2m":
        out[1:] = beta(solver, s[2:], s[1:-1], s[:-2], eta=eta, solver_type=solver_type)
        if final_first_order:
            out[-1] = 0.0
    return out


# --------------------------------------------------------------------------
# Draws: the paper's (x0, z1, z2, u) plus the noise z3 that carries x_b up to x_p
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverDraws:
    """Common random numbers for the solver-aware bound: a :class:`ays.klub.KlubDraws` and ``z3``.

    ``base`` places ``t`` and builds ``x_t``, ``x_b`` exactly as :mod:`ays.klub` does (so
    β = 0 terms equal the DDIM estimator's on ``base``); ``z3`` [S, ...] adds
    ``sqrt(p² − b²)·z3`` to reach the previous level ``p``.
    """

    base: KlubDraws
    z3: Tensor

    def __post_init__(self) -> None:
        if self.z3.shape != self.base.x0.shape:
            raise AysError("SolverDraws: z3 must have the shape of the base draws' x0")

    @property
    def samples(self) -> int:
        return self.base.samples

    @classmethod
    def create(cls, data: Data, samples: int, generator: torch.Generator | None = None) -> SolverDraws:
        """``samples`` chains from ``data``; all randomness from ``generator`` (CPU), base draws first."""
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        base = KlubDraws.create(data, samples, generator)
        x0 = base.x0
        z3 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
        return cls(base=base, z3=z3)

    @classmethod
    def from_seed(cls, data: Data, samples: int, seed: int, *keys: object) -> SolverDraws:
        g = torch.Generator().manual_seed(seed_for(seed, *keys))
        return cls.create(data, samples, g)


def interval_klub_extrapolated(
    denoiser: Denoiser,
    draws: SolverDraws,
    lower: Tensor | Sequence[float],
    upper: Tensor | Sequence[float],
    previous: Tensor | Sequence[float],
    betas: Tensor | Sequence[float],
    c: float = 0.5,
    batch_size: int | None = None,
) -> tuple[Tensor, int]:
    """Per-draw terms of the extrapolated bound of intervals ``[lower[j], upper[j]]``: ([m, S] float64, calls).

    Interval ``j`` freezes ``D̂ = D_b + betas[j]·(D_b − D_p)`` with ``p = previous[j]``
    (ignored where ``betas[j] == 0``, which costs two denoiser rows per draw
    instead of three). Term per draw: ``w·(||u||² − 2β<u, v>) + β²·½(a⁻² − b⁻²)·||v||²``.
    """
    a = _f64(lower).reshape(-1)
    b = _f64(upper).reshape(-1)
    p = _f64(previous).reshape(-1)
    bet = _f64(betas).reshape(-1)
    m = a.numel()
    if not (b.numel() == m and p.numel() == m and bet.numel() == m):
        raise AysError("lower, upper, previous and betas must have the same length")
    c = check_positive(c, name="c")
    if torch.any(a <= 0) or torch.any(a >= b):
        raise AysError("every interval needs 0 < lower < upper")
    if not torch.all(torch.isfinite(bet)):
        raise AysError("betas must be finite")
    ext = bet != 0
    if torch.any(ext & (p <= b)):
        raise AysError("an extrapolating interval needs previous > upper")
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else check_steps(batch_size, name="batch_size", minimum=3)
    s = draws.samples
    values = torch.zeros(m, s, dtype=torch.float64)
    if m == 0:
        return values, 0
    x0, z1, z2, z3 = draws.base.x0, draws.base.z1, draws.base.z2, draws.z3
    dev, dt = x0.device, x0.dtype
    view = (-1,) + (1,) * (x0.ndim - 1)
    calls = 0
    per_draw = max(1, batch_size // 3)
    for j in range(m):
        aj, bj = a[j : j + 1], b[j : j + 1]
        t, gap = proposal_sample(draws.base.u, aj, bj, c)  # [S]
        psi = gap / ((t * t + c * c) * (bj * bj + c * c))
        weight = proposal_normalizer(aj, bj, c) / psi
        delta = 0.5 * (1.0 / aj**2 - 1.0 / bj**2)
        bj_f, pj_f, betj = float(bj), float(p[j]), float(bet[j])
        for r0 in range(0, s, per_draw):
            r1 = min(r0 + per_draw, s)
            n = r1 - r0
            tt = t[r0:r1].to(device=dev, dtype=dt)
            x_t = x0[r0:r1] + tt.view(view) * z1[r0:r1]
            x_b = x_t + gap[r0:r1].sqrt().to(device=dev, dtype=dt).view(view) * z2[r0:r1]
            xs, sig = [x_t, x_b], [tt, torch.full((n,), bj_f, dtype=dt, device=dev)]
            if betj != 0.0:
                x_p = x_b + math.sqrt((pj_f - bj_f) * (pj_f + bj_f)) * z3[r0:r1]
                xs.append(x_p)
                sig.append(torch.full((n,), pj_f, dtype=dt, device=dev))
            cond = repeat(take(draws.base.cond, slice(r0, r1)), len(xs))
            out = _call(denoiser, torch.cat(xs), torch.cat(sig), cond).reshape(len(xs), n, -1).to(torch.float64)
            calls += len(xs) * n
            u = out[0] - out[1]
            term = (u * u).sum(dim=1).cpu()
            if betj != 0.0:
                v = out[1] - out[2]
                term = term - 2.0 * betj * (u * v).sum(dim=1).cpu()
                values[j, r0:r1] = weight[r0:r1] * term + betj * betj * float(delta) * (v * v).sum(dim=1).cpu()
            else:
                values[j, r0:r1] = weight[r0:r1] * term
    return values, calls


def estimate_schedule(
    denoiser: Denoiser,
    draws: SolverDraws,
    sigmas: Tensor,
    solver: str = "dpmpp_2m_sde",
    c: float = 0.5,
    batch_size: int | None = None,
    final_first_order: bool = True,
    eta: float = 1.0,
    solver_type: str = "midpoint",
) -> KlubEstimate:
    """The solver-aware KLUB of every interval of ``sigmas`` on ``draws`` (see :func:`klub`)."""
    s = check_sigmas(sigmas, allow_final_zero=False)
    bet = schedule_betas(solver, s, final_first_order=final_first_order, eta=eta, solver_type=solver_type)
    prev = torch.cat([s[:1] * 2.0, s[:-2]])  # step 0 has no previous level; β = 0 there, the value is unused
    values, calls = interval_klub_extrapolated(denoiser, draws, s[1:], s[:-1], prev, bet, c=c, batch_size=batch_size)
    n_s = draws.samples
    per_draw = values.sum(dim=0)
    return KlubEstimate(
        sigmas=s,
        per_interval=values.mean(dim=1),
        stderr=values.std(dim=1) / math.sqrt(n_s),
        total=float(per_draw.mean()),
        total_stderr=float(per_draw.std() / math.sqrt(n_s)),
        samples=n_s,
        calls=calls,
    )


def klub(
    denoiser: Denoiser,
    data: Data,
    sigmas: Tensor | Sequence[float],
    solver: str = "dpmpp_2m_sde",
    samples: int = 4096,
    generator: torch.Generator | None = None,
    c: float = 0.5,
    batch_size: int | None = None,
    draws: SolverDraws | None = None,
    final_first_order: bool = True,
    **solver_options: Any,
) -> KlubEstimate:
    """Estimate the KLUB of each interval of a schedule for ``solver`` (module docstring).

    Like :func:`ays.klub.klub`, with the drift of ``solver``: for ``dpmpp_2m`` and
    ``dpmpp_2m_sde`` the frozen value is the solver's extrapolation
    ``D_b + β(D_b − D_p)``; for the frozen-denoiser solvers (stochastic DDIM, Euler,
    Euler ancestral) and those without a frozen-drift form it is the paper's bound.
    ``solver_options``: ``eta`` and ``solver_type`` of :func:`ays.solvers.dpmpp_2m_sde`.
    ``final_first_order``: the last step is the final denoise of the sampling form (β = 0).
    """
    unknown = sorted(set(solver_options) - {"eta", "solver_type"})
    if unknown:
        raise AysError(
            f"unknown solver option(s) for the solver-aware KLUB: {', '.join(unknown)}; valid: eta, solver_type"
        )
    if not isinstance(final_first_order, bool):
        raise AysError(f"final_first_order must be True or False, got {final_first_order!r}")
    if draws is None:
        samples = check_steps(samples, name="samples", minimum=2)
        draws = SolverDraws.create(data, samples, generator)
    return estimate_schedule(
        denoiser, draws, _f64(sigmas), solver=solver, c=c, batch_size=batch_size,
        final_first_order=final_first_order, **solver_options,
    )


def gaussian_klub(
    sigmas: Tensor | Sequence[float],
    c: float,
    dim: int = 1,
    solver: str = "dpmpp_2m_sde",
    per_interval: bool = False,
    final_first_order: bool = True,
    eta: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """Exact solver-aware KLUB for data ``N(0, c²I_dim)`` and its exact denoiser (module docstring).

    ``(d/2)h(x_ab) + β²·½(a⁻² − b⁻²)·c⁴ d ψ_c(b, p)`` per interval; with β = 0 it is
    :func:`ays.klub.gaussian_klub`.
    """
    s = check_sigmas(sigmas, allow_final_zero=False)
    c = check_positive(c, name="c")
    dim = check_steps(dim, name="dim")
    base = _gaussian_klub_ddim(s, c, dim, per_interval=True)
    bet = schedule_betas(solver, s, final_first_order=final_first_order, eta=eta, solver_type=solver_type)
    extra = torch.zeros_like(base)
    if s.numel() > 2:
        a, b, p = s[2:], s[1:-1], s[:-2]
        c2 = c * c
        psi = (p - b) * (p + b) / ((b * b + c2) * (p * p + c2))
        extra[1:] = bet[1:] ** 2 * 0.5 * (1.0 / a**2 - 1.0 / b**2) * c2 * c2 * dim * psi
    terms = base + extra
    return terms if per_interval else terms.sum()

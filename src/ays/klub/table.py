"""The KLUB table: squared denoiser differences on nested chains over a fine grid, and its quadrature.

Take a fine grid of noise levels ``g_0 = sigma_min < g_1 < ... < g_{G−1} = sigma_max``
(log-spaced; a discrete-time model's own levels). Every chain is one nested forward
path through the whole grid,

    x_{g_0} = x0 + g_0 z_0,    x_{g_{j+1}} = x_{g_j} + sqrt(g_{j+1}² − g_j²) z_{j+1},

so for every pair ``t = g_k < b = g_j`` the chain holds ``x_t`` and ``x_b = x_t + sqrt(b² − t²) z``
with exactly the joint law of the KLUB (AYS Eq. 8). The denoiser runs once per grid
point per chain (``G·S`` rows) and the table keeps the ``G × G`` matrix of mean squared
differences ``M[k, j] = E||D(x_{g_k}, g_k) − D(x_{g_j}, g_j)||²`` — accumulated chunk by
chunk, so at most ``[chunk, G, d]`` outputs are ever held. Every step count and both the
DDIM and the solver-aware bounds (:mod:`ays.optimize.dp`) are read from that one matrix.

**The cost of an interval** ``[g_a, g_b]`` is ``∫ t⁻³ M(t, g_b) dt``, known only at the grid
points. Product integration: write ``M(t, b) = ψ(t, b)·r(t)`` with the paper's proposal
shape ``ψ(t, b) = 1/(t² + c²) − 1/(b² + c²)`` (for data ``N(0, c²I)``, ``r ≡ c⁴d`` exactly), take
``r`` piecewise linear between grid points (trapezoid; on the last cell below ``b``,
where ``r(b) = 0/0``, the value at its lower end) and integrate ``t⁻³ψ(t, b)`` over each cell
exactly with the closed-form mass of :func:`ays.klub.proposal_normalizer`:

    K[a, b] = Σ_{k=a}^{b−1} (Z(g_k, b) − Z(g_{k+1}, b)) · r̄_k(b),    r_k(b) = M[k, b]/ψ(g_k, b).

It is consistent (the trapezoid error vanishes as the grid is refined, the Monte Carlo
error as the chains grow), exact for Gaussian data whose scale is the proposal's ``c``,
and its value on an interval estimates the same quantity as :func:`ays.klub.interval_klub`.

Under ``torch.distributed`` each rank runs the denoiser on its own share of every chunk's chains
and the outputs are all-gathered (:func:`ays.distributed.map_shards`): every rank ends with the
single-process table, having spent ``1/world`` of its rows.

Randomness: chunk ``k`` of chains draws from :func:`ays.klub.seed_for` ``(seed, "dp", k)``, so
a run resumed from its checkpoint (written after every chunk) ends with the same table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed as _dist
from ..data import draw, repeat, take, to
from ..validate import AysError, check_positive, check_range, check_steps
from .estimator import DEFAULT_BATCH_SIZE, Data, Denoiser, _call, seed_for
from .proposal import proposal_normalizer

__all__ = ["KlubTable", "build_table", "log_grid", "quadrature"]

Tensor = torch.Tensor

#: float64 numbers of the ``[chunk, G, d]`` block of denoiser outputs held at once.
_BLOCK_ELEMENTS = 1 << 22


def log_grid(sigma_min: float, sigma_max: float, size: int) -> Tensor:
    """``size`` levels uniform in log-sigma from ``sigma_min`` to ``sigma_max`` (increasing, float64)."""
    lo, hi = check_range(sigma_min, sigma_max)
    size = check_steps(size, name="grid", minimum=2)
    g = torch.exp(torch.linspace(math.log(lo), math.log(hi), size, dtype=torch.float64))
    g[0], g[-1] = lo, hi
    return g


@dataclass
class KlubTable:
    """Sums of squared denoiser differences over nested chains on a grid.

    ``grid`` [G] increasing float64; ``sums[k, j] = Σ_chains ||D(x_{g_k}, g_k) − D(x_{g_j}, g_j)||²``
    (float64, symmetric, zero diagonal); ``chains`` counted; ``calls`` denoiser rows spent.
    """

    grid: Tensor
    sums: Tensor
    chains: int = 0
    calls: int = 0
    chunks: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.grid.numel())

    @property
    def mean_sq(self) -> Tensor:
        """``M[k, j] = E||D_k − D_j||²`` (float64 [G, G])."""
        if self.chains == 0:
            raise AysError("the table holds no chains yet")
        return self.sums / self.chains

    def klub(self, c: float = 0.5) -> Tensor:
        """``K[a, b]``: the estimated KLUB of every grid interval ``[g_a, g_b]`` (a < b; 0 elsewhere)."""
        return quadrature(self.mean_sq, self.grid, c)

    def subset(self, index: Tensor) -> KlubTable:
        """The table restricted to the grid points ``index`` (increasing)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return KlubTable(self.grid[idx], self.sums[idx][:, idx], self.chains, self.calls, self.chunks)

    def refined(self, size: int, c: float = 0.5) -> KlubTable:
        """The table interpolated onto a grid of at most ``size`` levels, with no denoiser call.

        Each cell is cut into ``(size − 1) // (G − 1)`` equal parts in log-sigma (the old levels
        kept). ``M`` vanishes on the diagonal and cannot be interpolated there; its ratio to the
        proposal shape, ``r = M/|ψ|`` (module docstring), is smooth, symmetric in ``(t, b)`` and
        finite on the diagonal (``c⁴d·ψ_c/ψ`` for Gaussian data). So ``r`` is mirrored below the
        diagonal, set on it to the mean of its two neighbours, interpolated bilinearly in
        log-sigma, and ``M = r·ψ`` on the new levels. The refined table's quadrature is the
        interpolated quadrature between grid levels: what the programme minimises off the grid.
        """
        size = check_steps(size, name="size", minimum=2)
        g, m = self.grid, self.mean_sq
        n = g.numel()
        parts = max(1, (size - 1) // (n - 1))
        if parts == 1:
            return self
        c = check_positive(c, name="c")
        k, j = torch.triu_indices(n, n, offset=1)
        r = torch.zeros(n, n, dtype=torch.float64)
        r[k, j] = m[k, j] / _psi(g[k], g[j], c)
        r = r + r.T
        near = r.diagonal(1)
        diag = torch.zeros(n, dtype=torch.float64)
        diag[1:] += near
        diag[:-1] += near
        diag[1:-1] /= 2
        r += torch.diag(diag)
        # Fine level u (in units of old cells) lies in cell i0 at fraction w, in log-sigma.
        u = torch.arange((n - 1) * parts + 1, dtype=torch.float64) / parts
        i0 = u.floor().long().clamp(max=n - 2)
        w = u - i0
        lg = g.log()
        fine = torch.exp(lg[i0] + w * (lg[i0 + 1] - lg[i0]))
        fine[::parts] = g  # the old levels, bit for bit
        rows = r[i0] * (1 - w)[:, None] + r[i0 + 1] * w[:, None]
        rf = rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]
        kf, jf = torch.triu_indices(fine.numel(), fine.numel(), offset=1)
        mf = torch.zeros(fine.numel(), fine.numel(), dtype=torch.float64)
        mf[kf, jf] = rf[kf, jf] * _psi(fine[kf], fine[jf], c)
        mf = mf + mf.T
        return KlubTable(fine, mf * self.chains, self.chains, self.calls, self.chunks)


def _chunk_rows(chains: int, size: int, numel: int, chunk: int | None) -> int:
    if chunk is not None:
        return min(chains, check_steps(chunk, name="chunk"))
    return max(1, min(chains, _BLOCK_ELEMENTS // max(1, size * numel)))


def _accumulate_chunk(
    denoiser: Denoiser, data: Data, grid: Tensor, n: int, generator: torch.Generator, batch_size: int
) -> tuple[Tensor, int]:
    """One chunk of ``n`` nested chains: their contribution to ``sums`` and the rows spent (all ranks).

    Under ``torch.distributed`` every rank draws the whole chunk's noise (the same numbers)
    but runs the denoiser on its own share of the chains only (:func:`ays.distributed.shard`);
    the outputs are all-gathered in rank order, so every rank forms the single-process sums.
    """
    x0, cond = draw(data, n, generator)
    dev, dt = x0.device, x0.dtype
    cond = to(cond, dev)
    size = grid.numel()
    numel = x0[0].numel()
    steps = torch.sqrt(torch.cat([grid[:1] ** 2, (grid[1:] - grid[:-1]) * (grid[1:] + grid[:-1])]))
    # Every rank draws every level's noise in the same order: the generator's stream is the chunk's.
    noise = [torch.randn(x0.shape, generator=generator, dtype=dt, device=generator.device) for _ in range(size)]

    def outputs(ks: slice) -> Tensor:
        """``D(x_{g_j}, g_j)`` of the chains ``ks`` at every grid level, float64 ``[|ks|, G, d]``."""
        m = ks.stop - ks.start
        outs = torch.empty((m, size, numel), dtype=torch.float64, device=dev)
        if m == 0:
            return outs
        c_l = take(cond, ks)
        x = x0[ks]
        # Walk up the grid; a batch packs whole levels of the share while it fits in batch_size rows.
        levels_per_call = max(1, batch_size // m)
        pending: list[tuple[int, Tensor]] = []

        def flush() -> None:
            if not pending:
                return
            xs = torch.cat([p[1] for p in pending])
            sig = torch.cat([torch.full((m,), float(grid[j]), dtype=dt, device=dev) for j, _ in pending])
            out = _call(denoiser, xs, sig, repeat(c_l, len(pending))).reshape(len(pending), m, -1)
            for i, (j, _) in enumerate(pending):
                outs[:, j] = out[i].to(torch.float64)
            pending.clear()

        for j in range(size):
            x = x + float(steps[j]) * noise[j][ks].to(dev)
            if m > batch_size:  # a share wider than a batch: split rows
                for r0 in range(0, m, batch_size):
                    r1 = min(m, r0 + batch_size)
                    sig = torch.full((r1 - r0,), float(grid[j]), dtype=dt, device=dev)
                    out = _call(denoiser, x[r0:r1], sig, take(c_l, slice(r0, r1)))
                    outs[r0:r1, j] = out.reshape(r1 - r0, -1).to(torch.float64)
            else:
                pending.append((j, x))
                if len(pending) >= levels_per_call:
                    flush()
        flush()
        return outs

    outs = _dist.map_shards(n, outputs, dim=0)
    # Centre on the top level: squared norms stay of the size of the differences near the top,
    # where the differences are smallest, so the Gram form loses no digits there.
    y = outs - outs[:, -1:, :]
    sq = (y * y).sum(dim=2)  # [n, G]
    gram = torch.einsum("ckd,cjd->kj", y, y)
    s = sq.sum(dim=0)
    part = s[:, None] + s[None, :] - 2.0 * gram
    part.fill_diagonal_(0.0)
    return part.clamp_min(0.0).cpu(), n * size


def build_table(
    denoiser: Denoiser,
    data: Data,
    grid: Tensor | Sequence[float],
    chains: int = 4096,
    seed: int = 0,
    batch_size: int | None = None,
    chunk: int | None = None,
    table: KlubTable | None = None,
    on_chunk: Callable[[KlubTable], None] | None = None,
) -> KlubTable:
    """Run ``chains`` nested forward chains over ``grid`` and accumulate the table (module docstring).

    Chunk ``k`` draws from ``seed_for(seed, "dp", k)``; pass a partial ``table`` to continue
    it (resume). ``on_chunk(table)`` is called after every chunk (checkpoints, progress).
    """
    g = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    if g.numel() < 2 or not torch.all(g[1:] > g[:-1]) or g[0] <= 0 or not torch.isfinite(g).all():
        raise AysError("the grid must hold at least 2 strictly increasing positive noise levels")
    chains = check_steps(chains, name="samples", minimum=2)
    batch = DEFAULT_BATCH_SIZE if batch_size is None else check_steps(batch_size, name="batch_size")
    probe, _ = draw(data, 1, torch.Generator().manual_seed(seed_for(seed, "dp", "probe")))
    rows = _chunk_rows(chains, g.numel(), probe[0].numel(), chunk)
    if table is None:
        table = KlubTable(g.clone(), torch.zeros(g.numel(), g.numel(), dtype=torch.float64))
    elif not torch.equal(table.grid, g):
        raise AysError("the partial table was made on another grid")
    n_chunks = -(-chains // rows)
    for k in range(table.chunks, n_chunks):
        n = min(rows, chains - k * rows)
        gen = torch.Generator().manual_seed(seed_for(seed, "dp", k))
        part, calls = _accumulate_chunk(denoiser, data, g, n, gen, batch)
        table.sums += part
        table.chains += n
        table.calls += calls
        table.chunks = k + 1
        if on_chunk is not None:
            on_chunk(table)
    return table


def _psi(t: Tensor, b: Tensor, c: float) -> Tensor:
    """The proposal shape ``ψ(t, b) = 1/(t² + c²) − 1/(b² + c²)``, as one product (no cancellation)."""
    c2 = c * c
    return (b - t) * (b + t) / ((t * t + c2) * (b * b + c2))


def quadrature(mean_sq: Tensor, grid: Tensor, c: float = 0.5) -> Tensor:
    """``K[a, b] ≈ ∫_{g_a}^{g_b} t⁻³ M(t, g_b) dt`` for every grid pair a < b (module docstring).

    ``mean_sq`` [G, G] holds ``M`` at the grid points (only ``k < j`` entries are read).
    Returns float64 [G, G], zero on and below the diagonal.
    """
    g = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    m = torch.as_tensor(mean_sq, dtype=torch.float64)
    size = g.numel()
    if m.shape != (size, size):
        raise AysError(f"mean_sq must be [{size}, {size}], got {tuple(m.shape)}")
    c = check_positive(c, name="c")
    k_idx, b_idx = torch.triu_indices(size, size, offset=1)
    upper = torch.zeros(size, size, dtype=torch.bool)
    upper[k_idx, b_idx] = True
    zmat = torch.zeros(size, size, dtype=torch.float64)
    zmat[k_idx, b_idx] = proposal_normalizer(g[k_idx], g[b_idx], c)
    psi = torch.ones(size, size, dtype=torch.float64)
    psi[k_idx, b_idx] = _psi(g[k_idx], g[b_idx], c)
    r = torch.where(upper, m / psi, torch.zeros_like(m))
    # Cell [g_k, g_{k+1}] below b: its exact proposal mass, times r averaged over its ends
    # (the last cell, whose upper end is b itself, takes r at its lower end).
    z_next = torch.zeros_like(zmat)
    z_next[:-1] = zmat[1:]
    mass = torch.where(upper, zmat - z_next, torch.zeros_like(zmat))
    r_next = torch.zeros_like(r)
    r_next[:-1] = r[1:]
    last = torch.zeros(size, size, dtype=torch.bool)
    last[torch.arange(size - 1), torch.arange(1, size)] = True
    rbar = torch.where(last, r, 0.5 * (r + r_next))
    cells = mass * rbar
    return torch.flip(torch.cumsum(torch.flip(cells, [0]), 0), [0]) * upper

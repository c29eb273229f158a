"""A virtual Brownian tree: one Brownian path shared by runs on different schedules.

A stochastic solver stepping ``s -> s_next`` adds noise that stands for the
Brownian increment of the reverse SDE over ``[s_next, s]`` (EDM convention,
``dx = -2 sigma score dsigma + sqrt(2 sigma) dW_sigma``). Drawing that noise as
``(W(s) - W(s_next)) / sqrt(s - s_next)`` from ONE fixed path ``W`` (time
``t = sigma``, k-diffusion's ``BrownianTreeNoiseSampler`` convention) couples runs
on different schedules: a coarse step's noise is exactly the sum of the fine
steps' noise over the same interval,
``sqrt(d1) n(s0, s1) + sqrt(d2) n(s1, s2) = sqrt(d1 + d2) n(s0, s2)``,
so a few-step run and a many-step teacher run of the same seed follow the same
Brownian motion and their difference measures discretisation error alone.

The path is *virtual* (Li et al. 2020, "Scalable gradients for stochastic
differential equations", Sec. 4; the idea of torchsde's ``BrownianTree``, written
here anew): nothing is stored but the seed. ``W(t0) = 0`` and
``W(t1) = sqrt(t1 - t0) xi_root`` on ``[t0, t1] = [sigma_min, sigma_max]``; the
midpoint ``m`` of a dyadic interval ``[a, b]`` with known ends is the Brownian
bridge value (Lévy's construction)

    W(m) = (W(a) + W(b)) / 2 + sqrt((b - a) / 4) xi_node,

with ``xi_node`` drawn from a ``torch.Generator`` seeded by ``(seed, node id)``.
A query descends ``depth`` levels to its leaf ``[a, b]`` and ends in the bridge

    W(t) = W(a) + (t - a) / (b - a) (W(b) - W(a)) + sqrt((t - a)(b - t) / (b - a)) xi_leaf,

``xi_leaf`` seeded by ``(seed, leaf id, "leaf")``. So the same ``t`` always gives
the same ``W(t)``, every ``W(t)`` has the exact law ``N(0, t - t0)``, and queries
in different leaves are jointly exact. Two queries inside ONE leaf share
``xi_leaf`` and are not jointly exact (their increment has too little variance);
the default depth makes a leaf at most ``sigma_min / 1024`` wide, finer than any
step of a schedule of up to ~1000 steps (a Karras schedule's last step of 1000 on
``[0.002, 80]`` is ``sigma_min / 40``), so for schedules this does not arise.

Every node draws its ``xi`` for ALL rows of ``shape`` and then keeps the rows
asked for, so :meth:`BrownianTree.rows` gives, bit for bit, the full sampler's
rows whichever process or chunk asks. The draws and the arithmetic of ``W`` run on
the CPU in float64 (the draws themselves in float32, cast up), so the values are
the same on every device and for every output ``dtype``; only the returned noise
is cast and moved. The descent of the last query is kept (``depth + 1`` tensors),
and a query shares the levels its leaf has in common with the previous one:
solvers ask ``s_0, s_1, s_2, ...`` in turn, and near neighbours differ only in the
last few levels.
"""

from __future__ import annotations

import math

import torch

from ..seeds import seed_for
from ..validate import AysError, check_range

__all__ = ["LEAF_FRACTION", "MAX_DEPTH", "BrownianTree", "default_depth"]

Tensor = torch.Tensor

#: Default leaf width as a fraction of ``sigma_min``: below every step of any common schedule.
LEAF_FRACTION = 1.0 / 1024.0
#: Deepest tree allowed: ``(sigma_max - sigma_min) / 2**48`` is near float64 resolution.
MAX_DEPTH = 48
#: How many queried ``W(t)`` are kept: a solver asks ``W(s_i)`` again on the next step.
_KEEP = 2


def _check_shape(shape: object) -> tuple[int, ...]:
    try:
        dims = tuple(shape)  # type: ignore[call-overload]
    except TypeError:
        raise AysError(f"shape must be a tuple of positive ints, rows first, got {shape!r}") from None
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise AysError(f"shape must be a non-empty tuple of positive ints, rows first, got {shape!r}")
    return dims


def default_depth(sigma_min: float, sigma_max: float) -> int:
    """The smallest depth whose leaves, ``(sigma_max - sigma_min) / 2**depth``, are ``<= sigma_min * LEAF_FRACTION``."""
    need = (sigma_max - sigma_min) / (sigma_min * LEAF_FRACTION)
    return min(MAX_DEPTH, max(0, math.ceil(math.log2(need))))


class BrownianTree:
    """W(t) on t in [t0, t1] (t = sigma, k-diffusion's BrownianTreeNoiseSampler convention) for `shape` (rows first).

    ``t0 = sigma_min``, ``t1 = sigma_max``; ``seed`` fixes the whole path.
    ``dtype`` and ``device`` are those of the returned noise (the path itself is
    float64 on the CPU). ``depth`` is the number of dyadic levels above the leaves
    (default: leaves at most ``sigma_min * LEAF_FRACTION`` wide; ``0 <= depth <=
    MAX_DEPTH``). Use an instance as ``noise_sampler=`` of any solver. See the
    module docstring for the construction and its one inexactness (two queries
    inside one leaf).
    """

    __slots__ = ("_cache", "_path", "_rows", "depth", "device", "dtype", "seed", "shape", "sigma_max", "sigma_min")

    def __init__(
        self,
        shape: tuple[int, ...],
        sigma_min: float,
        sigma_max: float,
        seed: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        depth: int | None = None,
    ) -> None:
        self.shape = _check_shape(shape)
        self.sigma_min, self.sigma_max = check_range(sigma_min, sigma_max)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise AysError(f"seed must be an int, got {seed!r}")
        self.seed = int(seed)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise AysError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        try:
            self.device = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError):
            raise AysError(f"device {device!r} is not a torch device") from None
        if depth is None:
            depth = default_depth(self.sigma_min, self.sigma_max)
        elif isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
            raise AysError(f"depth must be an int in [0, {MAX_DEPTH}], got {depth!r}")
        self.depth = depth
        self._rows = range(self.shape[0])
        self._path: list[tuple[int, Tensor, Tensor]] = []  # level l: (node index in level, W(a), W(b))
        self._cache: dict[float, Tensor] = {}  # the last queried W(t), newest last

    # -- the sampler --------------------------------------------------------------------------

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        """(W(sigma) - W(sigma_next)) / sqrt(sigma - sigma_next): unit-variance noise of the interval.

        The order of the arguments is the solvers' (``sigma > sigma_next``);
        either order is accepted, and ``sigma_next = 0`` clamps to sigma_min's
        end of the range. Swapping the arguments negates the noise (it is the same increment).
        Both ends are clamped into ``[sigma_min, sigma_max]`` and the increment is
        divided by the root of the clamped length, so the noise is unit variance
        for any interval that overlaps the range. An interval that clamps to zero
        length (lying wholly outside the range, or ``sigma == sigma_next``) has no
        increment; it gets a standard normal of its own, seeded by
        ``(seed, "outside", t)`` - independent of the path, as white noise is.
        """
        s, n = self._clamp(sigma, "sigma"), self._clamp(sigma_next, "sigma_next")
        if s == n:
            z = self._draw("outside", s)
        else:
            z = (self._w(s) - self._w(n)) / math.sqrt(abs(s - n))
        return z.to(device=self.device, dtype=self.dtype)

    def at(self, t: float) -> Tensor:
        """``W(t)`` itself (``t`` clamped into the range), ``N(0, t - sigma_min)``, in the sampler's dtype, device."""
        return self._w(self._clamp(t, "t")).to(device=self.device, dtype=self.dtype, copy=True)

    def rows(self, index: slice) -> BrownianTree:
        """The same sampler restricted to rows ``index``: the full one's rows, bit for bit.

        Used to shard rows across processes and chunks; ``index`` is a slice with
        a positive step (rows of a restricted sampler compose).
        """
        if not isinstance(index, slice):
            raise AysError(f"rows takes a slice of rows, got {type(index).__name__}")
        picked = self._rows[index]
        if picked.step <= 0:
            raise AysError(f"rows takes a slice with a positive step, got {index!r}")
        out = BrownianTree(
            self.shape, self.sigma_min, self.sigma_max, self.seed,
            dtype=self.dtype, device=self.device, depth=self.depth,
        )  # fmt: skip
        out._rows = picked
        return out

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of the noise this sampler returns: its rows, then ``shape[1:]``."""
        return (len(self._rows), *self.shape[1:])

    def __repr__(self) -> str:
        r = self._rows
        part = "" if len(r) == self.shape[0] and r.step == 1 else f", rows=slice({r.start}, {r.stop}, {r.step})"
        return (
            f"BrownianTree(shape={self.shape}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
            f"seed={self.seed}, depth={self.depth}{part})"
        )

    # -- the path ---------------------------------------------------------------------------------

    def _clamp(self, t: object, name: str) -> float:
        try:
            v = float(t)  # type: ignore[arg-type]
        except (TypeError, ValueError, RuntimeError):
            raise AysError(f"{name} must be a number, got {t!r}") from None
        if math.isnan(v):
            raise AysError(f"{name} must not be NaN")
        return min(max(v, self.sigma_min), self.sigma_max)

    def _draw(self, *keys: object) -> Tensor:
        """Standard normals for this sampler's rows from the generator of ``(seed, *keys)``.

        All rows of ``shape`` are drawn and then sliced, so the values of a row do
        not depend on which rows are asked for. Float32 draws (twice as fast as
        float64 on the CPU) are cast up for the float64 arithmetic of ``W``.
        """
        g = torch.Generator().manual_seed(seed_for(self.seed, *keys))
        z = torch.randn(self.shape, generator=g, dtype=torch.float32)
        r = self._rows
        if len(r) != self.shape[0] or r.step != 1:
            z = z[r.start : r.stop : r.step]
        return z.to(torch.float64)  # a copy: the full draw is not kept alive by a slice

    def _w(self, t: float) -> Tensor:
        """``W(t)`` in float64 on the CPU for ``t`` already in the range, through the cache."""
        hit = self._cache.get(t)
        if hit is not None:
            return hit
        w = self._compute(t)
        self._cache[t] = w
        while len(self._cache) > _KEEP:
            del self._cache[next(iter(self._cache))]
        return w

    def _compute(self, t: float) -> Tensor:
        lo, hi, depth = self.sigma_min, self.sigma_max, self.depth
        span = hi - lo
        if t <= lo:
            return torch.zeros(self.row_shape, dtype=torch.float64)
        if not self._path:
            root = self._draw("root") * math.sqrt(span)
            self._path.append((0, torch.zeros(self.row_shape, dtype=torch.float64), root))
        if t >= hi:
            return self._path[0][2]
        leaves = 1 << depth
        leaf = min(int((t - lo) / span * leaves), leaves - 1)
        # Levels shared with the previous query's descent are reused; below them, descend.
        level = 1
        while level < len(self._path) and self._path[level][0] == leaf >> (depth - level):
            level += 1
        del self._path[level:]
        while level <= depth:
            index, wa, wb = self._path[level - 1]
            width = span / (1 << (level - 1))
            node = (1 << (level - 1)) + index  # heap numbering: the root interval is node 1
            wm = (wa + wb) * 0.5 + self._draw("node", node) * math.sqrt(width / 4.0)
            child = leaf >> (depth - level)
            self._path.append((child, wa, wm) if child % 2 == 0 else (child, wm, wb))
            level += 1
        index, wa, wb = self._path[depth]
        a = lo + span * index / leaves
        b = lo + span * (index + 1) / leaves
        t = min(max(t, a), b)  # float round-off of the leaf's ends
        if t == a:
            return wa
        if t == b:
            return wb
        # The Brownian bridge from (a, W(a)) to (b, W(b)) at t: mean linear, variance (t-a)(b-t)/(b-a).
        frac = (t - a) / (b - a)
        xi = self._draw("leaf", (1 << depth) + index)
        return wa + (wb - wa) * frac + xi * math.sqrt((t - a) * (b - t) / (b - a))

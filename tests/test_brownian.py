"""ays.solvers.BrownianTree: a Brownian path, queried by noise level, shared by runs on any schedule.

The checks are the defining properties of Brownian motion (independent Gaussian
increments of variance equal to their length, ``Var W(t) = t - t0``), the exact
additivity that couples a coarse step to fine ones, determinism (same query, same
value; a row's value independent of which rows are asked for), and the point of it
all: SDE runs from the same path converge strongly to one another as the steps
shrink, which independent noise does not.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

import ays
from ays import schedules as S
from ays.solvers import BrownianTree
from ays.solvers.brownian import LEAF_FRACTION, MAX_DEPTH, default_depth
from ays.validate import AysError
from gaussian import gaussian_denoiser

LO, HI = 0.002, 80.0
N = 20_000  # rows for the statistical checks: standard errors ~ 1 / sqrt(N)


def tree(rows: int = N, seed: int = 0, **kw: object) -> BrownianTree:
    return BrownianTree((rows, 1), LO, HI, seed, dtype=torch.float64, **kw)  # type: ignore[arg-type]


def test_same_query_gives_the_same_value_whatever_was_asked_before() -> None:
    times = S.karras(12, LO, HI).tolist()
    pairs = list(itertools.pairwise(times))
    first = tree(64)
    expected = [first(s, n) for s, n in pairs]
    assert torch.equal(first(*pairs[3]), expected[3])  # again, after other queries
    # Any order of queries on one tree gives what fresh trees give: the kept descent only saves work.
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    other = tree(64)
    for s, n in shuffled:
        assert torch.equal(other(s, n), expected[pairs.index((s, n))])
        assert torch.equal(tree(64)(s, n), expected[pairs.index((s, n))])
    assert not torch.equal(tree(64, seed=1)(*pairs[0]), expected[0])


def test_rows_are_the_full_samplers_rows_bit_for_bit() -> None:
    full = BrownianTree((10, 3, 2), LO, HI, 5)
    queries = [(80.0, 7.0), (7.0, 0.5), (0.5, 0.0031), (0.0031, 0.0)]
    for s, n in queries:
        z = full(s, n)
        assert z.shape == (10, 3, 2) and z.dtype == torch.float32
        chunks = [full.rows(slice(0, 4)), full.rows(slice(4, 9)), full.rows(slice(9, None))]
        assert torch.equal(torch.cat([c(s, n) for c in chunks]), z)  # chunks of rows
        assert torch.equal(full.rows(slice(1, 10, 3))(s, n), z[1:10:3])  # a stride
        assert torch.equal(full.rows(slice(2, 9)).rows(slice(1, None, 2))(s, n), z[2:9][1::2])  # rows of rows
        assert full.rows(slice(3, 3))(s, n).shape == (0, 3, 2)


def test_increments_over_disjoint_intervals_are_independent_unit_normals() -> None:
    # Intervals of every size: from tens of sigma down to a few times the leaf width.
    edges = [80.0, 30.0, 10.0, 2.0, 1.0, 0.3, 0.05, 0.01, 0.004, 0.0025, 0.002]
    t = tree()
    z = torch.cat([t(s, n) for s, n in itertools.pairwise(edges)], dim=1)  # [N, 10]
    se_mean, se_var, se_cov = 1 / math.sqrt(N), math.sqrt(2 / N), 1 / math.sqrt(N)
    assert z.mean(0).abs().max() < 5 * se_mean
    assert (z.var(0) - 1).abs().max() < 5 * se_var
    cov = (z.T @ z) / N
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 5 * se_cov  # 45 pairs; 5 standard errors each


def test_adjacent_increments_add_up_exactly() -> None:
    # sqrt(d1) n(s0, s1) + sqrt(d2) n(s1, s2) = sqrt(d1 + d2) n(s0, s2): W telescopes.
    t = tree(256)
    rng = random.Random(0)
    for _ in range(20):
        s2, s1, s0 = sorted(math.exp(rng.uniform(math.log(LO), math.log(HI))) for _ in range(3))
        lhs = math.sqrt(s0 - s1) * t(s0, s1) + math.sqrt(s1 - s2) * t(s1, s2)
        rhs = math.sqrt(s0 - s2) * t(s0, s2)
        assert torch.allclose(lhs, rhs, rtol=0, atol=1e-12 * (1 + rhs.abs().max().item()))


def test_marginal_variance_is_the_time_since_the_left_end() -> None:
    t = tree()
    assert torch.equal(t.at(LO), torch.zeros(N, 1, dtype=torch.float64))
    for time in (0.0025, 0.02, 1.0, 17.0, 80.0):
        w = t.at(time)
        v = time - LO
        assert abs(w.var().item() - v) < 5 * v * math.sqrt(2 / N)
        assert abs(w.mean().item()) < 5 * math.sqrt(v / N)


def test_order_clamping_and_the_interval_outside_the_range() -> None:
    t = tree(512)
    assert torch.equal(t(0.3, 2.0), -t(2.0, 0.3))  # either order: the same increment
    assert torch.equal(t(0.01, 0.0), t(0.01, LO))  # sigma_next = 0 is the left end
    assert torch.equal(t(500.0, 3.0), t(HI, 3.0))  # above the range: the right end
    # A zero-length interval (wholly outside the range) still gives unit-variance noise, deterministically.
    z = t(LO, 0.0)
    assert torch.equal(z, t(LO, 0.0)) and torch.isfinite(z).all()
    assert abs(tree()(0.001, 0.0).var().item() - 1) < 5 * math.sqrt(2 / N)


def test_default_leaves_are_finer_than_the_steps_of_a_1000_step_teacher() -> None:
    t = tree()
    assert (HI - LO) / 2**t.depth <= LO * LEAF_FRACTION
    # The last steps of a 1000-step Karras schedule are ~sigma_min/40 long: still unit normals.
    s = S.karras(1000, LO, HI).tolist()
    z = torch.cat([t(s[i], s[i + 1]) for i in range(990, 999)], dim=1)
    assert (z.var(0) - 1).abs().max() < 5 * math.sqrt(2 / N)
    # The caveat of the docstring is real: two queries inside one leaf are not jointly exact (too little
    # variance in between), which is why the default leaves are this fine.
    coarse = tree(depth=default_depth(LO, HI) - 10)  # leaves ~ sigma_min wide
    inner = torch.cat([coarse(s[i], s[i + 1]) for i in range(990, 999)], dim=1)
    assert inner.var(0).min() < 0.6


@pytest.mark.parametrize("name", ["stochastic_ddim", "dpmpp_2m_sde"])
def test_runs_from_one_path_converge_strongly_to_each_other(name: str) -> None:
    # 1-D Gaussian data N(0, c²) with its exact denoiser; the same start and the same Brownian path.
    assert name in ays.solvers.names()
    solver, c, rows = ays.solvers.get(name), 0.5, 2000
    start = torch.randn(rows, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * HI
    path = tree(rows, seed=7)

    def run(steps: int, **noise: object) -> torch.Tensor:
        return solver(gaussian_denoiser(c), start, S.to_sampling(S.karras(steps, LO, HI)), **noise)

    finest = run(512, noise_sampler=path)
    mse = [((run(k, noise_sampler=path) - finest) ** 2).mean().item() for k in (8, 16, 32, 64, 128)]
    assert all(b < 0.7 * a for a, b in itertools.pairwise(mse)), mse  # strong convergence
    independent = ((run(128, generator=torch.Generator().manual_seed(5)) - finest) ** 2).mean().item()
    assert independent > 0.3  # two independent draws of the output law differ by ~2 Var(out) = 2c²
    assert mse[-1] < independent / 100, (mse, independent)


def test_dtype_and_device_only_change_the_returned_noise() -> None:
    wide = BrownianTree((7, 2), LO, HI, 3, dtype=torch.float64)
    narrow = BrownianTree((7, 2), LO, HI, 3, dtype=torch.float32)
    assert torch.equal(narrow(9.0, 0.2), wide(9.0, 0.2).float())
    if torch.cuda.is_available():
        gpu = BrownianTree((7, 2), LO, HI, 3, dtype=torch.float64, device="cuda")
        z = gpu(9.0, 0.2)
        assert z.device.type == "cuda" and torch.equal(z.cpu(), wide(9.0, 0.2))


def test_bad_arguments_are_named() -> None:
    for kwargs, words in [
        ({"shape": ()}, "shape"),
        ({"shape": (3, 0)}, "shape"),
        ({"sigma_min": 0.0}, "sigma_min"),
        ({"sigma_max": 0.001}, "sigma_min must be below sigma_max"),
        ({"seed": 1.5}, "seed"),
        ({"depth": MAX_DEPTH + 1}, "depth"),
        ({"dtype": torch.int64}, "dtype"),
    ]:
        args = {"shape": (3, 1), "sigma_min": LO, "sigma_max": HI, "seed": 0, **kwargs}
        with pytest.raises(AysError, match=words):
            BrownianTree(**args)  # type: ignore[arg-type]
    t = BrownianTree((3, 1), LO, HI, 0)
    with pytest.raises(AysError, match="slice"):
        t.rows(1)  # type: ignore[arg-type]
    with pytest.raises(AysError, match="positive step"):
        t.rows(slice(None, None, -1))
    with pytest.raises(AysError, match="NaN"):
        t(float("nan"), 1.0)

"""Property-based tests: every heuristic, for any step count and noise range, gives
a valid schedule; any sequence of numbers is either a valid schedule or refused
with a ScheduleError, never another exception."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ays import schedules as S
from ays.validate import AysError, ScheduleError, check_sigmas

ranges = st.tuples(
    st.floats(min_value=1e-4, max_value=10.0), st.floats(min_value=1.01, max_value=1e4)
).map(lambda p: (p[0], p[0] * p[1]))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(set(S.HEURISTICS) - {"vp"})), n=st.integers(1, 200), rng=ranges)
def test_any_heuristic_any_range_gives_a_valid_schedule(name: str, n: int, rng: tuple[float, float]) -> None:
    lo, hi = rng
    s = S.build(name, n, lo, hi)
    assert s.shape == (n + 1,) and s[0].item() == hi and s[-1].item() == lo
    check_sigmas(s, allow_final_zero=False)
    z = S.to_sampling(s)
    assert z[-1] == 0 and torch.all(z[1:] < z[:-1])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), m=st.integers(1, 60), rng=ranges)
def test_interpolation_keeps_endpoints_and_order(n: int, m: int, rng: tuple[float, float]) -> None:
    s = S.interpolate(S.karras(n, *rng), m)
    assert s.shape == (m + 1,)
    assert math.isclose(s[0].item(), rng[1]) and math.isclose(s[-1].item(), rng[0])
    assert torch.all(s[1:] < s[:-1])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=12))
def test_any_sequence_is_valid_or_refused_cleanly(values: list[float]) -> None:
    try:
        s = check_sigmas(values)
    except ScheduleError as e:
        assert str(e)
        return
    assert s.numel() >= 2 and torch.all(torch.isfinite(s))
    assert torch.all(s[1:] < s[:-1]) and torch.all(s[:-1] > 0) and s[-1] >= 0


@settings(max_examples=50, deadline=None)
@given(n=st.one_of(st.integers(-5, 0), st.floats(allow_nan=True), st.text(max_size=3), st.none()))
def test_bad_step_counts_are_refused(n: object) -> None:
    try:
        S.karras(n, 0.1, 1.0)  # type: ignore[arg-type]
    except AysError as e:
        assert "steps" in str(e)
    else:
        raise AssertionError(f"steps={n!r} was accepted")

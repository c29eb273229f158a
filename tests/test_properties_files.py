"""Property-based tests of bad input beyond schedules: solvers and the two file formats.

Solvers: on Gaussian data ``N(0, c²I)`` with its exact denoiser, ``ays.sample`` with
any solver and any finite schedule within float range returns finite samples,
and for a deterministic solver exactly the linear map of the noise that
:func:`ays.analysis.output_coefficients` computes (every solver is linear in its
state there); any schedule, noise or option that is not valid is refused with an
AysError before a sample is drawn.

Files: any JSON document, any mutation of a valid document and any byte string
given to :func:`ays.load_schedule` or to the checkpoint loader is either read as
a valid result (whose invariants are then checked) or refused with an AysError
- never another exception. A valid schedule survives a save/load round trip to
the last bit. (Schedules themselves: tests/test_properties_schedules.py.)
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ays
from ays import analysis, solvers
from ays.optimize import OptimizeResult, load_schedule
from ays.optimize.checkpoint import load_state, save_state
from ays.validate import AysError

C = 0.5
DETERMINISTIC = sorted(n for n in solvers.names() if not solvers.info(n).stochastic)
_DIR = Path(tempfile.mkdtemp(prefix="ays-properties-"))


def _den(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x * (C * C / (C * C + s * s))


# Schedules: k levels, log-spaced gaps of random sizes, within [1e-3, 1e3]; optionally ending in 0.
@st.composite
def schedules(draw: Any, final_zero: bool | None = None) -> torch.Tensor:
    k = draw(st.integers(1, 12))
    top = draw(st.floats(-3.0, 3.0))
    gaps = draw(st.lists(st.floats(0.01, 2.0), min_size=k, max_size=k))
    logs = [top]
    for g in gaps:
        logs.append(logs[-1] - g)
    assume(logs[-1] > -3.0 - 1e-9 or k == 1)
    s = torch.tensor([10.0**v for v in logs], dtype=torch.float64)
    zero = draw(st.booleans()) if final_zero is None else final_zero
    if zero:
        s[-1] = 0.0
    assume(torch.all(s[1:] < s[:-1]))
    return s


shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sig=schedules(), solver=st.sampled_from(solvers.names()), shape=shapes, seed=st.integers(0, 2**31),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_any_solver_any_finite_schedule_gives_finite_samples(sig, solver, shape, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((4, *shape), generator=g, dtype=dtype)
    x = ays.sample(_den, noise, sig, solver=solver, generator=g)
    assert x.shape == noise.shape and x.dtype == dtype and torch.isfinite(x).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sig=schedules(), solver=st.sampled_from(DETERMINISTIC), seed=st.integers(0, 2**31))
def test_deterministic_solvers_are_the_exact_linear_map_on_gaussian_data(sig, solver, seed):
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = ays.sample(_den, noise, sig, solver=solver)
    coef = analysis.output_coefficients(solver, sig, C)  # x = coef[0] · z, coef[0] including sigma_max
    assert coef.numel() == 1
    assert torch.allclose(x, coef[0] * noise, rtol=1e-10, atol=1e-300)


# Levels within float range where the maths is well-posed (|v| <= 1e6, six decimals) plus NaN and ±inf.
bad_levels = st.lists(st.one_of(st.floats(-1e6, 1e6).map(lambda v: round(v, 6)), st.integers(-3, 3),
                                st.sampled_from([math.nan, math.inf, -math.inf])), max_size=6)


@settings(max_examples=80, deadline=None)
@given(values=bad_levels, solver=st.sampled_from(solvers.names()))
def test_invalid_schedules_are_refused_before_any_call(values, solver):
    calls = []

    def den(x, sigma):
        calls.append(1)
        return _den(x, sigma)

    s = torch.tensor(values, dtype=torch.float64) if values else torch.zeros(0, dtype=torch.float64)
    valid = (s.numel() >= 2 and bool(torch.isfinite(s).all()) and bool(torch.all(s[1:] < s[:-1]))
             and bool(torch.all(s[:-1] > 0)) and float(s[-1]) >= 0)
    try:
        x = ays.sample(den, torch.randn(3, 2, dtype=torch.float64), values, solver=solver,
                       generator=torch.Generator().manual_seed(0))
    except AysError:
        assert not valid and not calls
        return
    assert valid and torch.isfinite(x).all()


@settings(max_examples=40, deadline=None)
@given(noise=st.sampled_from([torch.zeros(()), torch.zeros(0, 2), torch.ones(2, 2, dtype=torch.long), [[1.0, 2.0]],
                              torch.full((2, 2), math.nan), None]),
       solver=st.sampled_from(solvers.names()),
       option=st.sampled_from([{}, {"eta": -1.0}, {"nosuch": 1}, {"order": 7}, {"s_noise": math.nan}]))
def test_bad_noise_or_options_are_refused(noise, solver, option):
    sig = torch.tensor([10.0, 1.0, 0.0], dtype=torch.float64)
    try:
        ays.sample(_den, noise, sig, solver=solver, **option)
    except AysError:
        return
    raise AssertionError(f"accepted noise {noise!r} with options {option}")


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)

SCHEDULE_KEYS = ["format", "sigmas", "steps", "solver", "model", "sigma_min", "sigma_max", "method", "klub",
                 "klub_stderr", "created", "ays_version", "timesteps", "calls", "settings", "history"]


def _valid_schedule_doc() -> dict[str, Any]:
    res = OptimizeResult(sigmas=torch.tensor([80.0, 8.0, 0.5, 0.002], dtype=torch.float64), steps=3,
                         solver="euler", method="coordinate", klub=1.5, klub_stderr=0.1,
                         timesteps=torch.tensor([999, 600, 200, 0]), history=[{"sweep": 0}], calls=10)
    return res.to_dict()


def _write(data: bytes, name: str) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def _check_loaded_schedule(res: OptimizeResult) -> None:
    s = res.sigmas
    assert s.dtype == torch.float64 and s.numel() >= 2 and torch.isfinite(s).all()
    assert torch.all(s[1:] < s[:-1]) and s[-1] > 0 and res.steps == s.numel() - 1
    if res.timesteps is not None:
        assert res.timesteps.numel() == s.numel()


def _load_schedule_or_refuse(data: bytes) -> None:
    path = _write(data, "schedule.json")
    try:
        res = load_schedule(path)
    except AysError as e:
        assert str(e)
        return
    _check_loaded_schedule(res)


@settings(max_examples=150, deadline=None)
@given(doc=json_values)
def test_any_json_document_is_a_schedule_or_refused(doc):
    _load_schedule_or_refuse(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(SCHEDULE_KEYS), value=json_values, drop=st.booleans())
def test_any_mutation_of_a_schedule_file_is_read_or_refused(key, value, drop):
    doc = _valid_schedule_doc()
    if drop:
        doc.pop(key, None)
    else:
        doc[key] = value
    _load_schedule_or_refuse(json.dumps(doc).encode())


@settings(max_examples=100, deadline=None)
@given(sigmas=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**400, 10**400)),
                       max_size=6),
       timesteps=st.one_of(st.none(), st.lists(st.integers(-2**70, 2**70), max_size=6)))
def test_any_sigmas_and_timesteps_are_read_or_refused(sigmas, timesteps):
    doc = _valid_schedule_doc()
    doc["sigmas"], doc["timesteps"] = sigmas, timesteps
    doc.pop("steps")
    doc.pop("sigma_min")
    doc.pop("sigma_max")
    _load_schedule_or_refuse(json.dumps(doc).encode())


@settings(max_examples=100, deadline=None)
@given(timesteps=st.lists(st.one_of(st.integers(-2**70, 2**70), st.booleans(), st.floats()), min_size=4, max_size=4))
def test_any_timesteps_of_the_right_length_are_read_or_refused(timesteps):
    doc = _valid_schedule_doc()
    doc["timesteps"] = timesteps
    _load_schedule_or_refuse(json.dumps(doc).encode())


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64), cut=st.integers(0, 2000))
def test_any_bytes_or_truncation_is_read_or_refused(data, cut):
    _load_schedule_or_refuse(data)
    whole = json.dumps(_valid_schedule_doc()).encode()
    _load_schedule_or_refuse(whole[:cut] + data)


@settings(max_examples=40, deadline=None)
@given(sig=schedules(final_zero=False))
def test_schedule_round_trip_is_exact(sig):
    res = OptimizeResult(sigmas=sig, steps=sig.numel() - 1, solver="euler", method="x")
    path = _DIR / "round.json"
    res.save(path)
    assert torch.equal(load_schedule(path).sigmas, sig)


SETTINGS = {"method": "coordinate", "steps": 3, "seed": 0, "options": {"c": 0.5}}


def _load_checkpoint_or_refuse(data: bytes) -> None:
    path = _write(data, "ckpt.json")
    try:
        state = load_state(path, SETTINGS)
    except AysError as e:
        assert str(e)
        return
    assert isinstance(state, dict)


@settings(max_examples=150, deadline=None)
@given(doc=json_values)
def test_any_json_document_is_a_checkpoint_or_refused(doc):
    _load_checkpoint_or_refuse(json.dumps(doc).encode())


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(["format", "settings", "state", "sha256"]), value=json_values, drop=st.booleans(),
       data=st.binary(max_size=32), cut=st.integers(0, 400))
def test_any_mutation_or_truncation_of_a_checkpoint_is_read_or_refused(key, value, drop, data, cut):
    path = _DIR / "ckpt.json"
    state = {"sigmas": [80.0, 1.0, 0.5, 0.002], "sweep": 3, "history": [{"klub": 1.25}]}
    save_state(path, SETTINGS, state)
    whole = path.read_bytes()
    assert load_state(path, SETTINGS) == state
    doc = json.loads(whole)
    if drop:
        doc.pop(key)
    else:
        doc[key] = value
    _load_checkpoint_or_refuse(json.dumps(doc).encode())
    _load_checkpoint_or_refuse(whole[:cut] + data)


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(["state", "settings"]), key=st.text(max_size=6), value=json_values)
def test_a_checkpoint_changed_anywhere_inside_is_refused(path, key, value):
    """Every change to settings or state that keeps the JSON valid breaks the checksum."""
    file = _DIR / "ckpt.json"
    state = {"sigmas": [80.0, 1.0, 0.5, 0.002], "sweep": 3}
    save_state(file, SETTINGS, state)
    doc = json.loads(file.read_bytes())
    before = json.dumps(doc[path], sort_keys=True)
    doc[path][key] = value
    assume(json.dumps(doc[path], sort_keys=True, allow_nan=True) != before)
    file.write_text(json.dumps(doc))
    try:
        load_state(file, SETTINGS)
    except AysError:
        return
    raise AssertionError("a changed checkpoint was accepted")

"""Noise level <-> model time conversions: round trips, closed forms and a peer."""

from __future__ import annotations

import math

import pytest
import torch

from ays.noise import EDM, ContinuousVP, DiscreteVP, Flow, betas_for
from ays.validate import AysError


def test_sd_discrete_schedule_spans_the_published_range() -> None:
    # SD 1.5 / SDXL tables start at 14.615 and end at 0.029 (REFERENCES.md).
    model = DiscreteVP.from_betas()
    assert model.num_timesteps == 1000
    assert model.sigma_max == pytest.approx(14.615, abs=5e-4)
    assert model.sigma_min == pytest.approx(0.0292, abs=1e-4)


def test_discrete_sigmas_match_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    theirs = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5
    ours = DiscreteVP.from_betas().sigmas
    # diffusers builds the table in float32 (cumprod over 1000 terms): agree to float32 round-off.
    assert torch.allclose(ours.float(), theirs.float(), rtol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_discrete_timestep_sigma_round_trip(kind: str) -> None:
    kw = {"beta_start": 1e-4, "beta_end": 0.02} if kind == "linear" else {}
    model = DiscreteVP.from_betas(kind=kind, **kw)
    t = torch.tensor([0.0, 0.25, 1.5, 10.0, 499.7, 998.2, 999.0], dtype=torch.float64)
    assert torch.allclose(model.t(model.sigma(t)), t, atol=1e-9)
    # Integer timesteps land exactly on the table; fractional ones interpolate log-sigma.
    i = torch.arange(0, 1000, 37)
    assert torch.allclose(model.sigma(i.double()), model.sigmas[i], rtol=1e-12)
    mid = model.sigma(torch.tensor(10.5, dtype=torch.float64))
    assert mid.item() == pytest.approx(math.sqrt(model.sigmas[10] * model.sigmas[11]), rel=1e-12)


def test_discrete_nearest_timestep() -> None:
    model = DiscreteVP.from_betas()
    i = torch.tensor([0, 3, 500, 999])
    assert torch.equal(model.nearest_timestep(model.sigmas[i] * 1.0001), i)


def test_continuous_vp_closed_form_and_round_trip() -> None:
    vp = ContinuousVP()
    assert vp.sigma_max == pytest.approx(math.sqrt(math.exp(19.9 / 2 + 0.1) - 1), rel=1e-12)
    t = torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    assert torch.allclose(vp.t(vp.sigma(t)), t, rtol=1e-10)
    # VP: alpha² (1 + sigma²) = 1, the variance-preserving identity.
    s = vp.sigma(t)
    assert torch.allclose(vp.alpha(s) ** 2 * (1 + s**2), torch.ones_like(s))


def test_flow_matching_conversion_reproduces_the_interpolant() -> None:
    flow = Flow()
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999], dtype=torch.float64)
    s = flow.sigma(t)
    assert torch.allclose(flow.t(s), t, atol=1e-12)
    # alpha(sigma)·(x0 + sigma·eps) = (1 - t)·x0 + t·eps for every x0, eps.
    x0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    lhs = flow.alpha(s) * (x0 + s * eps)
    assert torch.allclose(lhs, (1 - t) * x0 + t * eps, atol=1e-12)


def test_flow_shift_is_sd3s_formula_and_a_bijection_of_the_unit_interval() -> None:
    flow = Flow(shift=3.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    ts = flow.apply_shift(t)
    assert ts[0] == 0 and ts[-1] == 1 and torch.all(ts[1:] > ts[:-1]) and torch.all(ts >= t)
    # SD3: sigma' = shift·s / (1 + (shift - 1)·s)
    assert torch.allclose(ts, 3 * t / (1 + 2 * t))


def test_edm_is_the_identity() -> None:
    s = torch.tensor([0.1, 2.0], dtype=torch.float64)
    assert torch.equal(EDM().t(s), s) and torch.equal(EDM().alpha(s), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: DiscreteVP(torch.tensor([0.9, 0.95])), "strictly decreasing"),
        (lambda: DiscreteVP(torch.tensor([1.0, 0.5])), "strictly between 0 and 1"),
        (lambda: DiscreteVP.from_betas().sigma(1000.0), "timesteps must lie in"),
        (lambda: DiscreteVP.from_betas().t(100.0), "model's range"),
        (lambda: Flow().sigma(1.0), r"\[0, 1\)"),
        (lambda: Flow(shift=-1.0), "shift must be > 0"),
        (lambda: betas_for(kind="quadratic"), "unknown beta schedule"),
    ],
)
def test_bad_input_names_the_fault(call, message: str) -> None:
    with pytest.raises(AysError, match=message):
        call()

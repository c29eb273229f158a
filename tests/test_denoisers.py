"""Tests for ays.denoisers.

The oracle is Gaussian data ``N(0, C²I)``, whose exact denoiser is
``D*(x, σ) = C²/(C²+σ²)·x``. From it we build, with textbook formulas and only
noise.py's ``t -> σ`` map, the exact network of every parametrisation (eps, v, x0,
flow velocity, EDM's F), and check that each adapter gives back ``D*``. Peers:
diffusers' EulerDiscrete, FlowMatchEulerDiscrete and EDMEuler schedulers.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ays.denoisers import (
    PREDICTIONS,
    BatchedCFGDenoiser,
    CFGDenoiser,
    EDMPrecond,
    ModelDenoiser,
    append_dims,
    bind,
    denoised_from,
    edm_coefficients,
    edm_loss_weight,
    edm_target,
    prediction_name,
    target_for,
)
from ays.noise import EDM, ContinuousVP, DiscreteVP, Flow
from ays.validate import AysError

C = 0.7  # std of the Gaussian data
F64 = torch.float64

NOISES = {
    "vp_continuous": ContinuousVP(),
    "vp_discrete": DiscreteVP.from_betas(),  # SD's scaled_linear betas, 1000 steps
    "flow": Flow(),
    "flow_shift3": Flow(shift=3.0),
    "edm": EDM(),
}


def bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def ideal(x: torch.Tensor, sigma: torch.Tensor, c: float = C) -> torch.Tensor:
    """Exact denoiser of N(0, c²I): E[x0 | x0 + σ·eps = x] = c²/(c²+σ²)·x."""
    return bc(c**2 / (c**2 + sigma.to(x.dtype) ** 2), x) * x


def state_scales(noise, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Textbook ``x_model = a·x0 + s·eps`` of each family at model time ``t``, and the EDM σ (from noise.py)."""
    sigma = noise.sigma(t)
    if isinstance(noise, Flow):  # x_t = (1 - t)·x0 + t·eps
        return 1 - t, t, sigma
    if isinstance(noise, EDM):  # x = x0 + σ·eps
        return torch.ones_like(sigma), sigma, sigma
    # VP: alpha_bar = 1/(1+σ²); x_t = sqrt(alpha_bar)·x0 + sqrt(1 - alpha_bar)·eps
    return 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2), sigma


def analytic_net(prediction: str, noise, time_scale: float = 1.0, c: float = C, calls: list | None = None):
    """The exact network of a given prediction type for N(0, c²I) data, in the model's own variables."""

    def net(x_model: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append((x_model, t))
        a, s, sigma = state_scales(noise, t.to(F64) / time_scale)
        a, s = bc(a, x_model).to(x_model.dtype), bc(s, x_model).to(x_model.dtype)
        x0 = ideal(x_model / a, sigma, c)
        eps = (x_model - a * x0) / s
        return {"epsilon": eps, "x0": x0, "v": a * eps - s * x0, "flow": eps - x0}[prediction]

    return net


def noisy_batch(sigma: torch.Tensor, shape=(3, 5), seed: int = 0, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(sigma.shape[0], 2, *shape, generator=g, dtype=F64)
    return (C * z[:, 0] + bc(sigma, z[:, 0]) * z[:, 1]).to(dtype)


def levels(noise, n: int = 12) -> torch.Tensor:
    return torch.logspace(math.log10(noise.sigma_min), math.log10(noise.sigma_max), n, dtype=F64)


def raising_net(*args, **kwargs):
    raise AssertionError("the network must not be called")


# ----------------------------------------------------------------------------- exact round trips

CASES = [
    ("vp_continuous", "epsilon", 1.0),
    ("vp_continuous", "v", 1.0),
    ("vp_continuous", "x0", 1.0),
    ("vp_continuous", "epsilon", 999.0),
    ("vp_discrete", "epsilon", 1.0),
    ("vp_discrete", "v", 1.0),
    ("vp_discrete", "x0", 1.0),
    ("flow", "flow", 1.0),
    ("flow", "flow", 1000.0),
    ("flow", "epsilon", 1.0),
    ("flow", "x0", 1.0),
    ("flow_shift3", "flow", 1000.0),
    ("edm", "epsilon", 1.0),
    ("edm", "x0", 1.0),
]


@pytest.mark.parametrize(("noise_key", "prediction", "time_scale"), CASES)
def test_adapter_recovers_exact_denoiser(noise_key, prediction, time_scale):
    noise = NOISES[noise_key]
    sigma = levels(noise)
    x = noisy_batch(sigma)
    den = ModelDenoiser(analytic_net(prediction, noise, time_scale), noise, prediction, time_scale=time_scale)
    d = den(x, sigma)
    assert d.dtype == F64
    torch.testing.assert_close(d, ideal(x, sigma), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_precond_recovers_exact_denoiser(sigma_data):
    sd = sigma_data

    def F(x_in, c_noise):  # EDM Table 1, written out: D = c_skip·x + c_out·F(c_in·x, ln(σ)/4)
        sigma = torch.exp(4 * c_noise)
        c_in = bc(1 / torch.sqrt(sigma**2 + sd**2), x_in)
        c_skip = bc(sd**2 / (sigma**2 + sd**2), x_in)
        c_out = bc(sigma * sd / torch.sqrt(sigma**2 + sd**2), x_in)
        x = x_in / c_in
        return (ideal(x, sigma) - c_skip * x) / c_out

    sigma = levels(EDM())
    x = noisy_batch(sigma)
    torch.testing.assert_close(EDMPrecond(F, sd)(x, sigma), ideal(x, sigma), rtol=0, atol=1e-10)


def test_edm_precond_with_zero_network_is_exact_for_matching_gaussian():
    # With sigma_data = C the skip path alone is the ideal denoiser: c_skip = C²/(C²+σ²).
    sigma = levels(EDM())
    x = noisy_batch(sigma)
    den = EDMPrecond(lambda x_in, c_noise: torch.zeros_like(x_in), sigma_data=C)
    torch.testing.assert_close(den(x, sigma), ideal(x, sigma), rtol=0, atol=1e-13)


@pytest.mark.parametrize("noise_key", list(NOISES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_for_inverts_denoised_from(noise_key, prediction):
    noise = NOISES[noise_key]
    sigma = levels(noise, 8)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 8, 4, 3, generator=g, dtype=F64)
    x = x0 + bc(sigma, x0) * eps
    y = target_for(prediction, x0, eps, sigma, noise)
    torch.testing.assert_close(denoised_from(prediction, y, x, sigma, noise), x0, rtol=0, atol=1e-10)


def test_v_target_is_angular_velocity_of_vp_state():
    # Salimans & Ho 2022: x_phi = cos(phi)·x0 + sin(phi)·eps and v = d x_phi / d phi; sigma = tan(phi).
    noise = NOISES["vp_continuous"]
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 6, 5, generator=g, dtype=F64)
    phi = torch.linspace(0.05, 1.5, 6, dtype=F64)

    # One angle per element (each element depends on its own), so the gradient of the sum is d x / d phi.
    p = bc(phi, x0).expand_as(x0).clone().requires_grad_()
    sigma = torch.tan(p)
    (dx,) = torch.autograd.grad((noise.alpha(sigma) * (x0 + sigma * eps)).sum(), p)
    torch.testing.assert_close(target_for("v", x0, eps, torch.tan(phi), noise), dx, rtol=0, atol=1e-12)


def test_flow_target_is_time_derivative_of_flow_state():
    noise = NOISES["flow"]
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 6, 5, generator=g, dtype=F64)
    t = torch.linspace(0.05, 0.95, 6, dtype=F64)

    tt = bc(t, x0).expand_as(x0).clone().requires_grad_()
    sigma = noise.sigma(tt)  # alpha(sigma(t))·(x0 + sigma(t)·eps), from noise.py only
    (dx,) = torch.autograd.grad((noise.alpha(sigma) * (x0 + sigma * eps)).sum(), tt)
    torch.testing.assert_close(target_for("flow", x0, eps, noise.sigma(t), noise), dx, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- sigma = 0 and model range


@pytest.mark.parametrize("noise_key", ["vp_discrete", "vp_continuous", "flow", "edm"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_sigma_zero_returns_x_without_calling_the_model(noise_key, prediction):
    noise = NOISES[noise_key]
    x = torch.randn(3, 4, dtype=F64)
    assert torch.equal(ModelDenoiser(raising_net, noise, prediction)(x, torch.zeros(3, dtype=F64)), x)
    assert torch.equal(EDMPrecond(raising_net)(x, 0.0), x)


@pytest.mark.parametrize(("noise_key", "prediction"), [("vp_discrete", "epsilon"), ("flow", "flow"),
                                                        ("vp_continuous", "v")])
def test_mixed_batch_with_sigma_zero(noise_key, prediction):
    noise = NOISES[noise_key]
    sigma = torch.tensor([0.0, 1.0, 0.0, 5.0], dtype=F64)
    x = noisy_batch(sigma)
    d = ModelDenoiser(analytic_net(prediction, noise), noise, prediction)(x, sigma)
    torch.testing.assert_close(d, ideal(x, sigma), rtol=0, atol=1e-10)  # ideal(x, 0) = x
    assert torch.equal(d[0], x[0])


def test_edm_precond_mixed_batch_with_sigma_zero():
    sigma = torch.tensor([0.0, 0.3, 2.0], dtype=F64)
    x = noisy_batch(sigma)
    d = EDMPrecond(lambda x_in, c_noise: torch.zeros_like(x_in), sigma_data=C)(x, sigma)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, ideal(x, sigma), rtol=0, atol=1e-13)


def test_discrete_model_range():
    noise = NOISES["vp_discrete"]
    calls: list = []
    den = ModelDenoiser(analytic_net("epsilon", noise, calls=calls), noise, "epsilon")
    x = torch.randn(1, 4, dtype=F64)
    # Below the smallest level the network is evaluated at timestep 0, the conversion uses the true sigma.
    small = torch.tensor([noise.sigma_min / 10], dtype=F64)
    d = den(x, small)
    assert calls[-1][1].item() == 0.0
    eps0 = analytic_net("epsilon", noise)(x / math.sqrt(1 + small.item() ** 2), torch.zeros(1, dtype=F64))
    torch.testing.assert_close(d, x - small.item() * eps0, rtol=0, atol=1e-14)
    # The published AYS table starts at 14.615, a rounding of SD's 14.6146: accepted.
    den(x, torch.tensor([14.615], dtype=F64))
    with pytest.raises(AysError, match="exceeds the model's largest noise level"):
        den(x, torch.tensor([80.0], dtype=F64))


def test_quantize_passes_nearest_integer_timestep():
    noise = NOISES["vp_discrete"]
    calls: list = []
    idx = torch.tensor([0, 17, 500, 999])
    on_grid = noise.sigmas[idx]
    x = noisy_batch(on_grid)
    den_q = ModelDenoiser(analytic_net("epsilon", noise, calls=calls), noise, quantize=True)
    den = ModelDenoiser(analytic_net("epsilon", noise), noise)
    d_q = den_q(x, on_grid)
    assert calls[-1][1].dtype == torch.long and torch.equal(calls[-1][1], idx)
    torch.testing.assert_close(d_q, den(x, on_grid), rtol=0, atol=1e-10)
    off_grid = torch.sqrt(noise.sigmas[idx[1:] - 1] * noise.sigmas[idx[1:]]) * 1.0001  # nearer the upper level
    den_q(noisy_batch(off_grid), off_grid)
    assert torch.equal(calls[-1][1], noise.nearest_timestep(off_grid))
    assert torch.equal(calls[-1][1], idx[1:])


# ----------------------------------------------------------------------------- EDM coefficients


def test_edm_coefficients_limits_and_identities():
    sd = 0.5
    c = edm_coefficients(0.0, sd)
    assert c.c_skip.item() == 1.0 and c.c_out.item() == 0.0 and c.c_in.item() == 1 / sd
    assert c.c_noise.item() == -math.inf
    s = levels(EDM(), 50)
    c = edm_coefficients(s, sd)
    one = torch.ones_like(s)
    # Unit input variance: Var(c_in·x) = c_in²(sd² + σ²).
    torch.testing.assert_close(c.c_in**2 * (sd**2 + s**2), one, rtol=1e-14, atol=0)
    # c_out² is the variance of the skip residual x0 - c_skip·x, so F's target has unit variance (eq. 8).
    residual_var = (1 - c.c_skip) ** 2 * sd**2 + c.c_skip**2 * s**2
    torch.testing.assert_close(c.c_out**2, residual_var, rtol=1e-12, atol=0)
    # c_skip minimises that residual variance: (d/dc)[(1-c)² sd² + c² σ²] = 0 at c = c_skip.
    torch.testing.assert_close(-2 * (1 - c.c_skip) * sd**2 + 2 * c.c_skip * s**2, 0 * s, rtol=0, atol=1e-12)
    # Loss weight lambda = 1/c_out² (EDM Table 1).
    torch.testing.assert_close(edm_loss_weight(s, sd) * c.c_out**2, one, rtol=1e-13, atol=0)
    assert c.c_skip.dtype == F64
    assert edm_coefficients(torch.tensor([1.0]), sd).c_out.dtype == torch.float32  # follows sigma's dtype


def test_edm_target_has_unit_variance_and_matches_definition():
    sd = C
    s = torch.tensor([0.002, 0.05, 0.5, 2.0, 80.0], dtype=F64)
    n = 4096
    sigma = s.repeat_interleave(n)
    g = torch.Generator().manual_seed(4)
    x0 = sd * torch.randn(sigma.shape[0], 8, generator=g, dtype=F64)
    eps = torch.randn(sigma.shape[0], 8, generator=g, dtype=F64)
    target = edm_target(x0, eps, sigma, sd)
    var = target.reshape(len(s), -1).var(dim=1)
    torch.testing.assert_close(var, torch.ones_like(s), rtol=0, atol=0.05)  # 32768 draws: std error ~0.8 %
    c = edm_coefficients(sigma, sd)
    x = x0 + bc(sigma, x0) * eps
    torch.testing.assert_close(target, (x0 - bc(c.c_skip, x) * x) / bc(c.c_out, x), rtol=1e-9, atol=1e-9)
    # Linear in (x0, eps): exact variance a²·sd² + b² = 1.
    a = edm_target(torch.ones(5, 1, dtype=F64), torch.zeros(5, 1, dtype=F64), s, sd).flatten()
    b = edm_target(torch.zeros(5, 1, dtype=F64), torch.ones(5, 1, dtype=F64), s, sd).flatten()
    torch.testing.assert_close(a**2 * sd**2 + b**2, torch.ones_like(s), rtol=1e-13, atol=0)


def test_edm_loss_weight_turns_denoiser_loss_into_unit_network_loss():
    # lambda(σ)·||D - x0||² = ||F - F_target||² for any network output F.
    sd = 0.5
    sigma = levels(EDM(), 6)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(2, 6, 7, generator=g, dtype=F64)
    x = x0 + bc(sigma, x0) * eps
    w = torch.randn(7, 7, generator=g, dtype=F64)
    outputs = []

    def net(x_in, c_noise):
        outputs.append(torch.tanh(x_in @ w) + bc(c_noise, x_in))
        return outputs[-1]

    d = EDMPrecond(net, sd)(x, sigma)
    lhs = edm_loss_weight(sigma, sd) * ((d - x0) ** 2).sum(1)
    rhs = ((outputs[-1] - edm_target(x0, eps, sigma, sd)) ** 2).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- peers (diffusers)


@pytest.mark.parametrize(("ours", "theirs"), [("epsilon", "epsilon"), ("v", "v_prediction")])
def test_discrete_adapter_matches_diffusers_euler(ours, theirs):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="trailing", prediction_type=theirs)
    noise = NOISES["vp_discrete"]
    torch.testing.assert_close(sch.alphas_cumprod.to(F64), noise.alphas_cumprod, rtol=1e-6, atol=0)
    sch.set_timesteps(8)

    def f(x_model, t):  # an arbitrary network that depends on its time input
        return 0.5 * x_model + 1e-3 * append_dims(t.to(x_model.dtype), x_model.ndim)

    calls: list = []
    den = ModelDenoiser(lambda xm, t: calls.append((xm, t)) or f(xm, t), noise, ours, quantize=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 6, 6, generator=g) * sch.init_noise_sigma
    for i, t in enumerate(sch.timesteps):
        sigma = sch.sigmas[i]
        x_in = sch.scale_model_input(x, t)
        out = sch.step(f(x_in, t.expand(2)), t, x)
        d = den(x, sigma.expand(2))
        assert torch.equal(calls[-1][1].to(F64), t.expand(2).to(F64))
        torch.testing.assert_close(calls[-1][0], x_in, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(d, out.pred_original_sample, rtol=1e-5, atol=1e-5)
        x = out.prev_sample


def test_flow_adapter_matches_diffusers_flow_match_euler_with_shift():
    # One Euler step of the flow ODE in t equals one Euler (DDIM) step of the EDM ODE in sigma.
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sch.set_timesteps(sigmas=[0.95, 0.8, 0.6, 0.4, 0.2])
    noise = Flow(shift=3.0)

    def f(x_model, t):
        return torch.sin(x_model) + 1e-3 * append_dims(t.to(x_model.dtype), x_model.ndim)

    calls: list = []
    den = ModelDenoiser(lambda xm, t: calls.append(t) or f(xm, t), noise, "flow", time_scale=1000)
    g = torch.Generator().manual_seed(7)
    x_flow = torch.randn(2, 3, 5, generator=g)
    for i, t in enumerate(sch.timesteps):
        tf, tf_next = sch.sigmas[i].double(), sch.sigmas[i + 1].double()
        ref = sch.step(f(x_flow, t.expand(2)), t, x_flow).prev_sample
        sigma, sigma_next = tf / (1 - tf), tf_next / (1 - tf_next)
        x = (x_flow.double() / (1 - tf))
        d = den(x, sigma.expand(2))
        torch.testing.assert_close(calls[-1], t.expand(2).double(), rtol=1e-6, atol=1e-4)
        x_next = d + (sigma_next / sigma) * (x - d)  # EDM Euler step, exact for a frozen D
        torch.testing.assert_close((x_next * (1 - tf_next)).float(), ref, rtol=1e-5, atol=1e-5)
        x_flow = ref


def test_edm_precond_matches_diffusers_edm_preconditioning():
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.EDMEulerScheduler(sigma_data=0.5)
    sigma = levels(EDM(), 6)
    x = noisy_batch(sigma)
    seen = []

    def F(x_in, c_noise):
        seen.append((x_in, c_noise))
        return torch.cos(x_in) * append_dims(c_noise, x_in.ndim)

    d = EDMPrecond(F, 0.5)(x, sigma)
    s = bc(sigma, x)
    x_in = sch.precondition_inputs(x, s)
    c_noise = sch.precondition_noise(s).flatten()
    torch.testing.assert_close(seen[-1][0], x_in, rtol=1e-13, atol=0)
    torch.testing.assert_close(seen[-1][1], c_noise, rtol=1e-13, atol=0)
    torch.testing.assert_close(d, sch.precondition_outputs(x, F(x_in, c_noise), s), rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- guidance and binding


def test_cfg_scales_and_linearity():
    sigma = levels(EDM(), 5)
    x = noisy_batch(sigma)

    def d_c(x, s):
        return ideal(x, s, 0.7)

    def d_u(x, s):
        return ideal(x, s, 1.3) + 0.1

    assert torch.equal(CFGDenoiser(d_c, d_u, 1.0)(x, sigma), d_c(x, sigma))
    assert torch.equal(CFGDenoiser(d_c, d_u, 0)(x, sigma), d_u(x, sigma))
    # The general formula (tensor scale: no shortcut) at 1 and 0.
    torch.testing.assert_close(CFGDenoiser(d_c, d_u, torch.ones(5))(x, sigma), d_c(x, sigma), rtol=0, atol=1e-14)
    torch.testing.assert_close(CFGDenoiser(d_c, d_u, torch.zeros(5))(x, sigma), d_u(x, sigma), rtol=0, atol=1e-14)
    d0, d1 = d_u(x, sigma), d_c(x, sigma)
    for s in (-1.0, 0.5, 2.0, 7.5):
        torch.testing.assert_close(CFGDenoiser(d_c, d_u, s)(x, sigma), d0 + s * (d1 - d0), rtol=0, atol=1e-12)
    # A [batch] scale guides each row with its own scale.
    scales = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    rows = torch.cat([CFGDenoiser(d_c, d_u, float(s))(x[i:i + 1], sigma[i:i + 1]) for i, s in enumerate(scales)])
    torch.testing.assert_close(CFGDenoiser(d_c, d_u, scales)(x, sigma), rows, rtol=0, atol=1e-13)


def _conditioned_eps_net(noise, calls):
    base = analytic_net("epsilon", noise)

    def net(x_model, t, emb, extra=None, flag="a"):
        calls.append(x_model.shape[0])
        out = base(x_model, t) + append_dims(emb.sum(1), x_model.ndim)
        if extra is not None:
            out = out + append_dims(extra["k"].mean(1), x_model.ndim)
        return out

    return net


@pytest.mark.parametrize("scale", [3.0, 0.0, 1.0])
def test_batched_cfg_equals_two_call_cfg_in_one_network_call(scale):
    noise = NOISES["vp_discrete"]
    calls: list = []
    den = ModelDenoiser(_conditioned_eps_net(noise, calls), noise)
    sigma = levels(noise, 4)
    x = noisy_batch(sigma)
    g = torch.Generator().manual_seed(8)
    cond = {"emb": torch.randn(4, 3, generator=g, dtype=F64), "extra": {"k": torch.randn(4, 2, generator=g,
                                                                                         dtype=F64)}, "flag": "b"}
    uncond = {"emb": torch.zeros(4, 3, dtype=F64), "extra": {"k": torch.zeros(4, 2, dtype=F64)}, "flag": "b"}
    expected = CFGDenoiser(bind(den, **cond), bind(den, **uncond), scale)(x, sigma)
    calls.clear()
    d = BatchedCFGDenoiser(den, cond, uncond, scale)(x, sigma)
    assert calls == ([8] if scale not in (0.0, 1.0) else [4])
    torch.testing.assert_close(d, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("noise_key", "prediction"), [("vp_continuous", "epsilon"), ("vp_continuous", "v"),
                                                        ("flow", "flow")])
def test_cfg_on_denoiser_equals_cfg_on_model_output(noise_key, prediction):
    # All conversions are affine in the network output with the same coefficients, so guiding D = guiding eps/v.
    noise = NOISES[noise_key]
    sigma = levels(noise, 6)
    x = noisy_batch(sigma)
    net_c = analytic_net(prediction, noise, c=0.7)
    net_u = analytic_net(prediction, noise, c=1.2)
    s = 4.0
    guided_net = ModelDenoiser(lambda xm, t: net_u(xm, t) + s * (net_c(xm, t) - net_u(xm, t)), noise, prediction)
    guided_d = CFGDenoiser(ModelDenoiser(net_c, noise, prediction), ModelDenoiser(net_u, noise, prediction), s)
    torch.testing.assert_close(guided_d(x, sigma), guided_net(x, sigma), rtol=0, atol=1e-10)


def test_bind():
    noise = NOISES["vp_discrete"]
    den = ModelDenoiser(_conditioned_eps_net(noise, []), noise)
    sigma = levels(noise, 3)
    x = noisy_batch(sigma)
    e1, e2 = torch.ones(3, 2, dtype=F64), torch.full((3, 2), 2.0, dtype=F64)
    bound = bind(den, emb=e1)
    assert torch.equal(bound(x, sigma), den(x, sigma, emb=e1))
    assert torch.equal(bound(x, sigma, emb=e2), den(x, sigma, emb=e2))
    with pytest.raises(AysError, match="must be callable"):
        bind(3, emb=e1)


# ----------------------------------------------------------------------------- dtype, broadcasting, modules


def test_float32_in_float32_out():
    calls: list = []
    noise = NOISES["vp_discrete"]
    sigma = levels(noise, 4)
    x64 = noisy_batch(sigma)
    x32 = x64.float()
    den = ModelDenoiser(analytic_net("epsilon", noise, calls=calls), noise)
    d32 = den(x32, sigma.float())
    assert d32.dtype == torch.float32 and calls[-1][0].dtype == torch.float32 and calls[-1][1].dtype == torch.float32
    torch.testing.assert_close(d32.double(), ideal(x64, sigma), rtol=1e-4, atol=1e-5)
    edm = EDMPrecond(lambda x_in, c_noise: torch.zeros_like(x_in), C)
    assert edm(x32, sigma.float()).dtype == torch.float32
    assert CFGDenoiser(den, edm, 2.0)(x32, sigma.float()).dtype == torch.float32
    assert BatchedCFGDenoiser(den, {}, {}, 2.0)(x32, sigma.float()).dtype == torch.float32
    t = target_for("v", x32, torch.randn_like(x32), sigma, noise)
    assert t.dtype == torch.float32
    assert denoised_from("v", t, x32, sigma, noise).dtype == torch.float32
    assert edm_target(x32, torch.randn_like(x32), sigma, C).dtype == torch.float32


def test_sigma_broadcasting():
    assert append_dims(torch.ones(4), 3).shape == (4, 1, 1)
    noise = NOISES["flow"]

    def net(x_model, t):  # nonlinear in x and t: rows must not mix
        return torch.tanh(x_model) * append_dims(t, x_model.ndim) + x_model**2

    den = ModelDenoiser(net, noise, "flow")
    x = torch.randn(4, 2, 3, dtype=F64)
    sigma = torch.tensor([0.1, 1.0, 3.0, 20.0], dtype=F64)
    rows = torch.cat([den(x[i:i + 1], sigma[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(den(x, sigma), rows, rtol=0, atol=1e-14)
    full = den(x, torch.full((4,), 2.0, dtype=F64))
    assert torch.equal(den(x, 2.0), full)
    assert torch.equal(den(x, torch.tensor(2.0)), full)
    # A Python float is taken in float64, not rounded through float32 first.
    assert torch.equal(den(x, 0.1), den(x, torch.full((4,), 0.1, dtype=F64)))


def test_adapters_are_modules():
    lin = nn.Linear(3, 3)
    den = ModelDenoiser(lambda xm, t, net=lin: net(xm), NOISES["edm"])
    assert list(den.parameters()) == []  # a plain callable is not registered...
    den = EDMPrecond(nn.Sequential(lin))
    assert [p.data_ptr() for p in den.parameters()] == [p.data_ptr() for p in lin.parameters()]  # ...a module is
    den.to(F64)
    assert lin.weight.dtype == F64

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, t):
            return self.lin(x)

    md = ModelDenoiser(Net(), NOISES["vp_continuous"], "v")
    assert set(md.state_dict()) == {"model.lin.weight", "model.lin.bias"}
    cfg = CFGDenoiser(md, EDMPrecond(Net()), 2.0)
    assert len(list(cfg.parameters())) == 4
    assert "prediction='v'" in repr(md)


def test_output_unwrapping_and_learned_variance():
    noise = NOISES["vp_discrete"]
    sigma = levels(noise, 3)
    x = noisy_batch(sigma)
    net = analytic_net("epsilon", noise)
    expected = ideal(x, sigma)
    obj = ModelDenoiser(lambda xm, t: SimpleNamespace(sample=net(xm, t)), noise)(x, sigma)
    tup = ModelDenoiser(lambda xm, t: (net(xm, t),), noise)(x, sigma)
    lv = ModelDenoiser(lambda xm, t: torch.cat([net(xm, t), torch.randn_like(xm)], 1), noise,
                       learned_variance=True)(x, sigma)
    for d in (obj, tup, lv):
        torch.testing.assert_close(d, expected, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- errors name the fault


def test_bad_input_errors():
    noise = NOISES["vp_discrete"]
    net = analytic_net("epsilon", noise)
    den = ModelDenoiser(net, noise)
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(AysError, match=r"unknown prediction type 'score'; choose one of: .*epsilon"):
        ModelDenoiser(net, noise, "score")
    with pytest.raises(AysError, match="unknown prediction type 'velocity'"):
        target_for("velocity", x, x, 1.0, noise)
    assert [prediction_name(p) for p in ("eps", "sample", "v_prediction", "flow_prediction")] == \
        ["epsilon", "x0", "v", "flow"]
    with pytest.raises(AysError, match="sigma must be >= 0"):
        den(x, torch.tensor([1.0, -0.5, 1.0, 1.0]))
    with pytest.raises(AysError, match="sigma must be >= 0"):
        EDMPrecond(net)(x, -1.0)
    with pytest.raises(AysError, match="sigma must be >= 0"):
        edm_coefficients(torch.tensor([-1.0]))
    with pytest.raises(AysError, match="finite"):
        den(x, torch.tensor([1.0, math.nan, 1.0, 1.0]))
    with pytest.raises(AysError, match=r"sigma must have shape \[batch\] = \[4\] .* got \(3,\)"):
        den(x, torch.ones(3))
    with pytest.raises(AysError, match=r"sigma must have shape \[batch\] = \[4\]"):
        den(x, torch.ones(4, 1))
    with pytest.raises(AysError, match=r"model output has shape \(4, 2\) but x has shape \(4, 3\)"):
        ModelDenoiser(lambda xm, t: xm[:, :2], noise)(x, 1.0)
    with pytest.raises(AysError, match="learned_variance=True"):
        ModelDenoiser(lambda xm, t: torch.cat([xm, xm], 1), noise)(x, 1.0)
    with pytest.raises(AysError, match="returned str, expected a tensor"):
        ModelDenoiser(lambda xm, t: "eps", noise)(x, 1.0)
    with pytest.raises(AysError, match="quantize=True needs a discrete-time model"):
        ModelDenoiser(net, ContinuousVP(), quantize=True)
    with pytest.raises(AysError, match="model must be callable"):
        ModelDenoiser(None, noise)
    with pytest.raises(AysError, match="noise must be a noise schedule"):
        ModelDenoiser(net, object())
    with pytest.raises(AysError, match="sigma_data must be > 0"):
        EDMPrecond(net, sigma_data=0.0)
    with pytest.raises(AysError, match="time_scale must be > 0"):
        ModelDenoiser(net, noise, time_scale=-1)
    with pytest.raises(AysError, match="floating-point"):
        den(torch.ones(4, 3, dtype=torch.long), 1.0)
    with pytest.raises(AysError, match=r"eps has shape \(4, 2\) but x0 has shape \(4, 3\)"):
        target_for("epsilon", x, x[:, :2], 1.0, noise)
    with pytest.raises(AysError, match="guidance scale must be finite"):
        CFGDenoiser(den, den, math.inf)
    with pytest.raises(AysError, match="guidance scale has 3 entries but the batch has 4"):
        CFGDenoiser(den, den, torch.ones(3))(x, 1.0)
    with pytest.raises(AysError, match=r"cond has keys \['emb'\] but uncond has \[\]"):
        BatchedCFGDenoiser(den, {"emb": x}, {}, 2.0)
    with pytest.raises(AysError, match="conditioning 'flag' differs between cond and uncond"):
        BatchedCFGDenoiser(den, {"flag": "a"}, {"flag": "b"}, 2.0)(x, 1.0)
    with pytest.raises(AysError, match="cannot batch conditioning 'emb'"):
        BatchedCFGDenoiser(den, {"emb": torch.ones(4, 77)}, {"emb": torch.ones(4, 10)}, 2.0)(x, 1.0)

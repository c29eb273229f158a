"""Our solvers against peer implementations, same denoiser, sigmas and noise.

- diffusers (installed): DPMSolverMultistepScheduler ("dpmsolver++" orders 2 and 3,
  "sde-dpmsolver++" order 2), EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
  HeunDiscreteScheduler. diffusers works in float32; DPMSolverMultistep works in VP space
  (x_vp = x / sqrt(1 + sigma²)), the Euler and Heun schedulers in our (VE/EDM) space.
- k-diffusion is not a dependency (its package pulls torchvision, clip, clean-fid), so
  its samplers are restated below in k-diffusion's own formulation (t = -log sigma,
  to_d, get_ancestral_step, x + d dt), as is ComfyUI's sample_er_sde.

Peer conventions that matter: diffusers' DPMSolverMultistep takes integer timesteps and
its last step into 0 is always first order (final_sigmas_type="zero"); a plain
multistep run to sigma_min needs lower_order_final=False; its 3rd-order solver uses
the "heun" 2nd-order update on its second step, as k-diffusion's 3M does.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from ays import schedules, solvers
from ays.solvers.er_sde import default_noise_scaler

diffusers = pytest.importorskip("diffusers")

B, D = 4, 8
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def den(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A small smooth denoiser: nonlinear in x, smooth in sigma."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x) * (0.8 / (1 + s * s)) + 0.05 * torch.sin(2 * x) * s / (1 + s)


def noise_list(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, generator=g) for _ in range(n)]


def replay(draws: list[torch.Tensor]):
    it = iter(draws)
    return lambda sigma, sigma_next: next(it).double()


def z0() -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(0))


def assert_rel(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-5) -> None:
    err = float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max())
    assert err < tol, err


def sigma_vec(s: float) -> torch.Tensor:
    return torch.full((B,), float(s))


def sigma64(s: float) -> torch.Tensor:
    return torch.full((B,), float(s), dtype=torch.float64)


# --- diffusers ------------------------------------------------------------------------------


def run_dpm_solver(algorithm: str, order: int, final: str, draws: list[torch.Tensor]):
    sch = diffusers.DPMSolverMultistepScheduler(
        algorithm_type=algorithm, solver_order=order, prediction_type="sample", final_sigmas_type=final,
        lower_order_final=False, solver_type="heun" if order == 3 else "midpoint", **SD_BETAS)
    sch.set_timesteps(timesteps=torch.linspace(999, 30, 10).round().long().tolist())
    sigmas = sch.sigmas.double()  # the float32 levels diffusers really uses
    x_ve = z0() * float(sigmas[0])
    x = x_ve / math.sqrt(1 + float(sigmas[0]) ** 2)
    for k, t in enumerate(sch.timesteps):
        s = float(sch.sigmas[k])
        out = den(x * math.sqrt(1 + s * s), sigma_vec(s))  # the model sees our (VE) state
        x = sch.step(out, t, x, variance_noise=draws[k] if algorithm.startswith("sde") else None).prev_sample
    last = float(sigmas[-1])
    return x_ve.double(), sigmas, x * math.sqrt(1 + last * last)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize(("algorithm", "order", "name"), [
    ("dpmsolver++", 2, "dpmpp_2m"),
    ("dpmsolver++", 3, "dpmpp_3m"),
    ("sde-dpmsolver++", 2, "dpmpp_2m_sde"),
])
def test_dpm_solver_multistep(algorithm, order, name, final):
    draws = noise_list(10)
    x, sigmas, theirs = run_dpm_solver(algorithm, order, final, draws)
    assert (float(sigmas[-1]) == 0) == (final == "zero")
    ours = solvers.get(name)(den, x, sigmas, noise_sampler=replay(draws))
    assert_rel(ours, theirs)


@pytest.mark.parametrize("final_zero", [True, False])
def test_euler_discrete(final_zero):
    s = schedules.karras(10, 0.03, 14.6)
    if final_zero:
        s = schedules.to_sampling(s)
    sch = diffusers.EulerDiscreteScheduler(prediction_type="sample", **SD_BETAS)
    sch.set_timesteps(sigmas=s.tolist())
    sigmas = sch.sigmas.double()
    x = z0() * float(sigmas[0])
    ours = solvers.euler(den, x.double(), sigmas)
    for k, t in enumerate(sch.timesteps):
        sch.scale_model_input(x, t)
        x = sch.step(den(x, sigma_vec(sch.sigmas[k])), t, x).prev_sample
    assert_rel(ours, x)


def test_euler_ancestral_discrete(monkeypatch):
    sch = diffusers.EulerAncestralDiscreteScheduler(prediction_type="epsilon", **SD_BETAS)
    sch.set_timesteps(10)
    sigmas = sch.sigmas.double()
    assert float(sigmas[-1]) == 0
    draws = noise_list(10)
    pending = iter(draws)
    monkeypatch.setattr(diffusers.schedulers.scheduling_euler_ancestral_discrete, "randn_tensor",
                        lambda *a, **k: next(pending))
    x = z0() * float(sigmas[0])
    ours = solvers.euler_ancestral(den, x.double(), sigmas, noise_sampler=replay(draws))
    for k, t in enumerate(sch.timesteps):
        sch.scale_model_input(x, t)
        s = float(sch.sigmas[k])
        x = sch.step((x - den(x, sigma_vec(s))) / s, t, x).prev_sample  # epsilon = (x - D) / sigma
    assert_rel(ours, x)


def test_heun_discrete():
    n = 8
    sch = diffusers.HeunDiscreteScheduler(prediction_type="sample", **SD_BETAS)
    sch.set_timesteps(n)
    # diffusers repeats each interior level: [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]
    sigmas = sch.sigmas.double()[[0, *range(1, 2 * n - 1, 2), 2 * n - 1]]
    assert sigmas.numel() == n + 1 and float(sigmas[-1]) == 0 and len(sch.timesteps) == 2 * n - 1
    x = z0() * float(sigmas[0])
    ours = solvers.heun(den, x.double(), sigmas)
    for t in sch.timesteps:
        sch.scale_model_input(x, t)
        k = 0 if sch.step_index is None else sch.step_index
        x = sch.step(den(x, sigma_vec(sch.sigmas[k])), t, x).prev_sample
    assert_rel(ours, x)
    assert solvers.count_calls("heun", sigmas) == len(sch.timesteps)


# --- k-diffusion's samplers, restated in its own formulation -----------------------------------

t_fn = lambda sigma: -math.log(sigma)
sigma_fn = lambda t: math.exp(-t)


def kd_to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def kd_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def kd_sample_euler(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma64(sigmas[i]))
        x = x + kd_to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def kd_sample_heun(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        d = kd_to_d(x, sigmas[i], model(x, sigma64(sigmas[i])))
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = kd_to_d(x2, sigmas[i + 1], model(x2, sigma64(sigmas[i + 1])))
            x = x + (d + d2) / 2 * dt
    return x


def kd_sample_euler_ancestral(model, x, sigmas, noise, eta=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma64(sigmas[i]))
        down, up = kd_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + kd_to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


def kd_sample_dpmpp_2m(model, x, sigmas):
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma64(sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            if old is None:
                d = denoised
            else:
                r = (t - t_fn(sigmas[i - 1])) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - math.expm1(-h) * d
        old = denoised
    return x


def kd_sample_dpmpp_2m_sde(model, x, sigmas, noise, eta=1.0, solver_type="midpoint"):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma64(sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = t_fn(sigmas[i + 1]) - t_fn(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * math.exp(-eta_h) * x + (-math.expm1(-h - eta_h)) * denoised
            if old is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-math.expm1(-h - eta_h)) / (-h - eta_h) + 1) * (1 / r) * (denoised - old)
                else:
                    x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * (denoised - old)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * eta_h))
            h_last = h
        old = denoised
    return x


def kd_sample_dpmpp_3m_sde(model, x, sigmas, noise, eta=1.0):
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma64(sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = t_fn(sigmas[i + 1]) - t_fn(sigmas[i])
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * h * eta))
        d_1, d_2, h_1, h_2 = denoised, d_1, h, h_1
    return x


def comfy_sample_er_sde(model, x, sigmas, noise, max_stage=3, riemann_points=None):
    """ComfyUI's sample_er_sde for an EDM (VE) model: er_lambda = sigma. With riemann_points
    its left Riemann sums for the integrals; without, scipy.integrate.quad."""
    ns = lambda v: float(default_noise_scaler(torch.tensor(v, dtype=torch.float64)))
    lams = sigmas
    old = old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma64(sigmas[i]))
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            ls, lt = lams[i], lams[i + 1]
            r = ns(lt) / ns(ls)
            x = r * x + (1 - r) * denoised
            if stage >= 2:
                dt = lt - ls
                if riemann_points:
                    step = -dt / riemann_points
                    pos = [lt + k * step for k in range(riemann_points)]
                    s = sum(1 / ns(p) for p in pos) * step
                    s_u = sum((p - ls) / ns(p) for p in pos) * step
                else:
                    s = integrate.quad(lambda v: 1 / ns(v), lt, ls, epsabs=0, epsrel=1e-12)[0]
                    s_u = integrate.quad(lambda v, top=ls: (v - top) / ns(v), lt, ls, epsabs=0, epsrel=1e-12)[0]
                d = (denoised - old) / (ls - lams[i - 1])
                x = x + (dt + s * ns(lt)) * d
                if stage >= 3:
                    u = (d - old_d) / ((ls - lams[i - 2]) / 2)
                    x = x + ((dt**2) / 2 + s_u * ns(lt)) * u
                old_d = d
            x = x + noise(sigmas[i], sigmas[i + 1]) * math.sqrt(max(lt**2 - ls**2 * r**2, 0.0))
        old = denoised
    return x


KD_CASES = [
    ("euler", {}, lambda x, s, nz: kd_sample_euler(den, x, s)),
    ("heun", {}, lambda x, s, nz: kd_sample_heun(den, x, s)),
    ("dpmpp_2m", {}, lambda x, s, nz: kd_sample_dpmpp_2m(den, x, s)),
    ("dpmpp_3m", {}, lambda x, s, nz: kd_sample_dpmpp_3m_sde(den, x, s, nz, eta=0.0)),
    ("euler_ancestral", {}, lambda x, s, nz: kd_sample_euler_ancestral(den, x, s, nz)),
    ("euler_ancestral", {"eta": 0.6}, lambda x, s, nz: kd_sample_euler_ancestral(den, x, s, nz, eta=0.6)),
    ("stochastic_ddim", {}, lambda x, s, nz: kd_sample_euler_ancestral(den, x, s, nz)),
    ("dpmpp_2m_sde", {}, lambda x, s, nz: kd_sample_dpmpp_2m_sde(den, x, s, nz)),
    ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.7},
     lambda x, s, nz: kd_sample_dpmpp_2m_sde(den, x, s, nz, eta=0.7, solver_type="heun")),
    ("dpmpp_3m_sde", {}, lambda x, s, nz: kd_sample_dpmpp_3m_sde(den, x, s, nz)),
    ("dpmpp_3m_sde", {"eta": 0.5}, lambda x, s, nz: kd_sample_dpmpp_3m_sde(den, x, s, nz, eta=0.5)),
    ("er_sde", {}, lambda x, s, nz: comfy_sample_er_sde(den, x, s, nz)),
    ("er_sde", {"order": 2}, lambda x, s, nz: comfy_sample_er_sde(den, x, s, nz, max_stage=2)),
]


@pytest.mark.parametrize("final_zero", [True, False])
@pytest.mark.parametrize(("name", "options", "peer"), KD_CASES,
                         ids=lambda v: str(v) if isinstance(v, str | dict) else "")
def test_k_diffusion_formulation(name, options, peer, final_zero):
    s = schedules.karras(9, 0.02, 30.0)
    if final_zero:
        s = schedules.to_sampling(s)
    x = z0().double() * 30.0
    draws = noise_list(9, seed=7)
    theirs = peer(x, s.tolist(), replay(draws))
    ours = solvers.get(name)(den, x, s, noise_sampler=replay(draws), **options)
    assert_rel(ours, theirs, tol=1e-9)


def test_er_sde_matches_comfyui_riemann_sums_closely():
    """ComfyUI integrates with 200-point left Riemann sums; our Gauss-Legendre integrals
    differ from those by a fraction of a percent of the (already small) correction terms."""
    s = schedules.to_sampling(schedules.karras(9, 0.02, 30.0))
    x = z0().double() * 30.0
    draws = noise_list(9, seed=7)
    theirs = comfy_sample_er_sde(den, x, s.tolist(), replay(draws), riemann_points=200)
    ours = solvers.er_sde(den, x, s, noise_sampler=replay(draws))
    assert_rel(ours, theirs, tol=1e-3)

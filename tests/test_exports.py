"""Exports: each consumer (diffusers, k-diffusion, ComfyUI, A1111) ends up on the
schedule we mean, checked against the consumer's own code (diffusers, installed)
or a line-by-line re-implementation of its source (ComfyUI, A1111, k-diffusion)."""

from __future__ import annotations

import ast
import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ays import schedules as S
from ays.integrations import a1111 as A1
from ays.integrations import comfyui, comfyui_node
from ays.integrations import formats as FMT
from ays.integrations import k_diffusion as KD
from ays.integrations import resolve as R
from ays.integrations.diffusers import export as DX
from ays.noise import DiscreteVP
from ays.validate import AysError, ScheduleError

diffusers = pytest.importorskip("diffusers")

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def _karras(n: int = 8) -> torch.Tensor:
    # Inside SD's noise range, so that every level has a timestep.
    return S.karras(n, 0.04, 14.0)


def _write_schedule(path: Path, sigmas: torch.Tensor, **extra: object) -> Path:
    doc = {"format": "ays-schedule/1", "sigmas": sigmas.tolist(), "steps": sigmas.numel() - 1, **extra}
    path.write_text(json.dumps(doc))
    return path


# ----------------------------------------------------------------------------- published tables


@pytest.mark.parametrize(("name", "key"), [("sd15", "StableDiffusion"), ("sdxl", "StableDiffusionXL"),
                                           ("svd", "StableDiffusionVideo")])
def test_diffusers_ays_tables_are_our_published_tables_in_sampling_form(name: str, key: str) -> None:
    from diffusers.schedulers import AysSchedules

    got = DX.to_diffusers(name)["sigmas"]
    assert got == pytest.approx(AysSchedules[f"{key}Sigmas"], abs=1e-12)
    if f"{key}Timesteps" in AysSchedules:
        assert DX.to_diffusers(name, kind="timesteps")["timesteps"] == AysSchedules[f"{key}Timesteps"]


def test_published_timesteps_are_nvidias_only_on_sds_noise_table() -> None:
    sd = diffusers.DPMSolverMultistepScheduler(**SD)
    assert DX.to_diffusers("sd15", sd)["timesteps"] == list(S.PUBLISHED_TIMESTEPS["sd15"][:-1])
    # On another noise table the published sigmas are mapped to that table's timesteps.
    other = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    ts = DX.to_diffusers("sd15", other)["timesteps"]
    vp = DiscreteVP(other.alphas_cumprod)
    assert ts == vp.nearest_timestep(S.to_sampling(S.published("sd15"))[:-1].clamp(max=vp.sigma_max)).tolist()


# ----------------------------------------------------------------------------- diffusers sigmas / timesteps


def test_euler_discrete_fed_our_sigmas_holds_exactly_our_sampling_schedule() -> None:
    s = _karras(9)
    sched = diffusers.EulerDiscreteScheduler(**SD)
    kwargs = DX.to_diffusers(s, sched)
    assert set(kwargs) == {"sigmas"}
    sched.set_timesteps(**kwargs)
    want = S.to_sampling(s)
    assert torch.equal(sched.sigmas, want.to(torch.float32))
    # Its fractional timesteps are the log-sigma interpolation of k-diffusion (our DiscreteVP.t).
    vp = DiscreteVP(sched.alphas_cumprod)
    np.testing.assert_allclose(sched.timesteps.numpy(), vp.t(want[:-1].float().double()).numpy(), atol=2e-3)


def test_timesteps_are_the_rounded_fractional_timesteps_and_round_trip() -> None:
    s = _karras(12)
    sched = diffusers.DPMSolverMultistepScheduler(**SD)
    ts = DX.to_diffusers(s, sched)["timesteps"]
    assert len(ts) == 12 and all(isinstance(t, int) for t in ts)
    # log-sigma is linear between integer timesteps, so the nearest level in log-sigma
    # is diffusers' own fractional timestep (_sigma_to_t), rounded.
    log_sigmas = np.log(((1 - sched.alphas_cumprod) / sched.alphas_cumprod).numpy() ** 0.5)
    frac = np.array([sched._sigma_to_t(v, log_sigmas) for v in s[:-1].numpy()])
    assert ts == np.round(frac).astype(int).tolist()
    sched.set_timesteps(timesteps=ts)
    assert sched.timesteps.tolist() == ts
    table = DiscreteVP(sched.alphas_cumprod).sigmas
    np.testing.assert_allclose(sched.sigmas[:-1].numpy(), table[ts].numpy(), rtol=1e-6)
    assert sched.sigmas[-1] == 0
    # Each sigma moved by at most half a timestep in log-sigma.
    step = (table.log()[1:] - table.log()[:-1]).max()
    assert torch.all((table[ts].log() - s[:-1].log()).abs() <= step / 2 + 1e-9)


def test_timesteps_that_collide_are_refused() -> None:
    s = S.loglinear(200, 0.03, 14.0)  # neighbouring levels closer than one timestep near sigma_max
    with pytest.raises(ScheduleError, match="same timestep"):
        DX.to_diffusers(s, kind="timesteps")


def test_edm_euler_scheduler_sigmas_argument_is_a_ramp_which_we_invert() -> None:
    s = S.karras(7, 0.002, 80.0, rho=3.0)  # not the scheduler's rho=7: the ramp is not uniform
    sched = diffusers.EDMEulerScheduler()
    kwargs = DX.to_diffusers(s, sched)
    sched.set_timesteps(**kwargs)
    torch.testing.assert_close(sched.sigmas, S.to_sampling(s).float(), rtol=2e-6, atol=0)


def test_schedulers_without_custom_schedules_are_refused() -> None:
    with pytest.raises(AysError, match="neither custom sigmas nor timesteps"):
        DX.to_diffusers("sd15", diffusers.DDIMScheduler(**SD))
    with pytest.raises(AysError, match="does not accept custom sigmas"):
        DX.to_diffusers("sd15", diffusers.DPMSolverMultistepScheduler(**SD), kind="sigmas")
    with pytest.raises(AysError, match="plain_scheduler"):
        DX.to_diffusers("sd15", diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True))
    karras = diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True)
    ok = DX.to_diffusers("sd15", DX.plain_scheduler(karras))
    assert ok["timesteps"] == list(S.PUBLISHED_TIMESTEPS["sd15"][:-1])


def test_a_scheduler_config_dict_works_like_the_scheduler() -> None:
    sched = diffusers.EulerDiscreteScheduler(**SD)
    config = json.loads(sched.to_json_string())  # as in a scheduler_config.json
    assert config["_class_name"] == "EulerDiscreteScheduler"
    assert DX.to_diffusers("sdxl", config) == DX.to_diffusers("sdxl", sched)


# ----------------------------------------------------------------------------- flow matching


def _flow_t(s: torch.Tensor) -> torch.Tensor:
    return S.to_sampling(s) / (1 + S.to_sampling(s))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_scheduler_ends_on_our_flow_times_after_its_own_shift(shift: float) -> None:
    s = S.karras(6, 0.01, 200.0)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    kwargs = DX.to_diffusers(s, sched)
    assert len(kwargs["sigmas"]) == 6  # n values, the scheduler appends the 0
    sched.set_timesteps(**kwargs)
    torch.testing.assert_close(sched.sigmas.double(), _flow_t(s), rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(sched.timesteps.double(), 1000 * _flow_t(s)[:-1], rtol=2e-6, atol=1e-4)
    if shift != 1.0:  # handing the plain t values over would be wrong: the scheduler shifts them
        naive = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
        naive.set_timesteps(sigmas=_flow_t(s)[:-1].tolist())
        assert (naive.sigmas.double() - _flow_t(s)).abs().max() > 0.01


def test_dynamic_shifting_needs_mu_or_a_plain_scheduler() -> None:
    s = S.karras(5, 0.01, 200.0)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="exponential")
    with pytest.raises(AysError, match="mu"):
        DX.to_diffusers(s, sched)
    mu = 0.7
    sched.set_timesteps(**DX.to_diffusers(s, sched, mu=mu), mu=mu)
    torch.testing.assert_close(sched.sigmas.double(), _flow_t(s), rtol=2e-6, atol=1e-7)
    plain = DX.plain_scheduler(sched)
    assert plain.config.use_dynamic_shifting is False and sched.config.use_dynamic_shifting is True
    plain.set_timesteps(**DX.to_diffusers(s, plain), mu=mu)  # mu is ignored once the shift is off
    torch.testing.assert_close(plain.sigmas.double(), _flow_t(s), rtol=2e-6, atol=1e-7)


def test_unipc_with_flow_sigmas_ends_on_our_flow_times() -> None:
    s = S.karras(5, 0.01, 200.0)
    sched = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5.0, prediction_type="flow_prediction")
    sched.set_timesteps(**DX.to_diffusers(s, sched))
    torch.testing.assert_close(sched.sigmas.double(), _flow_t(s), rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------- A1111 / Forge


def _a1111(table: list[float], n: int) -> np.ndarray:
    """A1111's get_align_your_steps_sigmas (modules/sd_schedulers.py), line by line."""

    def loglinear_interp(t_steps: list[float], num_steps: int) -> np.ndarray:
        xs = np.linspace(0, 1, len(t_steps))
        ys = np.log(t_steps[::-1])
        new_xs = np.linspace(0, 1, num_steps)
        new_ys = np.interp(new_xs, xs, ys)
        return np.exp(new_ys)[::-1].copy()

    sigmas = list(table)
    if n != len(sigmas):
        return np.append(loglinear_interp(sigmas, n), [0.0]).astype(np.float32)
    return np.array([*sigmas, 0.0], dtype=np.float32)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
@pytest.mark.parametrize("n", [1, 2, 5, 10, 11, 20, 32])
def test_a1111_matches_its_source_and_keeps_sigma_min_before_the_zero(name: str, n: int) -> None:
    got = A1.to_a1111(name, n)
    assert got.dtype == torch.float32 and got.shape == (n + 1,) and got[-1] == 0
    assert got[-2].item() == pytest.approx(S.PUBLISHED[name][-1], rel=1e-6)
    np.testing.assert_allclose(got.numpy(), _a1111(list(S.PUBLISHED[name]), n), rtol=1e-6)


def test_a1111_and_diffusers_differ_by_the_last_level() -> None:
    a1111, diff = A1.to_a1111("sd15", 10), torch.tensor(DX.to_diffusers("sd15")["sigmas"])
    assert a1111.shape == diff.shape and a1111[-2] > 0.02 and diff[-2] > 0.1  # 0.029 vs 0.152


# ----------------------------------------------------------------------------- img2img / denoise


def _comfy_loglinear(table: list[float], num: int) -> np.ndarray:
    xs = np.linspace(0, 1, len(table))
    ys = np.log(table[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


def _comfy_ays_node(table: list[float], steps: int, denoise: float) -> np.ndarray:
    """ComfyUI AlignYourStepsScheduler.get_sigmas (comfy_extras/nodes_align_your_steps.py)."""
    total_steps = steps
    if denoise < 1.0:
        total_steps = round(steps * denoise)
    sigmas = table[:]
    if (steps + 1) != len(sigmas):
        sigmas = _comfy_loglinear(sigmas, steps + 1)
    sigmas = np.array(sigmas)[-(total_steps + 1):]
    sigmas[-1] = 0
    return sigmas.astype(np.float32)


def _comfy_ksampler(table: list[float], steps: int, denoise: float) -> np.ndarray:
    """ComfyUI KSampler.set_steps / BasicScheduler, with the table as the scheduler."""

    def calculate_sigmas(n: int) -> np.ndarray:
        s = np.array(table) if n + 1 == len(table) else _comfy_loglinear(table, n + 1)
        return np.append(s[:-1], 0.0)

    if denoise > 0.9999:
        return calculate_sigmas(steps).astype(np.float32)
    new_steps = int(steps / denoise)
    return calculate_sigmas(new_steps)[-(steps + 1):].astype(np.float32)


@pytest.mark.parametrize("steps", [4, 10, 15, 30])
@pytest.mark.parametrize("denoise", [1.0, 0.99, 0.75, 0.5, 0.33, 0.15])
def test_comfyui_truncation_matches_its_source(steps: int, denoise: float) -> None:
    table = list(S.PUBLISHED["sdxl"])
    got = R.truncate("sdxl", denoise, steps, convention="comfyui")
    assert got.shape == (steps + 1,)  # KSampler always runs `steps` steps
    np.testing.assert_allclose(got.float().numpy(), _comfy_ksampler(table, steps, denoise), rtol=1e-6)
    np.testing.assert_allclose(comfyui.to_comfyui("sdxl", steps, denoise=denoise).numpy(),
                               _comfy_ksampler(table, steps, denoise), rtol=1e-6)
    want = _comfy_ays_node(table, steps, denoise)
    if want.size < 2:
        with pytest.raises(AysError, match="no step"):
            R.truncate("sdxl", denoise, steps, convention="comfyui_ays")
    else:
        got = R.truncate("sdxl", denoise, steps, convention="comfyui_ays")
        np.testing.assert_allclose(got.float().numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("steps", [7, 10, 20])
@pytest.mark.parametrize("strength", [1.0, 0.8, 0.75, 0.5, 0.3])
def test_diffusers_strength_matches_the_img2img_pipelines(steps: int, strength: float) -> None:
    from diffusers import FluxImg2ImgPipeline, StableDiffusionImg2ImgPipeline

    s = S.published("sd15", steps)
    for convention, pipeline, sched in [
        ("diffusers", StableDiffusionImg2ImgPipeline, diffusers.EulerDiscreteScheduler(**SD)),
        ("diffusers_flow", FluxImg2ImgPipeline, diffusers.FlowMatchEulerDiscreteScheduler()),
    ]:
        sched.set_timesteps(**DX.to_diffusers(s, sched))
        _, run = pipeline.get_timesteps(types.SimpleNamespace(scheduler=sched), steps, strength, "cpu")
        begin = sched._begin_index
        got = R.truncate(s, strength, convention=convention)
        assert got.numel() - 1 == run
        want = sched.sigmas[begin:].double()
        if convention == "diffusers_flow":
            got = got / (1 + got)
        torch.testing.assert_close(got.float().double(), want, rtol=2e-6, atol=1e-7)


def test_truncate_refuses_denoise_outside_0_1() -> None:
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(AysError, match="denoise"):
            R.truncate("sd15", bad)


# ----------------------------------------------------------------------------- ComfyUI node


def test_comfyui_node_is_self_contained_and_loads_a_schedule_file(tmp_path: Path) -> None:
    source = comfyui.node_source()
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "itertools", "json", "math", "os", "typing", "torch"}

    namespace: dict[str, object] = {"__name__": "ays_schedule_loader"}
    exec(compile(source, "ays_schedule_loader/__init__.py", "exec"), namespace)
    node_cls = namespace["NODE_CLASS_MAPPINGS"]["AYSScheduleLoader"]  # type: ignore[index]
    assert namespace["NODE_DISPLAY_NAME_MAPPINGS"]["AYSScheduleLoader"] == "AYS Schedule Loader"  # type: ignore[index]
    assert node_cls.RETURN_TYPES == ("SIGMAS",)
    assert set(node_cls.INPUT_TYPES()["required"]) == {"schedule_path", "steps", "denoise", "model_sampling"}

    s = S.kl_optimal(10, 0.03, 14.6, c=0.5)
    path = _write_schedule(tmp_path / "s.json", s)
    node = node_cls()
    (own,) = node.get_sigmas(str(path), 0, 1.0, "auto")
    assert torch.equal(own, S.to_sampling(s).float())
    for steps, denoise in [(10, 1.0), (17, 1.0), (12, 0.6), (5, 0.3)]:
        (got,) = node.get_sigmas(str(path), steps, denoise, "sigma")
        torch.testing.assert_close(got, comfyui.to_comfyui(path, steps, denoise=denoise), rtol=0, atol=0)
    (flow,) = node.get_sigmas(str(path), 0, 1.0, "flow")
    torch.testing.assert_close(flow, comfyui.to_comfyui(path, model_sampling="flow"), rtol=0, atol=0)
    # a schedule optimised for a flow model says so in its settings; "auto" follows it
    flow_path = _write_schedule(tmp_path / "f.json", s, settings={"noise": {"kind": "Flow", "shift": 3.0}})
    (auto_flow,) = node.get_sigmas(str(flow_path), 0, 1.0, "auto")
    torch.testing.assert_close(auto_flow, flow, rtol=0, atol=0)
    torch.testing.assert_close(comfyui.to_comfyui(flow_path), flow, rtol=0, atol=0)
    assert DX.to_diffusers(flow_path)["sigmas"] == pytest.approx(_flow_t(s)[:-1].tolist())
    (empty,) = node.get_sigmas(str(path), 10, 0.0, "sigma")
    assert empty.numel() == 0  # ComfyUI's own answer to denoise 0
    with pytest.raises(ValueError, match="does not exist"):
        node.get_sigmas(str(tmp_path / "missing.json"), 0, 1.0, "auto")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other", "sigmas": [1, 0.5]}))
    with pytest.raises(ValueError, match="not an ays-schedule/1"):
        node.get_sigmas(str(tmp_path / "bad.json"), 0, 1.0, "auto")


def test_comfyui_node_interpolation_is_ours() -> None:
    s = S.published("svd")
    for steps in (1, 3, 10, 25):
        torch.testing.assert_close(comfyui_node.interpolate(s.tolist(), steps), S.interpolate(s, steps),
                                   rtol=1e-15, atol=0)


def test_write_node_installs_into_custom_nodes(tmp_path: Path) -> None:
    (tmp_path / "custom_nodes").mkdir()
    path = comfyui.write_node(tmp_path)
    assert path == tmp_path / "custom_nodes" / "ays_schedule_loader" / "__init__.py"
    assert path.read_text() == Path(comfyui_node.__file__).read_text()
    with pytest.raises(AysError, match="exists"):
        comfyui.write_node(tmp_path / "custom_nodes", overwrite=False)
    with pytest.raises(AysError, match="not a directory"):
        comfyui.write_node(tmp_path / "nowhere")
    (tmp_path / "elsewhere").mkdir()  # a folder ComfyUI never reads: refused, nothing written
    with pytest.raises(AysError, match="neither ComfyUI's custom_nodes folder"):
        comfyui.write_node(tmp_path / "elsewhere")
    assert not any((tmp_path / "elsewhere").iterdir())


def test_comfyui_flow_sigmas_are_flow_times() -> None:
    s = S.karras(6, 0.01, 100.0)
    got = comfyui.to_comfyui(s, model_sampling="flow")
    torch.testing.assert_close(got.double(), _flow_t(s).float().double(), rtol=0, atol=0)
    assert got[-1] == 0 and torch.all(got[:-1] < 1)


# ----------------------------------------------------------------------------- k-diffusion


def test_k_diffusion_sigmas_are_float32_sampling_form() -> None:
    got = KD.to_k_diffusion("sdxl", 12)
    assert got.dtype == torch.float32 and got.shape == (13,) and got[-1] == 0
    assert torch.equal(got, S.to_sampling(S.published("sdxl", 12)).float())


def _sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,  # type: ignore[no-untyped-def]
                  s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """k-diffusion's sampling.sample_euler, line by line (trange -> range)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            eps = torch.randn_like(x) * s_noise
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = (x - denoised) / sigma_hat  # to_d
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


def _gaussian_model(x: torch.Tensor, sigma: torch.Tensor, *, c: float) -> torch.Tensor:
    """A k-diffusion wrapped model: the exact denoiser of N(0, c²I) data."""
    s2 = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return x * c**2 / (c**2 + s2)


def test_k_diffusion_sampler_fed_our_sigmas_matches_ays_sample_euler() -> None:
    import ays

    sigmas = KD.to_k_diffusion(S.kl_optimal(12, 0.002, 80.0, c=0.5))
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    extra = {"c": 0.5}
    theirs = _sample_euler(_gaussian_model, noise * sigmas[0], sigmas, extra_args=extra)
    ours = ays.sample(KD.from_k_diffusion_model(_gaussian_model, extra), noise, sigmas, solver="euler")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # Euler on Gaussian data has a closed form: x_n = x_0 · prod (c² + s_{i+1} s_i) / (c² + s_i²).
    s = sigmas.double()
    factor = torch.prod((0.25 + s[1:] * s[:-1]) / (0.25 + s[:-1] ** 2))
    torch.testing.assert_close(ours.double(), noise.double() * s[0] * factor, rtol=1e-5, atol=1e-6)
    # and our solver under k-diffusion's signature (as ComfyUI's KSAMPLER calls samplers)
    sampler = KD.k_diffusion_sampler("euler")
    steps: list[int] = []
    out = sampler(_gaussian_model, noise * sigmas[0], sigmas, extra_args=extra, callback=lambda d: steps.append(d["i"]),
                  disable=True)
    torch.testing.assert_close(out, ours, rtol=0, atol=0)
    assert steps == list(range(12)) and sampler.__name__ == "sample_euler"
    with pytest.raises(AysError, match="no option"):
        sampler(_gaussian_model, noise, sigmas, extra_args=extra, s_churn=1.0)


def test_from_k_diffusion_model_binds_extra_args() -> None:
    calls = []

    def model(x: torch.Tensor, sigma: torch.Tensor, *, cond: torch.Tensor) -> torch.Tensor:
        calls.append(cond)
        return x * cond

    d = KD.from_k_diffusion_model(model, {"cond": torch.tensor(0.5)})
    assert torch.equal(d(torch.ones(2, 3), torch.ones(2)), torch.full((2, 3), 0.5))
    assert len(calls) == 1


# ----------------------------------------------------------------------------- resolving and rendering


def test_resolve_accepts_tensors_names_files_and_results(tmp_path: Path) -> None:
    s = _karras(6)
    path = _write_schedule(tmp_path / "s.json", s, timesteps=[999, 800, 600, 400, 200, 100, 0])
    assert torch.equal(R.resolve_schedule(s), s)
    assert torch.equal(R.resolve_schedule(s.tolist()), s)
    assert torch.equal(R.resolve_schedule(str(path)), s)
    assert torch.equal(R.resolve_schedule(path), s)
    assert torch.equal(R.resolve_schedule("sd15", 14), S.published("sd15", 14))
    assert torch.equal(R.resolve_schedule(types.SimpleNamespace(sigmas=s)), s)
    assert torch.equal(R.resolve_schedule(s, 9), S.interpolate(s, 9))
    # file timesteps are used for a timesteps export at their own step count
    assert DX.to_diffusers(path, kind="timesteps")["timesteps"] == [999, 800, 600, 400, 200, 100]


def test_resolve_errors_name_the_fault(tmp_path: Path) -> None:
    with pytest.raises(AysError, match="unknown schedule 'sd3'"):
        R.resolve_schedule("sd3")
    with pytest.raises(AysError, match="does not exist"):
        R.resolve_schedule(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(AysError, match="not valid JSON"):
        R.resolve_schedule(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"format": "ays-schedule/1", "sigmas": [1.0, 2.0]}))
    with pytest.raises(AysError, match="decreasing"):
        R.resolve_schedule(tmp_path / "y.json")
    with pytest.raises(ScheduleError, match="ends in 0"):
        R.resolve_schedule(S.to_sampling(_karras(5)), 7)
    with pytest.raises(ScheduleError, match="sigma_min > 0"):
        A1.to_a1111(S.to_sampling(_karras(5)), 5)


@pytest.mark.parametrize("fmt", ["diffusers", "comfyui", "a1111", "kdiffusion"])
def test_render_is_json_of_each_export(fmt: str) -> None:
    value = json.loads(FMT.render("sd15", fmt))
    values = value["sigmas"] if fmt == "diffusers" else value
    assert len(values) == 11 and values[-1] == 0 and values[0] == pytest.approx(14.615, rel=1e-6)
    assert all(math.isfinite(v) for v in values)

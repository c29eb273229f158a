"""diffusers adapter: small diffusers models built from configs (random weights, no
download); ays.optimize gives a valid schedule for each, and diffusers' own
scheduler loops and pipelines, fed the exported schedule, land where ays.sample
does with the same schedule and noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ays
from ays import schedules as S
from ays.integrations.diffusers import export as DX
from ays.noise import DiscreteVP, Flow
from ays.validate import AysError, check_sigmas

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
AD = pytest.importorskip("ays.integrations.diffusers")
import tiny_pipelines as T  # noqa: E402  (needs diffusers)

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
RTOL = 1e-4
GUIDANCE = 3.0
FAST = {"samples": 8, "max_sweeps": 1, "candidates": 3, "patience": 1, "seed": 0}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    # These models are tiny: thread start-up and spin-waiting cost more than the arithmetic,
    # many times more on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=4,
    ).eval()


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
        pos_embed_max_size=8,
    ).eval()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The tiny SD 1.5 pipeline of tests/tiny_pipelines.py (a CLIP tokenizer over a local letter vocabulary)."""
    return T.make("sd15", tmp_path_factory.mktemp("sd15"))


def _noise(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _data() -> torch.Tensor:
    return 0.8 * torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(2))


def _embeds(p: int, seed: int) -> torch.Tensor:
    return torch.randn(p, 5, 16, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- noise schedules


def test_noise_and_prediction_from_schedulers() -> None:
    euler = diffusers.EulerDiscreteScheduler(**SD, prediction_type="v_prediction")
    vp = AD.noise_from_scheduler(euler)
    assert isinstance(vp, DiscreteVP)
    torch.testing.assert_close(vp.sigmas, ((1 - euler.alphas_cumprod.double()) / euler.alphas_cumprod.double()) ** 0.5)
    assert AD.prediction_from_scheduler(euler) == "v"
    flow = AD.noise_from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert isinstance(flow, Flow) and flow.shift == 3.0 and flow.sigma_max == pytest.approx(999.0)
    assert AD.prediction_from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler()) == "flow"
    edm = AD.noise_from_scheduler(diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0))
    assert (edm.sigma_min, edm.sigma_max) == (0.002, 80.0)
    with pytest.raises(AysError, match="noise schedule"):
        AD.noise_from_scheduler(object())


# ----------------------------------------------------------------------------- UNet, epsilon and v


def _euler_loop(model: torch.nn.Module, scheduler, kwargs: dict, latents: torch.Tensor,  # type: ignore[no-untyped-def]
                cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """diffusers' denoising loop as StableDiffusionPipeline runs it (CFG on the network output)."""
    scheduler.set_timesteps(**kwargs)
    batch = latents.shape[0]
    c = cond[torch.arange(batch) % cond.shape[0]]
    u = uncond.expand(batch, -1, -1)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        out_u, out_c = model(inp, t, encoder_hidden_states=torch.cat([u, c])).sample.chunk(2)
        latents = scheduler.step(out_u + GUIDANCE * (out_c - out_u), t, latents).prev_sample
    return latents


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_unet_schedule_runs_the_same_in_diffusers_loops_and_ays_sample(unet: torch.nn.Module, prediction: str) -> None:
    euler = diffusers.EulerDiscreteScheduler(**SD, prediction_type=prediction, timestep_spacing="trailing")
    cond, uncond = _embeds(2, 3), _embeds(1, 4)
    denoiser = AD.denoiser_from_parts(unet, euler, cond={"encoder_hidden_states": cond},
                                      uncond={"encoder_hidden_states": uncond}, guidance_scale=GUIDANCE)
    noise_schedule = AD.noise_from_scheduler(euler)
    with torch.no_grad():
        res = ays.optimize(denoiser, _data(), steps=4, noise=noise_schedule, **FAST, method="coordinate")
        # A valid schedule on the model's own levels, over its whole range.
        s = check_sigmas(res.sigmas, steps=4, allow_final_zero=False)
        assert res.timesteps is not None and res.timesteps[0] == 999 and res.timesteps[-1] == 0
        torch.testing.assert_close(s, noise_schedule.sigmas[res.timesteps])

        noise = _noise()
        ours = ays.sample(denoiser, noise, S.to_sampling(s), solver="euler")
        # EulerDiscrete with custom sigmas, started as its pipelines start: noise · init_noise_sigma,
        # which with "trailing" spacing is sigma_max (ays' start); "leading" would give sqrt(sigma_max² + 1).
        theirs = _euler_loop(unet, euler, DX.to_diffusers(res, euler), noise * float(s[0]), cond, uncond)
        assert float(euler.init_noise_sigma) == pytest.approx(float(s[0]), rel=1e-6)
        assert _rel(ours, theirs) < RTOL

        if prediction == "epsilon":
            # DPM-Solver++(2M) in VP space on the exported integer timesteps: its last step is first order,
            # as k-diffusion's and ours. It starts from VP noise, i.e. alpha(s0)·s0·noise.
            dpm = diffusers.DPMSolverMultistepScheduler(**SD)
            kwargs = DX.to_diffusers(res, dpm)
            assert kwargs == {"timesteps": res.timesteps[:-1].tolist()}
            start = noise * float(s[0]) / float((1 + s[0] ** 2) ** 0.5)
            theirs = _euler_loop(unet, dpm, kwargs, start, cond, uncond)
            ours = ays.sample(denoiser, noise, S.to_sampling(s), solver="dpmpp_2m")
            assert _rel(ours, theirs) < RTOL


# ----------------------------------------------------------------------------- flow matching transformer


def test_flow_transformer_schedule_runs_the_same_in_diffusers_loop_and_ays_sample(
        transformer: torch.nn.Module) -> None:
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    noise_schedule = AD.noise_from_scheduler(sched)
    cond = {"encoder_hidden_states": _embeds(2, 5), "pooled_projections": torch.randn(2, 8)}
    denoiser = AD.denoiser_from_parts(transformer, sched, cond=cond)
    with torch.no_grad():
        res = ays.optimize(denoiser, _data(), steps=4, noise=noise_schedule, sigma_min=0.01, sigma_max=100.0, **FAST,
                           method="coordinate")
        s = check_sigmas(res.sigmas, steps=4, allow_final_zero=False)
        assert (s[0].item(), s[-1].item()) == (100.0, 0.01)

        noise = _noise()
        ours = ays.sample(denoiser, noise, S.to_sampling(s), solver="euler")
        kwargs = DX.to_diffusers(res, sched)  # undoes the scheduler's shift
        sched.set_timesteps(**kwargs)
        t0 = float(s[0] / (1 + s[0]))
        latents = noise * t0  # the flow state at t0: (1 - t0)·0 + t0·noise, ays' start x = s0·noise scaled by 1/(1+s0)
        rows = torch.arange(3) % 2
        for t in sched.timesteps:
            v = transformer(hidden_states=latents, timestep=t.expand(3), encoder_hidden_states=cond[
                "encoder_hidden_states"][rows], pooled_projections=cond["pooled_projections"][rows]).sample
            latents = sched.step(v, t, latents).prev_sample
    assert _rel(ours, latents) < RTOL


# ----------------------------------------------------------------------------- full pipelines


def test_stable_diffusion_pipeline_with_a_custom_schedule_matches_ays_sample(pipe) -> None:  # type: ignore[no-untyped-def]
    prompts = ["a cat", "a dog"]
    schedule = S.published("sd15", 5)
    noise = _noise(2, seed=7)
    with torch.no_grad():
        denoiser = AD.denoiser_from_pipeline(pipe, prompts, guidance_scale=GUIDANCE)
        ours = ays.sample(denoiser, noise, S.to_sampling(schedule), solver="euler")
        # trailing spacing: the pipeline's init_noise_sigma is sigma_max, as ays starts
        out = DX.run_diffusers_pipeline(pipe, schedule, prompt=prompts, guidance_scale=GUIDANCE, latents=noise,
                                       output_type="latent")
        assert _rel(ours, out.images) < RTOL
        # the same with DPM-Solver++(2M) swapped in: the pipeline now takes timesteps
        original = pipe.scheduler
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(original.config)
        # It runs the table's levels at the exported timesteps, and starts from VP-space noise
        # (init_noise_sigma = 1): alpha(s0)·s0·noise is ays' start noise·s0 in its space.
        table = AD.noise_from_scheduler(original).sigmas
        ts = DX.to_diffusers("sd15", steps=5, kind="timesteps")["timesteps"]
        on_table = torch.cat([table[ts], torch.zeros(1, dtype=torch.float64)])
        s0 = float(on_table[0])
        try:
            out = DX.run_diffusers_pipeline(pipe, "sd15", steps=5, prompt=prompts, guidance_scale=GUIDANCE,
                                           latents=noise * s0 / (1 + s0**2) ** 0.5, output_type="latent")
        finally:
            pipe.scheduler = original
        ours = ays.sample(denoiser, noise, on_table, solver="dpmpp_2m")
        assert _rel(ours, out.images) < RTOL
    assert pipe.scheduler is original


def test_prompt_embeds_path_equals_the_prompt_path(pipe) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(["a cat"], "cpu", 1, True, negative_prompt=[""])
        by_prompt = AD.denoiser_from_pipeline(pipe, ["a cat"], guidance_scale=2.0)
        by_embeds = AD.denoiser_from_pipeline(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative,
                                              guidance_scale=2.0)
        x, sigma = _noise(2) * 3.0, torch.tensor([3.0, 0.5])
        torch.testing.assert_close(by_embeds(x, sigma), by_prompt(x, sigma))
    with pytest.raises(AysError, match="uncond"):
        AD.denoiser_from_pipeline(pipe, prompt_embeds=embeds, guidance_scale=2.0)
    with pytest.raises(AysError, match="list of strings"):
        AD.encode_prompts(pipe, "a cat")


# ----------------------------------------------------------------------------- data and the CLI hook


def test_latents_from_images_are_the_scaled_posterior_mean(pipe) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    pixels = torch.randint(0, 256, (2, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        want = pipe.vae.encode(images).latent_dist.mode() * pipe.vae.config.scaling_factor
    got = AD.latents_from_images(pipe.vae, images)
    torch.testing.assert_close(got, want)
    pil = [Image.fromarray(p.numpy()) for p in pixels]
    torch.testing.assert_close(AD.latents_from_images(pipe.vae, pil, batch_size=1), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(AysError, match=r"\[-1, 1\]"):
        AD.latents_from_images(pipe.vae, images * 255)


def test_load_diffusers_job_from_a_local_folder(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    latents = _data()[:4]
    torch.save(latents, tmp_path / "latents.pt")
    # one prompt captions every latent row
    job = AD.load_diffusers_job(folder, prompts=["a cat"], guidance_scale=2.0, latents=tmp_path / "latents.pt")
    assert torch.equal(job.data.x, latents) and isinstance(job.noise, DiscreteVP)
    with torch.no_grad():
        reference = AD.denoiser_from_pipeline(pipe, ["a cat"], guidance_scale=2.0)
        x, sigma = _noise(2) * 2.0, torch.tensor([2.0, 0.3])
        rows = {k: v[:2] for k, v in job.data.cond.items()}
        torch.testing.assert_close(job.denoiser(x, sigma, **rows), reference(x, sigma))
    with pytest.raises(AysError, match="not a local folder"):
        AD.load_diffusers_job(tmp_path / "nope", prompts=["a"], latents=tmp_path / "latents.pt")
    with pytest.raises(AysError, match=r"model_index\.json"):
        AD.load_diffusers_job(tmp_path, prompts=["a"], latents=tmp_path / "latents.pt")
    with pytest.raises(AysError, match="do not exist"):
        AD.load_diffusers_job(folder, prompts=["a"], latents=tmp_path / "missing.pt")
    with pytest.raises(AysError, match="needs data"):
        AD.load_diffusers_job(folder)


def test_ays_optimize_command_runs_a_local_diffusers_folder(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ays.cli import main
    from ays.optimize import load_schedule

    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    torch.save(_data()[:4], tmp_path / "latents.pt")
    out = tmp_path / "sched.json"
    with pytest.raises(SystemExit) as exit_:
        main(["optimize", "--diffusers", str(folder), "--prompt", "a cat", "--guidance-scale", "2",
              "--latents", str(tmp_path / "latents.pt"), "--steps", "3", "--samples", "16",
              "--method", "coordinate", "-O", "max_sweeps=1", "--out", str(out), "-q"])
    assert exit_.value.code in (0, None)
    res = load_schedule(out)
    # A discrete-time model: the schedule lies on its own timesteps, within its noise range.
    noise = AD.noise_from_scheduler(pipe.scheduler)
    assert res.timesteps is not None and res.sigmas.shape == (4,)
    assert torch.allclose(res.sigmas, noise.sigmas[res.timesteps].double(), rtol=1e-6)

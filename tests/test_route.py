"""The route: any diffusers pipeline driven through its own ``__call__`` (ays.integrations.diffusers.route).

On tiny random pipelines saved as users have them (tests/tiny_pipelines.py):

- on the five families with their own adapter, the route's ``D(x, σ)`` — rows at different
  noise levels and prompts in one call — equals the adapter's (a peer implementation);
- on SVD (image to video, continuous EDM σ), Wan 2.1 (text to video, flow matching with
  shift, a pipeline that takes no ``sigmas=``) and PixArt-Σ (DiT with learned variance, DPM-Solver),
  the pipeline's own loop with the exported schedule lands where ``ays.sample`` lands through the
  route from the same noise;
- rows served in groups (several suspended calls of one pipeline) give what each row alone gives;
- ``ays optimize --diffusers``, ``ays schedule --for`` and ``ays sample --diffusers`` run end to
  end on each, and a pipeline the route cannot drive gets one line naming what it lacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ays
from ays import schedules as S

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
import tiny_pipelines as T  # noqa: E402  (needs diffusers)
from ays.integrations.diffusers import PURE_NOISE_SIGMA, family_of, load_pipeline, plain_scheduler, to_diffusers  # noqa: E402
from ays.integrations.diffusers.export import run_diffusers_pipeline  # noqa: E402
from ays.integrations.diffusers.flux import pack, unpack  # noqa: E402
from ays.integrations.diffusers.route import PipelineRoute, driving_problem  # noqa: E402

RTOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("routed")
    torch.set_num_threads(1)
    return {name: T.build(name, root) for name in ("sd15", "sd2v", "sdxl", "sd3", "flux", *T.ROUTED)}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("conditioning")
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        Image.fromarray(torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()).save(
            root / f"im{i}.png")
    return root


def _call(name: str) -> dict:
    res = T.ROUTED_RESOLUTION.get(name, T.RESOLUTION)
    out = {"height": res, "width": res}
    if name in T.FRAMES:
        out["num_frames"] = T.FRAMES[name]
    if name == "pixart_sigma":
        out["use_resolution_binning"] = False
    if name != "svd":
        out["guidance_scale"] = 2.0
    return out


def _conditions(name: str, images: Path) -> list[dict]:
    if name == "svd":
        from PIL import Image

        return [{"image": Image.open(p).convert("RGB")} for p in sorted(images.glob("*.png"))]
    return [{"prompt": "a cat"}, {"prompt": "a dog"}]


# ----------------------------------------------------------------------------- a peer: the families' adapters


@pytest.mark.parametrize("name", ["sd15", "sd2v", "sdxl", "sd3", "flux"])
def test_route_equals_the_family_adapter_row_by_row(folders: dict[str, Path], name: str) -> None:
    """Rows at different σ and prompts in one call: the route groups them, the adapter batches them."""
    pipe = load_pipeline(folders[name])
    fam = family_of(pipe)
    res = (T.RESOLUTION, T.RESOLUTION)
    prompts = ["a cat", "a dog"]
    route = PipelineRoute(pipe, [{"prompt": p} for p in prompts], {"guidance_scale": 2.0, "height": 16, "width": 16})
    cond, _ = fam.encode(prompts, None, res)
    x = torch.randn(4, *fam.latent_shape(res), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([5.0, 0.5, 2.0, 0.5])
    index = torch.tensor([0, 1, 1, 0])
    noisy = x * sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        want = fam.denoiser(guidance_scale=2.0, resolution=res)(noisy, sigma, **{k: v[index] for k, v in cond.items()})
        if name == "flux":  # the route works in the pipeline's loop space: Flux's packed tokens
            got = unpack(route.denoiser()(pack(noisy), sigma, condition=index), 8, 8)
        else:
            got = route.denoiser()(noisy, sigma, condition=index)
        assert route.row_times  # the first mixed batch checked per-row timesteps against levels served apart
        again = route.denoiser()(pack(noisy) if name == "flux" else noisy, sigma, condition=index)  # one step now
    route.close()
    assert T.rel(got, want) < RTOL
    assert T.rel(unpack(again, 8, 8) if name == "flux" else again, want) < RTOL


# ----------------------------------------------------------------------------- the pipeline's own loop


def _euler_scheduler(name: str, pipe: object) -> object:
    """A scheduler that steps as ays' ``euler`` does, of the pipeline's own noise and parametrisation."""
    if name == "wan":  # UniPC as released; its Euler peer on the same flow shift
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    if name == "pixart_sigma":
        return diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe.scheduler  # SVD ships Euler


@pytest.mark.parametrize("name", T.ROUTED)
def test_pipeline_with_the_exported_schedule_equals_ays_sample(folders: dict[str, Path], images: Path,
                                                                name: str) -> None:
    pipe = load_pipeline(folders[name])
    pipe.scheduler = _euler_scheduler(name, pipe)
    conditions = _conditions(name, images)[:1]
    route = PipelineRoute(pipe, conditions, _call(name))
    base = route.default_schedule(4)[0]
    if base is None:  # SVD: the pipeline ends at its sigma_min; ays' start there is EDM rho = 7
        base = S.karras(4, route.noise.sigma_min, route.noise.sigma_max)
    s = base.clone()
    s[1:-1] *= torch.tensor([1.2, 0.8, 1.2])  # no pipeline's default
    flow = route.prediction == "flow"
    if flow:
        assert s[0] == PURE_NOISE_SIGMA
    with torch.no_grad():
        probe = route.sample(0, 2)  # the loop's latent shape (LTX's stretch to shift_terminal needs 2 steps)
        noise = torch.randn(probe.shape, generator=torch.Generator().manual_seed(1))
        ours = ays.sample(route.denoiser(), noise, S.to_sampling(s), solver="euler")
        kwargs = to_diffusers(s, plain_scheduler(pipe.scheduler))
        trial = plain_scheduler(pipe.scheduler)
        trial.set_timesteps(**kwargs)
        # the pipeline scales the given latents by init_noise_sigma (flow: 1, the noise itself at t = 1)
        start = noise if flow else noise * float(s[0]) / float(trial.init_noise_sigma)
        theirs = run_diffusers_pipeline(pipe, s, latents=start, output_type="latent",
                                        generator=torch.Generator().manual_seed(route.seed),
                                        **conditions[0], **_call(name))[0]
    route.close()
    assert theirs.shape == ours.shape
    assert T.rel(ours, theirs.float()) < RTOL


def test_rows_served_in_groups_equal_each_row_alone(folders: dict[str, Path], images: Path) -> None:
    """Three rows of two conditions and two levels: suspended calls of 2 and 1 rows share one pipeline."""
    pipe = load_pipeline(folders["svd"])
    route = PipelineRoute(pipe, _conditions("svd", images), _call("svd"))
    d = route.denoiser()
    x = torch.randn(3, T.FRAMES["svd"], 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    sigma, index = torch.tensor([3.0, 3.0, 0.7]), torch.tensor([0, 0, 1])
    with torch.no_grad():
        together = d(x, sigma, condition=index)
        alone = torch.cat([d(x[i:i + 1], sigma[i:i + 1], condition=index[i:i + 1]) for i in range(3)])
    route.close()
    assert T.rel(together, alone) < 1e-5  # float32 round-off of batched convolutions only


def test_a_pipeline_that_cannot_be_driven_says_what_it_lacks() -> None:
    pipe = diffusers.DDPMPipeline(unet=diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2), scheduler=diffusers.DDPMScheduler())
    assert "takes no latents=" in driving_problem(pipe)
    pipe.scheduler = None
    assert "no scheduler to step" in driving_problem(pipe)


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("name", T.ROUTED)
def test_optimize_schedule_and_sample_commands(folders: dict[str, Path], images: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], name: str) -> None:
    res = str(T.ROUTED_RESOLUTION[name])
    data = ["--images", str(images)] if name == "svd" else ["--prompt", "a cat", "--prompt", "a dog"]
    video = ["--frames", str(T.FRAMES[name])] if name in T.FRAMES else []
    out = tmp_path / "s.json"
    code, _, err = T.run_cli(["optimize", "--diffusers", str(folders[name]), *data, "--resolution", res, *video,
                         "--steps", "3", "--samples", "8", "--method", "coordinate", "-O", "max_sweeps=1",
                         "-O", "candidates=3", "--out", str(out), "-q"], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    info = doc["model_info"]
    assert info["family"] == "route" and info["data"]["rows"] == 2
    assert info["frames"] == T.FRAMES.get(name)
    code, printed, err = T.run_cli(["schedule", str(out), "--for", str(folders[name])], capsys)
    assert code == 0 and "checked" in err, err
    if name == "wan":  # ComfyUI SIGMAS: the flow times the model is evaluated at, in [0, 1], ending at 0
        code, printed, err = T.run_cli(["schedule", str(out), "--format", "comfyui"], capsys)
        t = json.loads(printed)
        s = torch.tensor(doc["sigmas"][:-1], dtype=torch.float64)
        assert t[-1] == 0.0 and t[:-1] == pytest.approx((s / (1 + s)).tolist(), rel=1e-6)
    grid = tmp_path / "grid.png"
    code, _, err = T.run_cli(["sample", "--diffusers", str(folders[name]), "--schedule", str(out), *data,
                         "--plot", str(grid)], capsys)
    assert code == 0 and grid.is_file(), err


def test_the_default_method_runs_on_video_latents_with_their_prompts(folders: dict[str, Path]) -> None:
    """Wan's [C, F, h, w] latents, two prompts: table, teacher, candidates, refinement and gate within the budget."""
    from ays.integrations.diffusers import load_diffusers_job

    job = load_diffusers_job(folders["wan"], prompts=["a cat", "a dog"], resolution=str(T.ROUTED_RESOLUTION["wan"]),
                             frames=T.FRAMES["wan"], guidance_scale=2.0, sample_steps=8)
    assert job.data.x.shape == (2, 4, 2, 4, 4) and job.data.cond["condition"].tolist() == [0, 1]
    init = job.init(3)
    res = ays.optimize(job.denoiser, job.data, steps=3, sigma_min=float(init[-1]), sigma_max=float(init[0]),
                       init=init, budget=6000, seed=0)
    s = res.sigmas
    assert 0 < res.calls <= 6000 and s.numel() == 4 and bool((s[1:] < s[:-1]).all())
    assert float(s[0]) == pytest.approx(float(init[0])) and float(s[-1]) == pytest.approx(float(init[-1]))
    job.route.close()


def test_out_of_memory_in_the_pipeline_backs_off_to_fewer_rows(folders: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA out-of-memory error inside the suspended call reaches ays' back-off, which halves the rows."""
    from ays.device import ModelCall

    pipe = load_pipeline(folders["pixart_sigma"])
    route = PipelineRoute(pipe, _conditions("pixart_sigma", Path()), _call("pixart_sigma"))
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    sigma, index = torch.full((4,), 2.0), torch.tensor([0, 0, 0, 0])
    with torch.no_grad():
        want = route.denoiser()(x, sigma, condition=index)
        forward = pipe.transformer.forward

        def small(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:
            if hidden_states.shape[0] > 2:  # guidance doubles the rows: more than one row runs out
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
            return forward(hidden_states, *args, **kwargs)

        monkeypatch.setattr(pipe.transformer, "forward", small)
        call = ModelCall(route.denoiser())
        got = call(x, sigma, condition=index)
    route.close()
    assert call.max_rows == 1
    assert T.rel(got, want) < 1e-5


def test_a_pipeline_that_never_steps_its_scheduler_is_named() -> None:
    class NoLoop:
        """Takes prompts and latents, returns them: no scheduler.step in its __call__."""

        def __init__(self) -> None:
            self.scheduler = diffusers.DDPMScheduler()

        def __call__(self, prompt: str = "", latents: torch.Tensor | None = None, output_type: str = "pil",
                     num_inference_steps: int = 50) -> tuple:
            return (latents,)

    route = PipelineRoute(NoLoop(), [{"prompt": "a cat"}])
    with pytest.raises(ays.validate.AysError, match="NoLoop returned without stepping its scheduler"):
        route.denoiser()(torch.randn(1, 4, 8, 8), torch.tensor([1.0]))


@pytest.mark.parametrize(("name", "args", "says"), [
    ("pixart_sigma", ["--prompt", "a cat", "--prompt", "a dog", "--frames", "5"], "makes no video"),
    ("svd", ["--images", "IMAGES", "--guidance-scale", "2"], "takes no guidance_scale"),
    ("svd", ["--prompt", "a cat", "--prompt", "a dog"], "conditioned on images"),
    ("wan", ["--images", "IMAGES"], "takes no image="),
])
def test_bad_input_to_a_routed_pipeline_is_exit_2_and_one_line(folders: dict[str, Path], images: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str], name: str,
                                                               args: list[str], says: str) -> None:
    code, _, err = T.run_cli(["optimize", "--diffusers", str(folders[name]), *[str(images) if a == "IMAGES" else a
                                                                         for a in args],
                         "--steps", "3", "--out", str(tmp_path / "s.json"), "-q"], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_row_times_tile_over_the_guidance_branches() -> None:
    """``t.expand(k·m)`` of m rows' levels is the m levels k times ([uncond; cond]); one number cannot be read."""
    from ays.integrations.diffusers.probe import RowTimes

    t = torch.tensor([3.0, 7.0]).as_subclass(RowTimes)
    assert t.expand(4).tolist() == [3.0, 7.0, 3.0, 7.0] and t.expand(2).tolist() == [3.0, 7.0]
    assert isinstance(t.to(torch.float64), RowTimes) and (t / 1000).tolist() == pytest.approx([0.003, 0.007])
    with pytest.raises(RuntimeError):
        t.expand(3)
    with pytest.raises((RuntimeError, ValueError)):
        float(t)

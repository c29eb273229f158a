"""Model families end to end, on tiny random pipelines saved as users have them (tests/tiny_pipelines.py).

For each family (SD 1.5, SD 2 v-prediction, SDXL, SD3 with and without T5, Flux with and
without the guidance embedding):

- the pipeline's own ``__call__``, fed the exported schedule through its own (shifting)
  scheduler, lands where ``ays.sample`` lands from the same noise with each row's caption;
- a flow model's export is in flow time [0, 1] and starts at the pure-noise level t = 1;
- the data loaders give every row its own caption's conditioning (a shuffled folder keeps
  each image with its caption), cache the model's own samples, and refuse bad input with
  exit code 2 and one line;
- ``ays optimize --diffusers`` runs from a captioned image folder and from a prompt file,
  and the schedule file carries the model's family, noise, shift, resolution and guidance
  into ``ays schedule --format`` and ``--for``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import ays
from ays import schedules as S
from ays.validate import AysError

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
import tiny_pipelines as T  # noqa: E402  (needs diffusers)
from ays.integrations.diffusers import (  # noqa: E402
    PURE_NOISE_SIGMA,
    family_of,
    load_pipeline,
    to_diffusers,
)
from ays.integrations.diffusers import data as DD  # noqa: E402
from ays.integrations.diffusers.flux import pack  # noqa: E402

RES = (T.RESOLUTION, T.RESOLUTION)
RTOL = 1e-4
FAMILY = {"sd15": "sd", "sd2v": "sd", "sdxl": "sdxl", "sd3": "sd3", "sd3_no_t5": "sd3", "flux": "flux",
          "flux_schnell": "flux"}
CAPTIONS = ["a cat", "a dog", "sky", "a cow"]


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    torch.set_num_threads(1)
    return {name: T.build(name, root) for name in T.FAMILIES}


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four images of different sizes, each with a ``NAME.txt`` caption."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for i, caption in enumerate(CAPTIONS):
        pixels = torch.randint(0, 256, (18 + 2 * i, 24 - i, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / f"im{i}.png")
        (root / f"im{i}.txt").write_text(caption + "\n")
    return root


def _perturbed(s: torch.Tensor) -> torch.Tensor:
    """A schedule that is no pipeline's default: interior levels moved by ±20 % in log sigma."""
    s = s.clone()
    for i in range(1, s.numel() - 1):
        s[i] = s[i] * (1.2 if i % 2 else 0.8)
    return s


# ----------------------------------------------------------------------------- the pipeline's own loop


@pytest.mark.parametrize("name", T.FAMILIES)
def test_pipeline_with_the_exported_schedule_equals_ays_sample(folders: dict[str, Path], name: str) -> None:
    pipe = load_pipeline(folders[name])
    family = family_of(pipe)
    assert family.name == FAMILY[name]
    prompts, scale = ["a cat", "a dog"], 2.0
    noise_schedule = family.noise(RES)
    default = family.default_schedule(4, RES)
    base = default if default is not None else S.time_uniform(4, noise_schedule.sigma_min, noise_schedule.sigma_max,
                                                               noise=noise_schedule)
    s = _perturbed(base)
    flow = family.prediction() == "flow"
    mu = family.mu(RES) if flow else None
    kwargs = to_diffusers(s, pipe.scheduler, mu=mu)  # the pipeline's own scheduler: its shift undone
    if flow:
        t = torch.tensor(kwargs["sigmas"])
        assert t[0] == 1.0 and s[0] == PURE_NOISE_SIGMA  # pure noise, t = 1
        assert bool(((t >= 0) & (t <= 1)).all()) and bool((t[1:] < t[:-1]).all())
    noise = torch.randn(2, *family.latent_shape(RES), generator=torch.Generator().manual_seed(1))
    denoiser = family.denoiser(guidance_scale=scale, resolution=RES)
    cond, _ = family.encode(prompts, None, RES)
    with torch.no_grad():
        ours = ays.sample(denoiser, noise, S.to_sampling(s), solver="euler", cond=cond)
        # flow pipelines start from the noise itself (t = 1); trailing-spacing Euler from noise * sigma_max
        latents = pack(noise) if name.startswith("flux") else noise
        out = pipe(prompt=prompts, guidance_scale=scale, height=RES[0], width=RES[1], latents=latents,
                   output_type="latent", **kwargs).images
    theirs = family.latents_from_output(out, RES)
    assert T.rel(ours, theirs) < RTOL


def test_flux_guidance_embedding_and_no_cfg(folders: dict[str, Path]) -> None:
    """FLUX.1-dev-like: the scale is an input of the one network call; schnell-like: the scale changes nothing."""
    dev, schnell = (family_of(load_pipeline(folders[n])) for n in ("flux", "flux_schnell"))
    x, sigma = torch.randn(2, *dev.latent_shape(RES), generator=torch.Generator().manual_seed(0)) * 3, torch.tensor(
        [3.0, 0.5])
    for fam, differs in ((dev, True), (schnell, False)):
        cond, uncond = fam.encode(["a cat", "a dog"], None, RES)
        assert uncond == {} and not fam.uses_cfg(5.0)
        with torch.no_grad():
            a = fam.denoiser(guidance_scale=1.5, resolution=RES)(x, sigma, **cond)
            b = fam.denoiser(guidance_scale=5.0, resolution=RES)(x, sigma, **cond)
        assert (not torch.equal(a, b)) == differs


def test_flux_shift_follows_the_image_size(folders: dict[str, Path]) -> None:
    fam = family_of(load_pipeline(folders["flux"]))
    cfg = fam.scheduler.config
    small, large = fam.mu((16, 16)), fam.mu((32, 32))
    # mu is linear in the token count: 16 tokens at 16 px, 64 at 32 px (= max_image_seq_len -> max_shift)
    slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
    assert small == pytest.approx(cfg.base_shift + slope * (16 - cfg.base_image_seq_len))
    assert large == pytest.approx(cfg.max_shift)
    assert fam.info((16, 16), 3.5, None)["shift"]["kind"] == "dynamic"


# ----------------------------------------------------------------------------- data


def test_image_folder_rows_keep_their_own_captions(folders: dict[str, Path], images: Path, tmp_path: Path) -> None:
    fam = family_of(load_pipeline(folders["sdxl"]))
    data = DD.from_images(fam, images, RES)
    assert data.x.shape == (4, 4, 8, 8)
    want, _ = fam.encode(CAPTIONS, None, RES)
    for key in want:
        torch.testing.assert_close(data.cond[key], want[key].float())
    # metadata.jsonl in another order: the same (image, caption) pairs, row by row
    meta = tmp_path / "meta"
    meta.mkdir()
    order = [2, 0, 3, 1]
    for i in order:
        (meta / f"im{i}.png").write_bytes((images / f"im{i}.png").read_bytes())
    (meta / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"im{i}.png", "text": CAPTIONS[i]}) + "\n"
                                                 for i in order))
    other = DD.from_images(fam, meta, RES)
    torch.testing.assert_close(other.x, data.x[order])
    for key in want:
        torch.testing.assert_close(other.cond[key], data.cond[key][order])


def test_images_are_resized_to_cover_and_centre_cropped(images: Path) -> None:
    import numpy as np
    from PIL import Image

    im = DD.load_image(images / "im3.png", (16, 8))  # 24 x 21 (h x w): scaled by 16/24 to 16 x 14, cropped to 8 wide
    assert im.shape == (3, 16, 8) and im.min() >= -1 and im.max() <= 1
    src = Image.open(images / "im3.png").convert("RGB")
    scale = max(16 / src.height, 8 / src.width)
    resized = src.resize((max(8, round(src.width * scale)), max(16, round(src.height * scale))),
                         Image.Resampling.BICUBIC)
    left = (resized.width - 8) // 2
    want = torch.tensor(np.asarray(resized.crop((left, 0, left + 8, 16))), dtype=torch.float32)
    torch.testing.assert_close(im.permute(1, 2, 0), want / 127.5 - 1)


def test_prompt_samples_are_the_pipelines_own_and_cached(folders: dict[str, Path]) -> None:
    fam = family_of(load_pipeline(folders["sd3_no_t5"]))
    prompts = ["a cat", "a dog"]
    first, cached = DD.model_samples(fam, folders["sd3_no_t5"], prompts, RES, steps=6, seed=3, guidance_scale=2.0)
    assert not cached
    with torch.no_grad():
        own = fam.pipe(prompt=prompts, num_inference_steps=6, guidance_scale=2.0, height=16, width=16,
                       generator=torch.Generator().manual_seed(3), output_type="latent").images
    torch.testing.assert_close(first.x, own)
    again, cached = DD.model_samples(fam, folders["sd3_no_t5"], prompts, RES, steps=6, seed=3, guidance_scale=2.0)
    assert cached and torch.equal(again.x, first.x)
    _, cached = DD.model_samples(fam, folders["sd3_no_t5"], prompts, RES, steps=6, seed=4, guidance_scale=2.0)
    assert not cached  # another seed is another sample set


def _ddpm() -> object:
    """An unconditional DDPM pipeline: a diffusers pipeline of no text-to-image family."""
    return diffusers.DDPMPipeline(unet=diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2), scheduler=diffusers.DDPMScheduler())


def test_unknown_family_names_what_is_missing(tmp_path: Path) -> None:
    pipe = _ddpm()
    with pytest.raises(AysError, match="denoiser_from_parts") as err:
        family_of(pipe)
    assert "text_encoder" in str(err.value)


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(("name", "args"), [
    ("sd15", ["--images", "IMAGES", "--captions", "CAPTIONS"]),  # --captions needs --latents
    ("sdxl", ["--images", "BARE"]),  # a folder without captions
    ("sd3", ["--latents", "LATENTS", "--captions", "CAPTIONS"]),  # 3 captions for 4 rows
    ("flux", ["--prompt", "a cat", "--prompt", "a dog", "--resolution", "18"]),  # Flux: multiples of 4 px
    ("ddpm", ["--prompt", "a cat", "--prompt", "a dog"]),  # not a text-to-image family
    ("sd15", ["--prompt", "a cat"]),  # one prompt, one sample: one data row, refused before any sampling
    ("sd15", ["--prompt", "a cat", "--samples-per-prompt", "0"]),
    ("sd15", ["--images", "BARE", "--samples-per-prompt", "2"]),  # N samples are the model's own: prompts only
    ("sd15", ["--latents", "ONE", "--prompt", "a cat"]),  # one latent row
    ("sd15", ["--images", "SINGLE"]),  # one captioned image
    ("sd15", ["--latents", "IMAGES", "--prompt", "a cat"]),  # a folder is --images (README), not --latents
])
def test_bad_input_is_exit_2_and_one_line(folders: dict[str, Path], images: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], name: str, args: list[str]) -> None:
    from PIL import Image

    bare = tmp_path / "bare"
    bare.mkdir()
    Image.new("RGB", (16, 16)).save(bare / "x.png")
    (tmp_path / "captions.txt").write_text("a\nb\nc\n")
    torch.save(torch.zeros(4, 4, 8, 8), tmp_path / "latents.pt")
    torch.save(torch.zeros(1, 4, 8, 8), tmp_path / "one.pt")
    single = tmp_path / "single"
    single.mkdir()
    Image.new("RGB", (16, 16)).save(single / "x.png")
    (single / "x.txt").write_text("a cat\n")
    if name == "ddpm":
        _ddpm().save_pretrained(tmp_path / "ddpm")
    folder = tmp_path / "ddpm" if name == "ddpm" else folders[name]
    swap = {"IMAGES": str(images), "BARE": str(bare), "CAPTIONS": str(tmp_path / "captions.txt"),
            "LATENTS": str(tmp_path / "latents.pt"), "ONE": str(tmp_path / "one.pt"), "SINGLE": str(single)}
    code, _, err = T.run_cli(["optimize", "--diffusers", str(folder), *[swap.get(a, a) for a in args], "--steps", "3",
                         "--out", str(tmp_path / "s.json"), "-q"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("ays: "), err
    assert not list(tmp_path.glob("s.json*")) and not list(tmp_path.glob(".s.json*"))  # nothing left behind


def test_one_prompt_means_its_samples_per_prompt_samples(folders: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = _optimize(folders["sd15"], ["--prompt", "a cat", "--samples-per-prompt", "3"], tmp_path / "s.json", capsys)
    assert doc["model_info"]["data"]["rows"] == 3
    assert not list(tmp_path.glob("s.json.*"))  # the checkpoint and teacher files are gone


def _optimize(folder: Path, data: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code, _, err = T.run_cli(["optimize", "--diffusers", str(folder), *data, "--resolution", "16", "--guidance-scale",
                         "2", "--steps", "3", "--samples", "8", "--method", "coordinate", "-O", "max_sweeps=1",
                         "-O", "candidates=3", "--out", str(out), "-q"], capsys)
    assert code == 0, err
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sd3", "flux"])
def test_optimize_command_from_images_and_from_prompts(folders: dict[str, Path], images: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], name: str) -> None:
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    for data in (["--images", str(images)], ["--prompts", str(tmp_path / "prompts.txt")]):
        doc = _optimize(folders[name], data, tmp_path / "s.json", capsys)
        info = doc["model_info"]
        assert info["family"] == FAMILY[name] and info["resolution"] == [16, 16]
        flow = info["noise"] == "Flow"
        assert flow == (name in ("sd3", "flux"))
        assert info["guidance_scale"] == 2.0 and info["data"]["rows"] == (4 if data[0] == "--images" else 2)
        if flow:
            assert doc["sigmas"][0] == PURE_NOISE_SIGMA  # starts at pure noise
    for fmt in ("diffusers", "comfyui"):
        code, out, err = T.run_cli(["schedule", str(tmp_path / "s.json"), "--format", fmt], capsys)
        assert code == 0, err
        values = json.loads(out)
        values = values["sigmas"] if fmt == "diffusers" else values
        if flow:  # flow times in [0, 1], from t = 1
            assert values[0] == 1.0 and all(0 <= v <= 1 for v in values)
        else:
            assert values[0] == pytest.approx(doc["sigmas"][0])
    code, out, err = T.run_cli(["schedule", str(tmp_path / "s.json"), "--for", str(folders[name])], capsys)
    assert code == 0 and "checked" in err, err
    grid = tmp_path / "grid.png"
    code, _, err = T.run_cli(["sample", "--diffusers", str(folders[name]), "--schedule", str(tmp_path / "s.json"),
                         "--prompt", "a cat", "--prompt", "a dog", "--plot", str(grid)], capsys)
    assert code == 0 and grid.is_file(), err


def test_latent_file_rows_take_the_caption_file_lines(folders: dict[str, Path], tmp_path: Path) -> None:
    fam = family_of(load_pipeline(folders["sd15"]))
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save(latents, tmp_path / "latents.pt")
    data = DD.from_latents(fam, tmp_path / "latents.pt", ["a dog", "a cat", "a dog"], None)
    want, _ = fam.encode(["a dog", "a cat"], None, RES)
    torch.testing.assert_close(data.cond["encoder_hidden_states"], want["encoder_hidden_states"][[0, 1, 0]])
    with pytest.raises(AysError, match="do not fit a 32x32"):
        DD.from_latents(fam, tmp_path / "latents.pt", ["a cat"], (32, 32))


def test_schedule_file_hands_its_model_over(folders: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A flow schedule file -> flow times from 1.0, the shift undone for the folder's own scheduler."""
    from ays.optimize.result import OptimizeResult
    from ays.optimize.task import noise_description

    pipe = load_pipeline(folders["flux"])
    fam = family_of(pipe)
    s = _perturbed(fam.default_schedule(4, RES))
    OptimizeResult(sigmas=s, steps=4, solver="euler", method="test", settings={"noise": noise_description(
        fam.noise(RES))}, model_info=fam.info(RES, 3.5, None)).save(tmp_path / "flux.json")
    code, out, err = T.run_cli(["schedule", str(tmp_path / "flux.json"), "--for", str(folders["flux"])], capsys)
    assert code == 0 and "checked" in err, err
    t = json.loads(out)["sigmas"]
    assert t[0] == 1.0 and t == to_diffusers(s, pipe.scheduler, mu=fam.mu(RES))["sigmas"]
    # the scheduler, shifting by mu, lands on the schedule's own flow times
    pipe.scheduler.set_timesteps(sigmas=t, mu=fam.mu(RES))
    sampling = S.to_sampling(s)
    torch.testing.assert_close(pipe.scheduler.sigmas.double(), sampling / (1 + sampling),
                               rtol=1e-6, atol=1e-7)
    code, out, err = T.run_cli(["schedule", str(tmp_path / "flux.json"), "--format", "comfyui"], capsys)
    assert json.loads(out)[:-1] == pytest.approx((s[:-1] / (1 + s[:-1])).tolist(), rel=1e-6)
    code, _, err = T.run_cli(["schedule", str(tmp_path / "flux.json"), "--for", str(folders["sd15"])], capsys)
    assert code == 2 and "made for a FluxPipeline" in err and len(err.strip().splitlines()) == 1


def test_a_pndm_folder_gets_the_scheduler_of_the_schedules_solver_and_says_so(
        folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SD 1.5 as shipped: PNDMScheduler takes neither sigmas nor timesteps. The schedule file knows its
    # solver (heun here), so the export, the check and the pipeline run use HeunDiscreteScheduler on the
    # folder's config, and say so; --scheduler picks another; a name that is no such scheduler is one line.
    import shutil

    from ays.optimize.result import OptimizeResult
    from ays.optimize.task import noise_description

    pndm = tmp_path / "sd15-pndm"
    shutil.copytree(folders["sd15"], pndm)
    config = json.loads((pndm / "scheduler" / "scheduler_config.json").read_text())
    diffusers.PNDMScheduler.from_config(config).save_config(pndm / "scheduler")
    index = json.loads((pndm / "model_index.json").read_text())
    (pndm / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "PNDMScheduler"]}))
    pipe = load_pipeline(pndm)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    fam = family_of(pipe)
    noise = fam.noise(RES)
    s = _perturbed(S.time_uniform(4, noise.sigma_min, noise.sigma_max, noise=noise))
    path = tmp_path / "heun.json"
    OptimizeResult(sigmas=s, steps=4, solver="heun", method="test", settings={"noise": noise_description(noise)},
                   model_info=fam.info(RES, 2.0, None)).save(path)
    code, out, err = T.run_cli(["schedule", str(path), "--format", "diffusers"], capsys)
    assert code == 0 and "PNDMScheduler takes no custom schedule: using HeunDiscreteScheduler" in err, err
    assert len(json.loads(out)["timesteps"]) == 4
    code, out, err = T.run_cli(["schedule", str(path), "--for", str(pndm)], capsys)
    assert code == 0 and "using HeunDiscreteScheduler" in err and "checked: HeunDiscreteScheduler" in err, err
    grid = tmp_path / "grid.png"
    code, _, err = T.run_cli(["sample", "--diffusers", str(pndm), "--schedule", str(path), "--prompt", "a cat",
                         "--plot", str(grid)], capsys)
    assert code == 0 and grid.is_file() and "using HeunDiscreteScheduler" in err, err
    code, out, err = T.run_cli(["schedule", str(path), "--format", "diffusers", "--scheduler",
                                "EulerDiscreteScheduler"], capsys)
    assert code == 0 and "using EulerDiscreteScheduler (--scheduler)" in err and len(json.loads(out)["sigmas"]) == 5
    for bad in ("PNDMScheduler", "NoSuchScheduler"):
        code, _, err = T.run_cli(["schedule", str(path), "--for", str(pndm), "--scheduler", bad], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_the_models_own_samples_show_a_bar(folders: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The --prompts route's many-step samples are work before the optimisation: they get a bar, step by step.
    (tmp_path / "prompts.txt").write_text("a bird at noon\na boat at dusk\n")
    prompts = str(tmp_path / "prompts.txt")
    code, _, err = T.run_cli(["optimize", "--diffusers", str(folders["sd15"]), "--prompts", prompts,
                         "--resolution", "16", "--steps", "3", "--samples", "8", "--method", "coordinate",
                         "-O", "max_sweeps=1", "-O", "candidates=3", "--out", str(tmp_path / "s.json"),
                         "--progress"], capsys)
    assert code == 0, err
    assert re.search(r"model samples: +\d+%\|.*\| \d+/50 ", err), err[-1500:]  # 50 steps, one batch of two


def test_a_second_order_pipeline_loop_equals_ays_sample(folders: dict[str, Path]) -> None:
    # Beside Euler: SD 1.5 with diffusers' HeunDiscreteScheduler (the scheduler ays picks for heun), fed the
    # exported timesteps, lands where ays.sample's heun lands from the same noise on those timesteps' levels.
    pipe = load_pipeline(folders["sd15"])
    family = family_of(pipe)
    pipe.scheduler = diffusers.HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    vp = family.noise(RES)
    s = _perturbed(S.time_uniform(4, vp.sigma_min, vp.sigma_max, noise=vp))
    kwargs = to_diffusers(s, pipe.scheduler)
    levels = vp.sigmas[torch.tensor(kwargs["timesteps"])].to(torch.float64)
    assert "timesteps" in kwargs and levels.numel() == 4
    prompts, scale = ["a cat", "a dog"], 2.0
    noise = torch.randn(2, *family.latent_shape(RES), generator=torch.Generator().manual_seed(1))
    cond, _ = family.encode(prompts, None, RES)
    with torch.no_grad():
        ours = ays.sample(family.denoiser(guidance_scale=scale, resolution=RES), noise,
                          torch.cat([levels, levels.new_zeros(1)]), solver="heun", cond=cond)
        out = pipe(prompt=prompts, guidance_scale=scale, height=RES[0], width=RES[1], latents=noise,
                   output_type="latent", **kwargs).images
    assert T.rel(ours, family.latents_from_output(out, RES)) < RTOL


@pytest.mark.slow
def test_the_default_method_runs_on_a_pipeline_within_its_budget(folders: dict[str, Path], images: Path,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # The families' other CLI tests name --method coordinate; the default (ays) must run on a pipeline too.
    out = tmp_path / "s.json"
    code, _, err = T.run_cli(["optimize", "--diffusers", str(folders["sd15"]), "--images", str(images), "--resolution",
                         "16", "--guidance-scale", "2", "--steps", "3", "--budget", "6000", "-O", "grid=24",
                         "-O", "reference_steps=8", "--out", str(out), "-q"], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["method"] == ays.optimize.DEFAULT_METHOD and 0 < doc["calls"] <= 6000
    assert doc["model_info"]["family"] == "sd" and len(doc["sigmas"]) == 4

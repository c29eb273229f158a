"""``ays optimize --diffusers DIR``: a pipeline folder and the user's data, as one job.

The job holds the family's denoiser ``D(x, σ, **cond)`` (guided as the pipeline guides),
the data with each row's own caption conditioning (:mod:`.data`), the noise
parametrisation and range of the model, the pipeline's default schedule (the
optimiser's start: for flow models it carries the scheduler's shift), and what the
schedule file records about the model (:meth:`Family.info`).

Exactly one data source: ``images`` (a captioned folder), ``latents`` with ``captions``
(or one ``prompt`` for every row), or prompts alone (the model's own samples).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...data import Conditioned
from ...denoisers.prediction import NoiseRange
from ...noise import NoiseSchedule
from ...validate import AysError
from . import data as D
from .denoiser import PipelineDenoiser
from .families import family_of
from .family import Family
from .pipeline import load_pipeline, pipeline_folder
from .route import driving_problem
from .routed import RouteJob, route_job

__all__ = ["DiffusersJob", "load_diffusers_job", "parse_resolution"]

Tensor = torch.Tensor


@dataclass
class DiffusersJob(NoiseRange):
    denoiser: PipelineDenoiser
    data: Conditioned
    noise: NoiseSchedule
    family: Family
    resolution: tuple[int, int]
    guidance_scale: float
    info: dict[str, Any] = field(default_factory=dict)

    def init(self, steps: int) -> Tensor | None:
        """The pipeline's default schedule for ``steps`` (None: ays' default start for this noise)."""
        return self.family.default_schedule(steps, self.resolution)


def parse_resolution(value: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``512``, ``"512"`` or ``"768x512"`` (height x width) -> ``(height, width)``."""
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise AysError(f"--resolution must look like 512 or 768x512 (height x width), got {value!r}") from None
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        nums *= 2
    if len(nums) != 2 or min(nums) <= 0:
        raise AysError(f"--resolution must be one or two positive sizes, got {value!r}")
    return nums[0], nums[1]


def _per_prompt(value: int | str | None) -> int:
    try:
        n = 1 if value is None else int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise AysError(f"--samples-per-prompt must be a whole number >= 1, got {value!r}")
    return n


def _two_rows(rows: int, what: str) -> None:
    if rows < 2:
        raise AysError(f"{what}: one data row has no spread to set a schedule's scale from; give more rows "
                       "(--samples-per-prompt N: N samples of each prompt, or more prompts, images or latents)")


def _image_rows(folder: str | os.PathLike[str]) -> int:
    """The images of a data folder: its captioned ones, or every image (image-conditioned pipelines need no caption)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise AysError(f"--images {str(folder)!r} is not a folder")
    if (root / "metadata.jsonl").is_file():
        return len(D.captioned_files(root))
    return sum(p.suffix.lower() in D.IMAGE_SUFFIXES for p in root.iterdir())


def load_diffusers_job(
    path: str | os.PathLike[str],
    *,
    prompts: Sequence[str] = (),
    prompts_file: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    latents: str | os.PathLike[str] | None = None,
    captions: str | os.PathLike[str] | None = None,
    resolution: str | int | Sequence[int] | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    samples_per_prompt: int | str | None = None,
    sample_steps: int = 50,
    seed: int = 0,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | str | None = None,
    progress: Any = None,
    frames: int | str | None = None,
    route: bool = False,
) -> DiffusersJob | RouteJob:
    """The denoiser, conditioned data and noise of a local pipeline folder, for :func:`ays.optimize`.

    ``device`` and ``torch_dtype`` (e.g. ``"bfloat16"``) are where and how the pipeline is loaded:
    its text encoders and VAE prepare the data there too. ``progress(done, total)``: the model's own
    samples, step by step (:func:`~ays.integrations.diffusers.data.model_samples`). Prompts
    (``prompts``, ``prompts_file``) without latents make the data from the model's own samples,
    ``samples_per_prompt`` of each (default 1). The data needs at least two rows (one row has no
    spread to set a schedule's scale from); that is checked before the pipeline is loaded or any
    sample made. A pipeline of no family ays knows (video, the newer image families), or any
    pipeline with ``route=True``, runs through its own ``__call__`` (:mod:`.routed`); ``frames`` is
    a video pipeline's ``num_frames``.
    """
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    pipeline_folder(path)  # a missing or foreign folder is the first thing to say
    all_prompts = list(prompts) + (D.read_lines(prompts_file, "prompts") if prompts_file is not None else [])
    per_prompt = _per_prompt(samples_per_prompt)
    if per_prompt != 1 and (latents is not None or images is not None or not all_prompts):
        raise AysError("--samples-per-prompt goes with --prompt/--prompts alone: the model's own samples of each")
    if images is not None:
        _two_rows(_image_rows(images), f"--images {str(images)!r} holds one image")
    elif latents is None and all_prompts:
        all_prompts = [p for p in all_prompts for _ in range(per_prompt)]  # N samples of each, each its own noise
        _two_rows(len(all_prompts), "one prompt with --samples-per-prompt 1 is one sample")
    if images is not None and (all_prompts or latents is not None or captions is not None):
        raise AysError("--images brings its own captions: give it without --prompt/--prompts/--latents/--captions")
    if captions is not None and latents is None:
        raise AysError("--captions goes with --latents (one caption per latent row)")
    if images is None and latents is None and not all_prompts:
        raise AysError("--diffusers needs data: --images DIR (captioned images), --prompts FILE or --prompt "
                       "(the model's own samples), or --latents FILE --captions FILE")
    pipe = load_pipeline(path, device=device, torch_dtype=torch_dtype)
    family: Family | None = None
    try:
        family = None if route else family_of(pipe)
    except AysError as e:
        problem = driving_problem(pipe)
        if problem is not None:
            raise AysError(f"{e}; nor can ays drive it through its own __call__: {problem}") from None
    if family is None:
        rows = D.read_lines(captions, "captions") if captions is not None else all_prompts
        return route_job(pipe, path, prompts=rows, images=images, latents=latents,
                         resolution=parse_resolution(resolution), frames=None if frames is None else int(frames),
                         guidance_scale=guidance_scale, negative_prompt=negative_prompt, sample_steps=sample_steps,
                         seed=seed)
    if frames is not None:
        raise AysError(f"--frames is for video pipelines; {type(pipe).__name__} makes images")
    res = parse_resolution(resolution)
    if latents is not None:
        rows = D.read_lines(captions, "captions") if captions is not None else all_prompts
        if not rows:
            raise AysError("--latents needs --captions FILE (one caption per row), or one --prompt for all rows")
        data = D.from_latents(family, latents, rows, res and family.check_resolution(res), negative_prompt)
        _two_rows(len(data), f"--latents {str(latents)!r} holds one row")
        res = (data.x.shape[2] * family.vae_scale, data.x.shape[3] * family.vae_scale)
        source: dict[str, Any] = {"source": "latents"}
    else:
        res = family.check_resolution(res or family.default_resolution())
        if images is not None:
            data = D.from_images(family, images, res, negative_prompt)
            source = {"source": "images"}
        else:
            data, cached = D.model_samples(family, path, all_prompts, res, steps=sample_steps, seed=seed,
                                           guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                                           progress=progress)
            source = {"source": "model samples", "sample_steps": int(sample_steps), "seed": int(seed),
                      "cached": cached}
    scale = family.default_guidance() if guidance_scale is None else float(guidance_scale)
    denoiser = family.denoiser(guidance_scale=scale, negative_prompt=negative_prompt, resolution=res)
    info = family.info(res, scale, negative_prompt)
    info["data"] = {**source, "rows": len(data)}
    return DiffusersJob(denoiser, data, family.noise(res), family, res, scale, info)

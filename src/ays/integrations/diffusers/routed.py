"""``ays optimize --diffusers DIR`` for a pipeline of no family ays knows: the route's job.

The model is the pipeline's own ``__call__`` (:class:`~.route.PipelineRoute`); the data are in
its loop's latent space (what it returns with ``output_type="latent"``: packed tokens, video
``[C, F, h, w]`` or SVD's ``[F, C, h, w]`` alike), each row with the index of its condition:

- prompts (``--prompt``, ``--prompts FILE``): text-to-image and text-to-video pipelines;
- a folder of conditioning images (``--images DIR``) for pipelines that take ``image=`` (SVD),
  with a ``NAME.txt`` prompt beside an image for those that take both;
- or a latent file (``--latents``) in that space with one prompt per row.

Without a latent file the data are the model's own ``sample_steps``-step samples of each
condition, cached as :func:`~.data.model_samples` caches them. The start of the optimiser is
the pipeline's own schedule at the step count, recorded from its own ``set_timesteps`` call
(with its shift and ``mu``), and the schedule file records what the export needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...data import Conditioned
from ...denoisers import ModelDenoiser
from ...denoisers.prediction import NoiseRange
from ...noise import Flow, NoiseSchedule
from ...validate import AysError
from . import data as D
from .family import _jsonable
from .flow import PURE_NOISE_SIGMA
from .route import CONDITION, PipelineRoute

__all__ = ["RouteJob", "route_job"]

Tensor = torch.Tensor


@dataclass
class RouteJob(NoiseRange):
    denoiser: ModelDenoiser
    data: Conditioned
    noise: NoiseSchedule
    route: PipelineRoute
    info: dict[str, Any] = field(default_factory=dict)

    def init(self, steps: int) -> Tensor | None:
        """The pipeline's own schedule for ``steps`` (None: ays' default start for this noise)."""
        return self.route.default_schedule(steps)[0]


def _conditions(pipe: Any, prompts: Sequence[str], images: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    name = type(pipe).__name__
    if images is not None:
        if "image" not in params:
            raise AysError(f"{name} takes no image=: give it prompts (--prompt, --prompts FILE)")
        root = Path(images).expanduser()
        if not root.is_dir():
            raise AysError(f"--images {str(images)!r} is not a folder")
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in D.IMAGE_SUFFIXES)
        if not files:
            raise AysError(f"no images ({', '.join(D.IMAGE_SUFFIXES)}) in {str(root)!r}")
        out = []
        for f in files:
            cond: dict[str, Any] = {"image": _image(f)}
            caption = f.with_suffix(".txt")
            if "prompt" in params and caption.is_file():
                cond["prompt"] = caption.read_text(encoding="utf-8").strip()
            out.append(cond)
        return out
    if "prompt" not in params:
        raise AysError(f"{name} is conditioned on images: give --images DIR (its conditioning images)")
    return [{"prompt": p} for p in prompts]


def _image(path: Path) -> Any:
    from PIL import Image

    try:
        return Image.open(path).convert("RGB")
    except OSError as e:
        raise AysError(f"cannot read the image {str(path)!r}: {e}") from None


def _call_kwargs(pipe: Any, resolution: tuple[int, int] | None, frames: int | None, guidance_scale: float | None,
                 negative_prompt: str | None) -> dict[str, Any]:
    """The fixed ``__call__`` arguments: size, frames, guidance, negative prompt (each only if taken)."""
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    name = type(pipe).__name__
    out: dict[str, Any] = {}
    if resolution is not None:
        if "height" not in params:
            raise AysError(f"{name} takes no height/width: leave --resolution out")
        out["height"], out["width"] = resolution
    if frames is not None:
        if "num_frames" not in params:
            raise AysError(f"{name} makes no video (it takes no num_frames): leave --frames out")
        out["num_frames"] = int(frames)
    if guidance_scale is not None:
        if "guidance_scale" not in params:
            raise AysError(f"{name} takes no guidance_scale (its own are "
                           f"{', '.join(p for p in params if 'guidance' in p) or 'none'}): leave --guidance-scale out")
        out["guidance_scale"] = float(guidance_scale)
    if negative_prompt:
        if "negative_prompt" not in params:
            raise AysError(f"{name} takes no negative_prompt")
        out["negative_prompt"] = negative_prompt
    if "use_resolution_binning" in params:
        out["use_resolution_binning"] = False  # the size asked for is the size sampled
    return out


def route_job(pipe: Any, path: str | os.PathLike[str], *, prompts: Sequence[str] = (),
              images: str | os.PathLike[str] | None = None, latents: str | os.PathLike[str] | None = None,
              resolution: tuple[int, int] | None = None, frames: int | None = None,
              guidance_scale: float | None = None, negative_prompt: str | None = None, sample_steps: int = 50,
              seed: int = 0) -> RouteJob:
    """The route's denoiser, data and noise for a loaded pipeline (module docstring)."""
    if latents is not None and images is not None:
        raise AysError("give --latents with prompts, or --images, not both")
    conditions = _conditions(pipe, [] if images is not None else list(dict.fromkeys(prompts)), images)
    if not conditions:
        raise AysError("--diffusers needs data: --prompts FILE or --prompt, or --images DIR for image-conditioned "
                       "pipelines")
    call = _call_kwargs(pipe, resolution, frames, guidance_scale, negative_prompt)
    route = PipelineRoute(pipe, conditions, call, seed=seed)
    if latents is not None:
        x = D.read_latents(Path(latents).expanduser())
        rows = list(prompts) * x.shape[0] if len(prompts) == 1 else list(prompts)
        if len(rows) != x.shape[0]:
            raise AysError(f"{len(rows)} prompts for {x.shape[0]} latent rows: give one prompt per row, or one for all")
        index = torch.tensor([conditions.index({"prompt": p}) for p in rows])
        source: dict[str, Any] = {"source": "latents"}
    else:
        key = D.sample_key(path, route=True, conditions=[_describe(c) for c in conditions], call=_describe(call),
                           steps=int(sample_steps), seed=int(seed))
        x, cached = D.cached_latents(key, lambda: torch.cat([route.sample(c, sample_steps)
                                                             for c in range(len(conditions))]))
        if x.shape[0] != len(conditions):
            raise AysError(f"{type(pipe).__name__} returned {x.shape[0]} samples for {len(conditions)} conditions")
        index = torch.arange(len(conditions))
        source = {"source": "model samples", "sample_steps": int(sample_steps), "seed": int(seed), "cached": cached}
    data = Conditioned(x.float(), {CONDITION: index})
    return RouteJob(route.denoiser(), data, route.noise, route, _info(route, call, source, len(data)))


def _describe(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able description of ``__call__`` arguments (an image by its size and pixels' hash)."""
    import hashlib

    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if hasattr(v, "tobytes") and hasattr(v, "size"):
            out[k] = {"image": list(v.size), "sha256": hashlib.sha256(v.tobytes()).hexdigest()[:16]}
        else:
            out[k] = v if _jsonable(v) else repr(v)
    return out


def _info(route: PipelineRoute, call: dict[str, Any], source: dict[str, Any], rows: int) -> dict[str, Any]:
    """What the schedule file records: the pipeline, its parametrisation, the scheduler and its shift."""
    sched = route.original
    cfg = dict(sched.config)
    _, mu = route.default_schedule(2)  # mu is set by the image size (2 steps: LTX stretches 1 step to NaN)
    shift: dict[str, Any] | None = None
    if isinstance(route.noise, Flow):
        shift = ({"kind": "dynamic", "mu": mu} if cfg.get("use_dynamic_shifting") else
                 {"kind": "static", "shift": float(route.noise.shift)})
    return {
        "family": "route",
        "pipeline": type(route.pipe).__name__,
        "noise": type(route.noise).__name__,
        "prediction": route.prediction,
        "shift": shift,
        "mu": mu,
        "resolution": [call["height"], call["width"]] if "height" in call else None,
        "frames": call.get("num_frames"),
        "guidance_scale": call.get("guidance_scale"),
        "negative_prompt": call.get("negative_prompt"),
        "pure_noise_sigma": PURE_NOISE_SIGMA if isinstance(route.noise, Flow) else None,
        "scheduler": {k: v for k, v in cfg.items() if _jsonable(v)},
        "data": {**source, "rows": rows},
    }

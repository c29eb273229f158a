"""``ays sample --diffusers DIR --schedule FILE``: the schedule beside the scheduler's default, as a picture.

The look users take before they trust a schedule: for each prompt, the pipeline's own
output with its default schedule and with the ays schedule, at the same step count, from
the same initial noise (one seed), at the resolution and guidance the schedule was made for
(the schedule file records them). Both runs are the pipeline's own ``__call__``; the ays
one goes through :func:`~ays.integrations.diffusers.run_diffusers_pipeline`, which checks
that the scheduler lands on the schedule's levels.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from ...validate import AysError
from .export import run_diffusers_pipeline, scheduler_for, solver_of
from .families import family_of
from .job import parse_resolution
from .pipeline import load_pipeline

__all__ = ["sample_grid"]


def _recorded(schedule: str | os.PathLike[str]) -> dict[str, Any]:
    from ...optimize.result import load_schedule

    result = load_schedule(schedule)
    return {"steps": result.steps, **(getattr(result, "model_info", None) or {})}


def sample_grid(model: str | os.PathLike[str], schedule: str | os.PathLike[str], prompts: Sequence[str],
                out: str | os.PathLike[str], *, seed: int = 0, guidance_scale: float | None = None,
                negative_prompt: str | None = None, resolution: str | int | tuple[int, int] | None = None,
                device: str | None = None, scheduler: str | None = None, images: str | os.PathLike[str] | None = None,
                frames: int | str | None = None) -> dict[str, Any]:
    """Write a PNG: one row per prompt (or conditioning image), columns "default" and "ays"; returns what was run.

    A video shows its last frame. ``images`` (a folder) conditions image-to-video pipelines (SVD).
    The "ays" column runs with the pipeline's scheduler, or, when that one takes no custom schedule
    (SD 1.5's PNDM), with the scheduler of the schedule's solver, or ``scheduler`` (a diffusers
    class name); ``"scheduler"`` in the result says which, and ``"note"`` why, when it was swapped.
    """
    import torch

    if not os.path.isfile(schedule):
        raise AysError(f"ays sample --diffusers needs --schedule FILE, an ays-schedule/1 file (got {str(schedule)!r})")
    info = _recorded(schedule)
    pipe = load_pipeline(model, device=device)
    if info.get("family") == "route":
        kwargs, rows = _route_kwargs(pipe, info, prompts, images, guidance_scale, negative_prompt, resolution, frames)
        res = kwargs.get("height"), kwargs.get("width")
        scale = kwargs.get("guidance_scale")
    else:
        if not prompts:
            raise AysError("ays sample --diffusers needs --prompt (one or more)")
        family = family_of(pipe)
        if info.get("family") not in (None, family.name):
            raise AysError(f"the schedule was made for a {info['family']} model, but {str(model)!r} is {family.name}")
        asked = parse_resolution(resolution)
        res = family.check_resolution(asked or tuple(info.get("resolution") or family.default_resolution()))
        scale = guidance_scale if guidance_scale is not None else info.get("guidance_scale")
        scale = family.default_guidance() if scale is None else float(scale)
        negative = negative_prompt if negative_prompt is not None else info.get("negative_prompt")
        kwargs = {"prompt": list(prompts), "guidance_scale": scale, "height": res[0], "width": res[1]}
        if negative and family.uses_cfg(scale):
            kwargs["negative_prompt"] = negative
        rows = len(prompts)
    steps = int(info["steps"])
    own = pipe.scheduler
    chosen, note = scheduler_for(own, solver_of(schedule), scheduler)  # before any work: a bad name is one line
    dev = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or "cpu"
    with torch.no_grad():
        default = _pictures(pipe(num_inference_steps=steps, generator=torch.Generator(dev).manual_seed(seed),
                                 output_type="pil", **kwargs))
        pipe.scheduler = chosen
        try:
            ours = _pictures(run_diffusers_pipeline(pipe, schedule, generator=torch.Generator(dev).manual_seed(seed),
                                                    output_type="pil", **kwargs))
        finally:
            pipe.scheduler = own
    _write_grid(out, default, ours, steps)
    return {"steps": steps, "resolution": list(res), "guidance_scale": scale, "prompts": rows,
            "scheduler": type(chosen).__name__, **({} if note is None else {"note": note})}


def _route_kwargs(pipe: Any, info: dict[str, Any], prompts: Sequence[str], images: str | os.PathLike[str] | None,
                  guidance_scale: float | None, negative_prompt: str | None,
                  resolution: str | int | tuple[int, int] | None, frames: int | str | None
                  ) -> tuple[dict[str, Any], int]:
    """``__call__`` arguments of a routed pipeline for a batch of prompts or images, as the schedule recorded."""
    from .routed import _call_kwargs, _conditions

    if info.get("pipeline") not in (None, type(pipe).__name__):
        raise AysError(f"the schedule was made for a {info['pipeline']}, but the folder holds a {type(pipe).__name__}")
    conditions = _conditions(pipe, list(prompts), images)
    if not conditions:
        raise AysError("ays sample --diffusers needs --prompt (one or more), or --images DIR for image-conditioned "
                       "pipelines")
    res = parse_resolution(resolution) or (tuple(info["resolution"]) if info.get("resolution") else None)
    call = _call_kwargs(pipe, res, int(frames) if frames is not None else info.get("frames"),
                        guidance_scale if guidance_scale is not None else info.get("guidance_scale"),
                        negative_prompt if negative_prompt is not None else info.get("negative_prompt"))
    keys = conditions[0].keys()
    call.update({k: [c[k] for c in conditions] for k in keys})
    return call, len(conditions)


def _pictures(output: Any) -> list[Any]:
    """The pipeline's PIL images; of a video, its last frame."""
    first = output[0]
    return [im[-1] if isinstance(im, (list, tuple)) else im for im in first]


def _write_grid(out: str | os.PathLike[str], default: list[Any], ours: list[Any], steps: int) -> None:
    from PIL import Image, ImageDraw

    from ...io import atomic_write_bytes

    # tiles of at least 128 px, so that the labels fit above small (test-sized) images
    zoom = max(1, -(-128 // default[0].size[0]))
    default, ours = ([im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST) for im in ims]
                     for ims in (default, ours))
    w, h = default[0].size
    label = 14
    grid = Image.new("RGB", (2 * w, len(default) * h + label), "white")
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate((f"default {steps} steps", f"ays {steps} steps")):
        draw.text((col * w + 2, 1), name, fill="black")
    for row, (a, b) in enumerate(zip(default, ours)):
        grid.paste(a, (0, label + row * h))
        grid.paste(b, (w, label + row * h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())

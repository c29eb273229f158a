"""What the commands optimise or sample: a denoiser, its data and its noise parametrisation.

A job comes from one of three places:

- a named problem of :mod:`ays.problems` (``gmm-8x8``, ``digits``, ...) with its
  exact denoiser (``--model exact``), a shipped trained network (``--model
  trained``) or a network saved by ``ays train`` (``--model PATH``);
- a Python entry point ``module:function`` (or ``path/to/file.py:function``) that
  returns ``(denoiser, data)``, ``(denoiser, data, noise)`` or a dict with those keys;
- a local diffusers pipeline folder (``--diffusers PATH``).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import click

from ..validate import AysError


@dataclass
class Job:
    denoiser: Any
    data: Any
    noise: Any = None
    problem: Any = None
    label: str = ""
    sigma_min: float | None = None
    sigma_max: float | None = None
    init: Any = None  #: steps -> the model's own default schedule (diffusers pipelines), else None
    info: dict[str, Any] | None = None  #: ``model_info`` for the schedule file (diffusers pipelines)


def _entry_point(spec: str) -> Job:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise AysError(f"entry point {spec!r} must look like module:function or file.py:function")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise AysError(f"entry point file {target!r} does not exist")
            mod_spec = importlib.util.spec_from_file_location(f"_ays_entry_{abs(hash(target))}", target)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", target):
                hint = f"; did you mean {target}.py:{attr}?" if os.path.isfile(target + ".py") else ""
                raise AysError(f"entry point {spec!r}: {target!r} is neither a module name (dotted, as "
                               f"mypkg.models) nor a .py file (path/to/models.py:{attr}){hint}")
            # As `python -m` and `torchrun -m` do: the working directory's packages are importable.
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(target)
    except ImportError as e:
        raise AysError(f"cannot import {target!r} for entry point {spec!r}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AysError(f"entry point {spec!r}: {attr!r} is not a function of {target!r}")
    out = fn()
    if isinstance(out, dict):
        if "denoiser" not in out or "data" not in out:
            raise AysError(f"entry point {spec!r} must return a dict with 'denoiser' and 'data'")
        return Job(out["denoiser"], out["data"], out.get("noise"), label=spec,
                   sigma_min=out.get("sigma_min"), sigma_max=out.get("sigma_max"))
    if isinstance(out, (tuple, list)) and len(out) in (2, 3):
        return Job(out[0], out[1], out[2] if len(out) == 3 else None, label=spec)
    raise AysError(f"entry point {spec!r} must return (denoiser, data), (denoiser, data, noise) or a dict")


def problem_denoiser(problem: Any, name: str, model: str) -> tuple[Any, str]:
    """The denoiser of a named problem: exact, shipped trained network, or a saved file."""
    if model == "exact":
        return problem.denoiser, f"{name} (exact denoiser)"
    from .. import train

    if model == "trained":
        return train.pretrained(name).eval(), f"{name} (trained network)"
    if not os.path.isfile(model):
        raise AysError(f"--model must be 'exact', 'trained' or a model file; {model!r} does not exist")
    return train.load_model(model).eval(), f"{name} ({os.path.basename(model)})"


def load_job(target: str | None, model: str = "exact", diffusers: str | None = None,
             prompts: tuple[str, ...] = (), guidance_scale: float = 1.0, latents: str | None = None) -> Job:
    """Resolve the command line's model arguments into a :class:`Job`."""
    if diffusers is not None:
        if target is not None:
            raise AysError("give either a problem / entry point or --diffusers, not both")
        from ..integrations.diffusers import load_diffusers_job
        from ._progress import CountBar, bars_wanted

        ctx = click.get_current_context(silent=True)
        where = {} if ctx is None else ctx.params  # load the pipeline where and as it will run: --device, --dtype
        samples = CountBar("model samples", "step", bars_wanted(bool(where.get("quiet")), where.get("progress_bars")))
        try:
            job = load_diffusers_job(diffusers, prompts=prompts, latents=latents, guidance_scale=guidance_scale,
                                     device=where.get("device"), torch_dtype=where.get("dtype"), progress=samples,
                                     **diffusers_data_options())
        finally:
            samples.close()
        return Job(job.denoiser, job.data, job.noise, label=os.path.basename(os.path.normpath(diffusers)),
                   sigma_min=job.sigma_min, sigma_max=job.sigma_max, init=job.init, info=job.info)
    if target is None:
        raise AysError("name a problem (see `ays optimize --help`), an entry point module:function, or --diffusers")
    if ":" in target and not os.path.exists(target):
        return _entry_point(target)
    from .. import problems

    problem = problems.get(target)
    denoiser, label = problem_denoiser(problem, target, model)
    return Job(denoiser, problem, None, problem=problem, label=label,
               sigma_min=problem.sigma_min, sigma_max=problem.sigma_max)


#: the --diffusers data options, passed through the commands untouched (click ``expose_value=False``)
DIFFUSERS_DATA_OPTIONS = ("prompts_file", "images", "captions", "resolution", "negative_prompt", "samples_per_prompt",
                          "frames")


def _keep_diffusers_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"ays.diffusers.{param.name}"] = value
    return value


def diffusers_data_options() -> dict[str, Any]:
    """The values of the --diffusers data options of the running command (all None outside one)."""
    ctx = click.get_current_context(silent=True)
    meta = {} if ctx is None else ctx.meta
    return {name: meta.get(f"ays.diffusers.{name}") for name in DIFFUSERS_DATA_OPTIONS}


def _check_guidance_scale(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"must be a finite number >= 0 (1: no guidance), got {value}")
    return value


def model_options(f: Any) -> Any:
    """The click options shared by commands that need a model and its data."""
    opts = [
        click.argument("target", required=False, metavar="PROBLEM|module:function"),
        click.option("--model", "-m", default="exact", show_default=True,
                     help="For a named problem: 'exact' (closed-form denoiser), 'trained' (shipped "
                          "network) or a file written by `ays train`."),
        click.option("--diffusers", type=click.Path(), default=None,
                     help="A local diffusers pipeline folder: the model, instead of PROBLEM or module:function."),
        click.option("--prompt", "prompts", multiple=True,
                     help="Prompt(s) for --diffusers (repeatable): the model's own samples of them are the data; "
                          "with --latents, every row's caption; for ays sample, the grid's rows."),
        click.option("--guidance-scale", type=float, default=None, callback=_check_guidance_scale,
                     help="Guidance scale for --diffusers, as the pipeline takes it (default: the pipeline's own); "
                          "the schedule is for this scale."),
        click.option("--latents", type=click.Path(), default=None,
                     help="For --diffusers: a .pt/.safetensors latent tensor [N, C, h, w], with --captions."),
        *[click.option(flag, name, default=None, metavar=meta, expose_value=False, callback=_keep_diffusers_option,
                       help=text)
          for flag, name, meta, text in (
              ("--prompts", "prompts_file", "FILE", "For --diffusers: a prompt file (one a line); the model's own "
                                                    "samples of them are the data (cached on disk)."),
              ("--images", "images", "DIR", "For --diffusers: a folder of captioned images (metadata.jsonl or "
                                            "NAME.txt beside each image); for image-to-video (SVD), the "
                                            "conditioning images."),
              ("--captions", "captions", "FILE", "For --diffusers --latents: a caption file, one line per row."),
              ("--resolution", "resolution", "HxW", "For --diffusers: the image size, 1024 or HxW (default: the "
                                                    "model's)."),
              ("--negative-prompt", "negative_prompt", "TEXT", "For --diffusers: the negative prompt of guidance."),
              ("--samples-per-prompt", "samples_per_prompt", "N", "For --diffusers --prompt/--prompts: the model's "
                                                                "own N samples of each prompt are the data (default "
                                                                "1; one prompt needs N >= 2)."),
              ("--frames", "frames", "N", "For --diffusers video pipelines (SVD, Wan): the number of frames "
                                          "(default: the pipeline's)."))],
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f

"""``ays schedule``: print or export any heuristic, published or saved schedule."""

from __future__ import annotations

import json
import os
from typing import Any

import click
import torch

from ..validate import AysError

FORMATS = ("text", "json", "ays", "sampling", "diffusers", "comfyui", "a1111", "kdiffusion")


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-O rho=5 -O c=0.5 -O redraw=true`` -> {"rho": 5, "c": 0.5, "redraw": True}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AysError(f"option {pair!r} must look like KEY=VALUE")
        out[key] = _value(value)
    return out


def resolve(name: str, steps: int | None, sigma_min: float | None, sigma_max: float | None,
            options: dict[str, Any], own: tuple[float | None, float | None] = (None, None)) -> torch.Tensor:
    """A schedule from a heuristic or published name, or from an ``ays-schedule/1`` file.

    ``sigma_min``/``sigma_max`` are the flags (``None``: not given). A heuristic spans
    them, else ``own`` (the problem's or model's range), else EDM's 0.002-80 (with a
    note, :func:`~ays.cli._defaults.noise_range`). Published tables and saved files
    carry their own range, so flags for them are refused. A saved schedule is
    log-linearly interpolated when ``steps`` differs from its own.
    """
    from .. import schedules
    from ..validate import check_choice
    from ._defaults import noise_range, range_note

    flags = sigma_min is not None or sigma_max is not None
    if os.path.isfile(name) or name.endswith(".json"):  # a folder named like a table (./sdxl) is no schedule
        from ..optimize import load_schedule

        sigmas = load_schedule(name).sigmas
        if flags:
            raise AysError(f"schedule file {name!r} has its own noise range; drop --sigma-min/--sigma-max")
        return sigmas if steps is None or steps == len(sigmas) - 1 else schedules.interpolate(sigmas, steps)
    n = 10 if steps is None else steps
    check_choice(name, schedules.names(), what="schedule")  # before the range note, so an error is one line
    if name in schedules.PUBLISHED:
        if flags or options:
            raise AysError(f"published schedule {name!r} has its own noise range; drop --sigma-min/--sigma-max and -O")
        return schedules.build(name, n)
    if name == "vp" and not flags and own == (None, None):
        return schedules.build(name, n, **options)  # the VP SDE's own range
    lo, hi = noise_range(sigma_min, sigma_max, own, note=False)
    sigmas = schedules.build(name, n, lo, hi, **options)
    range_note(sigma_min, sigma_max, own)  # after the build: a refused option stays a one-line error
    return sigmas


def render(sigmas: torch.Tensor, fmt: str, name: str) -> str:
    """The text of a schedule in one of :data:`FORMATS`."""
    from .. import schedules

    values = sigmas.tolist()
    if fmt == "text":
        return " ".join(f"{v:.6g}" for v in values)
    if fmt == "json":
        return json.dumps(values)
    if fmt == "sampling":
        return json.dumps(schedules.to_sampling(sigmas).tolist())
    if fmt == "ays":
        from ..optimize import OptimizeResult

        solver, method, model = "any", name, None
        if os.path.isfile(name):  # a copy of a saved schedule keeps the solver it was optimised for
            from ..optimize import load_schedule

            src = load_schedule(name)
            solver, method, model = src.solver, src.method, src.model
        doc = OptimizeResult(sigmas=sigmas, steps=len(sigmas) - 1, solver=solver, method=method, model=model).to_dict()
        return json.dumps(doc, indent=2)
    from ..integrations import formats

    if os.path.isfile(name):  # a schedule file: the export keeps its model's parametrisation (flow time, shift)
        from ..integrations.resolve import resolve as resolve_source

        return formats.render(resolve_source(name, len(sigmas) - 1), fmt)
    return formats.render(sigmas, fmt)


def _diffusers_export(sigmas: torch.Tensor, name: str, scheduler_name: str | None) -> str:
    """``--format diffusers``: for the scheduler a schedule file recorded (or ``--scheduler``), swapped for the
    solver's when it takes no custom schedule (SD 1.5's PNDM), saying which (stderr)."""
    from ..integrations.diffusers.export import scheduler_for, solver_of, to_diffusers
    from ..integrations.resolve import resolve as resolve_source

    source = resolve_source(name, len(sigmas) - 1) if os.path.isfile(name) else resolve_source(sigmas)
    recorded = (source.info or {}).get("scheduler")
    chosen, note = scheduler_for(recorded, solver_of(name), scheduler_name)
    if note is not None:
        click.echo(f"ays: {note}", err=True)
    kwargs = to_diffusers(source, chosen)
    return json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in kwargs.items()})


@click.command()
@click.argument("name")
@click.option("--steps", "-n", type=int, default=None, help="Number of steps (n+1 noise levels). Default 10.")
@click.option("--sigma-min", type=float, default=None, help="Smallest noise level (heuristics).")
@click.option("--sigma-max", type=float, default=None, help="Largest noise level (heuristics).")
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE",
              help="Heuristic option, e.g. -O rho=7 for karras, -O c=0.5 for kl_optimal.")
@click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text/json: the n+1 levels; sampling: last level 0; ays: a schedule file; "
                   "diffusers/comfyui/a1111/kdiffusion: what each consumer takes.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file (atomically) instead of stdout.")
@click.option("--for", "for_model", type=click.Path(), default=None, metavar="DIR",
              help="A diffusers pipeline folder: the export for its scheduler, checked to land on the schedule.")
@click.option("--scheduler", default=None, metavar="NAME",
              help="For --format diffusers and --for: the diffusers scheduler class to export for (default: the "
                   "model's, or the schedule's solver's when the model's takes no custom schedule, as SD 1.5's PNDM).")
def schedule(name: str, steps: int | None, sigma_min: float | None, sigma_max: float | None,
             opts: tuple[str, ...], fmt: str, output: str | None, for_model: str | None,
             scheduler: str | None) -> None:
    """Print or export the schedule NAME: a heuristic (karras, loglinear, time_uniform,
    vp, polyexponential, kl_optimal, beta), a published AYS table (sd15, sdxl, svd,
    deepfloyd_if) or a saved ays-schedule/1 JSON file.

    \b
    ays schedule karras --steps 10 --sigma-min 0.002 --sigma-max 80
    ays schedule sdxl --steps 20 --format comfyui
    ays schedule kl_optimal -n 8 --sigma-min 0.002 --sigma-max 80 -O c=0.5
    """
    sigmas = resolve(name, steps, sigma_min, sigma_max, parse_options(opts))
    if for_model is not None:
        from ..integrations.diffusers.verify import export_for

        kwargs, note = export_for(name if os.path.isfile(name) else sigmas, for_model, len(sigmas) - 1, scheduler)
        text = json.dumps(kwargs)
        click.echo(note, err=True)
    elif fmt == "diffusers":
        text = _diffusers_export(sigmas, name, scheduler)
    elif scheduler is not None:
        raise AysError("--scheduler goes with --format diffusers or --for DIR")
    else:
        text = render(sigmas, fmt, name)
    if output is None:
        click.echo(text)
    else:
        from ..io import atomic_write_text

        atomic_write_text(output, text + "\n")
        click.echo(f"wrote {output}", err=True)

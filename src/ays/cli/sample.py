"""``ays sample``: draw samples from a model with a schedule and a solver."""

from __future__ import annotations

import os

import click
import torch

from ..validate import AysError
from ._defaults import DEFAULT_SOLVER, model_range
from ._job import load_job, model_options
from ._ranks import in_session, say
from .schedule import parse_options, resolve


@click.command()
@model_options
@click.option("--schedule", "schedule_name", default="karras", show_default=True,
              help="A heuristic, a published table or an ays-schedule/1 file.")
@click.option("--solver", "-s", default=None,
              help=f"Solver (default: the schedule file's, else {DEFAULT_SOLVER}).")
@click.option("--steps", "-n", type=int, default=None, help="Steps (default: the file's, else 10).")
@click.option("--sigma-min", type=float, default=None,
              help="Range for a heuristic (default: the problem's/model's, else EDM's 0.002).")
@click.option("--sigma-max", type=float, default=None,
              help="Range for a heuristic (default: the problem's/model's, else EDM's 80).")
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE", help="Solver option, e.g. -O eta=0.5.")
@click.option("--count", "-N", type=int, default=1000, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Save the samples (.pt).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Picture of the samples (PNG).")
@click.option("--scheduler", default=None, metavar="NAME",
              help="For --diffusers: the diffusers scheduler class of the ays column (default: the pipeline's, or "
                   "the schedule's solver's when the pipeline's takes no custom schedule, as SD 1.5's PNDM).")
@in_session()
def sample(target: str | None, model: str, diffusers: str | None, prompts: tuple[str, ...], guidance_scale: float,
           latents: str | None, schedule_name: str, solver: str | None, steps: int | None, sigma_min: float | None,
           sigma_max: float | None, opts: tuple[str, ...], count: int, seed: int, out: str | None,
           plot: str | None, scheduler: str | None) -> None:
    """Sample PROBLEM (or your model) with a schedule and a solver; print what it cost.

    A schedule file brings the solver it was optimised for, unless --solver is given.

    \b
    ays sample gmm-8x8 --schedule schedule.json --solver dpmpp_2m_sde --plot gmm.png
    ays sample digits --model trained --schedule kl_optimal -n 10 --plot digits.png

    Under torchrun the samples' rows are shared out across the ranks (the same samples as
    one process); --diffusers's grid is made on rank 0 while the others wait.
    """
    from .. import sample as run_sample
    from .. import schedules, solvers
    from ..distributed import from_rank_zero, is_rank_zero
    from ..io import atomic_write_bytes

    if count < 1:
        raise AysError(f"--count must be at least 1, got {count}")
    from ..io import check_writable

    if out is not None:
        check_writable(out, what="--out")
    if plot is not None:
        check_writable(plot, what="--plot", create_parents=True)
    if diffusers is not None:
        # the pipeline's own runs, its default schedule beside this one, from the same noise: a PNG grid
        from ..integrations.diffusers.grid import sample_grid
        from ._job import diffusers_data_options

        grid, extra = plot or "ays-grid.png", diffusers_data_options()
        # The pipeline's own loop cannot be shared out: rank 0 draws the grid, the others wait.
        ran = from_rank_zero(sample_grid, diffusers, schedule_name, list(prompts), grid, seed=seed,
                             guidance_scale=guidance_scale, negative_prompt=extra["negative_prompt"],
                             resolution=extra["resolution"], scheduler=scheduler, images=extra["images"],
                             frames=extra["frames"])
        say(f"ays: {ran.get('note', 'with ' + ran['scheduler'])}", err=True)
        say(f"wrote {grid}", err=True)
        return
    job = load_job(target, model, diffusers, prompts, guidance_scale, latents)
    sigmas = resolve(schedule_name, steps, sigma_min, sigma_max, {}, model_range(job))
    solver = pick_solver(schedule_name, solver)
    g = torch.Generator().manual_seed(seed)
    shape = job.data(1, g).shape[1:] if callable(job.data) else job.data.shape[1:]
    noise = torch.randn((count, *shape), generator=g)
    with torch.no_grad():
        x = run_sample(job.denoiser, noise, schedules.to_sampling(sigmas), solver=solver, generator=g,
                       **parse_options(opts))
    calls = solvers.count_calls(solver, schedules.to_sampling(sigmas))
    say(f"{count} samples, {len(sigmas) - 1} steps of {solver}: {calls} denoiser calls per sample", err=True)
    if out is not None:
        import io

        buf = io.BytesIO()
        torch.save(x, buf)
        atomic_write_bytes(out, buf.getvalue())
        say(f"wrote {out}", err=True)
    if plot is not None and is_rank_zero():
        from ..plot import plot_samples

        ref = job.data(count, torch.Generator().manual_seed(seed + 1)) if callable(job.data) else None
        plot_samples(x, plot, title=f"{job.label}: {schedule_name}, {solver}, {len(sigmas) - 1} steps", reference=ref)
        click.echo(f"wrote {plot}", err=True)


def pick_solver(schedule_name: str, solver: str | None) -> str:
    """``--solver``, else the solver a schedule file was optimised for, else the default.

    A file made for another solver than ``--solver`` gets a one-line warning: its levels
    were chosen for that solver's errors.
    """
    from .. import solvers
    from ..optimize import load_schedule

    made_for = None
    if schedule_name.endswith(".json") or os.path.isfile(schedule_name):
        made_for = load_schedule(schedule_name).solver
        if made_for not in solvers.names():  # "any", "unknown": written by hand or by `ays schedule -f ays`
            made_for = None
    if solver is None:
        return made_for or DEFAULT_SOLVER
    solvers.info(solver)  # an unknown name fails here, alone, not after the warning
    if made_for is not None and made_for != solver:
        say(f"ays: warning: {schedule_name} was optimised for {made_for}, sampling with {solver}", err=True)
    return solver

"""``ays sample``: draw samples from a model with a schedule and a solver."""

from __future__ import annotations

import click
import torch

from ..validate import AysError
from ._job import load_job, model_options
from .schedule import parse_options, resolve


@click.command()
@model_options
@click.option("--schedule", "schedule_name", default="karras", show_default=True,
              help="A heuristic, a published table or an ays-schedule/1 file.")
@click.option("--solver", "-s", default="dpmpp_2m", show_default=True)
@click.option("--steps", "-n", type=int, default=None, help="Steps (default: the file's, else 10).")
@click.option("--sigma-min", type=float, default=None)
@click.option("--sigma-max", type=float, default=None)
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE", help="Solver option, e.g. -O eta=0.5.")
@click.option("--count", "-N", type=int, default=1000, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Save the samples (.pt).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Picture of the samples (PNG).")
def sample(target: str | None, model: str, diffusers: str | None, prompts: tuple[str, ...], guidance_scale: float,
           latents: str | None, schedule_name: str, solver: str, steps: int | None, sigma_min: float | None,
           sigma_max: float | None, opts: tuple[str, ...], count: int, seed: int, out: str | None,
           plot: str | None) -> None:
    """Sample PROBLEM (or your model) with a schedule and a solver; print what it cost.

    \b
    ays sample gmm-8x8 --schedule schedule.json --solver dpmpp_2m_sde --plot gmm.png
    ays sample digits --model trained --schedule kl_optimal -n 10 --plot digits.png
    """
    from .. import sample as run_sample
    from .. import schedules, solvers
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
        sample_grid(diffusers, schedule_name, list(prompts), grid, seed=seed, guidance_scale=guidance_scale,
                    negative_prompt=extra["negative_prompt"], resolution=extra["resolution"])
        click.echo(f"wrote {grid}", err=True)
        return
    job = load_job(target, model, diffusers, prompts, guidance_scale, latents)
    lo = sigma_min if sigma_min is not None else job.sigma_min
    hi = sigma_max if sigma_max is not None else job.sigma_max
    sigmas = resolve(schedule_name, steps, lo, hi, {})
    g = torch.Generator().manual_seed(seed)
    shape = job.data(1, g).shape[1:] if callable(job.data) else job.data.shape[1:]
    noise = torch.randn((count, *shape), generator=g)
    with torch.no_grad():
        x = run_sample(job.denoiser, noise, schedules.to_sampling(sigmas), solver=solver, generator=g,
                       **parse_options(opts))
    calls = solvers.count_calls(solver, schedules.to_sampling(sigmas))
    click.echo(f"{count} samples, {len(sigmas) - 1} steps of {solver}: {calls} denoiser calls per sample", err=True)
    if out is not None:
        import io

        buf = io.BytesIO()
        torch.save(x, buf)
        atomic_write_bytes(out, buf.getvalue())
        click.echo(f"wrote {out}", err=True)
    if plot is not None:
        from ..plot import plot_samples

        ref = job.data(count, torch.Generator().manual_seed(seed + 1)) if callable(job.data) else None
        plot_samples(x, plot, title=f"{job.label}: {schedule_name}, {solver}, {len(sigmas) - 1} steps", reference=ref)
        click.echo(f"wrote {plot}", err=True)

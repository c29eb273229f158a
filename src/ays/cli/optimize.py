"""``ays optimize``: find the schedule for a model, solver and step count, and save it."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..evaluate.optimized import remove_checkpoint
from ..validate import AysError
from ._defaults import DEFAULT_METHOD, DEFAULT_SOLVER, KLUB_NOTE, SAMPLES, model_range, noise_range, range_note
from ._job import load_job, model_options
from ._progress import StageBars, progress_option
from .schedule import parse_options


def run_optimize(job: Any, *, out: str | None, checkpoint: str | None, resume: bool, quiet: bool,
                 progress_bars: bool | None = None, **kwargs: Any) -> Any:
    """Run :func:`ays.optimize` for a job with a bar per stage and the estimate line; write the schedule file.

    ``progress_bars``: ``--progress/--no-progress`` (None: bars when stderr is a terminal; see :mod:`._progress`).
    """
    from .. import optimize

    if checkpoint is None and out is not None:
        checkpoint = out + ".ckpt.json"
    if resume and (checkpoint is None or not os.path.exists(checkpoint)):
        raise AysError(f"--resume: no checkpoint at {checkpoint!r}")
    bar = StageBars.for_command(quiet, progress_bars)
    try:
        result = optimize(job.denoiser, job.data, noise=job.noise, checkpoint=checkpoint, resume=resume,
                          progress=bar, model=job.label or None, **kwargs)
    except AysError:
        bar.close()  # the error line must not share a line with the bar
        raise
    except KeyboardInterrupt:
        bar.close()
        hint = f"; resume with the same command and --resume ({checkpoint})" if checkpoint else ""
        click.echo(f"ays: interrupted{hint}", err=True)
        sys.exit(130)
    bar.close()
    if getattr(job, "info", None):
        result.model_info = job.info  # the schedule file records the model it was made for
    if out is not None:
        from ..distributed import is_rank_zero

        result.save(out)  # atomic; rank 0 only under torchrun
        if checkpoint is not None and is_rank_zero():
            remove_checkpoint(checkpoint)
    return result


@click.command()
@model_options
@click.option("--solver", "-s", default=DEFAULT_SOLVER, show_default=True, help="Solver the schedule is for.")
@click.option("--steps", "-n", type=int, default=10, show_default=True, help="Number of steps.")
@click.option("--sigma-min", type=float, default=None,
              help="Smallest noise level (default: the problem's/model's, else EDM's 0.002).")
@click.option("--sigma-max", type=float, default=None,
              help="Largest noise level (default: the problem's/model's, else EDM's 80).")
@click.option("--method", default=DEFAULT_METHOD, show_default=True,
              help="Optimiser: ays (global + evidence-based stopping), coordinate (the paper's), dp, gits, dmn.")
@click.option("--samples", type=int, default=SAMPLES,
              help="Monte Carlo chains per KLUB estimate: each sweep's (coordinate), the KLUB table's (dp, ays) and "
                   "the final one (default: 8,192; ays: as many as --budget pays for); ays's selection draws its "
                   "own -O select_samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--budget", default=None, metavar="CALLS",
              help="Denoiser calls the method may spend, all stages together: 50000, 50k, 1.5M "
                   "(default: the method's own).")
@click.option("--early-stopping/--no-early-stopping", default=True, show_default=True,
              help="--no-early-stopping runs to the KLUB minimiser (it over-aligns; see the README).")
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE", help="Method option, e.g. -O max_sweeps=8.")
@click.option("--batch-size", type=int, default=None, help="Denoiser rows per call (memory cap).")
@click.option("--max-memory", default=None, metavar="BYTES",
              help="Memory cap per denoiser call, e.g. 8GiB or 2000000000; sets the batch size.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "float64"]), default=None,
              help="Run the model in this dtype (default: its own); KLUB sums stay float64.")
@click.option("--device", default=None, help="Run the model here, e.g. cuda, cuda:1, cpu (default: the model's).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="schedule.json", show_default=True,
              help="Where to write the ays-schedule/1 file.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint file (default: OUT.ckpt.json), written as the method goes (every sweep or chunk).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also plot the schedule (PNG).")
@progress_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no estimate line.")
def optimize(target: str | None, model: str, diffusers: str | None, prompts: tuple[str, ...], guidance_scale: float,
             latents: str | None, solver: str, steps: int, sigma_min: float | None, sigma_max: float | None,
             method: str, samples: int, seed: int, budget: str | None, early_stopping: bool, opts: tuple[str, ...],
             batch_size: int | None, max_memory: str | None, dtype: str | None, device: str | None, out: str,
             checkpoint: str | None, resume: bool, plot: str | None, progress_bars: bool | None,
             quiet: bool) -> None:
    """Optimise a sampling schedule (Align Your Steps) and save it as an ays-schedule/1 file.

    PROBLEM is a named problem of ays.problems (gmm-8x8, gmm-8x4, gmm-6x6, gaussian,
    rings, moons, swissroll, digits, ...); module:function names your own model (it
    returns denoiser and data); --diffusers PATH optimises a local diffusers pipeline.

    \b
    ays optimize gmm-8x8 --solver dpmpp_2m_sde --steps 10 --out gmm.json
    ays optimize digits --model trained --steps 10 --samples 4096
    ays optimize mypkg.models:load --steps 20 --resume
    torchrun --nproc_per_node 4 -m ays optimize mypkg.models:load --device cuda --dtype float16

    Under torchrun each process evaluates its share of the Monte Carlo draws; the
    schedule equals a single process's, and rank 0 alone writes files.
    """
    from ..distributed import is_rank_zero, session

    with session():
        _optimize(target, model, diffusers, prompts, guidance_scale, latents, solver, steps, sigma_min, sigma_max,
                  method, samples, seed, budget, early_stopping, opts, batch_size, max_memory, dtype, device, out,
                  checkpoint, resume, plot, progress_bars, quiet, is_rank_zero)


def _optimize(target: str | None, model: str, diffusers: str | None, prompts: tuple[str, ...],
              guidance_scale: float, latents: str | None, solver: str, steps: int, sigma_min: float | None,
              sigma_max: float | None, method: str | None, samples: int, seed: int, budget: str | None,
              early_stopping: bool, opts: tuple[str, ...], batch_size: int | None, max_memory: str | None,
              dtype: str | None, device: str | None, out: str, checkpoint: str | None, resume: bool,
              plot: str | None, progress_bars: bool | None, quiet: bool, is_rank_zero: Any) -> None:
    from ..device import parse_device, parse_memory
    from ..io import check_writable
    from ..validate import check_budget

    # Refuse bad flags and unwritable outputs before the model is loaded and the work done.
    calls = None if budget is None else check_budget(budget, name="--budget")
    parse_device(device)
    parse_memory(max_memory)
    check_writable(out, what="--out")
    check_writable(checkpoint if checkpoint is not None else out + ".ckpt.json", what="--checkpoint")
    if plot is not None:
        check_writable(plot, what="--plot", create_parents=True)
    job = load_job(target, model, diffusers, prompts, guidance_scale, latents)
    kwargs: dict[str, Any] = dict(steps=steps, solver=solver, seed=seed, samples=samples,
                                  early_stopping=early_stopping, batch_size=batch_size, max_memory=max_memory,
                                  dtype=dtype, device=device)
    if calls is not None:
        kwargs["budget"] = calls  # absent otherwise: the method's default, and old checkpoints stay valid
    kwargs["sigma_min"], kwargs["sigma_max"] = noise_range(sigma_min, sigma_max, model_range(job), note=False)
    kwargs["method"] = method
    if getattr(job, "init", None) is not None and sigma_min is None and sigma_max is None:
        init = job.init(steps)  # the pipeline's own default schedule: flow models from t = 1, with their shift
        if init is not None:
            kwargs.update(init=init, sigma_min=float(init[-1]), sigma_max=float(init[0]))
    kwargs.update(parse_options(opts))
    result = run_optimize(job, out=out, checkpoint=checkpoint, resume=resume, quiet=quiet,
                          progress_bars=progress_bars, **kwargs)
    if not is_rank_zero():
        return
    click.echo(" ".join(f"{s:.6g}" for s in result.sigmas.tolist()))
    range_note(sigma_min, sigma_max, model_range(job))  # after the run: an error stays one line
    from ._defaults import klub_chains

    chains = klub_chains(result)
    on = f" on {chains:,} chains" if chains else ""
    klub = f"KLUB {result.klub:.5g} ± {result.klub_stderr:.2g}{on}, " if result.klub is not None else ""
    click.echo(f"{klub}{result.calls:,} denoiser calls; wrote {out}", err=True)
    if result.klub is not None:
        click.echo(f"({KLUB_NOTE})", err=True)
    if plot is not None:
        from .. import schedules
        from ..plot import plot_schedules

        lo, hi = result.sigma_min, result.sigma_max
        plot_schedules({"ays": result.sigmas, "karras": schedules.karras(steps, lo, hi),
                        "loglinear": schedules.loglinear(steps, lo, hi)}, plot, title=job.label)
        click.echo(f"wrote {plot}", err=True)

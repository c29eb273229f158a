"""``ays optimize``: find the schedule for a model, solver and step count, and save it."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..validate import AysError
from ._defaults import DEFAULT_METHOD, DEFAULT_SOLVER, KLUB_NOTE, SAMPLES, model_range, noise_range, range_note
from ._job import load_job, model_options
from .schedule import parse_options


class SweepBar:
    """A tqdm bar over sweeps that shows the current KLUB; also the resume hint."""

    def __init__(self, quiet: bool) -> None:
        from ..distributed import is_rank_zero

        # Under torchrun every rank runs this command; only rank 0 shows the bar. The bar
        # opens with the first sweep, so an argument refused before any work prints nothing.
        self.quiet = quiet or not is_rank_zero()
        self.bar: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "done":
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="optimising", unit="sweep", disable=self.quiet, leave=False, dynamic_ncols=True)
        self.bar.update(1)
        post = {"stage": f"{event['steps']} steps"} if "steps" in event else {}
        for key in ("klub", "heldout"):
            if isinstance(event.get(key), (int, float)):
                post[key] = f"{event[key]:.5g}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_optimize(job: Any, *, out: str | None, checkpoint: str | None, resume: bool, quiet: bool,
                 **kwargs: Any) -> Any:
    """Run :func:`ays.optimize` for a job with a progress bar; write the schedule file."""
    from .. import optimize

    if checkpoint is None and out is not None:
        checkpoint = out + ".ckpt.json"
    if resume and (checkpoint is None or not os.path.exists(checkpoint)):
        raise AysError(f"--resume: no checkpoint at {checkpoint!r}")
    bar = SweepBar(quiet)
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
            _remove_checkpoint(checkpoint)
    return result


def _remove_checkpoint(checkpoint: str) -> None:
    """Delete the checkpoint, and temporary files a killed write of it left behind (``.NAME.*.tmp``)."""
    import glob

    # The schedule file now holds everything the checkpoint did.
    folder, name = os.path.split(os.path.abspath(checkpoint))
    for path in [checkpoint, *glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp"))]:
        if os.path.isfile(path):
            os.unlink(path)


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
@click.option("--samples", type=int, default=SAMPLES, show_default=True,
              help="Monte Carlo chains per KLUB estimate: each sweep's (coordinate), the KLUB table's (dp, ays) and "
                   "the final one; ays's selection draws its own -O select_samples (2048).")
@click.option("--seed", type=int, default=0, show_default=True)
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
              help="Checkpoint file (default: OUT.ckpt.json), written after every sweep.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also plot the schedule (PNG).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def optimize(target: str | None, model: str, diffusers: str | None, prompts: tuple[str, ...], guidance_scale: float,
             latents: str | None, solver: str, steps: int, sigma_min: float | None, sigma_max: float | None,
             method: str, samples: int, seed: int, early_stopping: bool, opts: tuple[str, ...],
             batch_size: int | None, max_memory: str | None, dtype: str | None, device: str | None, out: str,
             checkpoint: str | None, resume: bool, plot: str | None, quiet: bool) -> None:
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
                  method, samples, seed, early_stopping, opts, batch_size, max_memory, dtype, device, out,
                  checkpoint, resume, plot, quiet, is_rank_zero)


def _optimize(target: str | None, model: str, diffusers: str | None, prompts: tuple[str, ...],
              guidance_scale: float, latents: str | None, solver: str, steps: int, sigma_min: float | None,
              sigma_max: float | None, method: str | None, samples: int, seed: int, early_stopping: bool,
              opts: tuple[str, ...], batch_size: int | None, max_memory: str | None, dtype: str | None,
              device: str | None, out: str, checkpoint: str | None, resume: bool, plot: str | None, quiet: bool,
              is_rank_zero: Any) -> None:
    from ..device import parse_device, parse_memory
    from ..io import check_writable

    # Refuse bad flags and unwritable outputs before the model is loaded and the work done.
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
    kwargs["sigma_min"], kwargs["sigma_max"] = noise_range(sigma_min, sigma_max, model_range(job), note=False)
    kwargs["method"] = method
    if getattr(job, "init", None) is not None and sigma_min is None and sigma_max is None:
        init = job.init(steps)  # the pipeline's own default schedule: flow models from t = 1, with their shift
        if init is not None:
            kwargs.update(init=init, sigma_min=float(init[-1]), sigma_max=float(init[0]))
    kwargs.update(parse_options(opts))
    result = run_optimize(job, out=out, checkpoint=checkpoint, resume=resume, quiet=quiet, **kwargs)
    if not is_rank_zero():
        return
    click.echo(" ".join(f"{s:.6g}" for s in result.sigmas.tolist()))
    range_note(sigma_min, sigma_max, model_range(job))  # after the run: an error stays one line
    klub = f"KLUB {result.klub:.5g} ± {result.klub_stderr:.2g}, " if result.klub is not None else ""
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

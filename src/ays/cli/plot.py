"""``ays plot``: schedules on a log-sigma axis, and the KLUB of each interval."""

from __future__ import annotations

import click

from ._job import load_job
from .schedule import resolve


@click.command()
@click.argument("schedules", nargs=-1, required=True)
@click.option("--steps", "-n", type=int, default=None, help="Interpolate every schedule to this many steps.")
@click.option("--sigma-min", type=float, default=0.002, show_default=True, help="Range for heuristics.")
@click.option("--sigma-max", type=float, default=80.0, show_default=True, help="Range for heuristics.")
@click.option("--klub", "klub_problem", default=None, metavar="PROBLEM",
              help="Also estimate each interval's KLUB with PROBLEM's exact denoiser.")
@click.option("--samples", type=int, default=4096, show_default=True, help="Monte Carlo chains for --klub.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="schedules.png", show_default=True)
def plot(schedules: tuple[str, ...], steps: int | None, sigma_min: float, sigma_max: float,
         klub_problem: str | None, samples: int, seed: int, out: str) -> None:
    """Plot SCHEDULES (heuristic names, published tables, ays-schedule/1 files) on a log-sigma axis.

    \b
    ays plot schedule.json karras kl_optimal --steps 10 --klub gmm-8x8 -o compare.png
    """
    import torch

    from ..io import check_writable
    from ..plot import plot_schedules

    check_writable(out, what="--out", create_parents=True)
    named = {name: resolve(name, steps, sigma_min, sigma_max, {}) for name in schedules}
    per_interval = None
    if klub_problem is not None:
        from .. import klub

        job = load_job(klub_problem)
        per_interval = {}
        for name, sig in named.items():
            est = klub(job.denoiser, job.data, sig, samples=samples, generator=torch.Generator().manual_seed(seed))
            per_interval[name] = est.per_interval
            click.echo(f"{name}: KLUB {est.total:.5g} ± {est.total_stderr:.2g}", err=True)
    plot_schedules(named, out, klub=per_interval)
    click.echo(f"wrote {out}", err=True)

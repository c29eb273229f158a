"""``ays plot``: schedules on a log-sigma axis, and the KLUB of each interval."""

from __future__ import annotations

import click

from ..validate import AysError
from ._defaults import KLUB_NOTE, KLUB_SAMPLES, noise_range, range_note
from ._job import load_job
from ._ranks import in_session, say
from .schedule import resolve


@click.command()
@click.argument("schedules", nargs=-1, required=True)
@click.option("--steps", "-n", type=int, default=None, help="Interpolate every schedule to this many steps.")
@click.option("--sigma-min", type=float, default=None,
              help="Range for heuristics (default: the --klub problem's, else EDM's 0.002).")
@click.option("--sigma-max", type=float, default=None,
              help="Range for heuristics (default: the --klub problem's, else EDM's 80).")
@click.option("--klub", "klub_problem", default=None, metavar="PROBLEM",
              help="Also estimate each interval's KLUB with PROBLEM's exact denoiser.")
@click.option("--samples", type=int, default=KLUB_SAMPLES, show_default=True,
              help="Monte Carlo chains per KLUB estimate for --klub.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="schedules.png", show_default=True)
@in_session()
def plot(schedules: tuple[str, ...], steps: int | None, sigma_min: float | None, sigma_max: float | None,
         klub_problem: str | None, samples: int, seed: int, out: str) -> None:
    """Plot SCHEDULES (heuristic names, published tables, ays-schedule/1 files) on a log-sigma axis.

    Heuristics span --sigma-min/--sigma-max, else the --klub problem's range, else
    EDM's 0.002-80; published tables and files keep their own. Under torchrun the --klub
    draws are shared out across the ranks; rank 0 alone prints and draws.

    \b
    ays plot schedule.json karras kl_optimal --steps 10 --klub gmm-8x8 -o compare.png
    """
    import torch

    from .. import schedules as S
    from ..distributed import is_rank_zero
    from ..io import check_writable
    from ..plot import plot_schedules
    from ..validate import check_steps

    check_writable(out, what="--out", create_parents=True)
    check_steps(samples, name="--samples", minimum=2)
    job = load_job(klub_problem) if klub_problem is not None else None
    own = (None, None) if job is None else (job.sigma_min, job.sigma_max)
    # Files and tables first: a bad one fails before the range note, so an error stays one line.
    named = {name: resolve(name, steps, None, None, {}) for name in schedules if name not in S.HEURISTICS}
    heuristics = any(name in S.HEURISTICS for name in schedules)
    given = own
    if heuristics:  # one range (and at most one note, after the work) for all of them
        own = noise_range(sigma_min, sigma_max, own, note=False)
    elif sigma_min is not None or sigma_max is not None:
        raise AysError("--sigma-min/--sigma-max set the range of heuristics, and no heuristic is named")
    named = {name: named[name] if name in named else resolve(name, steps, None, None, {}, own) for name in schedules}
    per_interval = None
    if job is not None:
        from .. import klub

        say(KLUB_NOTE, err=True)
        per_interval = {}
        for name, sig in named.items():
            est = klub(job.denoiser, job.data, sig, samples=samples, generator=torch.Generator().manual_seed(seed))
            per_interval[name] = est.per_interval
            say(f"{name}: KLUB {est.total:.5g} ± {est.total_stderr:.2g} on {samples:,} chains", err=True)
    if not is_rank_zero():
        return
    plot_schedules(named, out, klub=per_interval)
    if heuristics:
        range_note(sigma_min, sigma_max, given)
    click.echo(f"wrote {out}", err=True)

"""``ays demo``: the main job on the embedded default, end to end in well under a minute.

Optimise a 10-step schedule for the ``gmm-8x8`` toy problem (an 8×8 grid of
Gaussians, as in the paper's Table 4) with its exact denoiser; find the schedules of
the peer optimisers :data:`PEERS` (GITS, LD3, OSS) at their default settings; sample
with all of them and with the heuristics from common random numbers (one noise per
seed for every schedule, ``ays.evaluate``); print NLL under the true density, sliced
W2 to fresh data and mode coverage of each schedule beside the denoiser calls its
optimiser spent (0 for a heuristic), and write the schedule file, the results, a plot
of the schedules and a picture of the samples.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click
import torch

from ._defaults import DEFAULT_METHOD, DEFAULT_SOLVER, EVAL_SAMPLES, SAMPLES
from ._progress import CountBar, StageBars, bars_wanted, progress_option
from ._ranks import in_session, say
from .optimize import run_optimize
from .schedule import parse_options

#: The optimisers the demo's method is compared with, each at its defaults (a few seconds each on gmm-8x8).
PEERS = ("gits", "ld3", "oss")

#: The heuristics the demo compares with (no denoiser calls).
HEURISTICS = ("karras", "loglinear", "time_uniform", "kl_optimal")


def _listed(names: list[str]) -> str:
    """``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@click.command()
@click.option("--problem", default="gmm-8x8", show_default=True, help="A named problem of ays.problems.")
@click.option("--model", "-m", default="exact", show_default=True, help="exact, trained, or a model file.")
@click.option("--solver", "-s", default=DEFAULT_SOLVER, show_default=True)
@click.option("--steps", "-n", type=int, default=10, show_default=True)
@click.option("--method", default=DEFAULT_METHOD, show_default=True,
              help="Optimiser (ays, coordinate, dp, gits, ld3, oss, dmn).")
@click.option("--samples", type=int, default=SAMPLES, show_default=True,
              help="Monte Carlo chains per KLUB estimate of the optimiser (as in `ays optimize`).")
@click.option("-O", "--option", "opts", multiple=True, metavar="KEY=VALUE",
              help="Method option, as in `ays optimize`, e.g. -O select_samples=512.")
@click.option("--eval-samples", type=int, default=EVAL_SAMPLES, show_default=True,
              help="Samples per schedule and seed (`ays evaluate --samples`).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds for the confidence intervals.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(file_okay=False), default="ays-out", show_default=True,
              help="Folder for the schedule file, plots and results.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads; the toy problem's rows are too small to gain from more.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@progress_option
@in_session()
def demo(problem: str, model: str, solver: str, steps: int, method: str, samples: int, opts: tuple[str, ...],
         eval_samples: int, seeds: int, seed: int, out: str, threads: int, quiet: bool,
         progress_bars: bool | None) -> None:
    """Optimise a schedule for a toy problem; compare it with the heuristics and with gits, ld3 and oss.

    Under torchrun every optimiser, every evaluation run and the samples of the picture share
    their rows across the ranks; rank 0 alone prints, plots and writes.
    """
    from .. import evaluate as ev
    from .. import optimize, schedules
    from .. import sample as run_sample
    from ..distributed import is_rank_zero
    from ..plot import plot_samples, plot_schedules
    from ..validate import AysError, check_steps
    from ._job import load_job

    # Refuse bad counts before the optimisation runs (evaluation comes after it).
    check_steps(seeds, name="--seeds")
    torch.set_num_threads(check_steps(threads, name="--threads"))
    check_steps(eval_samples, name="--eval-samples", minimum=2)
    os.makedirs(out, exist_ok=True)
    job = load_job(problem, model)
    # What this problem can be judged by, chosen before any work (a Gaussian has no modes to count).
    metrics = [m for m in ("nll", "sliced_w2", "modes") if m in ev.default_metrics(job.problem)]
    say(f"ays demo: {job.label}, solver {solver}, {steps} steps")
    start = time.perf_counter()
    path = os.path.join(out, f"{problem}-{solver}-{steps}.json")
    result = run_optimize(job, out=path, checkpoint=None, resume=False, quiet=quiet, progress_bars=progress_bars,
                          steps=steps, solver=solver, seed=seed, samples=samples, method=method,
                          sigma_min=job.sigma_min, sigma_max=job.sigma_max, **parse_options(opts))
    took = time.perf_counter() - start
    say(f"optimised with method {result.method!r} in {took:.1f} s, {result.calls:,} denoiser calls")
    say(f"{result.method} schedule: " + " ".join(f"{s:.4g}" for s in result.sigmas.tolist()))

    # The peers at their defaults: no -O options (those are the demo method's) and their own draws.
    found: dict[str, Any] = {}
    bars = bars_wanted(quiet, progress_bars) and is_rank_zero()
    for peer in (p for p in PEERS if p != result.method):
        start = time.perf_counter()
        peer_bars = StageBars(bars=bars, estimate=False, label=peer)  # the table keeps its lines: no estimate
        try:
            found[peer] = optimize(job.denoiser, job.data, noise=job.noise, steps=steps, solver=solver, seed=seed,
                                   method=peer, sigma_min=result.sigma_min, sigma_max=result.sigma_max,
                                   model=job.label or None, progress=peer_bars)
        except AysError as e:  # a peer that cannot serve this solver or model is left out, not the demo
            peer_bars.close()
            say(f"{peer}: left out: {e}")
            continue
        peer_bars.close()
        say(f"{peer}: {time.perf_counter() - start:.1f} s, {found[peer].calls:,} denoiser calls")
    found[result.method] = result

    named: dict[str, Any] = {**{h: h for h in HEURISTICS}, **found}
    runs = CountBar("evaluate", "run", bars)
    rows = ev.evaluate(job.denoiser, job.problem, named, [solver], [steps], seeds=seeds, samples=eval_samples,
                       metrics=metrics, model=job.label,
                       progress=lambda e: runs(e["done"], e["total"]) if e.get("event") == "run" else None)
    runs.close()
    for row in rows:  # what finding the schedule cost; a heuristic is a formula
        row["calls"] = int(found[row["schedule"]].calls) if row["schedule"] in found else 0
    say("")
    say(ev.format_table(rows, ["calls", *ev.metric_columns(metrics)]))
    say(f"(mean ± 95% half width over {seeds} seeds of {eval_samples} samples, the same noise for every "
        "schedule; lower is better; NLL alone rewards dropped modes; calls: denoiser calls spent finding "
        "the schedule, 0 for a heuristic" + (f"; {_listed(list(found)[:-1])} at their default settings)"
                                             if len(found) > 1 else ")"))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(2000, *job.problem.shape, generator=g)
    with torch.no_grad():
        x = run_sample(job.denoiser, noise, schedules.to_sampling(result.sigmas), solver=solver, generator=g)
    if not is_rank_zero():
        return
    # Its own name: the schedule file beside it keeps its name and its format (ays-schedule/1).
    results = ev.write_results(rows, out, name=f"results-{problem}-{solver}-{steps}")

    lo, hi = result.sigma_min, result.sigma_max
    plots = CountBar("plots", "plot", bars)
    plots(0, 2)
    scheds = {name: (spec.sigmas if name in found else schedules.build(spec, steps, lo, hi))
              for name, spec in named.items()}
    plot_path = plot_schedules(scheds, os.path.join(out, "schedules.png"), title=f"{problem}, {steps} steps")
    plots(1, 2)
    samples_path = plot_samples(x, os.path.join(out, "samples.png"), reference=job.problem.sample(2000, g),
                                title=f"{result.method} schedule, {solver}, {steps} steps")
    plots(2, 2)
    plots.close()
    say("")
    say(f"wrote {path} (schedule), {results['json']} and {results['csv']} (results), {plot_path} "
        f"(schedules), {samples_path} (samples)")

"""``ays evaluate``: sample a model with several schedules, solvers and step counts and measure the samples."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import click
import torch

from ..validate import AysError, check_budget
from ._defaults import DEFAULT_METHOD, DEFAULT_SOLVER, EVAL_SAMPLES, SAMPLES
from ._progress import bars_wanted, progress_option
from ._ranks import in_session, say

DEFAULT_SCHEDULES = "karras,loglinear,time_uniform,kl_optimal"


def split_list(text: str, what: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; an empty item is an error naming ``what``."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise AysError(f"--{what} must be a comma-separated list without empty items, got {text!r}")
    return items


def split_ints(text: str, what: str) -> list[int]:
    """``"5,10,20"`` -> ``[5, 10, 20]``."""
    out = []
    for item in split_list(text, what):
        try:
            value = int(item)
        except ValueError:
            raise AysError(f"--{what} must be comma-separated positive integers, got {item!r}") from None
        if value < 1:
            raise AysError(f"--{what} must be positive integers, got {value}")
        out.append(value)
    return out


def load_denoiser(model: str, problem: Any, problem_name: str) -> tuple[Callable[..., torch.Tensor], str]:
    """The denoiser ``--model`` names: ``exact`` (the problem's ideal denoiser), ``trained``
    (the shipped weights for this problem) or a path of an ``ays-model/1`` file."""
    if model == "exact":
        return problem.denoiser, "exact"
    from .. import train

    if model == "trained":
        net = train.pretrained(problem_name)
        label = f"trained:{problem_name}"
    elif os.path.exists(model):
        net = train.load_model(model)
        label = os.path.basename(model)
    else:
        raise AysError(f"--model must be exact, trained or an existing model file, got {model!r}")
    # One tiny call: a model for another data shape fails here with a clear message.
    probe = problem.sample(2, torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = net(probe, torch.ones(2))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise AysError(f"model {model!r} does not fit problem {problem_name!r} ({first})") from None
    if tuple(out.shape) != tuple(probe.shape):
        raise AysError(f"model {model!r} returns shape {tuple(out.shape[1:])}, problem needs {tuple(probe.shape[1:])}")
    return net, label


def _progress_bar(total: int, bars: bool) -> tuple[Callable[[dict[str, Any]], None] | None, Any]:
    if not bars:
        return None, None
    from tqdm import tqdm

    class LazyBar:
        """Opens with the first run, so an argument refused before any work prints only the error."""

        bar: Any = None

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    lazy = LazyBar()

    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "run":
            if lazy.bar is None:
                lazy.bar = tqdm(total=total, desc="evaluate", unit="run", file=sys.stderr, leave=False,
                                dynamic_ncols=True)
            lazy.bar.set_postfix_str(f"{event['schedule']} {event['solver']} n={event['steps']} seed={event['seed']}")
            lazy.bar.update(1)

    return progress, lazy


def _optimize_cells(denoiser: Any, prob: Any, solvers: list[str], steps: list[int], *, folder: str | None,
                    resume: bool, quiet: bool, progress_bars: bool | None, **kwargs: Any) -> dict[Any, torch.Tensor]:
    """``--optimize``: a schedule per (solver, steps), each cell with its stage bars, saved and resumed per cell."""
    from ..distributed import is_rank_zero
    from ..evaluate.optimized import optimize_cells
    from ._progress import StageBars

    bars = StageBars.for_command(quiet, progress_bars)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") != "cell":
            bars(event)
            return
        bars.close()  # the previous cell's last bar
        solver, n = event["solver"], event["steps"]
        bars.label = f"{solver} n={n}"
        if not quiet and is_rank_zero():
            what = f"optimised already ({event['saved']})" if event["saved"] else "optimising"
            bars.write(f"ays: {solver} at {n} steps ({event['done'] + 1} of {event['total']}): {what}")

    try:
        results = optimize_cells(denoiser, prob, solvers, steps, folder=folder, resume=resume, progress=on_event,
                                 **kwargs)
    except KeyboardInterrupt:
        bars.close()
        hint = f"; resume with the same command and --resume (cells in {folder})" if folder else ""
        click.echo(f"ays: interrupted{hint}", err=True)
        sys.exit(130)
    finally:
        bars.close()  # the error line of an AysError must not share a line with a bar
    return {key: res.sigmas for key, res in results.items()}


@click.command()
@click.argument("problem")
@click.option("--model", "-m", default="exact", show_default=True,
              help="exact (the problem's ideal denoiser), trained (shipped weights) or a model file.")
@click.option("--schedules", "-s", default=DEFAULT_SCHEDULES, show_default=True,
              help="Comma-separated schedule names or ays-schedule/1 JSON files.")
@click.option("--solvers", default=DEFAULT_SOLVER, show_default=True, help="Comma-separated solver names.")
@click.option("--steps", "-n", default="5,10,20", show_default=True, help="Comma-separated step counts.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Independent replicates (for the intervals).")
@click.option("--samples", type=int, default=EVAL_SAMPLES, show_default=True, help="Samples per run.")
@click.option("--metrics", default=None, help="Comma-separated metrics (default: those that fit the problem).")
@click.option("--sigma-min", type=float, default=None, help="Smallest noise level (default: the problem's).")
@click.option("--sigma-max", type=float, default=None, help="Largest noise level (default: the problem's).")
@click.option("--optimize", "do_optimize", is_flag=True,
              help="Also optimise a schedule per (solver, steps) with ays.optimize and evaluate it as 'ays'.")
@click.option("--method", default=DEFAULT_METHOD, show_default=True, help="Optimiser for --optimize.")
@click.option("--optimize-samples", type=int, default=SAMPLES,
              help="Monte Carlo chains per KLUB estimate for --optimize (`ays optimize --samples`; default: the "
                   "method's).")
@click.option("--budget", default=None, metavar="CALLS",
              help="For --optimize: denoiser calls each cell's optimisation may spend (50000, 50k, 1.5M; "
                   "default: the method's own).")
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="For --optimize: folder of each cell's schedule and the running cell's checkpoint "
                   "(default: --out).")
@click.option("--resume", is_flag=True,
              help="For --optimize: reuse the cells saved in the checkpoint folder and continue the interrupted one.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder for results.csv, results.json and the plots.")
@click.option("--markdown", is_flag=True, help="Print a markdown table.")
@progress_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no estimate lines.")
@in_session()
def evaluate(problem: str, model: str, schedules: str, solvers: str, steps: str, seeds: int, samples: int,
             metrics: str | None, sigma_min: float | None, sigma_max: float | None, do_optimize: bool, method: str,
             optimize_samples: int, budget: str | None, checkpoint: str | None, resume: bool, out: str | None,
             markdown: bool, progress_bars: bool | None, quiet: bool) -> None:
    """Sample PROBLEM's model with each schedule × solver × step count and print the metrics
    (mean ± 95 % t-interval over seeds; the same noise for every schedule within a seed).

    \b
    ays evaluate gmm-8x8 --solvers euler,dpmpp_2m_sde --steps 6,8,10 --out results/
    ays evaluate digits --model trained --schedules karras,loglinear,my.json --optimize

    Under torchrun each run's samples (and --optimize's work) are shared out across the
    ranks; every rank holds the single-process table, and rank 0 alone prints and writes it.
    """
    from .. import evaluate as ev
    from .. import problems
    from .. import solvers as solver_registry
    from ..distributed import is_rank_zero

    prob = problems.get(problem)
    sched_list = split_list(schedules, "schedules")
    solver_list = split_list(solvers, "solvers")
    for name in solver_list:
        solver_registry.info(name)  # unknown names fail before any work
    step_list = split_ints(steps, "steps")
    metric_list = None if metrics is None else split_list(metrics, "metrics")
    for label, value in (("seeds", seeds), ("samples", samples)):
        if value < 1:
            raise AysError(f"--{label} must be a positive integer, got {value}")
    calls = None if budget is None else check_budget(budget, name="--budget")
    if not do_optimize and (budget is not None or checkpoint is not None or resume):
        raise AysError("--budget, --checkpoint and --resume are options of --optimize")
    folder = checkpoint if checkpoint is not None else out
    if resume and folder is None:
        raise AysError("--resume needs the folder of the interrupted run: --checkpoint DIR or --out DIR")
    denoiser, label = load_denoiser(model, prob, problem)
    lo = prob.sigma_min if sigma_min is None else sigma_min
    hi = prob.sigma_max if sigma_max is None else sigma_max

    named: dict[str, Any] = {}
    for spec in sched_list:
        key = ev.schedule_label(spec)
        if key in named:
            raise AysError(f"schedule {key!r} is listed twice")
        ev.resolve_schedule(spec, step_list[0], solver_list[0], lo, hi, name=key)  # fail fast on a bad name/file
        named[key] = spec
    if do_optimize:
        from ..optimize import METHODS

        if method not in METHODS:
            raise AysError(f"unknown method {method!r}; choose one of: {', '.join(sorted(METHODS))}")
        if "ays" in named:
            raise AysError("a schedule named 'ays' is given and --optimize would add another")
        optimised = _optimize_cells(denoiser, prob, solver_list, step_list, folder=folder, resume=resume,
                                    quiet=quiet, progress_bars=progress_bars, sigma_min=lo, sigma_max=hi, seed=0,
                                    method=method, model=label, samples=optimize_samples, budget=calls)
        if out is not None and folder is not None and folder != out and is_rank_zero():  # beside the results
            from ..evaluate.optimized import cell_paths

            os.makedirs(out, exist_ok=True)
            for solver, n in optimised:
                shutil.copyfile(cell_paths(folder, solver, n)[0], cell_paths(out, solver, n)[0])
        named["ays"] = optimised

    progress, bar = _progress_bar(len(named) * len(solver_list) * len(step_list) * seeds,
                                  bars_wanted(quiet, progress_bars))
    try:
        rows = ev.evaluate(denoiser, prob, named, solver_list, step_list, seeds=seeds, samples=samples,
                           metrics=metric_list, progress=progress, sigma_min=lo, sigma_max=hi, model=label)
    finally:
        if bar is not None:
            bar.close()
    say(ev.format_table(rows, markdown=markdown))
    if out is not None and is_rank_zero():
        meta = {"problem": problem, "model": model, "schedules": sched_list, "solvers": solver_list,
                "steps": step_list, "seeds": seeds, "samples": samples, "optimize": do_optimize}
        paths = ev.write_results(rows, out, meta=meta)
        click.echo(f"wrote {', '.join(paths.values())}", err=True)

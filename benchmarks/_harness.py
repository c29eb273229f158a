"""The one harness behind every table in ``benchmarks/``: cells in, CSV + JSON + markdown out.

A benchmark script describes its table (which problems, models, schedules, solvers, step
counts, seeds) and what is specific to it (training a model, a cost measurement); this
module does the rest, the same way for every script:

- the command line every script shares (``--seeds``, ``--samples``, ``--threads``,
  ``--quick``, ``--out``; :func:`arguments`, :func:`parse`), where ``--quick`` swaps in
  small settings and writes to ``<out>-quick`` unless ``--out`` is given;
- the schedules found by an optimiser, one ``ays.optimize`` run per step count
  (:func:`optimise_per_steps`);
- a schedules table: the library's own :func:`ays.evaluate` (common random numbers across
  schedules within a seed, mean ± 95 % Student-t interval over seeds), plus the KLUB of
  every distinct schedule on one shared set of draws (:func:`evaluate_table`);
- the files: ``<name>.csv`` / ``<name>.json`` / ``<name>.md`` in the results folder, each
  with the exact command that produced it and a machine description (:func:`write_table`
  for schedules tables, :func:`write_rows` for any other list of rows);
- the verdict two cells share (:func:`verdict`): "better", "tied" or "worse" from their
  95 % intervals.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ays import evaluate as ev
from ays.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


# ------------------------------------------------------------------ command line
def arguments(description: str, name: str, script: str | None = None, *, cells: bool = True,
              **defaults: Any) -> argparse.ArgumentParser:
    """The parser every table script ``benchmarks/<script>.py`` (default ``<name>.py``) starts from;
    ``name`` names its results folder, ``defaults`` set ``--seeds``/``--samples``/``--threads``
    (``cells=False``: a table of other rows than schedules × seeds, no ``--seeds``/``--samples``)."""
    p = argparse.ArgumentParser(prog=f"{script or name}.py", description=description)
    if cells:
        p.add_argument("--seeds", type=int, default=defaults.get("seeds", 3))
        p.add_argument("--samples", type=int, default=defaults.get("samples", 4096), help="samples per cell and seed")
    p.add_argument("--threads", type=int, default=defaults.get("threads", 1), help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="small settings: a smoke run")
    p.add_argument("--out", default=None, help=f"results folder (default benchmarks/results/{name}[-quick])")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="write the tables only")
    p.set_defaults(_name=name)
    return p


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Mapping[str, Any],
          flags: Sequence[str] = ()) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick`` every option named in ``quick`` that was left at its default
    takes the quick value. Sets ``args.out`` (a :class:`Path`, created; the default folder's name
    gains ``-quick`` and ``-<flag>`` for each of ``flags`` set), ``args.command`` and the threads."""
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    name = args._name + ("-quick" if args.quick else "") + "".join(f"-{f}" for f in flags if getattr(args, f))
    args.out = Path(args.out) if args.out else RESULTS / name
    args.out.mkdir(parents=True, exist_ok=True)
    args.command = command(parser.prog, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    return args


def command(script: str, argv: Sequence[str]) -> str:
    """The exact command line: ``python benchmarks/<script> <arguments>``."""
    return f"python benchmarks/{script} {shlex.join(argv)}".strip()


def machine_line(seconds: float | None = None) -> str:
    """One line for a table's notes: CPU, cores, torch, threads (and the run's wall time)."""
    m = ev.machine_description()
    text = f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
    return text + (f"; {seconds / 60:.1f} min in all." if seconds is not None else ".")


# ------------------------------------------------------------------ the cells
def optimise_per_steps(denoiser: Any, data: Any, steps: Sequence[int], **options: Any) -> tuple[dict[int, Any], dict]:
    """``ays.optimize`` once per step count: ``({n: sigmas}, {"calls", "seconds", "options"})``."""
    from ays.optimize import optimize

    out: dict[int, Any] = {}
    cost: dict[str, Any] = {"calls": 0, "seconds": 0.0, "options": None}
    for n in steps:
        start = time.perf_counter()
        res = optimize(denoiser, data, steps=n, **options)
        cost["seconds"] += time.perf_counter() - start
        cost["calls"] += int(res.calls)
        cost["options"] = res.settings.get("options")
        out[n] = res.sigmas
        print(f"{options.get('method', 'ays')} {n} steps: {[round(v, 4) for v in res.sigmas.tolist()]}",
              file=sys.stderr)
    return out, cost


def evaluate_table(
    denoiser: Any, problem: Any, schedules: Mapping[str, Any], solvers: Sequence[str], steps: Sequence[int],
    *, seeds: int, samples: int, metrics: Sequence[str], model: str, klub_samples: int | None = None,
    klub_data: Any = None, **extra: Any,
) -> list[dict[str, Any]]:
    """Rows of :func:`ays.evaluate` for schedules × solvers × steps over ``seeds`` seeds, with ``klub`` /
    ``klub_err`` (± 1.96 s.e.) of each distinct schedule on one shared set of draws (common random numbers)."""
    from ays.klub import KlubDraws, klub

    rows = ev.evaluate(denoiser, problem, dict(schedules), list(solvers), list(steps), seeds=seeds,
                       samples=samples, metrics=list(metrics), model=model, **extra)
    if klub_samples:
        data = problem if klub_data is None else klub_data
        draws = KlubDraws.create(data, klub_samples, torch.Generator().manual_seed(12345))
        cache: dict[tuple[float, ...], Any] = {}
        for r in rows:
            key = tuple(r["sigmas"])
            if key not in cache:
                cache[key] = klub(denoiser, data, torch.tensor(r["sigmas"], dtype=torch.float64), draws=draws)
            r["klub"], r["klub_err"] = cache[key].total, 1.96 * cache[key].total_stderr
    return rows


# ------------------------------------------------------------------ verdicts
def verdict(a: float, a_err: float | None, b: float, b_err: float | None, *, lower_is_better: bool = True) -> str:
    """Cell ``a`` against cell ``b``: "tied" when their intervals ``value ± err`` overlap, else "better"
    or "worse" (lower is better unless ``lower_is_better=False``, e.g. precision and recall)."""
    ea, eb = a_err or 0.0, b_err or 0.0
    if abs(a - b) <= ea + eb:
        return "tied"
    return "better" if (a < b) == lower_is_better else "worse"


def verdicts(rows: Sequence[Mapping[str, Any]], metric: str, schedule: str, against: Sequence[str],
             *, lower_is_better: bool = True, by: Sequence[str] = ("solver", "steps")) -> dict[tuple[Any, ...], str]:
    """Per cell (``by``, default (solver, steps)): ``schedule`` against the best of ``against`` on
    ``metric`` (:func:`verdict`)."""
    cells: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in by), {})[r["schedule"]] = r
    sign = 1.0 if lower_is_better else -1.0
    out = {}
    for key, cell in cells.items():
        if schedule not in cell or not any(s in cell for s in against):
            continue
        best = min((cell[s] for s in against if s in cell), key=lambda r: sign * r[metric])
        me = cell[schedule]
        out[key] = verdict(me[metric], me.get(metric + "_err"), best[metric], best.get(metric + "_err"),
                           lower_is_better=lower_is_better)
    return out


def verdict_table(rows: Sequence[Mapping[str, Any]], metric: str, schedule: str, against: Sequence[str],
                  *, lower_is_better: bool = True, row_keys: Sequence[str] = ("solver",)) -> str:
    """:func:`verdicts` as a markdown table: a line per ``row_keys`` value, a column per step count."""
    got = verdicts(rows, metric, schedule, against, lower_is_better=lower_is_better, by=(*row_keys, "steps"))
    steps = sorted({k[-1] for k in got})
    lines = list(dict.fromkeys(k[:-1] for k in got))
    return markdown_table([*row_keys, *(f"steps={n}" for n in steps)],
                          [[*k, *(got.get((*k, n), "") for n in steps)] for k in lines])


# ------------------------------------------------------------------ the files
def markdown_table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A markdown table: a header, a rule, one line per body row."""
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, b)) + " |" for b in body])


def write_markdown(out: Path, name: str, title: str, notes: Sequence[str], sections: Sequence[tuple[str, str]],
                   cmd: str, seconds: float | None = None) -> str:
    """``<name>.md``: the title, the command, the machine, the notes, then ``(heading, table)`` sections."""
    parts = [title, "", f"Command: `{cmd}`  ", machine_line(seconds) + "  ", *[n + "  " for n in notes]]
    parts[-1] = parts[-1].rstrip()
    for heading, table in sections:
        parts += ["", heading, "", table] if heading else ["", table]
    text = "\n".join(parts) + "\n"
    atomic_write_text(out / f"{name}.md", text)
    return text


def write_machine(out: Path) -> dict[str, Any]:
    """``machine.json``: where the table was made (:func:`ays.evaluate.machine_description`)."""
    machine = ev.machine_description()
    atomic_write_text(out / "machine.json", json.dumps(machine, indent=2) + "\n")
    return machine


def write_table(rows: list[dict[str, Any]], out: Path, name: str, *, title: str, notes: Sequence[str],
                pivots: Sequence[tuple[str, str]], cmd: str, seconds: float | None = None,
                row_keys: Sequence[str] = ("solver", "schedule"), meta: Mapping[str, Any] | None = None,
                plot: bool = True, verdict_of: tuple[str, str, Sequence[str]] | None = None) -> str:
    """A schedules table: ``<name>.csv``/``.json`` (:func:`ays.evaluate.write_results`, the command and the
    machine in ``meta``), ``machine.json``, and ``<name>.md`` with one pivot (rows × steps) per
    ``(metric, heading)`` in ``pivots``, and last, for ``verdict_of = (metric, schedule, against)``,
    the :func:`verdict_table` of ``schedule`` against the best of ``against``. Returns the markdown."""
    machine = write_machine(out)
    ev.write_results(rows, out, name=name, plot=plot, meta={"command": cmd, "machine": machine, **(meta or {})})
    sections = [(f"### {heading}", ev.format_pivot(rows, metric, row_keys=row_keys)) for metric, heading in pivots]
    if verdict_of is not None:
        metric, schedule, against = verdict_of
        higher = metric in ("precision", "recall")
        sections.append((f"### Verdict: {schedule} against the best of {', '.join(against)} on {metric} "
                         "(better / tied / worse: 95 % intervals apart or overlapping)",
                         verdict_table(rows, metric, schedule, against, lower_is_better=not higher,
                                       row_keys=[k for k in row_keys if k != "schedule"])))
    return write_markdown(out, name, title, notes, sections, cmd, seconds)


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return "" if value is None else value


def write_rows(rows: Sequence[Mapping[str, Any]], out: Path, name: str, *, cmd: str,
               meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Any other table: ``<name>.csv`` (one column per key of the rows, lists space-separated) and
    ``<name>.json`` (``{"command", "machine", **meta, "rows"}``). The markdown is the script's own."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    writer.writerows([[_cell(r.get(k)) for k in keys] for r in rows])
    doc = {"command": cmd, "machine": ev.machine_description(), **(meta or {}), "rows": [dict(r) for r in rows]}
    return {"csv": atomic_write_text(out / f"{name}.csv", buf.getvalue()),
            "json": atomic_write_json(out / f"{name}.json", doc)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def sample_grid(denoiser: Any, schedules: Mapping[str, torch.Tensor], solver: str, noise: torch.Tensor,
                panels: Callable[[torch.Tensor], list[torch.Tensor]], path: Path, title: str) -> None:
    """One row of images per schedule, every row from the same ``noise`` and solver noise (common random
    numbers); ``panels(x)`` turns a row's samples into its images, left to right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ays
    from ays.plot import save_figure

    rows = []
    for sig in schedules.values():
        with torch.no_grad():
            x = ays.sample(denoiser, noise, ays.schedules.to_sampling(sig), solver=solver,
                           generator=torch.Generator().manual_seed(8))
        rows.append(panels(x))
    cols = len(rows[0])
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.55, len(rows) * 0.65), squeeze=False)
    for i, (name, images) in enumerate(zip(schedules, rows)):
        for j, image in enumerate(images):
            axes[i][j].imshow(image.clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
        axes[i][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)

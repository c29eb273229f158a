"""Optimised schedules for an evaluation: one :func:`ays.optimize` run per (solver, steps) cell, resumable per cell.

``ays evaluate --optimize`` compares an optimised schedule with the heuristics in every cell
of its grid, so it runs the optimiser once per (solver, steps). Those runs are the long part
of the command; :func:`optimize_cells` keeps them in a folder so that an interrupted
evaluation loses at most part of one cell:

- a finished cell's schedule is saved as ``FOLDER/ays_<solver>_<steps>.json``
  (``ays-schedule/1``, atomically);
- the running cell checkpoints to ``FOLDER/ays_<solver>_<steps>.ckpt.json`` (the method's
  own checkpoint, :mod:`ays.optimize.checkpoint`), removed once its schedule is saved.

With ``resume=True`` a cell whose schedule is saved is read back, not recomputed (after its
recorded settings are checked against this request), and the interrupted cell continues
from its checkpoint; the methods derive every draw from ``(seed, stage, ...)``, so the
schedules, and hence the evaluation, equal those of an uninterrupted run.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..distributed import is_rank_zero
from ..validate import AysError

__all__ = ["cell_paths", "optimize_cells", "remove_checkpoint"]

Progress = Callable[[dict[str, Any]], None]

#: the settings a saved cell must share with the request to be reused (besides its range and budget)
_SAME = ("method", "seed", "samples", "model", "early_stopping")


def cell_paths(folder: str | os.PathLike[str], solver: str, steps: int) -> tuple[str, str]:
    """``(schedule file, checkpoint file)`` of one cell in ``folder``."""
    base = os.path.join(os.fspath(folder), f"ays_{solver}_{steps}")
    return base + ".json", base + ".ckpt.json"


def _mismatch(saved: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The settings where a saved cell differs from the request (floats of the range compared to rounding)."""
    out = []
    for key, value in want.items():
        have = saved.get(key)
        if isinstance(value, float) and isinstance(have, (int, float)):
            same = math.isclose(float(have), value, rel_tol=1e-9)
        else:
            same = have == value
        if not same:
            out.append(f"{key}: file has {have!r}, this run has {value!r}")
    return out


def remove_checkpoint(checkpoint: str) -> None:
    """Delete a finished run's checkpoint, the teacher outputs beside it (``NAME.teacher.pt``, method
    ``ays``) and the temporary files a killed write of either left (``.NAME.*.tmp``)."""
    folder, name = os.path.split(os.path.abspath(checkpoint))
    left = glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp"))
    for path in [checkpoint, checkpoint + ".teacher.pt", *left]:
        if os.path.isfile(path):
            os.unlink(path)


def optimize_cells(
    denoiser: Any,
    problem: Any,
    solvers: Sequence[str],
    steps: Sequence[int],
    *,
    folder: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    sigma_min: float,
    sigma_max: float,
    seed: int = 0,
    method: str | None = None,
    samples: int | None = None,
    budget: int | None = None,
    model: str | None = None,
    **options: Any,
) -> dict[tuple[str, int], Any]:
    """One :class:`~ays.optimize.OptimizeResult` per ``(solver, steps)``, saved in and resumed from ``folder``.

    Args:
        denoiser, problem: as for :func:`ays.optimize` (``problem`` is its ``data``).
        solvers, steps: the grid; cells run solver by solver, each over the step counts.
        folder: where cells are saved and checkpointed (module docstring); None: nothing is kept.
        resume: reuse saved cells and continue the interrupted one (needs ``folder``).
        progress: gets ``{"event": "cell", "solver", "steps", "done", "total", "saved"}`` before
            each cell (``saved``: the path it is read from, else None), then the cell's own
            optimisation events (:mod:`ays.optimize.stages`); exceptions propagate (to interrupt).
        sigma_min, sigma_max, seed, method, samples, budget, model, options: passed to
            :func:`ays.optimize` for every cell (``method``/``samples`` None: its defaults).

    Returns:
        ``{(solver, steps): result}`` in grid order.
    """
    from ..optimize import load_schedule, optimize

    if resume and folder is None:
        raise AysError("resume needs a folder of saved cells (--checkpoint DIR or --out DIR)")
    if resume and folder is not None and not os.path.isdir(folder):
        raise AysError(f"--resume: no folder {os.fspath(folder)!r} to resume from")
    kwargs: dict[str, Any] = dict(sigma_min=sigma_min, sigma_max=sigma_max, seed=seed, model=model, **options)
    for key, value in (("method", method), ("samples", samples), ("budget", budget)):
        if value is not None:
            kwargs[key] = value
    cells = [(solver, n) for solver in solvers for n in steps]
    out: dict[tuple[str, int], Any] = {}
    for index, (solver, n) in enumerate(cells):
        schedule_file, checkpoint = cell_paths(folder, solver, n) if folder is not None else (None, None)
        saved = schedule_file if resume and schedule_file is not None and os.path.isfile(schedule_file) else None
        if progress is not None:
            progress({"event": "cell", "solver": solver, "steps": n, "done": index, "total": len(cells),
                      "saved": saved})
        if saved is not None:
            result = load_schedule(saved)
            wrong = _mismatch(result.settings, _settings_wanted(kwargs, solver, n))
            if wrong:
                raise AysError(f"--resume: {saved} was optimised with other settings ({'; '.join(wrong)}); "
                               "remove it or run without --resume")
            out[(solver, n)] = result
            continue
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
        go_on = resume and checkpoint is not None and os.path.isfile(checkpoint)
        result = optimize(denoiser, problem, steps=n, solver=solver, checkpoint=checkpoint, resume=go_on,
                          progress=progress, **kwargs)
        if schedule_file is not None and checkpoint is not None:
            result.save(schedule_file)  # atomic; rank 0 only under torchrun
            if is_rank_zero():
                remove_checkpoint(checkpoint)
        out[(solver, n)] = result
    return out


def _settings_wanted(kwargs: dict[str, Any], solver: str, steps: int) -> dict[str, Any]:
    """What a saved cell's ``settings`` must hold: the values this request gives (one left unset is the method's)."""
    want: dict[str, Any] = {"steps": steps, "solver": solver}
    for key in _SAME:
        if kwargs.get(key) is not None and key not in want:
            want[key] = kwargs[key]
    want["sigma_min"], want["sigma_max"] = float(kwargs["sigma_min"]), float(kwargs["sigma_max"])
    if kwargs.get("budget") is not None:
        want["budget"] = kwargs["budget"]
    return want

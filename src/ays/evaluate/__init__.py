"""Evaluate schedules: sample a model with schedules × solvers × step counts and measure the samples.

A schedule is judged by what it does to samples, not by its KLUB (the bound is not the
error; AYS, arXiv 2404.14507, §3.3 and App. A.3). :func:`evaluate` draws ``samples``
samples for every (schedule, solver, steps) and every seed, measures them against the
truth, and summarises each cell over the seeds as a mean with a Student-t confidence
interval (95 %):

    mean ± t_{0.975, k-1} · sd / sqrt(k),     k = number of seeds.

The rooms, in the order an evaluation uses them:

- :mod:`.seeds`: common random numbers; within one seed every schedule and solver
  starts from the same noise and is judged against the same reference samples.
- :mod:`.stats`: the Student-t interval over seeds (:func:`confidence_interval`).
- :mod:`.schedule_specs`: what may be passed as a schedule (names, files,
  :class:`~ays.optimize.OptimizeResult`, levels, callables, per-(solver, steps) dicts)
  and the levels it resolves to (:func:`resolve_schedule`, :func:`schedule_label`).
- :mod:`.measure`: the metrics (:data:`METRICS`), which a problem gets
  (:func:`default_metrics`) and computing them.
- :mod:`.run`: the driver, :func:`evaluate`.
- :mod:`.optimized`: an optimised schedule per (solver, steps) cell, saved and resumed per
  cell (:func:`~.optimized.optimize_cells`, what ``ays evaluate --optimize`` runs).
- :mod:`.results`: results files (:func:`write_results`, :func:`read_results`,
  :data:`FORMAT`) and :func:`machine_description`; :mod:`.tables`: results as text
  (:func:`format_table`, :func:`format_pivot`).

``ays.evaluate`` is this package and its main function: ``ays.evaluate(...)`` calls
:func:`evaluate`, ``ays.evaluate.write_results(...)`` reaches the rest.
"""

from __future__ import annotations

from .._callable import make_callable
from .measure import METRICS, default_metrics, metric_columns
from .results import FORMAT, machine_description, read_results, write_results
from .run import evaluate
from .schedule_specs import resolve_schedule, schedule_label
from .stats import confidence_interval
from .tables import format_pivot, format_table

__all__ = [
    "FORMAT",
    "METRICS",
    "confidence_interval",
    "default_metrics",
    "evaluate",
    "format_pivot",
    "format_table",
    "machine_description",
    "metric_columns",
    "read_results",
    "resolve_schedule",
    "schedule_label",
    "write_results",
]

make_callable(__name__, evaluate)

"""A run's cost as a plan in denoiser calls: its stages, their progress and the wall-time estimate.

A denoiser call is one row of one model evaluation (:attr:`ays.device.ModelCall.rows`
counts them); it is the unit of ``budget=`` and of every total shown to the user. A
method states its plan once it knows it (:meth:`Meter.plan`: the calls of each named
stage, e.g. ``table``, ``teacher``, ``candidates``, ``refine``, ``validate``) and
runs each stage inside :meth:`Meter.stage`. The meter then reports through the task's
``progress(event)``:

- ``{"event": "plan", "calls": total, "stages": {name: calls, ...}}`` when the plan is made, and
  again if the method refines it on the way (``ays``, once it knows how many of its candidates
  coincide);
- ``{"event": "estimate", "seconds": s, "seconds_per_call": r, "calls": total, "other_seconds": o}`` once,
  when the first calls have been timed (the CLI prints "about 40 min on this device"); ``o``: the
  method's own estimate of its work that is not the denoiser (``ays``'s evidence: sorting for the
  sliced W2 and its bootstrap), included in ``s`` (0 when the method has none);
- ``{"event": "calls", "stage": name, "done": d, "total": t}`` after every model call in a
  stage (``t``: this stage's planned calls on this process).

Under ``torch.distributed`` the totals are this rank's share (a stage of ``c`` calls is
``ceil(c / world)`` per rank), because each rank counts its own rows.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import distributed as _dist
from ..device import ModelCall

__all__ = ["Meter"]

Progress = Callable[[dict[str, Any]], None]

#: The estimate is made once this many calls or this many seconds have been timed, whichever first.
ESTIMATE_AFTER_CALLS = 0.02
ESTIMATE_AFTER_SECONDS = 2.0


class Meter:
    """Counts a run's denoiser calls by stage and reports them (module docstring)."""

    def __init__(self, denoiser: Any, progress: Progress | None) -> None:
        self.model = denoiser if isinstance(denoiser, ModelCall) else None
        self.progress = progress
        self.total = 0
        self.stages: dict[str, int] = {}
        self._estimated = False
        self._timed_rows = 0
        self._timed_seconds = 0.0
        self._done: dict[str, int] = {}  #: calls so far by stage (a stage may be entered many times)
        self._other: Callable[[], float] | None = None

    @property
    def rows(self) -> int:
        """Denoiser rows this process has evaluated so far (0 for a denoiser not run through a ModelCall)."""
        return 0 if self.model is None else self.model.rows

    def _emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(event)

    def plan(self, stages: dict[str, int], other: Callable[[], float] | None = None) -> None:
        """The planned calls of each stage (all processes together), reported; a later call refines the plan.

        ``other()``: seconds of the run's work that is not the denoiser, asked for once, for the estimate
        (kept from an earlier plan when not given).
        """
        if other is not None:
            self._other = other
        self.stages = {k: int(v) for k, v in stages.items()}
        self.total = sum(self.stages.values())
        self._emit({"event": "plan", "calls": self.total, "stages": dict(self.stages)})

    @contextlib.contextmanager
    def stage(self, name: str, calls: int | None = None) -> Iterator[None]:
        """Run a stage of ``calls`` planned calls (default: its planned calls); report every model call."""
        planned = self.stages.get(name, 0) if calls is None else int(calls)
        total = math.ceil(planned / _dist.world_size())
        if self.model is None:
            yield
            return
        last = time.perf_counter()

        def listener(rows: int) -> None:
            nonlocal last
            now = time.perf_counter()
            self._done[name] = done = self._done.get(name, 0) + rows
            self._time(rows, now - last)
            last = now
            self._emit({"event": "calls", "stage": name, "done": done, "total": max(total, done)})

        previous, self.model.listener = self.model.listener, listener
        try:
            yield
        finally:
            self.model.listener = previous

    def _time(self, rows: int, seconds: float) -> None:
        """Time the first calls; once enough are timed, report the estimate of the whole run."""
        if self._estimated or self.total == 0:
            return
        self._timed_rows += rows
        self._timed_seconds += seconds
        if self._timed_rows >= ESTIMATE_AFTER_CALLS * self.total or self._timed_seconds >= ESTIMATE_AFTER_SECONDS:
            self._estimated = True
            per_call = self._timed_seconds / self._timed_rows
            share = math.ceil(self.total / _dist.world_size())
            other = 0.0 if self._other is None else float(self._other())
            self._emit({"event": "estimate", "seconds": per_call * share + other, "seconds_per_call": per_call,
                        "calls": self.total, "other_seconds": other})

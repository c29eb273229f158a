"""What the commands show while an optimisation runs: one bar per stage and the wall-time estimate.

The methods report through ``progress(event)`` (the contract of :mod:`ays.optimize.stages`):
a ``plan``, one ``estimate`` once the first calls are timed, and ``calls`` events
``{"stage", "done", "total"}`` after every model call. :class:`StageBars` turns them into

- one tqdm bar per stage, named by the stage (``table``, ``teacher``, ``candidates``,
  ``refine``, ``validate``, ...), counting denoiser calls (unit ``call``, scaled: 12.3k)
  towards the stage's planned calls, with tqdm's own rate and time left;
- one line on stderr for the estimate: ``ays: about 40 min on this device (50,000
  denoiser calls, 0.048 s per call)``, which names the method's other work when it has some
  (``ays``: "; and about 12 s of evidence, not the model", included in the total).

Events of the older kinds still show: ``sweep`` (a bar of sweeps with the KLUB) and ``chunk``
(the KLUB table's chains), until a method reports ``calls``. Bars are off under ``-q``, on
every rank but 0, and when stderr is not a terminal unless ``--progress`` asks for them; the
estimate line needs no terminal (it is one line, useful in a log), only not ``-q`` and rank 0.
"""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["CountBar", "StageBars", "bars_wanted", "estimate_line", "human_duration", "progress_option"]


def human_duration(seconds: float) -> str:
    """``seconds`` as a person says it (two digits or whole units): ``0.4 s``, ``12 s``, ``1.5 min``, ``30 h``."""
    s = max(float(seconds), 0.0)
    if s < 10:
        return f"{s:.2g} s"
    if s < 90:
        return f"{round(s)} s"
    if s < 600:
        return f"{s / 60:.2g} min"  # 1.5 min, not "2 min" for 91 s
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    hours = s / 3600
    return f"{hours:.1f} h" if hours < 10 else f"{round(hours)} h"


def _digits(value: float) -> str:
    """Two significant digits, without the exponent ``:.2g`` writes from 99.5 up (``1e+02``)."""
    return f"{value:.2g}" if value < 99.5 else str(round(value))


def _per_call(seconds: float) -> str:
    """Seconds per denoiser call, two significant digits, in s, ms or µs so that no exponent shows."""
    if seconds >= 0.01:
        return f"{_digits(seconds)} s"
    if seconds >= 1e-3:
        return f"{_digits(seconds * 1e3)} ms"
    return f"{_digits(seconds * 1e6)} µs"


def estimate_line(event: dict[str, Any], label: str = "") -> str:
    """The one line an ``estimate`` event prints (``label``: the cell of ``ays evaluate``, else empty)."""
    where = f"{label}: " if label else ""
    other = float(event.get("other_seconds") or 0.0)
    also = f"; and about {human_duration(other)} of evidence, not the model" if other > 0 else ""
    return (f"ays: {where}about {human_duration(event['seconds'])} on this device "
            f"({int(event['calls']):,} denoiser calls, {_per_call(event['seconds_per_call'])} per call{also})")


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or odd stream
        return False


def bars_wanted(quiet: bool, progress: bool | None) -> bool:
    """Whether to draw bars: never under ``-q`` or off rank 0; else ``--progress/--no-progress``, else a terminal."""
    from ..distributed import is_rank_zero

    if quiet or not is_rank_zero():
        return False
    return _stderr_is_terminal() if progress is None else bool(progress)


def progress_option(f: Any) -> Any:
    """The ``--progress/--no-progress`` flag of the commands that optimise."""
    return click.option("--progress/--no-progress", "progress_bars", default=None,
                        help="Progress bars on stderr (default: when stderr is a terminal); -q turns them off.")(f)


class StageBars:
    """``progress(event)`` for :func:`ays.optimize`: a tqdm bar per stage and the estimate line (module docstring)."""

    def __init__(self, *, bars: bool, estimate: bool, label: str = "") -> None:
        self.bars = bars
        self.estimate = estimate
        self.label = label
        self.bar: Any = None
        self.kind: tuple[str, str] | None = None  #: (event kind, stage) of the open bar
        self.counted = False  #: a ``calls`` event came: the older kinds only annotate the bar

    @classmethod
    def for_command(cls, quiet: bool, progress: bool | None, label: str = "") -> StageBars:
        """Bars as :func:`bars_wanted` decides; the estimate line unless ``-q`` or off rank 0."""
        from ..distributed import is_rank_zero

        return cls(bars=bars_wanted(quiet, progress), estimate=not quiet and is_rank_zero(), label=label)

    # ------------------------------------------------------------------ events
    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "estimate":  # (a "plan" needs no display: each "calls" event carries its stage's total)
            if self.estimate:
                self.write(estimate_line(event, self.label))
        elif kind == "calls":
            self.counted = True
            self._calls(str(event.get("stage", "")), int(event.get("done", 0)), int(event.get("total", 0) or 0))
        elif kind == "sweep":
            self._sweep(event)
        elif kind == "chunk" and not self.counted:
            self._open(("chunk", "table"), "table", int(event.get("samples", 0) or 0), unit="chain", scale=True)
            self._advance(int(event.get("chains", 0)))

    def _calls(self, stage: str, done: int, total: int) -> None:
        # A new stage gets a fresh bar, as does the same stage of the next run (its count starts again).
        if self.kind != ("calls", stage) or (self.bar is not None and done < self.bar.n):
            self._open(("calls", stage), stage, total, unit="call", scale=True, force=True)
        if self.bar is not None and total and self.bar.total != max(total, done):
            self.bar.total = max(total, done)  # a stage may spend past its plan; never show > 100 %
        self._advance(done)

    def _sweep(self, event: dict[str, Any]) -> None:
        post = {"stage": f"{event['steps']} steps"} if "steps" in event else {}
        for key in ("klub", "heldout"):
            if isinstance(event.get(key), (int, float)):
                post[key] = f"{event[key]:.5g}"
        if not self.counted:
            self._open(("sweep", ""), "optimising", 0, unit="sweep", scale=False)
            self._advance((self.bar.n + 1) if self.bar is not None else 0)
        if self.bar is not None and post:
            self.bar.set_postfix(post, refresh=False)

    # -------------------------------------------------------------------- bars
    def _open(self, kind: tuple[str, str], name: str, total: int, *, unit: str, scale: bool,
              force: bool = False) -> None:
        if self.kind == kind and not force:
            return
        self.close()
        self.kind = kind
        if not self.bars:
            return
        from tqdm import tqdm

        desc = f"{self.label} {name}" if self.label else name
        self.bar = tqdm(total=total or None, desc=desc, unit=unit, unit_scale=scale, file=sys.stderr, leave=False,
                        dynamic_ncols=True)

    def _advance(self, done: int) -> None:
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def write(self, line: str) -> None:
        """One line on stderr that does not break an open bar."""
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        """Close the open bar (before an error line, or between cells and stages)."""
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self.kind = None


class CountBar:
    """A bar of work that is not denoiser calls (``ays demo``'s peers' evaluation, a pipeline's own
    samples): ``bar(done, total)`` after each unit; it opens with the first, so an error before any
    work prints only its line. Off unless ``bars``."""

    def __init__(self, name: str, unit: str, bars: bool) -> None:
        self.name, self.unit, self.bars = name, unit, bars
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.bars:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, desc=self.name, unit=self.unit, file=sys.stderr, leave=False,
                            dynamic_ncols=True)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None

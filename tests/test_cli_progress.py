"""What ``ays optimize`` and ``ays evaluate --optimize`` show while they run, ``--budget``, and per-cell resume.

A fake method (registered for the test) spends a known number of denoiser calls in two
stages through ``task.meter`` and sleeps a known time per call, so the estimate has a floor
it cannot go below; it checkpoints between its stages and can be told to stop there (as
Ctrl-C would), which is how the per-cell resume of ``ays evaluate --optimize`` is tested.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import ays
from ays.cli import _progress, main
from ays.data import draw
from ays.optimize import METHODS, OptimizeResult
from ays.optimize.checkpoint import load_state, save_state

#: the fake method's plan: calls per stage, and rows per model call
PLAN = {"table": 200, "refine": 100}
ROWS = 50
SLEEP = 0.004  #: seconds slept before each model call of ROWS rows: the estimate's floor per call

ESTIMATE = re.compile(r"^ays: (?:(?P<label>[^:]+): )?about (?P<num>[\d.]+) (?P<unit>s|min|h) on this device "
                      r"\((?P<calls>[\d,]+) denoiser calls, (?P<per>[\d.]+) (?P<per_unit>s|ms|µs) per call\)$")


class Fake:
    """The fake method's log and switches (one per test, see the fixture)."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, str]] = []  # (steps, stage) of every stage that ran
        self.stop_at: int | None = None  # interrupt the run of this step count after its first stage
        self.budgets: list[int | None] = []

    def __call__(self, task: Any, **options: Any) -> OptimizeResult:
        self.budgets.append(task.budget)
        task.meter.plan(PLAN)
        settings = task.settings(dict(options))
        path = task.checkpoint_path()
        state = load_state(path, settings) if task.resume and path is not None else None
        x, _ = draw(task.data, ROWS, torch.Generator().manual_seed(0))
        sigma = torch.full((ROWS,), 1.0, dtype=x.dtype)
        if state is None:
            self._stage(task, "table", x, sigma)
            if path is not None:
                save_state(path, settings, {"stage": "refine"})
            if self.stop_at == task.steps:
                raise KeyboardInterrupt
        self._stage(task, "refine", x, sigma)
        sigmas = ays.schedules.karras(task.steps, task.sigma_min, task.sigma_max)
        return OptimizeResult(sigmas=sigmas, steps=task.steps, solver=task.solver, method=task.method,
                              calls=task.meter.rows, settings=settings, model=task.model)

    def _stage(self, task: Any, name: str, x: torch.Tensor, sigma: torch.Tensor) -> None:
        self.runs.append((task.steps, name))
        with task.meter.stage(name):
            for _ in range(PLAN[name] // ROWS):
                time.sleep(SLEEP)
                task.denoiser(x, sigma)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    method = Fake()
    monkeypatch.setitem(METHODS, "fake", method)
    return method


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def optimize_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["optimize", "gmm-8x8", "--method", "fake", "--steps", "4", "--out", str(tmp_path / "s.json"), *extra]


def estimate_lines(err: str) -> list[re.Match[str]]:
    return [m for line in err.replace("\r", "\n").splitlines() if (m := ESTIMATE.match(line.strip()))]


def seconds(m: re.Match[str], num: str, unit: str) -> float:
    return float(m[num]) * {"s": 1, "min": 60, "h": 3600, "ms": 1e-3, "µs": 1e-6}[m[unit]]


# ------------------------------------------------------------------ durations
@pytest.mark.parametrize("s, text", [(0.4, "0.4 s"), (3.25, "3.2 s"), (42, "42 s"), (2400, "40 min"),
                                     (5400, "1.5 h"), (36 * 3600, "36 h")])
def test_human_duration_reads_back_within_rounding(s: float, text: str) -> None:
    assert _progress.human_duration(s) == text


def test_human_duration_never_understates_by_more_than_rounding() -> None:
    # Read back, every duration is within 6 % of the truth (two significant digits, or whole units above 90).
    for s in [0.013, 0.9, 9.9, 10.4, 89, 91, 600, 5399, 5401, 7e4, 3e5]:
        num, unit = _progress.human_duration(s).split()
        back = float(num) * {"s": 1, "min": 60, "h": 3600}[unit]
        assert abs(back - s) <= 0.06 * s, (s, num, unit)


# ---------------------------------------------------------------- the estimate
def test_estimate_line_is_printed_without_a_terminal_and_is_plausible(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: Fake) -> None:
    code, _out, err = run(optimize_args(tmp_path), capsys)
    assert code == 0, err
    found = estimate_lines(err)
    assert len(found) == 1, err
    m = found[0]
    total = sum(PLAN.values())
    assert int(m["calls"].replace(",", "")) == total
    per = seconds(m, "per", "per_unit")
    assert per >= SLEEP / ROWS * 0.9  # it timed calls that slept at least this long
    # The duration is the calls times the time per call (to the rounding of both numbers).
    assert seconds(m, "num", "unit") == pytest.approx(per * total, rel=0.1)
    # No terminal and no --progress: no bars (tqdm's bar is drawn with '|' and "call").
    assert "call/s" not in err and "table" not in err


def test_quiet_silences_the_estimate_and_the_bars(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  fake: Fake) -> None:
    code, _out, err = run(optimize_args(tmp_path, "-q", "--progress"), capsys)
    assert code == 0, err
    assert not estimate_lines(err) and "table" not in err and "call" not in err.split("denoiser calls")[0]


def test_progress_forces_one_bar_per_stage_named_by_the_stage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: Fake) -> None:
    code, _out, err = run(optimize_args(tmp_path, "--progress"), capsys)
    assert code == 0, err
    shown = err.replace("\r", "\n")
    for stage, calls in PLAN.items():
        # tqdm's unit_scale writes the stage's planned calls as its total ("/200", "/100").
        assert re.search(rf"^{stage}:.*/{calls}(\.0+)? ", shown, flags=re.M), shown
    assert len(estimate_lines(err)) == 1


def test_no_progress_wins_over_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: Fake,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "_stderr_is_terminal", lambda: True)
    code, _out, err = run(optimize_args(tmp_path, "--no-progress"), capsys)
    assert code == 0 and "table:" not in err
    code, _out, err = run(optimize_args(tmp_path), capsys)  # a terminal: bars by default
    assert code == 0 and "table:" in err


def test_other_ranks_show_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("ays.distributed.is_rank_zero", lambda: False)
    bars = _progress.StageBars.for_command(quiet=False, progress=True)
    assert not bars.bars and not bars.estimate
    bars({"event": "estimate", "seconds": 10.0, "seconds_per_call": 0.1, "calls": 100})
    bars({"event": "calls", "stage": "table", "done": 5, "total": 100})
    bars.close()
    assert capsys.readouterr().err == ""


def test_bars_follow_the_stages_and_old_events(capsys: pytest.CaptureFixture[str]) -> None:
    bars = _progress.StageBars(bars=True, estimate=True)
    bars({"event": "calls", "stage": "teacher", "done": 10, "total": 40})
    first = bars.bar
    assert first.desc == "teacher" and first.total == 40 and first.n == 10 and first.unit == "call"
    bars({"event": "calls", "stage": "teacher", "done": 30, "total": 40})
    assert bars.bar is first and first.n == 30
    bars({"event": "calls", "stage": "candidates", "done": 3, "total": 9})
    assert bars.bar is not first and bars.bar.desc == "candidates" and bars.bar.total == 9
    bars({"event": "calls", "stage": "candidates", "done": 12, "total": 9})  # past its plan: never over 100 %
    assert bars.bar.n <= bars.bar.total
    bars({"event": "sweep", "klub": 0.25})  # annotates the stage bar once calls are counted
    assert bars.bar.desc == "candidates"
    bars.close()
    old = _progress.StageBars(bars=True, estimate=False)
    for _ in range(3):
        old({"event": "sweep", "steps": 4, "klub": 0.5})
    assert old.bar.unit == "sweep" and old.bar.n == 3
    old.close()
    capsys.readouterr()


# -------------------------------------------------------------------- budget
@pytest.mark.parametrize("given, calls", [("50k", 50_000), ("1.5M", 1_500_000), ("1200", 1200)])
def test_budget_reaches_the_method(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: Fake,
                                   given: str, calls: int) -> None:
    code, _out, err = run(optimize_args(tmp_path, "-q", "--budget", given), capsys)
    assert code == 0, err
    assert fake.budgets == [calls]
    assert json.loads((tmp_path / "s.json").read_text())["settings"]["budget"] == calls


def test_no_budget_leaves_the_methods_default(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              fake: Fake) -> None:
    code, _out, _err = run(optimize_args(tmp_path, "-q"), capsys)
    assert code == 0 and fake.budgets == [None]


@pytest.mark.parametrize("command", ["optimize", "evaluate"])
@pytest.mark.parametrize("bad", ["lots", "-5", "0", "1e400", "nan"])
def test_bad_budget_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: Fake,
                                          command: str, bad: str) -> None:
    args = (optimize_args(tmp_path) if command == "optimize"
            else ["evaluate", "gaussian", "--optimize", "--method", "fake", "--steps", "3"])
    code, _out, err = run([*args, "--budget", bad], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ays: error:") and "--budget" in lines[0], err
    assert fake.runs == []


def test_budget_with_method_dp_bounds_its_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real method: the calls it reports spending stay within the budget it was given.
    out = tmp_path / "dp.json"
    code, _o, err = run(["optimize", "gaussian", "--method", "dp", "--steps", "3", "--samples", "64",
                         "--budget", "20k", "-q", "--out", str(out)], capsys)
    assert code == 0, err
    saved = ays.load_schedule(out)
    assert saved.settings.get("budget") == 20_000  # recorded: a regression fails here instead of skipping
    assert 0 < saved.calls <= 20_000


# -------------------------------------------------------- evaluate --optimize
EVAL = ["evaluate", "gaussian", "--schedules", "karras", "--solvers", "euler", "--steps", "3,4", "--seeds", "1",
        "--samples", "64", "--metrics", "sliced_w2", "--optimize", "--method", "fake"]


def test_evaluate_shows_each_cells_estimate_and_bars(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     fake: Fake) -> None:
    code, _out, err = run([*EVAL, "--progress"], capsys)
    assert code == 0, err
    labels = [m["label"] for m in estimate_lines(err)]
    assert labels == ["euler n=3", "euler n=4"]
    shown = err.replace("\r", "\n")
    for n in (3, 4):
        assert re.search(rf"^euler n={n} table:", shown, flags=re.M) and re.search(rf"^euler n={n} refine:",
                                                                                  shown, flags=re.M), shown


def test_evaluate_resume_skips_finished_cells_and_continues_the_interrupted_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: Fake) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, _out, err = run([*EVAL, "-q", "--out", str(whole)], capsys)
    assert code == 0, err
    assert fake.runs == [(3, "table"), (3, "refine"), (4, "table"), (4, "refine")]

    fake.runs.clear()
    fake.stop_at = 4  # Ctrl-C in the second cell, after its first stage was checkpointed
    code, _out, err = run([*EVAL, "-q", "--out", str(parts)], capsys)
    assert code == 130 and "--resume" in err, err
    assert (parts / "ays_euler_3.json").is_file() and (parts / "ays_euler_4.ckpt.json").is_file()
    assert not (parts / "ays_euler_3.ckpt.json").exists()  # a finished cell's checkpoint is gone

    fake.runs.clear()
    fake.stop_at = None
    code, _out, err = run([*EVAL, "-q", "--out", str(parts), "--resume"], capsys)
    assert code == 0, err
    # Cell 3 is read back, cell 4 resumes at its second stage: nothing is computed twice.
    assert fake.runs == [(4, "refine")]
    assert not (parts / "ays_euler_4.ckpt.json").exists()
    a, b = ays.evaluate.read_results(whole / "results.csv"), ays.evaluate.read_results(parts / "results.csv")
    strip = [{k: v for k, v in row.items() if k not in ("seconds",)} for row in a]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds",)} for row in b]
    for n in (3, 4):
        assert torch.equal(ays.load_schedule(whole / f"ays_euler_{n}.json").sigmas,
                           ays.load_schedule(parts / f"ays_euler_{n}.json").sigmas)


def test_evaluate_resume_refuses_a_cell_made_otherwise(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       fake: Fake) -> None:
    code, _out, err = run([*EVAL, "-q", "--checkpoint", str(tmp_path), "--optimize-samples", "64"], capsys)
    assert code == 0, err
    code, _out, err = run([*EVAL, "-q", "--checkpoint", str(tmp_path), "--optimize-samples", "128", "--resume"],
                          capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "samples" in lines[0] and "ays_euler_3.json" in lines[0], err


@pytest.mark.parametrize("extra, fragment", [(["--resume"], "--resume"),
                                             (["--resume", "--checkpoint", "nowhere-xyz"], "nowhere-xyz")])
def test_evaluate_resume_needs_a_folder(capsys: pytest.CaptureFixture[str], fake: Fake, extra: list[str],
                                        fragment: str) -> None:
    code, _out, err = run([*EVAL, "-q", *extra], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert fake.runs == []


def test_evaluate_options_of_optimize_need_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(["evaluate", "gaussian", "--budget", "50k", "-q"], capsys)
    assert code == 2 and "--optimize" in err


def test_evaluate_resume_with_method_dp_equals_an_uninterrupted_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A real method, interrupted after the second cell's KLUB table was checkpointed (its first "chunk").
    import ays.optimize as opt_pkg

    real = opt_pkg.optimize
    rows: list[tuple[int, int]] = []  # (steps, denoiser rows) of every optimisation run
    stop = {"steps": None}

    def counted(denoiser: Any, data: Any, *, steps: int, progress: Any = None, **kw: Any) -> Any:
        seen = [0]

        def model(x: torch.Tensor, sigma: torch.Tensor, **c: Any) -> torch.Tensor:
            seen[0] += x.shape[0]
            return denoiser(x, sigma, **c)

        def events(event: dict[str, Any]) -> None:
            if progress is not None:
                progress(event)
            if event.get("event") == "chunk" and stop["steps"] == steps:
                raise KeyboardInterrupt

        try:
            return real(model, data, steps=steps, progress=events, **kw)
        finally:
            rows.append((steps, seen[0]))

    monkeypatch.setattr(opt_pkg, "optimize", counted)
    args = [*EVAL[:-1], "dp", "--optimize-samples", "64", "-q"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, _out, err = run([*args, "--out", str(whole)], capsys)
    assert code == 0, err
    full = dict(rows)
    rows.clear()
    stop["steps"] = 4
    code, _out, err = run([*args, "--out", str(parts)], capsys)
    assert code == 130, err
    rows.clear()
    stop["steps"] = None
    code, _out, err = run([*args, "--out", str(parts), "--resume"], capsys)
    assert code == 0, err
    assert [n for n, _ in rows] == [4]  # the finished cell is read back, not optimised again
    assert rows[0][1] < full[4]  # the interrupted one does not rebuild its checkpointed table
    for n in (3, 4):
        assert torch.equal(ays.load_schedule(whole / f"ays_euler_{n}.json").sigmas,
                           ays.load_schedule(parts / f"ays_euler_{n}.json").sigmas)
    a, b = ays.evaluate.read_results(whole / "results.csv"), ays.evaluate.read_results(parts / "results.csv")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in b]


def test_the_estimate_line_reads_as_the_docs_show_it() -> None:
    event = {"event": "estimate", "seconds": 2400.0, "seconds_per_call": 0.048, "calls": 50_000}
    line = "ays: about 40 min on this device (50,000 denoiser calls, 0.048 s per call)"
    assert _progress.estimate_line(event) == line
    m = ESTIMATE.match(_progress.estimate_line({**event, "seconds_per_call": 2.2e-5}, "euler n=5"))
    assert m is not None and m["label"] == "euler n=5" and m["per"] == "22" and m["per_unit"] == "µs"
    for per in [9.96e-5, 9.96e-4, 0.0996, 150.0]:  # never an exponent, and within rounding of the truth
        m = ESTIMATE.match(_progress.estimate_line({**event, "seconds_per_call": per}))
        assert m is not None and seconds(m, "per", "per_unit") == pytest.approx(per, rel=0.06), per

"""budget= for every method, "ays" included: the calls a method spends fit its budget, and its meter tells the truth.

A counting denoiser counts the rows the model really evaluates. For each method, with a
budget: the counted rows stay within the budget (and use most of it), the result's
``calls`` is the count, the progress events of kind ``"calls"`` account for every row, stage
by stage, and the plan announced first is within 10 % of what was spent. (LD3 is charged
``BACKWARD_FACTOR`` calls per backward row on top of its forward rows: its ``calls`` is
compared with the budget, its forward rows with the count.)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ays
from ays.optimize.ld3 import BACKWARD_FACTOR
from ays.validate import AysError

PROBLEM = ays.problems.get("gmm-8x8")


class Counting:
    """The mixture's exact denoiser, counting its rows (and the rows of its latest call)."""

    def __init__(self) -> None:
        self.rows = 0
        self.last = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        self.last = x.shape[0]
        return PROBLEM.denoiser(x, sigma)


def run(method: str, budget: int, **options: Any) -> tuple[ays.optimize.OptimizeResult, Counting, list[dict]]:
    den = Counting()
    events: list[dict] = []

    def progress(event: dict) -> None:
        if event["event"] == "calls":
            events.append({**event, "rows": den.last})  # the call that was just made
        elif event["event"] == "plan":
            events.append(dict(event))

    res = ays.optimize(den, PROBLEM.sample, steps=4, solver="dpmpp_2m", method=method, budget=budget, seed=3,
                       progress=progress, **options)
    return res, den, events


# Tiny problems: a few thousand calls each, about a second.
CASES = {
    "dp": (6000, {"grid": 24}),
    "gits": (3000, {"grid": 21}),
    "oss": (3000, {"grid": 20}),
    "coordinate": (12000, {"max_sweeps": 2, "patience": 5, "candidates": 5}),
    "ld3": (1200, {"teacher_steps": 8, "epochs": 1}),
    "ays": (6000, {"grid": 24, "reference_steps": 8}),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_calls_fit_the_budget_and_the_meter_counts_them(method):
    budget, options = CASES[method]
    res, den, events = run(method, budget, **options)
    plans = [e for e in events if e["event"] == "plan"]
    calls = [e for e in events if e["event"] == "calls"]
    # one plan (ays may refine its split once it knows its candidates; the total stays)
    assert 1 <= len(plans) <= 2 and len({p["calls"] for p in plans}) == 1 and den.rows > 0
    plan = plans[-1]
    if method == "ld3":
        forward = res.history[-1]["forward"]
        assert forward == den.rows  # every forward row counted, the backward passes charged on top
        assert res.calls == forward + BACKWARD_FACTOR * res.history[-1]["backward"] <= budget
        assert res.calls >= 0.7 * budget
    else:
        assert res.calls == den.rows <= budget
        assert den.rows >= 0.9 * budget  # the budget is what sizes the run: most of it is used
    # Every model call was made inside a planned stage and reported with its rows.
    assert sum(e["rows"] for e in calls) == den.rows
    assert {e["stage"] for e in calls} <= set(plan["stages"])
    for stage in plan["stages"]:
        spent = sum(e["rows"] for e in calls if e["stage"] == stage)
        assert spent <= plan["stages"][stage]
    assert abs(plan["calls"] - den.rows) <= 0.1 * den.rows


def test_a_larger_budget_buys_a_larger_run():
    small, _, _ = run("gits", 3000, grid=21)
    big, den, _ = run("gits", 6000, grid=21)
    assert big.settings["options"]["teacher_samples"] == 2 * small.settings["options"]["teacher_samples"]
    assert den.rows == 6000
    a, _, _ = run("dp", 6000, grid=24)
    b, _, _ = run("dp", 12000, grid=24)
    assert b.settings["samples"] > 1.9 * a.settings["samples"]
    assert a.settings["budget"] == 6000  # the budget decides the result, so it is a setting


def test_explicit_options_win_and_the_budget_fills_the_rest():
    res, den, _ = run("gits", 3000, grid=21, teacher_samples=4)
    assert res.settings["options"]["teacher_samples"] == 4 and den.rows == 4 * 20 * 2
    res, den, _ = run("dp", 6000, grid=24, final_samples=0)
    assert res.klub is None and res.settings["options"]["final_samples"] == 0
    assert res.settings["samples"] == 6000 // 24 and den.rows == 6000
    res, den, _ = run("ld3", 2000, teacher_steps=8, epochs=1, valid_samples=3)
    assert res.settings["options"]["valid_samples"] == 3 and res.calls <= 2000


@pytest.mark.parametrize(
    ("method", "budget", "options", "minimum"),
    [("dp", 40, {"grid": 24}, "48"), ("gits", 30, {"grid": 21}, "40"), ("oss", 50, {"grid": 20}, "91"),
     ("coordinate", 100, {}, "minimum"), ("ld3", 30, {"teacher_steps": 8, "epochs": 1}, "minimum")],
)
def test_a_budget_below_the_minimum_is_refused_naming_it(method, budget, options, minimum):
    den = Counting()
    with pytest.raises(AysError, match=f"too small for method '{method}'.*{minimum}"):
        ays.optimize(den, PROBLEM.sample, steps=4, solver="dpmpp_2m", method=method, budget=budget, **options)
    assert den.rows == 0  # refused before any work


def test_explicit_options_over_the_budget_are_refused():
    den = Counting()
    with pytest.raises(AysError, match="over budget=100"):
        ays.optimize(den, PROBLEM.sample, steps=4, method="gits", budget=100, teacher_samples=50, grid=21)
    assert den.rows == 0


def test_coordinate_without_early_stopping_stops_when_the_budget_is_spent():
    budget, options = CASES["coordinate"]
    res, den, _ = run("coordinate", budget, early_stopping=False, **options)
    assert res.calls == den.rows <= budget
    assert "calls_budget" in [h["stop"] for h in res.history]


def test_dmn_accepts_a_budget_and_spends_nothing():
    res, den, events = run("dmn", 10)
    assert res.calls == den.rows == 0
    assert [e for e in events if e["event"] == "plan"] == [{"event": "plan", "calls": 0, "stages": {}}]
    assert torch.equal(res.sigmas, ays.optimize(PROBLEM.denoiser, PROBLEM.sample, steps=4, solver="dpmpp_2m",
                                                method="dmn").sigmas)

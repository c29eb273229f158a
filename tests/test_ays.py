"""The default method ``"ays"``: its evidence against closed forms, its budget, its gate, its resume.

Gaussian data N(0, c²) has exact output laws for every solver (:mod:`ays.analysis`), so the paired
evidence can be held to the coupling bound it stands on: for an ODE solver both runs are linear in
the same noise, and the paired error *is* the squared W2 distance of the two laws; for an SDE solver
with a shared Brownian path it is an upper bound on it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ays import analysis, schedules
from ays.optimize import ays as A
from ays.optimize import optimize
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser

C = 0.5


def _counting(den):
    calls = {"rows": 0}

    def f(x, sigma):
        calls["rows"] += x.shape[0]
        return den(x, sigma)

    return f, calls


def _evidence_of(solver: str, sigmas: torch.Tensor, rows: int = 4096, teacher_steps: int = 256) -> float:
    """The paired evidence ``ays`` computes for one schedule on 1-D Gaussian data (its own functions)."""
    den = gaussian_denoiser(C)
    teacher = A.teacher_solver(_task(solver), A.SelectOptions(reference_steps=teacher_steps))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(rows, 1, generator=g, dtype=torch.float64)
    tree = A.BrownianTree((rows, 1), 0.002, 80.0, 11, dtype=torch.float64)
    everything = slice(0, rows)
    x_t = A.run_rows(teacher, den, noise, schedules.karras(teacher_steps, 0.002, 80.0, rho=7.0), everything, tree)
    x_s = A.run_rows(solver, den, noise, sigmas, everything, tree)
    return float((x_s - x_t).square().mean())


def _task(solver: str):
    from ays.optimize.task import Task

    return Task(denoiser=gaussian_denoiser(C), data=gaussian_data(C, 1), steps=4, solver=solver, sigma_min=0.002,
                sigma_max=80.0, seed=0, samples=64, early_stopping=True, init=None, noise=None, checkpoint=None,
                resume=False, batch_size=None, progress=None, model=None, method="ays")


@pytest.mark.parametrize("name", ["karras", "loglinear", "kl_optimal"])
def test_paired_error_of_an_ode_solver_is_the_squared_w2_of_the_two_laws(name):
    # Both runs are x = a·z for the same z: E(x_s − x_T)² = (a_s − a_T)² = W2²(N(0, a_s²), N(0, a_T²)).
    s = schedules.build(name, 4, 0.002, 80.0)
    e = _evidence_of("euler", s)
    v_s = analysis.output_variance("euler", schedules.to_sampling(s), C)
    v_t = analysis.output_variance("dpmpp_2m", schedules.to_sampling(schedules.karras(256, 0.002, 80.0, rho=7.0)), C)
    w2 = (math.sqrt(v_s) - math.sqrt(v_t)) ** 2
    assert e == pytest.approx(w2, rel=0.1)  # the noise's sample variance is 1 ± 2 %


@pytest.mark.parametrize("solver", ["stochastic_ddim", "dpmpp_2m_sde"])
def test_paired_error_of_an_sde_solver_bounds_the_squared_w2_and_vanishes_with_the_steps(solver):
    # A shared Brownian path is a coupling of the two laws, so the paired error is at least W2²;
    # and the strong error of the few-step run shrinks as its steps approach the teacher's.
    teacher = schedules.to_sampling(schedules.karras(256, 0.002, 80.0, rho=7.0))
    errors = []
    for steps in (4, 16, 64):
        s = schedules.karras(steps, 0.002, 80.0, rho=7.0)
        e = _evidence_of(solver, s)
        w2 = (math.sqrt(analysis.output_variance(solver, schedules.to_sampling(s), C))
              - math.sqrt(analysis.output_variance(solver, teacher, C))) ** 2
        assert e >= 0.9 * w2
        errors.append(e)
    assert errors[0] > 2 * errors[1] > 4 * errors[2]


def test_the_gate_keeps_a_gain_beyond_noise_and_refuses_one_within_it():
    opt = A.SelectOptions(significance=2.0)
    g = torch.Generator().manual_seed(0)
    start = 1.0 + 0.1 * torch.randn(400, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(400, generator=g, dtype=torch.float64)
    keep, z = A.gate(opt, start, start - 0.05 + noise)  # mean gain 0.05, se 0.005: z ≈ 10
    assert keep and z > 5
    keep, z = A.gate(opt, start, start + noise)  # no gain: z ~ N(0, 1)
    assert not keep and abs(z) < 4
    keep, _ = A.gate(opt, start, start + 0.05 + noise)  # a loss
    assert not keep


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m_sde"])
def test_the_budget_bounds_the_calls_of_every_stage_and_the_estimate_comes_first(solver):
    # (The contract every method keeps - calls within the budget, counted per planned stage - is
    # tests/test_budget.py's; here what is particular to the default: its stages, and the estimate
    # reported while the first stage runs, before the rest of the budget is spent.)
    den, calls = _counting(gaussian_denoiser(C))
    events = []
    res = optimize(den, gaussian_data(C, 2), steps=4, solver=solver, budget=6000, seed=1, reference_steps=16,
                   progress=lambda e: events.append({**e, "spent": calls["rows"]}))
    assert res.calls == calls["rows"] <= 6000
    stages = {e["stage"] for e in events if e["event"] == "calls"}
    assert {"table", "teacher", "candidates", "refine", "final"} <= stages
    estimate = next(e for e in events if e["event"] == "estimate")
    assert estimate["seconds"] > 0 and estimate["spent"] < 0.5 * res.calls
    # The evidence's sorting (its sliced W2 and the gate's bootstrap) is work the calls do not time: in the total.
    assert estimate["other_seconds"] > 0
    assert estimate["seconds"] == pytest.approx(estimate["seconds_per_call"] * estimate["calls"]
                                                + estimate["other_seconds"])
    from ays.cli._progress import estimate_line

    assert "of evidence, not the model" in estimate_line(estimate)
    with pytest.raises(AysError, match="too small"):
        optimize(den, gaussian_data(C, 2), steps=4, solver=solver, budget=500)


def test_the_default_budget_is_50k_calls_at_10_steps():
    assert A.default_budget(10) == 50_000
    den, calls = _counting(gaussian_denoiser(C))
    optimize(den, gaussian_data(C, 2), steps=10, solver="euler")
    assert 0.8 * 50_000 <= calls["rows"] <= 50_000


def test_on_gaussian_data_euler_keeps_the_kl_optimal_start_thm_3_1():
    # Thm 3.1: kl_optimal(c) is the optimal Euler schedule for N(0, c²); nothing may beat it beyond
    # noise, so the gate must return the start (or a schedule whose exact output KL is as small).
    res = optimize(gaussian_denoiser(C), gaussian_data(C, 2), steps=4, solver="euler", budget=8000, seed=2,
                   reference_steps=32)
    best = analysis.output_kl("euler", schedules.to_sampling(schedules.kl_optimal(4, 0.002, 80.0, c=C)), C)
    got = analysis.output_kl("euler", schedules.to_sampling(res.sigmas), C)
    assert got <= 1.5 * best + 1e-4


@pytest.mark.parametrize("stage", ["table", "teacher", "candidates", "refine", "validate"])
def test_a_run_killed_in_any_stage_resumes_to_the_uninterrupted_result(tmp_path, stage):
    kw = dict(steps=4, solver="dpmpp_2m_sde", budget=6000, seed=4, reference_steps=16)
    den, calls = _counting(gaussian_denoiser(C))
    whole = optimize(den, gaussian_data(C, 2), **kw)
    whole_calls = calls["rows"]
    path = tmp_path / "ckpt.json"

    class Kill(Exception):
        pass

    plan = {}

    def killer(event):
        if event["event"] == "plan":
            plan.update(event["stages"])
        if event["event"] == "calls" and event["stage"] == stage and event["done"] >= 1:
            raise Kill

    calls["rows"] = 0
    with pytest.raises(Kill):
        optimize(den, gaussian_data(C, 2), checkpoint=path, progress=killer, **kw)
    first = calls["rows"]
    calls["rows"] = 0
    again = optimize(den, gaussian_data(C, 2), checkpoint=path, resume=True, **kw)
    assert torch.equal(again.sigmas, whole.sigmas)
    # Nothing checkpointed is recomputed: the two runs together spend the uninterrupted calls plus at most
    # the piece of work that was cut short, which lies inside the killed stage (a table chunk, the teacher
    # sets, one schedule). The gate's bootstrap also needs the samples of the start and the chosen schedule
    # on the first set, of which only the scores are checkpointed: those two runs (the size of the
    # "validate" stage) are made again after a kill in it.
    again_for_gate = plan["validate"] if stage == "validate" else 0
    assert first + calls["rows"] <= whole_calls + plan[stage] + again_for_gate
    assert first + calls["rows"] > whole_calls  # the cut piece itself was paid twice: the kill was real
    # The resumed file records what the schedule cost in all: the checkpointed work too, not just the resume's.
    assert whole.calls == whole_calls <= again.calls <= first + calls["rows"]


def test_the_coupled_gate_bootstraps_the_sliced_w2_of_each_resample():
    # The gate's standard error: the spread of the gain (start's minus the chosen's sliced W2 to the teacher)
    # over resamples of the noises, start, chosen and teacher rows drawn together. Sorted once
    # (metrics.sliced_w2_resampled), it must equal the gain computed afresh on each resample.
    from ays import metrics
    from ays.optimize.ays import SelectOptions, coupled_gate

    opt = SelectOptions.parse({"bootstrap": 30, "projections": 32})
    g = torch.Generator().manual_seed(0)
    target = torch.randn(200, 3, generator=g, dtype=torch.float64)
    start = target + 0.3 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    chosen = target + 0.2 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    keep, z = coupled_gate(opt, target, start, chosen, seed=5)

    def sw(x, y):
        return metrics.sliced_w2(x, y, projections=32, generator=torch.Generator().manual_seed(0)).value

    draws = torch.Generator().manual_seed(5)
    gains = []
    for _ in range(30):
        i = torch.randint(0, 200, (200,), generator=draws)
        gains.append(sw(start[i], target[i]) - sw(chosen[i], target[i]))
    whole = sw(start, target) - sw(chosen, target)
    assert z == pytest.approx(whole / float(torch.tensor(gains, dtype=torch.float64).std()), rel=1e-9)
    assert keep == (z > opt.significance) and math.isfinite(z)

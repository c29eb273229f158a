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

from ays import analysis, schedules, solvers
from ays.optimize import ays as A
from ays.optimize import optimize
from ays.optimize import teacher as T
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser

C = 0.5


def _counting(den):
    calls = {"rows": 0}

    def f(x, sigma):
        calls["rows"] += x.shape[0]
        return den(x, sigma)

    return f, calls


def _task(solver: str, steps: int = 4, dim: int = 1, **kw):
    from ays.optimize.task import Task

    return Task(denoiser=gaussian_denoiser(C), data=gaussian_data(C, dim), steps=steps, solver=solver,
                sigma_min=0.002, sigma_max=80.0, seed=0, samples=64, early_stopping=True, init=None, noise=None,
                checkpoint=None, resume=False, batch_size=None, progress=None, model=None, method="ays", **kw)


def _sets(solver: str, rows: int = 4096, reference_steps: int = 256, reference_solver: str | None = None):
    """The default's own evidence on 1-D Gaussian data: both noise sets and their teacher."""
    task = _task(solver)
    levels = T.grid_levels(task, 40, 7.0)
    choose, fresh, calls = A.gather_evidence(task, rows, 64, levels, 8, reference_steps, reference_solver)
    return task, levels, choose, fresh, calls


def _evidence_of(solver: str, sigmas: torch.Tensor) -> float:
    """The paired evidence ``ays`` computes for one schedule on 1-D Gaussian data (its own functions); for a
    stochastic solver against its own many-step run on the same Brownian path (``reference_solver``)."""
    task, _, ev, _, _ = _sets(solver, reference_solver=solver if solvers.info(solver).stochastic else None)
    x = A.run_rows(solver, task.denoiser, ev.noise, sigmas, slice(0, ev.noise.shape[0]), ev.tree)
    return A.statistic("paired", x.reshape(x.shape[0], -1), ev.target, 1.0)


def test_the_teacher_of_the_evidence_is_the_exact_flow_and_is_paid_once():
    # For N(0, c²) the probability-flow ODE is linear: x(σ) = sqrt((c² + σ²)/(c² + σ_max²)) x(σ_max), and the
    # posterior mean D(x, σ) = c²/(c² + σ²) x. The shared trajectory must be both, at every grid level, and its
    # end is the judge's target (an ODE solver); calls: one trajectory per evidence noise, one per fresh noise.
    _, levels, ev, fresh, calls = _sets("dpmpp_2m", rows=64)
    x0 = ev.noise * 80.0
    exact = torch.sqrt((C * C + levels**2) / (C * C + 80.0**2)).reshape(-1, 1, 1) * x0[None]
    assert torch.allclose(ev.states, exact, rtol=2e-3, atol=1e-8)
    assert torch.allclose(ev.dens, (C * C / (C * C + levels[:-1] ** 2)).reshape(-1, 1, 1) * ev.states[:-1],
                          rtol=1e-12)
    assert torch.allclose(ev.target, exact[-1].reshape(64, 1), rtol=2e-3)
    per_noise = T.trajectory_calls(levels, "dpmpp_2m", 8)
    assert calls == (64 + 64) * per_noise and fresh.states is None
    # A stochastic solver is judged against the same flow's end by default; with reference_solver, against that
    # solver's many-step run from the same noise and Brownian path, whose law is the data's, N(0, c²), up to the
    # sampling error of 4,096 draws and the teacher's own bias.
    _, _, sde_ev, _, _ = _sets("dpmpp_2m_sde", rows=64)
    assert torch.equal(sde_ev.target, ev.target)
    _, _, ev, _, _ = _sets("dpmpp_2m_sde", rows=4096, reference_steps=128, reference_solver="dpmpp_2m_sde")
    assert float(ev.target.var()) == pytest.approx(C * C, rel=0.06)


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


@pytest.mark.parametrize("select", ["paired", "median", "coupled"])
def test_the_gate_finds_a_gain_beyond_noise_and_refuses_one_within_it(select):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(400, 2, generator=g, dtype=torch.float64)
    base = target + 0.3 * torch.randn(400, 2, generator=g, dtype=torch.float64)
    better = target + 0.1 * torch.randn(400, 2, generator=g, dtype=torch.float64)
    same = target + 0.3 * torch.randn(400, 2, generator=g, dtype=torch.float64)
    kw = dict(seed=1, resamples=100, projections=64)
    gain, z = A.gain_z(select, target, base, better, 1.0, **kw)
    assert gain > 0 and z > 4
    _, z = A.gain_z(select, target, base, same, 1.0, **kw)  # the same law: z ~ N(0, 1)
    assert abs(z) < 3.5
    _, z = A.gain_z(select, target, better, base, 1.0, **kw)  # a loss
    assert z < -4


def test_precision_is_the_distance_to_the_nearest_data_sample_and_breaks_ties_toward_sharp_schedules():
    data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.3], [0.5, 1.0]], dtype=torch.float64)
    # per sample: |x − nearest data sample|² / d (the midpoint-like sample is far from every one)
    assert A.precision(x, data).tolist() == pytest.approx([0.0, 0.09 / 2, 1.25 / 2])
    # within 5 % of the best evidence the sharper one is taken; beyond it, the evidence decides
    assert A.sharpest_of_best([1.00, 1.03, 0.99], [0.5, 0.1, 0.9], range(3), 0.05) == 1
    assert A.sharpest_of_best([1.00, 1.20, 0.99], [0.5, 0.1, 0.9], range(3), 0.05) == 0
    assert A.sharpest_of_best([1.00, 1.03, 0.99], [0.5, 0.1, 0.9], [0, 2], 0.05) == 0
    # the gate: a gain beyond noise that is no blurrier, or a tie that is sharper beyond noise
    assert A.gate_keeps(3.0, 0.0, 2.0) and A.gate_keeps(0.0, 3.0, 2.0)
    assert not A.gate_keeps(3.0, -3.0, 2.0) and not A.gate_keeps(-1.5, 5.0, 2.0) and not A.gate_keeps(1.0, 1.0, 2.0)


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
    assert {"table", "teacher", "search", "candidates", "final"} <= stages
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


@pytest.mark.parametrize("stage", ["table", "teacher", "search", "candidates", "validate"])
def test_a_run_killed_in_any_stage_resumes_to_the_uninterrupted_result(tmp_path, stage):
    # (DPM-Solver++(2M) on Gaussian data: OSS wins, so the gate runs; test_distributed runs an SDE solver.)
    kw = dict(steps=4, solver="dpmpp_2m", budget=6000, seed=4)
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
    # The gate's standard error: the spread of the gain (the free schedule's minus the chosen's sliced W2 to the
    # teacher) over resamples of the noises, both schedules' and the teacher's rows drawn together. Sorted once
    # (metrics.sliced_w2_resampled), it must equal the gain computed afresh on each resample.
    from ays import metrics
    from ays.optimize.ays.evidence import gain_z

    g = torch.Generator().manual_seed(0)
    target = torch.randn(200, 3, generator=g, dtype=torch.float64)
    start = target + 0.3 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    chosen = target + 0.2 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    whole, z = gain_z("coupled", target, start, chosen, bandwidth=1.0, seed=5, resamples=30, projections=32)

    def sw(x, y):
        return metrics.sliced_w2(x, y, projections=32, generator=torch.Generator().manual_seed(0)).value

    draws = torch.Generator().manual_seed(5)
    gains = []
    for _ in range(30):
        i = torch.randint(0, 200, (200,), generator=draws)
        gains.append(sw(start[i], target[i]) - sw(chosen[i], target[i]))
    assert whole == pytest.approx(sw(start, target) - sw(chosen, target), rel=1e-12) and whole > 0
    assert z == pytest.approx(whole / float(torch.tensor(gains, dtype=torch.float64).std()), rel=1e-9)


def test_on_gaussian_data_the_default_beats_every_free_schedule_under_dpm_solver_2m():
    # DPM-Solver++(2M) on N(0, c²): every output law is N(0, v(schedule)) in closed form (ays.analysis), so the
    # exact W2² = (sqrt(v) − c)² of every free candidate is known. OSS's programme can match the exact flow
    # (the optimum is nearly exact: W2² ~ 1e-6, against 9e-3 for the best free one at 4 steps); the default must
    # find a schedule at least ten times closer than the best free schedule, and return it through the gate.
    res = optimize(gaussian_denoiser(C), gaussian_data(C, 2), steps=4, solver="dpmpp_2m", budget=8000, seed=2)

    def w2(s):
        return (math.sqrt(analysis.output_variance("dpmpp_2m", schedules.to_sampling(s), C)) - C) ** 2

    free = [torch.tensor(h["sigmas"], dtype=torch.float64) for h in res.history if h.get("free")]
    assert len(free) >= 7  # kl_optimal at ĉ and at three fixed c, time_uniform, loglinear, karras, beta (distinct)
    best_free = min(w2(s) for s in free)
    assert w2(res.sigmas) < 0.1 * best_free
    gate = next(h for h in res.history if h["stage"] == "validate")
    assert gate["kept"] and gate["z"] > 2.0

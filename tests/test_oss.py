"""OSS (Pei et al. 2025) under ays.optimize: its programme against brute force on Gaussian data.

For data N(0, c²) the exact probability-flow ODE is linear, x(s) = x_T sqrt((c² + s²)/(c² + T²)),
so the teacher trajectory is known exactly and every candidate schedule of a small grid can be
run with the registry's own solver.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from ays import analysis, schedules, solvers
from ays.cli import main
from ays.optimize import optimize
from ays.optimize.oss import median_path, oss_paths, run_student
from ays.optimize.teacher import trajectory
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser

C, HI, LO = 0.5, 80.0, 0.002


def grid(positive: int) -> torch.Tensor:
    """``positive`` rho=7 levels from sigma_max (sigma_min left out), then 0: the method's grid."""
    return torch.cat([schedules.karras(positive, LO, HI)[:-1], torch.zeros(1, dtype=torch.float64)])


def exact_teacher(levels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    ratio = torch.sqrt((C * C + levels**2) / (C * C + HI**2))
    return ratio.reshape(-1, *([1] * x.ndim)) * x[None]


def brute_force(solver: str, levels: torch.Tensor, x: torch.Tensor, steps: int) -> list[tuple[float, list[int]]]:
    """Every path 0 → last through ``steps − 1`` interior grid levels, run by the registry solver, by error."""
    den, fn = gaussian_denoiser(C), solvers.get(solver)
    target = exact_teacher(levels, x)[-1]
    out = []
    for inner in itertools.combinations(range(1, levels.numel() - 1), steps - 1):
        path = [0, *inner, levels.numel() - 1]
        err = float((fn(den, x, levels[path]) - target).square().mean())
        out.append((err, path))
    return sorted(out)


def mixture_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A nonlinear denoiser (the multistep histories matter)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x) * 0.7 / (1 + s * s) + 0.1 * x / (1 + s)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_3m"])
def test_student_steps_are_the_registry_solvers(solver):
    x = 80.0 * torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sig in (schedules.karras(7, LO, HI), schedules.to_sampling(schedules.karras(7, LO, HI))):
        out, rows = run_student(solver, mixture_denoiser, x, sig)
        assert torch.allclose(out, solvers.get(solver)(mixture_denoiser, x, sig), rtol=1e-13, atol=1e-13)
        assert rows == 5 * solvers.count_calls(solver, sig)


def test_teacher_trajectory_is_the_exact_ode():
    levels = grid(16)
    x = HI * torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    traj, dens, calls = trajectory(gaussian_denoiser(C), x, levels, "dpmpp_2m", refine=8)
    assert calls == 3 * (15 * 8 + 1)  # 15 refined intervals, then the final denoise
    assert traj.shape == (17, 3, 2) and dens.shape == (16, 3, 2)
    exact = exact_teacher(levels, x)
    assert torch.allclose(traj, exact, rtol=2e-3, atol=1e-6)
    # the teacher's denoiser outputs are the exact posterior means at its own states: c²/(c² + s²) x
    shrink = (C * C / (C * C + levels[:-1] ** 2)).reshape(-1, 1, 1)
    assert torch.allclose(dens, shrink * traj[:-1], rtol=1e-12)


@pytest.mark.parametrize("solver,steps", [("euler", 3), ("euler", 4), ("dpmpp_2m", 3), ("dpmpp_2m", 4)])
def test_programme_equals_brute_force_over_subsets(solver, steps):
    # Euler: its step ratio is below the exact one, -a(1-a)(1-u)² < 0 in the squares, so every
    # student state lags the teacher and "closest at i" means "largest at i": OSS's greedy
    # carried state is then the global optimum. DPM-Solver++(2M) holds here as well.
    levels = grid(12)
    x = torch.tensor([[HI]], dtype=torch.float64)
    paths, cost, calls = oss_paths(solver, gaussian_denoiser(C), x, levels, exact_teacher(levels, x), steps)
    ranked = brute_force(solver, levels, x, steps)
    assert paths[0].tolist() == ranked[0][1]
    assert float(cost[0]) == pytest.approx(ranked[0][0], rel=1e-10)
    assert calls == 1 + (steps - 1) * (12 - steps + 1)  # one call per live source level per step


@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun"])
def test_programme_carries_the_solver_state_exactly_but_is_greedy(solver):
    # Its cost is the registry solver's error on its own path (the carried state is the
    # solver's), yet the recursion keeps only the closest state at each level, which for a
    # solver that can overshoot is not the global optimum (OSS's definition, kept).
    levels = grid(12)
    x = torch.tensor([[HI]], dtype=torch.float64)
    paths, cost, _ = oss_paths(solver, gaussian_denoiser(C), x, levels, exact_teacher(levels, x), 5)
    ranked = brute_force(solver, levels, x, 5)
    own = dict((tuple(p), e) for e, p in ranked)[tuple(paths[0].tolist())]
    assert float(cost[0]) == pytest.approx(own, rel=1e-10)
    assert ranked[0][0] < own


def test_median_over_noises_is_strictly_increasing():
    paths = torch.tensor([[0, 3, 7, 12], [0, 5, 6, 12], [0, 4, 9, 12], [0, 2, 10, 12]])
    assert median_path(paths).tolist() == [0, 3, 8, 12]  # (3+4)//2, (7+9)//2
    assert median_path(paths[:3]).tolist() == [0, 4, 7, 12]


def test_method_counts_its_calls_and_is_reproducible():
    den, data = gaussian_denoiser(C), gaussian_data(C, 2)
    kw = dict(steps=4, solver="euler", grid=16, teacher_samples=5, refine=2)
    a = optimize(den, data, method="oss", seed=3, **kw)
    b = optimize(den, data, method="oss", seed=3, **kw)
    assert torch.equal(a.sigmas, b.sigmas)
    assert a.sigmas.numel() == 5 and float(a.sigmas[0]) == HI and float(a.sigmas[-1]) == LO
    levels = grid(16)
    assert all(bool(torch.isclose(levels, v, rtol=1e-12).any()) for v in a.sigmas[:-1])
    teacher = 5 * (15 * 2 + 1)
    programme = 5 * (1 + 3 * (16 - 4 + 1))
    assert a.calls == teacher + programme == a.history[0]["teacher_calls"] + a.history[0]["dp_calls"]
    with pytest.raises(AysError, match=r"unknown option.*bogus"):
        optimize(den, data, method="oss", bogus=1)
    with pytest.raises(AysError, match="teacher"):
        optimize(den, data, method="oss", teacher="stochastic_ddim")


@pytest.mark.parametrize("steps", [3, 4])
def test_beats_karras_on_the_exact_output_kl_for_euler(steps):
    # The grid holds karras's levels (steps divides 12), the programme is exact for Euler, and
    # for Euler a larger output scale (closer to the teacher) is a smaller KL (it stays below c).
    res = optimize(gaussian_denoiser(C), gaussian_data(C, 1), steps=steps, solver="euler", method="oss",
                   grid=12, teacher_samples=3, refine=4)
    kl = analysis.output_kl("euler", schedules.to_sampling(res.sigmas), C)
    assert kl < analysis.output_kl("euler", schedules.to_sampling(schedules.karras(steps, LO, HI)), C)


def test_stochastic_target_steps_with_its_ode_counterpart_and_cli(tmp_path, capsys):
    res = optimize(gaussian_denoiser(C), gaussian_data(C, 1), steps=3, solver="stochastic_ddim", method="oss",
                   grid=12, teacher_samples=2)
    assert res.settings["options"]["student_solver"] == "euler"
    out = tmp_path / "s.json"
    with pytest.raises(SystemExit) as exc:
        main(["optimize", "gaussian", "--method", "oss", "--steps", "3", "-O", "grid=12", "-O", "teacher_samples=2",
              "-q", "-o", str(out)])
    assert exc.value.code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["method"] == "oss" and len(doc["sigmas"]) == 4 and math.isfinite(doc["calls"])

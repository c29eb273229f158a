"""LD3 (Tong et al., ICLR 2025) under ays.optimize: the learnt schedule against brute force on Gaussian data.

For data N(0, c²) every solver is linear, so the student's sample from the start z' is A(σ)·z'
and the exact teacher's is E·z, E = c·T/sqrt(c² + T²). The teacher-matching loss of a schedule
is then a closed form of A, found here by running the registry solver, and its minimiser over
a fine grid of levels is the oracle the learnt schedule must hit within the grid's spacing.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from ays import analysis, schedules, solvers
from ays.cli import main
from ays.klub import seed_for
from ays.optimize import optimize
from ays.optimize.ld3 import BACKWARD_FACTOR, decoupled, eval_sigmas_of, logits_for, project, schedule_from_logits
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser

C, HI, LO = 0.5, 80.0, 0.002
E = C * HI / math.sqrt(C * C + HI * HI)
DEN, DATA = gaussian_denoiser(C), gaussian_data(C, 1)


def scale(inner: list[float]) -> float:
    """A: the Euler sample from z = 1 on [T, *inner, 0], by the registry solver."""
    x = solvers.get("euler")(DEN, torch.full((1, 1), HI, dtype=torch.float64), torch.tensor([HI, *inner, 0.0]))
    return float(x)


def train_noise(seed: int, samples: int, valid: int) -> torch.Tensor:
    """The training noises the method draws (its documented seed derivation)."""
    g = torch.Generator().manual_seed(seed_for(seed, "ld3", "noise"))
    return torch.randn((samples, 1), generator=g, dtype=torch.float64)[: samples - valid, 0]


def student_scale(res, solver: str) -> float:
    """A of an ld3 result by the registry solver, the model evaluated at its second parameter set if it has one."""
    lv = schedules.to_sampling(res.sigmas)
    ev = eval_sigmas_of(res)
    den = DEN if ev is None else decoupled(DEN, lv, ev / res.sigmas[:-1])
    return float(solvers.get(solver)(den, torch.full((1, 1), HI, dtype=torch.float64), lv))


def teacher_scale() -> float:
    """The teacher's A: DPM-Solver++(2M), 64 steps of EDM spacing (the method's default teacher)."""
    levels = schedules.to_sampling(schedules.karras(64, LO, HI, rho=7.0))
    return float(solvers.get("dpmpp_2m")(DEN, torch.full((1, 1), HI, dtype=torch.float64), levels))


def relaxed_loss(a: float, z: torch.Tensor, r: float) -> float:
    """min over |z' − z| <= r of mean (A z' − E z)²: each |A z − E z| shrinks by A r, not below 0."""
    return float(((a - E) * z).abs().sub(a * r).clamp_min(0).square().mean())


def test_parametrisation_is_a_decreasing_schedule_with_fixed_ends():
    n = 6
    assert torch.allclose(schedule_from_logits(torch.zeros(n, dtype=torch.float64), LO, HI),
                          schedules.loglinear(n, LO, HI), rtol=1e-12)
    theta = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    s = schedule_from_logits(theta, LO, HI)
    assert float(s[0]) == HI and float(s[-1]) == LO and bool(torch.all(s[1:] < s[:-1]))
    k = schedules.karras(n, LO, HI)
    assert torch.allclose(schedule_from_logits(logits_for(k), LO, HI), k, rtol=1e-12)


def test_projection_keeps_rows_inside_the_ball():
    z = torch.zeros(3, 2, dtype=torch.float64)
    moved = torch.tensor([[3.0, 4.0], [0.1, 0.0], [0.0, -2.0]], dtype=torch.float64)
    p = project(moved, z, 1.0)
    assert torch.allclose(p, torch.tensor([[0.6, 0.8], [0.1, 0.0], [0.0, -1.0]], dtype=torch.float64))


def test_two_steps_without_relaxation_is_plain_teacher_matching():
    res = optimize(DEN, DATA, steps=2, solver="euler", method="ld3", seed=0, radius=0.0, decoupled=False)
    grid = torch.logspace(math.log10(LO), math.log10(HI), 801, dtype=torch.float64)[1:-1]
    loss = torch.tensor([(scale([float(s)]) - E) ** 2 for s in grid])
    best = float(grid[int(loss.argmin())])
    spacing = float(grid[1] / grid[0])
    assert 1 / spacing <= float(res.sigmas[1]) / best <= spacing
    assert all(h["shift"] == 0.0 for h in res.history if "shift" in h)  # r = 0: the starts never move


def test_three_steps_match_a_brute_force_grid_search():
    res = optimize(DEN, DATA, steps=3, solver="euler", method="ld3", seed=0, radius=0.0, decoupled=False)
    grid = torch.logspace(math.log10(LO), math.log10(HI), 121, dtype=torch.float64)[1:-1].tolist()
    _, a, b = min(((scale([grid[a], grid[b]]) - E) ** 2, a, b) for a in range(len(grid)) for b in range(a))
    spacing = grid[1] / grid[0]
    for got, want in zip(res.sigmas[1:3].tolist(), (grid[a], grid[b])):
        assert 1 / spacing <= got / want <= spacing


def test_soft_teacher_forcing_minimises_the_relaxed_objective_inside_the_ball():
    r, seed = 0.3, 1
    res = optimize(DEN, DATA, steps=2, solver="euler", method="ld3", seed=seed, radius=r, decoupled=False)
    z = train_noise(seed, 100, 50)
    grid = torch.logspace(math.log10(LO), math.log10(HI), 801, dtype=torch.float64)[1:-1]
    loss = torch.tensor([relaxed_loss(scale([float(s)]), z, r) for s in grid])
    best = float(grid[int(loss.argmin())])
    spacing = float(grid[1] / grid[0])
    assert 1 / spacing <= float(res.sigmas[1]) / best <= spacing
    shifts = [h["shift"] for h in res.history if "shift" in h]
    assert 0 < max(shifts) <= r * (1 + 1e-9)  # the starts moved, and stayed in the ball


@pytest.mark.parametrize("steps", [3, 4])
def test_beats_karras_on_the_exact_output_kl_for_euler(steps):
    # For Euler the student's scale A stays below E < c/T·T: matching the teacher better is a
    # larger output variance, still below c², so a smaller KL.
    res = optimize(DEN, DATA, steps=steps, solver="euler", method="ld3", seed=0)
    kl = analysis.output_kl("euler", schedules.to_sampling(res.sigmas), C)
    assert kl < analysis.output_kl("euler", schedules.to_sampling(schedules.karras(steps, LO, HI)), C)


@pytest.mark.parametrize("radius", [0.0, 0.01])
def test_calls_count_forward_and_backward_passes(radius):
    kw = dict(steps=3, solver="euler", teacher_samples=10, valid_samples=4, batch=2, epochs=2, teacher_steps=8)
    res = optimize(DEN, DATA, method="ld3", early_stopping=False, radius=radius, **kw)
    train = 2 * 6 * 3  # epochs × training noises × student calls
    teacher = 10 * 8
    validation = (2 * 3) * 4 * 3  # every step (3 per epoch) runs the 4 held-out noises
    accept = train if radius > 0 else 0  # moved starts are re-run before they are kept
    last = res.history[-1]
    assert last["forward"] == teacher + train + accept + validation
    assert last["backward"] == train
    assert res.calls == last["forward"] + BACKWARD_FACTOR * last["backward"]
    assert res.settings["options"]["backward_factor"] == 2


def test_feature_loss_reaches_the_objective():
    seen = []

    def identity(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape)
        return x

    # one epoch of one batch: the recorded training loss is that of the initial schedule
    kw = dict(steps=3, solver="dpmpp_2m", teacher_samples=8, valid_samples=4, batch=4, epochs=1, seed=2)
    plain = optimize(DEN, DATA, method="ld3", **kw)
    feat = optimize(DEN, DATA, method="ld3", features=identity, **kw)
    assert seen and torch.equal(plain.sigmas, feat.sigmas)
    assert feat.settings["options"]["features"].endswith("identity")
    tripled = optimize(DEN, DATA, method="ld3", features=lambda x: 3 * x, **kw)
    assert tripled.history[0]["train_loss"] == pytest.approx(9 * plain.history[0]["train_loss"], rel=1e-9)


def test_bad_options_and_the_command_line(tmp_path, capsys):
    with pytest.raises(AysError, match=r"unknown option.*bogus"):
        optimize(DEN, DATA, method="ld3", bogus=1)
    with pytest.raises(AysError, match="valid_samples"):
        optimize(DEN, DATA, method="ld3", teacher_samples=10, valid_samples=10)
    with pytest.raises(AysError, match="unknown features 'lpips'; choose one of: mnist, digits"):
        optimize(DEN, DATA, method="ld3", features="lpips")
    with pytest.raises(AysError, match="features must be a callable"):
        optimize(DEN, DATA, method="ld3", features=3)
    out = tmp_path / "s.json"
    with pytest.raises(SystemExit) as exc:
        main(["optimize", "gaussian", "--method", "ld3", "--solver", "dpmpp_2m_sde", "--steps", "3",
              "-O", "teacher_samples=6", "-O", "valid_samples=2", "-O", "epochs=1", "-q", "-o", str(out)])
    assert exc.value.code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["method"] == "ld3" and len(doc["sigmas"]) == 4
    assert doc["settings"]["options"]["student_solver"] == "dpmpp_2m"


@pytest.mark.parametrize(("solver", "steps"), [("euler", 2), ("euler", 3), ("dpmpp_2m", 3)])
def test_the_second_phase_never_hurts_and_helps_on_the_closed_form(solver, steps):
    # For N(0, c²) the teacher-matching loss of a schedule is (A − A_T)²·mean z² in closed form:
    # every solver is linear in its start, the model's evaluation levels included.
    a_t = teacher_scale()
    err = lambda res: (student_scale(res, solver) - a_t) ** 2
    kw = dict(steps=steps, solver=solver, method="ld3", seed=0)
    phase1_rounds = optimize(DEN, DATA, decoupled=False, epochs=2, **kw)  # LD3's 2 rounds of phase 1
    phase1_only = optimize(DEN, DATA, decoupled=False, **kw)  # all 7 rounds on θ alone
    both = optimize(DEN, DATA, **kw)
    assert eval_sigmas_of(phase1_only) is None and eval_sigmas_of(both) is not None
    assert [h["phase"] for h in both.history[:-1]] == [1, 1, 2, 2, 2, 2, 2]
    # Never hurts: phase 2 starts from the best of phase 1 and keeps the best on held-out noises,
    # whose loss is this closed form times a constant (the original noises, not the moved ones).
    assert err(both) <= err(phase1_rounds) * (1 + 1e-9)
    # Helps: at least halves the error of spending the same rounds on θ alone.
    assert err(both) < 0.5 * err(phase1_only)


def test_evaluation_levels_stay_inside_their_window():
    res = optimize(DEN, DATA, steps=4, solver="euler", method="ld3", seed=0, window=0.5)
    s, ev = res.sigmas, eval_sigmas_of(res)
    lam, lam_ev = -s.log(), -ev.log()
    half = 0.5 * float((lam[1:] - lam[:-1]).min())
    assert float(ev[0]) == float(s[0])  # the first evaluation is at σ_max, as LD3 masks it
    assert bool(torch.all((lam_ev - lam[:-1]).abs() <= half * (1 + 1e-9)))
    assert bool(torch.any(lam_ev[1:] != lam[1:-1]))  # the second set was learnt
    # float32 data (other noise draws): the solver hands the levels over rounded, and they are still found
    f32 = optimize(DEN, lambda n, g: DATA(n, g).float(), steps=4, solver="euler", method="ld3", seed=0)
    ev32 = eval_sigmas_of(f32)
    assert ev32 is not None and bool(torch.any(ev32[1:] != f32.sigmas[1:-1]))


def test_validation_stays_within_its_share_of_the_calls():
    # LD3's code validates 50 noises after every step of 2: 87 % of its calls. Bounded here.
    kw = dict(steps=3, solver="euler", teacher_steps=8, epochs=2, radius=0.0)
    res = optimize(DEN, DATA, method="ld3", early_stopping=False, **kw)
    every = res.settings["options"]["resolved_eval_every"]
    updates = 2 * 25
    validation = (updates // every) * 50 * 3
    last = res.history[-1]
    assert last["forward"] == 100 * 8 + 2 * 50 * 3 + validation  # teacher + training + validation
    assert validation <= 0.5 * res.calls < (updates // (every - 1)) * 50 * 3 * 2  # the least cadence within 1/2
    ld3_code = optimize(DEN, DATA, method="ld3", early_stopping=False, eval_every=1, **kw)
    assert ld3_code.calls - res.calls == (updates - updates // every) * 50 * 3


IN_PLACE = """
import torch


def denoise(x, sigma):
    # the exact denoiser of two atoms at ±0.5, its posterior weights negated in place
    s2 = sigma.reshape(-1, 1) ** 2
    logits = torch.cat([-(x - 0.5) ** 2, -(x + 0.5) ** 2], dim=1).div_(2 * s2)
    w = logits.softmax(dim=1)
    w[:, 1].mul_(-1)  # softmax's backward needs its output, changed here: autograd cannot go back
    return w.sum(dim=1, keepdim=True).mul_(0.5)


def load():
    return denoise, lambda n, g: 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
"""


def test_an_in_place_denoiser_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "inplace_model.py").write_text(IN_PLACE)
    ns: dict = {}
    exec(IN_PLACE, ns)
    with pytest.raises(AysError, match=r"ld3.*not differentiable.*'oss', 'gits' or the default 'ays'"):
        optimize(ns["denoise"], DATA, steps=3, solver="euler", method="ld3", teacher_samples=6, valid_samples=2)
    assert optimize(ns["denoise"], DATA, steps=3, solver="euler", method="oss").steps == 3  # forward calls only
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(tmp_path / "inplace_model.py") + ":load", "--method", "ld3", "--steps", "3",
              "-O", "teacher_samples=6", "-O", "valid_samples=2", "-q", "-o", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "not differentiable" in err[0], err
    assert not (tmp_path / "s.json").exists()


def test_the_gradient_reaches_a_preconditioned_model_through_its_noise_level():
    # LD3 learns levels through the model's dependence on σ too (its second set only through it):
    # the EDM preconditioning must keep σ's graph. Checked against a central difference.
    from ays.denoisers import EDMPrecond

    den = EDMPrecond(lambda x, c: torch.tanh(x) * c.reshape(-1, 1), sigma_data=0.5)
    x = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    s = torch.tensor([0.7, 2.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(den(x, s).sum(), s)
    h = 1e-6
    fd = (den(x, s.detach() + h) - den(x, s.detach() - h)).reshape(-1) / (2 * h)
    assert torch.allclose(g, fd, rtol=1e-6) and bool(torch.all(g != 0))

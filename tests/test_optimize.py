"""The schedule optimiser: the analytic KLUB minimiser, exact resume, the schedule file, bad input."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch

import ays
from ays import schedules
from ays.io import atomic_write_json, atomic_write_text
from ays.klub import gaussian_klub, gaussian_klub_optimal
from ays.noise import DiscreteVP
from ays.optimize import METHODS, OptimizeResult, load_schedule, optimize
from ays.validate import AysError
from gaussian import gaussian_data, gaussian_denoiser


def fixed_point_oracle(steps: int, lo: float, hi: float, c: float) -> torch.Tensor:
    """App. A.3's recursion solved by Gauss-Seidel on t_i = c·sqrt(t⁻t⁺/(sqrt((t⁻²+c²)(t⁺²+c²)) − t⁻t⁺)).

    Independent of ays.klub.gaussian_klub_optimal (which uses the closed form).
    """
    t = schedules.loglinear(steps, lo, hi).tolist()
    for _ in range(20_000):
        change = 0.0
        for i in range(1, steps):
            p, n = t[i - 1], t[i + 1]
            new = c * math.sqrt(p * n / (math.sqrt((p * p + c * c) * (n * n + c * c)) - p * n))
            change = max(change, abs(new / t[i] - 1))
            t[i] = new
        if change < 1e-13:
            break
    return torch.tensor(t, dtype=torch.float64)


def test_oracle_recursion_and_closed_form_agree():
    for c in (0.5, 1.5):
        torch.testing.assert_close(fixed_point_oracle(7, 0.002, 80.0, c), gaussian_klub_optimal(7, 0.002, 80.0, c),
                                   rtol=1e-9, atol=0)


@pytest.mark.parametrize(("c", "dim", "steps", "samples"), [(0.5, 1, 5, 4096), (1.5, 2, 4, 4096)])
def test_converges_to_the_analytic_klub_minimiser(c, dim, steps, samples):
    res = optimize(gaussian_denoiser(c), gaussian_data(c, dim), steps=steps, samples=samples,
                   early_stopping=False, seed=1, method="coordinate")
    oracle = fixed_point_oracle(steps, 0.002, 80.0, c)
    rel = (res.sigmas[1:-1] / oracle[1:-1] - 1).abs()
    assert torch.all(rel < 0.03), (res.sigmas, oracle)
    assert res.history[-1]["stop"] == "converged"
    assert res.sigmas[0] == 80.0 and res.sigmas[-1] == 0.002
    # The final estimate is an honest estimate of the true KLUB of the result.
    assert abs(res.klub - float(gaussian_klub(res.sigmas, c, dim))) < 4 * res.klub_stderr


def test_each_sweep_lowers_the_klub_on_the_optimisation_draws():
    # Common random numbers make the objective one fixed function: every accepted
    # move lowers it, so the training KLUB never rises within a stage.
    res = optimize(gaussian_denoiser(1.0), gaussian_data(1.0, 2), steps=6, samples=1024, seed=0, max_sweeps=6,
                   method="coordinate")
    ks = [h["klub"] for h in res.history]
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(ks))
    assert ks[-1] < 0.2 * ks[0]  # far better than EDM rho=7
    start = schedules.karras(6, 0.002, 80.0)
    assert float(gaussian_klub(res.sigmas, 1.0, 2)) < 0.2 * float(gaussian_klub(start, 1.0, 2))
    assert len([h for h in res.history if h["stage"] == 0]) <= 7  # sweep 0 + budget 6


def test_hierarchy_freezes_old_points_and_interpolates():
    den, data = gaussian_denoiser(0.5), gaussian_data(0.5, 1)
    res = optimize(den, data, steps=8, samples=512, base_steps=4, seed=0, max_sweeps=4, refine_sweeps=3,
                   method="coordinate")
    stages = sorted({h["stage"] for h in res.history})
    assert stages == [0, 1]
    last4 = [h for h in res.history if h["stage"] == 0]
    best4 = min(last4, key=lambda h: h["heldout"])["sigmas"]
    # The 4-step schedule's levels stay, the new levels lie between them.
    assert res.sigmas[::2].tolist() == best4
    assert torch.all((res.sigmas[1::2] < res.sigmas[:-1:2]) & (res.sigmas[1::2] > res.sigmas[2::2]))

    res6 = optimize(den, data, steps=6, samples=512, base_steps=4, seed=0, max_sweeps=4, refine_sweeps=3,
                    method="coordinate")
    assert res6.sigmas.numel() == 7
    eight = [h for h in res6.history if h["stage"] == 1]
    best8 = torch.tensor(min(eight, key=lambda h: h["heldout"])["sigmas"], dtype=torch.float64)
    torch.testing.assert_close(res6.sigmas, schedules.interpolate(best8, 6), rtol=1e-15, atol=0)


def test_discrete_time_model_snaps_to_timesteps():
    vp = DiscreteVP.from_betas()
    res = optimize(gaussian_denoiser(0.5), gaussian_data(0.5, 1), steps=6, samples=512, noise=vp, seed=0,
                   max_sweeps=4, method="coordinate")
    assert res.timesteps is not None
    assert res.timesteps[0] == vp.num_timesteps - 1 and res.timesteps[-1] == 0
    assert torch.all(res.timesteps[1:] < res.timesteps[:-1])
    torch.testing.assert_close(res.sigmas, vp.sigmas[res.timesteps], rtol=0, atol=0)
    for h in res.history:
        s = torch.tensor(h["sigmas"], dtype=torch.float64)
        torch.testing.assert_close(s, vp.sigmas[vp.nearest_timestep(s)], rtol=0, atol=0)


def test_same_seed_same_schedule_other_seed_other_schedule():
    den, data = gaussian_denoiser(1.0), gaussian_data(1.0, 1)
    a = optimize(den, data, steps=4, samples=256, seed=5, max_sweeps=3, method="coordinate")
    b = optimize(den, data, steps=4, samples=256, seed=5, max_sweeps=3, method="coordinate")
    c = optimize(den, data, steps=4, samples=256, seed=6, max_sweeps=3, method="coordinate")
    assert torch.equal(a.sigmas, b.sigmas) and a.calls == b.calls
    assert not torch.equal(a.sigmas, c.sigmas)


def test_calls_count_denoiser_rows_and_progress_sees_every_sweep():
    rows = [0]
    base = gaussian_denoiser(1.0)

    def counting(x, sigma):
        rows[0] += x.shape[0]
        return base(x, sigma)

    events: list[dict] = []
    res = optimize(counting, torch.randn(300, 2, generator=torch.Generator().manual_seed(0)), steps=3,
                   samples=128, max_sweeps=2, batch_size=100, progress=events.append, method="coordinate")
    assert res.calls == rows[0]
    sweeps = [e for e in events if e["event"] == "sweep"]
    assert len(sweeps) == len(res.history) and events[-1]["event"] == "done"
    assert events[-1]["sigmas"] == res.sigmas.tolist()


def test_one_step_has_nothing_to_optimise():
    res = optimize(gaussian_denoiser(1.0), gaussian_data(1.0, 1), steps=1, samples=64, method="coordinate")
    assert res.sigmas.tolist() == [80.0, 0.002]


class _Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("stop_at", [(0, 2), (1, 1), (2, 0)])
def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, stop_at):
    den, data = gaussian_denoiser(0.5), gaussian_data(0.5, 1)
    kw = dict(steps=6, samples=256, seed=3, base_steps=2, max_sweeps=4, refine_sweeps=3)
    full = optimize(den, data, **kw, method="coordinate")

    def interrupt(event):
        if event["event"] == "sweep" and (event["stage"], event["sweep"]) == stop_at:
            raise _Stop

    ckpt = tmp_path / "run.ckpt.json"
    with pytest.raises(_Stop):
        optimize(den, data, checkpoint=ckpt, progress=interrupt, **kw, method="coordinate")
    assert json.loads(ckpt.read_text())["state"]["sweep"] == stop_at[1]
    resumed = optimize(den, data, checkpoint=ckpt, resume=True, **kw, method="coordinate")
    assert torch.equal(resumed.sigmas, full.sigmas)
    assert resumed.calls == full.calls
    assert [h["sigmas"] for h in resumed.history] == [h["sigmas"] for h in full.history]
    # Resuming a finished run gives the same result again.
    again = optimize(den, data, checkpoint=ckpt, resume=True, **kw, method="coordinate")
    assert torch.equal(again.sigmas, full.sigmas)


def test_resume_refuses_other_settings(tmp_path):
    den, data = gaussian_denoiser(0.5), gaussian_data(0.5, 1)
    ckpt = tmp_path / "c.json"
    optimize(den, data, steps=3, samples=64, max_sweeps=1, checkpoint=ckpt, method="coordinate")
    with pytest.raises(AysError, match=r"samples: checkpoint has 64, this run has 128"):
        optimize(den, data, steps=3, samples=128, max_sweeps=1, checkpoint=ckpt, resume=True, method="coordinate")
    with pytest.raises(AysError, match=r"options\.max_sweeps"):
        optimize(den, data, steps=3, samples=64, max_sweeps=2, checkpoint=ckpt, resume=True, method="coordinate")
    ckpt.write_text('{"format": "something-else"}')
    with pytest.raises(AysError, match="not an ays optimiser checkpoint"):
        optimize(den, data, steps=3, samples=64, max_sweeps=1, checkpoint=ckpt, resume=True, method="coordinate")
    # A missing checkpoint starts afresh.
    res = optimize(den, data, steps=3, samples=64, max_sweeps=1, checkpoint=tmp_path / "new.json", resume=True,
                   method="coordinate")
    assert (tmp_path / "new.json").exists() and res.sigmas.numel() == 4


def test_save_load_round_trip(tmp_path):
    vp = DiscreteVP.from_betas()
    res = optimize(gaussian_denoiser(0.5), gaussian_data(0.5, 1), steps=4, samples=128, noise=vp, max_sweeps=2,
                   model="toy", solver="dpmpp_2m", method="coordinate")
    path = tmp_path / "s.json"
    res.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "ays-schedule/1"
    for key in ("sigmas", "steps", "solver", "model", "sigma_min", "sigma_max", "method", "klub", "created",
                "ays_version", "timesteps"):
        assert key in doc
    back = load_schedule(path)
    assert isinstance(back, OptimizeResult)
    assert torch.equal(back.sigmas, res.sigmas) and torch.equal(back.timesteps, res.timesteps)
    assert (back.steps, back.solver, back.method, back.model, back.klub, back.calls) == (
        4, "dpmpp_2m", "coordinate", "toy", res.klub, res.calls)
    assert back.settings == res.settings and back.history == res.history
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other/1", "sigmas": [2.0, 1.0]}', "format is 'other/1'"),
        ('[1, 2]', "expected a JSON object"),
        ('{"format": "ays-schedule/1", "sigmas": [1.0, 2.0]}', "strictly decreasing"),
        ('{"format": "ays-schedule/1", "sigmas": [2.0, 0.0]}', "must be > 0"),
        ('{"format": "ays-schedule/1", "sigmas": [2.0, 1.0], "steps": 3}', "'steps' is 3"),
        ('{"format": "ays-schedule/1", "sigmas": ["a", 1.0]}', "list of numbers"),
        ('{"format": "ays-schedule/1", "sigmas": [2.0, 1.0], "timesteps": [1, 5]}', "strictly decreasing"),
    ],
)
def test_load_rejects_corrupt_or_foreign_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(AysError, match=message):
        load_schedule(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(AysError, match="does not exist"):
        load_schedule(tmp_path / "nope.json")


def test_bad_inputs():
    den, data = gaussian_denoiser(1.0), gaussian_data(1.0, 1)
    with pytest.raises(AysError, match="steps must be at least 1"):
        optimize(den, data, steps=0, method="coordinate")
    with pytest.raises(AysError, match="sigma_min must be below sigma_max"):
        optimize(den, data, sigma_min=5.0, sigma_max=1.0, method="coordinate")
    with pytest.raises(AysError, match="unknown method 'nope'"):
        optimize(den, data, method="nope")
    with pytest.raises(AysError, match="unknown solver 'nope'"):
        optimize(den, data, solver="nope", method="coordinate")
    with pytest.raises(AysError, match="unknown option"):
        optimize(den, data, steps=2, samples=16, bogus=1, method="coordinate")
    with pytest.raises(AysError, match="candidates must be odd"):
        optimize(den, data, steps=2, samples=16, candidates=4, method="coordinate")
    with pytest.raises(AysError, match="resume=True needs a checkpoint"):
        optimize(den, data, resume=True, method="coordinate")
    with pytest.raises(AysError, match="samples"):
        optimize(den, data, samples=1, method="coordinate")
    with pytest.raises(AysError, match="denoiser"):
        optimize("not a function", data, method="coordinate")
    with pytest.raises(AysError, match="init"):
        optimize(den, data, init=[1.0, 2.0, 3.0], method="coordinate")
    with pytest.raises(AysError, match="sigma_min"):
        optimize(den, data, init=[10.0, 1.0, 0.1], sigma_min=0.2, method="coordinate")
    with pytest.raises(AysError, match="NaN or inf at sigma="):
        optimize(lambda x, s: x * float("nan"), data, steps=2, samples=16, method="coordinate")


def test_init_sets_start_and_range():
    init = schedules.loglinear(4, 0.01, 20.0)
    res = optimize(gaussian_denoiser(1.0), gaussian_data(1.0, 1), steps=4, samples=128, init=init, max_sweeps=1,
                   method="coordinate")
    assert res.history[0]["sigmas"] == init.tolist()
    assert res.sigmas[0] == 20.0 and res.sigmas[-1] == 0.01


def test_methods_registry_and_callable_package():
    import ays.optimize as package

    assert "coordinate" in METHODS
    res = ays.optimize(gaussian_denoiser(1.0), gaussian_data(1.0, 1), steps=2, samples=32, max_sweeps=1,
                       method="coordinate")
    assert isinstance(res, package.OptimizeResult)
    assert ays.load_schedule is load_schedule


def test_atomic_writes(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"a": 0.1 + 0.2})
    assert json.loads(path.read_text())["a"] == 0.1 + 0.2  # exact float round trip
    # A failure half-way leaves the old file and no temporary file.
    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(AysError, match="No space left"):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert json.loads(path.read_text())["a"] == 0.1 + 0.2
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    with pytest.raises(AysError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "f.txt", "x")
    with pytest.raises(AysError):
        atomic_write_json(path, {"a": float("nan")})


_KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from ays.optimize import optimize

def den(x, s):
    s = s.reshape(-1, 1)
    return 0.25 / (0.25 + s * s) * x

def data(n, g):
    return 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)

def hook(event):
    if event["event"] == "sweep" and event["stage"] == 1 and event["sweep"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)

optimize(den, data, checkpoint=sys.argv[1], progress=hook, steps=6, samples=256, seed=3, base_steps=2,
         max_sweeps=4, refine_sweeps=3, method="coordinate")
"""


def test_resume_after_sigkill(tmp_path):
    import signal
    import subprocess
    import sys

    ckpt = tmp_path / "killed.json"
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(ckpt)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["killed.json"]  # no half-written temporary file
    kw = dict(steps=6, samples=256, seed=3, base_steps=2, max_sweeps=4, refine_sweeps=3)
    den, data = gaussian_denoiser(0.5), gaussian_data(0.5, 1)
    resumed = optimize(den, data, checkpoint=ckpt, resume=True, **kw, method="coordinate")
    assert torch.equal(resumed.sigmas, optimize(den, data, **kw, method="coordinate").sigmas)

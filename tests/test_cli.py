"""The success paths of the ``ays`` command: every README command runs, on small settings, and each
file it writes is what it says it is (schedule files load with ``ays.load_schedule``, results files
are ``ays-evaluation/1``, pictures open as PNGs, samples load as tensors).

Commands run in-process through :func:`ays.cli.main`, as the ``ays`` script does, except the
entry-point case, which runs the installed script in a subprocess: what it checks is the script's
own import path.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import ays
from ays import schedules as S
from ays.cli import _COMMANDS, cli, main
from ays.optimize.api import optimize as optimize_fn

#: Small settings for method "ays" (the default): a coarse KLUB table and few selection draws.
SMALL_AYS = ["--samples", "64", "-O", "grid=24", "-O", "final_samples=64", "-O", "select_samples=32",
             "-O", "reference_steps=6", "-O", "refine_sweeps=0", "-O", "path_points=3"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def ok(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    code, out, err = run(args, capsys)
    assert code == 0, err
    return out, err


def is_png(path: Path) -> bool:
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] > 50 and img.size[1] > 50


def results_doc(path: Path) -> dict:
    doc = json.loads(path.read_text())
    assert doc["format"] == "ays-evaluation/1"
    return doc


def option_default(command: str, name: str):
    return next(p.default for p in cli.get_command(None, command).params if p.name == name)  # type: ignore[union-attr]


# ------------------------------------------------------------------ defaults
def test_one_set_of_defaults_across_library_and_commands() -> None:
    lib = inspect.signature(optimize_fn).parameters
    assert lib["solver"].default == ays.optimize.DEFAULT_SOLVER
    assert lib["method"].default == ays.optimize.DEFAULT_METHOD
    for command in ("optimize", "demo"):
        assert option_default(command, "solver") == lib["solver"].default, command
        assert option_default(command, "method") == lib["method"].default, command
        assert option_default(command, "samples") == lib["samples"].default, command
    assert option_default("evaluate", "solvers") == lib["solver"].default
    assert option_default("evaluate", "method") == lib["method"].default
    assert option_default("evaluate", "optimize_samples") == lib["samples"].default
    assert option_default("plot", "samples") == 8192  # --klub needs a number: the paper's (lib: None, the method's)
    assert option_default("evaluate", "samples") == option_default("demo", "eval_samples")
    assert option_default("sample", "solver") is None  # the schedule file's, else the default (tested below)


def test_sample_help_describes_diffusers_as_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["sample", "--help"], capsys)
    assert "optimise instead" not in out and "diffusers pipeline folder" in out


# ------------------------------------------------------------------ demo
def test_demo_writes_a_schedule_results_and_pictures_and_its_schedule_samples(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    out, err = ok(["demo", "--steps", "4", *SMALL_AYS, "--eval-samples", "64", "--seeds", "2", "--progress",
                   "-o", str(out_dir)], capsys)
    # No silent part: a bar for each peer's stages, the evaluation and the plots (tqdm's "desc: ..%|").
    for desc in ("gits [a-z]+", "ld3 [a-z]+", "oss [a-z]+", "evaluate", "plots"):
        assert re.search(rf"(^|\r|\n){desc}: +\d+%", err), (desc, err[-2000:])
    sched = out_dir / f"gmm-8x8-{ays.optimize.DEFAULT_SOLVER}-4.json"
    assert f"wrote {sched} (schedule)" in out
    res = ays.load_schedule(sched)  # the schedule file is a schedule file, not the results
    prob = ays.problems.get("gmm-8x8")
    assert res.steps == 4 and res.solver == ays.optimize.DEFAULT_SOLVER
    assert res.sigmas[0].item() == prob.sigma_max and res.sigmas[-1].item() == prob.sigma_min
    doc = results_doc(out_dir / f"results-gmm-8x8-{ays.optimize.DEFAULT_SOLVER}-4.json")
    calls = {r["schedule"]: r["calls"] for r in doc["rows"]}
    assert set(calls) == {"karras", "loglinear", "time_uniform", "kl_optimal", "gits", "ld3", "oss", "ays"}
    # calls: what finding each schedule cost; a heuristic is a formula, the method's is its file's count, and
    # GITS at its defaults spends teacher_samples × (grid − 1) × refine = 256 × 60 × 2 rows, whatever the steps
    assert calls["karras"] == calls["loglinear"] == calls["time_uniform"] == calls["kl_optimal"] == 0
    assert calls["ays"] == res.calls > 0 and calls["ld3"] > 0 and calls["oss"] > 0
    assert calls["gits"] == 256 * 60 * 2
    assert f"{calls['ld3']:,} denoiser calls" in out
    header = (out_dir / f"results-gmm-8x8-{ays.optimize.DEFAULT_SOLVER}-4.csv").read_text().splitlines()[0]
    assert "schedule" in header.split(",")
    assert is_png(out_dir / "schedules.png") and is_png(out_dir / "samples.png")
    # The README's next step: sample with the demo's schedule; the file brings its solver.
    _, err = ok(["sample", "gmm-8x8", "--schedule", str(sched), "-N", "50"], capsys)
    assert f"4 steps of {ays.optimize.DEFAULT_SOLVER}" in err and "warning" not in err


def test_demo_on_a_problem_without_modes_judges_it_by_what_it_has(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # A Gaussian has a density and no modes to count: the demo leaves `modes` out before any work,
    # instead of failing after the schedule file is written.
    out_dir = tmp_path / "out"
    ok(["demo", "--problem", "gaussian", "--steps", "3", *SMALL_AYS, "--eval-samples", "64", "--seeds", "2",
        "-q", "-o", str(out_dir)], capsys)
    doc = results_doc(out_dir / f"results-gaussian-{ays.optimize.DEFAULT_SOLVER}-3.json")
    columns = set(doc["rows"][0])
    assert {"nll", "sliced_w2"} <= columns and not columns & {"dropped_modes", "mode_tv", "off_mode"}


# ------------------------------------------------------------------ optimize
def test_optimize_problem_equals_the_library_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, picture = tmp_path / "g.json", tmp_path / "g.png"
    out, err = ok(["optimize", "gaussian", "--steps", "3", *SMALL_AYS, "-q", "--out", str(path),
                   "--plot", str(picture)], capsys)
    res = ays.load_schedule(path)
    prob = ays.problems.get("gaussian")
    lib = ays.optimize(prob.denoiser, prob, steps=3, samples=64, grid=24, final_samples=64, select_samples=32,
                       reference_steps=6, refine_sweeps=0, path_points=3,
                       model="gaussian (exact denoiser)")
    assert torch.equal(res.sigmas, lib.sigmas)  # the command is the library call with the same defaults
    assert (res.solver, res.method) == (lib.solver, lib.method) == (ays.optimize.DEFAULT_SOLVER,
                                                                     ays.optimize.DEFAULT_METHOD)
    assert [float(v) for v in out.split()] == pytest.approx(res.sigmas.tolist(), rel=1e-5)
    assert "KLUB: the paper's upper bound" in err  # a printed KLUB says what it is
    assert is_png(picture) and not (tmp_path / "g.json.ckpt.json").exists()


def test_optimize_stores_the_end_points_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    ok(["optimize", "gmm-8x4", "--steps", "3", "--sigma-min", "0.002", "--sigma-max", "80", *SMALL_AYS, "-q",
        "--out", str(path)], capsys)
    doc = json.loads(path.read_text())
    assert doc["sigmas"][0] == 80.0 and doc["sigmas"][-1] == 0.002
    assert doc["sigma_max"] == 80.0 and doc["sigma_min"] == 0.002


def test_exact_ends_fixes_rounding_only() -> None:
    from ays.optimize.result import exact_ends

    s = torch.tensor([79.99999999999997, 3.0, 0.0020000000000000005], dtype=torch.float64)
    fixed = exact_ends(s, {"sigma_min": 0.002, "sigma_max": 80.0})
    assert fixed.tolist() == [80.0, 3.0, 0.002] and s[0].item() != 80.0  # the input is not changed
    far = torch.tensor([79.0, 3.0, 0.0021], dtype=torch.float64)
    assert torch.equal(exact_ends(far, {"sigma_min": 0.002, "sigma_max": 80.0}), far)


def test_optimize_entry_point_from_the_working_directory(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent("""
        import torch

        def load():
            c = 0.5  # N(0, c^2 I): exact denoiser x * c^2 / (c^2 + sigma^2)
            den = lambda x, s: x * c**2 / (c**2 + s.reshape(-1, 1) ** 2)
            return den, lambda n, g: c * torch.randn(n, 2, generator=g, dtype=torch.float64)
    """))
    script = Path(sys.executable).with_name("ays")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(script), "optimize", "mypkg.models:load", "--steps", "3", "--method", "dp",
                           "--samples", "64", "-O", "grid=24", "-O", "final_samples=64", "-q", "--out", "s.json"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    res = ays.load_schedule(tmp_path / "s.json")
    # No range from the model: EDM's, exactly, with a one-line note that says so.
    assert res.sigmas[0].item() == 80.0 and res.sigmas[-1].item() == 0.002
    assert sum("using EDM's" in line for line in proc.stderr.splitlines()) == 1


# ------------------------------------------------------------------ sample
def test_sample_with_a_published_table_saves_samples_and_a_picture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pt, png = tmp_path / "x.pt", tmp_path / "x.png"
    _, err = ok(["sample", "gmm-8x8", "--schedule", "sdxl", "-n", "5", "-N", "64", "--out", str(pt),
                 "--plot", str(png)], capsys)
    x = torch.load(pt, weights_only=True)
    assert x.shape == (64, 2) and torch.isfinite(x).all()
    assert f"5 steps of {ays.optimize.DEFAULT_SOLVER}" in err and is_png(png)


def test_a_schedule_file_brings_its_solver_and_a_mismatch_warns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.json"
    ays.optimize.OptimizeResult(sigmas=S.karras(4, 0.002, 80.0), steps=4, solver="euler", method="x").save(path)
    _, err = ok(["sample", "gaussian", "--schedule", str(path), "-N", "8"], capsys)
    assert "4 steps of euler" in err and "warning" not in err
    _, err = ok(["sample", "gaussian", "--schedule", str(path), "-N", "8", "--solver", "heun"], capsys)
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "euler" in warnings[0] and "heun" in warnings[0]
    assert "4 steps of heun" in err


# ------------------------------------------------------------------ schedule
def test_schedule_heuristic_defaults_to_edm_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = ok(["schedule", "karras", "--steps", "10", "-f", "json"], capsys)
    assert torch.equal(torch.tensor(json.loads(out), dtype=torch.float64), S.karras(10, 0.002, 80.0))
    assert len(err.splitlines()) == 1 and "note" in err and "--sigma-min" in err
    path = tmp_path / "k.json"
    ok(["schedule", "kl_optimal", "-n", "6", "--sigma-min", "0.002", "--sigma-max", "80", "-f", "ays",
        "-o", str(path)], capsys)
    res = ays.load_schedule(path)
    assert torch.equal(res.sigmas, S.kl_optimal(6, 0.002, 80.0))
    assert res.sigmas[0].item() == 80.0 and res.sigmas[-1].item() == 0.002
    # A copy of a saved schedule, interpolated to more steps, keeps the solver it was made for.
    made = tmp_path / "made.json"
    ays.optimize.OptimizeResult(sigmas=S.karras(4, 0.002, 80.0), steps=4, solver="heun", method="x").save(made)
    ok(["schedule", str(made), "-n", "8", "-f", "ays", "-o", str(tmp_path / "copy.json")], capsys)
    copy = ays.load_schedule(tmp_path / "copy.json")
    assert copy.solver == "heun" and copy.steps == 8
    assert torch.allclose(copy.sigmas[::2], S.karras(4, 0.002, 80.0), rtol=1e-12)  # log-linear: old levels kept


# ------------------------------------------------------------------ plot
def test_plot_takes_tables_files_and_heuristics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    ays.optimize.OptimizeResult(sigmas=S.loglinear(10, 0.002, 80.0), steps=10, solver="euler", method="x").save(path)
    png = tmp_path / "a.png"
    _, err = ok(["plot", "sdxl", "karras", "-o", str(png)], capsys)
    assert is_png(png) and sum("using EDM's" in line for line in err.splitlines()) == 1
    png = tmp_path / "b.png"
    _, err = ok(["plot", str(path), "karras", "kl_optimal", "--steps", "10", "--klub", "gmm-8x8", "--samples", "64",
                 "-o", str(png)], capsys)
    assert is_png(png) and "KLUB: the paper's upper bound" in err
    assert "using EDM's" not in err  # the --klub problem's range
    assert {line.split(":")[0] for line in err.splitlines() if ": KLUB " in line} == {str(path), "karras",
                                                                                      "kl_optimal"}


def test_optimize_and_plot_klub_say_what_they_estimate_and_agree_within_their_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The README's pair: `ays optimize` reports its schedule's KLUB on the method's fresh final chains (64
    # for ays), `ays plot --klub` on --samples chains (8,192): one number, the paper's estimator on each's
    # chains, so they differ by their errors only (measured: 1578 ± 340 and 2375 ± 33, 2.3 combined errors).
    path = tmp_path / "gmm.json"
    _, err = ok(["optimize", "gmm-8x8", "--solver", "dpmpp_2m_sde", "--steps", "10", "--out", str(path)], capsys)
    number = r"([\d.e+]+) ± ([\d.e+]+) on ([\d,]+) chains"
    a = re.search(rf"^KLUB {number}, ", err, flags=re.M)
    assert a is not None and a[3] == "64" and "estimate the same number" in err, err
    _, err = ok(["plot", str(path), "--steps", "10", "--klub", "gmm-8x8", "-o", str(tmp_path / "c.png")], capsys)
    b = re.search(rf": KLUB {number}$", err, flags=re.M)
    assert b is not None and b[3] == "8,192", err
    (ka, sa), (kb, sb) = (float(a[1]), float(a[2])), (float(b[1]), float(b[2]))
    assert abs(ka - kb) <= 3 * (sa * sa + sb * sb) ** 0.5


# ------------------------------------------------------------------ evaluate
def test_evaluate_writes_an_evaluation_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "res"
    out, _ = ok(["evaluate", "gaussian", "--schedules", "karras,sdxl", "--steps", "3", "--seeds", "2",
                 "--samples", "64", "-q", "--out", str(out_dir)], capsys)
    doc = results_doc(out_dir / "results.json")
    assert {(r["schedule"], r["solver"]) for r in doc["rows"]} == {("karras", ays.optimize.DEFAULT_SOLVER),
                                                                   ("sdxl", ays.optimize.DEFAULT_SOLVER)}
    assert "karras" in out and (out_dir / "results.csv").is_file()


# ------------------------------------------------------------------ train, model files
def test_train_reports_the_floor_as_an_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["train", "gaussian", "--steps", "30", "--batch-size", "32", "-N", "hidden=16",
                 "--out", str(tmp_path / "m.pt"), "--plot", str(tmp_path / "loss.png")], capsys)
    assert re.search(r"final loss [0-9.]+ ± [0-9.]+", out) and re.search(r"estimate: [0-9.]+ ± [0-9.]+", out)
    assert is_png(tmp_path / "loss.png")


def test_ideal_loss_error_covers_the_closed_form() -> None:
    """Gaussian data N(0, c²): E||D* - x0||²/d = c²σ²/(c²+σ²), so the floor is a 1-D integral over
    EDM's log-normal σ; the Monte Carlo estimate must lie within 4 of its standard errors."""
    from ays.denoisers import edm_loss_weight
    from ays.train import P_MEAN, P_STD, ideal_loss

    prob, sd = ays.problems.get("gaussian"), 0.5
    c2 = float(prob.sample(200000, torch.Generator().manual_seed(0)).var())
    z = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    sigma = torch.exp(P_MEAN + P_STD * z)
    dens = torch.exp(-z**2 / 2) / (2 * torch.pi) ** 0.5
    exact = float(torch.trapezoid(edm_loss_weight(sigma, sd) * c2 * sigma**2 / (c2 + sigma**2) * dens, z))
    est, se = ideal_loss(prob, sd, samples=16384)
    assert abs(est - exact) < 4 * se and se < 0.05 * exact


@pytest.mark.parametrize("content", [b"garbage", b"", b'{"a": 1}'])
def test_a_bad_model_file_is_one_whole_line(content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    code, _, err = run(["sample", "gaussian", "--model", str(bad), "-N", "4"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.rstrip().endswith(")") and "weights_only" not in err


def test_every_command_has_a_success_test() -> None:
    source = Path(__file__).read_text()
    assert all(f'["{name}"' in source or f'"{name}", ' in source for name in _COMMANDS)

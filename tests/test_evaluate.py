"""``ays.evaluate`` and ``ays evaluate``: judged on Gaussian data, where the truth is known.

For data ``N(0, c² I)`` and the exact denoiser every solver's output is ``N(0, v I)`` with
``v`` known exactly (:func:`ays.analysis.output_variance`), and the sliced Wasserstein-2
distance between ``N(0, v I)`` and ``N(0, c² I)`` is ``|sqrt(v) - c|``. Finite samples add
a floor (two independent exact sample sets are not at distance 0); the tests measure
that floor on exact samples of the same size and compare against it.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import ays
from ays import evaluate as ev
from ays import metrics
from ays.analysis import output_variance
from ays.cli import main
from ays.evaluate.seeds import seed_generator
from ays.validate import AysError

C = 0.5
N = 2048


@pytest.fixture(scope="module")
def prob() -> ays.problems.Gaussian:
    return ays.problems.get("gaussian")


@pytest.fixture(scope="module")
def floor(prob: ays.problems.Gaussian) -> tuple[float, float]:
    """Mean and sd of sliced W2 between two independent exact sample sets of size N."""
    vals = []
    for s in range(6):
        a = prob.sample(N, torch.Generator().manual_seed(100 + 2 * s))
        b = prob.sample(N, torch.Generator().manual_seed(101 + 2 * s))
        vals.append(metrics.sliced_w2(a, b).value)
    t = torch.tensor(vals)
    return float(t.mean()), float(t.std())


HEURISTICS = ["karras", "loglinear", "time_uniform", "kl_optimal"]


def test_many_steps_every_schedule_is_within_monte_carlo_error_of_zero(
    prob: ays.problems.Gaussian, floor: tuple[float, float]
) -> None:
    rows = ev.evaluate(prob.denoiser, prob, HEURISTICS, ["dpmpp_2m"], [40], seeds=3, samples=N,
                       metrics=["sliced_w2"])
    mean, sd = floor
    assert [r["schedule"] for r in rows] == HEURISTICS
    for r in rows:
        # Within the spread of exact-vs-exact distances: no schedule is distinguishable from the truth.
        assert r["sliced_w2"] < mean + 4 * sd, r
        assert r["nfe"] == 40 and r["calls"] == 40 * N * 3


def test_few_steps_match_the_exact_output_law(prob: ays.problems.Gaussian, floor: tuple[float, float]) -> None:
    rows = ev.evaluate(prob.denoiser, prob, HEURISTICS, ["euler"], [4], seeds=3, samples=N, metrics=["sliced_w2"])
    by_name = {r["schedule"]: r for r in rows}
    for name, r in by_name.items():
        v = output_variance("euler", ays.schedules.to_sampling(torch.tensor(r["sigmas"])), C)
        # SW2² ≈ (sqrt(v) - c)² + floor²: the scale error and the sampling floor add in quadrature.
        expected = math.sqrt((math.sqrt(v) - C) ** 2 + floor[0] ** 2)
        assert abs(r["sliced_w2"] - expected) < 0.1 * expected + 3 * r["sliced_w2_err"], (name, r, expected)
    # Thm 3.1: kl_optimal is the best schedule for Euler on Gaussian data, and evaluate sees it.
    best = min(by_name.values(), key=lambda r: r["sliced_w2"])
    assert best["schedule"] == "kl_optimal"
    others = [r for r in rows if r["schedule"] != "kl_optimal"]
    assert all(best["sliced_w2"] + best["sliced_w2_err"] < r["sliced_w2"] - r["sliced_w2_err"] for r in others)


def test_a_broken_denoiser_gets_a_clearly_worse_metric(prob: ays.problems.Gaussian) -> None:
    def broken(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return 0.8 * prob.denoiser(x, sigma)  # shrinks every estimate: samples too narrow

    kw = dict(schedules=["karras"], solvers=["dpmpp_2m"], steps=[20], seeds=3, samples=N,
              metrics=["sliced_w2", "energy", "nll"])
    good = ev.evaluate(prob.denoiser, prob, **kw)[0]
    bad = ev.evaluate(broken, prob, **kw)[0]
    for m in ("sliced_w2", "energy"):
        assert bad[m] - bad[m + "_err"] > good[m] + good[m + "_err"], m
    assert bad["sliced_w2"] > 3 * good["sliced_w2"]


def test_common_random_numbers_and_per_seed_values(prob: ays.problems.Gaussian) -> None:
    schedules = {"a": "loglinear", "b": lambda n: ays.schedules.loglinear(n, 0.002, 80.0), "c": "karras"}
    rows = ev.evaluate(prob.denoiser, prob, schedules, ["euler", "stochastic_ddim"], [5], seeds=2, samples=512,
                       metrics=["sliced_w2", "energy"])
    by = {(r["schedule"], r["solver"]): r for r in rows}
    for solver in ("euler", "stochastic_ddim"):
        # The same schedule under two names sees the same noise (and Brownian path): identical values.
        assert by[("a", solver)]["per_seed"] == by[("b", solver)]["per_seed"]
        assert by[("a", solver)]["per_seed"] != by[("c", solver)]["per_seed"]
        # Seeds are independent replicates.
        vals = by[("a", solver)]["per_seed"]["sliced_w2"]
        assert len(vals) == 2 and vals[0] != vals[1]


def test_confidence_interval_agrees_with_scipy() -> None:
    from scipy import stats

    vals = [1.0, 1.4, 0.7, 1.1, 0.95]
    mean, half = ev.confidence_interval(vals)
    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=stats.tmean(vals), scale=stats.sem(vals))
    assert mean == pytest.approx((lo + hi) / 2, rel=1e-12)
    assert half == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert ev.confidence_interval([2.0]) == (2.0, None)
    with pytest.raises(AysError):
        ev.confidence_interval([1.0, float("nan")])


def test_schedule_specs_resolve(prob: ays.problems.Gaussian, tmp_path: pytest.TempPathFactory) -> None:
    res = ays.OptimizeResult(sigmas=ays.schedules.kl_optimal(10, 0.002, 80.0), steps=10, solver="euler",
                             method="coordinate")
    path = tmp_path / "sched.json"
    res.save(path)
    lo, hi = prob.sigma_min, prob.sigma_max
    torch.testing.assert_close(ev.resolve_schedule("karras", 7, "euler", lo, hi), ays.schedules.karras(7, lo, hi))
    want = ays.schedules.interpolate(res.sigmas, 6)
    torch.testing.assert_close(ev.resolve_schedule(str(path), 6, "euler", lo, hi), want)
    torch.testing.assert_close(ev.resolve_schedule(res, 6, "euler", lo, hi), want)
    torch.testing.assert_close(ev.resolve_schedule(res, 10, "euler", lo, hi), res.sigmas)
    per = {("euler", 5): ays.schedules.loglinear(5, lo, hi), 8: ays.schedules.karras(8, lo, hi)}
    torch.testing.assert_close(ev.resolve_schedule(per, 5, "euler", lo, hi), per[("euler", 5)])
    torch.testing.assert_close(ev.resolve_schedule(per, 8, "heun", lo, hi), per[8])
    with pytest.raises(AysError, match="no entry"):
        ev.resolve_schedule(per, 5, "heun", lo, hi)
    with pytest.raises(AysError, match="unknown schedule"):
        ev.resolve_schedule("karas", 5, "euler", lo, hi)
    with pytest.raises(AysError, match=r"decreasing|increasing|strictly"):
        ev.resolve_schedule([1.0, 2.0, 3.0], 2, "euler", lo, hi)
    assert ev.schedule_label(str(path)) == "sched" and ev.schedule_label(res) == "ays"


def test_bad_arguments_are_refused(prob: ays.problems.Gaussian) -> None:
    call = dict(schedules=["karras"], solvers=["euler"], steps=[4], seeds=1, samples=64, metrics=["sliced_w2"])
    with pytest.raises(AysError, match="solver"):
        ev.evaluate(prob.denoiser, prob, **{**call, "solvers": ["eulr"]})
    with pytest.raises(AysError, match="steps"):
        ev.evaluate(prob.denoiser, prob, **{**call, "steps": [0]})
    with pytest.raises(AysError, match="metric"):
        ev.evaluate(prob.denoiser, prob, **{**call, "metrics": ["fid"]})
    with pytest.raises(AysError, match="twice"):
        ev.evaluate(prob.denoiser, prob, **{**call, "schedules": ["karras", "karras"]})
    with pytest.raises(AysError, match="density"):
        ev.evaluate(prob.denoiser, ays.problems.empirical(torch.randn(10, 2)), **{**call, "metrics": ["nll"]})
    with pytest.raises(AysError, match=r"NaN|inf|finite"):
        ev.evaluate(lambda x, s: x * float("nan"), prob, **call)


def test_default_metrics_fit_the_problem(prob: ays.problems.Gaussian) -> None:
    assert ev.default_metrics(prob) == ["nll", "sliced_w2", "energy"]
    grid = ays.problems.get("gmm-8x8")
    assert ev.default_metrics(grid) == ["nll", "sliced_w2", "energy", "modes"]
    digits = ays.problems.empirical(torch.zeros(3, 1, 8, 8), name="digits")
    assert ev.default_metrics(digits) == ["sliced_w2", "energy", "digits_fd", "precision_recall"]
    clips = ays.problems.empirical(torch.zeros(3, 4, 16, 16), name="digits-video")
    assert ev.default_metrics(clips) == ["sliced_w2", "energy", "motion"]


def test_modes_and_klub_columns() -> None:
    grid = ays.problems.get("gmm-6x6")
    rows = ev.evaluate(grid.denoiser, grid, ["karras"], ["euler"], [8], seeds=2, samples=1024,
                       metrics=["modes", "klub"], klub_samples=512)
    r = rows[0]
    assert {"dropped_modes", "mode_tv", "off_mode", "klub"} <= set(r)
    assert 0.0 <= r["mode_tv"] <= 1.0 and r["klub"] > 0.0
    # The KLUB column is the estimator's value for the schedule on the same draws (up to
    # float summation order).
    est = ays.klub(grid.denoiser, grid, torch.tensor(r["sigmas"]), samples=512,
                   generator=seed_generator(0, "klub"))
    assert r["per_seed"]["klub"][0] == pytest.approx(est.total, rel=1e-6)


def test_write_and_read_back(prob: ays.problems.Gaussian, tmp_path: pytest.TempPathFactory) -> None:
    rows = ev.evaluate(prob.denoiser, prob, ["karras", "loglinear"], ["euler"], [3, 5], seeds=2, samples=256,
                       metrics=["sliced_w2", "nll"], model="exact")
    paths = ev.write_results(rows, tmp_path / "out", meta={"note": "test"})
    assert set(paths) >= {"csv", "json", "sliced_w2", "nll"}
    for key in ("sliced_w2", "nll"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["format"] == ev.FORMAT and doc["meta"] == {"note": "test"}
    assert doc["rows"] == json.loads(json.dumps(rows))
    for back in (ev.read_results(paths["json"]), ev.read_results(paths["csv"])):
        assert len(back) == len(rows)
        for a, b in zip(rows, back):
            for key in ("problem", "model", "schedule", "solver", "steps", "nfe", "seeds", "samples", "calls",
                        "sliced_w2", "sliced_w2_err", "nll", "nll_err"):
                assert a[key] == b[key], key  # floats round-trip exactly (repr)
            assert a["sigmas"] == b["sigmas"]
    with open(paths["csv"], newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["problem", "model", "schedule", "solver", "steps"] and header[-1] == "sigmas"
    table = ev.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) and "±" in lines[2]
    assert ev.format_table(rows, markdown=True).startswith("| schedule | solver |")
    with pytest.raises(AysError, match="not an"):
        (tmp_path / "x.json").write_text('{"rows": []}')
        ev.read_results(tmp_path / "x.json")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def test_cli_runs_and_writes(tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    res = ays.OptimizeResult(sigmas=ays.schedules.kl_optimal(10, 0.002, 80.0), steps=10, solver="euler",
                             method="coordinate")
    res.save(tmp_path / "mine.json")
    code, out, err = _cli(["evaluate", "gaussian", "--schedules", f"karras,{tmp_path / 'mine.json'}",
                           "--solvers", "euler", "--steps", "3,4", "--seeds", "2", "--samples", "128",
                           "--metrics", "sliced_w2", "--out", str(tmp_path / "res"), "-q"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["schedule", "solver", "steps", "nfe"]
    assert sum(line.startswith("mine") for line in lines) == 2
    back = ev.read_results(tmp_path / "res" / "results.csv")
    assert {r["schedule"] for r in back} == {"karras", "mine"}


def test_cli_optimize_adds_ays(tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["evaluate", "gaussian", "--schedules", "karras", "--solvers", "euler", "--steps", "3",
                           "--seeds", "1", "--samples", "64", "--metrics", "sliced_w2", "--optimize",
                           "--optimize-samples", "64", "--out", str(tmp_path), "-q"], capsys)
    assert code == 0, err
    assert any(line.startswith("ays ") for line in out.splitlines())
    saved = ays.load_schedule(tmp_path / "ays_euler_3.json")
    assert saved.steps == 3


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["nope"], "unknown problem"),
        (["gaussian", "--solvers", "eulr"], "solver"),
        (["gaussian", "--steps", "5,x"], "--steps"),
        (["gaussian", "--steps", "0"], "--steps"),
        (["gaussian", "--schedules", "karras,,loglinear"], "--schedules"),
        (["gaussian", "--schedules", "karas"], "unknown schedule"),
        (["gaussian", "--schedules", "missing.json"], "does not exist"),
        (["gaussian", "--model", "nonexistent-model.pt"], "--model"),
        (["gaussian", "--metrics", "fid"], "metric"),
        (["gaussian", "--seeds", "0"], "--seeds"),
        (["gaussian", "--samples", "abc"], "samples"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _cli(["evaluate", *args, "-q"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ays: error:") and fragment in lines[0], err
    assert "Traceback" not in err

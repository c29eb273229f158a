"""Every table script in ``benchmarks/`` runs in its small form and writes well-formed files.

Each script runs in-process on tiny settings into a temporary folder; the checks are on
what the harness (``benchmarks/_harness.py``) promises: the CSV's header is the JSON
rows' keys, the markdown tables have one line per cell, every file names the exact
command, and a cell's interval is the Student-t interval of its per-seed values.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from ays.optimize.ays import SelectOptions

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
H = importlib.import_module("_harness")

T_975_1 = 12.706204736174698  # Student-t quantile t_{0.975} with 1 degree of freedom (2 seeds)


def _script(name: str):
    return importlib.import_module(name)


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _md_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: each a list of rows (header first, the rule dropped) of cells."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not all(set(c) <= {"-"} and c for c in cells):
                current.append(cells)
        else:
            current = None
    return tables


def _check_schedules_table(out: Path, stem: str, script: str, md: Path, row_keys: int = 2) -> list[dict]:
    """The files of a schedules table (ays.evaluate rows): CSV = JSON, pivots of one line per cell."""
    doc = json.loads((out / f"{stem}.json").read_text())
    rows = doc["rows"]
    assert doc["format"] == "ays-evaluation/1" and rows
    assert doc["meta"]["command"].startswith(f"python benchmarks/{script}.py ")
    assert doc["meta"]["machine"]["cpu_count"] >= 1
    header, body = _csv(out / f"{stem}.csv")
    scalar = [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))]
    assert header == [*scalar, "sigmas"]
    assert len(body) == len(rows)
    for row, rec in zip(rows, body):
        assert [float(s) for s in rec["sigmas"].split()] == pytest.approx(row["sigmas"], rel=1e-15)
        assert rec["schedule"] == row["schedule"] and int(rec["steps"]) == row["steps"]
    assert json.loads((out / "machine.json").read_text())["torch"]
    text = md.read_text()
    assert f"Command: `python benchmarks/{script}.py " in text and "Machine: " in text
    *tables, verdicts = _md_tables(text)
    assert tables
    # the verdict table: ays against the best heuristic, one word per (row keys, steps) cell
    cell_keys = ("case", "model", "steps") if row_keys == 3 else ("solver", "steps")
    cells = {tuple(r[k] for k in cell_keys) for r in rows}
    words = [c for line in verdicts[1:] for c in line[row_keys - 1:] if c]
    assert len(words) == len(cells) and set(words) <= {"better", "tied", "worse"}
    for table in tables:
        head, lines = table[0], table[1:]
        assert all(len(line) == len(head) for line in lines)
        # one line per (rows keys), one column per step count: every cell of the table appears once
        filled = sum(1 for line in lines for c in line[row_keys:] if c)
        assert filled == len(rows)
    # Each cell's interval is mean ± t_{0.975, k-1} sd / sqrt(k) over its k = 2 seeds.
    for row in rows:
        for col, values in row["per_seed"].items():
            assert len(values) == 2
            assert row[col] == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-12)
            half = T_975_1 * statistics.stdev(values) / math.sqrt(2)
            assert row[col + "_err"] == pytest.approx(half, rel=1e-9, abs=1e-12)
    return rows


def test_verdict_is_the_interval_overlap() -> None:
    assert H.verdict(1.0, 0.1, 2.0, 0.1) == "better"
    assert H.verdict(2.0, 0.1, 1.0, 0.1) == "worse"
    assert H.verdict(1.0, 0.6, 2.0, 0.5) == "tied"  # [0.4, 1.6] meets [1.5, 2.5]
    assert H.verdict(1.0, 0.4, 2.0, 0.5) == "better"  # [0.6, 1.4] and [1.5, 2.5] are apart
    assert H.verdict(0.9, 0.01, 0.5, 0.01, lower_is_better=False) == "better"  # recall: higher is better
    assert H.verdict(1.0, None, 1.0, None) == "tied"
    for a, b in ((0.3, 0.31), (0.1, 0.9), (5.0, -1.0)):  # antisymmetric
        flip = {"better": "worse", "worse": "better", "tied": "tied"}
        assert H.verdict(a, 0.02, b, 0.03) == flip[H.verdict(b, 0.03, a, 0.02)]


def test_video_and_its_verdicts(tmp_path: Path) -> None:
    _script("video").main(["--quick", "--samples", "32", "--opt-samples", "16", "--klub-samples", "32",
                           "--max-sweeps", "1", "--steps", "3", "--no-plots", "--out", str(tmp_path)])
    rows = _check_schedules_table(tmp_path, "video", "video", tmp_path / "video.md")
    assert {r["schedule"] for r in rows} == {"karras", "loglinear", "time_uniform", "kl_optimal", "ays"}
    assert all(r["klub"] > 0 for r in rows)
    got = H.verdicts(rows, "sliced_w2", "ays", ["karras", "loglinear"])
    assert set(got) == {(s, 3) for s in ("euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde")}
    assert set(got.values()) <= {"better", "tied", "worse"}


def test_digits(tmp_path: Path) -> None:
    _script("digits").main(["--quick", "--model", "exact", "--samples", "32", "--opt-samples", "16",
                            "--klub-samples", "16", "--steps", "3", "--solvers", "euler", "--no-plots",
                            "--out", str(tmp_path)])
    rows = _check_schedules_table(tmp_path, "digits", "digits", tmp_path / "digits.md")
    assert {"digits_fd", "precision", "recall", "sliced_w2", "klub"} <= set(rows[0])



def test_mnist(tmp_path: Path) -> None:
    # --device: the full table's form (on the CPU here); without it and without a GPU, the CPU form
    _script("mnist").main(["--quick", "--device", "cpu", "--heuristics", "karras,loglinear", "--methods", "dmn",
                           "--judge", "dmn",
                           "--steps", "4", "--solvers", "euler", "--samples", "64", "--seeds", "2",
                           "--no-plots", "--out", str(tmp_path)])
    rows = _check_schedules_table(tmp_path, "mnist", "mnist", tmp_path / "mnist.md")
    assert {r["schedule"] for r in rows} == {"karras", "loglinear", "dmn"} and all(r["mnist_fd"] > 0 for r in rows)
    (cost,) = _check_rows(tmp_path, "mnist_cost", "mnist")
    assert cost["method"] == "dmn" and cost["calls"] == 0  # DMN never calls the model
    # the summary: the cost table, and the verdict of dmn against the better heuristic in the one cell
    tables = _md_tables((tmp_path / "mnist_summary.md").read_text())
    assert [line[0] for line in tables[0][1:]] == ["dmn"]
    (word,) = H.verdicts(rows, "mnist_fd", "dmn", ["karras", "loglinear"]).values()
    assert tables[1][1] == ["euler", word]

def test_mnist_cpu_form_judges_by_paired_differences_and_keys_its_cache(tmp_path: Path) -> None:
    m = _script("mnist")
    # Paired differences per seed: a constant gap is significant however noisy the seeds are.
    assert m.paired([10.0, 50.0, 90.0], [11.0, 51.0, 91.5])[2] == "better"
    assert m.paired([10.0, 52.0, 90.0], [11.0, 51.0, 91.0])[2] == "tied"
    assert m.paired([12.0, 52.0, 92.0], [11.0, 51.0, 91.0])[2] == "worse"
    # The schedule cache is keyed on the method's options and source: new options, a new key.
    assert m.cache_key("ld3", {"features": "mnist"}) == m.cache_key("ld3", {"features": "mnist"})
    assert m.cache_key("ld3", {}) != m.cache_key("ld3", {"features": "mnist"}) != m.cache_key("oss", {})
    # The tables from cell files alone (no model): the verdict is the paired one, against the best mean.
    (tmp_path / "cells").mkdir()
    fds = {"karras": [30.0, 40.0, 50.0], "loglinear": [20.0, 60.0, 40.0], "gits": [25.0, 45.0, 30.0],
           "ays": [24.0, 44.0, 49.0]}
    for name, v in fds.items():
        (tmp_path / "cells" / f"{name}-dpmpp_2m-4.json").write_text(json.dumps(
            {"mnist_fd": statistics.mean(v), "mnist_fd_err": 1.0, "per_seed": {"mnist_fd": v}, "calls": 10,
             "seconds": 1.0, "eval_seconds": 1.0}))
    args = type("Args", (), {"out": tmp_path, "command": "python benchmarks/mnist.py --cpu", "seeds": 3,
                             "samples": 400})()
    text = m.cpu_tables(args, [("dpmpp_2m", 4)], ["karras", "loglinear"], ["ays", "gits"], 1.0)
    verdicts = _md_tables(text)[-1]
    assert verdicts[1][:3] == ["dpmpp_2m, 4", "best heuristic", "karras"]  # 40 < 40.67
    assert verdicts[1][4] == m.paired(fds["ays"], fds["karras"])[2] == "tied"
    assert verdicts[2][2] == "gits" and verdicts[2][4] == m.paired(fds["ays"], fds["gits"])[2]
    assert verdicts[2][5] == "1/1"


def test_table4(tmp_path: Path) -> None:
    _script("table4").main(["--quick", "--model", "exact", "--samples", "64", "--opt-samples", "32",
                            "--klub-samples", "64", "--max-sweeps", "1", "--steps", "4", "--cases", "gmm-8x4",
                            "--no-plots", "--out", str(tmp_path)])
    _check_schedules_table(tmp_path, "gmm-8x4_exact", "table4", tmp_path / "table4_exact.md", row_keys=3)


def test_cost(tmp_path: Path) -> None:
    _script("cost").main(["--quick", "--samples", "64", "--eval-samples", "64", "--steps", "4",
                          "--methods", "coordinate,dmn", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "cost_gmm-8x8.json").read_text())
    header, body = _csv(tmp_path / "cost_gmm-8x8.csv")
    assert header == [k for k in doc["rows"][0] if not isinstance(doc["rows"][0][k], (list, dict))] + ["sigmas"]
    (table,) = _md_tables((tmp_path / "cost_gmm-8x8.md").read_text())
    assert [line[0] for line in table[1:]] == [r["schedule"] for r in doc["rows"]] == [b["schedule"] for b in body]
    assert {r["schedule"]: r["opt_calls"] for r in doc["rows"]}["method:dmn"] == 0  # DMN never calls the model
    assert {r["schedule"]: r["opt_calls"] for r in doc["rows"]}["method:coordinate"] > 0


def test_calls(tmp_path: Path) -> None:
    _script("calls").main(["--quick", "--methods", "gits,dmn", "--out", str(tmp_path)])
    rows = _check_rows(tmp_path, "calls", "calls")
    by = {r["method"]: r for r in rows}
    # DMN never calls the model; GITS spends teacher_samples × (grid − 1) × refine = 256 × 60 × 2 rows
    assert by["dmn"]["calls"] == 0 and by["gits"]["calls"] == 256 * 60 * 2
    (table,) = _md_tables((tmp_path / "calls.md").read_text())
    assert [line[1] for line in table[1:]] == [f"{r['calls']:,}" for r in rows]

def test_beyond_and_evidence(tmp_path: Path) -> None:
    beyond = _script("beyond")
    beyond.main(["--quick", "--problems", "line-1d", "--steps", "3", "--solvers", "euler", "--seeds", "2",
                 "--samples", "256", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "beyond_results.json").read_text())
    rows = doc["rows"]
    header, body = _csv(tmp_path / "beyond_results.csv")
    assert header == list(rows[0]) and len(body) == len(rows)
    assert doc["command"].startswith("python benchmarks/beyond.py ")
    methods = [*beyond.HEURISTICS, *beyond.OPTIMISERS]
    assert [r["method"] for r in rows] == methods  # one cell: every method once, all from the same noise
    table = _md_tables((tmp_path / "beyond_table.md").read_text())[0]
    assert table[0] == ["problem", "solver", "n", *methods]
    by = {r["method"]: r for r in rows}
    for m, cell in zip(methods, table[1][3:]):
        assert float(cell.replace("*", "").split()[0]) == pytest.approx(by[m]["sw2"], abs=1e-4)
    # the cell is resumed, not recomputed: a second run renders the same table from the saved cell
    before = (tmp_path / "beyond_table.md").read_text()
    beyond.main(["--render", "--out", str(tmp_path)])
    assert (tmp_path / "beyond_table.md").read_text().split("\n", 1)[1] == before.split("\n", 1)[1]
    # every candidate of the default's portfolio is audited; with its own statistic the audit returns what
    # the default returned (the same evidence noises, teacher and gate)
    cell = json.loads(next((tmp_path / "cells").glob("*.json")).read_text())
    audit = cell["audit"]
    own = SelectOptions().select
    got = audit["candidates"][audit["by_statistic"][own]["result"]]["sigmas"]
    assert got == pytest.approx(cell["methods"]["ays"]["sigmas"], rel=1e-12)
    text = _script("evidence").main(["--cells", str(tmp_path / "cells"), "--out", str(tmp_path)])
    assert "Kendall" in text and (tmp_path / "evidence.md").exists()


def _check_rows(out: Path, stem: str, script: str) -> list[dict]:
    """The files of any other table (:func:`_harness.write_rows`): the CSV's header is the rows' keys."""
    doc = json.loads((out / f"{stem}.json").read_text())
    rows = doc["rows"]
    header, body = _csv(out / f"{stem}.csv")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    assert rows and header == keys and len(body) == len(rows)
    assert doc["command"].startswith(f"python benchmarks/{script}.py ") and doc["machine"]["cpu_count"] >= 1
    text = (out / f"{stem}.md").read_text()
    assert f"Command: `python benchmarks/{script}.py " in text
    return rows


def test_early_stopping(tmp_path: Path) -> None:
    _script("early_stopping").main(["--quick", "--samples", "64", "--sweeps", "2", "--budgets", "1,2", "--cells",
                                    "gmm-8x4", "--radii", "0.3,1.0", "--eval-samples", "500", "--out", str(tmp_path)])
    rows = _check_rows(tmp_path, "early_stopping", "early_stopping")
    (table,) = _md_tables((tmp_path / "early_stopping.md").read_text())
    assert table[0] == ["search radius", "B=1", "B=2"]
    for line in table[1:]:  # each cell counts the rows won at that radius and budget
        for b, cell in zip((1, 2), line[1:]):
            won = [r["won"] for r in rows if r["radius"] == float(line[0]) and r["budget"] == b]
            assert len(won) == 1 and int(cell) == sum(won)
    for r in rows:  # "won" is its definition: below both heuristics on both metrics
        assert r["won"] == all(r[m] < r[f"{h}_{m}"] for h in ("karras", "loglinear") for m in ("nll", "sliced_w2"))


def test_solver_overhead(tmp_path: Path) -> None:
    _script("solver_overhead").main(["--quick", "--dim", "16", "--hidden", "32", "--batch", "8", "--out",
                                     str(tmp_path)])
    rows = _check_rows(tmp_path, "solver_overhead", "solver_overhead")
    from ays import solvers

    assert [r["solver"] for r in rows] == list(solvers.names())
    (table,) = _md_tables((tmp_path / "solver_overhead.md").read_text())
    assert [line[0] for line in table[1:]] == [r["solver"] for r in rows]
    for r in rows:  # slowdown = overhead per step × steps / (denoiser time per call × calls), 10 steps
        assert r["slowdown"] == pytest.approx(r["over_us"] * 10 / (r["den_us"] * r["calls"]), rel=1e-9)


@pytest.mark.slow
def test_route(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    _script("route").main(["--quick", "--out", str(tmp_path)])  # it checks the three ways agree before timing
    rows = _check_rows(tmp_path, "route", "route")
    assert [(r["batch"], r["way"]) for r in rows] == [(b, w) for b in ("one level", "row levels")
                                                      for w in ("adapter", "route", "route, levels apart")]
    for r in rows:  # calls per CPU second and CPU milliseconds per call are one figure
        assert r["calls_per_s"] == pytest.approx(1e3 / r["cpu_ms_per_call"], rel=1e-9) and r["spread"] >= 1
        adapter = next(a for a in rows if a["batch"] == r["batch"] and a["way"] == "adapter")
        assert r["vs_adapter"] == pytest.approx(r["calls_per_s"] / adapter["calls_per_s"], rel=1e-12)


def test_gpu_klub_tiny_on_cpu(tmp_path: Path) -> None:
    _script("gpu_klub").main(["--device", "cpu", "--tiny", "--quick", "--samples", "2", "--opt-samples", "2",
                              "--out", str(tmp_path)])
    (row,) = _check_rows(tmp_path, "gpu_klub-quick-tiny", "gpu_klub")
    # a 10-step schedule's KLUB spends 2 denoiser rows per interval and chain: 20 per chain
    assert row["unet_rows_per_s"] == pytest.approx(20 * row["klub_samples"] / row["klub_seconds"], rel=1e-9)
    (table,) = _md_tables((tmp_path / "gpu_klub-quick-tiny.md").read_text())
    assert len(table) == 2 and len(table[1]) == 6


def test_train_digits_classifier(tmp_path: Path) -> None:
    from ays.metrics.digits import digits_accuracy, load_digits_classifier

    out = tmp_path / "classifier.pt"
    importlib.import_module("_classifier").main("digits", "train", ["--out", str(out), "--epochs", "1"])
    model, meta = load_digits_classifier(out)
    assert meta["epochs"] == 1 and meta["seed"] == 0
    # the stored accuracies are the model's own, and one epoch already beats chance (1 in 10)
    assert meta["test_accuracy"] == pytest.approx(digits_accuracy(model, "test"))
    assert 0.1 < meta["train_accuracy"] <= 1.0


def test_distributed_scaling(tmp_path: Path) -> None:
    _script("distributed_scaling").main(["--quick", "--worlds", "1", "--caps", "1MiB,0", "--samples", "256",
                                         "--dim", "8", "--hidden", "16", "--ays-worlds", "1", "--ays-steps", "4",
                                         "--ays-budget", "6000", "--out", str(tmp_path)])
    rows = _check_rows(tmp_path, "distributed_scaling", "distributed_scaling")
    assert [r["table"] for r in rows] == ["scaling", "memory", "memory", "ays"]
    scaling, capped, free, default = rows
    assert scaling["rows"] == 256 * 20  # a 10-step schedule: 20 denoiser rows per chain
    assert capped["batch"] < free["batch"] == 8192 and capped["total"] == pytest.approx(free["total"], rel=1e-6)
    # One process evaluates every row the method counts, within its budget.
    assert default["rows"] == default["calls"] <= default["budget"] == 6000 and len(default["sigmas"]) == 5
    tables = _md_tables((tmp_path / "distributed_scaling.md").read_text())
    assert [len(t) - 1 for t in tables] == [1, 2, 1]  # one line per process count, one per cap, one per ays run

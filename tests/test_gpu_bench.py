"""``benchmarks/gpu.py``: the one-command GPU benchmark, run in its tiny form on the CPU (as CI runs it).

The files must be well-formed and their numbers consistent with their definitions: a rate is
calls over seconds, the best batch is the tried batch of the highest rate, the estimate is
``BUDGET_CALLS / rate / 60``. The batch search is checked against its stopping rule on a fake
clock (a network whose call costs a known time), and its out-of-memory handling with a
network that raises ``torch.cuda.OutOfMemoryError`` above a batch size.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
gpu = importlib.import_module("gpu")

#: Parameters of the released networks (the checkpoints' tensors): SD 1.5's UNet, SDXL base's UNet, FLUX.1-dev's
#: transformer.
RELEASED = {"sd15": 859_520_964, "sdxl": 2_567_463_684, "flux": 11_901_408_320,
            "wan2.1-1.3b": 1_418_996_800, "svd-xt": 1_524_623_082}  # Wan2.1-T2V-1.3B's transformer, SVD-XT's UNet


def test_full_size_networks_are_the_released_ones() -> None:
    """Built on the meta device (no memory, no arithmetic): the parameter count of each released model,
    and one call of each network on its latents (SD 1.5 64², SDXL 128², Flux 16 x 128² packed into 4096
    tokens beside 512 text tokens) returns the latents' shape."""
    from ays.integrations.diffusers import ConditionedModel

    meta = torch.device("meta")
    for fam in gpu.families(tiny=False):
        net, cond = fam.build(meta, torch.bfloat16)
        assert sum(p.numel() for p in net.parameters()) == RELEASED[fam.name], fam.name
        den = fam.denoiser(net, cond, torch.bfloat16)
        if fam.name == "svd-xt":  # its AlphaBlender makes a CPU tensor: it cannot run on meta (the tiny run calls it)
            continue
        (call,) = [m for m in den.modules() if isinstance(m, ConditionedModel)]
        x = torch.empty(2, *fam.latent, device=meta, dtype=torch.bfloat16)
        with torch.inference_mode():
            out = call(x, torch.empty(2, device=meta))
        assert out.shape == x.shape and out.dtype == torch.bfloat16, fam.name
    assert gpu.families(tiny=False)[2].latent == (16, 128, 128)  # 1024² image, 8x VAE, 2x2 patches: 4096 tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python benchmarks/gpu.py --tiny --out <tmp>``, the command itself, on one CPU thread."""
    out = tmp_path_factory.mktemp("gpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_tiny_files_are_well_formed(tiny: Path) -> None:
    doc = json.loads((tiny / "gpu.json").read_text())
    assert doc["command"] == f"python benchmarks/gpu.py --tiny --out {tiny}"
    assert doc["machine"]["cpu_count"] >= 1 and doc["device"] == "cpu" and doc["tiny"] is True
    assert doc["budget_calls"] == gpu.BUDGET_CALLS == 50_000
    rows = doc["rows"]
    assert [(r["family"], r["dtype"]) for r in rows] == [(f, d) for f in ("sd15", "sdxl", "flux", "wan2.1-1.3b",
                                                                          "svd-xt")
                                                         for d in ("float16", "bfloat16")]
    with (tiny / "gpu.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert list(reader.fieldnames or []) == list(dict.fromkeys(k for r in rows for k in r))
        assert [line["family"] for line in reader] == [r["family"] for r in rows]
    text = (tiny / "gpu.md").read_text()
    assert f"Command: `{doc['command']}`" in text and "Machine: " in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows) and all(line.count("|") == 10 for line in table)
    assert "### Check: a real `ays.optimize` run" in text


@pytest.mark.slow
def test_tiny_numbers_are_consistent(tiny: Path) -> None:
    doc = json.loads((tiny / "gpu.json").read_text())
    for row, full in zip(doc["rows"], doc["batches"]):
        assert "error" not in row, row
        tried = full["tried"]
        assert [t["batch"] for t in tried] == [2**i for i in range(len(tried))]
        assert all(not t["oom"] and t["peak_memory_bytes"] is None for t in tried)  # CPU: no OOM, no CUDA peak
        for t in tried:
            assert t["calls"] > 0 and t["calls"] % t["batch"] == 0 and t["seconds"] > 0
            assert t["calls_per_s"] == pytest.approx(t["calls"] / t["seconds"], rel=1e-12)
        best = max(tried, key=lambda t: t["calls_per_s"])
        assert row["best_batch"] == best["batch"] and row["calls_per_s"] == best["calls_per_s"] > 0
        assert row["est_minutes_per_schedule"] == pytest.approx(50_000 / row["calls_per_s"] / 60, rel=1e-12)
        assert row["parameters"] > 0
    check = doc["optimize_check"]
    assert check["calls"] > 0 and check["seconds"] > 0 and "error" not in check
    assert check["calls_per_s"] == pytest.approx(check["calls"] / check["seconds"], rel=1e-12)
    bf16 = doc["rows"][1]
    assert bf16["family"] == "sd15" and bf16["dtype"] == "bfloat16"
    assert check["rate_ratio"] == pytest.approx(check["calls_per_s"] / bf16["calls_per_s"], rel=1e-12)
    assert check["est_minutes_per_schedule"] == pytest.approx(50_000 / check["calls_per_s"] / 60, rel=1e-12)
    assert check["batch"] == max(2, bf16["best_batch"])


class _Clock:
    """A fake ``time`` module: the network advances it by ``cost(batch)`` seconds per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _network(clock: _Clock, cost, oom_above: int | None = None):
    def den(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if oom_above is not None and x.shape[0] > oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        clock.now += cost(x.shape[0])
        return x

    return den


def _search(monkeypatch: pytest.MonkeyPatch, cost, *, oom_above=None, deadline=math.inf, max_batch=1024):
    clock = _Clock()
    monkeypatch.setattr(gpu, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    return gpu.search_batch(_network(clock, cost, oom_above), (2,), torch.device("cpu"), torch.float32,
                            max_batch=max_batch, min_seconds=1.0, deadline=deadline)


def test_search_stops_when_the_rate_stops_improving(monkeypatch: pytest.MonkeyPatch) -> None:
    # a call of b rows costs 1 + b seconds: rate b / (1 + b); doubling b multiplies it by (2 + b) / (1 + b),
    # which falls below 1.05 first at the b with (2 + b) / (1 + b) < 1.05, i.e. b > 19: b = 32
    best, tried = _search(monkeypatch, lambda b: 1.0 + b)
    stop = next(b for b in (2**i for i in range(1, 20)) if (b / (1 + b)) / ((b / 2) / (1 + b / 2)) < gpu.IMPROVE)
    assert stop == 32
    assert [t["batch"] for t in tried] == [2**i for i in range(6)]
    for t in tried:
        assert t["calls_per_s"] == pytest.approx(t["batch"] / (1 + t["batch"]), rel=1e-12)
    assert best is not None and best["batch"] == 32  # still the highest rate, though by less than 5 %


def test_search_records_out_of_memory_and_keeps_the_largest_batch_that_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    best, tried = _search(monkeypatch, lambda b: 1.0, oom_above=8)  # constant cost: rate = batch, always improving
    assert [(t["batch"], t["oom"]) for t in tried] == [(1, False), (2, False), (4, False), (8, False), (16, True)]
    assert "calls_per_s" not in tried[-1]
    assert best is not None and best["batch"] == 8 and best["calls_per_s"] == pytest.approx(8.0)
    assert gpu.minutes_per_schedule(best["calls_per_s"]) == pytest.approx(50_000 / 8 / 60)


def test_search_starts_no_batch_after_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # each batch costs a warm-up call and one timed call (min_seconds = 1): 2 s; batches start at 0, 2, 4, 6, ...
    _, tried = _search(monkeypatch, lambda b: 1.0, deadline=5.0)
    assert [t["batch"] for t in tried] == [1, 2, 4]
    _, tried = _search(monkeypatch, lambda b: 1.0, max_batch=4)
    assert [t["batch"] for t in tried] == [1, 2, 4]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_full_size_without_a_gpu_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        gpu.main(["--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--tiny" in err

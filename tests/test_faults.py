"""Faults: a kill in the middle of a checkpoint write loses nothing; NaN/inf is named with its noise level.

- ``ays optimize`` runs in a child process whose ``os.fsync`` / ``os.replace`` pause
  inside the n-th checkpoint write (after the temporary file is written but before
  it is made durable and renamed, or right after the rename). The parent SIGKILLs
  it at exactly that moment, checks that the checkpoint on disk is a complete, valid
  file, resumes with ``--resume``, and compares the schedule file with that of an
  uninterrupted run: sigmas, KLUB, history and call count equal to the last bit.
- A denoiser that returns NaN or inf for noise levels in a narrow band is reported
  with a level inside that band on every path (``ays.klub``, the ``coordinate`` and
  ``dp`` optimisers, ``ays.sample`` with several solvers), never averaged; a model
  that overflows only in float16 is caught the same way.
- A damaged, truncated, foreign or binary checkpoint is refused with a clear message.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import ays
from ays import schedules
from ays.cli import main
from ays.validate import AysError

# --------------------------------------------------------------------------
# SIGKILL during a checkpoint write, then --resume
# --------------------------------------------------------------------------

_CHILD = r"""
import os, sys, time
marker, when, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
real_fsync, real_replace = os.fsync, os.replace
count = [0]

def pause(path):
    count[0] += 1
    if count[0] == target:
        with open(marker, "w") as f:
            f.write(path)
        time.sleep(600)  # the parent kills us here

def fsync(fd):
    path = os.readlink(f"/proc/self/fd/{fd}")
    if when == "before-fsync" and ".ckpt.json." in os.path.basename(path) and path.endswith(".tmp"):
        pause(path)  # the temporary file is written, not yet durable, not yet renamed
    return real_fsync(fd)

def replace(src, dst):
    real_replace(src, dst)
    if when == "after-replace" and os.fspath(dst).endswith(".ckpt.json"):
        pause(os.fspath(dst))  # renamed, the directory not yet synced

os.fsync, os.replace = fsync, replace
import torch
torch.set_num_threads(1)
from ays.cli import main
main(sys.argv[4:])
"""

_ARGS = ["optimize", "gaussian", "--steps", "4", "--samples", "128", "--seed", "1",
         "--method", "coordinate", "-O", "max_sweeps=4", "--quiet"]


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def _schedule_doc(path) -> dict:
    doc = json.loads(open(path).read())
    doc.pop("created")
    return doc


@pytest.mark.parametrize(("when", "target"), [("before-fsync", 3), ("after-replace", 2)])
def test_sigkill_during_checkpoint_write_then_resume_equals_uninterrupted_run(tmp_path, when, target):
    out = tmp_path / "s.json"
    ckpt = tmp_path / "s.json.ckpt.json"
    marker = tmp_path / "paused"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(marker), when, str(target), *_ARGS, "-o", str(out)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), child.communicate(timeout=5)[1] if child.poll() is not None else "no pause"
        # At the moment of the kill the checkpoint on disk is a complete checkpoint.
        on_disk = json.loads(ckpt.read_text())
        assert on_disk["format"] == "ays-checkpoint/1"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not out.exists()
    assert json.loads(ckpt.read_text()) == on_disk  # the kill changed nothing on disk
    # The history on disk is the run's, up to the sweep whose write was interrupted (or completed).
    sweeps_saved = len(on_disk["state"]["history"])
    assert sweeps_saved == (target - 1 if when == "before-fsync" else target)

    assert _cli([*_ARGS, "-o", str(out), "--resume"]) == 0
    ref = tmp_path / "ref.json"
    assert _cli([*_ARGS, "-o", str(ref)]) == 0
    resumed, uninterrupted = _schedule_doc(out), _schedule_doc(ref)
    assert resumed["sigmas"] == uninterrupted["sigmas"]
    assert resumed == uninterrupted  # KLUB, history, calls, settings: nothing lost, nothing repeated
    # The checkpoint and the temporary file the kill left behind are cleaned up.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paused", "ref.json", "s.json"]


def test_kill_between_sweeps_and_resume_via_the_api(tmp_path):
    """The library path: an exception from progress (a Ctrl-C) after a checkpoint, resume, same result."""
    den, data = _gauss, _data
    kw = dict(steps=5, samples=96, seed=2, max_sweeps=5)

    class Stop(Exception):
        pass

    def stop_at_third(event):
        if event["event"] == "sweep" and event["sweep"] == 3:
            raise Stop

    ckpt = tmp_path / "c.json"
    with pytest.raises(Stop):
        ays.optimize(den, data, checkpoint=ckpt, progress=stop_at_third, **kw, method="coordinate")
    resumed = ays.optimize(den, data, checkpoint=ckpt, resume=True, **kw, method="coordinate")
    ref = ays.optimize(den, data, **kw, method="coordinate")
    assert torch.equal(resumed.sigmas, ref.sigmas) and resumed.history == ref.history and resumed.calls == ref.calls


# --------------------------------------------------------------------------
# Damaged checkpoints
# --------------------------------------------------------------------------


def _gauss(x, sigma):
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return 0.25 / (0.25 + s * s) * x


def _data(n, g):
    return 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkpoint(tmp_path):
    ckpt = tmp_path / "c.json"
    kw = dict(steps=3, samples=64, seed=0, max_sweeps=2)

    def stop(event):
        if event["event"] == "sweep" and event["sweep"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ays.optimize(_gauss, _data, checkpoint=ckpt, progress=stop, **kw, method="coordinate")
    return ckpt, kw


def test_damaged_truncated_foreign_or_binary_checkpoints_are_refused(tmp_path):
    ckpt, kw = _checkpoint(tmp_path)
    good = ckpt.read_text()
    doc = json.loads(good)

    def resume():
        return ays.optimize(_gauss, _data, checkpoint=ckpt, resume=True, **kw, method="coordinate")

    # One number changed (a bit flip on disk, an edit): the checksum no longer matches.
    doc["state"]["sigmas"][1] *= 1.0000001
    ckpt.write_text(json.dumps(doc))
    with pytest.raises(AysError, match="damaged: its content does not match its checksum"):
        resume()
    doc["state"]["sigmas"][1] = float("nan")
    ckpt.write_text(json.dumps(doc))
    with pytest.raises(AysError, match="damaged"):
        resume()
    ckpt.write_text(good[: len(good) // 2])
    with pytest.raises(AysError, match="not valid JSON"):
        resume()
    ckpt.write_bytes(os.urandom(64) + b"\xff\xfe")
    with pytest.raises(AysError, match="checkpoint"):
        resume()
    res = ays.optimize(_gauss, _data, steps=3, samples=64, seed=0, max_sweeps=1, method="coordinate")
    res.save(ckpt)
    with pytest.raises(AysError, match="not an ays optimiser checkpoint"):
        resume()
    ckpt.write_text(json.dumps({"format": "ays-checkpoint/1", "settings": [], "state": 3}))
    with pytest.raises(AysError, match="damaged: no settings or state"):
        resume()
    ckpt.unlink()
    ckpt.mkdir()
    with pytest.raises(AysError, match="cannot read"):
        resume()
    # The good file still resumes.
    ckpt.rmdir()
    ckpt.write_text(good)
    assert torch.equal(resume().sigmas, ays.optimize(_gauss, _data, **kw, method="coordinate").sigmas)


# --------------------------------------------------------------------------
# NaN and inf are named with the noise level, on every path
# --------------------------------------------------------------------------

_BAND = (2.0, 3.0)


def _nan_in_band(x, sigma):
    """Exact Gaussian denoiser, except NaN (rows at 2 <= sigma <= 3) and +inf (one further row)."""
    out = _gauss(x, sigma)
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(out.dtype)
    bad = (s >= _BAND[0]) & (s <= _BAND[1])
    return torch.where(bad, torch.full_like(out, float("nan")), out)


def _named_level(message: str) -> float:
    m = re.search(r"NaN or inf.*at sigma=([0-9.eE+-]+)", message)
    assert m, message
    return float(m.group(1))


def _assert_in_band(err: pytest.ExceptionInfo[AysError]) -> None:
    level = _named_level(str(err.value))
    assert _BAND[0] * (1 - 1e-5) <= level <= _BAND[1] * (1 + 1e-5), str(err.value)


def test_klub_names_the_noise_level_of_a_nan():
    sig = schedules.karras(6, 0.002, 80.0)
    with pytest.raises(AysError) as err:
        ays.klub(_nan_in_band, _data, sig, samples=256, generator=torch.Generator().manual_seed(0))
    _assert_in_band(err)
    # Only intervals that reach into the band see it: a schedule below the band is fine.
    est = ays.klub(_nan_in_band, _data, schedules.karras(3, 0.002, 1.9), samples=64,
                   generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(est.per_interval).all()


@pytest.mark.parametrize("method", ["coordinate", "dp"])
def test_optimisers_name_the_noise_level_of_a_nan(method, tmp_path):
    opts = {"grid": 24, "final_samples": 0} if method == "dp" else {"max_sweeps": 2}
    with pytest.raises(AysError) as err:
        ays.optimize(_nan_in_band, _data, steps=4, samples=64, method=method, checkpoint=tmp_path / "c.json", **opts)
    _assert_in_band(err)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "euler_ancestral"])
def test_sample_names_the_noise_level_of_a_nan(solver):
    sig = torch.tensor([80.0, 20.0, 8.0, 2.5, 1.0, 0.3, 0.05, 0.0], dtype=torch.float64)  # 2.5: in the band
    with pytest.raises(AysError) as err:
        ays.sample(_nan_in_band, torch.randn(8, 2, dtype=torch.float64), sig, solver=solver,
                   generator=torch.Generator().manual_seed(0))
    assert f"solver {solver!r}" in str(err.value)
    _assert_in_band(err)


def test_half_precision_overflow_is_caught_not_averaged():
    """D(x, σ) = x·σ²/6400 is finite in float32 but overflows float16 (max 65504) at large σ·|x|."""

    def loud(x, sigma):
        s = sigma.reshape(-1, 1).to(x.dtype)
        return x * s * s * 40.0

    sig = schedules.karras(4, 0.002, 80.0)
    est = ays.klub(loud, _data, sig, samples=64, generator=torch.Generator().manual_seed(0), dtype="float32")
    assert all(torch.isfinite(est.per_interval))
    with pytest.raises(AysError) as err:
        ays.klub(loud, _data, sig, samples=64, generator=torch.Generator().manual_seed(0), dtype="float16")
    # Only at a large noise level can x·σ²·40 pass 65504.
    assert _named_level(str(err.value)) > 5.0


def test_atomic_writes_give_the_permissions_open_would(tmp_path):
    """mkstemp makes private files; the written file gets 0666 & ~umask, or keeps the old file's mode."""
    from ays.io import atomic_write_text

    old = os.umask(0o027)
    try:
        fresh = atomic_write_text(tmp_path / "a.json", "{}")
        assert fresh.stat().st_mode & 0o777 == 0o640
        os.chmod(fresh, 0o604)
        atomic_write_text(fresh, "[]")
        assert fresh.stat().st_mode & 0o777 == 0o604 and fresh.read_text() == "[]"
    finally:
        os.umask(old)


# ------------------------------------------------------------------ CUDA out of memory
class _RunsOutAbove:
    """The exact denoiser, raising CUDA's out-of-memory error on calls of more than ``rows`` rows."""

    def __init__(self, denoiser, rows: int) -> None:
        self.denoiser, self.rows, self.refused = denoiser, rows, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.rows:
            self.refused += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.denoiser(x, sigma)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(capsys) -> None:
    prob = ays.problems.get("gmm-8x4")
    sig = ays.schedules.karras(6, 0.002, 80.0)
    tight = _RunsOutAbove(prob.denoiser, 16)
    g = lambda: torch.Generator().manual_seed(3)
    est = ays.klub(tight, prob.sample, sig, samples=200, batch_size=64, generator=g())
    free = ays.klub(prob.denoiser, prob.sample, sig, samples=200, batch_size=64, generator=g())
    # rows are independent, so halving the batch changes nothing but the call count
    torch.testing.assert_close(est.per_interval, free.per_interval, rtol=1e-12, atol=0)
    assert tight.refused >= 1 and "CUDA out of memory at" in capsys.readouterr().err
    # the optimiser records the batch that worked: halving stops at the first size <= 16
    res = ays.optimize(_RunsOutAbove(prob.denoiser, 16), prob.sample, steps=3, method="dp", samples=64, seed=0)
    ref = ays.optimize(prob.denoiser, prob.sample, steps=3, method="dp", samples=64, seed=0)
    assert 8 <= res.settings["batch_size_after_oom"] <= 16 and "batch_size_after_oom" not in ref.settings
    torch.testing.assert_close(res.sigmas, ref.sigmas, rtol=1e-12, atol=0)


def test_out_of_memory_on_one_row_is_a_clear_error() -> None:
    prob = ays.problems.get("gaussian")
    with pytest.raises(AysError, match="out of GPU memory on a single row"):
        ays.klub(_RunsOutAbove(prob.denoiser, 0), prob.sample, ays.schedules.karras(3, 0.002, 80.0), samples=8)

"""ays.distributed: two gloo processes give the single-process KLUB and schedule; placement, precision, memory.

The two-process run is launched as a user would (``python -m torch.distributed.run
--nproc_per_node 2``, gloo, 127.0.0.1 and a free port). Every rank draws the same
common random numbers from the seed, evaluates its share of the draws, and the
per-draw terms are all-gathered in rank order, so the estimate is the
single-process one bit for bit (the denoiser here works row by row). Rank 0 alone
writes files, and a NaN on one rank is reported, with its noise level, on both. The dp
table, the gits / oss / ld3 teacher runs, oss's programmes, ld3's validation and every stage
of the default method ``ays`` (table, teacher, candidates, refinement, gate; coupled and paired
evidence) are shared out too: each rank evaluates about half of the rows and gets the
single-process schedule.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import ays
from ays import device as dv
from ays import distributed as dd
from ays.klub import KlubDraws, gaussian_klub
from ays.validate import AysError

# Shared by the two-process workers and the single-process reference below, so
# both run literally the same code.
_COMMON = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import ays
    from ays import device as dv
    from ays import distributed as dd, schedules
    from ays.io import atomic_write_text

    C, DIM = 0.5, 3

    def den(x, sigma):  # exact denoiser of N(0, C² I): row by row, so batching cannot change a bit
        s = sigma.reshape(-1, 1)
        return C * C / (C * C + s * s) * x

    def data(n, g):
        return C * torch.randn(n, DIM, generator=g, dtype=torch.float64)

    def den_video(x, sigma):  # the same exact denoiser on video-shaped rows [N, C, F, H, W]
        return C * C / (C * C + sigma.reshape(-1, 1, 1, 1, 1) ** 2) * x
    def data_video(n, g):
        return C * torch.randn(n, 2, 3, 2, 2, generator=g, dtype=torch.float64)
    def nan_on_rank_one(x, sigma):  # a fault on one rank only: its share of the draws
        out = den(x, sigma)
        return out * float("nan") if dd.rank() == 1 else out

    def run(outdir):
        sig = schedules.karras(5, 0.002, 80.0)
        est = ays.klub(den, data, sig, samples=257, generator=torch.Generator().manual_seed(7), batch_size=40)
        ckpt = os.path.join(outdir, "ckpt.json")
        res = ays.optimize(den, data, steps=4, samples=129, seed=5, max_sweeps=3, checkpoint=ckpt, batch_size=64,
                           method="coordinate")
        res.save(os.path.join(outdir, "schedule.json"))
        # Resuming reads the checkpoint on rank 0 and hands its state to every rank.
        again = ays.optimize(den, data, steps=4, samples=129, seed=5, max_sweeps=3, checkpoint=ckpt, resume=True,
                             batch_size=64, method="coordinate")
        # Video-shaped latents (a frame axis) through the KLUB and the SDE sampler, rows shared out
        vid = ays.klub(den_video, data_video, sig, samples=65, generator=torch.Generator().manual_seed(3),
                       batch_size=16)
        g = torch.Generator().manual_seed(4)
        frames = ays.sample(den_video, torch.randn(9, 2, 3, 2, 2, generator=g, dtype=torch.float64) * 80.0,
                            schedules.to_sampling(sig), solver="dpmpp_2m_sde", generator=g)
        squares = dd.map_ordered(lambda k: torch.tensor([float(k * k)], dtype=torch.float64), range(5))
        # The diffusers route's many-step samples: made on rank 0 alone, every rank gets them.
        from ays.integrations.diffusers.data import cached_latents
        made, before = [], os.environ.get("AYS_CACHE")
        os.environ["AYS_CACHE"] = outdir
        try:
            latents, cached = cached_latents("k", lambda: (made.append(dd.rank()), torch.arange(3.0) + 1)[1])
        finally:
            os.environ.pop("AYS_CACHE") if before is None else os.environ.update(AYS_CACHE=before)
        if dd.rank() == 1:
            atomic_write_text(os.path.join(outdir, "rank1.txt"), "only rank 0 writes")
        try:
            ays.klub(nan_on_rank_one, data, sig, samples=64, generator=torch.Generator().manual_seed(1))
            nan_error = None
        except ays.AysError as e:
            nan_error = str(e)
        return {
            "per_interval": est.per_interval.tolist(), "stderr": est.stderr.tolist(), "total": est.total,
            "total_stderr": est.total_stderr, "calls": est.calls, "sigmas": res.sigmas.tolist(), "klub": res.klub,
            "history": res.history, "opt_calls": res.calls, "nan_error": nan_error,
            "world": dd.world_size(), "rank": dd.rank(), "resumed": again.sigmas.tolist(),
            "squares": [float(v) for v in squares], "from_zero": dd.from_rank_zero(lambda: dd.rank()),
            "made": made, "latents": latents.tolist(), "cached": cached,
            "video_klub": vid.per_interval.tolist(), "video_samples": frames.flatten().tolist(),
        }
    """
)

_WORKER = _COMMON + textwrap.dedent(
    """
    torch.set_num_threads(1)
    with dd.session():
        out = run(sys.argv[1])
        with open(os.path.join(sys.argv[1], f"result{dd.rank()}.json"), "w") as f:
            json.dump(out, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], cwd=None, **env: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 ARGS`` on gloo and 127.0.0.1 (room for a loaded CI)."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=cwd)


def test_two_gloo_processes_give_the_single_process_result_exactly(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    proc = _launch([str(script), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1)]

    # The reference: the same code in this process, without a process group.
    ref_dir = tmp_path / "single"
    ref_dir.mkdir()
    namespace: dict = {}
    exec(compile(_COMMON, "common", "exec"), namespace)
    ref = namespace["run"](str(ref_dir))
    assert ref["world"] == 1 and ref["nan_error"] is None  # rank() is 0 here: no fault injected
    assert ref["squares"] == [0.0, 1.0, 4.0, 9.0, 16.0] and ref["from_zero"] == 0 and ref["resumed"] == ref["sigmas"]
    assert ref["made"] == [0] and ref["latents"] == [1.0, 2.0, 3.0] and not ref["cached"]

    for r, out in enumerate(got):
        assert out["world"] == 2 and out["rank"] == r
        for key in ("per_interval", "stderr", "total", "total_stderr", "calls", "sigmas", "klub", "history",
                    "opt_calls", "resumed", "squares", "from_zero", "latents", "cached", "video_klub",
                    "video_samples"):
            assert out[key] == ref[key], (r, key)  # bit for bit: same draws, same terms, same order
        # A NaN on rank 1 only is raised on both ranks, naming the noise level, without a hang.
        assert out["nan_error"] is not None and "NaN or inf at sigma=" in out["nan_error"]
    assert got[0]["nan_error"] == got[1]["nan_error"]
    assert got[0]["made"] == [0] and got[1]["made"] == []  # the model's samples: made once, on rank 0
    # The estimate is the KLUB (a check that the shared-out run computes the right thing at all).
    exact = float(gaussian_klub(torch.tensor(ref["sigmas"]), 0.5, dim=3))
    assert math.isfinite(ref["klub"]) and abs(ref["klub"] - exact) < 0.25 * exact
    # Rank 0 alone wrote files; the schedule file is rank 0's result, the checkpoint its state.
    assert not (tmp_path / "rank1.txt").exists()
    assert ays.load_schedule(tmp_path / "schedule.json").sigmas.tolist() == ref["sigmas"]
    assert json.loads((tmp_path / "ckpt.json").read_text())["state"]["history"] == ref["history"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_shards_cover_every_item_once_in_rank_order():
    for n in (0, 1, 2, 7, 257):
        for w in (1, 2, 3, 8):
            parts = [dd.shard(n, rank_=r, world=w) for r in range(w)]
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1
    # Without a process group: one rank holding everything, and collectives are identities.
    assert not dd.is_distributed() and dd.rank() == 0 and dd.world_size() == 1 and dd.is_rank_zero()
    v = torch.arange(6.0).reshape(2, 3)
    assert dd.gather_terms(v, 3, dim=1) is v
    assert dd.map_shards(3, lambda ks: v[:, ks], dim=1).tolist() == v.tolist()
    assert [t.item() for t in dd.map_ordered(lambda k: torch.tensor(k * k), range(4))] == [0, 1, 4, 9]
    assert dd.from_rank_zero(lambda a: a + 1, 1) == 2
    assert dd.rank_zero_only(lambda: "ran")() == "ran"


def test_shard_noise_cuts_the_single_process_draws_and_every_rank_advances_alike():
    shape, world = (7, 2), 3
    full = torch.Generator().manual_seed(4)
    want = [torch.randn(shape, generator=full, dtype=torch.float64) for _ in range(2)]  # two solver steps
    gens = [torch.Generator().manual_seed(4) for _ in range(world)]
    draws = [dd.shard_noise(g, shape, dd.shard(7, rank_=r, world=world), torch.float64) for r, g in enumerate(gens)]
    for step in range(2):
        assert torch.equal(torch.cat([d(1.0, 0.5) for d in draws]), want[step])
    assert dd.all_sum(5) == 5 and dd.all_sum(0.25) == 0.25  # without a process group: the value itself


def _gauss(x, sigma):
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return 0.25 / (0.25 + s * s) * x


def _data(n, g):
    return 0.5 * torch.randn(n, 4, generator=g)


def test_half_precision_model_keeps_float64_accumulation_and_meets_the_closed_form():
    """dtype=float16/bfloat16: the model sees half inputs, the KLUB still matches the closed form."""
    seen: list[torch.dtype] = []
    sig_dtypes: list[torch.dtype] = []

    def spy(x, sigma):
        seen.append(x.dtype)
        sig_dtypes.append(sigma.dtype)
        return _gauss(x, sigma)

    sig = ays.schedules.karras(4, 0.01, 40.0)
    exact = float(gaussian_klub(sig, 0.5, dim=4))
    ref = ays.klub(_gauss, _data, sig, samples=4096, generator=torch.Generator().manual_seed(0))
    for dtype, tol in ((torch.float16, 2e-2), ("bfloat16", 6e-2)):
        est = ays.klub(spy, _data, sig, samples=4096, generator=torch.Generator().manual_seed(0), dtype=dtype)
        want = dv.parse_dtype(dtype)
        assert set(seen) == {want} and set(sig_dtypes) == {torch.float32}  # sigma never rounded to half
        seen.clear()
        sig_dtypes.clear()
        assert est.per_interval.dtype == torch.float64
        # Same draws: the half-precision estimate is the float32 one up to the model's rounding ...
        assert abs(est.total - ref.total) < tol * ref.total
        # ... and both estimate the exact KLUB within their Monte Carlo error.
        assert abs(est.total - exact) < 5 * est.total_stderr + tol * exact


class _Net(torch.nn.Module):
    """A denoiser module ``D(x, sigma)``: the exact Gaussian denoiser plus a (zero-weight) network term."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 4))

    def forward(self, x, sigma):
        return _gauss(x, sigma) + 0 * self.body(x)


def test_module_device_and_dtype_are_followed_and_converted_in_place():
    net = _Net().to(torch.float64)

    def uses_net(x, sigma):
        return net(x) * 0 + _gauss(x, sigma)

    run = dv.prepare(net)
    assert run.dtype == torch.float64 and run.device == torch.device("cpu")
    wrapped = dv.prepare(uses_net)  # no module visible in a closure: inputs pass unchanged
    assert wrapped.dtype is None and wrapped.device is None
    import functools

    part = functools.partial(lambda m, x, s: m(x, s), net)
    assert dv.model_dtype(part) == torch.float64
    dv.prepare(part, dtype="float32")
    assert net.body[0].weight.dtype == torch.float32  # converted in place, as model.float() would
    x = torch.randn(3, 4, dtype=torch.float64)
    out = dv.prepare(net)(x, torch.ones(3, dtype=torch.float64))
    assert out.dtype == torch.float64  # the output comes back in the caller's dtype
    with pytest.raises(AysError, match="unknown dtype"):
        dv.parse_dtype("float8")
    with pytest.raises(AysError, match=r"CUDA is not available|unknown device"):
        dv.parse_device("cuda:0" if not torch.cuda.is_available() else "nonsense")
    with pytest.raises(AysError, match="unknown device"):
        dv.parse_device("gpu")


@pytest.mark.parametrize(
    ("text", "value"), [(1000, 1000), ("1000", 1000), ("2KiB", 2048), ("1.5G", 3 * 2**29), ("2GB", 2 * 10**9)]
)
def test_parse_memory(text, value):
    assert dv.parse_memory(text) == value


@pytest.mark.parametrize("bad", ["lots", "-1", "0", "1XB", "nan", True, [1]])
def test_parse_memory_refuses(bad):
    with pytest.raises(AysError, match="max_memory"):
        dv.parse_memory(bad)


def test_memory_cap_sets_the_batch_and_changes_nothing_else():
    """A cap too small for the default batch: more, smaller calls, the same estimate to the last bit."""
    calls: list[int] = []

    def spy(x, sigma):
        calls.append(x.shape[0])
        return _gauss(x, sigma)

    sig = ays.schedules.karras(3, 0.01, 40.0)
    ref = ays.klub(_gauss, _data, sig, samples=1000, generator=torch.Generator().manual_seed(3))
    cap = 64 * 1024
    est = ays.klub(spy, _data, sig, samples=1000, generator=torch.Generator().manual_seed(3), max_memory=cap)
    per_row, fixed = dv.row_bytes(dv.prepare(spy), _data(1, torch.Generator()))
    biggest = max(calls)
    assert biggest * per_row + fixed <= cap and (biggest + 2) * per_row + fixed > cap  # the largest that fits
    assert sum(calls) == ref.calls == est.calls
    assert torch.equal(est.per_interval, ref.per_interval) and est.total == ref.total
    with pytest.raises(AysError, match="cannot hold one pair"):
        ays.klub(_gauss, _data, sig, samples=100, generator=torch.Generator().manual_seed(3), max_memory=100)


def test_module_activation_estimate_bounds_the_batch():
    run = dv.prepare(_Net(256))
    per_row, _ = dv.row_bytes(run, torch.zeros(1, 4))
    # Leaf outputs: 256 + 256 + 4 float32 numbers per row, above the input itself.
    assert per_row >= (256 + 256 + 4) * 4
    assert dv.batch_size_for(run, torch.zeros(1, 4), 100 * per_row) in (98, 100)
    assert dv.batch_size_for(run, torch.zeros(1, 4), 100 * per_row, batch_size=10) == 10


def test_optimize_takes_dtype_device_and_max_memory():
    kw = dict(steps=3, samples=256, seed=1, max_sweeps=2)
    ref = ays.optimize(_gauss, _data, **kw, method="coordinate")
    capped = ays.optimize(_gauss, _data, max_memory="32KiB", device="cpu", **kw, method="coordinate")
    assert torch.equal(capped.sigmas, ref.sigmas) and capped.calls == ref.calls
    half = ays.optimize(_gauss, _data, dtype="bfloat16", **kw, method="coordinate")
    assert half.settings["dtype"] == "bfloat16" and "dtype" not in ref.settings
    assert half.sigmas.dtype == torch.float64
    with pytest.raises(AysError, match="unknown dtype"):
        ays.optimize(_gauss, _data, dtype="int8", **kw, method="coordinate")


def test_draws_follow_the_data_device_without_changing_the_numbers():
    # Noise is drawn on the CPU whatever the device: the same seed gives the same draws.
    a = KlubDraws.from_seed(_data, 16, 0, "x")
    b = KlubDraws.from_seed(dv.place_data(_data, torch.device("cpu")), 16, 0, "x")
    assert torch.equal(a.z1, b.z1) and torch.equal(a.x0, b.x0)


# Every method but "coordinate" (above): the same schedule on 2 ranks as on 1, each rank evaluating
# about half of the rows. One launch runs them all.
_METHODS = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import ays
    from ays import distributed as dd

    C, DIM = 0.5, 3

    class Den:  # exact denoiser of N(0, C² I), row by row; counts this process's rows
        rows = 0

        def __call__(self, x, sigma):
            Den.rows += x.shape[0]
            s = sigma.reshape(-1, 1)
            return C * C / (C * C + s * s) * x

    def data(n, g):
        return C * torch.randn(n, DIM, generator=g, dtype=torch.float64)

    CASES = {
        "dp": dict(grid=32, samples=256, final_samples=64),
        "dp-budget": dict(method="dp", grid=32, budget=5000),
        "gits": dict(grid=21, teacher_samples=32),
        "oss": dict(grid=20, teacher_samples=16),
        "ld3": dict(teacher_steps=32, teacher_samples=20, valid_samples=10, epochs=1),
        # The default method: table chains, teacher rows, every candidate, the refinement and the
        # gate's rows shared out; an SDE solver, so the teacher and candidates share a Brownian tree.
        "ays": dict(solver="dpmpp_2m_sde", budget=6000, reference_steps=16),
        "ays-paired": dict(method="ays", solver="dpmpp_2m_sde", budget=6000, reference_steps=16, select="paired"),
    }

    def run_methods():
        out = {}
        for name, kw in CASES.items():
            kw = {"method": name, "solver": "dpmpp_2m", **kw}
            Den.rows = 0
            res = ays.optimize(Den(), data, steps=4, seed=2, **kw)
            out[name] = {"sigmas": res.sigmas.tolist(), "calls": res.calls, "klub": res.klub, "rows": Den.rows,
                         "history": res.history}
        return out
    """
)


# The 2-rank launch of every method (also benchmarks/stress_distributed.py's): each rank writes its
# results, and after the session whether the process group was freed when it was destroyed.
METHODS_SCRIPT = _METHODS + textwrap.dedent(
    """
    import weakref
    torch.set_num_threads(1)
    with dd.session():
        me, world = dd.rank(), weakref.ref(torch.distributed.group.WORLD)
        with open(os.path.join(sys.argv[1], f"methods{me}.json"), "w") as f:
            json.dump(run_methods(), f)
    # ld3's optimiser imports torch._dynamo, which imports torch.distributed.nn.functional: had
    # that bound the live group as a default argument, the group (and a gloo thread) would
    # outlive destroy_process_group and the interpreter could abort at exit.
    with open(os.path.join(sys.argv[1], f"released{me}.txt"), "w") as f:
        f.write(str(world() is None))
    """
)


def test_dp_gits_oss_ld3_ays_share_their_rows_across_two_ranks_and_give_the_single_process_schedule(tmp_path):
    script = tmp_path / "methods.py"
    script.write_text(METHODS_SCRIPT)
    proc = _launch([str(script), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads((tmp_path / f"methods{r}.json").read_text()) for r in (0, 1)]
    # The process group is freed once the session ends, on both ranks.
    assert [(tmp_path / f"released{r}.txt").read_text() for r in (0, 1)] == ["True", "True"]
    namespace: dict = {}
    exec(compile(_METHODS, "methods", "exec"), namespace)
    ref = namespace["run_methods"]()
    for name, single in ref.items():
        for r, out in enumerate(got):
            mine = out[name]
            # The same schedule, estimate, history and call count (all ranks together) as one process ...
            for key in ("sigmas", "calls", "klub", "history"):
                assert mine[key] == single[key], (name, r, key)
            # ... with each rank evaluating its share of the rows (ld3's training is replicated).
            assert mine["rows"] <= 0.6 * single["rows"], (name, r, mine["rows"], single["rows"])
        assert got[0][name]["rows"] + got[1][name]["rows"] >= single["rows"]
    assert ref["dp-budget"]["calls"] <= 5000
    for name in ("ays", "ays-paired"):  # within its budget, and the plan it followed is in the history
        assert ref[name]["calls"] <= 6000 and any(h.get("stage") == "plan" for h in ref[name]["history"])


# ----------------------------------------------------------------------------- the command line under torchrun
# A model given as module:function, row by row (so 2 ranks give the single-process schedule). With
# AYS_TEST_KILL=PATH, rank 1 SIGKILLs itself at its first denoiser call once PATH exists (the run's
# first checkpoint): a rank dies mid-run, and torchrun takes the other down.
_MODEL = textwrap.dedent(
    """
    import os, signal
    import torch
    from ays import distributed as dd

    C = 0.5

    def den(x, sigma):
        kill = os.environ.get("AYS_TEST_KILL")
        if kill and dd.rank() == 1 and os.path.exists(kill):
            os.kill(os.getpid(), signal.SIGKILL)
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return C * C / (C * C + s * s) * x

    def data(n, g):
        return C * torch.randn(n, 3, generator=g, dtype=torch.float64)

    def load():
        return den, data
    """
)


def _optimize_args(tmp_path, out) -> list[str]:
    """``ays optimize`` with the default method on the model above, small."""
    (tmp_path / "model.py").write_text(_MODEL)
    return ["optimize", f"{tmp_path / 'model.py'}:load", "--steps", "4", "--budget", "6000", "--sigma-min", "0.002",
            "--sigma-max", "80", "--out", str(out), "-q"]


def _single_process(argv: list[str]) -> None:
    from ays.cli import main

    with pytest.raises(SystemExit) as end:
        main(argv)
    assert end.value.code in (0, None)


@pytest.mark.slow
def test_ays_optimize_under_torchrun_exits_0_on_every_rank_writes_one_file_and_the_single_process_schedule(
        tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    _single_process(_optimize_args(ref, ref / "s.json"))
    proc = _launch(["-m", "ays", *_optimize_args(run, run / "s.json")], cwd=run)
    assert proc.returncode == 0, proc.stderr[-3000:]  # torchrun's status: every rank exited 0
    # One file (the checkpoint removed, no temporary left), printed once: rank 0 alone writes and speaks.
    assert sorted(p.name for p in run.iterdir() if p.name != "__pycache__") == ["model.py", "s.json"]
    want = ays.load_schedule(ref / "s.json").sigmas
    assert torch.equal(ays.load_schedule(run / "s.json").sigmas, want)
    printed = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(printed) == 1 and [float(v) for v in printed[0].split()] == pytest.approx(want.tolist(), rel=1e-5)


@pytest.mark.slow
def test_the_default_method_killed_mid_run_on_two_ranks_resumes_to_the_uninterrupted_schedule(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    _single_process(_optimize_args(ref, ref / "s.json"))
    args = ["-m", "ays", *_optimize_args(run, run / "s.json")]
    ckpt = run / "s.json.ckpt.json"
    killed = _launch(args, cwd=run, AYS_TEST_KILL=str(ckpt))
    # Killed mid-run: rank 1 died after the first checkpoint, before the schedule was written.
    assert killed.returncode != 0 and ckpt.is_file() and not (run / "s.json").exists(), killed.stderr[-3000:]
    done = json.loads(ckpt.read_text())
    resumed = _launch([*args, "--resume"], cwd=run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.equal(ays.load_schedule(run / "s.json").sigmas, ays.load_schedule(ref / "s.json").sigmas)
    assert not ckpt.exists() and not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert done["state"]  # the kill came after some work was checkpointed, which the resume took up


# The other commands that do work (and plot --klub), one 2-rank launch for all of them: each joins the group in turn
# (ays.cli.main, as `torchrun -m ays CMD` runs it), and each rank records what it printed.
_COMMANDS = [
    ["evaluate", "gaussian", "--solvers", "euler,dpmpp_2m_sde", "--steps", "3,5", "--seeds", "2", "--samples", "64",
     "--schedules", "karras,loglinear", "--out", "ev", "-q"],
    ["evaluate", "gaussian", "--optimize", "--budget", "6000", "--solvers", "euler", "--steps", "4", "--seeds", "2",
     "--samples", "64", "--schedules", "karras", "--out", "evo", "-q"],
    ["sample", "gaussian", "--solver", "dpmpp_2m_sde", "--steps", "5", "--count", "65", "--out", "s.pt"],
    ["demo", "--problem", "gmm-8x4", "--steps", "4", "--eval-samples", "64", "--seeds", "2",
     "-O", "budget=20000", "--out", "demo", "-q"],
    ["train", "gaussian", "--steps", "30", "--out", "m.pt"],
    ["plot", "karras", "loglinear", "--steps", "4", "--klub", "gaussian", "--samples", "64", "-o", "p.png"],
]
_CLI_WORKER = textwrap.dedent(
    """
    import contextlib, io, json, os, sys
    from ays.cli import main

    said = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as end:
                code = end.code or 0
        said.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    with open(f"said{os.environ['RANK']}.json", "w") as f:
        json.dump(said, f)
    """
)


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("said")
                  and p.name != "cli.py")


def _rows(path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads(path.read_text())["rows"]]


@pytest.mark.slow
def test_evaluate_sample_demo_train_plot_under_torchrun_give_the_single_process_files_written_once(
        tmp_path, monkeypatch, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    (run / "cli.py").write_text(_CLI_WORKER)
    proc = _launch([str(run / "cli.py"), json.dumps(_COMMANDS)], cwd=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [json.loads((run / f"said{r}.json").read_text()) for r in (0, 1)]
    monkeypatch.chdir(ref)
    printed = []
    for argv in _COMMANDS:
        _single_process(argv)
        printed.append(capsys.readouterr())
    for argv, zero, one, alone in zip(_COMMANDS, *said, printed):
        assert zero["code"] == 0 and one["code"] == 0, (argv[0], zero["stderr"][-2000:], one["stderr"][-2000:])
        assert one["stdout"] == "" and one["stderr"] == "", argv[0]  # rank 0 alone speaks ...
        if argv[0] in ("evaluate", "sample"):  # (demo and train print their timings)
            assert zero["stdout"] == alone.out, argv
        if argv[0] == "plot":  # the KLUB of each schedule, from draws shared out
            assert zero["stderr"] == alone.err and "KLUB" in alone.err
    assert _files(run) == _files(ref)  # ... and writes, the single process's files and no temporary
    assert "rank 0 trains alone" in said[0][4]["stderr"]
    # What is shared out gives the single-process numbers: each run's rows (the SDE's draws too), the
    # optimised cells, the demo's optimisers and evaluation, every denoiser call counted.
    for table in ("ev/results.json", "evo/results.json", "demo/results-gmm-8x4-dpmpp_2m_sde-4.json"):
        assert _rows(run / table) == _rows(ref / table), table
    assert torch.equal(torch.load(run / "s.pt"), torch.load(ref / "s.pt"))
    for schedule in ("evo/ays_euler_4.json", "demo/gmm-8x4-dpmpp_2m_sde-4.json"):
        assert torch.equal(ays.load_schedule(run / schedule).sigmas, ays.load_schedule(ref / schedule).sigmas)
    # Training is not shared: rank 0 trained the single process's weights while rank 1 waited.
    from ays.model_file import load_model

    got, want = load_model(run / "m.pt").state_dict(), load_model(ref / "m.pt").state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

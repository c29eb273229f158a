"""KLUB estimation across processes and under a memory cap: throughput and peak memory.

Three tables.

1. **Scaling.** The same total work - the KLUB of a 10-step schedule on ``--samples``
   Monte Carlo chains, ``--repeats`` times - with 1 process and with 2 processes
   (``torchrun``-style launch, gloo on the CPU, 1 thread each). Reported: seconds,
   denoiser rows per second, the speed-up against one process, and whether the
   estimate is bit-identical to the single-process one (it must be).
2. **Memory.** One process, the KLUB under ``max_memory`` caps: the batch size the cap
   gives, and the peak resident memory *during* the estimation above what was resident
   before it (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``;
   ``ru_maxrss`` growth elsewhere). The cap bounds each denoiser call; outside it are
   the draws (3 × samples × row, resident before the estimation starts) and the
   estimator's float64 bookkeeping per (interval, draw), which the table measures with a
   free denoiser and subtracts.
3. **The default method.** ``ays.optimize(model, data, steps=--ays-steps)`` (``method="ays"``,
   its default solver, ``budget=--ays-budget`` or the default budget) with 1, 2 and 4 processes
   (``--ays-worlds``): the wall time, each rank's denoiser rows (counted in the model's
   ``forward``), the most any rank did as a share of the single process's rows, and whether
   every rank returned the single-process schedule, call count and history (it must).

The model is an EDM-preconditioned MLP with random weights (``--dim`` data dimensions,
``--hidden`` units, 3 hidden layers): heavy enough that denoiser calls dominate.

    python benchmarks/distributed_scaling.py               # 8192 samples, dim 64, hidden 512
    python benchmarks/distributed_scaling.py --quick
    python benchmarks/distributed_scaling.py --quick --ays-worlds 1,2,4,8 --ays-budget 20000

Results: ``benchmarks/results/distributed_scaling[-quick]/`` (CSV, JSON and markdown, by :mod:`_harness`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ays.io import atomic_write_text

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.distributed_scaling
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H


class MLPDenoiser(torch.nn.Module):
    """``D(x, σ) = c_skip x + c_out F(c_in x, log σ / 4)`` (EDM preconditioning), F an MLP with random weights.

    ``rows``: the rows this process has evaluated (the cost unit of a budget).
    """

    def __init__(self, dim: int, hidden: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.f = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim),
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
        self.rows = 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        s = sigma.reshape(-1, 1).to(x.dtype)
        sd = 0.5
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * self.f(torch.cat([c_in * x, s.log() / 4], dim=1))


def _data(dim: int) -> Any:
    def data(n: int, g: torch.Generator) -> torch.Tensor:
        return 0.5 * torch.randn(n, dim, generator=g)

    return data


def _peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker_scaling(args: argparse.Namespace) -> None:
    """One rank of the scaling run (or the single process): time the estimate, rank 0 reports."""
    import ays
    from ays import distributed as dd
    from ays.klub import KlubDraws, klub

    torch.set_num_threads(1)
    with dd.session():
        model = MLPDenoiser(args.dim, args.hidden)
        sig = ays.schedules.karras(10, 0.002, 80.0)
        draws = KlubDraws.create(_data(args.dim), args.samples, torch.Generator().manual_seed(0))
        with torch.no_grad():
            klub(model, None, sig, draws=draws, batch_size=args.batch_size)  # warm-up
            dd.barrier()
            start = time.perf_counter()
            for _ in range(args.repeats):
                est = klub(model, None, sig, draws=draws, batch_size=args.batch_size)
            dd.barrier()
            seconds = time.perf_counter() - start
        if dd.is_rank_zero():
            out = {"world": dd.world_size(), "seconds": seconds, "rows": est.calls * args.repeats,
                   "total": est.total, "per_interval": est.per_interval.tolist()}
            Path(args.result).write_text(json.dumps(out))


def worker_ays(args: argparse.Namespace) -> None:
    """One rank of the default method's run: every rank writes its schedule, calls, history and rows."""
    import ays
    from ays import distributed as dd
    from ays.optimize.task import DEFAULT_SOLVER

    torch.set_num_threads(1)
    with dd.session():
        model = MLPDenoiser(args.dim, args.hidden)
        dd.barrier()
        start = time.perf_counter()
        with torch.no_grad():
            res = ays.optimize(model, _data(args.dim), steps=args.ays_steps, seed=0,
                               budget=args.ays_budget or None)
        dd.barrier()
        seconds = time.perf_counter() - start
        plan = next(h for h in res.history if h.get("stage") == "plan")
        out = {"world": dd.world_size(), "rank": dd.rank(), "seconds": seconds, "rows": model.rows,
               "calls": res.calls, "solver": DEFAULT_SOLVER, "budget": plan["budget"],
               "plan_rows": plan["rows"], "chains": plan["chains"],
               "sigmas": res.sigmas.tolist(), "history": res.history}
        Path(f"{args.result}.{dd.rank()}").write_text(json.dumps(out))


def worker_memory(args: argparse.Namespace) -> None:
    """One process: the KLUB under a cap; peak resident memory during the estimate above what was resident.

    ``--cap -1``: the estimator's own bookkeeping, with a free denoiser (x -> x) at 256 rows per call.
    """
    import ays
    from ays import device as dv
    from ays.klub import DEFAULT_BATCH_SIZE, KlubDraws, klub

    torch.set_num_threads(1)
    model = MLPDenoiser(args.dim, args.hidden)
    sig = ays.schedules.karras(10, 0.002, 80.0)
    draws = KlubDraws.create(_data(args.dim), args.samples, torch.Generator().manual_seed(0))
    null = args.cap < 0
    cap = None if args.cap <= 0 else args.cap
    run = dv.prepare(model)
    batch = 256 if null else DEFAULT_BATCH_SIZE if cap is None else dv.batch_size_for(run, draws.x0[:1], cap)
    per_row, fixed = dv.row_bytes(run, draws.x0[:1])
    with torch.no_grad():
        model(draws.x0[:2], torch.ones(2))  # load kernels etc. before the baseline
    resident = _vm("VmRSS")
    exact = _peak_reset() and resident is not None
    before = resident if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.no_grad():
        if null:
            est = klub(lambda x, s: x, None, sig, draws=draws, batch_size=batch)
        else:
            est = klub(model, None, sig, draws=draws, max_memory=cap)
    seconds = time.perf_counter() - start
    after = _vm("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"cap": cap, "batch": batch, "per_row_estimate": per_row, "fixed": fixed,
           "peak_growth": max(0, (after or 0) - before), "method": "VmHWM" if exact else "ru_maxrss",
           "seconds": seconds, "total": est.total,
           "draws_bytes": 3 * draws.x0.numel() * draws.x0.element_size()}
    Path(args.result).write_text(json.dumps(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: argparse.Namespace, mode: str, world: int, result: Path, extra: list[str]) -> Any:
    common = [__file__, "--worker", mode, "--out", str(args.out), "--result", str(result), "--samples",
              str(args.samples), "--dim", str(args.dim), "--hidden", str(args.hidden), "--repeats",
              str(args.repeats), "--batch-size", str(args.batch_size), "--ays-steps", str(args.ays_steps),
              "--ays-budget", str(args.ays_budget), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           # Blocks of 64 KiB and more are mapped and unmapped by glibc at once, so resident memory
           # tracks live tensors instead of what the allocator keeps cached (which varies run to run).
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    if world == 1:
        cmd = [sys.executable, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run with {world} process(es) failed:\n{proc.stderr[-3000:]}")
    if mode == "ays":  # one file per rank
        return [json.loads(Path(f"{result}.{r}").read_text()) for r in range(world)]
    return json.loads(result.read_text())


def main(argv: Sequence[str] | None = None) -> None:
    p = H.arguments(__doc__.splitlines()[0], "distributed_scaling", cells=False)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--worlds", default="1,2")
    p.add_argument("--caps", default="8MiB,32MiB,128MiB,0", help="max_memory values; 0 = no cap (batch 8192)")
    p.add_argument("--ays-worlds", default="1,2,4", help="process counts for the default method ('' = none)")
    p.add_argument("--ays-steps", type=int, default=10)
    p.add_argument("--ays-budget", type=int, default=0, help="denoiser calls; 0 = the default budget")
    p.add_argument("--worker", choices=["scaling", "memory", "ays"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--cap", type=int, default=0, help=argparse.SUPPRESS)
    args = H.parse(p, argv, {"samples": 2048, "caps": "4MiB,16MiB,64MiB,0"})
    if args.worker == "scaling":
        return worker_scaling(args)
    if args.worker == "memory":
        return worker_memory(args)
    if args.worker == "ays":
        return worker_ays(args)
    from ays.device import parse_memory

    out = args.out
    scaling = []
    for w in (int(v) for v in args.worlds.split(",")):
        r = _launch(args, "scaling", w, out / f"scaling-{w}.json", [])
        scaling.append(r)
        print(f"{w} process(es): {r['seconds']:.2f} s, {r['rows'] / r['seconds']:,.0f} rows/s", flush=True)
    base = scaling[0]
    memory = []
    for text in ["-1", *args.caps.split(",")]:
        cap = int(text) if text.strip() in ("0", "-1") else parse_memory(text.strip())
        r = _launch(args, "memory", 1, out / f"memory-{cap}.json", ["--cap", str(cap)])
        memory.append(r)
        print(f"cap {text}: batch {r['batch']}, peak growth {r['peak_growth'] / 2**20:.1f} MiB", flush=True)
    book, memory = memory[0]["peak_growth"], memory[1:]
    runs = []
    for w in (int(v) for v in args.ays_worlds.split(",") if v.strip()):
        ranks = _launch(args, "ays", w, out / f"ays-{w}.json", [])
        runs.append(ranks)
        print(f"ays, {w} process(es): {max(r['seconds'] for r in ranks):.2f} s, rows per rank "
              f"{[r['rows'] for r in ranks]}", flush=True)

    mib = 2**20
    lines = [
        f"KLUB of a 10-step schedule, {args.samples} chains x {args.repeats} repeat(s), EDM-preconditioned MLP "
        f"(dim {args.dim}, hidden {args.hidden}, random weights), batch {args.batch_size} rows, 1 thread per "
        f"process, gloo. Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "(shared with other work).",
        "",
        "| processes | seconds | denoiser rows/s | speed-up vs 1 | estimate identical to 1 process |",
        "|---|---|---|---|---|",
    ]
    for r in scaling:
        same = "yes" if r["per_interval"] == base["per_interval"] and r["total"] == base["total"] else "NO"
        lines.append(f"| {r['world']} | {r['seconds']:.2f} | {r['rows'] / r['seconds']:,.0f} | "
                     f"{base['seconds'] / r['seconds']:.2f}x | {same} |")
    lines += [
        "",
        f"Memory (1 process). Peak resident memory during the estimate above what was resident before it "
        f"({memory[0]['method']}, glibc told to unmap blocks of 64 KiB and more at once). Outside the cap: the "
        f"draws ({memory[0]['draws_bytes'] / mib:.1f} MiB, resident before) and the estimator's float64 "
        f"bookkeeping per (interval, draw), measured with a free denoiser (x -> x) at 256 rows per call: "
        f"{book / mib:.1f} MiB.",
        "",
        "| max_memory | batch (rows) | estimated bytes/row | peak growth | minus bookkeeping | within cap | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in memory:
        cap = r["cap"]
        within = "-" if cap is None else ("yes" if r["peak_growth"] - book <= cap else "NO")
        lines.append(f"| {'none' if cap is None else f'{cap / mib:g} MiB'} | {r['batch']} | {r['per_row_estimate']:,} "
                     f"| {r['peak_growth'] / mib:.1f} MiB | {(r['peak_growth'] - book) / mib:.1f} MiB | {within} "
                     f"| {r['seconds']:.2f} |")
    if runs:
        one = runs[0][0]
        lines += [
            "",
            f"The default method (`ays.optimize(model, data, steps={args.ays_steps})`, method 'ays', solver "
            f"{one['solver']}, budget {one['budget']:,} calls: {one['chains']} table chains, {one['plan_rows']} noises "
            f"per evidence set), same model. Rows: this rank's denoiser rows; share: the most any rank did over "
            f"the single process's rows (1/world is perfect). Same schedule: every rank's sigmas, call count and "
            f"history equal those of {one['world']} process(es).",
            "",
            "| processes | seconds | rows per rank | max share of 1-process rows | speed-up vs 1 | same schedule |",
            "|---|---|---|---|---|---|",
        ]
        for ranks in runs:
            secs = max(r["seconds"] for r in ranks)
            same = all(r[k] == one[k] for r in ranks for k in ("sigmas", "calls", "history"))
            per_rank = " / ".join(f"{r['rows']:,}" for r in ranks)
            lines.append(f"| {ranks[0]['world']} | {secs:.2f} | {per_rank} | "
                         f"{max(r['rows'] for r in ranks) / one['rows']:.3f} | "
                         f"{max(x['seconds'] for x in runs[0]) / secs:.2f}x | {'yes' if same else 'NO'} |")
    table = "\n".join(lines)
    print("\n" + table)
    rows = [{"table": "scaling", **r} for r in scaling] + [{"table": "memory", **r} for r in memory]
    rows += [{"table": "ays", **{k: v for k, v in r.items() if k != "history"}} for ranks in runs for r in ranks]
    H.write_rows(rows, out, "distributed_scaling", cmd=args.command,
                 meta={"args": {k: v for k, v in vars(args).items() if k not in ("out", "_name", "command")},
                       "scaling": scaling, "bookkeeping": book, "memory": memory, "ays": runs})
    atomic_write_text(out / "distributed_scaling.md", f"Command: `{args.command}`  \n{H.machine_line()}\n\n{table}\n")


if __name__ == "__main__":
    main()

"""Each solver's own overhead per step (time outside the denoiser) against the denoiser's time.

    python benchmarks/solver_overhead.py [--quick] [--batch 64] [--dim 256] [--hidden 1024]
                                         [--steps 20] [--repeats 7] [--threads 1] [--device cpu]

The denoiser is a small EDM-preconditioned 3-layer MLP on a batch of vectors. A wrapper
times every denoiser call (synchronising first on CUDA); the solver's overhead is the
rest of the run's wall time, per step: Python, schedule arithmetic, the elementwise
tensor updates, noise draws. Each row is the best (minimum) over ``--repeats`` runs after
one warm-up run, as ``timeit`` does: other processes only ever add time.
``ratio`` = overhead per step / denoiser time per call; ``slowdown`` = total overhead /
total denoiser time, the fraction by which the solver slows sampling down over a bare
loop of its denoiser calls (Heun and EDM spend two calls per step). ``--quick`` runs
fewer repeats and steps (a smoke test, seconds). Results (CSV, JSON, markdown, by
:mod:`_harness`): ``benchmarks/results/solver_overhead[-quick]/``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from ays import schedules, solvers

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.solver_overhead
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H


class MLPDenoiser(torch.nn.Module):
    """``D(x, s) = c_skip x + c_out F([c_in x, log(s)/4])`` (EDM preconditioning, sigma_data 0.5)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma[:, None]
        sd2 = 0.25
        c_in, c_skip, c_out = 1 / torch.sqrt(s * s + sd2), sd2 / (s * s + sd2), s * 0.5 / torch.sqrt(s * s + sd2)
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, torch.log(s) / 4], dim=1))


class Timed:
    """Wraps a denoiser and adds up the wall time spent inside it."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.fn, self.cuda, self.seconds, self.calls = fn, device.type == "cuda", 0.0, 0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self._sync()
        start = time.perf_counter()
        out = self.fn(x, sigma)
        self._sync()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def measure(name: str, model: MLPDenoiser, noise: torch.Tensor, sigmas: torch.Tensor, repeats: int,
            device: torch.device) -> dict[str, float]:
    fn = solvers.get(name)
    totals, dens, calls = [], [], 0
    for r in range(repeats + 1):  # run 0 warms up
        timed = Timed(model, device)
        g = torch.Generator(device=device).manual_seed(r)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(timed, noise * float(sigmas[0]), sigmas, generator=g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        if r:
            totals.append(total)
            dens.append(timed.seconds)
        calls = timed.calls
    steps = sigmas.numel() - 1
    overhead = min(t - d for t, d in zip(totals, dens)) / steps
    per_call = min(dens) / calls
    return {"calls": calls, "total_ms": 1e3 * min(totals), "den_us": 1e6 * per_call,
            "over_us": 1e6 * overhead, "ratio": overhead / per_call, "slowdown": overhead * steps / (per_call * calls)}


def main(argv: Sequence[str] | None = None) -> str:
    parser = H.arguments(__doc__.splitlines()[0], "solver_overhead", cells=False)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = H.parse(parser, argv, {"steps": 10, "repeats": 2})
    device = torch.device(args.device)
    torch.manual_seed(0)  # only for the MLP's initial weights; the solvers never touch the global RNG
    model = MLPDenoiser(args.dim, args.hidden).to(device).eval()
    noise = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0)).to(device)
    sigmas = schedules.to_sampling(schedules.karras(args.steps, 0.002, 80.0))

    setting = (f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
               f"MLP {args.dim}-{args.hidden}-{args.hidden}-{args.dim}, batch {args.batch}, "
               f"{args.steps} steps (karras, last level 0), best of {args.repeats}")
    print(setting)
    print(f"{'solver':<16} {'calls':>5} {'total ms':>9} {'denoiser us/call':>17} "
          f"{'overhead us/step':>17} {'ratio':>7} {'slowdown':>9}")
    rows = []
    with torch.inference_mode():
        for name in solvers.names():
            r = measure(name, model, noise, sigmas, args.repeats, device)
            print(f"{name:<16} {r['calls']:>5d} {r['total_ms']:>9.2f} {r['den_us']:>17.1f} "
                  f"{r['over_us']:>17.1f} {r['ratio']:>7.3f} {100 * r['slowdown']:>8.1f}%")
            assert math.isfinite(r["ratio"])
            rows.append({"solver": name, **r})
    H.write_rows(rows, args.out, "solver_overhead", cmd=args.command, meta={"setting": setting})
    table = H.markdown_table(
        ["solver", "calls", "total ms", "denoiser µs/call", "overhead µs/step", "ratio", "slowdown"],
        [[r["solver"], r["calls"], f"{r['total_ms']:.2f}", f"{r['den_us']:.1f}", f"{r['over_us']:.1f}",
          f"{r['ratio']:.3f}", f"{100 * r['slowdown']:.1f}%"] for r in rows])
    return H.write_markdown(args.out, "solver_overhead", "## Solver overhead per step", [setting], [("", table)],
                            args.command)


if __name__ == "__main__":
    main()

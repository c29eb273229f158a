"""The shipped MNIST UNet on the CPU: rows per second across batch sizes, threads, memory format, dtype, compile.

    OMP_NUM_THREADS=2 python benchmarks/unet_cpu.py [--quick] [--repeats 5] [--seconds 0.6]

Model: ``ays.train.pretrained("mnist")`` (the EDM-preconditioned UNet, 555k parameters) in
eval mode under ``torch.no_grad`` (as sampling and the forward-only optimisers call it). A
row is one denoiser call on one 1×28×28 image. Each configuration is timed over calls that
add up to at least ``--seconds``, in ``--repeats`` rounds after a warm-up round; each round
times every configuration once, so that a swing of the shared machine's load hits all of them
alike. The table shows the median rows/s, the spread (min–max) over the rounds, and the median
over rounds of the ratio to float32 at the library's batch on one thread (paired by round).

Configurations: float32 at every batch of ``--batches`` on 1 and 2 threads (each batch in one
call); at the batch the library picks on the CPU (:data:`ays.device.CPU_BATCH_ROWS`, the chunk
the UNet splits larger batches into) also channels_last, bfloat16
(the weights and inputs cast, ``ays.device.ModelCall(dtype=torch.bfloat16)``) and
``torch.compile`` (inductor; its one-time compile seconds reported apart). A faster form is
usable only where samples stay within the tolerance: each form runs a 10-step DPM-Solver++(2M)
sampling of 64 images from the same noise, and the table reports the largest absolute pixel
difference from float32 (pixels in [-1, 1]); the stated tolerance is 1/127.5, one grey level
of 255.

Results: ``benchmarks/results/unet_cpu[-quick]/`` (``unet_cpu.{csv,json,md}``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import ays
import ays.device
from ays.device import ModelCall
from ays.io import atomic_write_text

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.unet_cpu
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

TOLERANCE = 1 / 127.5  #: one grey level of 255, in pixels of [-1, 1]
QUICK = {"repeats": 2, "seconds": 0.2, "batches": "16,64", "compile": False}


def rows_per_second(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int, seconds: float) -> float:
    """One measurement of rows/s of ``fn`` on ``batch`` rows: calls until ``seconds`` have passed."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    s = torch.full((batch,), 1.0)
    with torch.no_grad():
        calls, start = 0, time.perf_counter()
        while True:
            fn(x, s)
            calls += 1
            took = time.perf_counter() - start
            if took >= seconds:
                return calls * batch / took


def sample_gap(fn: Callable[..., torch.Tensor], reference: torch.Tensor | None) -> tuple[torch.Tensor, float | None]:
    """10 steps of dpmpp_2m on 64 images from seed 0's noise with ``fn``; its largest pixel gap from ``reference``."""
    sigmas = ays.schedules.to_sampling(ays.schedules.karras(10, 0.002, 80.0))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=g) * 80.0
    with torch.no_grad():
        out = ays.solvers.get("dpmpp_2m")(fn, x, sigmas)
    return out, None if reference is None else float((out - reference).abs().max())


def channels_last(net: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``net`` with its weights and inputs in the channels_last memory format."""
    net = net.to(memory_format=torch.channels_last)
    return lambda x, s: net(x.contiguous(memory_format=torch.channels_last), s)


def main(argv: Sequence[str] | None = None) -> str:
    p = H.arguments(__doc__.splitlines()[0], "unet_cpu", cells=False, threads=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.6, help="least wall time of one measurement")
    p.add_argument("--batches", default="8,16,32,64,128,256,512")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave torch.compile out")
    args = H.parse(p, argv, QUICK)
    start = time.perf_counter()
    net = ays.train.pretrained("mnist").eval()
    b = ays.device.CPU_BATCH_ROWS
    reference, _ = sample_gap(net, None)
    ays.device.CPU_BATCH_ROWS = 1 << 30  # the UNet's CPU chunking off: each batch in one call
    # (form, function, batch, threads, pixel gap, extra): every configuration, warmed up once
    configs: list[tuple[str, Callable[..., torch.Tensor], int, int, float | None, dict[str, Any]]] = []
    for threads in (1, 2):
        batches = sorted({int(v) for v in args.batches.split(",")} | {b})  # the library's batch always
        configs += [("float32", net, batch, threads, 0.0, {}) for batch in batches]
    cl = channels_last(ays.train.pretrained("mnist").eval())
    bf = ModelCall(ays.train.pretrained("mnist").eval().to(torch.bfloat16), dtype=torch.bfloat16)
    for threads in (1, 2):
        configs += [("channels_last", cl, b, threads, sample_gap(cl, reference)[1], {}),
                    ("bfloat16", bf, b, threads, sample_gap(bf, reference)[1], {})]
    if args.compile:
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        try:
            comp = torch.compile(ays.train.pretrained("mnist").eval(), dynamic=False)
            gap = sample_gap(comp, reference)[1]  # compiles for the 64 rows of the sampling
            extra = {"compile_seconds": round(time.perf_counter() - t0, 1)}
            configs += [("compile", comp, 64, threads, gap, extra) for threads in (1, 2)]
        except Exception as e:  # a missing compiler is a result of this benchmark, not a failure
            configs.append(("compile", net, 64, 1, None, {"error": f"{type(e).__name__}: {str(e)[:200]}"}))
    times: list[list[float]] = [[] for _ in configs]
    for r in range(args.repeats + 1):  # round 0 warms every configuration up; rounds interleave them,
        for k, (_, fn, batch, threads, _, extra) in enumerate(configs):  # so load swings hit all alike
            if "error" in extra:
                continue
            torch.set_num_threads(threads)
            v = rows_per_second(fn, batch, args.seconds if r else 0.0)
            if r:
                times[k].append(v)
    base = [k for k, c in enumerate(configs) if c[0] == "float32" and c[2] == b and c[3] == 1]
    rows: list[dict[str, Any]] = []
    for k, (form, _, batch, threads, gap, extra) in enumerate(configs):
        t = times[k]
        # speed-up against float32 at the library's batch on 1 thread, round by round (paired)
        ratio = statistics.median(x / y for x, y in zip(t, times[base[0]], strict=True)) if t and base else None
        rows.append({"form": form, "batch": batch, "threads": threads,
                     "rows_per_s": statistics.median(t) if t else None, "min": min(t) if t else None,
                     "max": max(t) if t else None, "vs_float32_1t": ratio, "max_pixel_gap": gap, **extra})
    seconds = time.perf_counter() - start
    H.write_rows(rows, args.out, "unet_cpu", cmd=args.command)
    head = ["form", "batch", "threads", "rows/s (median)", "min–max", f"× float32 at {b}, 1 thread",
            f"max pixel gap (tolerance {TOLERANCE:.4f})"]
    body = [[r["form"], r["batch"], r["threads"], "—" if r["rows_per_s"] is None else f"{r['rows_per_s']:.0f}",
             "—" if r["min"] is None else f"{r['min']:.0f}–{r['max']:.0f}",
             "—" if r["vs_float32_1t"] is None else f"{r['vs_float32_1t']:.2f}",
             r.get("error") or ("—" if r["max_pixel_gap"] is None else f"{r['max_pixel_gap']:.2g}")] for r in rows]
    text = (f"Command: `{args.command}`\n\n{H.machine_line(seconds)} Median of {args.repeats} rounds; each round "
            f"times every configuration once (at least {args.seconds} s each), so a swing of the shared machine's "
            "load hits all of them alike; the ratio is taken within each round.\n\n"
            f"{H.markdown_table(head, body)}\n")
    atomic_write_text(args.out / "unet_cpu.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()

"""Video: schedules for short clips of moving digits, optimised and evaluated like the images.

Problem ``digits-video`` (:mod:`ays.problems.video`): 1,024 clips of 4 frames of 16×16, a training
digit translating at a constant integer velocity; the exact denoiser of that clip set
(a memorising model: ideal samples are training clips). Schedules: karras, loglinear,
time_uniform, kl_optimal and AYS (``ays.optimize`` per step count for stochastic DDIM's
KLUB; default method ``coordinate`` with a reduced sample budget, since every exact
denoiser row costs a 1,024 × 1,024 product). Solvers: euler, dpmpp_2m, stochastic_ddim,
dpmpp_2m_sde at 5 and 10 steps. Metrics: sliced W2 and energy distance to fresh clips,
and the motion error (departure of consecutive frames from one rigid translation: 0 for
every training clip), mean ± 95 % t-interval over seeds (:mod:`_harness`).

    python benchmarks/video.py           # full run
    python benchmarks/video.py --quick   # smoke test

Results: ``benchmarks/results/video/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import torch

import ays
from ays.plot import plot_schedules

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.video
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

STEPS = [5, 10]
SOLVERS = ["euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde"]
HEURISTICS = ["karras", "loglinear", "time_uniform", "kl_optimal"]
METRICS = ["sliced_w2", "energy", "motion"]
PIVOTS = [("sliced_w2", "sliced W2"), ("energy", "energy distance"),
          ("motion", "motion error (0 = rigid motion)"), ("klub", "KLUB of the schedule")]
QUICK = {"seeds": 2, "samples": 256, "opt_samples": 64, "klub_samples": 256, "max_sweeps": 2}


def main(argv: Sequence[str] | None = None) -> str:
    p = H.arguments(__doc__.splitlines()[0], "video", samples=1024, threads=2)
    p.add_argument("--opt-samples", type=int, default=128)
    p.add_argument("--max-sweeps", type=int, default=6, help="coordinate method: sweep budget")
    p.add_argument("--klub-samples", type=int, default=1024)
    p.add_argument("--method", default="coordinate")
    p.add_argument("--steps", type=int, nargs="+", default=STEPS)
    args = H.parse(p, argv, QUICK)
    start = time.perf_counter()
    prob = ays.problems.get("digits-video")
    den = prob.denoiser

    opts = {"max_sweeps": args.max_sweeps} if args.method == "coordinate" else {}
    ays_sched, cost = H.optimise_per_steps(den, prob, args.steps, solver="stochastic_ddim", seed=0,
                                           samples=args.opt_samples, method=args.method, **opts)
    schedules = {**{h: h for h in HEURISTICS}, "ays": ays_sched}
    rows = H.evaluate_table(den, prob, schedules, SOLVERS, args.steps, seeds=args.seeds, samples=args.samples,
                            metrics=METRICS, model="exact", klub_samples=args.klub_samples)
    if args.plots:
        n = 10 if 10 in args.steps else args.steps[-1]
        ten = {r["schedule"]: torch.tensor(r["sigmas"]) for r in rows if r["steps"] == n and r["solver"] == "euler"}
        plot_schedules(ten, args.out / "video_schedules.png", title=f"digits-video (exact): {n}-step schedules")
        H.sample_grid(den, ten, "euler", torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(7)),
                      lambda x: [x[c, t] for c in range(4) for t in range(4)], args.out / "video_samples.png",
                      f"digits-video, euler, {n} steps")
    text = H.write_table(
        rows, args.out, "video", cmd=args.command, seconds=time.perf_counter() - start, pivots=PIVOTS,
        verdict_of=("sliced_w2", "ays", HEURISTICS),
        plot=args.plots,
        title=f"## Video (moving digits, 4×16×16): schedules × solvers at {' / '.join(map(str, args.steps))} steps",
        notes=[f"AYS optimisation {cost['seconds']:.0f} s, {cost['calls']:,} denoiser rows. Exact denoiser. "
               f"Each cell: mean ± 95 % t-interval over {args.seeds} seeds of {args.samples} clips. "
               f"AYS: `ays.optimize` per step count, method {args.method}, {args.opt_samples} samples, seed 0; "
               f"options `{json.dumps(cost['options'])}`. KLUB: {args.klub_samples} shared draws, ± 1.96 s.e."],
        meta={"args": {k: v for k, v in vars(args).items() if k not in ("out", "_name", "command")},
              "optimizer_options": cost["options"]})
    print(text)
    return text


if __name__ == "__main__":
    main()

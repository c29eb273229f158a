"""Video: schedules for short clips of moving digits, optimised and evaluated like the images.

Problem ``digits-video`` (:mod:`ays.problems.video`): 1,024 clips of 4 frames of 16×16, a training
digit translating at a constant integer velocity; the exact denoiser of that clip set
(a memorising model: ideal samples are training clips). Schedules: karras, loglinear,
time_uniform, kl_optimal and AYS (``ays.optimize`` per step count for stochastic DDIM's
KLUB; default method ``coordinate`` with a reduced sample budget, since every exact
denoiser row costs a 1,024 × 1,024 product). Solvers: euler, dpmpp_2m, stochastic_ddim,
dpmpp_2m_sde at 5 and 10 steps. Metrics: sliced W2 and energy distance to fresh clips,
and the motion error (departure of consecutive frames from one rigid translation: 0 for
every training clip), mean ± 95 % t-interval over seeds.

    python benchmarks/video.py           # full run
    python benchmarks/video.py --quick   # smoke test

Results: ``benchmarks/results/video/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import ays
from ays import evaluate as ev
from ays.io import atomic_write_text
from ays.klub import KlubDraws, klub
from ays.optimize import optimize
from ays.plot import plot_schedules, save_figure

STEPS = [5, 10]
SOLVERS = ["euler", "dpmpp_2m", "stochastic_ddim", "dpmpp_2m_sde"]
HEURISTICS = ["karras", "loglinear", "time_uniform", "kl_optimal"]
METRICS = ["sliced_w2", "energy", "motion"]
ROOT = Path(__file__).resolve().parent


def clip_grid(denoiser: Any, schedules: dict[str, torch.Tensor], solver: str, path: Path, clips: int = 4) -> None:
    """For each schedule, ``clips`` sampled clips (frames left to right), all from the same noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = torch.randn(clips, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    cols = clips * 4
    fig, axes = plt.subplots(len(schedules), cols, figsize=(cols * 0.5, len(schedules) * 0.6), squeeze=False)
    for row, (name, sig) in enumerate(schedules.items()):
        with torch.no_grad():
            x = ays.sample(denoiser, noise, ays.schedules.to_sampling(sig), solver=solver,
                           generator=torch.Generator().manual_seed(8))
        for c in range(clips):
            for t in range(4):
                ax = axes[row][c * 4 + t]
                ax.imshow(x[c, t].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"digits-video, {solver}, {len(next(iter(schedules.values()))) - 1} steps")
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--opt-samples", type=int, default=128)
    p.add_argument("--max-sweeps", type=int, default=6, help="coordinate method: sweep budget")
    p.add_argument("--klub-samples", type=int, default=1024)
    p.add_argument("--method", default="coordinate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "results" / "video"))
    args = p.parse_args()
    if args.quick:
        args.seeds, args.samples, args.opt_samples, args.klub_samples, args.max_sweeps = 2, 256, 64, 256, 2
        if args.out == str(ROOT / "results" / "video"):
            args.out = str(ROOT / "results" / "video-quick")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    prob = ays.problems.get("digits-video")
    den = prob.denoiser

    t0 = time.perf_counter()
    opts = {"max_sweeps": args.max_sweeps} if args.method == "coordinate" else {}
    ays_sched, opt_calls, options = {}, 0, None
    for n in STEPS:
        res = optimize(den, prob, steps=n, solver="stochastic_ddim", seed=0, samples=args.opt_samples,
                       method=args.method, **opts)
        ays_sched[n], opt_calls = res.sigmas, opt_calls + res.calls
        options = res.settings.get("options")
        print(f"AYS {n} steps: {[round(s, 4) for s in res.sigmas.tolist()]}", file=sys.stderr)
    opt_seconds = time.perf_counter() - t0

    schedules = {**{h: h for h in HEURISTICS}, "ays": ays_sched}
    rows = ev.evaluate(den, prob, schedules, SOLVERS, STEPS, seeds=args.seeds, samples=args.samples,
                       metrics=METRICS, model="exact")
    draws = KlubDraws.create(prob, args.klub_samples, torch.Generator().manual_seed(12345))
    cache: dict[tuple[float, ...], Any] = {}
    for r in rows:
        key = tuple(r["sigmas"])
        if key not in cache:
            cache[key] = klub(den, prob, torch.tensor(r["sigmas"], dtype=torch.float64), draws=draws)
        r["klub"], r["klub_err"] = cache[key].total, 1.96 * cache[key].total_stderr
    ev.write_results(rows, out, name="video", meta={"args": vars(args), "optimizer_options": options})
    ten = {r["schedule"]: torch.tensor(r["sigmas"]) for r in rows if r["steps"] == 10 and r["solver"] == "euler"}
    plot_schedules(ten, out / "video_schedules.png", title="digits-video (exact denoiser): 10-step schedules")
    clip_grid(den, {k: v for k, v in ten.items()}, "euler", out / "video_samples.png")
    seconds = time.perf_counter() - t_start

    m = ev.machine_description()
    cmd = "python benchmarks/video.py " + " ".join(sys.argv[1:])
    parts = [
        "## Video (moving digits, 4×16×16): schedules × solvers at 5 / 10 steps",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"{seconds / 60:.1f} min in all (AYS optimisation {opt_seconds:.0f} s, {opt_calls:,} denoiser rows).  ",
        f"Exact denoiser. Each cell: mean ± 95 % t-interval over {args.seeds} seeds of {args.samples} clips. "
        f"AYS: `ays.optimize` per step count, method {args.method}, {args.opt_samples} samples, seed 0; "
        f"options `{json.dumps(options)}`. KLUB: {args.klub_samples} shared draws, ± 1.96 s.e.",
    ]
    for metric, title in (("sliced_w2", "sliced W2"), ("energy", "energy distance"),
                          ("motion", "motion error (0 = rigid motion)"), ("klub", "KLUB of the schedule")):
        parts += ["", f"### {title}", "", ev.format_pivot(rows, metric)]
    text = "\n".join(parts) + "\n"
    atomic_write_text(out / "video.md", text)
    atomic_write_text(out / "machine.json", json.dumps(m, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()

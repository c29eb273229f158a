"""Denoiser calls per CPU second of the route (the pipeline's own ``__call__``) against a family's own adapter.

    python benchmarks/route.py [--quick] [--families sd15,sd3,flux] [--batch 8] [--repeats 7] [--threads 1]

On the same tiny random pipeline (tests/tiny_pipelines.py: 16 px images, 8x8 latents, guidance 2),
``D(x, σ)`` of ``--batch`` rows with their own prompts, three ways: the family adapter
(``family_of(pipe).denoiser``, one batched network call), the route with per-row timesteps (one
pipeline step for the batch), and the route serving each level apart (``row_times=False``: one
step per distinct level). Two batches: every row at one level (a solver step), and every row at
its own level (the KLUB's draws). Each figure is the best (minimum) CPU time of this process (all
its threads: the route's suspended calls run in threads of their own) over ``--repeats`` rounds
after a warm-up, the three ways taking turns within each round: on a shared machine the wall time
measures the other processes as much as this one; ``spread`` is the slowest round over the fastest.
At these toy sizes the network is cheap, so the route's fixed cost per step (the pipeline's Python,
thread hand-over) shows in full; on a real model the network dominates both.
Results (CSV, JSON, markdown, by :mod:`_harness`): ``benchmarks/results/route[-quick]/``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.route
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny pipelines' builders


def _interleaved(ways: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, tuple[float, float]]:
    """``{way: (fastest, slowest)}`` CPU seconds (this process, all its threads) over ``repeats`` rounds after a
    warm-up round; each round runs every way once, in turn, so that a load on the machine falls on all alike."""
    for fn in ways.values():
        fn()
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(repeats):
        for way, fn in ways.items():
            start = time.process_time()
            fn()
            times[way].append(time.process_time() - start)
    return {w: (min(t), max(t)) for w, t in times.items()}


def measure(name: str, root: Path, batch: int, repeats: int) -> list[dict]:
    import tiny_pipelines as T
    from ays.integrations.diffusers import family_of, load_pipeline
    from ays.integrations.diffusers.flux import pack, unpack
    from ays.integrations.diffusers.route import PipelineRoute

    pipe = load_pipeline(T.build(name, root))
    fam = family_of(pipe)
    res = (T.RESOLUTION, T.RESOLUTION)
    prompts = ["a cat", "a dog", "a cow", "sky"]
    adapter = fam.denoiser(guidance_scale=2.0, resolution=res)
    cond, _ = fam.encode(prompts, None, res)
    index = torch.arange(batch) % len(prompts)
    rows = {k: v[index] for k, v in cond.items()}
    x = torch.randn(batch, *fam.latent_shape(res), generator=torch.Generator().manual_seed(0))
    flux = name.startswith("flux")
    out = []
    for case, sigma in (("one level", torch.full((batch,), 2.0)), ("row levels", torch.logspace(-1, 1, batch))):
        noisy = x * sigma.view(-1, 1, 1, 1)
        loop = pack(noisy) if flux else noisy  # the route works in the pipeline's loop space
        want = adapter(noisy, sigma, **rows)
        ways: dict[str, Callable[[], torch.Tensor]] = {
            "adapter": lambda noisy=noisy, sigma=sigma: adapter(noisy, sigma, **rows)}
        for way, row_times in (("route", None), ("route, levels apart", False)):
            route = PipelineRoute(pipe, [{"prompt": p} for p in prompts],
                                  {"guidance_scale": 2.0, "height": res[0], "width": res[1]}, max_batch=batch)
            route.row_times = row_times
            d = route.denoiser()
            got = d(loop, sigma, condition=index)
            err = ((unpack(got, 8, 8) if flux else got) - want).norm() / want.norm()
            assert err < 1e-4, f"{name} {way}: the route differs from the adapter by {err:.2e}"
            ways[way] = (lambda d=d, loop=loop, sigma=sigma: d(loop, sigma, condition=index))
        for way, (fast, slow) in _interleaved(ways, repeats).items():
            out.append({"family": name, "batch": case, "way": way, "calls_per_s": batch / fast,
                        "cpu_ms_per_call": 1e3 * fast / batch, "spread": slow / fast})
    base = {r["batch"]: r["calls_per_s"] for r in out if r["way"] == "adapter"}
    for r in out:
        r["vs_adapter"] = r["calls_per_s"] / base[r["batch"]]
    return out


def main(argv: Sequence[str] | None = None) -> str:
    parser = H.arguments(__doc__.splitlines()[0], "route", cells=False)
    parser.add_argument("--families", default="sd15,sd3,flux")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = H.parse(parser, argv, {"repeats": 2, "families": "sd15", "batch": 4})
    setting = (f"torch {torch.__version__}, CPU, threads {torch.get_num_threads()}, tiny random pipelines "
               f"(16 px, guidance 2), batch {args.batch}, best of {args.repeats}")
    print(setting)
    rows = []
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            for r in measure(name, Path(tmp), args.batch, args.repeats):
                print(f"{r['family']:<6} {r['batch']:<10} {r['way']:<20} {r['calls_per_s']:>9.1f} calls per CPU s "
                      f"{r['vs_adapter']:>6.2f}x  spread {r['spread']:.2f}")
                rows.append(r)
    H.write_rows(rows, args.out, "route", cmd=args.command, meta={"setting": setting})
    table = H.markdown_table(
        ["family", "batch", "way", "calls per CPU s", "CPU ms/call", "× adapter", "spread"],
        [[r["family"], r["batch"], r["way"], f"{r['calls_per_s']:.1f}", f"{r['cpu_ms_per_call']:.2f}",
          f"{r['vs_adapter']:.2f}", f"{r['spread']:.2f}"] for r in rows])
    return H.write_markdown(args.out, "route", "## The route against the families' adapters",
                            [setting], [("", table)], args.command)


if __name__ == "__main__":
    main()

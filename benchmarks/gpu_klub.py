"""KLUB throughput and optimisation wall time for a UNet of Stable Diffusion 1.5's size, random weights.

The network is diffusers' ``UNet2DConditionModel`` built from SD 1.5's UNet config
(written out below: nothing is downloaded), with random weights, at 64×64×4 latents
(512×512 images), conditioned on random text embeddings ``[1, 77, 768]``, wrapped as
an EDM denoiser by :func:`ays.integrations.diffusers.denoiser_from_parts` with SD's
noise schedule (scaled-linear betas 0.00085 → 0.012, epsilon prediction). Random
weights run exactly the arithmetic of the trained model, so the timings are those
of a real SD 1.5 optimisation; the schedule found is meaningless.

Measured:

1. KLUB throughput: ``ays.klub`` of a 10-step schedule on ``--samples`` chains (20
   UNet rows per chain), after a warm-up: Monte Carlo samples per second and UNet
   rows per second.
2. Optimisation wall time: ``ays.optimize`` (coordinate method, ``--opt-samples``
   chains, ``--sweeps`` sweeps, 10 steps) and its denoiser rows.
3. Peak GPU memory (``torch.cuda.max_memory_allocated``) and the batch size in use
   (``--batch-size``, or the one ``--max-memory`` gives).

    python benchmarks/gpu_klub.py --device cuda                  # fp16, the full measurement
    python benchmarks/gpu_klub.py --device cuda --quick
    python benchmarks/gpu_klub.py --device cpu --tiny --quick    # smoke check (a tiny UNet, ~1 min)
    torchrun --nproc_per_node 8 benchmarks/gpu_klub.py --device cuda   # 8 GPUs, same total work

Results (CSV, JSON, markdown, by :mod:`_harness`): ``benchmarks/results/gpu_klub[-quick][-tiny]/``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from typing import Any

import torch

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.gpu_klub
    import _harness as H
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H

#: Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5, unet/config.json), written out.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

#: A UNet of the same architecture, small enough for a CPU smoke check.
TINY_UNET: dict[str, Any] = {
    **SD15_UNET,
    "sample_size": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}

#: SD 1.5's noise schedule (its scheduler config, the parts that define the noise levels).
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}


def build(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[Any, Any, tuple[int, ...]]:
    """(denoiser, data, latent shape): the SD-1.5-sized UNet with random weights and random text embeddings."""
    from diffusers import UNet2DConditionModel

    from ays.integrations.diffusers import denoiser_from_parts

    config = TINY_UNET if tiny else SD15_UNET
    torch.manual_seed(seed)  # diffusers initialises weights from the global generator: seed it for repeatability
    unet = UNet2DConditionModel(**config).to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 77, config["cross_attention_dim"], generator=g).to(device=device, dtype=dtype)
    denoiser = denoiser_from_parts(unet, SD15_SCHEDULER, cond={"encoder_hidden_states": emb})
    shape = (config["in_channels"], config["sample_size"], config["sample_size"])

    def data(n: int, generator: torch.Generator) -> torch.Tensor:
        # Latents of unit scale, like SD's scaled VAE latents (the weights are random anyway).
        return torch.randn((n, *shape), generator=generator)

    return denoiser, data, shape


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Sequence[str] | None = None) -> None:
    p = H.arguments(__doc__.splitlines()[0], "gpu_klub", cells=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float16 (default on CUDA), bfloat16, float32 (default on CPU)")
    p.add_argument("--samples", type=int, default=256, help="KLUB chains (20 UNet rows each)")
    p.add_argument("--opt-samples", type=int, default=128, help="chains per KLUB estimate of the optimiser")
    p.add_argument("--sweeps", type=int, default=2, help="optimiser sweeps (first stage)")
    p.add_argument("--batch-size", type=int, default=64, help="UNet rows per call")
    p.add_argument("--max-memory", default=None, help="cap per UNet call instead of --batch-size, e.g. 20GiB")
    p.add_argument("--tiny", action="store_true", help="a tiny UNet of the same architecture (CPU smoke check)")
    args = H.parse(p, argv, {"samples": 32, "opt_samples": 16, "sweeps": 1}, flags=("tiny",))

    import ays
    from ays import device as dv
    from ays import distributed as dd
    from ays.klub import KlubDraws, klub

    with dd.session(), torch.no_grad():  # no_grad: the measured calls never need gradients
        device = dv.parse_device(args.device)
        assert device is not None
        dtype = dv.parse_dtype(args.dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
        if args.tiny:
            args.batch_size = min(args.batch_size, 16)
        denoiser, data, shape = build(args.tiny, device, dtype)
        params = sum(p.numel() for p in denoiser.parameters())
        lo, hi = 0.0292, 14.6  # SD 1.5's noise range (its smallest and largest timestep levels)
        sig = ays.schedules.karras(10, lo, hi)
        batch = dict(batch_size=args.batch_size) if args.max_memory is None else dict(max_memory=args.max_memory)
        place = None if args.max_memory is not None else device  # with a cap, draws stay in host memory

        # 1. KLUB throughput (warm-up first: cuDNN autotuning, allocator).
        warm = KlubDraws.create(dv.place_data(data, place), 4, torch.Generator().manual_seed(1))
        klub(denoiser, None, sig, draws=warm, **batch)
        draws = KlubDraws.create(dv.place_data(data, place), args.samples, torch.Generator().manual_seed(0))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dd.barrier()
        _sync(device)
        start = time.perf_counter()
        est = klub(denoiser, None, sig, draws=draws, **batch)
        _sync(device)
        dd.barrier()
        klub_s = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

        # 2. Optimisation wall time.
        _sync(device)
        start = time.perf_counter()
        res = ays.optimize(denoiser, data, steps=10, sigma_min=lo, sigma_max=hi, samples=args.opt_samples,
                           max_sweeps=args.sweeps, seed=0, **batch, method="coordinate")
        _sync(device)
        opt_s = time.perf_counter() - start

        used = args.batch_size
        if args.max_memory is not None:
            used = dv.batch_size_for(dv.prepare(denoiser), data(1, torch.Generator()), dv.parse_memory(args.max_memory))
        if not dd.is_rank_zero():
            return
        name = "gpu_klub" + ("-quick" if args.quick else "") + ("-tiny" if args.tiny else "")
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        row = {
            "device": str(device), "gpu": gpu, "processes": dd.world_size(), "dtype": str(dtype).removeprefix("torch."),
            "unet": "tiny" if args.tiny else "sd15", "parameters": params, "latent": list(shape),
            "batch_rows": used, "klub_samples": args.samples, "klub_seconds": klub_s,
            "klub_samples_per_s": args.samples / klub_s, "unet_rows_per_s": est.calls / klub_s,
            "opt_samples": args.opt_samples, "opt_sweeps": args.sweeps, "opt_seconds": opt_s,
            "opt_rows": res.calls, "peak_gpu_bytes": peak, "klub": est.total,
            "torch": torch.__version__,
        }
        note = (f"{row['unet']} UNet ({params / 1e6:.0f} M parameters, random weights), latents {tuple(shape)}, "
            f"{row['dtype']}, {gpu}, {row['processes']} process(es), {used} rows per call.")
        table = H.markdown_table(
            ["KLUB samples/s", "UNet rows/s", "KLUB of 10 steps, S chains: s", "optimise (10 steps, S', sweeps): s",
             "optimiser UNet rows", "peak GPU memory"],
            [[f"{row['klub_samples_per_s']:.2f}", f"{row['unet_rows_per_s']:.1f}", f"{klub_s:.1f} (S={args.samples})",
              f"{opt_s:.1f} (S'={args.opt_samples}, {args.sweeps})", f"{res.calls:,}",
              "-" if peak is None else f"{peak / 2**30:.1f} GiB"]])
        H.write_rows([row], args.out, name, cmd=args.command)
        print(H.write_markdown(args.out, name, "## KLUB throughput, UNet of SD 1.5's architecture", [note],
                               [("", table)], args.command))


if __name__ == "__main__":
    main()

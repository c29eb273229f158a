"""Denoiser calls per second, peak memory and minutes per schedule: SD 1.5, SDXL, Flux, Wan 2.1 and SVD sizes.

One command for a GPU machine (under 8 minutes on one H200; every section stops at its own
time limit)::

    python benchmarks/gpu.py --out benchmarks/results/gpu
    python benchmarks/gpu.py --tiny          # the same on the CPU, tiny networks of each family (~30 s)

The networks are diffusers' own classes built from the released models' configs (written
out below, nothing downloaded) with random weights, which run exactly the arithmetic of the
trained models: the timings are theirs, the outputs are meaningless. Each is wrapped as an
ays denoiser ``D(x, sigma)`` by :func:`ays.integrations.diffusers.denoiser_from_parts`, with
random text conditioning of the right shapes. Measured, per family and dtype (float16 and
bfloat16, the network converted with ``.to(dtype)``):

1. **calls per second at the best batch**: batch 1, 2, 4, ... until a CUDA out-of-memory
   error (recorded) or the rate stops improving by 5 %; a *call* is one row (one latent
   image through the network), the unit of ``ays.optimize``'s ``calls`` and of its budget;
2. **peak memory** at that batch (``torch.cuda.max_memory_allocated``; none on the CPU);
3. **minutes per 10-step schedule** of the default method at its default budget,
   estimated as ``BUDGET_CALLS / calls_per_second / 60``;
4. a **check of that estimate**: a real ``ays.optimize`` run (default method, small
   ``samples``) of the SD 1.5-sized network, stopped at its time limit: calls counted over
   wall time, against the rate of (1).

Results: ``<out>/gpu.json`` (rows, the command, the machine), ``gpu.csv``, ``gpu.md``.
A call of a video model is one clip (Wan 2.1 1.3B at 480x832, 81 frames; SVD-XT at 576x1024, 25 frames).
(Over 450 lines because the five released configs and their tiny twins are written out.)
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.gpu
    import _harness as H
    from gpu_klub import SD15_SCHEDULER, SD15_UNET, TINY_UNET
except ImportError:  # pragma: no cover
    from benchmarks import _harness as H
    from benchmarks.gpu_klub import SD15_SCHEDULER, SD15_UNET, TINY_UNET

#: The default method's budget for a 10-step schedule: at most 50,000 denoiser calls (issue 14,
#: "a cost knob users understand": the default budget is at most 50 k calls for 10 steps).
BUDGET_CALLS = 50_000

#: Time limits (seconds) of the sections on a GPU; the whole run stays under 8 minutes on one H200.
LIMITS = {"sd15": 45.0, "sdxl": 60.0, "flux": 120.0, "wan2.1-1.3b": 90.0, "svd-xt": 60.0, "optimize": 45.0}
#: The same for ``--tiny`` on the CPU.
TINY_LIMITS = {"sd15": 2.0, "sdxl": 2.0, "flux": 2.0, "wan2.1-1.3b": 2.0, "svd-xt": 2.0, "optimize": 4.0}
#: Largest batch tried, and the time each batch size is measured for (after one warm-up call).
MAX_BATCH, TINY_MAX_BATCH = 1024, 8
MIN_SECONDS, TINY_MIN_SECONDS = 1.0, 0.05
#: A larger batch must raise the rate by this factor for the search to go on.
IMPROVE = 1.05
DTYPES = (torch.float16, torch.bfloat16)

# ----------------------------------------------------------------------------- configs

#: SDXL's UNet: stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (the values that differ from
#: diffusers' defaults). 2816 = 1280 (pooled text) + 6 time ids x 256.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
#: A UNet of SDXL's architecture (text-time embedding, deeper last stage), small: 8 + 6 x 8 = 56.
TINY_SDXL_UNET: dict[str, Any] = {
    **SDXL_UNET,
    "sample_size": 8,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 2],
    "attention_head_dim": [2, 4],
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 56,
}
#: SDXL's scheduler: scheduler/scheduler_config.json of the same repository.
SDXL_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}

#: Flux's transformer: black-forest-labs/FLUX.1-dev, transformer/config.json. 19 double-stream and 38
#: single-stream blocks, 24 heads x 128 = 3072 hidden; 64 in-channels = 16 latent channels in 2x2 patches.
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
#: A transformer of Flux's architecture, small (the rope axes add up to the head dimension).
TINY_FLUX_TRANSFORMER: dict[str, Any] = {
    **FLUX_TRANSFORMER,
    "in_channels": 16,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 16,
    "axes_dims_rope": [4, 6, 6],
}
#: Flux's scheduler: scheduler/scheduler_config.json of the same repository.
FLUX_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
#: FLUX.1-dev's default guidance (FluxPipeline's guidance_scale), fed to its guidance embedding.
FLUX_GUIDANCE = 3.5

#: Wan 2.1's text-to-video transformer: Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json. 30 blocks of
#: 12 heads x 128 = 1536 hidden, umT5-XXL's 4096-wide tokens; 1x2x2 patches of 16-channel video latents.
WAN_TRANSFORMER: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
#: A transformer of Wan's architecture, small.
TINY_WAN_TRANSFORMER: dict[str, Any] = {
    **WAN_TRANSFORMER, "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 4,
    "text_dim": 16, "freq_dim": 16, "ffn_dim": 24, "num_layers": 1, "rope_max_seq_len": 32,
}
#: Wan 2.1's scheduler: UniPC on flow sigmas, flow_shift 3.0 (480p), scheduler/scheduler_config.json.
WAN_SCHEDULER: dict[str, Any] = {
    "_class_name": "UniPCMultistepScheduler",
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
}

#: Stable Video Diffusion's UNet: stabilityai/stable-video-diffusion-img2vid-xt, unet/config.json (25 frames;
#: 8 in-channels = the noisy latents and the conditioning image's latents; 768 = 3 added time ids x 256).
SVD_UNET: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": 25,
}
#: A UNet of SVD's architecture, small (GroupNorm's 32 groups set the width).
TINY_SVD_UNET: dict[str, Any] = {
    **SVD_UNET, "sample_size": 8, "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"], "block_out_channels": [32, 32],
    "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 24, "layers_per_block": 1,
    "cross_attention_dim": 16, "num_attention_heads": [2, 2], "num_frames": 3,
}
#: SVD's scheduler: EDM-like continuous sigmas 0.002..700, v prediction, timestep 0.25·log(sigma).
SVD_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
}

# ----------------------------------------------------------------------------- the networks


@contextmanager
def _building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: a 12 B-parameter net is not built in float32 on a CPU."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


class Family:
    """One network family: its network (random weights), its scheduler, its conditioning, its latent shape."""

    def __init__(self, name: str, config: Mapping[str, Any], scheduler: Mapping[str, Any],
                 latent: tuple[int, ...], make: Callable[[Mapping[str, Any]], nn.Module],
                 cond: Callable[[Mapping[str, Any], torch.Generator], dict[str, Any]],
                 wrap: Callable[[nn.Module], nn.Module] = lambda net: net) -> None:
        self.name, self.config, self.scheduler, self.latent = name, dict(config), dict(scheduler), latent
        self.make, self.cond, self.wrap = make, cond, wrap

    def build(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
        """``(net, cond)``: the network with random weights on ``device`` in ``dtype``, and random conditioning."""
        torch.manual_seed(seed)  # diffusers initialises weights from the global generator
        with _building(device, dtype):
            net = self.make(self.config).eval()
        return net, self.cond(self.config, torch.Generator().manual_seed(seed))

    def denoiser(self, net: nn.Module, cond: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
        """The ays denoiser of ``net`` in ``dtype`` (converted in place), its conditioning cast to match."""
        from ays.integrations.diffusers import denoiser_from_parts

        net.to(dtype)
        device = next(net.parameters()).device
        return denoiser_from_parts(self.wrap(net), self.scheduler, cond=_cast(cond, device, dtype))


def _cast(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(value, Mapping):
        return {k: _cast(v, device, dtype) for k, v in value.items()}
    return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)


def _unet(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def _flux(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**config)


def _flux_call(net: nn.Module) -> nn.Module:
    from ays.integrations.diffusers.flux import FluxCall

    return FluxCall(net, FLUX_GUIDANCE)  # packs [N, 16, h, w] latents into (h/2)(w/2) tokens, adds ids and guidance


def _wan(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**config)


def _svd(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(**config)


class SVDCall(nn.Module):
    """SVD's UNet as its pipeline calls it: the conditioning image's latents beside each frame's (channels)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.dtype = net.dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *, image_latents: torch.Tensor,
                **cond: Any) -> torch.Tensor:
        x = torch.cat([sample, image_latents.expand(sample.shape[0], *image_latents.shape[1:])], dim=2)
        return self.net(x, timestep, return_dict=False, **cond)[0]


def _wan_cond(config: Mapping[str, Any], g: torch.Generator, tokens: int) -> dict[str, Any]:
    # umT5-XXL's hidden states of a 512-token prompt
    return {"encoder_hidden_states": torch.randn(1, tokens, config["text_dim"], generator=g)}


def _svd_cond(config: Mapping[str, Any], g: torch.Generator, latent: tuple[int, ...]) -> dict[str, Any]:
    # CLIP ViT-H's image embedding, the image's latents on every frame, the added ids (fps - 1, motion, noise aug)
    return {"encoder_hidden_states": torch.randn(1, 1, config["cross_attention_dim"], generator=g),
            "image_latents": torch.randn(1, *latent, generator=g),
            "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]])}


def _sd15_cond(config: Mapping[str, Any], g: torch.Generator) -> dict[str, Any]:
    # CLIP ViT-L/14's last hidden states of a 77-token prompt
    return {"encoder_hidden_states": torch.randn(1, 77, config["cross_attention_dim"], generator=g)}


def _sdxl_cond(config: Mapping[str, Any], g: torch.Generator) -> dict[str, Any]:
    # both CLIP encoders' hidden states side by side; the pooled projection and the size/crop ids
    # (original size, crop corner, target size: StableDiffusionXLPipeline._get_add_time_ids)
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    size = 8 * config["sample_size"]
    return {"encoder_hidden_states": torch.randn(1, 77, config["cross_attention_dim"], generator=g),
            "added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, generator=g),
                                  "time_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)}}


def _flux_cond(config: Mapping[str, Any], g: torch.Generator, tokens: int) -> dict[str, Any]:
    # T5-XXL's hidden states of a 512-token prompt and CLIP's pooled output
    return {"encoder_hidden_states": torch.randn(1, tokens, config["joint_attention_dim"], generator=g),
            "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=g)}


def families(tiny: bool) -> list[Family]:
    """SD 1.5 (64x64x4 latents, 512² images), SDXL (128x128x4, 1024²), Flux (16x128x128 latents = 4096 tokens of
    64 channels, 1024², 512 text tokens); ``tiny``: small networks of the same architectures."""
    sd15, sdxl, flux, wan, svd = (TINY_UNET, TINY_SDXL_UNET, TINY_FLUX_TRANSFORMER, TINY_WAN_TRANSFORMER,
                                  TINY_SVD_UNET) if tiny else (
        SD15_UNET, SDXL_UNET, FLUX_TRANSFORMER, WAN_TRANSFORMER, SVD_UNET)
    side, tokens = (16, 8) if tiny else (128, 512)
    # Wan at 480x832, 81 frames: 21 x 60 x 104 latents (VAE 4x in time, 8x in space), 32,760 tokens of 1x2x2;
    # SVD-XT at 576x1024, 25 frames: 25 x 4 x 72 x 128 latents (the pipeline's [frames, channels, h, w])
    wan_latent = (4, 2, 4, 4) if tiny else (16, 21, 60, 104)
    svd_latent = (3, 4, 8, 8) if tiny else (25, 4, 72, 128)
    return [
        Family("sd15", sd15, SD15_SCHEDULER, (4, sd15["sample_size"], sd15["sample_size"]), _unet, _sd15_cond),
        Family("sdxl", sdxl, SDXL_SCHEDULER, (4, sdxl["sample_size"], sdxl["sample_size"]), _unet, _sdxl_cond),
        Family("flux", flux, FLUX_SCHEDULER, (flux["in_channels"] // 4, side, side), _flux,
               lambda c, g: _flux_cond(c, g, tokens), wrap=_flux_call),
        Family("wan2.1-1.3b", wan, WAN_SCHEDULER, wan_latent, _wan, lambda c, g: _wan_cond(c, g, tokens)),
        Family("svd-xt", svd, SVD_SCHEDULER, svd_latent, _svd, lambda c, g: _svd_cond(c, g, svd_latent),
               wrap=SVDCall),
    ]


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(denoiser: Callable[..., torch.Tensor], shape: Sequence[int], batch: int, device: torch.device,
            dtype: torch.dtype, min_seconds: float, deadline: float) -> dict[str, Any]:
    """Calls per second of ``denoiser`` on batches of ``batch`` rows: one warm-up call, then calls for
    ``min_seconds`` (at least one, and none started after ``deadline``). A CUDA out-of-memory error
    is recorded (``oom``), not raised."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row: dict[str, Any] = {"batch": batch, "oom": False}
    try:
        with torch.inference_mode():
            x = torch.randn(batch, *shape, device=device, dtype=dtype)
            sigma = torch.ones(batch, device=device, dtype=torch.float32)  # a mid-range level; cost is the same
            out = denoiser(x, sigma)
            _sync(device)
            calls, start = 0, time.perf_counter()
            while True:
                out = denoiser(x, sigma)
                _sync(device)
                calls += batch
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds or time.perf_counter() >= deadline:
                    break
            # random weights in float16 may overflow; the timing stands, the flag says so
            row.update(calls=calls, seconds=elapsed, calls_per_s=calls / elapsed,
                       finite=bool(torch.isfinite(out).all()), peak_memory_bytes=_peak(device))
    except torch.cuda.OutOfMemoryError:
        row.update(oom=True, peak_memory_bytes=_peak(device))
    finally:
        x = out = None  # release the batch before the next one
        _free(device)
    return row


def search_batch(denoiser: Callable[..., torch.Tensor], shape: Sequence[int], device: torch.device,
                 dtype: torch.dtype, *, max_batch: int, min_seconds: float, deadline: float
                 ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(best, tried)``: batch 1, 2, 4, ... until out of memory, ``max_batch``, the ``deadline``, or a batch
    whose rate is below ``IMPROVE`` x the best so far; ``best`` is the tried batch of the highest rate."""
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    batch = 1
    while batch <= max_batch and time.perf_counter() < deadline:
        row = measure(denoiser, shape, batch, device, dtype, min_seconds, deadline)
        tried.append(row)
        if row["oom"]:
            break
        improved = best is None or row["calls_per_s"] >= IMPROVE * best["calls_per_s"]
        if best is None or row["calls_per_s"] > best["calls_per_s"]:
            best = row
        if not improved:
            break
        batch *= 2
    return best, tried


def minutes_per_schedule(calls_per_s: float) -> float:
    """Wall minutes of one 10-step schedule at the default budget: ``BUDGET_CALLS / rate / 60``."""
    return BUDGET_CALLS / calls_per_s / 60.0


class _TimeUp(Exception):
    """Raised by :class:`Counted` when its section's time is up."""


class Counted(nn.Module):
    """The denoiser, counting the rows it is called on and stopping the run at ``deadline``."""

    def __init__(self, denoiser: nn.Module, deadline: float) -> None:
        super().__init__()
        self.denoiser, self.deadline, self.calls = denoiser, deadline, 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        if time.perf_counter() >= self.deadline:
            raise _TimeUp
        self.calls += x.shape[0]
        return self.denoiser(x, sigma, **cond)


def optimize_check(denoiser: nn.Module, shape: Sequence[int], device: torch.device, bench: Mapping[str, Any],
                   samples: int, limit: float) -> dict[str, Any]:
    """A real ``ays.optimize`` run (default method, 10 steps, SD 1.5's range, at ``bench``'s best batch) stopped
    after ``limit`` seconds: its calls over its wall time, against ``bench``'s rate."""
    import ays
    from ays.optimize.task import DEFAULT_METHOD
    from ays.validate import AysError

    def data(n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, *shape), generator=generator)  # latents of unit scale, like SD's scaled latents

    batch = max(2, int(bench.get("best_batch", 2)))
    counted = Counted(denoiser, time.perf_counter() + limit)
    out: dict[str, Any] = {"method": DEFAULT_METHOD, "samples": samples, "batch": batch, "completed": True}
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            # 0.0292 .. 14.6: SD 1.5's smallest and largest timestep levels
            ays.optimize(counted, data, steps=10, sigma_min=0.0292, sigma_max=14.6, samples=samples, seed=0,
                         batch_size=batch, device=device)
    except _TimeUp:
        out["completed"] = False
    except AysError as e:  # e.g. a random-weight network's NaN: recorded, the rate so far still stands
        out.update(completed=False, error=str(e))
    _sync(device)
    out.update(calls=counted.calls, seconds=time.perf_counter() - start)
    rate = out["calls"] / out["seconds"] if out["calls"] else None
    out.update(calls_per_s=rate, rate_ratio=rate / bench["calls_per_s"] if rate and "calls_per_s" in bench else None,
               est_minutes_per_schedule=minutes_per_schedule(rate) if rate else None)
    return out


# ----------------------------------------------------------------------------- the run


def run_family(fam: Family, device: torch.device, limit: float, *, max_batch: int, min_seconds: float
               ) -> tuple[list[dict[str, Any]], Any]:
    """The family's rows (one per dtype, the dtypes sharing ``limit``) and its last denoiser (bfloat16)."""
    net, cond = fam.build(device, DTYPES[0])
    params = sum(p.numel() for p in net.parameters())
    rows, den, start = [], None, time.perf_counter()
    for i, dtype in enumerate(DTYPES):
        den = fam.denoiser(net, cond, dtype)
        share = (start + limit - time.perf_counter()) / (len(DTYPES) - i)
        best, tried = search_batch(den, fam.latent, device, dtype, max_batch=max_batch, min_seconds=min_seconds,
                                   deadline=time.perf_counter() + share)
        row: dict[str, Any] = {"family": fam.name, "parameters": params, "latent": list(fam.latent),
                               "dtype": str(dtype).removeprefix("torch."), "tried": tried}
        if best is not None:
            row.update(best_batch=best["batch"], calls_per_s=best["calls_per_s"], finite=best["finite"],
                       peak_memory_bytes=best["peak_memory_bytes"],
                       est_minutes_per_schedule=minutes_per_schedule(best["calls_per_s"]))
        rows.append(row)
        print(f"{fam.name} {row['dtype']}: best batch {row.get('best_batch')}, "
              f"{row.get('calls_per_s', 0):.1f} calls/s", file=sys.stderr)
    return rows, den


def run_all(fams: Sequence[Family], device: torch.device, limits: Mapping[str, float], *, max_batch: int,
            min_seconds: float, samples: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every family's rows, and the check of the estimate on the first (SD 1.5) family's bfloat16 denoiser.

    A section that fails is recorded with its error and the others still run: GPU time is scarce,
    and one family's failure should not cost the others' numbers."""
    rows: list[dict[str, Any]] = []
    check = None
    for fam in fams:
        start, den = time.perf_counter(), None
        try:
            got, den = run_family(fam, device, limits[fam.name], max_batch=max_batch, min_seconds=min_seconds)
        except Exception as e:  # recorded in the results, see above
            got = [{"family": fam.name, "error": f"{type(e).__name__}: {e}"}]
        rows += got
        for r in got:
            r["section_seconds"] = time.perf_counter() - start
        if fam.name == "sd15" and den is not None:
            check = optimize_check(den, fam.latent, device, got[-1], samples, limits["optimize"])
        del den
        _free(device)
    return rows, check


def _cells(r: Mapping[str, Any]) -> list[Any]:
    """One line of the table; a section that failed shows its error."""
    if "error" in r:
        return [r["family"], "", "", "", "", "", "", "", r["error"]]
    rate, peak = r.get("calls_per_s"), r.get("peak_memory_bytes")
    return [r["family"], f"{r['parameters'] / 1e6:,.1f} M", " x ".join(map(str, r["latent"])), r["dtype"],
            r.get("best_batch", "–"), "–" if rate is None else f"{rate:,.1f}",
            "–" if peak is None else f"{peak / 2**30:.1f} GiB",
            "–" if rate is None else f"{r['est_minutes_per_schedule']:,.2f}",
            "" if r.get("finite", True) else "output not finite (random weights)"]


def markdown(rows: Sequence[Mapping[str, Any]], check: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The results table, and the check of the estimate."""
    table = H.markdown_table(["family", "parameters", "latent", "dtype", "best batch", "calls/s", "peak memory",
                              f"est. min per schedule ({BUDGET_CALLS:,} calls)", "note"], [_cells(r) for r in rows])
    sections = [("", table)]
    if check:
        verb = "ran to the end" if check["completed"] else f"stopped: {check.get('error', 'its time limit')}"
        sections.append(("### Check: a real `ays.optimize` run of the SD 1.5-sized network (bfloat16)", (
            f"Method `{check['method']}`, 10 steps, samples={check['samples']}, batch {check['batch']}: "
            f"{check['calls']:,} calls in {check['seconds']:.1f} s ({verb}), "
            f"{check['calls_per_s'] or 0:,.1f} calls/s, {check['rate_ratio'] or 0:.2f} x the benchmarked rate; "
            f"at that rate a schedule takes {check['est_minutes_per_schedule'] or 0:,.2f} min.")))
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    p = H.arguments(__doc__.splitlines()[0], "gpu", cells=False)
    p.add_argument("--tiny", action="store_true", help="tiny networks of the three families, on the CPU")
    p.add_argument("--device", default=None, help="default: cuda if there is one (cpu with --tiny)")
    p.add_argument("--opt-samples", type=int, default=None, help="samples of the check run (default 64; tiny 8)")
    args = H.parse(p, argv, quick={}, flags=("tiny",))
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # not its "cast with to()" note: random weights, cast on purpose
    from ays.device import parse_device
    from ays.validate import AysError

    try:
        device = parse_device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
        assert device is not None
        if device.type == "cpu" and not args.tiny:
            raise AysError("the full-size networks need a GPU (Flux alone is 12 B parameters): use --tiny on the CPU")
    except AysError as e:
        p.exit(2, f"error: {e}\n")
    limits = dict(TINY_LIMITS if args.tiny else LIMITS)
    if args.quick:
        limits = {k: v / 2 for k, v in limits.items()}
    max_batch, min_seconds = (TINY_MAX_BATCH, TINY_MIN_SECONDS) if args.tiny else (MAX_BATCH, MIN_SECONDS)
    samples = args.opt_samples or (8 if args.tiny else 64)

    t0 = time.perf_counter()
    rows, check = run_all(families(args.tiny), device, limits, max_batch=max_batch, min_seconds=min_seconds,
                          samples=samples)
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    meta = {"device": str(device), "gpu": gpu, "gpu_memory_bytes": memory, "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__, "tiny": args.tiny,
            "budget_calls": BUDGET_CALLS, "limits_s": limits, "seconds": seconds, "optimize_check": check}
    flat = [{k: v for k, v in r.items() if k != "tried"} for r in rows]
    H.write_rows(flat, args.out, "gpu", cmd=args.command, meta={**meta, "batches": rows})
    where = f"{gpu} ({memory / 2**30:.0f} GiB)" if gpu else "CPU"
    notes = [f"Device: {where}; networks: {'tiny configs of each family' if args.tiny else 'full size'}, random "
             f"weights; a call is one row (one latent image); est. minutes = {BUDGET_CALLS:,} calls / rate / 60."]
    text = H.write_markdown(args.out, "gpu", "## GPU: denoiser calls per second", notes, markdown(rows, check),
                            args.command, seconds)
    print(text)


if __name__ == "__main__":
    main()

"""Flux: a flow-matching transformer on packed latents, with a guidance embedding and no CFG.

As ``FluxPipeline.__call__`` runs it at ``height x width``: latents ``[C, h, w]`` are packed
into ``(h/2)·(w/2)`` tokens of ``4C`` channels (``_pack_latents``), with image ids
``(0, row, col)`` (``_prepare_latent_image_ids``) and text ids all zero; T5's tokens are
``encoder_hidden_states`` and CLIP's pooled output ``pooled_projections``; the transformer
takes ``timestep = t`` (the pipeline divides the scheduler's ``1000·t`` by 1000). A
guidance-distilled model (FLUX.1-dev, ``guidance_embeds=True``) gets ``guidance_scale`` as
its ``guidance`` input, one network call per step; a model without it (FLUX.1-schnell)
gets none. Neither runs classifier-free guidance. ays keeps latents unpacked
``[N, C, h, w]`` (packing is a permutation, so the EDM arithmetic is the same either way)
and packs around each network call. The scheduler shifts dynamically: ``mu`` from the
token count (:mod:`.flow`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...data import Cond
from .denoiser import NetworkCall, call_network
from .flow import FlowFamily

__all__ = ["Flux", "FluxCall", "pack", "unpack"]

Tensor = torch.Tensor


def pack(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``: 2x2 patches as tokens (``FluxPipeline._pack_latents``)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """The inverse of :func:`pack` for latents of ``h x w`` cells."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


class FluxCall(NetworkCall):
    """The Flux transformer on unpacked latents: pack, ids, guidance, call, unpack."""

    def __init__(self, net: Any, guidance: float | None) -> None:
        super().__init__(net)
        self.guidance = guidance

    def run(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        b, _, h, w = x.shape
        cond = dict(cond)
        guidance = cond.pop("guidance", None)
        if guidance is None and self.guidance is not None:
            guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32)
        rows = torch.arange(h // 2, device=x.device, dtype=x.dtype)
        cols = torch.arange(w // 2, device=x.device, dtype=x.dtype)
        img_ids = torch.stack([torch.zeros(h // 2, w // 2, device=x.device, dtype=x.dtype),
                               rows[:, None].expand(-1, w // 2), cols[None, :].expand(h // 2, -1)], -1)
        txt = cond["encoder_hidden_states"]
        txt_ids = torch.zeros(txt.shape[1], 3, device=x.device, dtype=x.dtype)
        out = call_network(self.net, hidden_states=pack(x), timestep=t, guidance=guidance,
                           img_ids=img_ids.reshape(-1, 3), txt_ids=txt_ids, **cond)
        return unpack(out, h, w)


class Flux(FlowFamily):
    name = "flux"

    transformer_class = "FluxTransformer2DModel"

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.net.config.get("guidance_embeds", False))

    def encode(self, prompts: Sequence[str], negative_prompt: str | None, resolution: tuple[int, int]
               ) -> tuple[Cond, Cond]:
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                        num_images_per_prompt=1)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}, {}

    def network(self, guidance_scale: float) -> nn.Module:
        return FluxCall(self.net, float(guidance_scale) if self.guidance_embeds else None)

    def uses_cfg(self, guidance_scale: float) -> bool:
        return False

    def resolution_multiple(self) -> int:
        return self.vae_scale * 2

    def latent_channels(self) -> int:
        return int(self.net.config.in_channels) // 4

    def default_resolution(self) -> tuple[int, int]:
        size = int(getattr(self.pipe, "default_sample_size", 128)) * self.vae_scale
        return size, size

    def image_tokens(self, resolution: tuple[int, int]) -> int:
        p = self.vae_scale * 2
        return (resolution[0] // p) * (resolution[1] // p)

    def latents_from_output(self, latents: Tensor, resolution: tuple[int, int]) -> Tensor:
        return unpack(latents, resolution[0] // self.vae_scale, resolution[1] // self.vae_scale)

    def default_timesteps_args(self, steps: int) -> dict[str, Any]:
        import numpy as np

        # FluxPipeline passes these sigmas; the scheduler shifts them with mu
        return {"sigmas": np.linspace(1.0, 1 / steps, steps)}

    def info(self, resolution: tuple[int, int], guidance_scale: float, negative_prompt: str | None) -> dict[str, Any]:
        out = super().info(resolution, guidance_scale, negative_prompt)
        out["guidance_embeds"] = self.guidance_embeds
        if not self.guidance_embeds:
            out["guidance_scale"] = None
        return out

"""SD3 / SD3.5: a flow-matching MMDiT with three text encoders (T5 optional), static time shift, CFG.

As ``StableDiffusion3Pipeline.__call__`` runs it: ``encode_prompt`` concatenates the two
CLIP encoders' hidden states (padded to T5's width) with T5's tokens — zeros when the
pipeline was loaded with ``text_encoder_3=None`` — as ``encoder_hidden_states``, and both
CLIP pooled projections as ``pooled_projections``; guidance batches the negative prompt's
(the empty prompt's when none is given). The transformer takes ``timestep = 1000·t``
(the scheduler's ``timesteps``). Flow time, pure-noise level and shift: :mod:`.flow`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...data import Cond
from .denoiser import NetworkCall, call_network
from .flow import FlowFamily

__all__ = ["SD3", "TransformerCall"]

Tensor = torch.Tensor


class TransformerCall(NetworkCall):
    """``transformer(hidden_states=x, timestep=t, encoder_hidden_states=..., pooled_projections=...)``."""

    def run(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        return call_network(self.net, hidden_states=x, timestep=t, **cond)


class SD3(FlowFamily):
    name = "sd3"
    default_max_shift = 1.16

    transformer_class = "SD3Transformer2DModel"

    def encode(self, prompts: Sequence[str], negative_prompt: str | None, resolution: tuple[int, int]
               ) -> tuple[Cond, Cond]:
        with torch.no_grad():
            embeds, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt=None if not negative_prompt else [negative_prompt] * len(prompts))
        return ({"encoder_hidden_states": embeds, "pooled_projections": pooled},
                {"encoder_hidden_states": neg[:1], "pooled_projections": neg_pooled[:1]})

    def network(self, guidance_scale: float) -> nn.Module:
        return TransformerCall(self.net)

    def time_scale(self) -> float:
        return float(self.scheduler.config.get("num_train_timesteps", 1000))

    def resolution_multiple(self) -> int:
        return self.vae_scale * int(self.net.config.patch_size)

    def image_tokens(self, resolution: tuple[int, int]) -> int:
        p = self.vae_scale * int(self.net.config.patch_size)
        return (resolution[0] // p) * (resolution[1] // p)

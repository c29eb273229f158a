"""SDXL: the SD UNet with two text encoders, pooled embeddings and size/crop ids.

As ``StableDiffusionXLPipeline.__call__`` runs it at ``height x width``: the hidden states
of both CLIP encoders side by side are ``encoder_hidden_states``; the second encoder's
pooled projection is ``text_embeds`` and ``time_ids = (H, W, 0, 0, H, W)`` (original size,
crop corner, target size: :meth:`_get_add_time_ids`), both in ``added_cond_kwargs``.
The negative branch is all zeros when no negative prompt is given and the pipeline has
``force_zeros_for_empty_prompt`` (SDXL's default), else the negative prompt's encodings;
its time ids are the same. Noise, prediction and range as SD (:mod:`.sd`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...data import Cond
from .family import has
from .sd import StableDiffusion

__all__ = ["SDXL"]

Tensor = torch.Tensor


class SDXL(StableDiffusion):
    name = "sdxl"

    @classmethod
    def missing(cls, pipe: Any) -> list[str]:
        lack = has(pipe, "unet", "scheduler", "text_encoder_2", "tokenizer_2", "vae")
        if not lack and getattr(pipe.unet.config, "addition_embed_type", None) != "text_time":
            lack.append("UNet with addition_embed_type='text_time'")
        if not lack and not hasattr(pipe, "_get_add_time_ids"):
            lack.append("_get_add_time_ids")
        return lack

    def encode(self, prompts: Sequence[str], negative_prompt: str | None, resolution: tuple[int, int]
               ) -> tuple[Cond, Cond]:
        p = self.pipe
        with torch.no_grad():
            embeds, neg, pooled, neg_pooled = p.encode_prompt(
                prompt=list(prompts), device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt=None if not negative_prompt else [negative_prompt] * len(prompts))
        projection = (int(pooled.shape[-1]) if p.text_encoder_2 is None
                      else int(p.text_encoder_2.config.projection_dim))
        h, w = resolution
        ids = p._get_add_time_ids((h, w), (0, 0), (h, w), dtype=embeds.dtype,
                                  text_encoder_projection_dim=projection).to(self.device)
        rows = len(prompts)
        cond = {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": ids.repeat(rows, 1)}
        uncond = {"encoder_hidden_states": neg[:1], "text_embeds": neg_pooled[:1], "time_ids": ids}
        return cond, uncond

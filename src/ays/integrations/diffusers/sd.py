"""Stable Diffusion 1.x/2.x: a UNet on a discrete VP noise table, epsilon or v prediction, CFG.

As ``StableDiffusionPipeline.__call__`` runs it: the prompt's CLIP hidden states are the
UNet's ``encoder_hidden_states``; guidance ``s > 1`` batches the negative prompt's (the
empty prompt when none is given) with them. The noise levels are the scheduler's
``alphas_cumprod`` table (:class:`ays.noise.DiscreteVP`), the prediction type its
``prediction_type`` (SD 2.x 768 models: ``v_prediction``); the model's own range is the
table's, and sampling starts at its top level (timestep 999).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...data import Cond
from ...denoisers import prediction_name
from ...noise import DiscreteVP, NoiseSchedule
from ...validate import AysError
from .denoiser import NetworkCall, call_network
from .family import Family, is_class, lacking

__all__ = ["StableDiffusion", "UNetCall"]

Tensor = torch.Tensor


class UNetCall(NetworkCall):
    """``unet(x, t, encoder_hidden_states=...)``; SDXL's ``added_cond_kwargs`` from ``text_embeds``, ``time_ids``."""

    def run(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        cond = dict(cond)
        added = {k: cond.pop(k) for k in ("text_embeds", "time_ids") if k in cond}
        if added:
            cond["added_cond_kwargs"] = added
        return call_network(self.net, x, t, **cond)


class StableDiffusion(Family):
    name = "sd"
    net_attr = "unet"

    @classmethod
    def missing(cls, pipe: Any) -> list[str]:
        return lacking(
            pipe, ("unet", "scheduler", "text_encoder", "tokenizer", "vae"), is_class("unet", "UNet2DConditionModel"),
            lambda p: None if hasattr(p.scheduler, "alphas_cumprod") else "scheduler with alphas_cumprod",
            lambda p: None if (kind := getattr(p.unet.config, "addition_embed_type", None)) is None
            else f"plain UNet (this one has addition_embed_type={kind!r})",
        )

    def encode(self, prompts: Sequence[str], negative_prompt: str | None, resolution: tuple[int, int]
               ) -> tuple[Cond, Cond]:
        with torch.no_grad():
            embeds, negative = self.pipe.encode_prompt(
                list(prompts), self.device, 1, True, negative_prompt=[negative_prompt or ""] * len(prompts))
        return {"encoder_hidden_states": embeds}, {"encoder_hidden_states": negative[:1]}

    def network(self, guidance_scale: float) -> nn.Module:
        return UNetCall(self.net)

    def noise(self, resolution: tuple[int, int]) -> NoiseSchedule:
        return DiscreteVP(torch.as_tensor(self.scheduler.alphas_cumprod, dtype=torch.float64))

    def prediction(self) -> str:
        kind = str(self.scheduler.config.get("prediction_type", "epsilon"))
        if kind not in ("epsilon", "v_prediction", "sample"):
            raise AysError(f"{type(self.scheduler).__name__} has prediction_type={kind!r}; ays knows epsilon, "
                           "v_prediction and sample")
        return prediction_name(kind)

    def uses_cfg(self, guidance_scale: float) -> bool:
        # the pipelines' do_classifier_free_guidance: not for guidance-embedding (LCM-style) UNets
        return guidance_scale > 1.0 and getattr(self.net.config, "time_cond_proj_dim", None) is None

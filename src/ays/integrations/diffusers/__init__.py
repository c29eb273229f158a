"""diffusers, both ways: schedules into a pipeline (:mod:`.export`),
and a pipeline into an ays denoiser (:mod:`.adapter`).

diffusers itself is imported only where a pipeline or scheduler is built or loaded
(optional extra ``ays[diffusers]``).
"""

from __future__ import annotations

from .adapter import (
    ConditionedModel,
    denoiser_from_parts,
    denoiser_from_pipeline,
    encode_prompts,
    latents_from_images,
    load_diffusers_job,
    noise_from_scheduler,
    prediction_from_scheduler,
)
from .export import DIFFUSERS_KINDS, diffusers_kind, plain_scheduler, run_diffusers_pipeline, to_diffusers

__all__ = [
    "DIFFUSERS_KINDS",
    "ConditionedModel",
    "denoiser_from_parts",
    "denoiser_from_pipeline",
    "diffusers_kind",
    "encode_prompts",
    "latents_from_images",
    "load_diffusers_job",
    "noise_from_scheduler",
    "plain_scheduler",
    "prediction_from_scheduler",
    "run_diffusers_pipeline",
    "to_diffusers",
]

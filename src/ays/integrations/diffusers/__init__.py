"""diffusers, both ways: schedules into a pipeline, and a pipeline into an ays denoiser with its data.

- :mod:`.export`: keyword arguments for a scheduler or pipeline run (``to_diffusers``), flow times for flow models.
- :mod:`.family`: which model family a pipeline is (:func:`family_of`), and what its network needs;
  one module per family: :mod:`.sd` (SD 1.x/2.x), :mod:`.sdxl`, :mod:`.sd3`, :mod:`.flux`
  (with :mod:`.flow`, what the flow-matching families share); :mod:`.denoiser`, the guided denoiser.
- :mod:`.data`: captioned image folders, prompt lists (the model's own samples, cached), latent files.
- :mod:`.pipeline`: loading a local pipeline folder; :mod:`.job`: the whole ``ays optimize --diffusers`` job.
- :mod:`.route`: any other pipeline (video: SVD, Wan; the newer image families) through its own
  ``__call__`` with a scheduler of ours in its loop (:class:`PipelineRoute`; :mod:`.probe`, :mod:`.routed`).
- :mod:`.adapter`: any network, from its parts (:func:`denoiser_from_parts`).
- :mod:`.grid`: the picture ``ays sample --diffusers`` draws (the schedule beside the default).

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
    noise_from_scheduler,
    prediction_from_scheduler,
    read_latents,
)
from .export import (
    DIFFUSERS_KINDS,
    diffusers_kind,
    fixed_schedule,
    plain_scheduler,
    run_diffusers_pipeline,
    to_diffusers,
)
from .families import FAMILIES, family_of
from .family import Family
from .flow import PURE_NOISE_SIGMA
from .job import DiffusersJob, load_diffusers_job
from .pipeline import load_pipeline, load_scheduler
from .route import PipelineRoute
from .routed import RouteJob

__all__ = [
    "DIFFUSERS_KINDS",
    "FAMILIES",
    "PURE_NOISE_SIGMA",
    "ConditionedModel",
    "DiffusersJob",
    "Family",
    "PipelineRoute",
    "RouteJob",
    "denoiser_from_parts",
    "denoiser_from_pipeline",
    "diffusers_kind",
    "encode_prompts",
    "family_of",
    "fixed_schedule",
    "latents_from_images",
    "load_diffusers_job",
    "load_pipeline",
    "load_scheduler",
    "noise_from_scheduler",
    "plain_scheduler",
    "prediction_from_scheduler",
    "read_latents",
    "run_diffusers_pipeline",
    "to_diffusers",
]

"""Hand ays schedules to the tools people sample with: one module per consumer.

- :mod:`ays.integrations.resolve`: one resolver for tensors, published table names and
  schedule files, and img2img / denoise-strength truncation in each tool's convention.
- :mod:`ays.integrations.diffusers`: keyword arguments for a diffusers scheduler and a
  pipeline run (``export``), and an ays denoiser, noise schedule and latent data set from
  a pipeline (``adapter``; optional extra ``ays[diffusers]``).
- :mod:`ays.integrations.k_diffusion`: ``sigmas`` for ``sample_*``, wrapped models, samplers.
- :mod:`ays.integrations.comfyui`: SIGMAS, and the "AYS Schedule Loader" custom node.
- :mod:`ays.integrations.a1111`: the sigmas A1111/Forge's AYS scheduler builds.
- :mod:`ays.integrations.formats`: ``ays schedule --format``, one line of JSON per consumer.

Nothing here imports diffusers or ComfyUI at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("resolve", "diffusers", "k_diffusion", "comfyui", "comfyui_node", "a1111", "formats")

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

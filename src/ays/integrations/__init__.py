"""Hand ays schedules to the tools people sample with.

- :mod:`ays.integrations.exports`: what diffusers, k-diffusion, ComfyUI and
  A1111/Forge each take (sigmas, timesteps, SIGMAS tensors), img2img truncation,
  and one resolver for tensors, published table names and schedule files.
- :mod:`ays.integrations.comfyui`: installs the "AYS Schedule Loader" custom node.
- :mod:`ays.integrations.diffusers`: builds an ays denoiser, noise schedule and
  latent data set from a diffusers pipeline (optional extra ``ays[diffusers]``).

Nothing here imports diffusers or ComfyUI at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("exports", "comfyui", "comfyui_node", "diffusers")

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

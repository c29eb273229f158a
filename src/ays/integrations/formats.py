"""``ays schedule --format``: one line of JSON in each consumer's convention."""

from __future__ import annotations

import json

from ..validate import check_choice
from .a1111 import to_a1111
from .comfyui import to_comfyui
from .diffusers.export import to_diffusers
from .k_diffusion import to_k_diffusion
from .resolve import ScheduleLike, resolve

__all__ = ["FORMATS", "render"]

FORMATS = ("diffusers", "comfyui", "a1111", "kdiffusion")


def render(schedule: ScheduleLike, fmt: str) -> str:
    """One line of JSON for ``ays schedule --format``: ``diffusers``, ``comfyui``, ``a1111`` or ``kdiffusion``."""
    check_choice(fmt, FORMATS, what="export format")
    res = resolve(schedule)
    if fmt == "diffusers":
        return json.dumps(to_diffusers(res))
    if fmt == "a1111":
        values = to_a1111(res, res.steps)
    elif fmt == "comfyui":
        values = to_comfyui(res)
    else:
        values = to_k_diffusion(res)
    # float32 values as the shortest decimal that reads back to the same float32 (numpy's repr)
    import numpy as np

    return json.dumps([float(str(v)) for v in values.numpy().astype(np.float32)])

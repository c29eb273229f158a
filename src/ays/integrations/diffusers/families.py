"""Which family a loaded pipeline is: each family is tried, most specific first.

The families (:mod:`.sd`, :mod:`.sdxl`, :mod:`.sd3`, :mod:`.flux`) build on
:class:`~.family.Family`; this module sits above them all, so none imports another.
"""

from __future__ import annotations

from typing import Any

from ...validate import AysError
from .family import Family
from .flux import Flux
from .sd import StableDiffusion
from .sd3 import SD3
from .sdxl import SDXL

__all__ = ["FAMILIES", "family_of"]


def _families() -> list[type[Family]]:
    # most specific first: SDXL's UNet also has what SD needs
    return [Flux, SD3, SDXL, StableDiffusion]


#: the family names, in the order :func:`family_of` tries them
FAMILIES = ("flux", "sd3", "sdxl", "sd")


def family_of(pipe: Any) -> Family:
    """The :class:`Family` of a loaded diffusers pipeline, or an :class:`AysError` saying what is missing."""
    reasons = []
    for cls in _families():
        missing = cls.missing(pipe)
        if not missing:
            return cls(pipe)
        reasons.append(f"{cls.name}: no {', '.join(missing)}")
    raise AysError(
        f"{type(pipe).__name__} is not a pipeline family ays knows (SD 1.x/2.x, SDXL, SD3, Flux) — "
        f"{'; '.join(reasons)}; build its denoiser in Python with "
        "ays.integrations.diffusers.denoiser_from_parts(model, scheduler, cond=...)"
    )

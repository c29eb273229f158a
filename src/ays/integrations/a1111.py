"""A1111 / Forge: the sigmas their "Align Your Steps" scheduler builds from a table.

A1111 interpolates the table to ``n`` *points* (down to ``s_n``) and appends 0, so its
last non-zero level is ``sigma_min``, unlike diffusers, k-diffusion and ComfyUI.
"""

from __future__ import annotations

import torch

from .. import schedules
from ..validate import ScheduleError, check_steps
from .resolve import ScheduleLike, resolve

__all__ = ["to_a1111"]

Tensor = torch.Tensor


def to_a1111(schedule: ScheduleLike, steps: int) -> Tensor:
    """The sigmas A1111/Forge's "Align Your Steps" scheduler would build from this table.

    A1111 interpolates the table log-linearly to ``steps`` *points* (down to its last
    level ``s_n``) and appends 0, giving ``steps + 1`` values (float32). Unlike
    diffusers/ComfyUI, the last non-zero level is the table's ``sigma_min``.
    """
    steps = check_steps(steps)
    res = resolve(schedule)
    if res.sampling_form:
        raise ScheduleError("A1111's convention needs the schedule's last level sigma_min > 0, not a trailing 0")
    s = res.sigmas
    if steps == s.numel():  # A1111 keeps the table as it is when it already has `steps` points
        pts = s
    elif steps == 1:
        # np.interp at the single point x=0 of the reversed table: A1111 gives [sigma_min, 0].
        pts = s[-1:]
    else:
        pts = schedules.interpolate(s, steps - 1)
    return torch.cat([pts, pts.new_zeros(1)]).to(torch.float32)

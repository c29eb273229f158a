"""``ays schedule FILE --for DIR``: the diffusers export of a schedule, checked against a pipeline's own scheduler.

The scheduler is read from the folder alone (``scheduler/scheduler_config.json``; no network
is loaded). :func:`~ays.integrations.diffusers.to_diffusers` with ``verify=True`` runs
``set_timesteps`` on a copy with the exported arguments — and the ``mu`` the schedule file
recorded for its resolution, for schedulers that shift dynamically (Flux) — and refuses the
export unless the scheduler then holds exactly the schedule's levels (float32). A scheduler whose
config re-shapes custom schedules (SVD's Karras spacing, LTX's ``shift_terminal``) is checked as
:func:`~ays.integrations.diffusers.plain_scheduler` copies it, and the note says so.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ...validate import AysError
from ..resolve import ScheduleLike, resolve
from .export import plain_scheduler, scheduler_for, solver_of, to_diffusers
from .pipeline import load_scheduler, pipeline_folder

__all__ = ["export_for"]


def export_for(schedule: ScheduleLike, folder: str | os.PathLike[str], steps: int | None = None,
               scheduler_name: str | None = None) -> tuple[dict[str, Any], str]:
    """``(kwargs, note)``: ``pipe(**kwargs)`` runs the schedule on the pipeline in ``folder``; ``note``: what held.

    A folder whose scheduler takes no custom schedule (SD 1.5's PNDM) is checked against the
    scheduler of the schedule's solver instead, or ``scheduler_name``; the note says which.
    """
    res = resolve(schedule, steps)
    info = dict(res.info or {})
    root = pipeline_folder(folder)
    index = json.loads((root / "model_index.json").read_text())
    made_for = info.get("pipeline")
    if made_for is not None and made_for != index.get("_class_name"):
        raise AysError(f"the schedule was made for a {made_for}, but {str(folder)!r} holds a "
                       f"{index.get('_class_name')}")
    scheduler, swapped = scheduler_for(load_scheduler(root), solver_of(schedule), scheduler_name)
    mu = info.get("mu")
    if scheduler.config.get("use_dynamic_shifting", False) and mu is None:
        raise AysError(f"{type(scheduler).__name__} in {str(folder)!r} shifts by image size, and the schedule file "
                       "records no mu: make the schedule with `ays optimize --diffusers` at your --resolution")
    plain = ""
    try:
        kwargs = to_diffusers(res, scheduler, mu=mu, verify=True)
    except AysError as e:
        # a config that re-shapes custom schedules (Karras spacing, LTX's shift_terminal): the plain copy takes them
        try:
            kwargs = to_diffusers(res, plain_scheduler(scheduler), verify=True)
        except AysError:
            raise e from None
        plain, mu = " with pipe.scheduler = plain_scheduler(pipe.scheduler), as run_diffusers_pipeline runs it", None
    levels = len(next(iter(kwargs.values())))
    note = ("" if swapped is None else f"{swapped}; ") + (
            f"checked: {type(scheduler).__name__} of {str(folder)!r} lands on the schedule's {levels} levels"
            + (f" (mu={mu:.6g}, resolution {'x'.join(map(str, info.get('resolution') or []))})" if mu else "")
            + plain)
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in kwargs.items()}, note

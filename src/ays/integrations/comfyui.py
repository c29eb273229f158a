"""ComfyUI: install the "AYS Schedule Loader" custom node, and export SIGMAS.

ComfyUI samples with a ``SIGMAS`` tensor (float32, decreasing, ending in 0); its
``SamplerCustom`` node takes one from any scheduler node. The node shipped here
(:mod:`ays.integrations.comfyui_node`, self-contained: json + torch) reads an
``ays-schedule/1`` file and outputs SIGMAS with ``steps``/``denoise`` inputs
following ComfyUI's ``BasicScheduler``. :func:`write_node` copies it into a
ComfyUI installation; :func:`to_comfyui` gives the same
SIGMAS in Python.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..io import atomic_write_text
from ..validate import AysError
from .resolve import ScheduleLike, as_sigma_or_flow, resolve, truncate

__all__ = ["NODE_PACKAGE", "node_source", "to_comfyui", "write_node"]

#: Folder name of the node package inside ComfyUI's ``custom_nodes``.
NODE_PACKAGE = "ays_schedule_loader"


def node_source() -> str:
    """The text of the custom node module."""
    return (Path(__file__).with_name("comfyui_node.py")).read_text(encoding="utf-8")


def write_node(directory: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Install the node: write ``<custom_nodes>/ays_schedule_loader/__init__.py`` and return its path.

    ``directory`` is ComfyUI's ``custom_nodes`` folder, or the ComfyUI folder that
    contains it; any other folder is refused (a node written there would never load). The
    file is written atomically; ComfyUI picks the node up on its next start (category
    ``sampling/custom_sampling/schedulers``).
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise AysError(f"{str(root)!r} is not a directory (give ComfyUI's custom_nodes folder)")
    if (root / "custom_nodes").is_dir():
        root = root / "custom_nodes"
    elif root.name != "custom_nodes":
        raise AysError(f"{str(root)!r} is neither ComfyUI's custom_nodes folder nor a ComfyUI folder that "
                       "contains one; give the folder ComfyUI loads nodes from")
    package = root / NODE_PACKAGE
    target = package / "__init__.py"
    if target.exists() and not overwrite:
        raise AysError(f"{str(target)!r} exists; pass overwrite=True to replace it")
    try:
        package.mkdir(exist_ok=True)
    except OSError as e:
        raise AysError(f"cannot create {str(package)!r}: {e.strerror or e}") from None
    return atomic_write_text(target, node_source())


def to_comfyui(schedule: ScheduleLike, steps: int | None = None, *, denoise: float = 1.0,
               model_sampling: str = "auto") -> torch.Tensor:
    """A ComfyUI ``SIGMAS`` value (float32, ending in 0), for ``SamplerCustom`` and friends.

    ``denoise < 1`` truncates as ComfyUI's ``BasicScheduler``/``KSampler`` do (see
    :func:`truncate`). ``model_sampling="flow"`` gives the flow times ``t`` that ComfyUI
    uses as SIGMAS for flow-matching models (SD3, Flux, Wan: ``CONST`` sampling,
    ``timestep = 1000·t``); ComfyUI's shift only shapes its own schedules, so no
    shift is involved here. ``"auto"`` (default) takes "flow" for schedules optimised
    with :class:`ays.noise.Flow` (recorded in the schedule file) and "sigma" otherwise.
    """
    res = resolve(schedule)  # interpolated once, inside truncate: the longer denoise schedule comes from the source
    sampling = truncate(res, denoise, steps, convention="comfyui")
    return as_sigma_or_flow(sampling, model_sampling, res).to(torch.float32)

"""ComfyUI custom node "AYS Schedule Loader": an ays-schedule/1 file as a SIGMAS output.

This file is copied into ComfyUI's ``custom_nodes`` folder by
``ays.integrations.comfyui.write_node``; it is self-contained (json, math, torch)
so that ComfyUI can load it whether or not ays is installed there. Use its SIGMAS
output with ``SamplerCustom`` / ``SamplerCustomAdvanced``.

Conventions (the same as ``ays.integrations.comfyui.to_comfyui``):

- ``steps`` = 0 keeps the file's own step count; other values interpolate the
  schedule log-linearly in sigma against a uniform index (NVIDIA's recipe for the
  published Align Your Steps tables).
- The sampling form replaces the last level by 0 (``n`` steps, ``n + 1`` values),
  as ComfyUI's own schedulers end.
- ``denoise`` < 1 follows ComfyUI's ``BasicScheduler``: build the schedule for
  ``int(steps / denoise)`` steps and keep its last ``steps + 1`` values.
- ``model_sampling`` "flow" outputs flow times ``t = sigma / (1 + sigma)``, which
  ComfyUI uses as SIGMAS for flow-matching models (SD3, Flux, Wan); "sigma"
  outputs EDM noise levels (SD 1.x, SDXL, SVD and other eps/v models); "auto"
  reads the file's noise parametrisation and defaults to "sigma".
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

import torch

SCHEDULE_FORMAT = "ays-schedule/1"
MODEL_SAMPLING = ("auto", "sigma", "flow")


def read_schedule(path: str) -> tuple[list[float], dict[str, Any]]:
    """The noise levels of an ays-schedule/1 file and the whole document; ValueError when malformed."""
    path = os.path.expanduser(path.strip().strip('"'))
    if not path:
        raise ValueError("AYS Schedule Loader: no schedule file given")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"AYS Schedule Loader: schedule file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"AYS Schedule Loader: cannot read {path!r}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != SCHEDULE_FORMAT:
        raise ValueError(f"AYS Schedule Loader: {path!r} is not an {SCHEDULE_FORMAT} file")
    sigmas = doc.get("sigmas")
    if not isinstance(sigmas, list) or len(sigmas) < 2:
        raise ValueError(f"AYS Schedule Loader: {path!r} needs a list of at least 2 sigmas")
    try:
        values = [float(v) for v in sigmas]
    except (TypeError, ValueError):
        raise ValueError(f"AYS Schedule Loader: {path!r} has a non-numeric sigma") from None
    body = values[:-1] if values[-1] == 0 else values
    if not all(math.isfinite(v) and v > 0 for v in body):
        raise ValueError(f"AYS Schedule Loader: {path!r} has a non-positive or non-finite sigma")
    if any(b >= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"AYS Schedule Loader: the sigmas of {path!r} are not strictly decreasing")
    return values, doc


def interpolate(sigmas: list[float], steps: int) -> torch.Tensor:
    """``steps + 1`` levels, linear in log sigma against a uniform index; endpoints kept exactly."""
    s = torch.tensor(sigmas, dtype=torch.float64)
    m = s.numel()
    if steps == m - 1:
        return s
    if s[-1] <= 0:
        raise ValueError("AYS Schedule Loader: a schedule that ends in 0 cannot be interpolated to other steps")
    pos = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64) * (m - 1)
    lo = pos.floor().long().clamp(max=m - 2)
    w = pos - lo
    log_s = s.log()
    out = torch.exp((1 - w) * log_s[lo] + w * log_s[lo + 1])
    out[0], out[-1] = s[0], s[-1]
    return out


def _is_flow(doc: dict[str, Any]) -> bool:
    """Whether the schedule was optimised for a flow-matching model (``settings.noise.kind == "Flow"``)."""
    settings = doc.get("settings")
    noise = settings.get("noise") if isinstance(settings, dict) else None
    kind = noise.get("kind") if isinstance(noise, dict) else None
    return isinstance(kind, str) and kind.lower() == "flow"


def schedule_sigmas(sigmas: list[float], steps: int, denoise: float = 1.0, model_sampling: str = "sigma",
                    doc: dict[str, Any] | None = None) -> torch.Tensor:
    """The SIGMAS tensor (float32, ending in 0) for ``steps`` steps (0: the file's own count)."""
    if model_sampling not in MODEL_SAMPLING:
        raise ValueError(f"AYS Schedule Loader: model_sampling must be one of {MODEL_SAMPLING}")
    own = len(sigmas) - 1
    steps = own if steps <= 0 else int(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])  # what ComfyUI's schedulers return: nothing to do
    total = steps if denoise > 0.9999 else int(steps / denoise)
    out = interpolate(sigmas, total).clone()
    out[-1] = 0.0
    out = out[-(steps + 1):]
    if model_sampling == "flow" or (model_sampling == "auto" and _is_flow(doc or {})):
        out = out / (1 + out)
    return out.to(torch.float32)


class AYSScheduleLoader:
    """Load an ays-schedule/1 JSON file and output its SIGMAS."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # ComfyUI's node API names
        return {
            "required": {
                "schedule_path": ("STRING", {"default": "", "multiline": False,
                                             "tooltip": "Path to an ays-schedule/1 .json file"}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 10000,
                                  "tooltip": "0 = the file's own step count; others interpolate log-linearly"}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "model_sampling": (list(MODEL_SAMPLING), {"default": "auto",
                                                          "tooltip": "flow: SD3/Flux/Wan (t = sigma/(1+sigma))"}),
            }
        }

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = "sampling/custom_sampling/schedulers"

    def get_sigmas(self, schedule_path: str, steps: int, denoise: float, model_sampling: str = "auto"
                   ) -> tuple[torch.Tensor]:
        sigmas, doc = read_schedule(schedule_path)
        return (schedule_sigmas(sigmas, steps, denoise, model_sampling, doc),)

    @classmethod
    def IS_CHANGED(cls, schedule_path: str, **_: Any) -> float:  # ComfyUI's node API names
        # Re-run when the file changes on disk.
        try:
            return os.path.getmtime(os.path.expanduser(schedule_path.strip().strip('"')))
        except OSError:
            return float("nan")


NODE_CLASS_MAPPINGS = {"AYSScheduleLoader": AYSScheduleLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"AYSScheduleLoader": "AYS Schedule Loader"}

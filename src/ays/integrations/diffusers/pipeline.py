"""Loading a local diffusers pipeline folder, as users have them, without any download.

A folder written by ``save_pretrained`` (or a downloaded snapshot) has a ``model_index.json``
naming the pipeline class and its components. Optional components that the folder lacks or
lists as ``null`` (SD3 without T5: ``text_encoder_3``, ``tokenizer_3``) are passed as None,
as users load them (``from_pretrained(..., text_encoder_3=None)``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ...validate import AysError

__all__ = ["load_pipeline", "load_scheduler", "pipeline_folder"]


def require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise AysError("this needs diffusers: pip install 'ays[diffusers]'") from None
    return diffusers


def pipeline_folder(path: str | os.PathLike[str]) -> Path:
    """The folder of a saved pipeline, or an :class:`AysError` saying why it is not one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AysError(f"{str(path)!r} is not a local folder: give the path of a saved diffusers pipeline "
                       "(ays loads local files only and never downloads)")
    if not (folder / "model_index.json").is_file():
        raise AysError(f"{str(folder)!r} has no model_index.json: not a diffusers pipeline folder")
    return folder


def _absent_optional(folder: Path, index: dict[str, Any], diffusers: Any) -> dict[str, None]:
    """Components the pipeline class takes that the folder does not hold: passed as None."""
    cls = getattr(diffusers, str(index.get("_class_name")), None)
    if cls is None:
        return {}
    params = inspect.signature(cls.__init__).parameters
    out: dict[str, None] = {}
    for name in params:
        entry = index.get(name)
        listed = isinstance(entry, list) and len(entry) == 2 and entry[0] is not None
        if name != "self" and not listed and not (folder / name).is_dir() and name in (
                "text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor", "safety_checker"):
            out[name] = None
    return out


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No loading bars from diffusers and transformers: ays' own progress bar is the one users read."""
    import diffusers.utils.logging as dlog

    try:
        import transformers.utils.logging as tlog
    except ImportError:  # pragma: no cover - transformers comes with every text-to-image pipeline
        tlog = None
    dlog.disable_progress_bar()
    if tlog is not None:
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.enable_progress_bar()
        if tlog is not None:
            tlog.enable_progress_bar()


def load_pipeline(path: str | os.PathLike[str], *, device: str | torch.device | None = None,
                  torch_dtype: torch.dtype | None = None) -> Any:
    """``DiffusionPipeline.from_pretrained(folder, local_files_only=True)``, optional parts absent as None."""
    diffusers = require_diffusers()
    folder = pipeline_folder(path)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise AysError(f"cannot read {str(folder / 'model_index.json')!r}: {e}") from None
    kwargs: dict[str, Any] = {"local_files_only": True, **_absent_optional(folder, index, diffusers)}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    with _quiet_loading():
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, TypeError) as e:
            raise AysError(f"cannot load the diffusers pipeline from {str(folder)!r}: {e}") from None
    if device is not None:
        pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def load_scheduler(path: str | os.PathLike[str]) -> Any:
    """The scheduler of a pipeline folder (``scheduler/scheduler_config.json``), without loading the networks."""
    diffusers = require_diffusers()
    folder = pipeline_folder(path)
    config = folder / "scheduler" / "scheduler_config.json"
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise AysError(f"cannot read the scheduler of {str(folder)!r}: {e}") from None
    cls = getattr(diffusers, str(cfg.get("_class_name")), None)
    if cls is None:
        raise AysError(f"{str(config)!r} names no known diffusers scheduler ({cfg.get('_class_name')!r})")
    return cls.from_config(cfg)

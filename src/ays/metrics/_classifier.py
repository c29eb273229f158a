"""What the classifier-feature metrics share: training, saving, loading and embedding with a small classifier.

FID (Heusel et al. 2017) measures the Fréchet distance between Gaussians fitted to the
features of a fixed classifier. Each image family of ays (the 8×8 digits,
:mod:`ays.metrics.digits`; 28×28 MNIST, :mod:`ays.metrics.mnist`) has its own small conv
net in Inception's role; this module holds the parts that do not depend on the family:

- :class:`ConvNet`: conv + ReLU (+ 2×2 max-pool) blocks, a ReLU feature layer, 10 logits;
- :func:`fit`: cross-entropy training with Adam, a cosine-decayed learning rate and random
  pixel shifts, every draw (initialisation included) from one generator seeded ``seed``;
- :func:`accuracy`, :func:`embed` (the penultimate layer, in float64), :func:`embed_images`
  (the same after checking the image size);
- :func:`save` (atomic: temp file, fsync, replace) and :func:`load` (``weights_only``,
  checked format, frozen, cached per file).

A classifier module has ``features`` (images → the feature layer) and ``head`` (features →
logits); ``model(x) = head(features(x))``.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ays.metrics._common import as_samples
from ays.validate import AysError, check_steps

__all__ = ["ConvNet", "accuracy", "embed", "embed_images", "fit", "load", "save", "shift"]

Tensor = torch.Tensor
_BATCH = 4096  # images per forward pass when embedding


class ConvNet(nn.Module):
    """``features``: per block ``(c_in, c_out, pool)`` a 3×3 conv, a ReLU and (if ``pool``) a 2×2 max-pool;
    then a flatten, ``Linear(flat, feature_dim)`` and a ReLU. ``head``: ``Linear(feature_dim, 10)``.

    The layers sit in one ``nn.Sequential`` in that order, so the state-dict keys
    (``features.0.weight``, ...) are those of the shipped weight files.
    """

    feature_dim = 64

    def __init__(self, blocks: Sequence[tuple[int, int, bool]], flat: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, pool in blocks:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
        layers += [nn.Flatten(), nn.Linear(flat, self.feature_dim), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(self.feature_dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _init(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default init (Kaiming-uniform, a = sqrt(5)), drawn from ``generator``."""
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=generator)
            fan_in = mod.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(mod.bias, -bound, bound, generator=generator)


def shift(x: Tensor, generator: torch.Generator, pixels: int = 1) -> Tensor:
    """Shift each image ``[n, 1, H, W]`` by ``-pixels..pixels`` in each direction (background -1 fills in)."""
    n, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (pixels, pixels, pixels, pixels), value=-1.0)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [n, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [n, 1, W]
    return pad[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    pixels: int = 1,
) -> nn.Module:
    """Train ``model`` on images ``x`` ``[N, 1, H, W]`` with labels ``y``, deterministically from ``seed``.

    Initialisation, shuffling and augmentation (random shifts of up to ``pixels``) draw only
    from a generator seeded ``seed``. Adam with a cosine-decayed learning rate. Returns the
    model in eval mode.
    """
    epochs = check_steps(epochs, name="epochs")
    batch_size = check_steps(batch_size, name="batch_size")
    g = torch.Generator().manual_seed(int(seed))
    _init(model, g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0], batch_size):
            idx = perm[s : s + batch_size]
            loss = nn.functional.cross_entropy(model(shift(x[idx], g, pixels)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The fraction of images ``x`` that ``model`` assigns their label ``y``."""
    with torch.no_grad():  # an evaluation helper, not library maths: no graph is wanted here
        pred = torch.cat([model(x[s : s + _BATCH]).argmax(dim=1) for s in range(0, x.shape[0], _BATCH)])
    return float((pred == y).double().mean())


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """``model.features`` of images ``x`` (run in float32 on the CPU, in batches), returned in float64."""
    x = x.to("cpu", torch.float32)
    return torch.cat([model.features(x[s : s + _BATCH]) for s in range(0, x.shape[0], _BATCH)]).to(torch.float64)


def embed_images(model: nn.Module, images: Tensor, side: int, family: str) -> Tensor:
    """:func:`embed` of ``family`` images ``[N, 1, side, side]`` or ``[N, side²]``; other sizes are an AysError."""
    x = as_samples(images, name="images")
    if x.shape[1] != side * side:
        raise AysError(
            f"{family} images must have {side * side} pixels ([N, 1, {side}, {side}]), got shape {tuple(images.shape)}"
        )
    return embed(model, x.reshape(-1, 1, side, side))


def save(model: nn.Module, path: str | os.PathLike[str], *, fmt: str, command: str, **meta: Any) -> None:
    """Save the weights with ``format``, ``command`` and ``meta`` (e.g. ``test_accuracy``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": fmt,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "command": command,
        **meta,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shipped data file must be readable by all
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.lru_cache(maxsize=8)
def load(path: str, make: Callable[[], nn.Module], fmt: str, command: str) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier ``make()`` with the weights of ``path`` (eval mode, frozen) and the file's metadata.

    Cached per arguments, so a metric loads its weights once. ``command`` (the script that
    makes the file) is named in the error when the file is missing.
    """
    if not Path(path).is_file():
        raise AysError(f"classifier weights not found at {path}; make them with: {command}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise AysError(f"{path} is not an {fmt} file")
    model = make()
    model.load_state_dict(payload["state_dict"])
    model.eval()
    for p in model.parameters():  # a fixed feature extractor: never build a graph through its weights
        p.requires_grad_(False)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta

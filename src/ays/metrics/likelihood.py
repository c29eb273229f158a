"""Negative log-likelihood of samples under the true density (the paper's toy metric).

``nll(samples, problem) = -(1/N) Σ log p(x_i)`` with ``p`` the known data density
(Sabour et al. 2024, Table 4). For exact samples it estimates the differential entropy
``H(p)``; the standard error is that of a sample mean.

Read it with care, and never alone: the NLL is an expectation under the *samples*, not
under the data, so

- it cannot see dropped modes: samples that sit in half of the modes score as well
  as samples that cover all of them (better, when the kept modes are the heavier ones);
- it rewards samples pulled onto mode centres: samples collapsed onto the means score
  far *below* the entropy, the value a perfect sampler reaches.

Report a distributional distance (:func:`ays.metrics.sliced_w2`,
:func:`ays.metrics.energy_distance`) and :func:`ays.metrics.mode_coverage` beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ays.metrics._common import Estimate, as_samples
from ays.validate import AysError

__all__ = ["nll"]


def _log_prob_fn(problem: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    fn = getattr(problem, "log_prob", None)
    if fn is None and callable(problem):
        fn = problem
    if fn is None or not callable(fn):
        raise AysError(
            f"nll needs a problem with a known density (a .log_prob method) or a log-density callable, "
            f"got {type(problem).__name__}"
        )
    return fn


def nll(samples: torch.Tensor, problem: Any) -> Estimate:
    """Mean negative log-likelihood of ``samples`` under ``problem``'s true density, in nats per sample.

    ``problem`` is anything with ``.log_prob(x) -> [N]`` (e.g. ``ays.problems.get("gmm-8x8")``)
    or a callable returning log-densities. Samples are passed in their own shape, in float64.
    Returns an :class:`Estimate` whose ``stderr`` is ``std(log p(x_i)) / sqrt(N)``.

    See the module docstring: NLL cannot see dropped modes and rewards collapse onto mode
    centres; report it with a distance and mode coverage, never alone.
    """
    fn = _log_prob_fn(problem)
    x = as_samples(samples, name="samples")  # validates; the problem gets the original shape
    lp = fn(x.reshape(samples.shape))
    if not isinstance(lp, torch.Tensor):
        raise AysError(f"log_prob must return a tensor, got {type(lp).__name__}")
    lp = lp.detach().to(torch.float64).reshape(-1)
    if lp.numel() != x.shape[0]:
        raise AysError(f"log_prob returned {lp.numel()} values for {x.shape[0]} samples")
    if not torch.isfinite(lp).all():
        bad = int((~torch.isfinite(lp)).sum())
        raise AysError(f"log_prob returned NaN or inf for {bad} of {lp.numel()} samples")
    n = lp.numel()
    value = -float(lp.mean())
    stderr = float(lp.std(correction=1)) / math.sqrt(n) if n > 1 else math.inf
    return Estimate(value=value, stderr=stderr)

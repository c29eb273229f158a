"""Which metrics a problem gets, and measuring one batch of samples with them.

Metrics (:data:`METRICS`; the defaults depend on the problem, :func:`default_metrics`):

- ``nll``: negative log-likelihood under the true density (the paper's Table 4 metric),
  where the problem has a density; never reported alone (it rewards collapse).
- ``sliced_w2``, ``energy``, ``mmd``: distances to fresh data samples (MMD with the median
  bandwidth of the reference, fixed within a seed so schedules are ranked on one kernel).
- ``modes``: dropped modes, total-variation error of the mass per mode and off-mode mass,
  for mixtures with few modes (:func:`ays.metrics.mode_coverage`).
- ``digits_fd``, ``precision_recall``: the digits' FID (classifier features) and improved
  precision/recall against the training digits.
- ``mnist_fd``: FID's analogue for 28×28 MNIST (classifier features) against its test split.
- ``motion``: for the moving-digits video problem, how far consecutive frames are from a
  rigid integer translation of one another (:func:`ays.problems.video.motion_error`).
- ``klub``: the schedule's KLUB (:func:`ays.klub`), with fresh draws per seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..validate import AysError
from .seeds import seed_generator

__all__ = [
    "METRICS", "SeedContext", "check_metrics", "default_metrics", "measure", "metric_columns", "metric_columns_in",
]

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]

#: Metric name -> the columns it fills (each column also gets ``<column>_err``).
METRICS: dict[str, tuple[str, ...]] = {
    "nll": ("nll",),
    "sliced_w2": ("sliced_w2",),
    "energy": ("energy",),
    "mmd": ("mmd",),
    "modes": ("dropped_modes", "mode_tv", "off_mode"),
    "digits_fd": ("digits_fd",),
    "mnist_fd": ("mnist_fd",),
    "precision_recall": ("precision", "recall"),
    "motion": ("motion",),
    "klub": ("klub",),
}

# Modes are judged only when each expects >= 10 samples (ays.metrics.mode_coverage);
# beyond this many components the count says nothing at usual sample sizes.
_MAX_MODES = 256


# ------------------------------------------------------------- what a problem gets
def _has_density(problem: Any) -> bool:
    return callable(getattr(problem, "log_prob", None)) and not bool(getattr(problem, "has_atoms", False))


def _is_small_mixture(problem: Any) -> bool:
    stds = getattr(problem, "stds", None)
    if not isinstance(stds, torch.Tensor) or not hasattr(problem, "means"):
        return False
    return bool((stds > 0).all()) and 2 <= stds.numel() <= _MAX_MODES


def _is_video(problem: Any) -> bool:
    return str(getattr(problem, "name", "")).startswith("digits-video")


def _is_digits(problem: Any) -> bool:
    return tuple(getattr(problem, "shape", ())) == (1, 8, 8)


def default_metrics(problem: Any) -> list[str]:
    """The metrics that make sense for ``problem``.

    Always ``sliced_w2`` and ``energy``; ``nll`` where a density exists (no point
    masses); ``modes`` for mixtures of 2 to 256 Gaussian modes; ``digits_fd`` and
    ``precision_recall`` for 8×8 digits; ``motion`` for the moving-digits video; ``mnist_fd``
    for 28×28 MNIST.
    """
    out = []
    if _has_density(problem):
        out.append("nll")
    out += ["sliced_w2", "energy"]
    if _is_small_mixture(problem):
        out.append("modes")
    if _is_digits(problem):
        out += ["digits_fd", "precision_recall"]
    if _is_video(problem):
        out.append("motion")
    if tuple(getattr(problem, "shape", ())) == (1, 28, 28):
        out.append("mnist_fd")
    return out


def check_metrics(problem: Any, metrics: Sequence[str]) -> None:
    """Refuse the metrics (of :data:`METRICS`) that ``problem`` cannot be judged by."""
    if "nll" in metrics and not _has_density(problem):
        raise AysError(f"metric 'nll' needs a problem with a density; {getattr(problem, 'name', problem)!r} has none")
    if "modes" in metrics and not _is_small_mixture(problem):
        raise AysError(f"metric 'modes' needs a mixture of at most {_MAX_MODES} Gaussian modes (std > 0)")


def metric_columns(metrics: Sequence[str]) -> list[str]:
    """The result columns (without ``_err``) that ``metrics`` fill, in order."""
    return [c for m in metrics for c in METRICS[m]]


def metric_columns_in(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric columns present in result rows, in the order of :data:`METRICS`."""
    present = {k for r in rows for k in r}
    return [c for c in metric_columns(list(METRICS)) if c in present]


# ------------------------------------------------------------------ measuring
class SeedContext:
    """What the metrics of one seed share: the problem, the reference set, cached statistics."""

    def __init__(self, problem: Any, reference: Tensor, seed: int, denoiser: Denoiser, klub_samples: int,
                 klub_data: Any) -> None:
        self.problem = problem
        self.reference = reference
        self.seed = seed
        self.denoiser = denoiser
        self.klub_samples = klub_samples
        self.klub_data = klub_data
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def measure(name: str, x: Tensor, sigmas: Tensor, ctx: SeedContext) -> dict[str, float]:
    """The columns of metric ``name`` for samples ``x`` drawn with schedule ``sigmas``."""
    from .. import metrics as M

    if name == "nll":
        return {"nll": float(M.nll(x, ctx.problem))}
    if name == "sliced_w2":
        # The default directions (seed 0) are shared by every call: common random numbers.
        return {"sliced_w2": float(M.sliced_w2(x, ctx.reference))}
    if name == "energy":
        return {"energy": float(M.energy_distance(x, ctx.reference))}
    if name == "mmd":
        h = ctx.cached("bandwidth", lambda: M.median_bandwidth(ctx.reference))
        return {"mmd": float(M.mmd(x, ctx.reference, bandwidth=h))}
    if name == "modes":
        cov = M.mode_coverage(x, ctx.problem)
        return {"dropped_modes": float(len(cov.dropped)), "mode_tv": float(cov.tv), "off_mode": float(cov.off_mode)}
    if name == "digits_fd":
        return {"digits_fd": float(M.digits_fd(x))}
    if name == "mnist_fd":
        from ..metrics.mnist import mnist_fd

        return {"mnist_fd": float(mnist_fd(x))}
    if name == "precision_recall":
        from ..problems import digits_data

        ref = ctx.cached("digits_train", lambda: digits_data("train"))
        pr = M.precision_recall(x, ref)
        return {"precision": float(pr.precision), "recall": float(pr.recall)}
    if name == "motion":
        from ..problems.video import motion_error

        return {"motion": float(motion_error(x))}
    if name == "klub":
        from ..klub import klub

        est = klub(ctx.denoiser, ctx.klub_data, sigmas, samples=ctx.klub_samples,
                   generator=seed_generator(ctx.seed, "klub"))
        return {"klub": float(est.total)}
    raise AysError(f"unknown metric {name!r}")  # pragma: no cover - names are checked first

"""Summaries over seeds: a mean with a Student-t confidence interval.

The seeds of an evaluation are independent replicates, so each cell is reported as

    mean ± t_{(1+level)/2, k-1} · sd / sqrt(k),     k = number of seeds,

with ``sd`` the sample standard deviation (divisor ``k - 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..validate import AysError

__all__ = ["confidence_interval"]


def _t_quantile(level: float, dof: int) -> float:
    from scipy.stats import t as student_t  # scipy only when an interval is computed

    return float(student_t.ppf(0.5 + level / 2.0, dof))


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """``(mean, half width)`` of a Student-t interval over independent replicates.

    The half width is ``t_{(1+level)/2, k-1} · sd / sqrt(k)``; with one value it is
    ``None`` (no interval can be given from one replicate).
    """
    vals = [float(v) for v in values]
    if not vals:
        raise AysError("confidence_interval needs at least one value")
    if not all(math.isfinite(v) for v in vals):
        raise AysError(f"confidence_interval got a non-finite value: {vals}")
    if not 0.0 < level < 1.0:
        raise AysError(f"level must be in (0, 1), got {level!r}")
    k = len(vals)
    mean = math.fsum(vals) / k
    if k < 2:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (k - 1))
    return mean, _t_quantile(level, k - 1) * sd / math.sqrt(k)

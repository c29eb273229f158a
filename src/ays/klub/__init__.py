"""The KLUB of a schedule: the paper's estimator, the solver-aware bound, the table of a fine grid.

- :mod:`ays.klub.estimator`: the importance-sampled Monte Carlo KLUB of a schedule (AYS Eq. 8,
  Alg. 2) and its Gaussian closed form; its public names are re-exported here.
- :mod:`ays.klub.proposal`: the paper's importance proposal on an interval, its closed-form mass
  and inverse-CDF sampler (re-exported here).
- :mod:`ays.klub.solver`: the same bound for the drift a solver actually uses (the 2M solvers'
  extrapolated denoiser).
- :mod:`ays.klub.table`: the KLUB of every interval of a fine grid from one set of nested chains,
  the input of the global optimiser (:mod:`ays.optimize.dp`).

``ays.klub(denoiser, data, sigmas)`` calls :func:`ays.klub.estimator.klub`.
"""

from __future__ import annotations

from .._callable import make_callable
from . import estimator, proposal, solver, table
from .estimator import *  # noqa: F403  (its __all__ is re-exported whole, below)
from .estimator import klub
from .proposal import proposal_cdf, proposal_density, proposal_normalizer, proposal_sample

__all__ = [
    *estimator.__all__,
    "proposal",
    "proposal_cdf",
    "proposal_density",
    "proposal_normalizer",
    "proposal_sample",
    "solver",
    "table",
]

make_callable(__name__, klub)

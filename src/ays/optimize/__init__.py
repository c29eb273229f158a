"""Schedule optimisation: ``ays.optimize`` and the schedule file.

``optimize(denoiser, data, steps=10, ...)`` returns an :class:`OptimizeResult`;
``METHODS`` maps method names to implementations (``"coordinate"``: the paper's
Alg. 1, in :mod:`ays.optimize.coordinate`); :func:`load_schedule` reads back a
file written by :meth:`OptimizeResult.save`.
"""

from __future__ import annotations

from .._callable import make_callable
from . import ays, dmn, dp, gits, ld3, oss  # noqa: F401  (register "ays", "dmn", "dp", "gits", "ld3", "oss")
from . import coordinate as _coordinate  # noqa: F401  (registers the method)
from .api import optimize
from .result import FORMAT, OptimizeResult, load_schedule
from .task import DEFAULT_METHOD, DEFAULT_SOLVER, METHODS, register

__all__ = ["DEFAULT_METHOD", "DEFAULT_SOLVER", "FORMAT", "METHODS", "OptimizeResult", "load_schedule", "optimize",
           "register"]


make_callable(__name__, optimize)

"""Schedule optimisation: ``ays.optimize`` and the schedule file.

``optimize(denoiser, data, steps=10, ...)`` returns an :class:`OptimizeResult`;
``METHODS`` maps method names to implementations (``"coordinate"``: the paper's
Alg. 1, in :mod:`ays.optimize.coordinate`); :func:`load_schedule` reads back a
file written by :meth:`OptimizeResult.save`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from . import coordinate as _coordinate  # noqa: F401  (registers the method)
from . import dmn, dp, gits, ld3, oss, select  # noqa: F401  (register "dmn", "dp", "gits", "ays")  # noqa: F401  (register "ld3", "oss")
from .api import optimize, solver_names
from .result import FORMAT, OptimizeResult, load_schedule
from .task import DEFAULT_METHOD, DEFAULT_SOLVER, METHODS, register

__all__ = ["DEFAULT_METHOD", "DEFAULT_SOLVER", "FORMAT", "METHODS", "OptimizeResult", "load_schedule", "optimize",
           "register", "solver_names"]


# ``ays.optimize`` is both this package and its main function: once the package
# is imported, Python binds it to the name ``ays.optimize``, so it forwards calls.
class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> OptimizeResult:
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

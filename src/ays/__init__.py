"""ays: find the best sampling schedule for a diffusion model ("Align Your Steps").

The top level is light: submodules and entry points load on first use, so that
``import ays`` does not pull in every optional piece.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "schedules": ("ays.schedules", None),
    "noise": ("ays.noise", None),
    "validate": ("ays.validate", None),
    "denoisers": ("ays.denoisers", None),
    "problems": ("ays.problems", None),
    "solvers": ("ays.solvers", None),
    "analysis": ("ays.analysis", None),
    "metrics": ("ays.metrics", None),
    "train": ("ays.train", None),
    "AysError": ("ays.validate", "AysError"),
    # ays.sample, ays.klub and ays.optimize are callable modules: the name means the same
    # whether the submodule has been imported or not (``ays.klub(...)`` and ``ays.klub.KlubDraws``).
    "sample": ("ays.sample", None),
    "klub": ("ays.klub", None),
    "optimize": ("ays.optimize", None),
    "OptimizeResult": ("ays.optimize", "OptimizeResult"),
    "load_schedule": ("ays.optimize", "load_schedule"),
    "evaluate": ("ays.evaluate", None),  # a callable module: ays.evaluate(...) and ays.evaluate.write_results
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ays' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

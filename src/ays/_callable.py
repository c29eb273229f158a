"""Modules that are also their main function: ``ays.sample``, ``ays.klub``, ``ays.optimize``, ``ays.evaluate``.

Importing ``ays.sample`` binds the *module* to the name ``ays.sample``, shadowing the
function of the same name that ``ays/__init__`` exports lazily. Giving the module a
``__call__`` keeps ``ays.sample(...)`` and ``ays.sample.something`` both working,
whichever was reached first.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_callable"]


def make_callable(module_name: str, fn: Callable[..., Any]) -> None:
    """Let the module ``module_name`` be called as ``fn``: ``module(*args, **kwargs) == fn(*args, **kwargs)``."""

    def __call__(self: types.ModuleType, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    module = sys.modules[module_name]
    module.__class__ = type("CallableModule", (types.ModuleType,), {"__call__": __call__, "__doc__": fn.__doc__})

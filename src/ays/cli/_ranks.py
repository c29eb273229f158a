"""The commands under ``torchrun``: each joins the process group, and rank 0 alone speaks.

A command decorated with :func:`in_session` runs inside :func:`ays.distributed.session`:
launched by ``torchrun`` its ranks share what the library shares (KLUB draws, the
optimisers' rows, :func:`ays.sample`'s rows) and every rank holds the same result; files
are written by rank 0 (:mod:`ays.io`), and :func:`say` prints on rank 0 only, so the
output reads as one process's. Work that cannot be shared runs on rank 0 while the other
ranks wait (:func:`ays.distributed.from_rank_zero`); docs/cli.md lists which.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def in_session(timeout: datetime.timedelta | None = None) -> Callable[[F], F]:
    """Decorator (under ``@click.command()`` and its options): the command runs inside ``session(timeout=...)``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from ..distributed import session

            with session(timeout=timeout):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def say(message: str = "", err: bool = False) -> None:
    """``click.echo`` on rank 0 only (every rank holds the same result; one of them reports it)."""
    from ..distributed import is_rank_zero

    if is_rank_zero():
        click.echo(message, err=err)

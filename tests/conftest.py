"""Shared test set-up.

``make test`` runs two pytest workers on two cores, so every test runs torch on
one intra-op thread: more threads only fight each other (and, on a loaded
machine, spin-wait many times longer than the arithmetic of these small models).
The cache of the diffusers route's model samples lives in the session's temporary
folder, never in the user's home.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AYS_CACHE", str(tmp_path_factory.getbasetemp() / "ays-cache"))

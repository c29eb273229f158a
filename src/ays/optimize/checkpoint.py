"""Optimiser checkpoints: the full state after each sweep, written atomically.

A checkpoint is JSON (``"format": "ays-checkpoint/1"``) holding the settings
that decide the result and the method's state (current schedule, stage, sweep,
search radii, early-stopping bookkeeping, history, denoiser calls). Random draws
are not stored: every method derives them from ``(seed, stage, ...)`` with
:func:`ays.klub.seed_for`, so a resumed run re-creates them and ends with
exactly the schedule an uninterrupted run gives. Floats are written with
``repr`` and so read back bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..distributed import from_rank_zero
from ..io import atomic_write_json, read_json
from ..validate import AysError

__all__ = ["FORMAT", "load_state", "save_state", "settings_difference"]

FORMAT = "ays-checkpoint/1"


def settings_difference(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts (nested ``options`` included)."""
    out: list[str] = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_difference(a, b, prefix=f"{prefix}{key}.")
        elif a != b:
            show_a = "a list" if isinstance(a, list) else repr(a)
            show_b = "a list" if isinstance(b, list) else repr(b)
            if isinstance(a, list) and isinstance(b, list):
                show_a, show_b = "one list", "another"
            out.append(f"{prefix}{key}: checkpoint has {show_a}, this run has {show_b}")
    return out


def _checksum(settings: Any, state: Any) -> str:
    """SHA-256 of the canonical JSON of settings and state (floats by ``repr``: stable through a round trip)."""
    text = json.dumps({"settings": settings, "state": state}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def save_state(path: Path, settings: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``{"format", "settings", "state", "sha256"}`` to ``path`` atomically.

    The checksum lets a resumed run tell a damaged file from a good one (the write
    itself is atomic, so damage comes from elsewhere: a disk, a copy, an editor).
    """
    try:
        digest = _checksum(settings, state)
    except (TypeError, ValueError) as e:
        raise AysError(f"cannot write checkpoint {str(path)!r}: {e}") from None
    doc = {"format": FORMAT, "settings": settings, "state": state, "sha256": digest}
    # Rank 0 writes; under torch.distributed a failed write is raised on every rank, none left waiting.
    from_rank_zero(atomic_write_json, path, doc, indent=None)


def load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state, or ``None`` when ``path`` does not exist (a fresh start).

    Refuses, naming the difference, a checkpoint made with other settings, and
    refuses a file that is not an ays checkpoint. Under ``torch.distributed``
    rank 0 reads it and every rank gets the same state (or the same error).
    """
    return from_rank_zero(_load_state, Path(path), settings)


def _load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    doc = read_json(path, what="checkpoint")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise AysError(f"{str(path)!r} is not an ays optimiser checkpoint (format {found!r}, expected {FORMAT!r})")
    saved = doc.get("settings")
    state = doc.get("state")
    if not isinstance(saved, dict) or not isinstance(state, dict):
        raise AysError(f"checkpoint {str(path)!r} is damaged: no settings or state")
    digest = doc.get("sha256")
    try:
        intact = digest is None or digest == _checksum(saved, state)
    except (TypeError, ValueError):  # NaN or inf, which JSON readers accept but ays never writes
        intact = False
    if not intact:
        raise AysError(f"checkpoint {str(path)!r} is damaged: its content does not match its checksum")
    diff = settings_difference(saved, settings)
    if diff:
        raise AysError(f"checkpoint {str(path)!r} was made with other settings; " + "; ".join(diff))
    return state

"""Atomic file writing: a file ays writes is either the old one or the complete new one.

Every file the library writes (schedules, optimiser checkpoints, benchmark
tables) goes through here. The recipe is the POSIX one: write a temporary file
in the destination's own directory (so that the rename stays on one file
system), flush and ``fsync`` it, ``os.replace`` it over the destination (atomic
on POSIX and Windows), then ``fsync`` the directory so the rename itself
survives a power cut. A crash or a ``SIGKILL`` at any moment leaves either the
previous file or the new one, never a truncated mix, and no stray temporary
file once the writer gets to clean up.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .distributed import is_rank_zero
from .validate import AysError

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_writable", "read_json"]

PathLike = str | os.PathLike[str]


def _fsync_dir(directory: Path) -> None:
    # Directories cannot be opened for fsync on every platform (Windows); the
    # rename is still atomic there, only its durability is weaker.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _mode_for(target: Path) -> int:
    """Permissions for the new file: the old file's, else what ``open()`` would give (0666 & ~umask).

    ``mkstemp`` creates its file private (0600); left so, a schedule written by ays
    could not be read by the other users a plain ``open()`` would have let read it.
    """
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        pass
    mask = None
    try:
        with open("/proc/self/status") as f:  # Linux: read the umask without changing it
            for line in f:
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; return the path.

    Raises :class:`~ays.validate.AysError` when the directory does not exist or
    cannot be written, naming the path. Under ``torch.distributed`` only rank 0
    writes (every rank holds the same result); the others return the path.
    """
    target = Path(path)
    if not is_rank_zero():
        return target
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        why = "is not a directory" if directory.exists() else "does not exist"
        raise AysError(f"cannot write {str(target)!r}: directory {str(directory)!r} {why}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise AysError(f"cannot write {str(target)!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _mode_for(target))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise AysError(f"cannot write {str(target)!r}: {e.strerror or e}") from None
        raise
    _fsync_dir(directory)
    return target


def check_writable(path: PathLike, *, what: str = "output file", create_parents: bool = False) -> Path:
    """Refuse, before any work, an output path that could not be written; return it.

    Refused: an existing directory, a parent folder that is missing (unless
    ``create_parents``: the writer will make it, so the nearest existing ancestor
    counts), a parent that is a file, or a folder this process cannot write in.
    """
    target = Path(path)
    if target.is_dir():
        raise AysError(f"{what} {str(target)!r} is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    anchor = parent
    if create_parents:
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
    if not anchor.exists():
        raise AysError(f"cannot write {what} {str(target)!r}: directory {str(parent)!r} does not exist")
    if not anchor.is_dir():
        raise AysError(f"cannot write {what} {str(target)!r}: {str(anchor)!r} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise AysError(f"cannot write {what} {str(target)!r}: directory {str(anchor)!r} is not writable")
    return target


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically. Floats keep their exact value (``repr``).

    NaN and infinity are refused (they are not JSON), with the path named.
    """
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError as e:
        raise AysError(f"cannot write {str(path)!r}: {e}") from None
    return atomic_write_text(path, text + "\n")


def read_json(path: PathLike, *, what: str = "file") -> Any:
    """Read a JSON file; a missing, unreadable or malformed file is an AysError naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AysError(f"{what} {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AysError(f"cannot read {what} {str(p)!r}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AysError(f"{what} {str(p)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise AysError(f"{what} {str(p)!r} is not a valid file: JSON nested too deeply") from None

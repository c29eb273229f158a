"""Seeds derived from ``(seed, keys)``: how every draw in ays is named and re-created.

Common random numbers (the same noise for every schedule compared), resumed runs that
re-create exactly the draws an uninterrupted one used, ranks that draw the same noise
without talking, and the Brownian tree's nodes all rest on one function: a stable hash of
the seed and a tuple of keys naming the purpose (stage, sweep, chunk, node).
"""

from __future__ import annotations

import hashlib

__all__ = ["seed_for"]


def seed_for(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys``: the same on every platform and run.

    The optimiser draws its randomness for (stage, sweep, purpose) from here, so a
    resumed run re-creates exactly the draws an uninterrupted one used.
    """
    text = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)

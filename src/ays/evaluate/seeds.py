"""Common random numbers: every random draw of an evaluation is seeded from ``(seed, key)``.

Within one replicate ``seed`` every schedule and every solver starts from the same
Gaussian noise (key ``"noise"``), stochastic solvers draw from a generator seeded
identically (``"solver"``), and the metrics compare against the same fresh reference
samples (``"reference"``). Differences between schedules are then far more precise
than each estimate alone, and the seeds are independent replicates of the whole
comparison. Seeds are derived by hashing, so they are the same on every platform and run.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "seed_generator"]


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (the same on every platform and run)."""
    text = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def seed_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` ``(seed, *keys)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))

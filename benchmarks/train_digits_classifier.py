"""Train the small digits classifier behind ``ays.metrics.digits_fd`` and save its weights.

    python benchmarks/train_digits_classifier.py [--out PATH] [--seed 0] [--epochs 20]

The default output is the shipped ``src/ays/weights/digits_classifier.pt``. Training is
deterministic (one generator seeded ``--seed``; one CPU thread), takes a few seconds on an
idle CPU, and stores the test accuracy in the file, which the tests check.
The command line is :mod:`_classifier`'s.
"""

from __future__ import annotations

try:  # run as a script (benchmarks/ on sys.path) or imported as a module of benchmarks
    import _classifier
except ImportError:  # pragma: no cover
    from benchmarks import _classifier

if __name__ == "__main__":
    _classifier.main("digits", __doc__.splitlines()[0])

"""Train the small MNIST classifier behind ``ays.metrics.mnist.mnist_fd`` and save its weights.

    python benchmarks/train_mnist_classifier.py [--out PATH] [--seed 0] [--epochs 12]

The default output is the shipped ``src/ays/weights/mnist_classifier.pt``. Training is
deterministic (one generator seeded ``--seed``; one CPU thread; deterministic algorithms)
and stores the train and test accuracy in the file, which the tests recompute.
The command line is :mod:`_classifier`'s.
"""

from __future__ import annotations

try:  # run as a script (benchmarks/ on sys.path) or imported as a module of benchmarks
    import _classifier
except ImportError:  # pragma: no cover
    from benchmarks import _classifier

if __name__ == "__main__":
    _classifier.main("mnist", __doc__.splitlines()[0])

"""Train the small digits classifier behind ``ays.metrics.digits_fd`` and save its weights.

    python benchmarks/train_digits_classifier.py [--out PATH] [--seed 0] [--epochs 20]

The default output is the shipped ``src/ays/weights/digits_classifier.pt``. Training is
deterministic (one generator seeded ``--seed``; one CPU thread), takes a few seconds on an
idle CPU, and stores the test accuracy in the file, which the tests check.
"""

from __future__ import annotations

import argparse
import time

import torch

from ays.metrics.digits import (
    DIGITS_CLASSIFIER_PATH,
    digits_accuracy,
    save_digits_classifier,
    train_digits_classifier,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DIGITS_CLASSIFIER_PATH))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread: reproducible float reductions, and no oversubscription
    start = time.perf_counter()
    model = train_digits_classifier(seed=args.seed, epochs=args.epochs)
    seconds = time.perf_counter() - start
    train_acc = digits_accuracy(model, "train")
    test_acc = digits_accuracy(model, "test")
    save_digits_classifier(
        model, args.out, seed=args.seed, epochs=args.epochs, train_accuracy=train_acc, test_accuracy=test_acc
    )
    print(f"trained in {seconds:.1f} s: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} -> {args.out}")


if __name__ == "__main__":
    main()

"""Train the small MNIST classifier behind ``ays.metrics.mnist.mnist_fd`` and save its weights.

    python benchmarks/train_mnist_classifier.py [--out PATH] [--seed 0] [--epochs 12]

The default output is the shipped ``src/ays/weights/mnist_classifier.pt``. Training is
deterministic (one generator seeded ``--seed``; one CPU thread; deterministic algorithms)
and stores the train and test accuracy in the file, which the tests recompute.
"""

from __future__ import annotations

import argparse
import time

import torch

from ays.metrics.mnist import MNIST_CLASSIFIER_PATH, mnist_accuracy, save_mnist_classifier, train_mnist_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(MNIST_CLASSIFIER_PATH))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread: reproducible float reductions, and no oversubscription
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model = train_mnist_classifier(seed=args.seed, epochs=args.epochs)
    seconds = time.perf_counter() - start
    train_acc = mnist_accuracy(model, "train")
    test_acc = mnist_accuracy(model, "test")
    save_mnist_classifier(
        model, args.out, seed=args.seed, epochs=args.epochs, train_accuracy=train_acc, test_accuracy=test_acc
    )
    print(f"trained in {seconds:.1f} s: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} -> {args.out}")


if __name__ == "__main__":
    main()

"""The one command line behind the scripts that train a metric's feature classifier and ship its weights.

``train_digits_classifier.py`` (``digits_fd``) and ``train_mnist_classifier.py`` (``mnist_fd``)
differ only in the functions they call: train, score on a split, save with the accuracies.
Training runs on one thread (reproducible float reductions, no oversubscription).
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence

import torch

#: name -> (module, default epochs, deterministic algorithms): the module has ``<NAME>_CLASSIFIER_PATH``,
#: ``train_<name>_classifier``, ``<name>_accuracy`` and ``save_<name>_classifier``.
CLASSIFIERS = {"digits": ("ays.metrics.digits", 20, False), "mnist": ("ays.metrics.mnist", 12, True)}


def main(name: str, description: str, argv: Sequence[str] | None = None) -> None:
    """Parse ``--out/--seed/--epochs``, train ``name``'s classifier, score it on "train" and "test", save it."""
    module, epochs, deterministic = CLASSIFIERS[name]
    m = importlib.import_module(module)
    default_out = getattr(m, f"{name.upper()}_CLASSIFIER_PATH")
    train, accuracy = getattr(m, f"train_{name}_classifier"), getattr(m, f"{name}_accuracy")
    save = getattr(m, f"save_{name}_classifier")
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=epochs)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model = train(seed=args.seed, epochs=args.epochs)
    seconds = time.perf_counter() - start
    train_acc, test_acc = accuracy(model, "train"), accuracy(model, "test")
    save(model, args.out, seed=args.seed, epochs=args.epochs, train_accuracy=train_acc, test_accuracy=test_acc)
    print(f"trained in {seconds:.1f} s: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} -> {args.out}")

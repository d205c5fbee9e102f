"""Writes a tiny CIFAR-100 folder in the real ``cifar-100-python`` pickle layout, for tests.

python tests/fake_cifar100.py OUT_DIR [--train-per-class 6] [--test-per-class 2]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from ask_the_expert.method.cifar100_classes import FINE_CLASSES, FINE_TO_COARSE, SUPERCLASSES


def _split(per_class: int, rng: np.random.Generator, name: str) -> dict:
    fine = np.repeat(np.arange(len(FINE_CLASSES)), per_class)
    rng.shuffle(fine)
    # Each class gets its own mean colour so that tiny models can learn something in a few steps.
    base = rng.integers(0, 256, size=(len(FINE_CLASSES), 3))
    noise = rng.normal(0, 40, size=(len(fine), 3, 32, 32))
    images = np.clip(base[fine][:, :, None, None] + noise, 0, 255).astype(np.uint8).reshape(len(fine), 3072)
    return {
        "filenames": [f"fake_{name}_{i:05d}.png" for i in range(len(fine))],
        "batch_label": f"fake {name} batch",
        "fine_labels": fine.tolist(),
        "coarse_labels": FINE_TO_COARSE[fine].tolist(),
        "data": images,
    }


def write_fake_cifar100(root: str | Path, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{meta,train,test}`` (test omitted when ``test_per_class`` is 0)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {
        "meta": {"fine_label_names": list(FINE_CLASSES), "coarse_label_names": list(SUPERCLASSES)},
        "train": _split(train_per_class, rng, "train"),
    }
    if test_per_class:
        files["test"] = _split(test_per_class, rng, "test")
    for name, content in files.items():
        with (folder / name).open("wb") as f:
            pickle.dump(content, f, protocol=2)
    return Path(root)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train-per-class", type=int, default=6)
    parser.add_argument("--test-per-class", type=int, default=2)
    args = parser.parse_args()
    print(write_fake_cifar100(args.out_dir, args.train_per_class, args.test_per_class))

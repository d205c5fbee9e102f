"""Seeded, stratified train/val split of the CIFAR-100 training file (plain numpy)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ask_the_expert.utils.errors import SuiteError


@dataclass(frozen=True)
class DataSplit:
    """Which train/val split a run uses: the images held out as val and the seed that chose them. Two runs see the
    same val images only when both numbers agree."""

    val_size: int
    split_seed: int

    @classmethod
    def of(cls, source: Any) -> DataSplit | None:
        """The split of anything with ``val_size`` and ``split_seed`` (data options, a datamodule, or the mapping of
        a checkpoint's ``datamodule_hyper_parameters``); None when it has none."""
        get = source.get if isinstance(source, Mapping) else lambda name: getattr(source, name, None)
        val_size, split_seed = get("val_size"), get("split_seed")
        if val_size is None or split_seed is None:
            return None
        return cls(int(val_size), int(split_seed))

    def __str__(self) -> str:
        return f"--data.val_size {self.val_size} --data.split_seed {self.split_seed}"


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train_indices, val_indices) with each class's share of val proportional to its count.

    Only numpy's seeded PCG64 stream decides the split, so every machine and every DDP rank gets the same one.
    Rounding remainders go to the classes with the largest fractional quota (lowest class id on ties).
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if not 0 < val_size < len(labels) or val_size > int((counts - 1).sum()):
        raise SuiteError(
            f"val_size={val_size} does not fit the {len(labels)} training images of {len(classes)} classes: "
            f"val must be at least 1 and leave every class at least one training image (at most "
            f"{int((counts - 1).sum())} here). Lower --data.val_size."
        )
    exact = val_size * counts / len(labels)
    quota = np.floor(exact).astype(np.int64)
    order = np.lexsort((classes, -(exact - quota)))
    quota[order[: val_size - quota.sum()]] += 1
    quota = np.minimum(quota, counts - 1)
    # Clipping (only for tiny classes) may leave a few val slots: give them to the classes with room.
    shortfall = val_size - quota.sum()
    room = np.flatnonzero(quota < counts - 1)
    quota[room[:shortfall]] += 1

    rng = np.random.default_rng(seed)
    permuted = rng.permutation(len(labels))
    by_class = permuted[np.argsort(labels[permuted], kind="stable")]
    rank_in_class = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    is_val = rank_in_class < np.repeat(quota, counts)
    return np.sort(by_class[~is_val]), np.sort(by_class[is_val])

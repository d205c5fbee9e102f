"""Learn confusion-aware expert subsets from the generalist's confusion on val (docs/design.md §7).

    ate-partition --generalist G.ckpt --num_experts 4 --data.data_dir DIR --out runs/partition.json

The generalist's calibrated val probabilities give a soft confusion matrix; ask_the_expert.method.confusion_partition
groups the classes into ``num_experts`` balanced groups of whole classes so that what G confuses stays inside one
expert. The file (read by ``--partition FILE`` of ate-train-experts and ``--model.partition`` of an expert) also records
the routing hit rate (the chosen expert owns the true class) at each k for the learned groups and for the superclass
groups with the same number of experts: on all of val (in-sample for the learned groups) and, to be honest about that,
with groups (and the temperature) learned on one half of val and measured on the other half, where the gain over the
superclass groups gets a paired bootstrap interval (``held_out_gain_over_superclass``). The gains at the k values asked
form one family: their verdicts use Holm's correction (ask_the_expert.method.findings, the suite's bootstrap engine).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ask_the_expert.method.cifar100_classes import NUM_CLASSES, NUM_SUPERCLASSES
from ask_the_expert.method.confusion_partition import (
    confusion_partition,
    routing_hit_mask,
    soft_confusion,
    within_group_mass,
)
from ask_the_expert.method.findings import Bootstrap, Comparison, verdicts
from ask_the_expert.method.router import check_k_values, fit_temperature, softmax, top_k
from ask_the_expert.method.stats import resample_counts
from ask_the_expert.method.subsets import class_to_expert, save_partition, superclass_partition
from ask_the_expert.utils.cli import run_cli
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from datamodules.cifar100 import labelled_images
from lightning_modules.checkpoints import load_module, read_checkpoint


def hit_masks(probs: np.ndarray, labels: np.ndarray, subsets: list[list[int]], k_values: Sequence[int]) -> dict:
    """Per k, the per-sample routing hits (ask_the_expert.method.confusion_partition.routing_hit_mask) of the Top-k
    choice under ``subsets``."""
    owner = class_to_expert(subsets, probs.shape[1])
    return {str(k): routing_hit_mask(*top_k(probs, k), labels, owner, len(subsets)) for k in k_values}


def hit_rates(probs: np.ndarray, labels: np.ndarray, subsets: list[list[int]], k_values: Sequence[int]) -> dict:
    """Routing hit rate per k of the Top-k expert choice under ``subsets``."""
    return {k: float(hit.mean()) for k, hit in hit_masks(probs, labels, subsets, k_values).items()}


def held_out_gain(learned: dict, superclass: dict, seed: int) -> dict:
    """Per k, learned minus superclass hit rate on the same held-out images with its paired bootstrap interval (the
    same resamples for both partitions) and verdict, Holm-corrected over the k values (one family)."""
    boot = Bootstrap(resample_counts(len(next(iter(learned.values()))), 1000, seed))
    comparisons = [
        Comparison("routing hit rate", f"learned above superclass groups, k={k}", "learned", "superclass",
                   boot.mean(hit.astype(np.float64)), boot.mean(superclass[k].astype(np.float64)), member=f"k{k}")
        for k, hit in learned.items()
    ]  # fmt: skip
    keys = ("difference", "low", "high", "level", "p_value", "p_adjusted", "verdict")
    return {k: {key: getattr(f, key) for key in keys} for k, f in zip(learned, verdicts(comparisons), strict=True)}


def learn_partition(
    *,
    generalist: str,
    num_experts: int,
    out: str,
    data: DataOptions = DataOptions(),
    k: list[int] | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Learn balanced class groups from the generalist's confusion on val and write them as a partition file.

    Returns the file's meta (groups, hit rates).

    Args:
        generalist: checkpoint of the edge generalist.
        num_experts: the number of groups (experts); the superclass comparison needs it to divide 20.
        out: the partition file to write (JSON).
        data: the CIFAR-100 folder and split settings, as in training (val is where the confusion is measured).
        k: Top-k values of the hit rates (default [1, 3]).
        seed: seed of the grouping and of the half split of val.
        force: replace an existing file.
    """
    k_values = check_k_values(k or [1, 3], NUM_CLASSES)
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or not 2 <= num_experts <= NUM_CLASSES:
        raise SuiteError(f"--num_experts must be an integer in 2..{NUM_CLASSES}, got {num_experts!r}.")
    if Path(out).exists() and not force:
        raise SuiteError(f"{out} already exists; choose another --out or pass --force true to replace it.")
    info = read_checkpoint(generalist, "--generalist", ("generalist",))
    images = labelled_images(data, "val")
    model = load_module(info)
    with torch.inference_mode():
        x = images.tensors()
        logits = torch.cat([model(x[i : i + data.batch_size]) for i in range(0, len(x), data.batch_size)]).numpy()
    labels = images.labels
    temperature = fit_temperature(logits, labels)
    probs = softmax(logits.astype(np.float64), temperature)
    learned = confusion_partition(soft_confusion(probs, labels), num_experts, seed)
    meta: dict[str, Any] = {
        "method": "confusion",
        "generalist": str(info.path),
        "temperature": temperature,
        "num_val_images": len(labels),
        "seed": seed,
        "within_group_mass": within_group_mass(soft_confusion(probs, labels), learned),
        "hit_rates": {"learned (in-sample: all of val)": hit_rates(probs, labels, learned, k_values)},
    }
    halves = np.random.default_rng(seed).permutation(len(labels)) % 2
    a, b = halves == 0, halves == 1
    # Half A fits the temperature and learns the groups; half B, which chose nothing, measures them.
    t_a = fit_temperature(logits[a], labels[a])
    probs_a, probs_b = softmax(logits[a].astype(np.float64), t_a), softmax(logits[b].astype(np.float64), t_a)
    on_a = confusion_partition(soft_confusion(probs_a, labels[a], probs.shape[1]), num_experts, seed)
    learned_b = hit_masks(probs_b, labels[b], on_a, k_values)
    meta["hit_rates"]["learned on half A, measured on half B"] = {k: float(h.mean()) for k, h in learned_b.items()}
    meta["temperature_half_a"] = t_a
    if NUM_SUPERCLASSES % num_experts == 0:
        groups = superclass_partition(NUM_SUPERCLASSES // num_experts)
        meta["hit_rates"]["superclass groups (all of val)"] = hit_rates(probs, labels, groups, k_values)
        superclass_b = hit_masks(probs_b, labels[b], groups, k_values)
        meta["hit_rates"]["superclass groups (half B)"] = {k: float(h.mean()) for k, h in superclass_b.items()}
        meta["held_out_gain_over_superclass"] = held_out_gain(learned_b, superclass_b, seed)
    save_partition(out, learned, meta)
    for name, rates in meta["hit_rates"].items():
        print(f"hit rate, {name}: " + ", ".join(f"k={kk} {100 * v:.1f} %" for kk, v in rates.items()), flush=True)
    if "held_out_gain_over_superclass" in meta:
        gains = meta["held_out_gain_over_superclass"].items()
        print(
            "held-out gain over superclass groups (half B, paired bootstrap, Holm-corrected over the k values): "
            + ", ".join(f"k={k} {100 * g['difference']:+.2f} pts [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}] "
                        f"({100 * g['level']:.1f} %) {g['verdict']}" for k, g in gains),
            flush=True,
        )  # fmt: skip
    print(f"Wrote {out} ({num_experts} groups of {sorted({len(s) for s in learned})} classes)", flush=True)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and learn the partition; 0 on success, 2 on bad input (message printed, no traceback)."""
    return run_cli(learn_partition, argv, "ate-partition")


if __name__ == "__main__":
    sys.exit(main())

"""Routed-in sets R_j (docs/design.md §4): images outside S_j that the generalist's Top-k routing sends to expert j.

The generalist runs once per (checkpoint content, split) in eval mode on the whole file with the eval transform; its
logits are cached on disk as ``<cache_dir>/generalist-logits-<sha256[:16]>-<split>.npy`` and shared by every expert, k,
temperature and partition (a new checkpoint has a new hash, hence a new cache file). A ``.json`` beside each cache
file records its sha256: a cache that is damaged or changed (even one of the right shape) is computed again, never
trusted. The expert choice is ask_the_expert.method.policies.route_batch at the evaluation's temperature: fitted on
the generalist's val logits, as the evaluation fits it, so R_j holds the images the evaluation will route to
expert j.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ask_the_expert.method.routed_batch import route_batch
from ask_the_expert.method.router import FIT, check_temperature, fit_temperature
from ask_the_expert.method.subsets import class_to_expert
from ask_the_expert.utils.atomic import atomic_file, write_json_atomic
from ask_the_expert.utils.hashing import file_sha256
from datamodules.cifar100_files import CifarSplit
from lightning_modules.checkpoints import CheckpointInfo, load_module


def cache_path(cache_dir: str | Path, sha256: str, split: str) -> Path:
    return Path(cache_dir) / f"generalist-logits-{sha256[:16]}-{split}.npy"


@torch.no_grad()
def generalist_logits(
    generalist: CheckpointInfo,
    images: Dataset,
    cache_dir: str | Path,
    split: str,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The generalist's float32 logits (N, C) for every item of ``images`` (a whole data file, in order).

    Loaded from the cache when present for this checkpoint's content and split; computed and cached otherwise.
    """
    path = cache_path(cache_dir, file_sha256(generalist.path), split)
    cached = read_cache(path, len(images))
    if cached is not None:
        return cached
    # On a forked RNG: iterating a DataLoader draws from the global generator, and whether the cache existed must not
    # change the random streams of the expert run that asked for it (a rerun would otherwise train differently).
    with torch.random.fork_rng(devices=[]):
        model = load_module(generalist).to(device)
        loader = DataLoader(images, batch_size=batch_size)
        logits = np.concatenate([model(batch[0].to(device)).float().cpu().numpy() for batch in loader])
    logits = logits.astype(np.float32)
    # Written then renamed, so a killed job never leaves a truncated cache; the record of its content comes last.
    with atomic_file(path) as tmp, tmp.open("wb") as f:
        np.save(f, logits)
    write_json_atomic(path.with_suffix(".json"), {"sha256": file_sha256(path), "shape": list(logits.shape)})
    return logits


def read_cache(path: Path, length: int) -> np.ndarray | None:
    """The cached logits at ``path`` when they are exactly what was written (the sha256 its record holds) for
    ``length`` images; None when absent, damaged or changed (they are then computed again)."""
    try:
        record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if file_sha256(path) != record["sha256"]:
            return None
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cached if cached.ndim == 2 and len(cached) == length else None


def routing_temperature(
    spec: float | str, train_logits: np.ndarray | None, train_file: CifarSplit | None, val_indices: np.ndarray
) -> float:
    """The temperature R_j is routed at: a given number, or (``fit``) fitted on the generalist's val logits."""
    value = check_temperature(spec)
    if value != FIT:
        return float(value)
    labels = train_file.fine_labels[val_indices].astype(np.int64)
    return fit_temperature(train_logits[val_indices], labels)


def routed_in_mask(
    logits: np.ndarray,
    temperature: float,
    labels: np.ndarray,
    subsets: Sequence[Sequence[int]],
    expert_index: int,
    k: int,
) -> np.ndarray:
    """bool per image: the Top-k routing at ``temperature`` picks ``expert_index`` and the true class is outside
    its subset."""
    owner = class_to_expert(subsets, num_classes=sum(len(s) for s in subsets))
    chosen = route_batch(logits, temperature, [k], ["max_prob"], owner, len(subsets)).experts[k]
    return (chosen == expert_index) & ~np.isin(labels, np.asarray(subsets[expert_index]))

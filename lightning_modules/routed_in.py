"""Routed-in sets R_j (DESIGN section 4): images outside S_j that the generalist's Top-k routing sends to expert j.

The generalist runs once per (checkpoint content, k, split) in eval mode on the whole file with the eval transform;
its Top-k classes and probabilities (temperature 1) are cached on disk as
``<cache_dir>/routed_in-<sha256[:16]>-k<k>-<split>.npz`` and shared by every expert and every partition. A new
checkpoint has a new hash, hence a new cache file. The expert choice itself is core.routing.select_experts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import SuiteError
from core.routing import select_experts, softmax, top_k
from core.subsets import class_to_expert


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, sha256: str, k: int, split: str) -> Path:
    return Path(cache_dir) / f"routed_in-{sha256[:16]}-k{k}-{split}.npz"


def _require_file(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if not path.is_file():
        raise SuiteError(
            f"The generalist checkpoint '{path}' does not exist. Train the generalist with "
            "`python train.py fit -c configs/generalist.yaml` and pass its checkpoint."
        )
    return path


def load_generalist(checkpoint: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The generalist of a GeneralistModule checkpoint, in eval mode; SuiteError if it is missing or no generalist."""
    from lightning_modules.generalist import GeneralistModule  # late: this module is imported by expert.py

    path = _require_file(checkpoint)
    hparams = torch.load(path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    if hparams.get("role") != "generalist":
        raise SuiteError(
            f"'{path}' is not a generalist checkpoint (its role is {hparams.get('role')!r}); routed-in sets come "
            "from the edge generalist. Pass a checkpoint trained with configs/generalist.yaml."
        )
    return GeneralistModule.load_from_checkpoint(path, map_location="cpu").eval().to(device)


@torch.no_grad()
def generalist_top_k(
    checkpoint: str | Path,
    images: Dataset,
    k: int,
    cache_dir: str | Path,
    split: str,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The generalist's Top-k (classes, probabilities) for every item of ``images`` (a whole file, in order).

    Loaded from the cache when present for this checkpoint's content, k and split; computed and cached otherwise.
    """
    _require_file(checkpoint)
    path = cache_path(cache_dir, file_sha256(checkpoint), k, split)
    if path.is_file():
        with np.load(path) as cached:
            if len(cached["classes"]) == len(images):
                return cached["classes"], cached["probs"]
    model = load_generalist(checkpoint, device)
    classes, probs = [], []
    for batch in DataLoader(images, batch_size=batch_size, shuffle=False):
        logits = model(batch[0].to(device)).float().cpu().numpy()
        c, p = top_k(softmax(logits), k)
        classes.append(c)
        probs.append(p)
    result = np.concatenate(classes), np.concatenate(probs)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a killed job never leaves a truncated cache that later runs would trust.
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, classes=result[0], probs=result[1])
    os.replace(tmp, path)
    return result


def routed_in_mask(
    topk_classes: np.ndarray,
    topk_probs: np.ndarray,
    labels: np.ndarray,
    subsets: Sequence[Sequence[int]],
    expert_index: int,
) -> np.ndarray:
    """bool per image: the Top-k routing picks ``expert_index`` and the true class is outside its subset."""
    owner = class_to_expert(subsets, num_classes=sum(len(s) for s in subsets))
    chosen = select_experts(topk_classes, topk_probs, owner, len(subsets))
    return (chosen == expert_index) & ~np.isin(labels, np.asarray(subsets[expert_index]))

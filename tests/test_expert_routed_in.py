"""Routed-in sets R_j: equal to a brute-force routing loop; cached per checkpoint content and k."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import SuiteError
from core.subsets import parse_partition_spec
from datamodules import ExpertDataModule
from datamodules.cifar100 import CifarImages
from lightning_modules import routed_in
from lightning_modules.routed_in import cache_path, file_sha256, generalist_top_k, routed_in_mask

K = 3


@pytest.fixture(scope="module")
def images(fake_cifar_root: Path) -> CifarImages:
    dm = ExpertDataModule(data_dir=str(fake_cifar_root), check_integrity=False, val_size=100, num_workers=0)
    dm.setup("fit")
    return CifarImages(dm.train_file, np.arange(len(dm.train_file)), dm.eval_transform)


def brute_force(checkpoint: Path, images: CifarImages, subsets: list[list[int]], j: int) -> np.ndarray:
    """DESIGN section 3 spelled out: per image, score_e = sum of G's Top-k probabilities of classes in S_e."""
    model = routed_in.load_generalist(checkpoint)
    owner = {c: e for e, subset in enumerate(subsets) for c in subset}
    mask = []
    with torch.no_grad():
        for i in range(len(images)):
            image, label, _ = images[i]
            probs = torch.softmax(model(image[None]).double(), -1)[0].tolist()
            top = sorted(range(len(probs)), key=lambda c: -probs[c])[:K]
            scores = {}
            for c in top:
                scores[owner[c]] = scores.get(owner[c], 0.0) + probs[c]
            best = max(scores.values())
            tied = [e for e, s in scores.items() if s == best]
            chosen = owner[top[0]] if owner[top[0]] in tied else min(tied)
            mask.append(chosen == j and int(label) not in subsets[j])
    return np.array(mask)


def test_routed_in_matches_brute_force(tiny_generalist_run, images: CifarImages, tmp_path: Path) -> None:
    subsets = parse_partition_spec(5)
    classes, probs = generalist_top_k(tiny_generalist_run.last_ckpt, images, K, tmp_path, "train")
    labels = images.labels.numpy()
    masks = [routed_in_mask(classes, probs, labels, subsets, j) for j in range(len(subsets))]
    for j in (0, 2):
        assert np.array_equal(masks[j], brute_force(tiny_generalist_run.last_ckpt, images, subsets, j))
    # An image is routed to one expert only: the R_j are disjoint.
    assert (np.sum(masks, axis=0) <= 1).all()
    assert any(m.any() for m in masks)


def test_cache_is_reused_and_invalidated_by_a_new_checkpoint(
    tiny_generalist_run, images: CifarImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "g.ckpt"
    shutil.copy(tiny_generalist_run.last_ckpt, ckpt)
    calls = []
    real = routed_in.load_generalist
    monkeypatch.setattr(routed_in, "load_generalist", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    first = generalist_top_k(ckpt, images, K, tmp_path / "cache", "train")
    path = cache_path(tmp_path / "cache", file_sha256(ckpt), K, "train")
    assert path.is_file() and len(calls) == 1
    again = generalist_top_k(ckpt, images, K, tmp_path / "cache", "train")
    assert len(calls) == 1 and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    generalist_top_k(ckpt, images, 2, tmp_path / "cache", "train")  # another k is another cache entry
    assert len(calls) == 2
    # New weights under the same file name: a new hash, a new cache file, a fresh computation.
    checkpoint = torch.load(ckpt, weights_only=False)
    head = next(k for k in checkpoint["state_dict"] if k.endswith("head.bias"))
    checkpoint["state_dict"][head] = checkpoint["state_dict"][head] + torch.linspace(-5, 5, 100)
    torch.save(checkpoint, ckpt)
    changed = generalist_top_k(ckpt, images, K, tmp_path / "cache", "train")
    assert len(calls) == 3 and cache_path(tmp_path / "cache", file_sha256(ckpt), K, "train") != path
    assert not np.array_equal(changed[0], first[0])


def test_routed_in_needs_a_generalist_checkpoint(tmp_path: Path, images: CifarImages) -> None:
    with pytest.raises(SuiteError, match="does not exist"):
        generalist_top_k(tmp_path / "missing.ckpt", images, K, tmp_path, "train")

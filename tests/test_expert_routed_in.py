"""Routed-in sets R_j: equal to a brute-force routing loop at the evaluation's temperature; logits cached per
checkpoint content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ask_the_expert.method.router import fit_temperature
from ask_the_expert.method.subsets import parse_partition_spec
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.hashing import file_sha256
from datamodules.cifar100 import CifarImages
from datamodules.expert_data import ExpertDataModule
from lightning_modules import routed_in
from lightning_modules.checkpoints import load_module, read_checkpoint
from lightning_modules.routed_in import cache_path, generalist_logits, routed_in_mask, routing_temperature

K = 3


@pytest.fixture(scope="module")
def datamodule(fake_cifar_root: Path) -> ExpertDataModule:
    dm = ExpertDataModule(data_dir=str(fake_cifar_root), check_integrity=False, val_size=100, num_workers=0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def images(datamodule: ExpertDataModule) -> CifarImages:
    return CifarImages(datamodule.train_file, np.arange(len(datamodule.train_file)), datamodule.eval_transform)


def brute_force(checkpoint: Path, images: CifarImages, subsets: list[list[int]], j: int, t: float) -> np.ndarray:
    """docs/design.md §3 spelled out: per image, score_e = sum of G's Top-k probabilities (at T) of classes in S_e."""
    model = load_module(read_checkpoint(checkpoint, "test", ("generalist",)))
    owner = {c: e for e, subset in enumerate(subsets) for c in subset}
    mask = []
    with torch.no_grad():
        for i in range(len(images)):
            image, label, _ = images[i]
            probs = torch.softmax(model(image[None]).double() / t, -1)[0].tolist()
            top = sorted(range(len(probs)), key=lambda c: -probs[c])[:K]
            scores = {}
            for c in top:
                scores[owner[c]] = scores.get(owner[c], 0.0) + probs[c]
            best = max(scores.values())
            tied = [e for e, s in scores.items() if s == best]
            chosen = owner[top[0]] if owner[top[0]] in tied else min(tied)
            mask.append(chosen == j and int(label) not in subsets[j])
    return np.array(mask)


def test_routed_in_matches_brute_force_at_the_fitted_temperature(
    tiny_generalist_run, datamodule: ExpertDataModule, images: CifarImages, tmp_path: Path
) -> None:
    subsets = parse_partition_spec(5)
    info = read_checkpoint(tiny_generalist_run.last_ckpt, "test", ("generalist",))
    logits = generalist_logits(info, images, tmp_path, "train")
    t = routing_temperature("fit", logits, datamodule.train_file, datamodule.val_indices)
    labels = datamodule.train_file.fine_labels
    assert t == pytest.approx(fit_temperature(logits[datamodule.val_indices], labels[datamodule.val_indices]))
    assert routing_temperature(2.5, None, None, datamodule.val_indices) == 2.5
    masks = [routed_in_mask(logits, t, labels, subsets, j, K) for j in range(len(subsets))]
    for j in (0, 2):
        assert np.array_equal(masks[j], brute_force(tiny_generalist_run.last_ckpt, images, subsets, j, t))
    # An image is routed to one expert only: the R_j are disjoint.
    assert (np.sum(masks, axis=0) <= 1).all()
    assert any(m.any() for m in masks)


def test_cache_is_reused_and_invalidated_by_a_new_checkpoint(
    tiny_generalist_run, images: CifarImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "g.ckpt"
    shutil.copy(tiny_generalist_run.last_ckpt, ckpt)
    calls = []
    real = routed_in.load_module
    monkeypatch.setattr(routed_in, "load_module", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    first = generalist_logits(read_checkpoint(ckpt, "test"), images, tmp_path / "cache", "train")
    path = cache_path(tmp_path / "cache", file_sha256(ckpt), "train")
    assert path.is_file() and len(calls) == 1 and first.shape == (len(images), 100)
    again = generalist_logits(read_checkpoint(ckpt, "test"), images, tmp_path / "cache", "train")
    assert len(calls) == 1 and np.array_equal(first, again)
    assert not list(path.parent.glob("*.tmp*"))
    # New weights under the same file name: a new hash, a new cache file, a fresh computation.
    checkpoint = torch.load(ckpt, weights_only=False)
    head = next(k for k in checkpoint["state_dict"] if k.endswith("head.bias"))
    checkpoint["state_dict"][head] = checkpoint["state_dict"][head] + torch.linspace(-5, 5, 100)
    torch.save(checkpoint, ckpt)
    changed = generalist_logits(read_checkpoint(ckpt, "test"), images, tmp_path / "cache", "train")
    assert len(calls) == 2 and cache_path(tmp_path / "cache", file_sha256(ckpt), "train") != path
    assert not np.array_equal(changed, first)


def test_routed_in_needs_a_generalist_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt", "--model.generalist_checkpoint", ("generalist",))

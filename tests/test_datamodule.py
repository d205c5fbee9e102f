"""CIFAR-100 data: the stratified split, superclass/class subsets, label maps, loaders."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_PER_CLASS, TRAIN_PER_CLASS
from fake_cifar100 import write_fake_cifar100

from ask_the_expert.method.cifar100_classes import FINE_CLASSES, FINE_TO_COARSE, NUM_CLASSES, SUPERCLASSES
from ask_the_expert.method.splits import stratified_split
from ask_the_expert.utils.errors import SuiteError
from datamodules import cifar100_files
from datamodules.cifar100 import CIFAR100DataModule
from datamodules.cifar100_files import DataError, load_meta, load_split

# The fake folders are re-packed copies: loading one with check_integrity off warns once per process (tested below).
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published CIFAR-100 file")

# Imbalanced classes, so that proportional quotas are fractional.
COUNTS = np.array([10, 20, 30, 40, 50, 7])
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))
FISH = np.flatnonzero(FINE_TO_COARSE == SUPERCLASSES.index("fish"))


def make_datamodule(root: Path, **kwargs) -> CIFAR100DataModule:
    settings = dict(data_dir=str(root), check_integrity=False, val_size=100, batch_size=16, num_workers=0)
    return CIFAR100DataModule(**{**settings, **kwargs})


@pytest.mark.parametrize("val_size", [1, 37, 60, len(LABELS) - len(COUNTS)])
def test_split_sizes_disjoint_and_covering(val_size: int):
    train, val = stratified_split(LABELS, val_size, seed=0)
    assert len(val) == val_size and len(train) == len(LABELS) - val_size
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(LABELS)))
    # Every class keeps at least one training image.
    assert np.all(np.bincount(LABELS[train], minlength=len(COUNTS)) >= 1)


@pytest.mark.parametrize("val_size", [37, 60])
def test_split_is_stratified(val_size: int):
    _, val = stratified_split(LABELS, val_size, seed=3)
    per_class = np.bincount(LABELS[val], minlength=len(COUNTS))
    proportional = val_size * COUNTS / len(LABELS)
    assert np.all(np.abs(per_class - proportional) < 1), (per_class, proportional)


def test_split_is_deterministic_per_seed():
    first = stratified_split(LABELS, 37, seed=5)
    again = stratified_split(LABELS.copy(), 37, seed=5)
    other = stratified_split(LABELS, 37, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("val_size", [0, len(LABELS), len(LABELS) - len(COUNTS) + 1])
def test_split_refuses_val_size_that_does_not_fit(val_size: int):
    with pytest.raises(SuiteError, match=rf"val_size={val_size} .*Lower --data.val_size"):
        stratified_split(LABELS, val_size, seed=0)


def test_datamodule_splits_the_training_file(fake_cifar_root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cifar100_files, "_WARNED_COPIES", set())  # as in a new process
    with pytest.warns(UserWarning, match="differs from the published"):
        dm = make_datamodule(fake_cifar_root)
        dm.setup("fit")
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        make_datamodule(fake_cifar_root).setup("fit")
    assert not [w for w in again if "differs from the published" in str(w.message)]  # once per process is enough
    labels = dm.train_file.fine_labels
    assert len(dm.train_file) == TRAIN_PER_CLASS * NUM_CLASSES
    assert len(dm.val_indices) == 100 and len(dm.train_indices) == len(labels) - 100
    # 100 val images over 100 equally large classes: exactly one each.
    assert np.array_equal(np.bincount(labels[dm.val_indices], minlength=NUM_CLASSES), np.ones(NUM_CLASSES))
    assert np.intersect1d(dm.train_indices, dm.val_indices).size == 0
    assert dm.test_file is None  # fit does not read the test file

    same, other = make_datamodule(fake_cifar_root), make_datamodule(fake_cifar_root, split_seed=1)
    same.setup("fit")
    other.setup("fit")
    assert np.array_equal(same.val_indices, dm.val_indices)
    assert not np.array_equal(other.val_indices, dm.val_indices)


def test_datamodule_fits_without_the_test_file(fake_cifar_train_only: Path):
    dm = make_datamodule(fake_cifar_train_only)
    dm.setup("validate")
    assert len(dm.val_indices) == 100
    with pytest.raises(DataError, match=r"cifar-100-python/test' is missing"):
        dm.setup("test")


@pytest.mark.parametrize(
    ("superclasses", "classes", "expected"),
    [
        (["fish"], None, set(FISH.tolist())),
        (["Fish"], None, set(FISH.tolist())),
        ([1], None, set(FISH.tolist())),
        (None, [0, 99], {0, 99}),
        (["fish", "trees"], [0], {0, *FISH.tolist(), *np.flatnonzero(FINE_TO_COARSE == 17).tolist()}),
    ],
)
def test_subset_selection_keeps_100_way_labels(fake_cifar_root: Path, superclasses, classes, expected):
    dm = make_datamodule(fake_cifar_root, val_size=200, superclasses=superclasses, classes=classes)
    dm.setup()
    for split, file, per_class in [
        ("train", dm.train_file, TRAIN_PER_CLASS - 2),
        ("val", dm.train_file, 2),
        ("test", dm.test_file, TEST_PER_CLASS),
    ]:
        dataset = dm.dataset(split)
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
        assert set(labels) == expected, split
        assert len(labels) == per_class * len(expected), split
        assert [int(file.fine_labels[dataset[i][2]]) for i in range(len(dataset))] == labels


@pytest.mark.parametrize("bad", ["dinosaurs", 20, -1])
def test_unknown_superclass_lists_the_valid_ones(bad):
    with pytest.raises(SuiteError) as err:
        CIFAR100DataModule(superclasses=["fish", bad])
    message = str(err.value)
    assert repr(bad) in message
    assert all(f"{i}={name}" in message for i, name in enumerate(SUPERCLASSES))


@pytest.mark.parametrize("bad", [100, -1, "3"])
def test_unknown_fine_class_is_refused(bad):
    with pytest.raises(SuiteError, match=r"--data.classes .*0\.\.99"):
        CIFAR100DataModule(classes=[0, bad])


def test_meta_names_match_the_core_tables(fake_cifar_root: Path):
    meta = load_meta(fake_cifar_root, check_integrity=False)
    assert meta.class_names == FINE_CLASSES and meta.superclass_names == SUPERCLASSES


def _rewrite(root: Path, name: str, change) -> None:
    path = root / "cifar-100-python" / name
    content = pickle.loads(path.read_bytes(), encoding="latin1")
    change(content)
    path.write_bytes(pickle.dumps(content))


def test_coarse_labels_that_disagree_with_the_table_are_refused(tmp_path: Path):
    root = write_fake_cifar100(tmp_path, train_per_class=1, test_per_class=0)
    assert len(load_split(root, "train", check_integrity=False)) == NUM_CLASSES

    def swap_first_coarse(content: dict) -> None:
        content["coarse_labels"][0] = (content["coarse_labels"][0] + 1) % len(SUPERCLASSES)

    _rewrite(root, "train", swap_first_coarse)
    with pytest.raises(DataError, match=r"coarse labels .* disagree with the standard"):
        load_split(root, "train", check_integrity=False)


def test_meta_with_other_class_order_is_refused(tmp_path: Path):
    root = write_fake_cifar100(tmp_path, train_per_class=1, test_per_class=0)
    _rewrite(root, "meta", lambda content: content["fine_label_names"].reverse())
    with pytest.raises(DataError, match="not the standard CIFAR-100 ones"):
        load_meta(root, check_integrity=False)


def test_items_are_normalised_images_with_their_file_index(fake_cifar_root: Path):
    dm = make_datamodule(fake_cifar_root, augmentation="basic")
    dm.setup("fit")
    plain, augmented = dm.dataset("val"), dm.dataset("val", augment=True)
    image, label, index = plain[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert index == dm.val_indices[3] and int(label) == dm.train_file.fine_labels[index]
    # Eval transform: the file's pixels, only normalised (so deterministic).
    raw = torch.from_numpy(dm.train_file.images[index]).permute(2, 0, 1).float() / 255
    std = image.flatten(1).std(1) / raw.flatten(1).std(1)
    assert torch.allclose(std, std.mean(), rtol=0.2) and torch.equal(plain[3][0], image)
    assert any(not torch.equal(augmented[3][0], image) for _ in range(5))


def test_train_loader_drops_the_last_partial_batch(fake_cifar_root: Path):
    dm = make_datamodule(fake_cifar_root, batch_size=64)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_indices) // 64
    assert all(len(images) == 64 for images, _, _ in batches)
    with pytest.raises(DataError, match="fewer than one batch"):
        make_datamodule(fake_cifar_root, batch_size=1000).train_dataloader()


def test_loader_with_worker_processes_yields_each_sample_once(fake_cifar_root: Path):
    dm = make_datamodule(fake_cifar_root, num_workers=2, eval_batch_size=32)
    dm.setup("fit")
    images, labels, indices = (torch.cat(parts) for parts in zip(*dm.val_dataloader(), strict=True))
    assert images.shape == (100, 3, 32, 32)
    assert np.array_equal(indices.numpy(), dm.val_indices)
    assert np.array_equal(labels.numpy(), dm.train_file.fine_labels[dm.val_indices])

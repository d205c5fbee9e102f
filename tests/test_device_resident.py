"""The device-resident training path: sharding, coverage, augmentation statistics, Lightning's epochs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from ask_the_expert.utils.errors import SuiteError
from datamodules.cifar100 import CIFAR100DataModule
from datamodules.device_resident import PAD, DeviceResidentLoader, EpochShards
from datamodules.transforms import CIFAR100_MEAN, CIFAR100_STD, build_transform
from lightning_modules.classifier import ClassifierModule

SIZE = 32


def _datamodule(root: Path, **kwargs) -> CIFAR100DataModule:
    options = dict(check_integrity=False, val_size=100, batch_size=100, num_workers=0, augmentation="basic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fake files' md5 warning
        datamodule = CIFAR100DataModule(str(root), device_resident=True, **{**options, **kwargs})
        datamodule.setup("fit")
    return datamodule


@pytest.mark.parametrize(("n", "batch_size", "world_size"), [(96, 8, 3), (103, 8, 3), (50, 4, 1)])
def test_ranks_take_disjoint_equal_shares_that_cover_the_epoch(n: int, batch_size: int, world_size: int):
    shards = [EpochShards(n, batch_size, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in (0, 1):
        for shard in shards:
            shard.set_epoch(epoch)
        positions = [shard.draw()[0] for shard in shards]
        batches = n // (batch_size * world_size)
        assert all(len(p) == batches * batch_size == len(shards[0]) * batch_size for p in positions)
        union = torch.cat(positions)
        assert len(union.unique()) == len(union), "a sample appears twice in one epoch"
        # drop_last: fewer than one global batch is left out, so a divisible split is covered exactly once.
        assert 0 <= n - len(union) < batch_size * world_size
        if n % (batch_size * world_size) == 0:
            assert torch.equal(union.sort().values, torch.arange(n))


def test_epochs_reshuffle_deterministically_and_ddp_splits_the_single_process_draw():
    single = EpochShards(96, 8, seed=3)
    first = single.draw()
    single.set_epoch(1)
    second = single.draw()
    assert not torch.equal(first[0], second[0])
    single.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, single.draw(), strict=True))

    def as_set(draw: tuple[torch.Tensor, ...]) -> set[tuple[int, ...]]:
        positions, offsets, flips = draw
        return {(int(p), *offsets[i].tolist(), bool(flips[i])) for i, p in enumerate(positions)}

    ranks = [EpochShards(96, 8, seed=3, rank=r, world_size=2).draw() for r in range(2)]
    assert as_set(ranks[0]) | as_set(ranks[1]) == as_set(first)


def test_shard_arguments_are_checked():
    with pytest.raises(SuiteError, match="fewer than one batch"):
        EpochShards(10, 8, seed=0, rank=0, world_size=2)
    with pytest.raises(SuiteError, match="rank 2"):
        EpochShards(100, 8, seed=0, rank=2, world_size=2)


def _coded_image() -> np.ndarray:
    """NHWC uint8 image whose pixels name their own position: row+1, column+1, and 255 (padding is 0)."""
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    return np.stack([rows + 1, cols + 1, np.full_like(rows, 255)], axis=-1).astype(np.uint8)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation of float NCHW images (exact for uint8 sources)."""
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).round().to(torch.uint8)


def _decode(image: torch.Tensor) -> tuple[int, int, bool]:
    """(row shift, column shift, flipped) of one augmented coded image: the crop window's offset from centre."""
    rows, cols = torch.nonzero(image[2] == 255, as_tuple=True)
    i, j = int(rows[0]), int(cols[0])
    # At most 4 columns of a row are padding, so the first real pixel has a real right neighbour.
    flipped = bool(image[1, i, j + 1] < image[1, i, j])
    column = SIZE - 1 - j if flipped else j
    return int(image[0, i, j]) - 1 - i, int(image[1, i, j]) - 1 - column, flipped


def test_augmentation_matches_the_dataloader_path():
    n = 3000
    image = _coded_image()
    loader = DeviceResidentLoader(
        np.repeat(image[None], n, axis=0), np.zeros(n), np.arange(n), batch_size=500, augment=True, seed=0
    )
    resident = torch.cat([batch[0] for batch in loader])
    _, offsets, flips = loader.sampler.draw()
    decoded = [_decode(img) for img in _to_uint8(resident)]
    assert decoded == [(int(o[0]) - PAD, int(o[1]) - PAD, bool(f)) for o, f in zip(offsets, flips, strict=True)]

    # Bit-identical to torchvision's crop, flip and normalisation of the same window.
    chw = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
    for k in range(0, n, 97):
        top, left = int(offsets[k, 0]), int(offsets[k, 1])
        window = v2.functional.crop(v2.functional.pad(chw, [PAD]), top, left, SIZE, SIZE)
        window = v2.functional.horizontal_flip(window) if flips[k] else window
        expected = build_transform("none")(window)
        assert torch.equal(resident[k], expected)

    torch.manual_seed(0)
    transform = build_transform("basic")
    reference = torch.stack([transform(chw) for _ in range(n)])
    decoded_reference = [_decode(img) for img in _to_uint8(reference)]
    for axis in range(3):
        ours = np.array([d[axis] for d in decoded])
        theirs = np.array([d[axis] for d in decoded_reference])
        support = sorted(set(theirs.tolist()))
        assert sorted(set(ours.tolist())) == support == ([False, True] if axis == 2 else list(range(-PAD, PAD + 1)))
        # Frequencies agree to within ~4 standard errors of a difference of two proportions (~0.008).
        freq = [(np.mean(ours == v), np.mean(theirs == v)) for v in support]
        assert max(abs(a - b) for a, b in freq) < 0.035, freq


def test_no_augmentation_is_the_eval_transform(fake_cifar_root: Path):
    datamodule = _datamodule(fake_cifar_root, augmentation="none")
    loader = datamodule.train_dataloader()
    assert isinstance(loader, DeviceResidentLoader)
    images, labels, indices = next(iter(loader))
    eval_set = datamodule.dataset("val")  # eval transform over the train file
    expected = torch.stack([eval_set.transform(tv_tensors.Image(eval_set.images[int(i)])) for i in indices])
    assert torch.equal(images, expected)
    assert torch.equal(labels, torch.from_numpy(datamodule.train_file.fine_labels)[indices])


def test_strong_augmentation_falls_back_to_the_dataloader_with_a_warning(fake_cifar_root: Path):
    datamodule = _datamodule(fake_cifar_root, augmentation="strong")
    with pytest.warns(UserWarning, match="DataLoader path"):
        loader = datamodule.train_dataloader()
    assert isinstance(loader, DataLoader)


class RecordIndices(Callback):
    """File indices of every training batch, per epoch, and the loader's epoch as Lightning set it."""

    def __init__(self) -> None:
        self.indices: dict[int, list[torch.Tensor]] = {}
        self.loader_epochs: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, labels, indices = batch
        assert images.dtype == torch.float32 and labels.shape == indices.shape == images.shape[:1]
        assert torch.equal(labels.cpu(), torch.from_numpy(trainer.datamodule.train_file.fine_labels)[indices])
        self.indices.setdefault(trainer.current_epoch, []).append(indices.clone())
        self.loader_epochs[trainer.current_epoch] = trainer.train_dataloader.sampler.epoch


def _fit(root: Path, out: Path, max_epochs: int, ckpt_path: str | None = None) -> RecordIndices:
    recorder = RecordIndices()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, ModelCheckpoint(dirpath=out, filename="{epoch}", save_top_k=-1)],
    )
    model = ClassifierModule(embed_dim=16, depth=1, num_heads=2, warmup_epochs=0)
    trainer.fit(model, datamodule=_datamodule(root), ckpt_path=ckpt_path)
    return recorder


def test_lightning_sets_the_epoch_and_a_resumed_run_repeats_it(fake_cifar_root: Path, tmp_path: Path):
    full = _fit(fake_cifar_root, tmp_path / "full", max_epochs=2)
    assert full.loader_epochs == {0: 0, 1: 1}
    train_size = 600 - 100
    for epoch in (0, 1):
        seen = torch.cat(full.indices[epoch])
        assert len(seen) == (train_size // 100) * 100 and len(seen.unique()) == len(seen)
    assert not torch.equal(torch.cat(full.indices[0]), torch.cat(full.indices[1]))

    checkpoint = tmp_path / "full" / "epoch=0.ckpt"
    resumed = _fit(fake_cifar_root, tmp_path / "resumed", max_epochs=2, ckpt_path=str(checkpoint))
    assert list(resumed.indices) == [1]
    assert torch.equal(torch.cat(resumed.indices[1]), torch.cat(full.indices[1]))

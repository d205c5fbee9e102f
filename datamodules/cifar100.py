"""CIFAR-100 LightningDataModule: seeded stratified train/val split, superclass subsets, augmentation presets."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from ask_the_expert.method.cifar100_classes import FINE_TO_COARSE, NUM_CLASSES
from ask_the_expert.method.splits import DataSplit, stratified_split
from ask_the_expert.method.subsets import resolve_superclasses
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions, check_data_numbers
from datamodules.cifar100_files import CifarMeta, CifarSplit, DataError, download, load_meta, load_split
from datamodules.device_resident import DeviceResidentLoader
from datamodules.eval_sampler import distributed_eval_sampler
from datamodules.transforms import Augmentation, build_transform


class CifarImages(Dataset):
    """Images of one pickle file, restricted to ``indices``; items are ``(image, fine_label, file_index)``.

    The file index travels with each sample so that evaluation can drop DDP padding duplicates and experts can
    look up per-image routing data.
    """

    def __init__(self, data: CifarSplit, indices: np.ndarray, transform: Callable) -> None:
        # NCHW uint8 once, so workers share the pages and transforms see torchvision's layout.
        self.images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(data.fine_labels)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        index = int(self.indices[i])
        return self.transform(tv_tensors.Image(self.images[index])), self.labels[index], index


class CIFAR100DataModule(LightningDataModule):
    """CIFAR-100 from the standard ``cifar-100-python`` folder under ``data_dir``.

    Args:
        data_dir: folder that contains ``cifar-100-python/``.
        download: fetch the dataset with torchvision's downloader if absent (needs internet).
        check_integrity: refuse files whose md5 differs from the published ones; ``False`` loads a re-packed
            copy with a warning.
        val_size: images held out of the training file, stratified by fine class.
        split_seed: seed of the train/val split (independent of the training seed).
        batch_size: per-device batch size; the global batch is ``batch_size x devices x num_nodes``.
        eval_batch_size: per-device batch size for val/test/predict (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        augmentation: ``none``, ``basic`` (pad-4 crop + flip) or ``strong`` (adds RandAugment, random erasing).
        superclasses: restrict every split to these superclasses (names or indices).
        classes: restrict every split to these fine classes (indices); combined with ``superclasses`` as union.
        predict_split: which split ``predict`` iterates (``val`` or ``test``).
        device_resident: hold the training split on the model's device and crop/flip/normalise it there in
            batches (``datamodules/device_resident.py``); ``none`` and ``basic`` augmentation only, ``strong``
            falls back to the DataLoader path with a warning. Val/test/predict always use the DataLoader path.

    Under DDP every rank trains on a disjoint equal share of each epoch, and val/test/predict shard without
    padding (``datamodules/eval_sampler.py``), so synchronised metrics count every sample exactly once.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        check_integrity: bool = True,
        val_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        augmentation: Augmentation = "basic",
        superclasses: Sequence[int | str] | None = None,
        classes: Sequence[int] | None = None,
        predict_split: str = "val",
        pin_memory: bool = True,
        device_resident: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_data_numbers(batch_size, eval_batch_size, num_workers, val_size, split_seed)
        self.data_dir = data_dir
        self.download = download
        self.check_integrity = check_integrity
        self.val_size = val_size
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augmentation = augmentation
        self.predict_split = predict_split
        self.pin_memory = pin_memory
        self.device_resident = device_resident
        self.selected_classes = self._select_classes(superclasses, classes)
        self.train_transform = build_transform(augmentation)
        self.eval_transform = build_transform("none")
        self.meta: CifarMeta | None = None
        self.train_file: CifarSplit | None = None
        self.test_file: CifarSplit | None = None
        self.train_indices = self.val_indices = self.test_indices = np.empty(0, dtype=np.int64)

    @staticmethod
    def _select_classes(superclasses: Sequence[int | str] | None, classes: Sequence[int] | None) -> np.ndarray | None:
        if superclasses is None and classes is None:
            return None
        selected = set()
        if superclasses is not None:
            coarse = resolve_superclasses(list(superclasses))
            selected |= set(np.flatnonzero(np.isin(FINE_TO_COARSE, coarse)).tolist())
        if classes is not None:
            bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < NUM_CLASSES)]
            if bad:
                raise SuiteError(
                    f"--data.classes has {bad}, which are not fine class indices; use integers 0..{NUM_CLASSES - 1}."
                )
            selected |= set(classes)
        return np.array(sorted(selected), dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def fine_to_coarse(self) -> np.ndarray:
        return FINE_TO_COARSE

    def _restrict(self, labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
        if self.selected_classes is None:
            return indices
        return indices[np.isin(labels[indices], self.selected_classes)]

    def prepare_data(self) -> None:
        if self.download:
            download(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum; messages name the stage
        self.meta = self.meta or load_meta(self.data_dir, self.check_integrity)
        needs_train = stage in (None, "fit", "validate") or (stage == "predict" and self.predict_split == "val")
        if needs_train and self.train_file is None:
            self.train_file = load_split(self.data_dir, "train", self.check_integrity, f"stage '{stage}'")
            train, val = stratified_split(self.train_file.fine_labels, self.val_size, self.split_seed)
            self.train_indices = self._restrict(self.train_file.fine_labels, train)
            self.val_indices = self._restrict(self.train_file.fine_labels, val)
        needs_test = stage in (None, "test") or (stage == "predict" and self.predict_split == "test")
        if needs_test and self.test_file is None:
            self.test_file = load_split(self.data_dir, "test", self.check_integrity, f"stage '{stage}'")
            self.test_indices = self._restrict(self.test_file.fine_labels, np.arange(len(self.test_file)))

    def dataset(self, split: str, augment: bool = False) -> CifarImages:
        """The images of ``train``, ``val`` or ``test`` (after ``setup``), augmented or eval-transformed."""
        if split not in ("train", "val", "test"):
            raise SuiteError(f"unknown split '{split}'; choose train, val or test.")
        if (self.test_file if split == "test" else self.train_file) is None:
            self.setup("test" if split == "test" else "fit")
        # Read after setup, which replaces the files and index arrays.
        files = {"train": self.train_file, "val": self.train_file, "test": self.test_file}
        indices = {"train": self.train_indices, "val": self.val_indices, "test": self.test_indices}
        if len(indices[split]) == 0:
            raise DataError(
                f"The '{split}' split is empty after class selection; check --data.superclasses / --data.classes."
            )
        return CifarImages(files[split], indices[split], self.train_transform if augment else self.eval_transform)

    def loader(self, dataset: Dataset, shuffle: bool, batch_size: int, drop_last: bool = False, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader | DeviceResidentLoader:
        dataset = self.dataset("train", augment=True)
        if len(dataset) < self.batch_size:
            raise DataError(
                f"The training split has {len(dataset)} images, fewer than one batch of {self.batch_size}; "
                f"lower --data.batch_size."
            )
        if self.device_resident:
            if self.augmentation != "strong":
                return self.device_resident_loader()
            rank_zero_warn(
                "--data.device_resident supports augmentation 'none' and 'basic' only; 'strong' "
                "(RandAugment, random erasing) runs on the DataLoader path instead."
            )
        # drop_last keeps every step's batch full (mixup/cutmix need even batches) and step counts exact.
        return self.loader(dataset, shuffle=True, batch_size=self.batch_size, drop_last=True)

    def device_resident_loader(self) -> DeviceResidentLoader:
        """The training split on the trainer's device (CPU without a trainer), sharded for this DDP rank and
        shuffled with the ``seed_everything`` seed, as Lightning's ``DistributedSampler`` is."""
        trainer = self.trainer
        indices = self.train_indices
        return DeviceResidentLoader(
            self.train_file.images[indices],
            self.train_file.fine_labels[indices],
            indices,
            self.batch_size,
            augment=self.augmentation == "basic",
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            device=trainer.strategy.root_device if trainer is not None else "cpu",
        )

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        sampler = distributed_eval_sampler(dataset, self.trainer)
        return self.loader(dataset, shuffle=False, batch_size=self.eval_batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_split)


@dataclass(frozen=True)
class LabelledImages:
    """A labelled split in memory as raw pixels: uint8 (N, 32, 32, 3) images, int64 fine labels, file indices, and
    the train/val split they were taken with (None for test, which no split changes)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    split: str
    data_split: DataSplit | None = None

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(offset, images, labels) chunks of at most ``size`` samples, in order."""
        for start in range(0, len(self.labels), size):
            yield start, self.images[start : start + size], self.labels[start : start + size]

    def tensors(self) -> torch.Tensor:
        """The images as the models see them: normalised float NCHW through the eval transform."""
        return eval_tensors(self.images)


def eval_tensors(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW through the datamodule's eval transform (training's pipeline)."""
    return build_transform("none")(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def evaluation_datamodule(options: DataOptions) -> CIFAR100DataModule:
    """An evaluation datamodule (no augmentation, all classes) from the shared ``--data.*`` options."""
    return CIFAR100DataModule(**asdict(options), augmentation="none")  # its fields are --data.* names


def labelled_images(options: DataOptions, split: str = "val", limit: int | None = None) -> LabelledImages:
    """The raw images and labels of ``train``, ``val`` or ``test`` (the first ``limit`` of them)."""
    if split not in ("train", "val", "test"):
        raise SuiteError(f"Unknown split {split!r}; choose val (default), test or train.")
    if limit is not None and limit < 1:
        raise SuiteError(f"--limit must be >= 1 (images of the split to use), got {limit}.")
    dm = evaluation_datamodule(options)
    dm.setup("test" if split == "test" else "fit")
    file = dm.test_file if split == "test" else dm.train_file
    indices = {"train": dm.train_indices, "val": dm.val_indices, "test": dm.test_indices}[split][:limit]
    if len(indices) == 0:
        raise DataError(f"The {split} split of {options.data_dir} is empty; check --data.val_size / --limit.")
    data_split = None if split == "test" else DataSplit.of(options)
    return LabelledImages(file.images[indices], file.fine_labels[indices].astype(np.int64), indices, split, data_split)

"""CIFAR-100 for one expert: training batches mix the expert's subset with a second pool (docs/design.md §4).

The ExpertModule tells this datamodule its subset, the mix of each epoch (from its stage list) and its routed-in
images (``set_expert``, called from the module's ``setup``). ``train_dataloader`` is rebuilt every epoch
(``reload_dataloaders_every_n_epochs = 1``, forced in ``setup``) with a MixingBatchSampler for that epoch's mix, so
the mix follows the schedule without any state shared with worker processes.

DDP: the sampler shards the epoch's draw itself, using the trainer's world size and global rank, so Lightning must
not replace it: set ``trainer.use_distributed_sampler: false`` (configs/expert*.yaml do). Validation and test are then
not sharded either: every rank evaluates the whole split, which keeps the metrics exact at the cost of repeated work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ask_the_expert.method.stages import batches_per_epoch
from ask_the_expert.utils.errors import SuiteError
from datamodules.cifar100 import CIFAR100DataModule
from datamodules.mixing import MixingBatchSampler


class ExpertDataModule(CIFAR100DataModule):
    """CIFAR100DataModule whose training batches hold ``round(rho * batch_size)`` subset images.

    Args:
        mix_seed: seed of the mixing draw (each epoch's draw is a function of ``(mix_seed, epoch)``).
        **kwargs: the CIFAR100DataModule arguments.
    """

    def __init__(self, mix_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mix_seed = mix_seed
        self.subset: np.ndarray | None = None
        self.mix_for_epoch: Callable[[int], tuple[float, str]] | None = None
        self.routed_in_file_indices = np.empty(0, dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.trainer is not None:
            # The mix changes between stages; a fresh loader per epoch picks up the epoch's stage.
            self.trainer.reload_dataloaders_every_n_epochs = 1

    def set_expert(
        self,
        subset: Sequence[int],
        mix_for_epoch: Callable[[int], tuple[float, str]],
        routed_in: np.ndarray | None = None,
    ) -> None:
        """Subset classes, ``epoch -> (rho, rest pool name)``, and R_j as train-file indices."""
        self.subset = np.asarray(subset, dtype=np.int64)
        self.mix_for_epoch = mix_for_epoch
        self.routed_in_file_indices = np.asarray(routed_in if routed_in is not None else [], dtype=np.int64)

    def subset_train_size(self, subset: Sequence[int]) -> int:
        """Training images (after the val hold-out) whose class is in ``subset``."""
        if self.train_file is None:
            self.setup("fit")
        return int(np.isin(self.train_file.fine_labels[self.train_indices], subset).sum())

    def _pools(self) -> dict[str, np.ndarray]:
        """Positions in the train dataset: the subset and each source of the rest of a batch."""
        labels = self.train_file.fine_labels[self.train_indices]
        in_subset = np.isin(labels, self.subset)
        routed = np.isin(self.train_indices, self.routed_in_file_indices) & ~in_subset
        return {
            "subset": np.flatnonzero(in_subset),
            "other_classes": np.flatnonzero(~in_subset),
            "routed_in": np.flatnonzero(routed),
        }

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise SuiteError(
                "Expert training shards its mixing sampler itself; with several devices set "
                "--trainer.use_distributed_sampler false (configs/expert.yaml does)."
            )
        return trainer.world_size, trainer.global_rank

    def epoch_sampler(self, epoch: int) -> MixingBatchSampler:
        """The batch sampler of one epoch, with that epoch's mix."""
        if self.subset is None or self.mix_for_epoch is None:
            raise SuiteError(
                "ExpertDataModule trains experts only: use it with lightning_modules.ExpertModule, which sets the "
                "subset and stages; for all-class training use datamodules.CIFAR100DataModule."
            )
        if self.train_file is None:
            self.setup("fit")
        rho, rest = self.mix_for_epoch(epoch)
        pools = self._pools()
        if rest == "routed_in" and rho < 1.0 and len(pools["routed_in"]) == 0:
            # A weak generalist may route no outside image to this expert: train on, with the other classes.
            rank_zero_warn(
                "R_j is empty: the generalist routes no image outside this expert's subset to it, so this stage "
                "draws the rest of each batch from the other classes instead (rest: other_classes)."
            )
            rest = "other_classes"
        num_replicas, rank = self._replicas()
        return MixingBatchSampler(
            pools["subset"], pools[rest], self.batch_size, rho, self.mix_seed, epoch, num_replicas, rank
        )

    def stage_batches(self, subset: Sequence[int], rho: float) -> int:
        """Batches per epoch (per rank) of a stage with subset share ``rho`` for the classes ``subset``."""
        return batches_per_epoch(self.subset_train_size(subset), self.batch_size, rho, self._replicas()[0])

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        sampler = self.epoch_sampler(epoch)
        # A new loader per epoch: persistent workers would only outlive their loader.
        return DataLoader(
            self.dataset("train", augment=True),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )

"""Evaluation sharding under DDP that neither drops nor repeats a sample.

Lightning gives val/test loaders a padded ``DistributedSampler``: with ``n`` samples on ``w`` ranks it
repeats up to ``w - 1`` of them so every rank gets ``ceil(n / w)``, and the synchronised metrics count those
twice. A loader whose sampler is already a ``DistributedSampler`` is left alone, so the DataModule passes the
unpadded one below: rank ``r`` evaluates samples ``r, r + w, r + 2w, ...``, the ranks' counts differ by at
most one, and the synchronised torchmetrics states equal those of one process over the whole split.

Uneven batch counts are safe in evaluation: DDP syncs buffers only on the first forward after a training step,
which every rank makes as long as each has at least one sample.
"""

from __future__ import annotations

from lightning import Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset

from ask_the_expert.utils.errors import SuiteError


def distributed_eval_sampler(dataset: Dataset, trainer: Trainer | None) -> UnrepeatedDistributedSampler | None:
    """The unpadded, unshuffled shard of ``dataset`` for this rank when ``trainer`` runs several processes,
    else ``None`` (the loader's default sequential sampler)."""
    if trainer is None or trainer.world_size <= 1:
        return None
    if len(dataset) < trainer.world_size:
        raise SuiteError(
            f"The evaluation split has {len(dataset)} images, fewer than the {trainer.world_size} processes; "
            f"evaluate on fewer devices or a larger split."
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )

"""Gathering Python objects of every DDP rank (shards of evaluation data have unequal lengths)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from lightning import Trainer


def all_gather_objects(trainer: Trainer, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process).

    Unlike ``LightningModule.all_gather``, which needs tensors of one shape on every rank, this takes any picklable
    object: the unpadded evaluation shards differ in length by up to one sample.
    """
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]

"""Tiny random-init checkpoints for the deployment tests: a generalist and a 4-expert partition."""

from __future__ import annotations

from pathlib import Path

import torch

from ask_the_expert.method.subsets import superclass_partition
from benchmarks.common import quiet_trainer
from lightning_modules.classifier import ClassifierModule
from lightning_modules.expert import ExpertModule

TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2}


def save_checkpoint(module: torch.nn.Module, path: Path) -> Path:
    """A Lightning checkpoint of an untrained module (hyperparameters + weights), as train.py writes them."""
    trainer = quiet_trainer()
    trainer.strategy.connect(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


def write_tiny_checkpoints(folder: Path, superclasses_per_expert: int = 5) -> tuple[Path, list[Path]]:
    """(generalist.ckpt, [expert_<j>.ckpt]) of tiny ViTs with different seeds (default: 4 experts of 5
    superclasses each)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generalist = save_checkpoint(ClassifierModule(**TINY), folder / "generalist.ckpt")
    experts = []
    for j, subset in enumerate(superclass_partition(superclasses_per_expert)):
        torch.manual_seed(j + 1)
        module = ExpertModule(subset=subset, expert_index=j, partition=superclasses_per_expert, **TINY)
        experts.append(save_checkpoint(module, folder / f"expert_{j}.ckpt"))
    return generalist, experts

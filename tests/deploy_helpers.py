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


def write_tiny_checkpoints(
    folder: Path, superclasses_per_expert: int = 5, model_args: dict | None = None
) -> tuple[Path, list[Path]]:
    """(generalist.ckpt, [expert_<j>.ckpt]) of tiny ViTs with different seeds (default: 4 experts of 5
    superclasses each); ``model_args`` replace the tiny shape (e.g. a conv tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = model_args or TINY
    torch.manual_seed(0)
    generalist = save_checkpoint(randomise_norm_statistics(ClassifierModule(**shape)), folder / "generalist.ckpt")
    experts = []
    for j, subset in enumerate(superclass_partition(superclasses_per_expert)):
        torch.manual_seed(j + 1)
        module = ExpertModule(subset=subset, expert_index=j, partition=superclasses_per_expert, **shape)
        experts.append(save_checkpoint(randomise_norm_statistics(module), folder / f"expert_{j}.ckpt"))
    return generalist, experts


def randomise_norm_statistics(module: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm running statistics away from their initial 0 / 1, as training leaves them (so an export that
    dropped or mis-folded them would show); a no-op for models without batch norm."""
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return module

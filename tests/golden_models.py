"""The API-specific half of tests/golden_evaluation.py: how the golden setup builds modules and runs evaluate.py.

Kept apart so that an interface change edits only this file, never the recorded numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ask_the_expert.commands import evaluate
from lightning_modules.classifier import ClassifierModule
from lightning_modules.expert import ExpertModule


def classifier(role: str, **shape) -> ClassifierModule:
    return ClassifierModule(arch="vit_tiny" if role == "generalist" else "vit_small", role=role, **shape)


def expert(index: int, partition: int, **shape) -> ExpertModule:
    return ExpertModule(expert_index=index, partition=partition, arch="vit_small", **shape)


def evaluate_main(
    paths: dict[str, Path],
    out: Path,
    val_size: int,
    k_values: Sequence[int],
    measures: Sequence[str],
    profiles: Sequence[str],
) -> None:
    args = [
        "--generalist", str(paths["generalist"]), "--experts", f"[{paths['experts']}]",
        "--static_experts", f"[{paths['static']}]", "--base", str(paths["base"]),
        "--data.data_dir", str(paths["data"]), "--data.check_integrity", "false", "--data.val_size", str(val_size),
        "--data.num_workers", "0", "--data.batch_size", "32", "--split", "test",
        "--k", str(list(k_values)), "--confidence", f"[{', '.join(measures)}]", "--out", str(out),
        "--profiles", f"[{', '.join(profiles)}]", "--accelerator", "cpu", "--wandb.mode", "disabled",
    ]  # fmt: skip
    assert evaluate.main(args) == 0

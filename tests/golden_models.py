"""The API-specific half of tests/golden_evaluation.py: how the golden setup builds modules and runs evaluate.py.

Kept apart so that an interface change edits only this file, never the recorded numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import evaluate
from lightning_modules import ExpertModule, GeneralistModule


def classifier(role: str, **shape) -> GeneralistModule:
    return GeneralistModule(arch="vit_tiny" if role == "generalist" else "vit_small", role=role, **shape)


def expert(index: int, partition: int, **shape) -> ExpertModule:
    return ExpertModule(expert_index=index, partition=partition, **shape)


def evaluate_main(
    paths: dict[str, Path], out: Path, val_size: int, k_values: Sequence[int], measures: Sequence[str],
    profiles: Sequence[str],
) -> None:
    args = [
        "--generalist", str(paths["generalist"]), "--experts", str(paths["experts"]),
        "--static-experts", str(paths["static"]), "--base", str(paths["base"]),
        "--data-dir", str(paths["data"]), "--no-check-integrity", "--val-size", str(val_size), "--split", "test",
        "--k", *map(str, k_values), "--confidence", *measures, "--out", str(out), "--num-workers", "0",
        "--batch-size", "32", "--accelerator", "cpu", "--wandb-mode", "disabled",
    ]
    for p in profiles:
        args += ["--profile", p]
    assert evaluate.main(args) == 0

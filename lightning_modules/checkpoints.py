"""The suite's checkpoints: find them, read them safely, check role, classes, architecture, data split and
partition, load them.

Every consumer (ate-train's ``--ckpt_path``, the experts' ``base_checkpoint`` / ``generalist_checkpoint``,
ate-train-experts, ate-evaluate, ate-partition, the export and the verifier) goes through ``read_checkpoint``, so a
missing, truncated, random or foreign file is always one clear message naming the option and the fix, never a
traceback. A checkpoint is a file a user may receive from someone else, so it is never unpickled with code execution:
``load_checkpoint_file`` is the one reader (``torch.load(weights_only=True)``: tensors and plain data only; every
checkpoint the suite writes loads that way), and the loads Lightning makes itself (``load_from_checkpoint`` and a
Trainer's ``ckpt_path``) are given ``weights_only=True`` as well.
"""

from __future__ import annotations

import glob
import importlib
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule

from ask_the_expert.method.cifar100_classes import NUM_CLASSES
from ask_the_expert.method.splits import DataSplit
from ask_the_expert.method.subsets import class_to_expert
from ask_the_expert.models.vit_factory import architecture_mismatch
from ask_the_expert.utils.errors import PartitionError, SuiteError

CheckpointSpec = str | Path
# What each role is, and how to get one; named in error messages.
ROLES: dict[str, str] = {
    "generalist": "the edge generalist (ate-train fit -c configs/generalist.yaml)",
    "base": "the stage-0 base (medium) model (ate-train fit -c configs/base.yaml, or ate-train-experts)",
    "expert": "an expert (ate-train fit -c configs/expert.yaml, or ate-train-experts)",
}
# The LightningModule of each role, by import path: the modules import this file, so it cannot import them.
_MODULE_CLASSES = {
    "generalist": "lightning_modules.classifier.ClassifierModule",
    "base": "lightning_modules.classifier.ClassifierModule",
    "expert": "lightning_modules.expert.ExpertModule",
}


class CheckpointError(SuiteError):
    """A checkpoint is missing, unreadable, of the wrong kind, or does not fit the others."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint file, its Lightning hyperparameters, the train/val split its run used (None when it was saved
    without a datamodule) and its optimizer step count (read without loading the module)."""

    path: Path
    hparams: dict[str, Any]
    option: str
    data_split: DataSplit | None = None
    global_step: int = 0

    @property
    def role(self) -> str | None:
        return self.hparams.get("role")

    @property
    def num_classes(self) -> int:
        return int(self.hparams.get("num_classes", NUM_CLASSES))

    def describe(self) -> str:
        return f"{self.option} {str(self.path)!r}"


def resolve_checkpoints(specs: Sequence[CheckpointSpec], option: str) -> list[Path]:
    """Checkpoint files from files, folders (their ``*.ckpt``) and glob patterns, in sorted order."""
    paths: list[Path] = []
    for spec in [specs] if isinstance(specs, (str, Path)) else specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(p.glob("*.ckpt"))
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(x) for x in glob.glob(str(spec)) if Path(x).is_file())
        if not found:
            raise CheckpointError(
                f"{option} {str(spec)!r} matches no checkpoint file. Give checkpoint files, a folder holding the "
                "*.ckpt files, or a quoted glob such as 'runs/experts/*/checkpoints/last.ckpt'."
            )
        paths += found
    return list(dict.fromkeys(paths))


def load_checkpoint_file(path: Path, option: str) -> Any:
    """The content of a checkpoint file, memory-mapped (no weight is copied), with tensors and plain data only.

    ``torch.load(weights_only=True)`` refuses any other Python object instead of running the code a pickle may
    carry. Raises CheckpointError when the file holds such objects, or is truncated, random or not a torch file.
    """
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{option} {str(path)!r} holds Python objects other than tensors and plain data{what}, which loading "
                "would execute as code; it was not written by this suite or was changed since. It was refused "
                "without running anything. Pass a .ckpt file written by ate-train (rerun the step that wrote it)."
            ) from None
        raise _unreadable(path, option, err) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise _unreadable(path, option, err) from None


def _unreadable(path: Path, option: str, err: BaseException) -> CheckpointError:
    first = str(err).splitlines()[0] if str(err) else ""
    return CheckpointError(
        f"{option} {str(path)!r} is not a readable Lightning checkpoint ({type(err).__name__}: {first}); it is "
        "truncated or not a checkpoint. Pass a .ckpt file written by ate-train (rerun the step that wrote it)."
    )


def read_checkpoint(path: CheckpointSpec, option: str, roles: Sequence[str] | None = None) -> CheckpointInfo:
    """Read a checkpoint's hyperparameters, data split and step count (``load_checkpoint_file``) and check its role.

    Raises CheckpointError when the file is missing, not a readable Lightning checkpoint of this suite (truncated,
    random bytes, empty, a plain torch file, a pickle with code), or of a role other than ``roles``.
    """
    path = Path(path)
    if not path.is_file():
        hint = f" It should be {ROLES[roles[0]]}." if roles else ""
        raise CheckpointError(
            f"{option} {str(path)!r} does not exist.{hint} Pass the path of a .ckpt file written by ate-train."
        )
    checkpoint = load_checkpoint_file(path, option)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not isinstance(hparams, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{option} {str(path)!r} has no Lightning hyperparameters/state_dict, so it is not a checkpoint of "
            "this suite's models. Pass a .ckpt file written by ate-train."
        )
    data = checkpoint.get("datamodule_hyper_parameters")
    split = DataSplit.of(data) if isinstance(data, Mapping) else None
    info = CheckpointInfo(path, dict(hparams), option, split, int(checkpoint.get("global_step") or 0))
    if roles is not None and info.role not in roles:
        what = " or ".join(ROLES[r].split(" (")[0] for r in roles)
        raise CheckpointError(
            f"{info.describe()} is a checkpoint of a {info.role or 'model without a role'} model, not of {what} "
            f"(role {' or '.join(roles)}). Pass {ROLES[roles[0]]} for {option}."
        )
    return info


def require_split(info: CheckpointInfo, split: DataSplit | None) -> None:
    """The checkpoint was trained on the train/val split ``split`` (when both are known), else CheckpointError: with
    another split, this run's val images would include images the model was trained on."""
    if split is None or info.data_split is None or info.data_split == split:
        return
    raise CheckpointError(
        f"{info.describe()} was trained with the train/val split {info.data_split}, but this run uses {split}: its "
        "val images would include images the model was trained on. Pass the checkpoint's split "
        f"({info.data_split}), or use checkpoints trained on this split."
    )


def require_classes(info: CheckpointInfo, num_classes: int, against: str = "the generalist") -> None:
    """Every model of one system classifies the same label space."""
    if info.num_classes != num_classes:
        raise CheckpointError(
            f"{info.describe()} has {info.num_classes} output classes but {against} has {num_classes}; every model "
            "of the system must classify the same label space. Pass checkpoints trained on the same classes."
        )


def require_architecture(info: CheckpointInfo, expected: Mapping[str, Any], fix: str) -> None:
    """The checkpoint has the architecture of ``expected`` (hyperparameters), else CheckpointError with ``fix``."""
    diff = architecture_mismatch(expected, info.hparams)
    if diff:
        want = ", ".join(f"{k}={a!r}" for k, (a, _) in diff.items())
        got = ", ".join(f"{k}={b!r}" for k, (_, b) in diff.items())
        raise CheckpointError(f"{info.describe()} is another architecture: expected {want}, found {got}. {fix}")


def module_state(info: CheckpointInfo, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint (its state_dict entries under ``prefix``, prefix removed)."""
    state = load_checkpoint_file(info.path, info.option)["state_dict"]
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def load_module(info: CheckpointInfo) -> LightningModule:
    """The LightningModule of a checked checkpoint (class chosen by its role), on CPU, in eval mode."""
    module_path, name = _MODULE_CLASSES[info.role].rsplit(".", 1)
    cls = getattr(importlib.import_module(module_path), name)
    try:
        # Building the module draws random initial weights before the checkpoint's replace them: on a forked RNG,
        # so that loading a model (say, the generalist for R_j) never shifts a training run's random streams.
        with torch.random.fork_rng(devices=[]):
            return cls.load_from_checkpoint(info.path, map_location="cpu", weights_only=True).eval()
    except (TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"{info.describe()} cannot be restored as {ROLES[info.role].split(' (')[0]} ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}); it was written by an incompatible version of the suite. Retrain it."
        ) from None


@dataclass(frozen=True)
class ExpertSet:
    """Experts ordered by their ``expert_index``, with their subsets (a partition of the classes) and files."""

    models: list[LightningModule]
    subsets: list[list[int]]
    paths: list[Path]


def check_expert_set(
    specs: Sequence[CheckpointSpec], num_classes: int, option: str, split: DataSplit | None = None
) -> list[CheckpointInfo]:
    """Resolve and check expert checkpoints: role, class count, data split, one per index 0..n-1, subsets partition
    the classes. Returns their infos ordered by expert index (no weights loaded)."""
    by_index: dict[int, list[CheckpointInfo]] = {}
    for path in resolve_checkpoints(specs, option):
        info = read_checkpoint(path, option, ("expert",))
        require_classes(info, num_classes)
        require_split(info, split)
        index = info.hparams.get("expert_index")
        if index is None:
            raise CheckpointError(
                f"{info.describe()} records no expert_index (its subset is not one of its partition's subsets), "
                "so its place among the experts is unknown. Train it with --model.expert_index and the "
                "--model.partition the other experts use."
            )
        by_index.setdefault(int(index), []).append(info)
    doubled = {j: [str(i.path) for i in items] for j, items in by_index.items() if len(items) > 1}
    if doubled:
        raise CheckpointError(
            f"{option} holds several checkpoints for the same expert index: {doubled}. Pass exactly one checkpoint "
            "per expert (e.g. only last.ckpt or only best-*.ckpt of each expert run)."
        )
    expected = list(range(len(by_index)))
    if sorted(by_index) != expected:
        raise PartitionError(
            f"{option} gives experts with indices {sorted(by_index)}, but the indices must be 0..{len(by_index) - 1} "
            "with none missing. Pass the checkpoints of every expert of the partition."
        )
    infos = [by_index[j][0] for j in expected]
    try:
        class_to_expert([list(map(int, i.hparams.get("subset") or [])) for i in infos], num_classes)
    except PartitionError as err:
        files = ", ".join(str(i.path) for i in infos)
        raise PartitionError(f"The checkpoints of {option} ({files}) do not fit together: {err}") from None
    return infos


def load_expert_set(specs: Sequence[CheckpointSpec], num_classes: int, option: str) -> ExpertSet:
    """``check_expert_set``, then the expert modules."""
    infos = check_expert_set(specs, num_classes, option)
    return ExpertSet(
        [load_module(i) for i in infos], [list(map(int, i.hparams["subset"])) for i in infos], [i.path for i in infos]
    )


# Where callbacks.wandb_logging.SaveConfigToRun records the run's resolved config (YAML text) in a checkpoint.
CONFIG_KEY = "suite_config"


def checkpoint_entries(info: CheckpointInfo, keys: Sequence[str]) -> dict[str, Any]:
    """The top-level entries ``keys`` of a checked checkpoint that it has (plain data: read with
    ``weights_only=True``, memory-mapped, so no code runs and no weights are copied)."""
    checkpoint = torch.load(info.path, map_location="cpu", mmap=True, weights_only=True)
    return {key: checkpoint[key] for key in keys if key in checkpoint}

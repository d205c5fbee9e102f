"""Option groups shared by the commands, spelled as ate-train's LightningCLI options (``--data.data_dir``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ask_the_expert.utils.errors import SuiteError


def check_data_numbers(
    batch_size: int, eval_batch_size: int | None, num_workers: int, val_size: int, split_seed: int
) -> None:
    """Loader and split settings torch or numpy would reject deep inside a DataLoader or the split, refused up front
    with the option's name."""
    problems = []
    for option, value, low in (
        ("--data.batch_size", batch_size, 1),
        ("--data.eval_batch_size", eval_batch_size, 1),
        ("--data.num_workers", num_workers, 0),
        ("--data.val_size", val_size, 1),
        ("--data.split_seed", split_seed, 0),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            problems.append(f"{option} is {value!r} (use an integer >= {low})")
    if problems:
        raise SuiteError(f"Bad data settings: {'; '.join(problems)}.")


@dataclass(frozen=True)
class DataOptions:
    """Where the CIFAR-100 files are and how val is held out (``--data.*``, as in training).

    Attributes:
        data_dir: folder that contains ``cifar-100-python/``.
        check_integrity: refuse files whose md5 differs from the published ones (false: a re-packed copy loads
            with a warning).
        val_size: images held out of the training file, stratified by fine class (as in training).
        split_seed: seed of the train/val split (as in training).
        batch_size: evaluation batch size per device.
        num_workers: DataLoader worker processes.
    """

    data_dir: str = "data"
    check_integrity: bool = True
    val_size: int = 5000
    split_seed: int = 0
    batch_size: int = 256
    num_workers: int = 4

    def __post_init__(self) -> None:
        check_data_numbers(self.batch_size, None, self.num_workers, self.val_size, self.split_seed)


@dataclass(frozen=True)
class WandbOptions:
    """How a command logs to Weights & Biases (``--wandb.*``); the logger never fails a run.

    Attributes:
        mode: ``auto`` (online with credentials, else offline), ``online``, ``offline`` or ``disabled``.
        project: the W&B project.
        name: the run name (default: derived from what the run is and ending with its run id, e.g.
            ``evaluate-val-4experts-<hash of the expert set>-<run id>``; ask_the_expert.tracking.run_identity).
        group: the run group (default: the name without the run id, so repeats on the same inputs group together;
            ate-pipeline groups each step across its seeds).
        tags: extra tags besides those derived from the run.
        require_online: fail instead of falling back to offline when an online run cannot start.
        preset: the preset or experiment the run belongs to; the derived name and group start with it.
        dir: the folder whose ``wandb/`` holds the run (default: the command's output folder, or ``WANDB_DIR``).
    """

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "ask-the-expert"
    name: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    require_online: bool = False
    preset: str | None = None
    dir: str | None = None

"""Weights & Biases as the default logger, never a point of failure: offline when there are no credentials."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Literal

from lightning import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console

WandbMode = Literal["auto", "online", "offline", "disabled"]
# Metrics whose best value, not last, is the run's summary in W&B.
MAX_SUMMARY_METRICS = ("val/acc",)


def has_wandb_credentials() -> bool:
    """True if ``wandb login`` (a netrc entry) or ``WANDB_API_KEY`` provides an API key."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC")).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def resolve_wandb_mode(mode: WandbMode) -> str:
    """``auto`` follows ``WANDB_MODE`` if set, else online with credentials and offline without."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")


@rank_zero_only
def _announce_offline(save_dir: str) -> None:
    Console(stderr=True).print(
        f"W&B: logging offline into '{save_dir}/wandb' (no credentials, or offline requested). "
        f"Upload later with: wandb sync {save_dir}/wandb/offline-run-*",
        highlight=False,
    )


class SuiteWandbLogger(WandbLogger):
    """WandbLogger that falls back to offline mode and says how to sync the run later.

    Args:
        project, group, job_type, tags, name: the W&B run's fields.
        save_dir: where the ``wandb/`` run folders and (through Lightning) checkpoints go.
        mode: ``auto`` (default), ``online``, ``offline`` or ``disabled``.
    """

    def __init__(
        self,
        project: str = "ask-the-expert",
        save_dir: str = "runs",
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        mode: WandbMode = "auto",
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        resolved = resolve_wandb_mode(mode)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if resolved == "offline":
            _announce_offline(save_dir)
        super().__init__(
            project=project,
            save_dir=save_dir,
            name=name,
            group=group,
            job_type=job_type,
            tags=tags,
            mode=resolved,
            log_model=log_model,
            **kwargs,
        )


class SaveConfigToRun(SaveConfigCallback):
    """Stores the fully resolved CLI config with the run: as the W&B run's config and as ``config.yaml`` in its
    files (beside the checkpoints when W&B is disabled, in ``trainer.log_dir`` without a W&B logger). Lightning
    calls it on rank zero only.

    Use with ``save_config_kwargs={"save_to_log_dir": False, "config_filename": "cli_config.yaml"}``: a W&B
    logger's log dir is shared by all runs, and W&B writes its own ``config.yaml`` into the run's files.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a broadcast, so every rank reads it here; save_config runs on rank zero only.
        if not self.already_saved:
            self.log_dir = trainer.log_dir
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = Path(self.log_dir or ".")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and getattr(logger.experiment, "disabled", False):
                # mode=disabled: no run folder to keep (wandb points at a temp dir); save beside the checkpoints.
                folder = Path(logger.save_dir) / str(logger.name) / str(logger.version)
            elif isinstance(logger, WandbLogger):
                logger.experiment.config.update({"cli": self.config.as_dict()}, allow_val_change=True)
                for metric in MAX_SUMMARY_METRICS:
                    logger.experiment.define_metric(metric, summary="max")
                folder = Path(logger.experiment.dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, folder / self.config_filename, skip_none=False, overwrite=True, multifile=False)

"""The W&B callbacks of a training run (the logger itself is ask_the_expert.tracking.wandb_logger.SuiteWandbLogger).

- ``WandbRunInCheckpoint`` stores the run id in every checkpoint, so that a fit resumed from it continues the same
  W&B run (read back by ask_the_expert.tracking.wandb_logger.wandb_run_id_from_checkpoint).
- ``SaveConfigToRun`` stores the fully resolved CLI config with the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from ask_the_expert.tracking.wandb_logger import CHECKPOINT_KEY, SuiteWandbLogger

# Metrics whose best value, not last, is the run's summary in W&B.
MAX_SUMMARY_METRICS = ("val/acc",)


class WandbRunInCheckpoint(Callback):
    """Stores the W&B run of the trainer's ``WandbLogger`` in every checkpoint (``checkpoint["wandb_run"]``: run id,
    project, save_dir, mode), so that a fit resumed from it can continue the same run; see
    ``wandb_run_id_from_checkpoint``. Disabled runs are not stored. Only rank zero's copy is written to disk."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            experiment = logger._experiment  # never start a run just to save a checkpoint
            if experiment is None or getattr(experiment, "disabled", False) or not logger.version:
                return
            mode = logger.run_mode if isinstance(logger, SuiteWandbLogger) else None
            checkpoint[CHECKPOINT_KEY] = {
                "run_id": str(logger.version),
                "project": logger.name,
                "save_dir": logger.save_dir,
                "mode": mode,
            }
            return


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

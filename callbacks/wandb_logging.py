"""The W&B callbacks of a training run (the logger itself is ask_the_expert.tracking.wandb_logger.SuiteWandbLogger).

- ``WandbRunInCheckpoint`` stores the run id in every checkpoint, so that a fit resumed from it continues the same
  W&B run (read back by ask_the_expert.tracking.wandb_logger.wandb_run_id_from_checkpoint).
- ``SaveConfigToRun`` stores the fully resolved CLI config with the run, in every checkpoint and beside the
  checkpoints, so that ``ate-train validate|test --ckpt_path`` can rebuild the run from the checkpoint alone.
- ``LogCheckpointArtifacts`` logs a fit's best and last checkpoints as ``model`` artifacts (aliases ``best`` and
  ``latest``; ask_the_expert.tracking.artifacts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from ask_the_expert.tracking.artifacts import log_checkpoint
from ask_the_expert.tracking.wandb_logger import CHECKPOINT_KEY, SuiteWandbLogger
from ask_the_expert.utils.atomic import write_text_atomic
from lightning_modules.checkpoints import CONFIG_KEY

# Metrics whose best value, not last, is the run's summary in W&B.
MAX_SUMMARY_METRICS = ("val/acc",)
# The resolved config in a fit's checkpoint folder (a checkpoint saved on its own gets ``<name>.config.yaml``).
CONFIG_BESIDE_CHECKPOINTS = "config.yaml"


def config_beside(checkpoint: str | Path) -> Path:
    """Where the resolved config of a checkpoint saved on its own goes: ``<name>.config.yaml`` beside it."""
    return Path(checkpoint).with_suffix(".config.yaml")


def wandb_runs(trainer: Trainer) -> list[Any]:
    """The W&B runs of the trainer's loggers that log somewhere (not ``mode: disabled``)."""
    runs = [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    return [run for run in runs if not getattr(run, "disabled", False)]


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
    """Stores the fully resolved CLI config: as the W&B run's config and as ``config.yaml`` in its files (beside the
    checkpoints when W&B is disabled, in ``trainer.log_dir`` without a W&B logger); as ``config.yaml`` in the
    checkpoint folder of a fit; and, as YAML text, in every checkpoint (``CONFIG_KEY``), which is what ``ate-train
    validate|test --ckpt_path`` reads when no model is configured. Lightning calls ``save_config`` on rank zero.

    Use with ``save_config_kwargs={"save_to_log_dir": False, "config_filename": "cli_config.yaml"}``: a W&B
    logger's log dir is shared by all runs, and W&B writes its own ``config.yaml`` into the run's files.
    """

    def text(self) -> str:
        """The resolved config as YAML."""
        return self.parser.dump(self.config, skip_none=False)

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

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The checkpoint callbacks resolved their folders in their own setup, which runs after this one's.
        if not trainer.is_global_zero:
            return
        folders = {c.dirpath for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath}
        for folder in folders:
            Path(folder).mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(folder) / CONFIG_BESIDE_CHECKPOINTS, self.text())

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.text()


class LogCheckpointArtifacts(Callback):
    """At the end of a fit (rank zero), logs the best and the last checkpoint of every ``ModelCheckpoint`` as
    ``model`` artifacts of the run (aliases ``best`` and ``latest``; one artifact with both when they are the same
    file). ate-train adds it to every ``fit``; ate-train-experts logs its final checkpoints itself."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        aliases: dict[Path, list[str]] = {}
        last: set[Path] = set()
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint):
                for path, alias in ((callback.best_model_path, "best"), (callback.last_model_path, "latest")):
                    if path and Path(path).is_file():
                        aliases.setdefault(Path(path), []).append(alias)
                last.add(Path(callback.last_model_path))
        for run in wandb_runs(trainer):
            for path, names in aliases.items():
                log_checkpoint(run, path, pl_module.hparams, names, copy=path in last)  # a resumed fit rewrites it

"""Switches an expert's training stage at epoch boundaries (docs/design.md §4).

At the start of every epoch the callback finds the epoch's stage; on entering a new stage (or resuming inside one)
it freezes the stage's leading blocks, builds its distillation teacher and restarts the learning-rate schedule
(warm-up + cosine within the stage, on the continuing global step). ``stage`` is logged. The data mix follows on
its own: ExpertDataModule rebuilds the train loader for each epoch's stage before this hook runs.
"""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_modules.lr_schedules import restart_schedule


def set_frozen_blocks(model: nn.Module, frozen_blocks: int) -> None:
    """Train everything except the first ``frozen_blocks`` blocks (and, if > 0, the patch and position
    embeddings and the class token: the parameters of the ViT module itself)."""
    BaseFinetuning.make_trainable(model)
    if frozen_blocks:
        vit = model.vit
        BaseFinetuning.freeze([vit.patch_embed, *vit.blocks[:frozen_blocks]])
        BaseFinetuning.freeze_module(vit)  # its own parameters only: class token and position embedding


class StageSwitchCallback(Callback):
    """Applies the ExpertModule's stage schedule; ExpertModule adds it through ``configure_callbacks``.

    The module provides ``stages``, ``locate_stage(epoch)``, ``model``, ``set_teacher`` and ``active_stage``.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.active_stage = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        index, first_epoch = pl_module.locate_stage(trainer.current_epoch)
        if index != pl_module.active_stage:
            self._enter_stage(trainer, pl_module, index, first_epoch)
        pl_module.log("stage", float(index), on_step=False, on_epoch=True)

    def _enter_stage(self, trainer: Trainer, pl_module: LightningModule, index: int, first_epoch: int) -> None:
        stage = pl_module.stages[index]
        batches = trainer.num_training_batches
        # Derived from the epoch rather than remembered, so that a resumed run gets the same schedule.
        start = trainer.global_step - (trainer.current_epoch - first_epoch) * batches
        total = stage.epochs * batches
        if trainer.max_steps > 0:  # a static expert's step budget can end the last stage early
            total = min(total, trainer.max_steps - start)
        set_frozen_blocks(pl_module.model, stage.frozen_blocks)
        pl_module.set_teacher(stage.kd_weight > 0)
        if stage.kd_weight > 0 and trainer.current_epoch != first_epoch:
            rank_zero_warn(
                f"Resumed inside distillation stage {index}: its teacher is rebuilt from the resumed weights, not "
                "from the weights at the stage's start."
            )
        config = trainer.lr_scheduler_configs[0]
        config.scheduler = restart_schedule(
            config.scheduler.optimizer,
            stage.lr,
            round(stage.warmup_epochs * batches),
            total,
            trainer.global_step - start,
        )
        pl_module.active_stage = index

"""Switches an expert's training stage at epoch boundaries (DESIGN section 4).

At the start of every epoch: find the epoch's stage; on entering a new stage, freeze its leading blocks and build
its distillation teacher; point the learning-rate schedule at the stage (warm-up + cosine within the stage, on the
continuing global step); log ``stage``. The data mix follows on its own: ExpertDataModule rebuilds the train loader
for each epoch's stage before this hook runs.
"""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn


def set_frozen_blocks(model: nn.Module, frozen_blocks: int) -> None:
    """Train everything except the first ``frozen_blocks`` blocks (and the patch/position embeddings if > 0)."""
    model.requires_grad_(True)
    if frozen_blocks == 0:
        return
    vit = model.vit
    for module in (vit.patch_embed, *vit.blocks[:frozen_blocks]):
        module.requires_grad_(False)
    for name in ("cls_token", "reg_token", "pos_embed"):
        param = getattr(vit, name, None)
        if isinstance(param, nn.Parameter):
            param.requires_grad_(False)


class StageSwitchCallback(Callback):
    """Applies the ExpertModule's stage schedule; ExpertModule adds it through ``configure_callbacks``.

    The module provides ``stages``, ``locate_stage(epoch)``, ``model``, ``set_teacher``, ``lr_factor`` and the
    ``active_stage``/``lr_plan`` attributes (duck-typed, so that callbacks do not import lightning_modules).
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.active_stage = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        index, first_epoch = pl_module.locate_stage(trainer.current_epoch)
        stage = pl_module.stages[index]
        batches = trainer.num_training_batches
        # Derived from the epoch rather than remembered, so that a resumed run gets the same schedule.
        start = trainer.global_step - (trainer.current_epoch - first_epoch) * batches
        total = stage.epochs * batches
        if trainer.max_steps > 0:  # a static expert's step budget can end the last stage early
            total = min(total, trainer.max_steps - start)
        if index != pl_module.active_stage:
            set_frozen_blocks(pl_module.model, stage.frozen_blocks)
            pl_module.set_teacher(stage.kd_weight > 0)
            if stage.kd_weight > 0 and trainer.current_epoch != first_epoch:
                rank_zero_warn(
                    f"Resumed inside distillation stage {index}: its teacher is rebuilt from the resumed weights, "
                    "not from the weights at the stage's start."
                )
            pl_module.active_stage = index
        pl_module.lr_plan = (start, round(stage.warmup_epochs * batches), total, stage.lr)
        # The scheduler last set the LR with the previous plan; apply the new one before this epoch's first step.
        for config in trainer.lr_scheduler_configs:
            for group, base_lr in zip(config.scheduler.optimizer.param_groups, config.scheduler.base_lrs, strict=True):
                group["lr"] = base_lr * pl_module.lr_factor(trainer.global_step)
        pl_module.log("stage", float(index), on_step=False, on_epoch=True)

"""Lightning callbacks and the W&B logger set-up."""

from callbacks.stage_switch import StageSwitchCallback
from callbacks.wandb_logging import SaveConfigToRun, SuiteWandbLogger

__all__ = ["SaveConfigToRun", "StageSwitchCallback", "SuiteWandbLogger"]

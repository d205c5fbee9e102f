"""Lightning callbacks and the W&B logger set-up."""

from callbacks.collaborative_eval import CollaborativeInferenceCallback
from callbacks.export_bundle import ExportBundleCallback
from callbacks.stage_switch import StageSwitchCallback
from callbacks.wandb_logging import SaveConfigToRun, SuiteWandbLogger

__all__ = [
    "CollaborativeInferenceCallback",
    "ExportBundleCallback",
    "SaveConfigToRun",
    "StageSwitchCallback",
    "SuiteWandbLogger",
]

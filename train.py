"""Train, validate and test the suite's models through LightningCLI.

    python train.py fit -c configs/generalist.yaml
    python train.py fit -c configs/generalist.yaml -c configs/trainer/gpu.yaml --data.data_dir data
    python train.py validate -c configs/generalist.yaml --ckpt_path runs/.../checkpoints/last.ckpt

Bad input (missing data, wrong checkpoint, bad subsets, ...) ends with a one-paragraph message and exit
code 2.
"""

from __future__ import annotations

import sys

import wandb
from lightning.pytorch.cli import LightningCLI

from callbacks.wandb_logging import SaveConfigToRun
from core.cli import run_command


class SuiteCLI(LightningCLI):
    """LightningCLI with the suite's config saving; model and data are chosen by ``class_path`` in configs."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"save_to_log_dir": False, "config_filename": "cli_config.yaml"},
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def _parse_ckpt_path(self) -> None:
        # Lightning would replace the --model.* values with the checkpoint's hyperparameters, silently
        # ignoring the config and the command line; here the config stays authoritative and the module's
        # on_load_checkpoint refuses a checkpoint of another architecture with a clear message.
        return


def main(args: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0, or 2 for bad input with its message printed, no traceback)."""
    code = run_command(lambda: SuiteCLI(args=args))
    _finish_wandb(code)
    return code


def _finish_wandb(exit_code: int) -> None:
    """End the W&B run this command started: a later main() in the same process would otherwise reuse it."""
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


if __name__ == "__main__":
    sys.exit(main())

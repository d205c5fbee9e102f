"""Train, validate and test the suite's models through LightningCLI (``ate-train``, or ``python train.py`` in a
checkout).

    ate-train fit -c configs/generalist.yaml
    ate-train fit -c configs/generalist.yaml -c configs/trainer/gpu.yaml --data.data_dir data
    ate-train validate -c configs/generalist.yaml --ckpt_path runs/.../checkpoints/last.ckpt
    ate-train validate --ckpt_path runs/.../checkpoints/last.ckpt [--data.data_dir data]

Without a model config (no ``-c`` file with a ``model:`` section, no ``--model.*``), ``validate`` and ``test``
rebuild the run from the checkpoint alone: the model and data from the hyperparameters Lightning recorded in it,
the trainer from the resolved config the fit recorded in it (callbacks.wandb_logging.SaveConfigToRun; the same
config is ``config.yaml`` beside a fit's checkpoints); later ``-c`` files and options still apply.

A ``-c configs/...`` file that is not in the working directory is the suite's own (ask_the_expert.utils.config_files).

Every checkpoint the command reads (``--ckpt_path``, ``--model.base_checkpoint``, ``--model.generalist_checkpoint``)
is checked before any work starts: readable, a Lightning checkpoint of this suite, of the expected role and
architecture. Bad input (missing data, wrong checkpoint, bad subsets, ...) ends with a one-paragraph message and
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wandb
import yaml
from jsonargparse import ActionConfigFile
from lightning import Callback, Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ask_the_expert.method.splits import DataSplit
from ask_the_expert.tracking.artifacts import log_checkpoint
from ask_the_expert.tracking.run_identity import new_run_id, training_identity
from ask_the_expert.tracking.wandb_logger import wandb_dir, wandb_run_from_checkpoint
from ask_the_expert.utils.atomic import remove_abandoned, temporary_sibling, write_json_atomic, write_text_atomic
from ask_the_expert.utils.cli import run_command
from ask_the_expert.utils.config_files import SuiteConfigFile, find_config
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.fingerprint import cached_sha256, fingerprint
from ask_the_expert.utils.hashing import file_sha256
from ask_the_expert.utils.options import DataOptions
from callbacks.progress import plain_for_log_files
from callbacks.wandb_logging import LogCheckpointArtifacts, SaveConfigToRun, config_beside, wandb_runs
from lightning_modules.checkpoints import (
    CONFIG_KEY,
    checkpoint_entries,
    read_checkpoint,
    require_architecture,
    require_split,
)
from lightning_modules.precision import resolve_precision


@contextmanager
def refused_trainer_settings(options: str) -> Iterator[None]:
    """Building a Trainer: a setting Lightning refuses (``devices=0``, an unknown accelerator or precision, a GPU
    accelerator without a GPU, ``max_epochs=-2``) becomes a SuiteError naming ``options``."""
    try:
        yield
    except (MisconfigurationException, ValueError) as err:
        raise SuiteError(
            f"Lightning cannot build a Trainer from {options}: {' '.join(str(err).split())} Fix those options."
        ) from None


class SuiteArgumentParser(LightningArgumentParser):
    """Lightning's parser with ``-c/--config`` files under ``configs/`` found from any working directory."""

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("action") is ActionConfigFile:
            kwargs["action"] = SuiteConfigFile
        return super().add_argument(*args, **kwargs)


class SuiteCLI(LightningCLI):
    """LightningCLI with the suite's config saving and input checks; model and data are chosen by ``class_path``.

    Also: a bf16 precision on a CPU without native bf16 trains in fp32 (lightning_modules/precision.py); the W&B
    run's name, group, job type and tags are derived from the subcommand and the model when the config leaves them
    unset (ask_the_expert.tracking.run_identity), and its folder is ``wandb_folder`` or the trainer's
    ``default_root_dir`` (ask_the_expert.tracking.wandb_logger.wandb_dir); a fit resumed with ``--ckpt_path``
    continues the checkpoint's W&B run and logs its best and last checkpoints as model artifacts; validate and test
    without a model config rebuild the run from the checkpoint; and when the output is a log file rather than a
    terminal, the rich progress bar becomes plain periodic progress lines.
    """

    def __init__(
        self,
        args: list[str] | None = None,
        run: bool = True,
        exit_on_error: bool = True,
        wandb_folder: str | None = None,
    ) -> None:
        # exit_on_error=False: a bad argument raises (for commands that check the runs they will start).
        self.wandb_folder = wandb_folder
        super().__init__(
            parser_kwargs={"exit_on_error": exit_on_error, "prog": "ate-train"},
            parser_class=SuiteArgumentParser,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"save_to_log_dir": False, "config_filename": "cli_config.yaml"},
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        given = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        recorded = config_from_checkpoint(given)
        if recorded is None:
            super().parse_arguments(parser, args)
            return
        with warnings.catch_warnings():  # Lightning warns that sys.argv is ignored for ``args``: they are the same
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            # The checkpoint's run first: every -c file and option after it still applies.
            super().parse_arguments(parser, [given[0], "--config", recorded, *given[1:]])

    def _parse_ckpt_path(self) -> None:
        # Lightning would replace the --model.* values with the checkpoint's hyperparameters, silently ignoring
        # the config and the command line; here the config stays authoritative and check_inputs() refuses a
        # checkpoint of another role or architecture with a clear message.
        return

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        trainer = config.get("trainer", {})
        if "precision" in trainer:
            trainer["precision"] = resolve_precision(trainer["precision"], trainer.get("accelerator", "auto"))
        logger = trainer.get("logger")
        if not (hasattr(logger, "class_path") and logger.class_path.endswith("SuiteWandbLogger")):
            return
        args, model, data = logger.init_args, config.model, config.get("data")
        subcommand = self.subcommand or "fit"  # run=False: ate-train-experts' fits
        ckpt_path = config.get("ckpt_path")
        readable = ckpt_path is not None and Path(ckpt_path).is_file()
        if args.get("id") is None:
            resumed = wandb_run_from_checkpoint(ckpt_path) if subcommand == "fit" and readable else None
            args["id"] = resumed["run_id"] if resumed else new_run_id()
        derived = training_identity(
            subcommand,
            vars(model.init_args),
            vars(data.init_args) if data is not None and data.get("init_args") else {},
            config.get("seed_everything"),
            args["id"],
            args.get("preset"),
            file_sha256(ckpt_path) if subcommand != "fit" and readable else None,
        )
        for key, value in derived.items():
            if args.get(key) is None:
                args[key] = value
        if args.get("save_dir") is None:
            args["save_dir"] = self.wandb_folder or wandb_dir(trainer.get("default_root_dir") or ".")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Lightning settles on a progress bar in the Trainer's constructor, so the swap happens here; with
        # --trainer.enable_progress_bar false a config's bar is dropped (Lightning would refuse the combination).
        every = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is False:
            every = [c for c in every if not isinstance(c, ProgressBar)]
        if self.subcommand == "fit":
            every.append(LogCheckpointArtifacts())
        config["callbacks"] = plain_for_log_files(every)
        with refused_trainer_settings("the --trainer.* settings"):
            return super()._instantiate_trainer(config, [])

    def check_inputs(self) -> None:
        """Every checkpoint the run reads, before any work: ``--ckpt_path`` and the module's own inputs (role,
        architecture, the train/val split of the data). Lightning's own restore of ``--ckpt_path`` reads with
        ``weights_only=True`` as well (lightning_modules/checkpoints.py)."""
        split = DataSplit.of(self.datamodule)
        self.model.check_inputs(split)
        if not self.subcommand:
            return
        config = self.config[self.subcommand]
        if config.get("weights_only") is False:
            raise SuiteError(
                "--weights_only false would let torch.load run code that a checkpoint file carries; the suite reads "
                "every checkpoint with weights_only true (its own checkpoints hold tensors and plain data only). "
                "Leave --weights_only out."
            )
        self.config_init[self.subcommand]["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
            role = self.model.hparams.get("role")
            info = read_checkpoint(ckpt_path, "--ckpt_path", (role,) if role else None)
            require_architecture(
                info,
                self.model.hparams,
                "Use the config the checkpoint was trained with, or set those --model.* values to the checkpoint's.",
            )
            require_split(info, split)

    def before_fit(self) -> None:
        self.check_inputs()

    def before_validate(self) -> None:
        self.check_inputs()

    def before_test(self) -> None:
        self.check_inputs()


def config_from_checkpoint(args: list[str]) -> str | None:
    """For ``validate`` / ``test`` with ``--ckpt_path`` and no model configured (no ``--model*`` option, no ``-c``
    file with a ``model`` section): the run the checkpoint records, as a YAML config (model and data from the
    hyperparameters Lightning saved, the trainer from the config the fit recorded, its W&B identity left to be
    derived anew); else None."""
    if not args or args[0] not in ("validate", "test"):
        return None
    options = dict(_option_values(args[1:]))
    configs = [value for name, value in _option_values(args[1:]) if name in ("-c", "--config")]
    if "--ckpt_path" not in options or any(name.startswith("--model") for name in options):
        return None
    if any("model" in (_read_yaml(find_config(c)) or {}) for c in configs):
        return None
    ckpt_path = options["--ckpt_path"]
    if ckpt_path in ("last", "best", "hpc") or not Path(ckpt_path).is_file():
        return None  # Lightning's names and missing files: the usual checks say what is wrong
    info = read_checkpoint(ckpt_path, "--ckpt_path")
    entries = checkpoint_entries(info, ["datamodule_hyper_parameters", CONFIG_KEY])
    recorded = yaml.safe_load(entries.get(CONFIG_KEY) or "{}") or {}
    out: dict[str, Any] = {key: recorded[key] for key in ("seed_everything",) if key in recorded}
    if isinstance(recorded.get("trainer"), dict):
        out["trainer"] = recorded["trainer"]
        logger = out["trainer"].get("logger")
        if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
            for key in ("name", "group", "job_type", "tags", "id"):  # this run's own, derived again
                logger["init_args"].pop(key, None)
    for key, hparams in (("model", info.hparams), ("data", entries.get("datamodule_hyper_parameters"))):
        hparams = {k: v for k, v in dict(hparams or {}).items() if k != "_instantiator"}
        if "_class_path" in hparams:
            out[key] = {"class_path": hparams.pop("_class_path"), "init_args": hparams}
    if "model" not in out:
        raise SuiteError(
            f"--ckpt_path {ckpt_path!r} does not record which model class it holds (it was not written by ate-train), "
            "and no model is configured. Pass the config it was trained with: -c configs/... or --model.* options."
        )
    return yaml.safe_dump(out, sort_keys=False)


def _option_values(args: list[str]) -> list[tuple[str, str]]:
    """(option, value) pairs of ``--name value`` and ``--name=value`` arguments."""
    pairs = []
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            pairs.append((name, value if eq else (args[i + 1] if i + 1 < len(args) else "")))
    return pairs


def _read_yaml(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # the parser reports an unreadable config file itself


# ---------------------------------------------------------------------------------- runs built by other commands
@dataclass
class TrainingRun:
    """How the training runs of one kind are built through this CLI (ate-train-experts and ate-pipeline): LightningCLI
    config files in order, then option overrides with typed values, e.g. ``{"model.lr": 5.0e-4, "trainer.max_epochs":
    10, "model.stages": [{"epochs": 1, "rho": 0.5}]}`` (the dotted option names of ``ate-train fit --help``).

    Attributes:
        configs: LightningCLI config files, applied in order (``configs/...`` is the suite's own from any directory).
        overrides: option -> value, applied after the configs in order (a later run's value wins).
    """

    configs: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    def then(self, later: TrainingRun) -> TrainingRun:
        """This run's configs and overrides followed by ``later``'s (which win)."""
        return TrainingRun([*self.configs, *later.configs], {**self.overrides, **later.overrides})

    def found(self) -> TrainingRun:
        """The same run with its config paths found from any working directory (utils.config_files)."""
        return TrainingRun([find_config(c) for c in self.configs], dict(self.overrides))

    def args(self) -> list[str]:
        """The LightningCLI arguments: ``-c`` per config, then ``--<option>=<value>`` per override (strings as
        they are, every other value as JSON, which the CLI reads as YAML)."""
        configs = [a for c in self.configs for a in ("-c", c)]
        return [*configs, *(f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in self.overrides.items())]


def data_overrides(data: DataOptions) -> dict[str, Any]:
    """The data folder and split of a training run (loader settings stay the configs')."""
    return {f"data.{name}": getattr(data, name) for name in ("data_dir", "check_integrity", "val_size", "split_seed")}


def suite_cli(cli_args: list[str], what: str = "this run", wandb_folder: str | None = None) -> SuiteCLI:
    """This CLI, configured from ``cli_args`` and instantiated, without running a subcommand (its W&B runs in
    ``wandb_folder`` unless the arguments name one): a bad argument is a SuiteError naming ``what``."""
    with warnings.catch_warnings():
        # LightningCLI warns that sys.argv is ignored in favour of ``args``, which is the point here.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        try:
            return SuiteCLI(args=cli_args, run=False, exit_on_error=False, wandb_folder=wandb_folder)
        except argparse.ArgumentError as err:
            raise SuiteError(
                f"The arguments of {what} are not accepted: {' '.join(str(err).split())} Fix the config or the "
                "configs / overrides that set them."
            ) from None


def run_record(cli_args: list[str], test: bool, inputs: Mapping[str, Path]) -> dict[str, Any]:
    """What one training run is made from: its command line and the content of the files it reads (``inputs``:
    configs, partition, start and routing checkpoints). A finished run is reused only when this matches
    (``reusable``); the code is left out, so that an edit of the suite does not retrain finished models."""
    return fingerprint("train", {"cli": cli_args, "test": test}, dict(inputs), code_roots=())


def finished_checkpoint(target: Path) -> dict[str, Any] | None:
    """The record of the finished run at ``target`` (``run`` in ``<target>.json``) when the checkpoint reads back
    whole (its sha256 is the one recorded when it was written), else None."""
    try:
        run = json.loads(target.with_suffix(".json").read_text(encoding="utf-8"))["run"]
        whole = target.is_file() and cached_sha256(target) == run["checkpoint_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run if whole else None


def reusable(target: Path, record: Mapping[str, Any]) -> str | None:
    """None when the finished run at ``target`` was made from ``record``'s inputs and reads back whole; else why not
    ("" when nothing is there, a reason when a checkpoint is there but must be trained again)."""
    run = finished_checkpoint(target)
    if run is None:
        return "it does not read back whole (damaged, or not written by this command)" if target.exists() else ""
    if run.get("fingerprint") != record["fingerprint"]:
        return "its inputs changed (arguments, configs or input checkpoints)"
    return None


def run_training(
    cli_args: list[str],
    target: Path,
    test: bool,
    inputs: Mapping[str, Path] | None = None,
    wandb_folder: str | None = None,
) -> dict[str, float]:
    """Fit (and test) one model through SuiteCLI; its final checkpoint lands at ``target`` only when complete, with
    its metrics beside it (``target`` with ``.json``, also holding ``run``: the ``run_record`` of ``cli_args`` and
    ``inputs`` and the checkpoint's sha256), its resolved config (``<name>.config.yaml``) and, when logged to W&B,
    as the run's ``model`` artifact."""
    record = run_record(cli_args, test, inputs or {})
    cli = suite_cli(cli_args, wandb_folder=wandb_folder)
    cli.check_inputs()
    trainer = cli.trainer
    began = time.perf_counter()
    trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - began
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    # Throughput of the whole fit (validation included): optimizer steps x global batch / wall time.
    images = trainer.global_step * cli.datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    metrics.update(train_seconds=round(seconds, 2), train_images_per_s=round(images / max(seconds, 1e-9), 1))
    remove_abandoned(target, ".tmp")
    tmp = temporary_sibling(target, ".tmp")
    try:
        trainer.save_checkpoint(tmp)
        if test:
            trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        metrics["global_step"] = trainer.global_step
        if trainer.is_global_zero:
            metrics["run"] = {"fingerprint": record["fingerprint"], "checkpoint_sha256": file_sha256(tmp)}
            write_json_atomic(target.with_suffix(".json"), metrics, sort_keys=True)
            write_text_atomic(config_beside(target), cli.parser.dump(cli.config, skip_none=False))
            os.replace(tmp, target)  # last: the checkpoint's presence means the run is complete
            for run in wandb_runs(trainer):
                log_checkpoint(run, target, cli.model.hparams)
    finally:
        tmp.unlink(missing_ok=True)
    if wandb.run is not None:  # the next run in this process must start its own W&B run
        wandb.finish()
    return metrics


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

"""Export a deployment bundle at the end of a fit (ask_the_expert.deploy.export.export_bundle), optionally as a W&B
artifact.

The model being trained becomes one member of the bundle:

- ``as_role: generalist``: it is the generalist; ``expert_checkpoints`` (may be empty: a generalist-only bundle)
  are the experts;
- ``as_role: expert``: it is an expert (its ``expert_index`` and ``subset`` from its hyperparameters);
  ``generalist_checkpoint`` and ``expert_checkpoints`` (the other experts) complete the partition.

Config example (trainer.callbacks)::

    - class_path: callbacks.export_bundle.ExportBundleCallback
      init_args:
        out_dir: runs/bundles/generalist-v1
        expert_checkpoints: [runs/experts/]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning import Callback, LightningModule, Trainer

from ask_the_expert.deploy.export import export_bundle
from ask_the_expert.method.router import FIT, RouterSpec
from ask_the_expert.tracking.artifacts import log_bundle_artifact
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from callbacks.wandb_logging import wandb_runs
from datamodules.cifar100 import CIFAR100DataModule, labelled_images


class ExportBundleCallback(Callback):
    """At the end of ``fit`` (rank 0), export the trained model with the given checkpoints as a bundle.

    Args:
        out_dir: the bundle folder (refused if it exists, unless ``force``).
        as_role: what the trained model is in the bundle: ``generalist`` or ``expert``.
        generalist_checkpoint: the generalist (required with ``as_role: expert``).
        expert_checkpoints: expert checkpoints (files, folders or globs); with ``as_role: expert`` the others.
        checkpoint: ``best`` exports the ModelCheckpoint's best weights when there are any, ``last`` the weights
            at the end of fit (saved next to the bundle as ``<out_dir>.ckpt``, the manifest's source).
        tau, k, confidence, temperature: the deployed router (ask_the_expert.method.router.RouterSpec;
            temperature ``fit`` and tau null are chosen on val).
        gap, torch_export, force: as ``ask_the_expert.deploy.export.export_bundle``.
        use_val: evaluate on the datamodule's val split (all classes, same data_dir and split) to fit the
            temperature, choose tau when not given, and record val accuracies.
        log_artifact: log the bundle as a W&B ``deploy-bundle`` artifact (with its files) when the run logs to W&B.
    """

    def __init__(
        self,
        out_dir: str,
        as_role: Literal["generalist", "expert"] = "generalist",
        generalist_checkpoint: str | None = None,
        expert_checkpoints: list[str] | None = None,
        checkpoint: Literal["best", "last"] = "best",
        tau: float | None = None,
        k: int = 1,
        confidence: str = "max_prob",
        temperature: float | str = FIT,
        gap: float = 0.005,
        use_val: bool = True,
        torch_export: bool = False,
        force: bool = False,
        log_artifact: bool = True,
    ) -> None:
        if as_role not in ("generalist", "expert"):
            raise SuiteError(f"ExportBundleCallback as_role must be 'generalist' or 'expert', got {as_role!r}.")
        if as_role == "expert" and not generalist_checkpoint:
            raise SuiteError(
                "ExportBundleCallback with as_role: expert needs generalist_checkpoint (and the other experts in "
                "expert_checkpoints) to build a complete bundle."
            )
        if checkpoint not in ("best", "last"):
            raise SuiteError(f"ExportBundleCallback checkpoint must be 'best' or 'last', got {checkpoint!r}.")
        self.out_dir = Path(out_dir)
        self.as_role = as_role
        self.generalist_checkpoint = generalist_checkpoint
        self.expert_checkpoints = list(expert_checkpoints or [])
        self.checkpoint = checkpoint
        self.routing = RouterSpec(k=k, confidence=confidence, temperature=temperature, tau=tau)
        self.options = dict(gap=gap, torch_export=torch_export, force=force)
        self.use_val = use_val
        self.log_artifact = log_artifact
        self.manifest: dict | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Fail before training, not after it.
        if stage == "fit" and self.out_dir.exists() and not self.options["force"]:
            raise SuiteError(
                f"ExportBundleCallback: the bundle folder {self.out_dir} already exists; choose another out_dir "
                "or set force: true."
            )

    def _trained_checkpoint(self, trainer: Trainer) -> Path:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if self.checkpoint == "best" and best:
            return Path(best)
        path = self.out_dir.with_name(f"{self.out_dir.name}.ckpt")
        trainer.save_checkpoint(path)
        return path

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trained = self._trained_checkpoint(trainer)  # collective in DDP: every rank takes part
        if not trainer.is_global_zero:
            return
        if self.as_role == "generalist":
            generalist, experts = trained, self.expert_checkpoints
        else:
            generalist, experts = Path(self.generalist_checkpoint), [*self.expert_checkpoints, trained]
        data = None
        dm = trainer.datamodule
        if self.use_val and isinstance(dm, CIFAR100DataModule):
            h = dm.hparams  # a fresh all-class val split: the fit's datamodule may be restricted to S_j
            options = DataOptions(
                data_dir=dm.data_dir,
                check_integrity=h.get("check_integrity", True),
                val_size=h.get("val_size", 5000),
                split_seed=h.get("split_seed", 0),
                num_workers=0,
            )
            data = labelled_images(options, "val")
        self.manifest = export_bundle(
            generalist, experts, self.out_dir, routing=self.routing, data=data, **self.options
        )
        for run in wandb_runs(trainer) if self.log_artifact else []:
            log_bundle_artifact(run, self.out_dir)  # offline too: ``wandb sync`` uploads the files later

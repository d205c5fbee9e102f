"""Expert ViT: a 100-way classifier specialised on a subset S_j of the classes (docs/design.md §4).

One expert is one run: it starts from the stage-0 base checkpoint (progressive, static-from-base) or from the same
seeded initial weights as stage 0 (static-from-init), and trains through a list of stages that switch at epoch
boundaries (StageSwitchCallback) with one continuous global step.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ConstantLR
from torchmetrics.classification import MulticlassAccuracy

from ask_the_expert.method.cifar100_classes import NUM_CLASSES
from ask_the_expert.method.router import FIT, check_temperature
from ask_the_expert.method.splits import DataSplit
from ask_the_expert.method.stages import Stage, locate, parse_stages, static_epochs
from ask_the_expert.method.subsets import parse_partition_spec
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.hashing import file_sha256
from datamodules.cifar100 import CifarImages
from datamodules.expert_data import ExpertDataModule
from lightning_modules.checkpoints import module_state, read_checkpoint, require_architecture, require_split
from lightning_modules.classifier import ClassifierModule
from lightning_modules.routed_in import generalist_logits, routed_in_mask, routing_temperature
from lightning_modules.stage_switch import StageSwitchCallback

PartitionSpec = str | int | list[list[int | str]] | dict[str, list[list[int]]] | None
BASE_OPTION = "--model.base_checkpoint"
# Hyperparameters an expert run records about its inputs (not arguments): kept when a checkpoint is restored.
RECORDED = ("partition_spec", "base_checkpoint_sha256", "generalist_checkpoint_sha256", "routing_temperature_used")
GENERALIST_OPTION = "--model.generalist_checkpoint"


def resolve_expert(
    subset: list[int] | None, expert_index: int | None, partition: list[list[int]]
) -> tuple[list[int], int | None]:
    """(subset, expert index) from an explicit subset and/or an index into the partition."""
    n = len(partition)
    if expert_index is not None:
        if isinstance(expert_index, bool) or not 0 <= expert_index < n:
            raise SuiteError(
                f"--model.expert_index {expert_index!r} is out of range: the partition has {n} experts, so use "
                f"0..{n - 1}."
            )
        chosen = partition[expert_index]
        if subset is not None and sorted(subset) != chosen:
            raise SuiteError(
                f"--model.subset {sorted(subset)} is not expert {expert_index}'s subset {chosen} of the partition; "
                "give only one of --model.subset and --model.expert_index, or make them agree."
            )
        return list(chosen), expert_index
    if subset is None:
        raise SuiteError(
            "An expert needs its classes: pass --model.expert_index (with --model.partition) or --model.subset."
        )
    bad = [c for c in subset if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < NUM_CLASSES]
    if not subset or bad or len(set(subset)) != len(subset):
        raise SuiteError(
            f"--model.subset {subset!r} must be a non-empty list of distinct class indices 0..{NUM_CLASSES - 1}."
        )
    ordered = sorted(subset)
    return ordered, partition.index(ordered) if ordered in partition else None


class ExpertModule(ClassifierModule):
    """An expert for the fine classes of ``subset`` (its head stays 100-way).

    Args:
        subset: the expert's fine classes S_j; or leave it out and give ``expert_index``.
        expert_index: which subset of ``partition`` this expert owns.
        partition: the experts' subsets (ask_the_expert.method.subsets.parse_partition_spec: ``superclass``, g,
            superclass groups, a partition file, or ``{subsets: [[fine classes], ...]}``); resolves ``expert_index``
            and routes (R_j). Checkpoints store the resolved subsets (and the spec as ``partition_spec``).
        base_checkpoint: stage-0 checkpoint to start from (role base, same architecture); None starts from the
            seeded init.
        stages: the schedule, a list of mappings with the fields of ask_the_expert.method.stages.Stage. None: one
            stage on S_j only (rho 1) with ``lr``/``warmup_epochs`` for ``trainer.max_epochs`` epochs.
        generalist_checkpoint: the edge generalist whose Top-k routing defines R_j (stages with ``routed_in``, and
            the ``*/routed_in_acc`` metrics).
        routing_k: k of the Top-k routing that defines R_j.
        routing_temperature: softmax temperature of that routing: ``fit`` (default) fits it on the generalist's
            val logits, as the evaluation does, so that R_j holds the images the evaluation routes here.
        routing_cache_dir: where the generalist's logits over the data files are cached.
        static_steps: a step budget for a single-stage (static) expert: the stage runs until this many optimizer
            steps, its cosine schedule ending there (ate-train-experts sets it,
            ask_the_expert.method.stages.static_step_budget).
        **kwargs: the ClassifierModule arguments (architecture, optimisation, regularisation, compile).

    Checkpoints record ``subset``, ``expert_index``, ``role="expert"``, the stage list, ``base_checkpoint`` and its
    sha256, the generalist's sha256 and the routing temperature in their hyperparameters.
    """

    def __init__(
        self,
        subset: list[int] | None = None,
        expert_index: int | None = None,
        partition: PartitionSpec = "superclass",
        base_checkpoint: str | None = None,
        stages: list[dict[str, Any]] | None = None,
        generalist_checkpoint: str | None = None,
        routing_k: int = 1,
        routing_temperature: float | str = FIT,
        routing_cache_dir: str = "runs/cache",
        static_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        # Restoring a checkpoint passes back every hyperparameter, including what the run only recorded.
        role = kwargs.pop("role", "expert")
        if role != "expert":
            raise SuiteError(f"ExpertModule is the expert role; got role={role!r}. Use ClassifierModule for {role}.")
        recorded = {key: kwargs.pop(key) for key in RECORDED if key in kwargs}
        kwargs.setdefault("arch", "vit_small")  # docs/design.md §2: experts have the ViT-Small shape
        super().__init__(role="expert", **kwargs)
        self.save_hyperparameters()
        self.hparams.update(recorded)
        self.partition = parse_partition_spec(partition)
        self.subset, self.expert_index = resolve_expert(subset, expert_index, self.partition)
        # The resolved subsets travel with the checkpoint: restoring it needs no partition file.
        self.hparams.update(subset=self.subset, expert_index=self.expert_index, partition={"subsets": self.partition})
        if not (isinstance(partition, dict) and set(partition) == {"subsets"}):
            self.hparams["partition_spec"] = partition
        default = [{"epochs": 1, "lr": self.hparams.lr, "warmup_epochs": self.hparams.warmup_epochs, "rho": 1.0}]
        self.stages: list[Stage] = parse_stages(
            default if stages is None else stages, len(self.model.blocks), generalist_checkpoint is not None
        )
        if isinstance(routing_k, bool) or not isinstance(routing_k, int) or routing_k < 1:
            raise SuiteError(f"--model.routing_k must be an integer >= 1, got {routing_k!r}.")
        check_temperature(routing_temperature)
        if generalist_checkpoint is not None and self.expert_index is None:
            raise SuiteError(
                f"Routing needs the expert's place in the partition, but --model.subset {self.subset} is none of its "
                "subsets; pass the --model.partition it belongs to, or --model.expert_index."
            )
        if static_steps is not None and (len(self.stages) != 1 or static_steps < 1):
            raise SuiteError(
                f"--model.static_steps ({static_steps}) is for static experts: give exactly one stage and a budget "
                ">= 1 (ate-train-experts computes it from the progressive schedule)."
            )
        in_subset = torch.zeros(self.hparams.num_classes, dtype=torch.bool)
        in_subset[self.subset] = True
        self.register_buffer("in_subset", in_subset, persistent=False)
        self.expert_val = self._expert_metrics()
        self.expert_test = self._expert_metrics()
        self.routed_in: dict[str, torch.Tensor] = {}  # split -> bool per file index (val uses the train file)
        self.active_stage: int | None = None
        self._teacher: nn.Module | None = None

    def _expert_metrics(self) -> nn.ModuleDict:
        n = self.hparams.num_classes
        names = ("subset_acc", "subset_restricted_acc", "routed_in_acc")
        return nn.ModuleDict({name: MulticlassAccuracy(n, average="micro") for name in names})

    def configure_callbacks(self) -> list:
        return [StageSwitchCallback()]

    def check_inputs(self, data_split: DataSplit | None = None) -> None:
        """Read the base and generalist checkpoints (role, architecture, train/val split) before any work starts."""
        if self.hparams.base_checkpoint is not None:
            info = read_checkpoint(self.hparams.base_checkpoint, BASE_OPTION, ("base",))
            require_architecture(
                info,
                self.hparams,
                "Train stage 0 with the expert's architecture (configs/base.yaml with the same --model.* shape), or "
                "set the expert's --model.* shape to the base's.",
            )
            require_split(info, data_split)
        if self.hparams.generalist_checkpoint is not None:
            info = read_checkpoint(self.hparams.generalist_checkpoint, GENERALIST_OPTION, ("generalist",))
            require_split(info, data_split)

    # ----- schedule -------------------------------------------------------------------------------------------
    def locate_stage(self, epoch: int) -> tuple[int, int]:
        """(index of the stage of a 0-based epoch, first epoch of that stage)."""
        return locate(self.stages, epoch)

    def mix_for_epoch(self, epoch: int) -> tuple[float, str]:
        stage = self.stages[self.locate_stage(epoch)[0]]
        return stage.rho, stage.rest

    def configure_optimizers(self) -> dict[str, Any]:
        # The classifier's AdamW; StageSwitchCallback replaces this placeholder schedule at every stage start.
        optimizer = self.optimizer()
        scheduler = ConstantLR(optimizer, factor=1.0, total_iters=0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def set_teacher(self, enabled: bool) -> None:
        """Freeze a copy of the current weights as the distillation teacher (or drop it)."""
        teacher = copy.deepcopy(self.model).eval().requires_grad_(False) if enabled else None
        # Bypass nn.Module registration: the teacher is neither trained nor saved in checkpoints.
        object.__setattr__(self, "_teacher", teacher)

    # ----- setup ----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        trainer = self.trainer
        datamodule = trainer.datamodule
        if not isinstance(datamodule, ExpertDataModule):
            raise SuiteError(
                "ExpertModule trains and evaluates with datamodules.expert_data.ExpertDataModule (it mixes the subset "
                "into each batch); set data.class_path to it, as configs/expert.yaml does."
            )
        self.check_inputs(DataSplit.of(datamodule))
        if stage == "fit":
            self._fix_epochs(datamodule)
            # Also when resuming (--ckpt_path): Lightning restores the run's weights after setup, over these.
            if self.hparams.base_checkpoint is not None:
                self._load_base()
        routed_train = np.empty(0, dtype=np.int64)
        if self.hparams.generalist_checkpoint is not None:
            masks = self._routed_in_masks(datamodule)
            if "train" in masks:
                self.routed_in["val"] = torch.from_numpy(masks["train"])
                routed_train = np.flatnonzero(masks["train"])
            if "test" in masks:
                self.routed_in["test"] = torch.from_numpy(masks["test"])
        datamodule.set_expert(self.subset, self.mix_for_epoch, routed_train)

    def _fix_epochs(self, datamodule: ExpertDataModule) -> None:
        """Make the trainer's epoch (and step) limits those of the stage list."""
        fit_loop = self.trainer.fit_loop
        if self.hparams.stages is None:
            self.stages = [Stage(**{**self.stages[0].__dict__, "epochs": max(1, self.trainer.max_epochs or 1)})]
        if self.hparams.static_steps is not None:
            batches = datamodule.stage_batches(self.subset, self.stages[0].rho)
            epochs = static_epochs(self.hparams.static_steps, batches)
            self.stages = [Stage(**{**self.stages[0].__dict__, "epochs": epochs})]
            fit_loop.epoch_loop.max_steps = self.hparams.static_steps
        fit_loop.max_epochs = sum(s.epochs for s in self.stages)

    def _load_base(self) -> None:
        info = read_checkpoint(self.hparams.base_checkpoint, BASE_OPTION, ("base",))
        self.model.load_state_dict(module_state(info))
        self.hparams["base_checkpoint_sha256"] = file_sha256(info.path)

    def _routed_in_masks(self, datamodule: ExpertDataModule) -> dict[str, np.ndarray]:
        """bool per image of each data file on disk: in R_j. Rank 0 fills the logits cache; the others then read it."""
        hp = self.hparams
        strategy = self.trainer.strategy
        files = {"train": datamodule.train_file, "test": datamodule.test_file}
        files = {split: data for split, data in files.items() if data is not None}
        info = read_checkpoint(hp.generalist_checkpoint, GENERALIST_OPTION, ("generalist",))
        self.hparams["generalist_checkpoint_sha256"] = file_sha256(info.path)

        def logits(split: str) -> np.ndarray:
            images = CifarImages(files[split], np.arange(len(files[split])), datamodule.eval_transform)
            return generalist_logits(
                info, images, hp.routing_cache_dir, split, datamodule.eval_batch_size, strategy.root_device
            )

        if self.trainer.global_rank == 0:
            for split in files:
                logits(split)
        strategy.barrier("routed_in")
        by_split = {split: logits(split) for split in files}
        if "train" not in by_split and hp.routing_temperature == FIT:
            raise SuiteError(
                "--model.routing_temperature fit needs the val split (the training file) to fit the generalist's "
                "temperature; pass a number (the evaluation's fitted temperature) for a test-only run."
            )
        temperature = routing_temperature(
            hp.routing_temperature, by_split.get("train"), datamodule.train_file, datamodule.val_indices
        )
        self.hparams["routing_temperature_used"] = temperature
        return {
            split: routed_in_mask(
                z, temperature, files[split].fine_labels, self.partition, self.expert_index, hp.routing_k
            )
            for split, z in by_split.items()
        }

    # ----- steps ----------------------------------------------------------------------------------------------
    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, loss = super().compute_loss(images, targets)
        stage = self.stages[self.active_stage or 0]
        if self._teacher is not None:
            t = stage.kd_temperature
            with torch.no_grad():
                teacher_logits = self._teacher(images)
            kd = F.kl_div(
                F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                reduction="batchmean",
            ) * (t * t)  # fmt: skip
            self.log("train/kd", kd, on_step=True, on_epoch=True)
            loss = stage.kd_weight * kd + (1.0 - stage.kd_weight) * loss
        return logits, loss

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        self.log("train/subset_share", self.in_subset[batch[1]].float().mean(), on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def _eval_step(self, batch: tuple, metrics: Any, prefix: str) -> torch.Tensor:
        logits = super()._eval_step(batch, metrics, prefix)
        labels, indices = batch[1], batch[2]
        expert = self.expert_val if prefix == "val/" else self.expert_test
        in_subset = self.in_subset[labels]
        if in_subset.any():
            expert["subset_acc"].update(logits[in_subset], labels[in_subset])
            restricted = logits[in_subset].masked_fill(~self.in_subset, float("-inf")).argmax(-1)
            expert["subset_restricted_acc"].update(restricted, labels[in_subset])
        lookup = self.routed_in.get(prefix.rstrip("/"))
        if lookup is not None:
            routed = lookup.to(indices.device)[indices]
            if routed.any():
                expert["routed_in_acc"].update(logits[routed], labels[routed])
        return logits

    def _log_eval_metrics(self, metrics: Any, prefix: str) -> None:
        super()._log_eval_metrics(metrics, prefix)
        expert = self.expert_val if prefix == "val/" else self.expert_test
        for name, metric in expert.items():
            if metric.update_count > 0:
                self.log(f"{prefix}{name}", metric.compute(), prog_bar=name == "subset_acc")
            metric.reset()

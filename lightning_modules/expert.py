"""Expert ViT: a 100-way classifier specialised on a subset S_j of the classes (DESIGN section 4).

One expert is one run: it starts from the stage-0 base checkpoint (progressive) or from the same initial weights as
stage 0 (static), and trains through a list of stages that switch at epoch boundaries (StageSwitchCallback) with one
continuous global step.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from callbacks.stage_switch import StageSwitchCallback
from core.cifar100 import NUM_CLASSES
from core.errors import SuiteError
from core.subsets import parse_partition_spec
from datamodules.cifar100 import CifarImages
from datamodules.expert_data import ExpertDataModule
from lightning_modules.generalist import ARCHITECTURE_KEYS, GeneralistModule, warmup_cosine
from lightning_modules.routed_in import file_sha256, generalist_top_k, routed_in_mask
from lightning_modules.stages import Stage, locate, parse_stages, static_epochs
from lightning_modules.vit_factory import Preset

PartitionSpec = str | int | list[list[int | str]] | None


def resolve_expert(
    subset: list[int] | None, expert_index: int | None, partition: list[list[int]]
) -> tuple[list[int], int | None]:
    """(subset, expert index) from an explicit subset and/or an index into the partition."""
    n = len(partition)
    if expert_index is not None:
        if isinstance(expert_index, bool) or not 0 <= expert_index < n:
            raise SuiteError(
                f"--model.expert_index {expert_index!r} is out of range: the partition has {n} experts, "
                f"so use 0..{n - 1}."
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


class ExpertModule(GeneralistModule):
    """An expert for the fine classes of ``subset`` (its head stays 100-way).

    Args:
        subset: the expert's fine classes S_j; or leave it out and give ``expert_index``.
        expert_index: which subset of ``partition`` this expert owns.
        partition: the experts' subsets (core.subsets.parse_partition_spec: ``superclass``, g, or superclass
            groups); needed to resolve ``expert_index`` and to route (R_j).
        base_checkpoint: stage-0 checkpoint to start from (same architecture); None starts from the seeded init.
        stages: the schedule, a list of mappings with the fields of lightning_modules.stages.Stage. None: one
            stage on S_j only (rho 1) with ``lr``/``warmup_epochs`` for ``trainer.max_epochs`` epochs.
        generalist_checkpoint: the edge generalist whose Top-k routing defines R_j (stages with ``routed_in``, and
            the ``*/routed_in_acc`` metrics).
        routing_k: k of the Top-k routing that defines R_j.
        routing_cache_dir: where the generalist's Top-k over the data files is cached.
        static_steps: a step budget for a single-stage (static) expert: the stage runs until this many optimizer
            steps, its cosine schedule ending there (train_experts.py sets it from the progressive schedule).
        other args: as GeneralistModule.

    Checkpoints record ``subset``, ``expert_index``, ``role="expert"``, the stage list, ``base_checkpoint`` and
    its sha256 in their hyperparameters.
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
        routing_cache_dir: str = "runs/cache",
        static_steps: int | None = None,
        arch: str = "vit_small",
        preset: Preset = "scratch32",
        pretrained_path: str | None = None,
        num_classes: int = 100,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        drop_path_rate: float = 0.1,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.0,
        compile: bool = False,
        compile_backend: str = "inductor",
        fetch_pretrained: bool = True,
    ) -> None:
        super().__init__(
            arch=arch,
            preset=preset,
            pretrained_path=pretrained_path,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            role="expert",
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing,
            compile=compile,
            compile_backend=compile_backend,
            fetch_pretrained=fetch_pretrained,
        )
        self.save_hyperparameters()
        self.partition = parse_partition_spec(partition)
        self.subset, self.expert_index = resolve_expert(subset, expert_index, self.partition)
        self.hparams.update(subset=self.subset, expert_index=self.expert_index, role="expert")
        default = [{"epochs": 1, "lr": lr, "warmup_epochs": warmup_epochs, "rho": 1.0}]
        self.stages: list[Stage] = parse_stages(
            default if stages is None else stages, len(self.model.blocks), generalist_checkpoint is not None
        )
        if routing_k < 1:
            raise SuiteError(f"--model.routing_k must be >= 1, got {routing_k}.")
        if generalist_checkpoint is not None and self.expert_index is None:
            raise SuiteError(
                f"Routing needs the expert's place in the partition, but --model.subset {self.subset} is none of "
                "its subsets; pass the --model.partition it belongs to, or --model.expert_index."
            )
        if static_steps is not None and (len(self.stages) != 1 or static_steps < 1):
            raise SuiteError(
                f"--model.static_steps ({static_steps}) is for static experts: give exactly one stage and a "
                "budget >= 1 (train_experts.py computes it from the progressive schedule)."
            )
        in_subset = torch.zeros(num_classes, dtype=torch.bool)
        in_subset[self.subset] = True
        self.register_buffer("in_subset", in_subset, persistent=False)
        self.expert_val = self._expert_metrics()
        self.expert_test = self._expert_metrics()
        self.routed_in: dict[str, torch.Tensor] = {}  # split -> bool per file index (val uses the train file)
        self.active_stage: int | None = None
        self.lr_plan: tuple[int, int, int, float] | None = None
        self._teacher: nn.Module | None = None

    def _expert_metrics(self) -> nn.ModuleDict:
        n = self.hparams.num_classes
        names = ("subset_acc", "subset_restricted_acc", "routed_in_acc")
        return nn.ModuleDict({name: MulticlassAccuracy(n, average="micro") for name in names})

    def configure_callbacks(self) -> list:
        return [StageSwitchCallback()]

    # ----- schedule -------------------------------------------------------------------------------------------
    def locate_stage(self, epoch: int) -> tuple[int, int]:
        """(index of the stage of a 0-based epoch, first epoch of that stage)."""
        return locate(self.stages, epoch)

    def mix_for_epoch(self, epoch: int) -> tuple[float, str]:
        stage = self.stages[self.locate_stage(epoch)[0]]
        return stage.rho, stage.rest

    def lr_factor(self, step: int) -> float:
        """Multiplier of the optimizer's base LR (``hparams.lr``) at a global step, under the current stage plan."""
        if self.lr_plan is None:
            return 1.0
        start, warmup, total, lr = self.lr_plan
        return lr / self.hparams.lr * warmup_cosine(step - start, warmup, total)

    def configure_optimizers(self) -> dict[str, Any]:
        # The generalist's AdamW (weight-decay groups); the schedule is per stage, driven by StageSwitchCallback.
        optimizer = super().configure_optimizers()["optimizer"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step))
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
                "ExpertModule trains and evaluates with datamodules.ExpertDataModule (it mixes the subset into "
                "each batch); set data.class_path to it, as configs/expert.yaml does."
            )
        if stage == "fit":
            self._fix_epochs(datamodule)
            # Also when resuming (--ckpt_path): Lightning restores the run's weights after setup, over these.
            if self.hparams.base_checkpoint is not None:
                self._load_base(Path(self.hparams.base_checkpoint))
        routed_train = np.empty(0, dtype=np.int64)
        if self.hparams.generalist_checkpoint is not None:
            self.hparams["generalist_checkpoint_sha256"] = file_sha256(self.hparams.generalist_checkpoint)
            if datamodule.train_file is not None:
                mask = self._routed_in_mask(datamodule, "train")
                self.routed_in["val"] = torch.from_numpy(mask)
                routed_train = np.flatnonzero(mask)
            if datamodule.test_file is not None:
                self.routed_in["test"] = torch.from_numpy(self._routed_in_mask(datamodule, "test"))
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

    def _load_base(self, path: Path) -> None:
        if not path.is_file():
            raise SuiteError(
                f"The base checkpoint '{path}' does not exist. Train stage 0 first "
                "(`python train.py fit -c configs/base.yaml`, or train_experts.py does it) and pass its checkpoint."
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        found = checkpoint.get("hyper_parameters", {})
        diff = [k for k in ARCHITECTURE_KEYS if self.hparams.get(k) != found.get(k)]
        if diff:
            expected = ", ".join(f"{k}={self.hparams.get(k)!r}" for k in diff)
            got = ", ".join(f"{k}={found.get(k)!r}" for k in diff)
            raise SuiteError(
                f"The base checkpoint '{path}' is another architecture: expected {expected}, found {got}. Train "
                "stage 0 with the expert's architecture (configs/base.yaml with the same --model.* shape), or set "
                "the expert's --model.* shape to the base's."
            )
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        self.model.load_state_dict(weights)
        self.hparams["base_checkpoint_sha256"] = file_sha256(path)

    def _routed_in_mask(self, datamodule: ExpertDataModule, split: str) -> np.ndarray:
        """bool per image of the split's file: in R_j. Rank 0 fills the cache first; the others then read it."""
        data = datamodule.train_file if split == "train" else datamodule.test_file
        images = CifarImages(data, np.arange(len(data)), datamodule.eval_transform)
        hp = self.hparams
        strategy = self.trainer.strategy

        def top_k() -> tuple[np.ndarray, np.ndarray]:
            return generalist_top_k(
                hp.generalist_checkpoint, images, hp.routing_k, hp.routing_cache_dir, split,
                datamodule.eval_batch_size, strategy.root_device,
            )  # fmt: skip

        result = top_k() if self.trainer.global_rank == 0 else None
        strategy.barrier("routed_in")
        result = result or top_k()
        return routed_in_mask(*result, data.fine_labels, self.partition, self.expert_index)

    # ----- steps ----------------------------------------------------------------------------------------------
    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = self.training_loss(logits, labels)
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
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/subset_share", self.in_subset[labels].float().mean(), on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: tuple, metrics: Any, prefix: str) -> None:
        images, labels, indices = batch[0], batch[1], batch[2]
        logits = self(images)
        self.log(f"{prefix}loss", F.cross_entropy(logits, labels), sync_dist=True)
        metrics.update(logits.float().softmax(-1), labels)
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

    def _log_eval_metrics(self, metrics: Any, prefix: str) -> None:
        super()._log_eval_metrics(metrics, prefix)
        expert = self.expert_val if prefix == "val/" else self.expert_test
        for name, metric in expert.items():
            if metric.update_count > 0:
                self.log(f"{prefix}{name}", metric.compute(), prog_bar=name == "subset_acc")
            metric.reset()

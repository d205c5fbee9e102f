"""The ViT classifier LightningModule: a 100-way ViT whose role is the edge generalist or the stage-0 base.

ExpertModule (lightning_modules/expert.py) extends it with a subset and a stage schedule.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassStatScores

from ask_the_expert.method.cifar100_classes import FINE_TO_COARSE, NUM_CLASSES, SUPERCLASSES
from ask_the_expert.method.splits import DataSplit
from ask_the_expert.models.vit_factory import GlobalPool, Preset, Tokenizer, architecture_mismatch, create_vit
from ask_the_expert.utils.errors import SuiteError
from lightning_modules.lr_schedules import warmup_cosine

Role = Literal["generalist", "base", "expert"]


def check_training_numbers(
    lr: float,
    weight_decay: float,
    warmup_epochs: float,
    label_smoothing: float,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> None:
    """Optimisation and regularisation settings that torch would reject only once training starts (or silently
    misuse), refused when the module is built, before any data is read."""
    problems = [
        f"--model.{name} is {value!r} ({rule})"
        for name, value, ok, rule in (
            ("lr", lr, lr > 0, "use a number > 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, "use a number >= 0"),
            ("warmup_epochs", warmup_epochs, warmup_epochs >= 0, "use a number of epochs >= 0"),
            ("label_smoothing", label_smoothing, 0 <= label_smoothing < 1, "use a number in [0, 1)"),
            ("mixup_alpha", mixup_alpha, mixup_alpha >= 0, "use a number >= 0; 0 turns mixup off"),
            ("cutmix_alpha", cutmix_alpha, cutmix_alpha >= 0, "use a number >= 0; 0 turns cutmix off"),
        )
        if not ok  # NaN fails every comparison, so it is refused too
    ]
    if problems:
        raise SuiteError(f"Bad training settings: {'; '.join(problems)}.")


class ClassifierModule(LightningModule):
    """A 100-way ViT trained on all CIFAR-100 classes (role ``generalist`` or ``base``).

    Args:
        arch: ``vit_tiny`` (generalist), ``vit_small`` (base/experts) or ``vit_base``.
        preset: ``scratch32`` (32x32, patch 4, random init) or ``pretrained224`` (DeiT ImageNet weights, 224).
        pretrained_path: local weights file for ``pretrained224`` instead of the hub.
        fetch_pretrained: load the ``pretrained224`` ImageNet weights at construction; ``load_from_checkpoint``
            turns it off, since the checkpoint holds every weight (so restoring needs no network).
        embed_dim, depth, num_heads, patch_size: override the arch's shape (patch: scratch32 only).
        tokenizer: ``patch`` (timm's patch embedding) or ``conv`` (a conv stem of total stride ``patch_size``,
            ``ask_the_expert/models/conv_tokenizer.py``; scratch32 only), which learns far faster from scratch.
        mlp_ratio, global_pool: MLP width (default 4) and pooling (``token`` or ``avg``; default ``token`` for the
            patch tokenizer, ``avg`` for the conv tokenizer).
        stem_widths: the conv tokenizer's 3x3 convolution widths (the last log2(patch_size) stride 2, any before
            them stride 1; default: doubling up to embed_dim).
        role: what this model is in the collaboration: ``generalist`` (the edge model) or ``base`` (stage 0, the
            "one medium model" baseline); ExpertModule sets ``expert``. Recorded in checkpoints so that tools can
            refuse the wrong kind.
        lr, weight_decay, warmup_epochs: AdamW with linear warm-up then cosine decay, stepped per batch.
        label_smoothing, mixup_alpha, cutmix_alpha: regularisation; mixup/cutmix are off at 0.
        compile, compile_backend: ``torch.compile`` the network in place when a Trainer sets the model up
            (``nn.Module.compile``: parameter names, hence checkpoints, stay those of the eager model).
            ``inductor`` generates fused kernels; ``aot_eager`` only traces (the CPU tests use it).
        fused_adamw: torch's fused AdamW kernels instead of its default (foreach) implementation.

    Channels-last memory format is not offered: the ViT's only convolution is the patch embedding, under 0.2%
    of the FLOPs of ``scratch32`` models (about 2% at ``pretrained224``), so its layout cannot matter.
    """

    def __init__(
        self,
        arch: str = "vit_tiny",
        preset: Preset = "scratch32",
        pretrained_path: str | None = None,
        num_classes: int = NUM_CLASSES,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        patch_size: int | None = None,
        tokenizer: Tokenizer = "patch",
        mlp_ratio: float | None = None,
        global_pool: GlobalPool | None = None,
        stem_widths: list[int] | None = None,
        drop_path_rate: float = 0.1,
        role: Role = "generalist",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 5.0,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        compile: bool = False,
        compile_backend: str = "inductor",
        fused_adamw: bool = False,
        fetch_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_training_numbers(lr, weight_decay, warmup_epochs, label_smoothing, mixup_alpha, cutmix_alpha)
        self.model = create_vit(
            arch,
            preset,
            num_classes,
            pretrained_path,
            drop_path_rate,
            embed_dim,
            depth,
            num_heads,
            fetch_pretrained,
            patch_size,
            tokenizer,
            mlp_ratio,
            global_pool,
            stem_widths,
        )
        self.mixup = (
            Mixup(mixup_alpha, cutmix_alpha, label_smoothing=label_smoothing, num_classes=num_classes)
            if mixup_alpha > 0 or cutmix_alpha > 0
            else None
        )
        self.register_buffer("fine_to_coarse", torch.as_tensor(FINE_TO_COARSE), persistent=False)
        self._compiled = False
        # One 32x32 image: Lightning's model summary counts the FLOPs of a forward on it (else "Total FLOPs: 0").
        self.example_input_array = torch.zeros(1, 3, 32, 32)
        self.val_metrics = self._eval_metrics("val/")
        self.test_metrics = self._eval_metrics("test/")

    def _eval_metrics(self, prefix: str) -> MetricCollection:
        n = self.hparams.num_classes
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(n, average="micro"),
                "acc_top5": MulticlassAccuracy(n, top_k=min(5, n), average="micro"),
                "ece": MulticlassCalibrationError(n, n_bins=15),
                # Per class (tp, fp, tn, fn, support): a class absent from the split has support 0, where
                # MulticlassAccuracy(average="none") would report an accuracy of 0.
                "class_stats": MulticlassStatScores(n, average="none"),
            },
            prefix=prefix,
        )

    def configure_model(self) -> None:
        # Here rather than in __init__: only trainer runs compile; tools that load the module stay eager.
        if self.hparams.get("compile") and not self._compiled:
            self.model.compile(backend=self.hparams.compile_backend)
            self._compiled = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def check_inputs(self, data_split: DataSplit | None = None) -> None:
        """Check the files this module reads against the run's train/val split (none for a classifier; ExpertModule
        reads base and generalist)."""

    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) of a training batch; ``targets`` are class ids, or soft targets from mixup/cutmix."""
        logits = self(images)
        if targets.ndim == 2:
            return logits, SoftTargetCrossEntropy()(logits, targets)
        return logits, F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, targets = batch[0], batch[1]
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        _, loss = self.compute_loss(images, targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple, metrics: MetricCollection, prefix: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        self.log(f"{prefix}loss", F.cross_entropy(logits, labels), sync_dist=True)
        metrics.update(logits.float().softmax(-1), labels)
        return logits

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val/")

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test/")

    def _log_eval_metrics(self, metrics: MetricCollection, prefix: str) -> None:
        values = metrics.compute()
        metrics.reset()
        stats = values.pop(f"{prefix}class_stats")
        self.log_dict(values, prog_bar=True)
        # Superclass accuracy as the mean recall of its fine classes (exact on class-balanced splits).
        support = stats[:, 4]
        recall = stats[:, 0] / support.clamp(min=1)
        for j, name in enumerate(SUPERCLASSES):
            members = (self.fine_to_coarse == j) & (support > 0)
            if members.any():
                self.log(f"{prefix}superclass_acc/{name}", recall[members].float().mean())

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics(self.val_metrics, "val/")

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics(self.test_metrics, "test/")

    def predict_step(self, batch: tuple, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"logits": self(batch[0]), "labels": batch[1], "indices": batch[2]}

    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW without weight decay on norms, biases, tokens and position embeddings (timm's parameter groups)."""
        groups = param_groups_weight_decay(
            self.model, self.hparams.weight_decay, no_weight_decay_list=self.model.no_weight_decay()
        )
        # fused: one kernel per parameter group instead of torch's default foreach implementation.
        return torch.optim.AdamW(groups, lr=self.hparams.lr, fused=self.hparams.get("fused_adamw") or None)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = max(1, round(self.hparams.warmup_epochs * total / epochs))
        scheduler = warmup_cosine(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> ClassifierModule:
        # The checkpoint holds every weight: do not fetch the preset's ImageNet weights first (works offline).
        kwargs.setdefault("fetch_pretrained", False)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Refuse weights of another shape with a message rather than a state-dict size error.
        architecture_mismatch(self.hparams, checkpoint.get("hyper_parameters", {}), raise_as="--ckpt_path")

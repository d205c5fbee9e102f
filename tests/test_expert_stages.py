"""ExpertModule: stage validation, stage switching (freezing, LR, data mix), distillation, base/static starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer, seed_everything
from test_generalist import reference_factor

from ask_the_expert.method.stages import Stage, locate, parse_stages, schedule_steps, static_step_budget
from ask_the_expert.utils.errors import PartitionError, SuiteError
from benchmarks.common import quiet_trainer
from datamodules.cifar100 import CIFAR100DataModule
from datamodules.expert_data import ExpertDataModule
from lightning_modules.classifier import ClassifierModule
from lightning_modules.expert import ExpertModule
from lightning_modules.lr_schedules import restart_schedule

TINY = {"embed_dim": 16, "depth": 2, "num_heads": 2, "drop_path_rate": 0.0}
BATCH = 16


def datamodule(root: Path) -> ExpertDataModule:
    return ExpertDataModule(
        data_dir=str(root), check_integrity=False, val_size=100, batch_size=BATCH, num_workers=0, augmentation="none"
    )


def trainer(tmp_path: Path, callbacks: list | None = None, **kwargs) -> Trainer:
    return quiet_trainer(
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
        callbacks=callbacks or [],
        **kwargs,
    )


class Recorder(Callback):
    """Per training batch: epoch, LR, requires_grad of embeddings/blocks, subset share, file indices."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.block0: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        vit = module.model.vit
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "patch_grad": vit.patch_embed.proj.weight.requires_grad,
                "pos_grad": vit.pos_embed.requires_grad,
                "block_grad": [b.attn.qkv.weight.requires_grad for b in vit.blocks],
                "share": module.in_subset[batch[1]].float().mean().item(),
                "labels": batch[1].clone(),
                "indices": batch[2].clone(),
                "teacher": module._teacher,
            }
        )

    def on_train_epoch_start(self, trainer, module) -> None:
        self.block0.setdefault(trainer.current_epoch, []).append(module.model.vit.blocks[0].attn.qkv.weight.clone())

    def on_train_epoch_end(self, trainer, module) -> None:
        self.block0[trainer.current_epoch].append(module.model.vit.blocks[0].attn.qkv.weight.clone())


# ----- validation -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "empty"),
        ([{"epochs": 1, "rho": 1.2}], "outside"),
        ([{"epochs": 1, "rho": -0.5}], "outside"),
        ([{"epochs": -1}], "epochs=-1"),
        ([{"epochs": 1, "frozen_blocks": 3}], "model has 2"),
        ([{"epochs": 1, "rho": 0.5, "rest": "routed_in"}], "generalist_checkpoint"),
        ([{"epochs": 1, "rest": "elsewhere"}], "rest="),
        ([{"epochs": 1, "colour": "red"}], "unknown keys"),
        ([{"epochs": 1, "kd_weight": 0.5}], "previous stage"),
        ([{"epochs": 0}], "0 epochs in total"),
    ],
)
def test_bad_stage_lists_raise(stages: list, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        ExpertModule(expert_index=0, partition=5, stages=stages, **TINY)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"expert_index": 4, "partition": 5}, SuiteError, r"out of range.*0\.\.3"),
        ({"expert_index": -1, "partition": 5}, SuiteError, "out of range"),
        ({"expert_index": 0, "partition": [[0, 1], [1, 2]]}, PartitionError, "more than one group"),
        ({"expert_index": 0, "partition": 3}, PartitionError, "does not split"),
        ({"subset": [1, 1, 2]}, SuiteError, "distinct"),
        ({}, SuiteError, "needs its classes"),
        ({"subset": [0, 1, 2], "expert_index": 0, "partition": 5}, SuiteError, "is not expert 0"),
    ],
)
def test_bad_expert_choice_raises(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ExpertModule(**kwargs, **TINY)


def test_expert_hparams_record_subset_index_and_role() -> None:
    module = ExpertModule(expert_index=2, partition=5, **TINY)
    assert module.hparams.subset == module.partition[2] and len(module.subset) == 25
    assert module.hparams.expert_index == 2 and module.hparams.role == "expert"
    by_subset = ExpertModule(subset=list(reversed(module.partition[2])), partition=5, **TINY)
    assert by_subset.expert_index == 2 and by_subset.hparams.subset == module.partition[2]


def test_locate_and_step_counts() -> None:
    stages = parse_stages([{"epochs": 2}, {"epochs": 0}, {"epochs": 3, "rho": 0.5}], depth=2, has_generalist=False)
    assert [locate(stages, e) for e in range(6)] == [(0, 0), (0, 0), (2, 2), (2, 2), (2, 2), (2, 2)]
    # 125 subset images, batch 16: rho 1 -> ceil(125/16) = 8 batches, rho 0.5 -> ceil(125/8) = 16.
    assert schedule_steps(stages, 125, 16) == 2 * 8 + 3 * 16
    assert schedule_steps(stages, 125, 16, num_replicas=2) == 2 * 4 + 3 * 8
    # Static-from-base gets exactly the progressive stages' steps; static-from-init adds stage 0's.
    assert static_step_budget("from_base", 101, 64) == 64
    assert static_step_budget("from_init", 101, 64) == 165
    with pytest.raises(SuiteError, match="variant"):
        static_step_budget("from_scratch", 101, 64)


def test_a_restarted_stage_schedule_resumes_at_the_step_it_left() -> None:
    def lrs(steps_done: int, n: int) -> list[float]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = restart_schedule(optimizer, 3e-4, 5, 40, steps_done)
        out = []
        for _ in range(n):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    full = lrs(0, 40)
    assert full == pytest.approx([3e-4 * reference_factor(s, 5, 40) for s in range(40)], rel=1e-9)
    assert lrs(17, 23) == pytest.approx(full[17:], rel=1e-12)


# ----- stage switching ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def switched(fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two stages: all layers at rho 0.25, then block 0 frozen at rho 0.75 with distillation."""
    stages = [
        {"epochs": 1, "lr": 1e-3, "warmup_epochs": 0.5, "rho": 0.25},
        {"epochs": 1, "lr": 1e-4, "rho": 0.75, "frozen_blocks": 1, "kd_weight": 0.5},
    ]
    seed_everything(0)
    module = ExpertModule(expert_index=1, partition=5, stages=stages, **TINY)
    recorder = Recorder()
    t = trainer(tmp_path_factory.mktemp("switch"), [recorder])
    t.fit(module, datamodule=datamodule(fake_cifar_root))
    return t, module, recorder


def test_stages_switch_freezing_at_the_epoch_boundary(switched) -> None:
    t, _, rec = switched
    first = [r for r in rec.rows if r["epoch"] == 0]
    second = [r for r in rec.rows if r["epoch"] == 1]
    assert first and second and t.current_epoch == 2  # the stage list, not trainer.max_epochs, set the length
    assert all(r["patch_grad"] and r["pos_grad"] and r["block_grad"] == [True, True] for r in first)
    assert all(not r["patch_grad"] and not r["pos_grad"] and r["block_grad"] == [False, True] for r in second)
    start, end = rec.block0[1]
    assert torch.equal(start, end)  # frozen means unchanged, not just flagged
    assert not torch.equal(*rec.block0[0])


def test_stages_switch_the_data_mix(switched) -> None:
    _, _, rec = switched
    assert {r["share"] for r in rec.rows if r["epoch"] == 0} == {0.25}
    assert {r["share"] for r in rec.rows if r["epoch"] == 1} == {0.75}
    # Epoch length follows the stage: ceil(125 / 4) batches, then ceil(125 / 12).
    assert [sum(r["epoch"] == e for r in rec.rows) for e in (0, 1)] == [32, 11]


def test_stages_switch_the_learning_rate_on_a_continuous_step_axis(switched) -> None:
    t, _, rec = switched
    lrs = [r["lr"] for r in rec.rows]
    n0 = sum(r["epoch"] == 0 for r in rec.rows)
    expected0 = [1e-3 * reference_factor(s, 16, n0) for s in range(n0)]
    expected1 = [1e-4 * reference_factor(s, 0, len(lrs) - n0) for s in range(len(lrs) - n0)]
    assert np.allclose(lrs, expected0 + expected1, rtol=1e-9, atol=1e-15)
    assert t.global_step == len(lrs)
    assert t.callback_metrics["stage"].item() == 1.0


def test_distillation_teacher_is_the_weights_at_stage_start(switched) -> None:
    _, module, rec = switched
    assert all(r["teacher"] is None for r in rec.rows if r["epoch"] == 0)
    teachers = {id(r["teacher"]) for r in rec.rows if r["epoch"] == 1}
    assert len(teachers) == 1
    teacher = next(r["teacher"] for r in rec.rows if r["epoch"] == 1)
    start_block0 = rec.block0[1][0]
    assert torch.equal(teacher.vit.blocks[0].attn.qkv.weight, start_block0)
    # Teacher frozen, in eval mode and not part of the checkpointed state.
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any("teacher" in k for k in module.state_dict())
    changed = module.model.vit.blocks[1].attn.qkv.weight
    assert not torch.equal(teacher.vit.blocks[1].attn.qkv.weight, changed)


def test_expert_metrics_are_logged(switched) -> None:
    t, _, _ = switched
    metrics = t.callback_metrics
    for name in ("val/acc", "val/subset_acc", "val/subset_restricted_acc"):
        assert 0.0 <= metrics[name].item() <= 1.0
    # Restricting the argmax to S_j's classes can only help on S_j images.
    assert metrics["val/subset_restricted_acc"] >= metrics["val/subset_acc"]
    assert "val/routed_in_acc" not in metrics  # no generalist given


# ----- starting points ------------------------------------------------------------------------------------------
def test_static_expert_starts_from_the_same_init_as_stage_0() -> None:
    seed_everything(42)
    base = ClassifierModule(arch="vit_small", role="base", **TINY)
    seed_everything(42)
    static = ExpertModule(expert_index=0, partition=5, **TINY)
    base_state, static_state = base.model.state_dict(), static.model.state_dict()
    assert base_state.keys() == static_state.keys()
    assert all(torch.equal(base_state[k], static_state[k]) for k in base_state)


def _save_base(tmp_path: Path, root: Path, **shape) -> Path:
    module = ClassifierModule(arch="vit_small", role="base", **{**TINY, **shape})
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    dm = CIFAR100DataModule(data_dir=str(root), check_integrity=False, val_size=100, batch_size=BATCH, num_workers=0)
    t.fit(module, datamodule=dm)
    path = tmp_path / "base.ckpt"
    t.save_checkpoint(path)
    return path


def test_progressive_expert_starts_from_the_base_weights(fake_cifar_root: Path, tmp_path: Path) -> None:
    base_path = _save_base(tmp_path, fake_cifar_root)
    base_weights = torch.load(base_path, weights_only=False)["state_dict"]
    module = ExpertModule(expert_index=0, partition=5, base_checkpoint=str(base_path), stages=[{"epochs": 1}], **TINY)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=0, limit_val_batches=0)
    t.fit(module, datamodule=datamodule(fake_cifar_root))
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in base_weights.items() if k.startswith("model."))
    assert module.hparams.base_checkpoint_sha256 and module.hparams.base_checkpoint == str(base_path)


def test_base_checkpoint_of_another_architecture_is_refused(fake_cifar_root: Path, tmp_path: Path) -> None:
    base_path = _save_base(tmp_path, fake_cifar_root, depth=1)
    module = ExpertModule(expert_index=0, partition=5, base_checkpoint=str(base_path), **TINY)
    t = trainer(tmp_path / "expert", max_epochs=1)
    with pytest.raises(SuiteError, match=r"expected depth=2, found depth=1"):
        t.fit(module, datamodule=datamodule(fake_cifar_root))
    assert t.global_step == 0 and not list((tmp_path / "expert").rglob("*.ckpt"))


def test_static_steps_cut_the_run_at_the_budget(fake_cifar_root: Path, tmp_path: Path) -> None:
    stages = [{"epochs": 1, "lr": 1e-3, "rho": 1.0}]
    module = ExpertModule(expert_index=3, partition=5, stages=stages, static_steps=19, **TINY)
    rec = Recorder()
    t = trainer(tmp_path, [rec])
    t.fit(module, datamodule=datamodule(fake_cifar_root))
    assert t.global_step == 19
    assert module.stages == [Stage(epochs=3, lr=1e-3, rho=1.0)]  # ceil(19 / ceil(125 / 16))
    lrs = [r["lr"] for r in rec.rows]
    assert np.allclose(lrs, [1e-3 * reference_factor(s, 0, 19) for s in range(19)])  # cosine ends at the budget

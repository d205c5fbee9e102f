"""ClassifierModule: learning, mixup/cutmix, the LR schedule, eval metrics, checkpoints."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from lightning import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ask_the_expert.method.cifar100_classes import FINE_TO_COARSE, NUM_CLASSES, SUPERCLASSES
from benchmarks.common import quiet_trainer
from lightning_modules.classifier import ClassifierModule
from lightning_modules.lr_schedules import warmup_cosine

TINY = dict(embed_dim=16, depth=1, num_heads=2)
# Tests call the *_step methods without a Trainer, where self.log only warns.
pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*:UserWarning")


def random_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    return images, torch.randint(0, NUM_CLASSES, (n,), generator=generator)


def test_training_step_overfits_a_batch():
    torch.manual_seed(0)
    module = ClassifierModule(**TINY, drop_path_rate=0.0)
    batch = random_batch(16)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        loss = module.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_mixup_and_cutmix_train_on_soft_targets():
    torch.manual_seed(0)
    module = ClassifierModule(**TINY, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    images, labels = random_batch(8)
    targets_seen = []
    plain_loss = module.compute_loss

    def spy(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets_seen.append(targets)
        return plain_loss(images, targets)

    module.compute_loss = spy
    loss = module.training_step((images.clone(), labels), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    (targets,) = targets_seen
    assert targets.shape == (8, NUM_CLASSES)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    # Each row mixes its own label with its partner's (timm mixes with the flipped batch).
    partner = labels.flip(0)
    own, other = targets.gather(1, labels[:, None]), targets.gather(1, partner[:, None])
    differs = labels != partner
    assert torch.all(own[differs] + other[differs] > 0.85) and torch.all(other[differs] > 0.001)


def reference_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The suite's hand-written schedule before torch's schedulers replaced it (commit 6e52915)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize(("warmup", "total"), [(10, 110), (1, 10), (0, 50), (3, 3), (10, 5), (39, 4000)])
def test_library_schedule_gives_the_previous_lr_at_every_step(warmup: int, total: int):
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = warmup_cosine(optimizer, warmup, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * reference_factor(s, warmup, total) for s in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    rising = lrs[: min(warmup, total)]
    assert all(a < b for a, b in itertools.pairwise(rising))
    assert all(a > b for a, b in itertools.pairwise(lrs[warmup:]))


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lr_warms_up_for_warmup_epochs_then_decays_by_cosine():
    module = ClassifierModule(**TINY, lr=1e-2, warmup_epochs=1)
    loader = DataLoader(TensorDataset(*random_batch(64)), batch_size=8)
    recorder = RecordLR()
    quiet_trainer(max_epochs=4, callbacks=[recorder]).fit(module, loader)
    steps_per_epoch, total = 8, 32
    expected = [1e-2 * reference_factor(s, steps_per_epoch, total) for s in range(total)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)
    assert max(recorder.lrs) == pytest.approx(recorder.lrs[steps_per_epoch - 1]) == pytest.approx(1e-2)
    assert recorder.lrs[-1] < 1e-2 * 0.01
    # Weight decay spares norms, biases, the class token and position embeddings.
    no_decay, decay = module.trainer.optimizers[0].param_groups
    assert decay["weight_decay"] == module.hparams.weight_decay and no_decay["weight_decay"] == 0
    vit, exempt = module.model.vit, {id(p) for p in no_decay["params"]}
    assert id(vit.pos_embed) in exempt and id(vit.cls_token) in exempt
    assert all(p.ndim >= 2 for p in decay["params"])


class LabelReader(nn.Module):
    """Predicts the label stored in pixel (0, 0, 0): right for ``correct`` classes, else the next class (with
    the true class second, so it is always in the top 5)."""

    def __init__(self, correct: set[int]) -> None:
        super().__init__()
        self.correct = correct

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels = images[:, 0, 0, 0].long()
        predicted = torch.tensor([c if c in self.correct else (c + 1) % NUM_CLASSES for c in labels.tolist()])
        logits = torch.zeros(len(labels), NUM_CLASSES)
        logits[torch.arange(len(labels)), labels] = 1.0
        logits[torch.arange(len(labels)), predicted] = 3.0
        return logits


def labelled_loader(classes: list[int], per_class: int = 2) -> DataLoader:
    labels = torch.tensor(classes).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 3, 32, 32)
    images[:, 0, 0, 0] = labels.float()
    return DataLoader(TensorDataset(images, labels), batch_size=32)


def test_val_metrics_accuracy_top5_ece_and_superclasses():
    fish = SUPERCLASSES.index("fish")
    correct = {int(c) for c in torch.nonzero(torch.as_tensor(FINE_TO_COARSE) == fish)}
    module = ClassifierModule(**TINY)
    module.model = LabelReader(correct)
    (metrics,) = quiet_trainer().validate(module, labelled_loader(list(range(NUM_CLASSES))), verbose=False)
    assert metrics["val/acc"] == pytest.approx(len(correct) / NUM_CLASSES)
    assert metrics["val/acc_top5"] == pytest.approx(1.0)
    assert 0 < metrics["val/ece"] < 1 and "val/loss" in metrics
    for j, name in enumerate(SUPERCLASSES):
        assert metrics[f"val/superclass_acc/{name}"] == (1.0 if j == fish else 0.0), name

    # Only classes present count: two fish classes (right) and one tree class (wrong); superclasses without
    # any val image are not logged at all.
    tree = int(torch.nonzero(torch.as_tensor(FINE_TO_COARSE) == SUPERCLASSES.index("trees"))[0])
    (subset,) = quiet_trainer().validate(module, labelled_loader([*sorted(correct)[:2], tree]), verbose=False)
    assert subset["val/acc"] == pytest.approx(2 / 3)
    superclass_metrics = {k: v for k, v in subset.items() if "superclass_acc" in k}
    assert superclass_metrics == {"val/superclass_acc/fish": 1.0, "val/superclass_acc/trees": 0.0}


def test_checkpoint_alone_rebuilds_the_model(tmp_path: Path):
    module = ClassifierModule(**TINY, role="base", lr=5e-3, warmup_epochs=0.5)
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(module, DataLoader(TensorDataset(*random_batch(24)), batch_size=8))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    images = random_batch(4, seed=1)[0]
    expected = module.eval()(images)

    loaded = ClassifierModule.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu").eval()
    assert loaded.hparams.role == "base" and loaded.hparams.depth == 1
    assert torch.equal(loaded(images), expected)

"""Lightning's training-step overhead and the DataModule's delivery rate, measured side by side in one run.

    python benchmarks/bench_train_step.py --data.data_dir ../shared/data/cifar100 [--data.check_integrity false]

1. The generalist's training step through Lightning (``ClassifierModule`` + ``Trainer``) against a plain PyTorch
   loop over the same timm model, the same pre-loaded batches and the same AdamW + warm-up/cosine schedule
   (``lightning_modules.lr_schedules.warmup_cosine``, the module's scheduler, with the module's warm-up steps).
   The two run alternately, ``--repeats`` times each; the ratio of medians is printed (target <= 1.05).
2. Images/s that the DataModule's train loader delivers with ``basic`` and ``strong`` augmentation and
   ``--workers`` workers, against the images/s the training step consumes.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from common import StepTimer, data_source, delivered_rate, quiet_trainer, run_cli, training_datamodule
from lightning import seed_everything

from ask_the_expert.utils.options import DataOptions
from datamodules.cifar100 import CIFAR100DataModule
from datamodules.transforms import build_transform
from lightning_modules.classifier import ClassifierModule
from lightning_modules.lr_schedules import warmup_cosine


def time_lightning(module: ClassifierModule, batches: list, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    # batch_size=None: the loader yields the pre-built batches as they are.
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return (timer.end - timer.start) / (len(batches) - warmup)


def time_plain(module: ClassifierModule, batches: list, warmup: int) -> float:
    model = module.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=module.hparams.lr, weight_decay=module.hparams.weight_decay)
    # The warm-up steps of ClassifierModule.configure_optimizers for one epoch of len(batches) steps.
    total = len(batches)
    scheduler = warmup_cosine(optimizer, max(1, round(module.hparams.warmup_epochs * total)), total)
    for i, (images, labels, _) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels, label_smoothing=module.hparams.label_smoothing)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def delivery_rate(datamodule: CIFAR100DataModule, augmentation: str, num_batches: int) -> float:
    datamodule.train_transform = build_transform(augmentation)
    return delivered_rate(datamodule.train_dataloader(), num_batches, datamodule.batch_size)


def main(
    data: DataOptions = DataOptions(),
    batch_size: int = 128,
    steps: int = 12,
    warmup: int = 3,
    repeats: int = 3,
    workers: int = 2,
    delivery_batches: int = 30,
) -> None:
    """Lightning step against a plain loop, and the loader's delivery rate (see the module docstring).

    Args:
        data: the CIFAR-100 folder (``--data.data_dir``, ``--data.check_integrity``) and its train/val split;
            the batch and workers are ``--batch_size`` and ``--workers``.
        batch_size: training batch of both loops and of the loader.
        steps: timed steps per measurement (after warm-up).
        warmup: untimed steps first.
        repeats: measurements per loop, alternating; medians are printed.
        workers: DataLoader workers.
        delivery_batches: timed batches of each delivery measurement.
    """
    source = data_source(data)
    seed_everything(0)
    datamodule = training_datamodule(source, batch_size, workers)
    datamodule.setup("fit")
    loader = datamodule.loader(datamodule.dataset("train", augment=True), shuffle=True, batch_size=batch_size)
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(warmup + steps)]
    del iterator

    reference = ClassifierModule(arch="vit_tiny", preset="scratch32", warmup_epochs=0.2, label_smoothing=0.1)
    lightning_s, plain_s = [], []
    for _ in range(repeats):
        lightning_s.append(time_lightning(copy.deepcopy(reference), batches, warmup))
        plain_s.append(time_plain(copy.deepcopy(reference), batches, warmup))
    lightning_med, plain_med = statistics.median(lightning_s), statistics.median(plain_s)
    consumed = batch_size / lightning_med
    print(
        f"generalist vit_tiny/scratch32, batch {batch_size}, {torch.get_num_threads()} threads, "
        f"{steps} timed steps x {repeats} repeats (alternating)"
    )
    print(f"  lightning step: median {lightning_med * 1e3:.1f} ms  (all: {[round(t * 1e3, 1) for t in lightning_s]})")
    print(f"  plain step:     median {plain_med * 1e3:.1f} ms  (all: {[round(t * 1e3, 1) for t in plain_s]})")
    print(f"  ratio lightning/plain = {lightning_med / plain_med:.3f}  (target <= 1.05)")
    print(f"  model consumes {consumed:.0f} images/s")
    for augmentation in ("basic", "strong"):
        rate = delivery_rate(datamodule, augmentation, delivery_batches)
        print(
            f"  datamodule delivers {rate:.0f} images/s with '{augmentation}' and {workers} workers "
            f"({rate / consumed:.1f}x what the model consumes)"
        )


if __name__ == "__main__":
    run_cli(main, __doc__)

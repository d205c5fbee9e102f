"""Lightning's training-step overhead and the DataModule's delivery rate, measured side by side in one run.

    python benchmarks/bench_train_step.py --data-dir ../shared/data/cifar100 [--no-check-integrity]

1. The generalist's training step through Lightning (``ClassifierModule`` + ``Trainer``) against a plain PyTorch
   loop over the same timm model, the same pre-loaded batches and the same AdamW + warm-up/cosine schedule.
   The two run alternately, ``--repeats`` times each; the ratio of medians is printed (target <= 1.05).
2. Images/s that the DataModule's train loader delivers with ``basic`` and ``strong`` augmentation and
   ``--workers`` workers, against the images/s the training step consumes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from lightning import Callback, Trainer, seed_everything
from torch.optim.lr_scheduler import LambdaLR

from datamodules.cifar100 import CIFAR100DataModule
from datamodules.transforms import build_transform
from lightning_modules.classifier import ClassifierModule, warmup_cosine


class StepTimer(Callback):
    """Wall time from the start of the first timed batch to the end of the last one (after warm-up)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def time_lightning(module: ClassifierModule, batches: list, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    # batch_size=None: the loader yields the pre-built batches as they are.
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return (timer.end - timer.start) / (len(batches) - warmup)


def time_plain(module: ClassifierModule, batches: list, warmup: int) -> float:
    model = module.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=module.hparams.lr, weight_decay=module.hparams.weight_decay)
    scheduler = LambdaLR(optimizer, lambda step: warmup_cosine(step, len(batches) // 5, len(batches)))
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
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # worker start-up is not delivery
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * datamodule.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder that contains cifar-100-python/")
    parser.add_argument("--no-check-integrity", action="store_true", help="load a re-packed copy (md5 differs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delivery-batches", type=int, default=30)
    args = parser.parse_args()

    seed_everything(0)
    datamodule = CIFAR100DataModule(
        args.data_dir,
        check_integrity=not args.no_check_integrity,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augmentation="basic",
    )
    datamodule.setup("fit")
    loader = datamodule.loader(datamodule.dataset("train", augment=True), shuffle=True, batch_size=args.batch_size)
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(args.warmup + args.steps)]
    del iterator

    reference = ClassifierModule(arch="vit_tiny", preset="scratch32", warmup_epochs=0.2, label_smoothing=0.1)
    lightning_s, plain_s = [], []
    for _ in range(args.repeats):
        lightning_s.append(time_lightning(copy.deepcopy(reference), batches, args.warmup))
        plain_s.append(time_plain(copy.deepcopy(reference), batches, args.warmup))
    lightning_med, plain_med = statistics.median(lightning_s), statistics.median(plain_s)
    consumed = args.batch_size / lightning_med
    print(
        f"generalist vit_tiny/scratch32, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps x {args.repeats} repeats (alternating)"
    )
    print(f"  lightning step: median {lightning_med * 1e3:.1f} ms  (all: {[round(t * 1e3, 1) for t in lightning_s]})")
    print(f"  plain step:     median {plain_med * 1e3:.1f} ms  (all: {[round(t * 1e3, 1) for t in plain_s]})")
    print(f"  ratio lightning/plain = {lightning_med / plain_med:.3f}  (target <= 1.05)")
    print(f"  model consumes {consumed:.0f} images/s")
    for augmentation in ("basic", "strong"):
        rate = delivery_rate(datamodule, augmentation, args.delivery_batches)
        print(
            f"  datamodule delivers {rate:.0f} images/s with '{augmentation}' and {args.workers} workers "
            f"({rate / consumed:.1f}x what the model consumes)"
        )


if __name__ == "__main__":
    main()

"""One-shot GPU throughput table: training images/s of the generalist and the expert architecture, DataLoader
path against device-resident path, bf16, with and without torch.compile (about 5 minutes on one H100).

    python benchmarks/gpu_throughput.py --data-dir data [--no-check-integrity]
    python benchmarks/gpu_throughput.py --fake     # a generated 50k-image folder: pixels do not change speed

Every cell trains through Lightning (``Trainer(precision="bf16-mixed")``) on ``basic`` augmentation (pad-4 crop
+ flip; the device-resident path's augmentation) with ``--batch-size`` per step and times ``--steps`` steps after
``--warmup`` (which absorbs compilation), synchronising the GPU at both ends. "expert" is the expert/base
architecture (vit_small, scratch32) on all classes: an expert's class subset changes what it sees, not its speed.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_device_resident import add_data_source_args, data_source
from lightning import Callback, Trainer

from datamodules.cifar100 import CIFAR100DataModule
from lightning_modules.classifier import ClassifierModule

MODELS = {"generalist": "vit_tiny", "expert": "vit_small"}


class SyncedTimer(Callback):
    """GPU-synchronised wall time of the steps ``warmup .. total - 1``."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.total - 1:
            torch.cuda.synchronize()
            self.end = time.perf_counter()


def images_per_second(
    arch: str, device_resident: bool, compile_model: bool, data: tuple[str, bool], args: argparse.Namespace
) -> float:
    data_dir, check_integrity = data
    total = args.warmup + args.steps
    timer = SyncedTimer(args.warmup, total)
    trainer = Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=total,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    datamodule = CIFAR100DataModule(
        data_dir,
        check_integrity=check_integrity,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augmentation="basic",
        device_resident=device_resident,
    )
    model = ClassifierModule(arch=arch, preset="scratch32", warmup_epochs=0, compile=compile_model)
    trainer.fit(model, datamodule=datamodule)
    return args.steps * args.batch_size / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_source_args(parser)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation happens here)")
    parser.add_argument("--workers", type=int, default=12, help="DataLoader workers of the DataLoader path")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark is for a GPU machine (bench_device_resident.py runs on CPU).")
    torch.set_float32_matmul_precision("high")
    data = data_source(args)

    rows = []
    for name in args.models:
        for compile_model in (False, True):
            rates = [images_per_second(MODELS[name], resident, compile_model, data, args) for resident in (False, True)]
            rows.append((name, MODELS[name], "yes" if compile_model else "no", *rates))

    print(
        f"\n{torch.cuda.get_device_name()}, bf16-mixed, batch {args.batch_size}, basic augmentation, "
        f"{args.steps} timed steps after {args.warmup}, DataLoader workers {args.workers}"
    )
    print("| model | arch | compile | DataLoader img/s | device-resident img/s | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for name, arch, compiled, loader_rate, resident_rate in rows:
        print(
            f"| {name} | {arch} | {compiled} | {loader_rate:,.0f} | {resident_rate:,.0f} | "
            f"{resident_rate / loader_rate:.2f} |"
        )


if __name__ == "__main__":
    main()

"""One-shot GPU throughput table: training images/s of the generalist and the expert architecture, DataLoader
path against device-resident path, bf16, with and without torch.compile (about 5 minutes on one H100).

    python benchmarks/gpu_throughput.py --data.data_dir data [--data.check_integrity false]
    python benchmarks/gpu_throughput.py --fake true   # a generated 50k-image folder: pixels do not change speed

Every cell trains through Lightning (``Trainer(precision="bf16-mixed")``) on ``basic`` augmentation (pad-4 crop
+ flip; the device-resident path's augmentation) with ``--batch_size`` per step and times ``--steps`` steps after
``--warmup`` (which absorbs compilation), synchronising the GPU at both ends. "expert" is the expert/base
architecture (vit_small, scratch32) on all classes: an expert's class subset changes what it sees, not its speed.
There is no CPU path: without a CUDA device the command stops with a message (bench_device_resident.py measures
the two data paths on the CPU).
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from common import data_source, quiet_trainer, run_cli, training_datamodule
from lightning import Callback

from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from lightning_modules.classifier import ClassifierModule

MODELS = {"generalist": "vit_tiny", "expert": "vit_small"}
ModelName = Literal["generalist", "expert"]


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
    arch: str,
    device_resident: bool,
    compile_model: bool,
    source: DataOptions,
    batch_size: int,
    steps: int,
    warmup: int,
    workers: int,
) -> float:
    total = warmup + steps
    timer = SyncedTimer(warmup, total)
    trainer = quiet_trainer(
        accelerator="gpu",
        precision="bf16-mixed",
        max_steps=total,
        limit_val_batches=0,
        callbacks=[timer],
    )
    datamodule = training_datamodule(source, batch_size, workers, device_resident=device_resident)
    model = ClassifierModule(arch=arch, preset="scratch32", warmup_epochs=0, compile=compile_model)
    trainer.fit(model, datamodule=datamodule)
    return steps * batch_size / (timer.end - timer.start)


def main(
    data: DataOptions = DataOptions(),
    fake: bool = False,
    batch_size: int = 256,
    steps: int = 60,
    warmup: int = 15,
    workers: int = 12,
    models: tuple[ModelName, ...] = ("generalist", "expert"),
) -> None:
    """The GPU throughput table (see the module docstring); needs a CUDA device.

    Args:
        data: the CIFAR-100 folder (``--data.data_dir``, ``--data.check_integrity``) and its train/val split;
            the batch and workers are ``--batch_size`` and ``--workers``.
        fake: generate a 50k-image folder instead of reading ``--data.data_dir``.
        batch_size: training batch per step.
        steps: timed steps per cell.
        warmup: untimed steps first (compilation happens here).
        workers: DataLoader workers of the DataLoader path.
        models: which rows to measure, e.g. ``--models '[generalist]'``.
    """
    if not models:
        raise SuiteError("--models is empty; give one or both of generalist and expert, e.g. --models '[expert]'.")
    if not torch.cuda.is_available():
        raise SuiteError("no CUDA device: this benchmark is for a GPU machine (bench_device_resident.py runs on CPU).")
    torch.set_float32_matmul_precision("high")
    source = data_source(data, fake)

    rows = []
    for name in models:
        for compile_model in (False, True):
            rates = [
                images_per_second(MODELS[name], resident, compile_model, source, batch_size, steps, warmup, workers)
                for resident in (False, True)
            ]
            rows.append((name, MODELS[name], "yes" if compile_model else "no", *rates))

    print(
        f"\n{torch.cuda.get_device_name()}, bf16-mixed, batch {batch_size}, basic augmentation, "
        f"{steps} timed steps after {warmup}, DataLoader workers {workers}"
    )
    print("| model | arch | compile | DataLoader img/s | device-resident img/s | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for name, arch, compiled, loader_rate, resident_rate in rows:
        print(
            f"| {name} | {arch} | {compiled} | {loader_rate:,.0f} | {resident_rate:,.0f} | "
            f"{resident_rate / loader_rate:.2f} |"
        )


if __name__ == "__main__":
    run_cli(main, __doc__)

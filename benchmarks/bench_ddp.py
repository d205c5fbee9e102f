"""Training samples/s of DDP on 2 CPU processes (gloo) against 1 process, side by side in one run.

    python benchmarks/bench_ddp.py [--batch-size 64] [--steps 15] [--repeats 2] [--threads-per-process 1]

The same small ViT (ClassifierModule, embed 96, depth 4, heads 3) trains through Lightning on in-memory random
batches: once with ``devices=1``, once with ``devices=2, strategy=ddp_spawn``, alternately ``--repeats`` times.
``--batch-size`` is per device, as in the configs, so DDP processes twice the samples per step; samples/s counts
all ranks. Every process gets ``--threads-per-process`` torch threads, so the ideal ratio is 2.0 when the machine
has two free cores (gradient all-reduce and the per-step synchronisation are the loss).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from bench_train_step import StepTimer
from lightning import Trainer
from torch.utils.data import TensorDataset

from lightning_modules.classifier import ClassifierModule


class RateRecorder(StepTimer):
    """Sets the process's torch threads, times the steps after warm-up, and writes samples/s (all ranks) from
    rank zero to ``path`` (spawned processes cannot return it)."""

    def __init__(self, warmup: int, threads: int, batch_size: int, path: Path) -> None:
        super().__init__(warmup)
        self.threads, self.batch_size, self.path = threads, batch_size, path
        self.steps = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        torch.set_num_threads(self.threads)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.steps = batch_idx + 1

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            samples = (self.steps - self.warmup) * self.batch_size * trainer.world_size
            self.path.write_text(json.dumps(samples / (self.end - self.start)))


def samples_per_second(devices: int, args: argparse.Namespace, workdir: Path) -> float:
    steps = args.warmup + args.steps
    generator = torch.Generator().manual_seed(0)
    n = steps * args.batch_size * devices
    data = TensorDataset(
        torch.randn(n, 3, 32, 32, generator=generator),
        torch.randint(0, 100, (n,), generator=generator),
        torch.arange(n),
    )
    result = workdir / f"rate_{devices}.json"
    recorder = RateRecorder(args.warmup, args.threads_per_process, args.batch_size, result)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[recorder],
    )
    model = ClassifierModule(embed_dim=96, depth=4, num_heads=3, warmup_epochs=0)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=args.batch_size))
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="per device")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads-per-process", type=int, default=1)
    args = parser.parse_args()

    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeats):
            for devices in rates:
                rates[devices].append(samples_per_second(devices, args, Path(workdir)))
    medians = {devices: statistics.median(values) for devices, values in rates.items()}
    print(
        f"ClassifierModule embed 96 / depth 4, batch {args.batch_size} per device, {args.steps} timed steps x "
        f"{args.repeats} repeats (alternating), {args.threads_per_process} thread(s) per process, gloo"
    )
    for devices, values in rates.items():
        label = "1 process " if devices == 1 else "DDP 2 proc"
        print(f"  {label}: median {medians[devices]:7.0f} samples/s  (all: {[round(v) for v in values]})")
    print(f"  ratio DDP-2/single = {medians[2] / medians[1]:.2f}  (ideal 2.0 on two free cores)")


if __name__ == "__main__":
    main()

"""Training samples/s of DDP on 2 CPU processes (gloo) against 1 process, side by side in one run.

    python benchmarks/bench_ddp.py [--batch_size 64] [--steps 15] [--repeats 2] [--threads_per_process 1]

The same small ViT (ClassifierModule, embed 96, depth 4, heads 3) trains through Lightning on in-memory random
batches: once with ``devices=1``, once with ``devices=2, strategy=ddp_spawn``, alternately ``--repeats`` times.
``--batch_size`` is per device, as in the configs, so DDP processes twice the samples per step; samples/s counts
all ranks. Every process gets ``--threads_per_process`` torch threads, so the ideal ratio is 2.0 when the machine
has two free cores (gradient all-reduce and the per-step synchronisation are the loss).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch
from common import StepTimer, quiet_trainer, run_cli
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


def samples_per_second(
    devices: int, batch_size: int, steps: int, warmup: int, threads_per_process: int, workdir: Path
) -> float:
    total = warmup + steps
    generator = torch.Generator().manual_seed(0)
    n = total * batch_size * devices
    data = TensorDataset(
        torch.randn(n, 3, 32, 32, generator=generator),
        torch.randint(0, 100, (n,), generator=generator),
        torch.arange(n),
    )
    result = workdir / f"rate_{devices}.json"
    recorder = RateRecorder(warmup, threads_per_process, batch_size, result)
    trainer = quiet_trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        limit_val_batches=0,
        callbacks=[recorder],
    )
    model = ClassifierModule(embed_dim=96, depth=4, num_heads=3, warmup_epochs=0)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=batch_size))
    return json.loads(result.read_text())


def main(
    batch_size: int = 64, steps: int = 15, warmup: int = 3, repeats: int = 2, threads_per_process: int = 1
) -> None:
    """DDP on 2 CPU processes against 1 process, samples/s (see the module docstring).

    Args:
        batch_size: training batch per device (DDP steps on twice the samples).
        steps: timed steps per measurement.
        warmup: untimed steps before them.
        repeats: measurements per setting, alternating; medians are printed.
        threads_per_process: torch threads of every process.
    """
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(repeats):
            for devices in rates:
                rates[devices].append(
                    samples_per_second(devices, batch_size, steps, warmup, threads_per_process, Path(workdir))
                )
    medians = {devices: statistics.median(values) for devices, values in rates.items()}
    print(
        f"ClassifierModule embed 96 / depth 4, batch {batch_size} per device, {steps} timed steps x "
        f"{repeats} repeats (alternating), {threads_per_process} thread(s) per process, gloo"
    )
    for devices, values in rates.items():
        label = "1 process " if devices == 1 else "DDP 2 proc"
        print(f"  {label}: median {medians[devices]:7.0f} samples/s  (all: {[round(v) for v in values]})")
    print(f"  ratio DDP-2/single = {medians[2] / medians[1]:.2f}  (ideal 2.0 on two free cores)")


if __name__ == "__main__":
    run_cli(main, __doc__)

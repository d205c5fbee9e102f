"""Images/s delivered by the device-resident training path against the DataLoader path, side by side.

    python benchmarks/bench_device_resident.py --data.data_dir ../shared/data/cifar100 [--data.check_integrity false]
    python benchmarks/bench_device_resident.py --fake true   # a generated 50k-image folder (pixels do not matter)

Both paths deliver ``basic``-augmented (pad-4 crop + flip), normalised training batches of the same DataModule;
they run alternately ``--repeats`` times, each timing ``--batches`` batches after the first (worker start-up and
the device path's per-epoch draw are not delivery). Medians and their ratio are printed. Without a trainer the
device-resident path runs on the CPU, as here; on a GPU it runs on the model's device (gpu_throughput.py).
"""

from __future__ import annotations

import statistics

import torch
from common import data_source, delivered_rate, run_cli, training_datamodule

from ask_the_expert.utils.options import DataOptions


def main(
    data: DataOptions = DataOptions(),
    fake: bool = False,
    batch_size: int = 128,
    batches: int = 20,
    repeats: int = 3,
    workers: int = 2,
    threads: int | None = None,
) -> None:
    """Device-resident against DataLoader delivery, images/s (see the module docstring).

    Args:
        data: the CIFAR-100 folder (``--data.data_dir``, ``--data.check_integrity``) and its train/val split;
            the batch and workers are ``--batch_size`` and ``--workers``.
        fake: generate a 50k-image folder instead of reading ``--data.data_dir``.
        batch_size: training batch of both paths.
        batches: timed batches per measurement.
        repeats: measurements per path, alternating; medians are printed.
        workers: DataLoader workers of the DataLoader path.
        threads: torch threads of the main process (on a busy CPU, 1 avoids oversubscription); default torch's.
    """
    source = data_source(data, fake)
    if threads:
        torch.set_num_threads(threads)

    paths = {
        "dataloader": training_datamodule(source, batch_size, workers),
        "device-resident": training_datamodule(source, batch_size, workers, device_resident=True),
    }
    for datamodule in paths.values():
        datamodule.setup("fit")
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, datamodule in paths.items():
            rates[name].append(delivered_rate(datamodule.train_dataloader(), batches, batch_size))

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"basic augmentation, batch {batch_size}, {batches} batches x {repeats} repeats "
        f"(alternating), CPU, {torch.get_num_threads()} threads, DataLoader workers {workers}"
    )
    for name, values in rates.items():
        print(f"  {name:>15}: median {medians[name]:8.0f} images/s  (all: {[round(v) for v in values]})")
    ratio = medians["device-resident"] / medians["dataloader"]
    print(f"  ratio device-resident/dataloader = {ratio:.2f}")


if __name__ == "__main__":
    run_cli(main, __doc__)

"""Images/s delivered by the device-resident training path against the DataLoader path, side by side.

    python benchmarks/bench_device_resident.py --data-dir ../shared/data/cifar100 [--no-check-integrity]
    python benchmarks/bench_device_resident.py --fake   # a generated 50k-image folder (pixels do not matter)

Both paths deliver ``basic``-augmented (pad-4 crop + flip), normalised training batches of the same DataModule;
they run alternately ``--repeats`` times, each timing ``--batches`` batches after the first (worker start-up and
the device path's per-epoch draw are not delivery). Medians and their ratio are printed. Without a trainer the
device-resident path runs on the CPU, as here; on a GPU it runs on the model's device (gpu_throughput.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from datamodules.cifar100 import CIFAR100DataModule


def delivered_rate(loader: Iterable, batches: int, batch_size: int) -> float:
    """Images/s over ``batches`` batches after the first."""
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def fake_data_dir(train_per_class: int) -> str:
    """A generated CIFAR-100 folder with ``train_per_class`` images per class (tests/fake_cifar100.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_cifar100 import write_fake_cifar100

    return str(write_fake_cifar100(tempfile.mkdtemp(prefix="fake_cifar_"), train_per_class, 1))


def add_data_source_args(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` or ``--fake``, and ``--no-check-integrity``: the data options of the throughput benchmarks."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="folder that contains cifar-100-python/")
    source.add_argument("--fake", action="store_true", help="generate a 50k-image folder instead")
    parser.add_argument("--no-check-integrity", action="store_true", help="load a re-packed copy (md5 differs)")


def data_source(args: argparse.Namespace) -> tuple[str, bool]:
    """(data_dir, check_integrity) for the options of ``add_data_source_args``; pixels do not change speed."""
    if args.fake:
        return fake_data_dir(500), False
    return args.data_dir, not args.no_check_integrity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_source_args(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the DataLoader path")
    parser.add_argument(
        "--threads", type=int, help="torch threads of the main process (on a busy CPU, 1 avoids oversubscription)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data_dir, check_integrity = data_source(args)
    common = dict(
        check_integrity=check_integrity,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augmentation="basic",
    )
    paths = {
        "dataloader": CIFAR100DataModule(data_dir, device_resident=False, **common),
        "device-resident": CIFAR100DataModule(data_dir, device_resident=True, **common),
    }
    for datamodule in paths.values():
        datamodule.setup("fit")
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, datamodule in paths.items():
            rates[name].append(delivered_rate(datamodule.train_dataloader(), args.batches, args.batch_size))

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"basic augmentation, batch {args.batch_size}, {args.batches} batches x {args.repeats} repeats "
        f"(alternating), CPU, {torch.get_num_threads()} threads, DataLoader workers {args.workers}"
    )
    for name, values in rates.items():
        print(f"  {name:>15}: median {medians[name]:8.0f} images/s  (all: {[round(v) for v in values]})")
    ratio = medians["device-resident"] / medians["dataloader"]
    print(f"  ratio device-resident/dataloader = {ratio:.2f}")


if __name__ == "__main__":
    main()

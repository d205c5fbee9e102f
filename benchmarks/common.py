"""Helpers shared by the benchmark scripts: the command line, the data source, a quiet Trainer, timers and a
closed-loop load generator.

Every benchmark is a ``main(...)`` function with typed, documented keyword parameters, run through
``run_cli(main, __doc__)`` (jsonargparse ``auto_cli``): options are spelled with underscores, every command has
``-c/--config`` and ``--print_config``, and bad input ends with a one-paragraph message and exit code 2
(ask_the_expert.utils.cli), as in the suite's other commands.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning import Callback, Trainer

from ask_the_expert.utils.cli import run_cli as suite_cli
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from datamodules.cifar100 import CIFAR100DataModule

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- command line
class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the description (the module docstring) printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def run_cli(main: Callable[..., Any], doc: str | None) -> None:
    """Parse the command line into ``main``'s keyword parameters, run it and exit: 0, or 2 on bad input."""
    sys.exit(suite_cli(main, None, Path(sys.argv[0]).name, description=doc, formatter_class=_HelpFormatter))


# ------------------------------------------------------------------------------------------------ data source
def fake_data_dir(train_per_class: int = 500) -> str:
    """A generated CIFAR-100 folder with ``train_per_class`` images per class (tests/fake_cifar100.py), removed
    when the benchmark exits."""
    sys.path.insert(0, str(REPO / "tests"))
    from fake_cifar100 import write_fake_cifar100

    root = tempfile.mkdtemp(prefix="fake_cifar_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return str(write_fake_cifar100(root, train_per_class, 1))


def data_source(data: DataOptions, fake: bool = False) -> DataOptions:
    """The data options to read: ``data`` as given, or with ``fake`` a generated 50k-image folder (pixels do not
    change speed; its md5 differs, so no integrity check).

    The benchmarks read the folder (``--data.data_dir``, ``--data.check_integrity``) and the split
    (``--data.val_size``, ``--data.split_seed``) from ``--data.*``; their batch size and loader workers are
    benchmark settings of their own (``--batch_size``, ``--workers``), so ``--data.batch_size`` and
    ``--data.num_workers`` are refused rather than silently ignored.
    """
    defaults = DataOptions()
    unused = [
        f"--data.{name} {getattr(data, name)!r}"
        for name in ("batch_size", "num_workers")
        if getattr(data, name) != getattr(defaults, name)
    ]
    if unused:
        raise SuiteError(
            f"{' and '.join(unused)}: a benchmark takes its batch size and loader workers from its own --batch_size "
            "and --workers options, not from --data.*; set those instead."
        )
    if fake:
        if data.data_dir != defaults.data_dir:
            raise SuiteError(
                f"--fake true generates its own data folder, so --data.data_dir {data.data_dir!r} would be ignored; "
                "give one of the two."
            )
        return replace(data, data_dir=fake_data_dir(500), check_integrity=False)
    return data


# ------------------------------------------------------------------------------------------------ trainer, timers
def training_datamodule(source: DataOptions, batch_size: int, workers: int, **kwargs: Any) -> CIFAR100DataModule:
    """The CIFAR-100 data module of the benchmarks' training runs: ``source``'s folder and split, ``basic``
    augmentation; ``kwargs`` add to or override these (``device_resident=True``)."""
    settings: dict[str, Any] = {
        "check_integrity": source.check_integrity,
        "val_size": source.val_size,
        "split_seed": source.split_seed,
        "batch_size": batch_size,
        "num_workers": workers,
        "augmentation": "basic",
    }
    return CIFAR100DataModule(source.data_dir, **{**settings, **kwargs})


def quiet_trainer(**kwargs: Any) -> Trainer:
    """A Trainer on one CPU device without logger, checkpoints, progress bar or model summary; ``kwargs`` add to
    or override these settings (``accelerator="gpu"``, ``devices=2``, ``max_epochs=1``, ``callbacks=[...]``)."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(**{**settings, **kwargs})


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


def delivered_rate(loader: Iterable, batches: int, batch_size: int) -> float:
    """Images/s over ``batches`` batches after the first (worker start-up is not delivery)."""
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- load
def closed_loop(send: Callable[[int], None], concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` threads each call ``send(worker)`` back to back until ``requests`` calls were started or
    ``seconds`` passed (both bounds hold); requests/s and latency percentiles (ms) of the calls that returned,
    and the failed ones counted by exception type."""
    from deploy.client import percentiles

    lock = threading.Lock()
    started, latencies, errors, last_error = 0, [], Counter(), ""
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        nonlocal started, last_error
        while True:
            with lock:
                if started >= requests or time.perf_counter() > deadline:
                    return
                started += 1
            begin = time.perf_counter()
            try:
                send(index)
            except Exception as exc:  # counted and reported: a load test measures failures too
                with lock:
                    errors[type(exc).__name__] += 1
                    last_error = str(exc)[:300]
                continue
            with lock:
                latencies.append((time.perf_counter() - begin) * 1e3)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.perf_counter()) + 30)
    wall = time.perf_counter() - begin
    return {
        "concurrency": concurrency,
        "answered": len(latencies),
        "errors": dict(errors),
        "last_error": last_error,
        "requests_per_s": round(len(latencies) / wall, 1),
        **percentiles(latencies),
    }

"""The CPU-model tuning study: validation accuracy against training minutes for candidate shapes and recipes.

    python benchmarks/cpu_model_study.py --data.data_dir DATA --data.check_integrity false \\
        [-c benchmarks/cpu_model_study.yaml] [--only '[name, ...]'] [--out results/cpu_model_study]
    python benchmarks/cpu_model_study.py --report docs/cpu_models --out results/cpu_model_study

Each candidate (a name, ``ClassifierModule`` arguments, epochs and batch size) is trained on the train split with
the device-resident ``basic`` augmentation, exactly as the presets train, and validated after every epoch. Its
record ``OUT/<name>.json`` holds, per epoch, the wall seconds and process CPU seconds since the fit started and the
val accuracy; it is written last, under a temporary name, with a fingerprint of the candidate's settings, the data
split and the model code, so a rerun skips exactly the candidates whose record matches. ``--report DIR`` reads the
records and writes ``DIR/study.md`` (a table) and ``DIR/study.png`` (accuracy against minutes, with the anchor
curve of a plain ViT given in ``--anchor``).

A mid-run point is the accuracy of a run whose cosine schedule has not ended, so it understates what a run of
that length would reach; only each candidate's last point is a finished schedule.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import REPO, data_source, quiet_trainer, run_cli, training_datamodule
from lightning import Callback, seed_everything

from ask_the_expert.utils.atomic import write_json_atomic, write_text_atomic
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from lightning_modules.classifier import ClassifierModule


@dataclass(frozen=True)
class Candidate:
    """One row of the study.

    Attributes:
        name: a short unique name (the record's file name).
        model: ``ClassifierModule`` arguments (shape, tokenizer, recipe).
        epochs: training epochs (the cosine schedule's length).
        batch_size: training batch size.
        tier: ``edge`` or ``near-edge``: which role the candidate is tried for (a label in the report).
    """

    name: str
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 128
    tier: str = "near-edge"


class EpochClock(Callback):
    """Wall and process CPU seconds since the fit started, and val accuracy, after every epoch."""

    def __init__(self) -> None:
        self.points: list[dict[str, float]] = []
        self.wall0 = self.cpu0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # After the epoch's validation (callbacks' on_validation_epoch_end runs before the module has logged).
        self.points.append(
            {
                "epoch": trainer.current_epoch + 1,
                "wall_s": round(time.perf_counter() - self.wall0, 1),
                "cpu_s": round(time.process_time() - self.cpu0, 1),
                "val_acc": round(float(trainer.callback_metrics["val/acc"]), 4),
            }
        )
        last = self.points[-1]
        print(f"  epoch {last['epoch']}: val acc {last['val_acc']:.4f} after {last['wall_s'] / 60:.1f} min", flush=True)


def fingerprint(candidate: Candidate, data: DataOptions) -> str:
    # The model code; the study's own code only measures (a change to its report must not retrain).
    code = "".join(
        (REPO / path).read_text()
        for path in ("ask_the_expert/models/vit_factory.py", "ask_the_expert/models/conv_tokenizer.py")
    )
    settings = {
        "candidate": asdict(candidate),
        "val_size": data.val_size,
        "split_seed": data.split_seed,
        "threads": torch.get_num_threads(),
    }
    return hashlib.sha256((json.dumps(settings, sort_keys=True) + code).encode()).hexdigest()[:16]


def train_candidate(candidate: Candidate, data: DataOptions, seed: int) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    module = ClassifierModule(**candidate.model)
    datamodule = training_datamodule(data, candidate.batch_size, 0, device_resident=True)
    clock = EpochClock()
    trainer = quiet_trainer(max_epochs=candidate.epochs, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(module, datamodule=datamodule)
    params = sum(p.numel() for p in module.model.parameters())
    return {"params": params, "threads": torch.get_num_threads(), "points": clock.points}


def write_report(records: list[dict[str, Any]], anchor: list[list[float]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "| candidate | tier | tokenizer | embed / depth / heads / MLP | params | lr | epochs | minutes | val acc |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for record in sorted(records, key=lambda r: (r["candidate"]["tier"], r["points"][-1]["wall_s"])):
        candidate, points, model = record["candidate"], record["points"], record["candidate"]["model"]
        shape = "{} / {} / {} / {}".format(
            *(model.get(k, "-") for k in ("embed_dim", "depth", "num_heads", "mlp_ratio"))
        )
        tokenizer = f"{model.get('tokenizer', 'patch')} {model.get('patch_size', '-')}" + (
            f", stem {model['stem_widths']}" if "stem_widths" in model else ""
        )
        last = points[-1]
        lines.append(
            f"| {candidate['name']} | {candidate['tier']} | {tokenizer} | {shape} | {record['params'] / 1e6:.2f}M | "
            f"{model.get('lr', '-')} | {candidate['epochs']} | {last['wall_s'] / 60:.1f} | "
            f"{100 * last['val_acc']:.1f} % |"
        )
        style = "-" if candidate["tier"] == "near-edge" else "--"
        ax.plot(
            [p["wall_s"] / 60 for p in points],
            [100 * p["val_acc"] for p in points],
            style,
            marker="o",
            markersize=3,
            label=f"{candidate['name']} ({record['params'] / 1e6:.2f}M)",
        )
    if anchor:
        ax.plot([a[0] for a in anchor], [a[1] for a in anchor], "k:", marker="s", label="plain ViT 1.22M anchor (test)")
    ax.axhline(45, color="grey", linewidth=0.8)
    ax.set_xlabel("training minutes, wall clock (candidates: 1 thread on one core; anchor: 2 cores)")
    ax.set_ylabel("val accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = folder / ".study.png.partial"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, folder / "study.png")
    write_text_atomic(folder / "study.md", "\n".join(lines) + "\n")
    print(f"Report written to {folder}/study.md and study.png")


def main(
    data: DataOptions = DataOptions(),
    candidates: list[Candidate] | None = None,
    only: list[str] | None = None,
    out: str = "results/cpu_model_study",
    seed: int = 0,
    report: str | None = None,
    anchor: list[list[float]] | None = None,
    threads: int | None = None,
) -> None:
    """Train the candidates (or, with ``--report``, tabulate and plot their records); see the module docstring.

    Args:
        data: the CIFAR-100 folder and its train/val split.
        candidates: the study's candidates (``-c benchmarks/cpu_model_study.yaml`` gives the recorded study).
        only: train only these candidates (by name).
        out: folder of the candidates' records.
        seed: training seed.
        report: write the table and plot into this folder instead of training.
        anchor: (minutes, accuracy %) points of the plain-ViT anchor curve drawn beside the candidates.
        threads: torch's intra-op threads (default: torch's choice, one per core). The recorded study ran with 1
            thread pinned to one core (``taskset -c 0``), so that other work on the second core could not disturb
            its clock; bench_cpu_step.py measures the 1-thread/2-thread step-time ratio that converts it.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise SuiteError(f"--out {out!r} is a file; give a folder for the study's records.")
    if report is not None:
        records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
        if not records:
            raise SuiteError(f"--out {out!r} holds no candidate records; run the study first.")
        write_report(records, anchor or [], Path(report))
        return
    candidates = candidates or []
    names = [c.name for c in candidates]
    unknown = sorted(set(only or []) - set(names))
    if unknown or len(set(names)) != len(names) or not candidates:
        raise SuiteError(
            f"Bad candidate list: names {names}, --only unknown {unknown}. Give -c benchmarks/cpu_model_study.yaml "
            "(unique names) and --only names from it."
        )
    if threads is not None:
        if threads < 1:
            raise SuiteError(f"--threads {threads}: give a positive number of threads.")
        torch.set_num_threads(threads)
    source = data_source(data)
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in candidates:
        if only and candidate.name not in only:
            continue
        path = folder / f"{candidate.name}.json"
        key = fingerprint(candidate, source)
        if path.is_file() and json.loads(path.read_text()).get("fingerprint") == key:
            print(f"{candidate.name}: recorded, skipped")
            continue
        print(f"{candidate.name}: {candidate.epochs} epochs of {candidate.model}", flush=True)
        result = train_candidate(candidate, source, seed)
        record = {"candidate": asdict(candidate), "fingerprint": key, **result}
        write_json_atomic(path, record, indent=1)


if __name__ == "__main__":
    run_cli(main, __doc__)

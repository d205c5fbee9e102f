"""One-shot GPU check: the `gpu10` preset end to end, its timings and the training throughput, in one folder.

    python benchmarks/gpu_check.py --data.data_dir DIR [--data.check_integrity false] --out gpu_check
    python benchmarks/gpu_check.py --fake true --out gpu_check_cpu   # CPU smoke run: tiny models, generated data

Writes ``OUT/report.md`` (the pipeline's report), ``OUT/timings.json`` (wall seconds of every pipeline step, from the
steps' completion markers, and of the whole run against the 600 s target), ``OUT/throughput.json`` (training
images/s of the generalist and the expert architecture, with the data path each step used) and the pipeline's own
folder ``OUT/pipeline/``. ``--fake true`` runs the same preset on CPU with tiny shapes and a generated CIFAR-format
folder, so the script itself is tested without a GPU; its times say nothing about a GPU.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from common import REPO, fake_data_dir, run_cli

from ask_the_expert.commands import pipeline
from ask_the_expert.commands.pipeline_steps import MARKER
from ask_the_expert.utils.atomic import write_json_atomic
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions

PRESET = REPO / "configs" / "experiments" / "gpu10.yaml"
TARGET_SECONDS = 600
# --fake: the preset's steps with models and schedules small enough for a CPU test.
FAKE_OVERRIDES = {
    "data.batch_size": 16,
    "data.num_workers": 0,
    "data.device_resident": False,
    "model.embed_dim": 16,
    "model.depth": 6,  # the preset freezes 6 blocks in stage 2
    "model.num_heads": 2,
    "trainer.max_epochs": 1,
    "trainer.accelerator": "cpu",
    "trainer.precision": "32-true",
    "trainer.logger": False,
    "trainer.callbacks": [],
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}


def step_times(out: Path) -> dict[str, float]:
    """Seconds of every finished pipeline step (``seed_<s>/<step>/step.json``)."""
    times = {}
    for marker in sorted(out.glob(f"seed_*/**/{MARKER}")):
        record = json.loads(marker.read_text())
        times[f"{marker.parts[-3]}/{record['step']}"] = record["seconds"]
    return times


def throughput(out: Path) -> dict[str, dict[str, float]]:
    """Training images/s of each model the pipeline trained, from its run's metrics (steps x batch / wall time)."""
    rates = {}
    for metrics in sorted(out.glob("seed_*/**/*.json")):
        data = json.loads(metrics.read_text())
        if "train_images_per_s" in data:
            rates[str(metrics.relative_to(out))] = {
                "images_per_s": data["train_images_per_s"],
                "seconds": data.get("train_seconds"),
            }
    return rates


def main(*, out: str, data: DataOptions = DataOptions(), fake: bool = False, force: bool = False) -> None:
    """Run the gpu10 preset and write report, timings and throughput into ``out`` (see the module docstring).

    Args:
        out: the folder to write (refused if it exists, unless --force).
        data: the CIFAR-100 folder and split settings (the preset's val split).
        fake: a CPU smoke run with tiny models on a generated folder instead of the real data.
        force: replace an existing ``out``.
    """
    folder = Path(out)
    if folder.exists() and not force:
        raise SuiteError(f"{folder} already exists; choose another --out or pass --force true.")
    if fake:
        # Tiny models: a second thread only adds synchronisation, and on a busy machine it makes every step wait.
        torch.set_num_threads(1)
        data = DataOptions(data_dir=fake_data_dir(3), check_integrity=False, val_size=100, num_workers=0)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    argv = ["--config", str(PRESET), "--out", str(folder / "pipeline"), "--data.data_dir", data.data_dir]
    argv += [f"--data.check_integrity={str(data.check_integrity).lower()}", f"--data.val_size={data.val_size}"]
    if fake:
        argv += ["--common.overrides", json.dumps(FAKE_OVERRIDES), "--data.num_workers=0", "--evaluate.accelerator=cpu"]
        argv += ["--evaluate.precision=32-true", "--evaluate.wandb.mode=disabled", "--export.wandb.mode=disabled"]
    start = time.perf_counter()
    code = pipeline.main(argv)
    total = time.perf_counter() - start
    if code != 0:
        raise SuiteError(f"The gpu10 pipeline failed (exit {code}); its message is above.")
    shutil.copy(folder / "pipeline" / "report.md", folder / "report.md")
    write_json_atomic(
        folder / "timings.json",
        {
            "total_seconds": round(total, 1),
            "target_seconds": TARGET_SECONDS,
            "within_target": total <= TARGET_SECONDS,
            "fake_cpu_smoke_run": fake,
            "steps": step_times(folder / "pipeline"),
        },
    )
    write_json_atomic(folder / "throughput.json", throughput(folder / "pipeline"))
    print(f"gpu10: {total:.0f} s in all (target {TARGET_SECONDS} s); report, timings and throughput in {folder}")


if __name__ == "__main__":
    run_cli(main, __doc__)

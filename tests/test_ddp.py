"""DDP on 2 CPU processes (gloo) through train.py: training shards the epoch, and val metrics equal one process's."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CONFIG_DIR, REPO_ROOT, TINY_MODEL_ARGS, cli_overrides
from torch.utils.data import TensorDataset

from ask_the_expert.commands import train
from ask_the_expert.utils.errors import SuiteError
from datamodules.eval_sampler import distributed_eval_sampler

VAL_SIZE = 101  # odd: a padded sampler would evaluate one image twice on 2 ranks
EVAL_BATCH = 25  # rank 0 gets 51 images (3 batches), rank 1 gets 50 (2 batches): uneven batch counts
BATCH = 16
CSV_LOGGER = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]


def test_eval_sampler_shards_without_padding():
    dataset = TensorDataset(torch.arange(VAL_SIZE))
    assert distributed_eval_sampler(dataset, None) is None
    assert distributed_eval_sampler(dataset, SimpleNamespace(world_size=1, global_rank=0)) is None
    shards = [list(distributed_eval_sampler(dataset, SimpleNamespace(world_size=3, global_rank=r))) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(VAL_SIZE))
    assert [len(s) for s in shards] == [34, 34, 33]
    with pytest.raises(SuiteError, match="fewer than the 3 processes"):
        distributed_eval_sampler(TensorDataset(torch.arange(2)), SimpleNamespace(world_size=3, global_rank=0))


def _val_metrics(log_root: Path) -> dict[str, float]:
    (metrics_csv,) = log_root.glob("lightning_logs/version_*/metrics.csv")
    rows = [row for row in csv.DictReader(metrics_csv.open()) if row.get("val/acc")]
    assert len(rows) == 1, rows
    return {k: float(v) for k, v in rows[0].items() if k.startswith("val/") and v != ""}


@pytest.fixture(scope="module")
def ddp_fit(fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny generalist on 2 gloo processes, device-resident data, logged to CSV."""
    out = tmp_path_factory.mktemp("ddp_fit")
    args = [
        sys.executable, str(REPO_ROOT / "train.py"), "fit", "-c", str(CONFIG_DIR / "generalist.yaml"),
        *cli_overrides(fake_cifar_root, out, val_size=VAL_SIZE, batch_size=BATCH), *TINY_MODEL_ARGS,
        "--data.eval_batch_size", str(EVAL_BATCH),
        "--data.augmentation", "basic", "--data.device_resident", "true",
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
        *CSV_LOGGER, "--trainer.logger.save_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    try:
        result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"DDP fit hung (a collective called on one rank only?):\n{(err.stderr or b'')[-3000:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_ddp_trains_on_disjoint_shares_of_the_epoch(ddp_fit: Path):
    (last,) = ddp_fit.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    train_size = 600 - VAL_SIZE
    # Each rank takes a disjoint share of whole per-device batches: the global batch is BATCH x 2.
    assert checkpoint["global_step"] == train_size // (BATCH * 2)


def _validate_args(ddp_fit: Path, data: Path, out: Path, devices: int) -> list[str]:
    (last,) = ddp_fit.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    return [
        "validate", "-c", str(CONFIG_DIR / "generalist.yaml"),
        *cli_overrides(data, out, val_size=VAL_SIZE, batch_size=BATCH), *TINY_MODEL_ARGS,
        "--data.eval_batch_size", str(EVAL_BATCH), "--trainer.devices", str(devices),
        *CSV_LOGGER, "--trainer.logger.save_dir", str(out), "--ckpt_path", str(last),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def single_process_validate(ddp_fit: Path, fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The val metrics of the DDP-trained checkpoint, validated in this one process."""
    out = tmp_path_factory.mktemp("validate_single")
    assert train.main(_validate_args(ddp_fit, fake_cifar_root, out, 1)) == 0
    return _val_metrics(out)


def _assert_same_val_metrics(ddp: dict[str, float], single: dict[str, float]) -> None:
    # Counts-based metrics are exact; ECE sums the same confidences in another order.
    exact = [k for k in single if k.startswith(("val/acc", "val/superclass_acc/"))]
    assert "val/acc" in exact and "val/acc_top5" in exact and len(exact) > 2
    assert {k: ddp[k] for k in exact} == {k: single[k] for k in exact}
    assert ddp["val/ece"] == pytest.approx(single["val/ece"], abs=1e-6)


def test_ddp_val_metrics_equal_a_single_process_validate(ddp_fit: Path, single_process_validate: dict[str, float]):
    ddp = _val_metrics(ddp_fit)
    _assert_same_val_metrics(ddp, single_process_validate)
    # The loss is a mean of per-rank batch means, not a per-sample mean, so it is only close.
    assert ddp["val/loss"] == pytest.approx(single_process_validate["val/loss"], rel=1e-2)


def _evaluate(args: list[str], out: Path, devices: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO_ROOT / "evaluate.py"), *args, "--out", str(out), "--devices", str(devices)]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    try:
        return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"DDP evaluation hung:\n{(err.stderr or b'')[-3000:]}")


def _records(folder: Path) -> dict[str, list[str]]:
    with (folder / "records.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {k: [r[k] for r in rows] for k in rows[0]}


@pytest.fixture(scope="module")
def single_process_evaluation(fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from test_collaborative_system import shared_checkpoints

    ck = shared_checkpoints(tmp_path_factory)
    args = [
        "--generalist", str(ck.generalist), "--experts", f"[{ck.experts}]", "--static_experts", f"[{ck.static}]",
        "--base", str(ck.base), "--data.data_dir", str(fake_cifar_root), "--data.check_integrity", "false",
        "--data.val_size", str(VAL_SIZE), "--data.batch_size", str(EVAL_BATCH), "--data.num_workers", "0",
        "--k", "[1, 3]", "--accelerator", "cpu", "--wandb.mode", "disabled", "--bootstrap", "100",
    ]  # fmt: skip
    out = tmp_path_factory.mktemp("eval_single") / "out"
    result = _evaluate(args, out, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    return args, out / "val"


def test_ddp_evaluation_on_uneven_shards_equals_one_process(single_process_evaluation, tmp_path: Path):
    """val 101 on 3 ranks: shards of 34/34/33; the temperature fit gathers unequal shards."""
    args, single = single_process_evaluation
    result = _evaluate(args, tmp_path / "out", 3)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "out" / "val"
    a, b = json.loads((single / "summary.json").read_text()), json.loads((ddp / "summary.json").read_text())
    assert b["num_samples"] == a["num_samples"]  # the assessment part of val
    assert b["temperature"] == pytest.approx(a["temperature"], rel=1e-6)
    assert b["forwards"] == a["forwards"]  # every pair once, no padding duplicates
    ra, rb = _records(single), _records(ddp)
    assert len(ra["index"]) == len(rb["index"]) == VAL_SIZE  # every val image once, whatever part it is in
    assert ra.keys() == rb.keys()
    for column in ra:
        if column.startswith(("conf_", "g_features", "g_max_prob")) or column.endswith("_prob"):
            assert np.allclose(np.float64(ra[column]), np.float64(rb[column]), rtol=1e-5, atol=1e-6), column
        else:
            assert ra[column] == rb[column], column  # decisions, classes, indices: identical
    sa = {(s["policy"], s["k"], s["confidence"]): s for s in a["scalars"]}
    for s in b["scalars"]:
        assert s["acc@30%"] == sa[s["policy"], s["k"], s["confidence"]]["acc@30%"]


def test_ddp_validate_on_three_ranks_equals_a_single_process(
    ddp_fit: Path, single_process_validate: dict[str, float], fake_cifar_root: Path, tmp_path: Path
):
    """val 101 on 3 ranks of a validate run: shards of 34/34/33, uneven batch counts."""
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *_validate_args(ddp_fit, fake_cifar_root, tmp_path, 3)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_val_metrics(_val_metrics(tmp_path), single_process_validate)

"""ate-train-experts end to end (stage 0, progressive and static experts, resume) and bad input on the CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, REPO_ROOT, TrainedRun

from ask_the_expert.commands import train, train_experts

EXPERTS = REPO_ROOT / "tests" / "conf" / "experts_tiny.yaml"
# What a test's train.py runs add after a model config: tiny and quiet runs on the generated folder.
TINY_RUN = ["-c", str(REPO_ROOT / "tests" / "conf" / "tiny_runs.yaml"), "--trainer.logger=false"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the fixtures name their configs relative to the repository


@pytest.fixture
def job_args(fake_cifar_root: Path, tiny_generalist_run: TrainedRun, tmp_path: Path) -> list[str]:
    """ate-train-experts on tests/conf/experts_tiny.yaml (2 experts of 10 superclasses, every variant, R_j from the
    session's tiny generalist), logging nothing, on the generated folder."""
    return [
        "--config", str(EXPERTS), "--out", str(tmp_path / "out"), "--common.overrides", "{trainer.logger: false}",
        "--generalist_checkpoint", str(tiny_generalist_run.best_ckpt),
        "--data.data_dir", str(fake_cifar_root), "--data.check_integrity", "false", "--data.val_size", "100",
    ]  # fmt: skip


def test_train_all_experts_then_resume_without_retraining(job_args: list[str], tmp_path: Path) -> None:
    args = job_args
    out = tmp_path / "out"
    base = out / "base" / "base.ckpt"
    variants = ("progressive", "static", "static_init")
    ckpt = {(m, j): out / m / f"expert_{j}.ckpt" for m in variants for j in (0, 1)}

    # A first job that stops after one expert, as if it had been killed.
    assert train_experts.main([*args, "--max_experts", "1"]) == 0
    assert base.is_file() and ckpt["progressive", 0].is_file()
    assert [p for k, p in ckpt.items() if p.is_file()] == [ckpt["progressive", 0]]
    assert not list(out.rglob("*.tmp*"))
    done = {p: p.stat().st_mtime_ns for p in (base, ckpt["progressive", 0])}

    assert train_experts.main(args) == 0
    assert all(p.is_file() for p in ckpt.values())
    assert {p: p.stat().st_mtime_ns for p in done} == done  # nothing retrained

    # Every expert checkpoint records its subset, schedule and start.
    progressive = torch.load(ckpt["progressive", 1], weights_only=False)["hyper_parameters"]
    assert progressive["role"] == "expert" and progressive["expert_index"] == 1 and len(progressive["subset"]) == 50
    assert progressive["base_checkpoint"] == str(base) and progressive["base_checkpoint_sha256"]
    assert [s["rho"] for s in progressive["stages"]] == [0.5, 0.8]
    static = torch.load(ckpt["static", 1], weights_only=False)["hyper_parameters"]
    assert static["base_checkpoint"] == str(base) and static["subset"] == progressive["subset"]
    static_init = torch.load(ckpt["static_init", 1], weights_only=False)["hyper_parameters"]
    assert static_init["base_checkpoint"] is None and static_init["subset"] == progressive["subset"]
    # Every expert reads the partition written once next to them.
    assert progressive["partition"] == {"subsets": train_experts.parse_partition_spec(str(out / "partition.json"))}

    # Static-from-base runs exactly the progressive stages' steps; static-from-init adds stage 0's steps.
    base_steps = torch.load(base, weights_only=False)["global_step"]
    for j in (0, 1):
        steps = {m: json.loads(ckpt[m, j].with_suffix(".json").read_text())["global_step"] for m in variants}
        assert steps["static"] == steps["progressive"]
        assert steps["static_init"] == base_steps + steps["progressive"]
        assert json.loads(ckpt["static", j].with_suffix(".json").read_text())["val/subset_acc"] >= 0


def test_the_readmes_partition_argument_is_a_number_of_superclasses_per_expert() -> None:
    job, _ = train_experts.parse_job(["--partition", "5"])
    assert job.partition == 5 and len(train_experts.parse_partition_spec(job.partition)) == 4


def test_a_truncated_generalist_checkpoint_is_refused_before_stage_0(
    job_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    truncated = tmp_path / "g.ckpt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    args = [*job_args, "--generalist_checkpoint", str(truncated)]
    assert train_experts.main(args) == 2
    err = capsys.readouterr().err
    assert "--generalist_checkpoint" in err and "not a readable Lightning checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--experts", "[2]"], "out of range"),
        (["--partition", "[[0, 1], [1]]"], "do not partition"),
        (["--parallel", "2"], "GPUs"),
        (["--variants", "[progressive, mixed]"], "variants"),
        (["--generalist_checkpoint", "missing.ckpt"], "does not exist"),
        (["--progressive.overrides", "{model.stages: [{epochs: 1, rho: 2.0}]}"], "outside [0, 1]"),
        (["--static.overrides", "{model.no_such_option: 1}"], "no_such_option"),
    ],
)
def test_train_experts_bad_input_exits_2(
    job_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    assert train_experts.main([*job_args, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "generalist_checkpoint"),  # configs/expert.yaml's stage 2 draws from routed_in
        (["--model.stages=[]"], "empty"),
        (["--model.stages=[{epochs: 1, rho: 2.0}]"], "outside [0, 1]"),
        (["--model.stages=[{epochs: -2}]"], "epochs=-2"),
        (["--model.stages=[{epochs: 1, frozen_blocks: 5}]"], "model has 1"),
        (["--model.expert_index=30"], "out of range"),
        (["--model.partition=[[0], [1]]"], "do not partition"),
    ],
)
def test_train_py_refuses_bad_expert_config(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    args = ["fit", "-c", str(CONFIG_DIR / "expert.yaml"), *TINY_RUN, f"--data.data_dir={fake_cifar_root}"]
    args += ["--data.check_integrity=false", "--data.val_size=100"]
    code = train.main([*args, f"--trainer.default_root_dir={tmp_path / 'out'}", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))

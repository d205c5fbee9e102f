"""ate-train-experts end to end (stage 0, progressive and static experts, resume) and bad input on the CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIG_DIR

from ask_the_expert.commands import train, train_experts

RUN_ARGS = [
    "--data.check_integrity=false",
    "--data.val_size=100",
    "--data.batch_size=16",
    "--data.num_workers=0",
    "--model.embed_dim=16",
    "--model.depth=2",
    "--model.num_heads=2",
    "--trainer.logger=false",
    "--trainer.callbacks=[]",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
PROGRESSIVE = (
    "--model.stages=[{epochs: 1, lr: 1.0e-3, rho: 0.5}, "
    "{epochs: 1, lr: 1.0e-4, rho: 0.8, frozen_blocks: 1, kd_weight: 0.5}]"
)


def job_config(tmp_path: Path, data_dir: Path) -> Path:
    config = {
        "out": str(tmp_path / "out"),
        "partition": 10,  # 2 experts of 10 superclasses
        "variants": ["progressive", "static", "static_init"],
        "base_config": [str(CONFIG_DIR / "base.yaml")],
        "progressive_config": [str(CONFIG_DIR / "expert.yaml")],
        "static_config": [str(CONFIG_DIR / "expert_static.yaml")],
        "common_config": [str(CONFIG_DIR / "trainer" / "cpu.yaml")],
        "data": {"data_dir": str(data_dir), "check_integrity": False, "val_size": 100},
        "args": RUN_ARGS,
        "base_args": ["--trainer.max_epochs=1"],
        "progressive_args": [PROGRESSIVE],
        "static_args": ["--model.stages=[{epochs: 1, lr: 1.0e-3, rho: 1.0}]"],
        "test": False,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_all_experts_then_resume_without_retraining(fake_cifar_root: Path, tmp_path: Path) -> None:
    config = job_config(tmp_path, fake_cifar_root)
    out = tmp_path / "out"
    base = out / "base" / "base.ckpt"
    variants = ("progressive", "static", "static_init")
    ckpt = {(m, j): out / m / f"expert_{j}.ckpt" for m in variants for j in (0, 1)}

    # A first job that stops after one expert, as if it had been killed.
    assert train_experts.main(["--config", str(config), "--max_experts", "1"]) == 0
    assert base.is_file() and ckpt["progressive", 0].is_file()
    assert [p for k, p in ckpt.items() if p.is_file()] == [ckpt["progressive", 0]]
    assert not list(out.rglob("*.tmp*"))
    done = {p: p.stat().st_mtime_ns for p in (base, ckpt["progressive", 0])}

    assert train_experts.main(["--config", str(config)]) == 0
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
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    truncated = tmp_path / "g.ckpt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    config = job_config(tmp_path, fake_cifar_root)
    assert train_experts.main(["--config", str(config), "--generalist_checkpoint", str(truncated)]) == 2
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
        (["--progressive_args", '["--model.stages=[{epochs: 1, rho: 2.0}]"]'], "outside [0, 1]"),
        (["--static_args", "[--model.no_such_option=1]"], "no_such_option"),
    ],
)
def test_train_experts_bad_input_exits_2(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    config = job_config(tmp_path, fake_cifar_root)
    assert train_experts.main(["--config", str(config), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "generalist_checkpoint"),  # configs/expert.yaml's stage 2 draws from routed_in
        (["--model.stages=[]"], "empty"),
        (["--model.stages=[{epochs: 1, rho: 2.0}]"], "outside [0, 1]"),
        (["--model.stages=[{epochs: -2}]"], "epochs=-2"),
        (["--model.stages=[{epochs: 1, frozen_blocks: 5}]"], "model has 2"),
        (["--model.expert_index=30"], "out of range"),
        (["--model.partition=[[0], [1]]"], "do not partition"),
    ],
)
def test_train_py_refuses_bad_expert_config(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    args = ["fit", "-c", str(CONFIG_DIR / "expert.yaml"), f"--data.data_dir={fake_cifar_root}", *RUN_ARGS]
    code = train.main([*args, f"--trainer.default_root_dir={tmp_path / 'out'}", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))

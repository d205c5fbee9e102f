"""ate-partition: confusion-aware groups learned from the generalist's val confusion, their hit rates, bad input;
and the pipeline step that learns them for the experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from ask_the_expert.commands import partition, pipeline
from ask_the_expert.commands.pipeline_steps import MARKER
from ask_the_expert.method.subsets import load_partition, validate_partition

TINY = REPO_ROOT / "tests" / "conf" / "pipeline_tiny.yaml"
DATA = ["--data.check_integrity", "false", "--data.val_size", "100", "--data.num_workers", "0"]


def test_learns_balanced_groups_and_reports_hit_rates(tiny_generalist_run, fake_cifar_root: Path, tmp_path: Path):
    out = tmp_path / "partition.json"
    args = ["--generalist", str(tiny_generalist_run.last_ckpt), "--num_experts", "4", "--out", str(out)]
    assert partition.main([*args, "--data.data_dir", str(fake_cifar_root), *DATA]) == 0
    subsets, meta = load_partition(out)
    validate_partition(subsets, 100)
    assert sorted(len(s) for s in subsets) == [25, 25, 25, 25]
    rates = meta["hit_rates"]
    for name in (
        "learned (in-sample: all of val)",
        "learned on half A, measured on half B",
        "superclass groups (half B)",
    ):
        assert set(rates[name]) == {"1", "3"} and all(0 <= v <= 1 for v in rates[name].values())
    # The held-out gain is learned minus superclass on half B, with a paired interval around it.
    for k, gain in meta["held_out_gain_over_superclass"].items():
        learned_b, superclass_b = (
            rates["learned on half A, measured on half B"][k],
            rates["superclass groups (half B)"][k],
        )
        assert gain["difference"] == pytest.approx(learned_b - superclass_b, abs=1e-12)
        assert gain["low"] <= gain["difference"] <= gain["high"]
        assert gain["verdict"] in ("holds", "fails", "not established")
    # The two k values are one family, Holm-corrected: the smaller p-value is tested at 0.05 / 2.
    gains = meta["held_out_gain_over_superclass"].values()
    first = min(gains, key=lambda g: g["p_value"])
    assert first["level"] == pytest.approx(1 - 0.05 / 2)
    assert first["p_adjusted"] == pytest.approx(min(1.0, 2 * first["p_value"]))
    assert meta["temperature_half_a"] > 0
    assert meta["temperature"] > 0 and meta["num_val_images"] == 100
    # The in-sample hit rate is computed on the very images the groups were learned from: never below the
    # superclass groups' on them (the learned groups maximise within-group confusion).
    assert rates["learned (in-sample: all of val)"]["1"] >= rates["superclass groups (all of val)"]["1"] - 0.1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num_experts", "1"], "2..100"),
        (["--generalist", "missing.ckpt"], "does not exist"),
        (["--k", "[0]"], "k values must be integers"),
    ],
)
def test_bad_input_is_refused(tiny_generalist_run, fake_cifar_root, tmp_path, capsys, extra, message):
    args = ["--generalist", str(tiny_generalist_run.last_ckpt), "--num_experts", "4", "--out", str(tmp_path / "p.json")]
    assert partition.main([*args, "--data.data_dir", str(fake_cifar_root), *DATA, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_the_pipeline_learns_the_groups_and_trains_the_experts_on_them(
    fake_cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "confusion"
    argv = ["--config", str(TINY), "--data.data_dir", str(fake_cifar_root), "--out", str(out), "--experts_config",
            "tests/conf/experts_tiny_confusion.yaml", "--steps", "[generalist, partition, experts]"]  # fmt: skip
    assert pipeline.main(argv) == 0
    learned, meta = load_partition(out / "seed_0" / "partition" / "partition.json")
    assert meta["method"] == "confusion" and len(learned) == 2
    expert = torch.load(out / "seed_0" / "experts" / "progressive" / "expert_1.ckpt", weights_only=False)
    assert expert["hyper_parameters"]["partition"] == {"subsets": learned}
    assert expert["hyper_parameters"]["subset"] == learned[1]
    assert json.loads((out / "seed_0" / "partition" / MARKER).read_text())["step"] == "partition"

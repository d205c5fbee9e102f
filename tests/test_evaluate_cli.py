"""evaluate.py end to end on tiny checkpoints and generated data, and every bad input (exit 2, no traceback)."""

from __future__ import annotations

import csv
import inspect
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_collaborative_system import Checkpoints, shared_checkpoints
from test_pipeline_wandb import offline_run_list

from ask_the_expert.commands import evaluate
from ask_the_expert.deploy.export import evaluate_for_export, load_export_models
from ask_the_expert.method.router import RouterSpec
from ask_the_expert.results.evaluation_outputs import CURVE_COLUMNS
from ask_the_expert.utils.options import DataOptions
from datamodules.cifar100 import labelled_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def collab_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return shared_checkpoints(tmp_path_factory)


def base_args(ck: Checkpoints, data: Path, out: Path) -> list[str]:
    return [
        "--generalist", str(ck.generalist), "--experts", f"[{ck.experts}]", "--data.data_dir", str(data),
        "--data.check_integrity", "false", "--data.val_size", "100", "--k", "[1, 3]", "--out", str(out),
        "--data.num_workers", "0", "--data.batch_size", "64", "--accelerator", "cpu", "--wandb.mode", "offline",
    ]  # fmt: skip


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    parameters = inspect.signature(evaluate.evaluate).parameters
    for name in parameters:
        assert f"--{name}" in text, name
    documented = inspect.getdoc(evaluate.evaluate)
    assert all(f"{name}:" in documented for name in parameters)
    for option in ("--data.data_dir", "--data.check_integrity", "--wandb.mode", "--config", "--print_config"):
        assert option in text


def test_print_config_shows_every_resolved_option(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--generalist", "g.ckpt", "--experts", "[e/]", "--out", str(tmp_path), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["generalist"] == "g.ckpt" and printed["data"]["val_size"] == 5000 and printed["temperature"] == "fit"


def test_evaluate_val_in_process_then_refuses_to_overwrite(
    collab_checkpoints: Checkpoints,
    fake_cifar_root: Path,
    tmp_path: Path,
    capsys,
):
    out = tmp_path / "eval"
    args = [*base_args(collab_checkpoints, fake_cifar_root, out), "--static_experts", f"[{collab_checkpoints.static}]",
            "--base", str(collab_checkpoints.base), "--confidence", "[max_prob, margin]"]  # fmt: skip
    assert evaluate.main(args) == 0
    with (out / "val" / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CURVE_COLUMNS
    assert {r["confidence"] for r in rows} == {"max_prob", "margin", "random", "learned"}
    assert {r["policy"] for r in rows} == {"routed", "fused", "static", "base", "oracle", "random", "generalist_only",
                                           "all_offloaded"}  # fmt: skip
    with (out / "val" / "records.csv").open() as f:
        header = next(csv.reader(f))
    for column in ("index", "label", "g_pred", "g_top2_prob", "conf_margin", "expert_k3", "pred_k3", "correct_k3",
                   "part", "oracle_expert", "pred_oracle", "static_pred_k1", "pred_base", "correct_base"):  # fmt: skip
        assert column in header
    assert json.loads((out / "val" / "complete.json").read_text())["files"]
    assert not list(out.glob(".*.partial"))
    summary = json.loads((out / "val" / "summary.json").read_text())
    assert summary["num_samples"] == 50 and summary["k_values"] == [1, 3]
    # A val-only evaluation: 20 val images fit the deferral rule, 30 choose, 50 are assessed (the defaults).
    assert summary["protocol"]["sizes"] == {"deferral": 20, "selection": 30, "assessment": 50}
    assert summary["reported_on"] == "val assessment part" and summary["temperature_fit_on"] == "val selection part"
    members = {f["member"] for f in summary["findings"] if f["family"] == "primary"}
    assert members == {"progressive_vs_static", "routed_vs_base", "routed_vs_generalist", "learned_vs_confidence"}
    assert summary["primary_family"] == {"k": 3, "offload": 0.3, "members": None, "alpha": 0.05}
    # One operating-point chooser: an export of the same models on the same val picks the evaluation's tau (and T).
    data = labelled_images(DataOptions(str(fake_cifar_root), False, 100, num_workers=0), "val")
    for k in (1, 3):
        spec = RouterSpec(k=k)
        models = load_export_models(collab_checkpoints.generalist, [collab_checkpoints.experts], spec)
        chosen, _, metrics = evaluate_for_export(models, data, spec, 0.005, "expert")
        point = next(
            p for p in summary["operating_points"]
            if (p["policy"], p["k"], p["confidence"], p["profile"]) == ("routed", k, "max_prob", "edge_arm_wifi")
        )  # fmt: skip
        assert chosen.temperature == pytest.approx(summary["temperature"], rel=1e-5)
        assert chosen.tau == pytest.approx(point["tau"], abs=1e-6)
        assert metrics["collaboration"]["accuracy"] == point["accuracy"] and metrics["num_samples"] == 50
    assert summary["operating_points"] and summary["scalars"] and summary["profiles"]["edge_arm_wifi"]["baselines"]
    assert list((out / "wandb").glob("offline-run-*"))
    assert not (out / "test").exists()
    assert "Validate metric" not in capsys.readouterr().out  # no Lightning results table in a log (not a terminal)

    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "already holds results" in err and "--force" in err and "Traceback" not in err
    # Replaced by an evaluation of another expert set (the static experts routed to).
    assert evaluate.main([*args, "--experts", f"[{collab_checkpoints.static}]", "--force", "true"]) == 0

    # Two evaluations of different expert sets, read back from their offline W&B files: distinct names and groups
    # (split, partition size, a hash of the expert set), job type evaluate, both in OUT/wandb.
    runs = offline_run_list(out)
    assert [r["run"].job_type for r in runs] == ["evaluate", "evaluate"]
    names = [r["run"].display_name for r in runs]
    groups = [r["run"].run_group for r in runs]
    assert len(set(names)) == 2 and len(set(groups)) == 2
    for r in runs:
        assert re.fullmatch(r"evaluate-val-4experts-[0-9a-f]{6}", r["run"].run_group)
        assert r["run"].display_name == f"{r['run'].run_group}-{r['run'].run_id}"
        assert {"evaluate", "val"} <= set(r["run"].tags)
    assert {p.parent for p in out.rglob("offline-run-*")} == {out / "wandb"}


def _empty_test_split(root: Path, source: Path) -> Path:
    """A copy of the fake folder ``source`` whose test file has no images."""
    data = root / "cifar-100-python"
    data.mkdir(parents=True)
    for name in ("meta", "train"):
        (data / name).write_bytes((source / "cifar-100-python" / name).read_bytes())
    empty = {"filenames": [], "batch_label": "empty", "fine_labels": [], "coarse_labels": []}
    empty["data"] = np.zeros((0, 3072), dtype=np.uint8)
    with (data / "test").open("wb") as f:
        pickle.dump(empty, f, protocol=2)
    return root


def test_bad_inputs_exit_2_with_a_message(
    collab_checkpoints: Checkpoints,
    fake_cifar_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    ck = collab_checkpoints
    bad_profile = tmp_path / "bad_profile.yaml"
    text = (REPO / "configs/profiles/edge_arm_wifi.yaml").read_text()
    bad_profile.write_text(text.replace("rtt_ms: 6.0", "rtt_ms: -6.0").replace("power_idle_w: 2.7", ""))
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    for j in (0, 2, 3):
        (overlap / f"e{j}.ckpt").write_bytes((ck.experts / f"e{j}.ckpt").read_bytes())
    (overlap / "e1.ckpt").write_bytes((ck.experts20 / "e01.ckpt").read_bytes())
    empty = _empty_test_split(tmp_path / "empty", fake_cifar_root)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ck.generalist.read_bytes()[:1000])
    cases = {
        "overlap": (["--experts", f"[{overlap}]"], "more than one expert"),
        "not a generalist": (["--generalist", str(ck.experts / "e0.ckpt")], "not of the edge generalist"),
        "not an expert": (["--experts", f"[{ck.generalist}]"], "not of an expert"),
        "unknown measure": (["--confidence", "[variance]"], "Unknown confidence measure"),
        "k < 1": (["--k", "[0]"], "k values must be integers in 1..100"),
        "k > 100": (["--k", "[1, 101]"], "k values must be integers in 1..100"),
        "bad profile": (
            ["--profiles", f"[{bad_profile}]"],
            "missing fields: edge.power_idle_w; invalid fields: link.rtt_ms",
        ),
        "empty split": (["--data.data_dir", str(empty), "--split", "test", "--temperature", "1.0"], "empty"),
        "batch size 0": (["--data.batch_size", "0"], "--data.batch_size is 0"),
        "workers -2": (["--data.num_workers", "-2"], "--data.num_workers is -2"),
        "truncated generalist": (["--generalist", str(truncated)], "not a readable Lightning checkpoint"),
        "primary k": (["--primary.k", "5"], "--primary.k 5 is not among the evaluated k values [1, 3]"),
        "member without model": (
            ["--primary.members", "[progressive_vs_static_init]"],
            "needs what this evaluation lacks: progressive_vs_static_init (--static_init_experts)",
        ),
        "bad shares": (["--selection.assessment", "0.9", "--selection.deferral", "0.2"], "with a sum below 1"),
        "val too small": (["--data.val_size", "1"], "1 images leave the assessment part empty"),
        "missing generalist": (["--generalist", str(tmp_path / "nope.ckpt")], "does not exist"),
    }
    for name, (extra, match) in cases.items():
        out = tmp_path / ("out_" + name.replace(" ", "_"))
        code = evaluate.main([*base_args(ck, fake_cifar_root, out), *extra, "--wandb.mode", "disabled"])
        err = capsys.readouterr().err
        assert code == 2, name
        assert match in " ".join(err.split()), (name, err)
        assert "Traceback" not in err, name
        assert not out.exists(), name  # refused before anything was written


def test_evaluate_test_split_in_a_subprocess(collab_checkpoints: Checkpoints, fake_cifar_root: Path, tmp_path: Path):
    out = tmp_path / "eval"
    args = [*base_args(collab_checkpoints, fake_cifar_root, out), "--split", "test", "--wandb.mode", "disabled"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("val", "test"):
        for name in ("curves.csv", "summary.json", "records.csv", "plots/acc_vs_offload.png"):
            assert (out / split / name).is_file(), (split, name)
    test = json.loads((out / "test" / "summary.json").read_text())
    assert test["num_samples"] == 200 and all(p["chosen_on"] == "val selection part" for p in test["operating_points"])
    val = json.loads((out / "val" / "summary.json").read_text())
    assert val["protocol"]["sizes"] == {"deferral": 20, "selection": 80, "assessment": 0}
    assert "Collaborative inference on test" in proc.stdout

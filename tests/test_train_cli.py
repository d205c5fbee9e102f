"""train.py end to end through the real configs: fit/validate/test, bad input -> exit 2, configs parse."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIG_DIR, REPO_ROOT, TrainedRun
from fake_cifar100 import write_fake_cifar100
from test_pipeline_wandb import offline_run_list

from ask_the_expert.commands import train
from ask_the_expert.utils.hashing import file_sha256
from lightning_modules.classifier import ClassifierModule

GENERALIST = str(CONFIG_DIR / "generalist.yaml")
pytestmark = [
    # In-process runs pass args while sys.argv holds pytest's own; the fake folders are re-packed copies.
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:.*differs from the published CIFAR-100 file"),
]


def run_cli(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str, str]:
    code = train.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code: int, out: str, err: str, *phrases: str) -> str:
    """Exit 2, no traceback, and one ``error:`` paragraph (a single line) that contains every phrase."""
    assert code == 2, err[-2000:]
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def printed_metric(out: str, name: str) -> float:
    """A value from Lightning's printed results table."""
    match = re.search(rf"\b{re.escape(name)}\s*│\s*([0-9.eE+-]+)", out)
    assert match, f"{name} not in the printed results:\n{out[-3000:]}"
    return float(match.group(1))


def test_fit_writes_checkpoints_and_offline_wandb_run(tiny_generalist_run: TrainedRun, fake_cifar_root: Path):
    run = tiny_generalist_run
    assert run.last_ckpt.is_file() and run.best_ckpt.is_file()
    saved = yaml.safe_load((run.wandb_run_dir / "files" / "cli_config.yaml").read_text())
    # The same resolved config beside the checkpoints and inside each of them.
    beside = yaml.safe_load((run.last_ckpt.parent / "config.yaml").read_text())
    assert beside["model"] == saved["model"] and beside["data"] == saved["data"]
    inside = torch.load(run.last_ckpt, map_location="cpu", weights_only=True)["suite_config"]
    assert yaml.safe_load(inside)["model"] == saved["model"]
    # The fit logged its best and last checkpoints as model artifacts that carry the files.
    [fit] = offline_run_list(run.wandb_run_dir.parent)
    assert re.fullmatch(rf"generalist-seed42-{fit['run'].run_id}", fit["run"].display_name)
    assert re.fullmatch(r"generalist-[0-9a-f]{6}", fit["run"].run_group) and fit["run"].job_type == "train-generalist"
    artifacts = {a["name"]: a for a in fit["artifacts"]}
    assert artifacts == {
        f"generalist-{file_sha256(run.best_ckpt)[:12]}": artifacts[f"generalist-{file_sha256(run.best_ckpt)[:12]}"],
        f"generalist-{file_sha256(run.last_ckpt)[:12]}": artifacts[f"generalist-{file_sha256(run.last_ckpt)[:12]}"],
    }
    assert "best" in artifacts[f"generalist-{file_sha256(run.best_ckpt)[:12]}"]["aliases"]
    assert set(artifacts[f"generalist-{file_sha256(run.last_ckpt)[:12]}"]["files"]) == {"last.ckpt"}
    for a in artifacts.values():
        assert a["type"] == "model" and all(ref == "" and size > 0 for ref, size, _ in a["files"].values())
    # --data.data_dir / --data.check_integrity are the CLI names (the fit read the re-packed fake folder).
    assert saved["data"]["init_args"]["data_dir"] == str(fake_cifar_root)
    assert saved["data"]["init_args"]["check_integrity"] is False
    assert saved["model"]["init_args"]["depth"] == 1
    # The checkpoint alone rebuilds the trained network.
    checkpoint = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)
    model = ClassifierModule.load_from_checkpoint(run.last_ckpt, map_location="cpu")
    assert (model.hparams.embed_dim, model.hparams.depth, model.hparams.num_heads) == (16, 1, 2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][name]), name


def test_validate_reproduces_the_best_checkpoints_val_acc(tiny_generalist_run: TrainedRun, capsys):
    code, out, err = run_cli(
        capsys,
        [
            "validate",
            "-c",
            GENERALIST,
            *tiny_generalist_run.args,
            "--ckpt_path",
            str(tiny_generalist_run.best_ckpt),
        ],
    )
    assert code == 0, err[-2000:]
    # Same split, same weights: the accuracy ModelCheckpoint wrote into the file name.
    recorded = float(re.search(r"acc([0-9.]+)\.ckpt$", tiny_generalist_run.best_ckpt.name).group(1))
    assert printed_metric(out, "val/acc") == pytest.approx(recorded, abs=5e-5)
    assert 0 <= printed_metric(out, "val/ece") <= 1


def test_validate_rebuilds_the_run_from_the_checkpoint_alone_and_each_run_is_its_own(
    tiny_generalist_run: TrainedRun, tmp_path: Path, capsys
):
    best = tiny_generalist_run.best_ckpt
    recorded = float(re.search(r"acc([0-9.]+)\.ckpt$", best.name).group(1))
    for _ in range(2):  # no config: model, data and trainer come from the checkpoint
        argv = ["validate", "--ckpt_path", str(best), "--trainer.logger.init_args.save_dir", str(tmp_path)]
        code, out, err = run_cli(capsys, argv)
        assert code == 0, err[-2000:]
        assert printed_metric(out, "val/acc") == pytest.approx(recorded, abs=5e-5)  # the same model on the same split

    # Two validate runs of one checkpoint, read back from their offline W&B files: two runs with their own names,
    # one group named after the checkpoint (its sha256 prefix), job type validate-generalist, not the fit's run.
    runs = offline_run_list(tmp_path)
    assert [r["run"].job_type for r in runs] == ["validate-generalist", "validate-generalist"]
    sha = file_sha256(best)
    assert {r["run"].run_group for r in runs} == {f"validate-generalist-{sha[:6]}"}
    assert len({r["run"].display_name for r in runs}) == 2
    assert all(r["run"].display_name == f"validate-generalist-{sha[:6]}-{r['run'].run_id}" for r in runs)
    fit_id = tiny_generalist_run.wandb_run_dir.name.rsplit("-", 1)[1]
    assert fit_id not in {r["run"].run_id for r in runs}
    assert all({"validate", "generalist", "e16-d1-h2"} <= set(r["run"].tags) for r in runs)


def test_validate_without_a_model_needs_a_checkpoint_that_records_one(tmp_path: Path, capsys):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"role": "generalist"}}, plain)  # no class recorded
    code, out, err = run_cli(capsys, ["validate", "--ckpt_path", str(plain)])
    assert_clean_error(code, out, err, "does not record which model class", "-c configs/")
    assert not list(tmp_path.rglob("offline-run-*"))


def test_test_subcommand_reports_test_acc(tiny_generalist_run: TrainedRun, tmp_path: Path, capsys):
    # With W&B disabled the resolved config is kept beside the run's checkpoints.
    outputs = ["--trainer.logger.mode", "disabled", "--trainer.logger.save_dir", str(tmp_path)]
    args = [*tiny_generalist_run.args, *outputs, "--ckpt_path", str(tiny_generalist_run.last_ckpt)]
    code, out, err = run_cli(capsys, ["test", "-c", GENERALIST, *args])
    assert code == 0, err[-2000:]
    (saved,) = tmp_path.glob("ask-the-expert/*/cli_config.yaml")
    assert yaml.safe_load(saved.read_text())["ckpt_path"] == str(tiny_generalist_run.last_ckpt)
    assert 0 <= printed_metric(out, "test/acc") <= printed_metric(out, "test/acc_top5") <= 1


def test_checkpoint_of_another_architecture_is_refused(tiny_generalist_run: TrainedRun, capsys):
    args = [
        *tiny_generalist_run.args,
        "--model.depth",
        "2",
        "--ckpt_path",
        str(tiny_generalist_run.last_ckpt),
    ]
    code, out, err = run_cli(capsys, ["validate", "-c", GENERALIST, *args])
    assert_clean_error(code, out, err, "expected depth=2, found depth=1")


def test_test_without_test_file_is_refused(fake_cifar_train_only: Path, cli_args, tiny_model_args, capsys):
    code, out, err = run_cli(capsys, ["test", "-c", GENERALIST, *cli_args(fake_cifar_train_only), *tiny_model_args])
    assert_clean_error(code, out, err, "cifar-100-python/test", "is missing", "only the training file")


def test_integrity_check_refuses_repacked_files(fake_cifar_root: Path, cli_args, tiny_model_args, capsys):
    args = [*cli_args(fake_cifar_root), "--data.check_integrity", "true", *tiny_model_args]
    code, out, err = run_cli(capsys, ["fit", "-c", GENERALIST, *args])
    assert_clean_error(code, out, err, "md5", "--data.check_integrity false")


def _missing(root: Path) -> Path:
    return root / "nowhere"


def _truncated(root: Path) -> Path:
    write_fake_cifar100(root, 2, 0)
    path = root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return root


def _replace_train(content: object) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        write_fake_cifar100(root, 2, 0)
        (root / "cifar-100-python" / "train").write_bytes(pickle.dumps(content))
        return root

    return make


CIFAR10_LIKE = {"data": [[0] * 3072], "labels": [3], "batch_label": "training batch 1 of 5"}


@pytest.mark.parametrize(
    ("make_root", "extra", "phrases"),
    [
        pytest.param(_missing, [], ["does not exist", "--data.data_dir", "--data.download true"], id="missing-dir"),
        pytest.param(_truncated, [], ["not a readable CIFAR-100 pickle", "truncated"], id="truncated-pickle"),
        pytest.param(_replace_train([1, 2, 3]), [], ["holds a list", "not the CIFAR-100 dict"], id="pickled-list"),
        pytest.param(_replace_train(CIFAR10_LIKE), [], ["not a CIFAR-100 file", "fine_labels"], id="cifar10-dict"),
        pytest.param(
            write_fake_cifar100,
            ["--data.superclasses", "[fish, dinosaurs]"],
            ["'dinosaurs'", "aquatic_mammals", "vehicles_2"],
            id="unknown-superclass",
        ),
        pytest.param(
            write_fake_cifar100,
            ["--data.val_size", "600"],
            ["val_size=600", "Lower --data.val_size"],
            id="val-too-big",
        ),
    ],
)
def test_bad_data_input_exits_2_with_message(make_root, extra, phrases, tmp_path, cli_args, tiny_model_args, capsys):
    root = make_root(tmp_path / "data")
    # W&B is switched off here only to keep these runs fast; the error path does not depend on it.
    args = [*cli_args(root), *tiny_model_args, "--trainer.logger.mode", "disabled", *extra]
    code, out, err = run_cli(capsys, ["fit", "-c", GENERALIST, *args])
    assert_clean_error(code, out, err, *phrases)


def test_subprocess_bad_data_dir_exits_2_without_traceback(tmp_path: Path):
    missing = tmp_path / "no_data"
    command = [
        sys.executable,
        "train.py",
        "fit",
        "-c",
        GENERALIST,
        "-c",
        str(CONFIG_DIR / "trainer" / "cpu.yaml"),
    ]
    command += ["--data.data_dir", str(missing), "--trainer.logger.save_dir", str(tmp_path / "out")]
    command += ["--trainer.default_root_dir", str(tmp_path / "out"), "--trainer.logger.mode", "disabled"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert str(missing) in result.stderr and "does not exist" in result.stderr


def _model_configs() -> list[Path]:
    return sorted(p for p in CONFIG_DIR.glob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {}))


def _print_config(capsys: pytest.CaptureFixture, args: list[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["fit", *args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err[-2000:]
    return yaml.safe_load(captured.out)


@pytest.mark.parametrize("config", _model_configs(), ids=lambda p: p.name)
def test_every_model_config_parses(config: Path, capsys):
    printed = _print_config(capsys, ["-c", str(config)])
    source = yaml.safe_load(config.read_text())
    assert printed["model"]["class_path"] == source["model"]["class_path"]


@pytest.mark.parametrize("preset", sorted((CONFIG_DIR / "trainer").glob("*.yaml")), ids=lambda p: p.name)
def test_trainer_presets_compose_with_the_generalist_config(preset: Path, capsys):
    printed = _print_config(capsys, ["-c", GENERALIST, "-c", str(preset)])
    for key, value in yaml.safe_load(preset.read_text())["trainer"].items():
        assert printed["trainer"][key] == value, key


def test_model_configs_are_found():
    # Guards the parametrisation above against silently testing nothing.
    assert Path(GENERALIST) in _model_configs()

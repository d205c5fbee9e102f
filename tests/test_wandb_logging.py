"""SuiteWandbLogger never fails a run: online starts that cannot reach W&B fall back to offline (or a SuiteError
with require_online), bad WANDB_* variables are cleaned up, and a resumed fit continues the same run.

These tests run without network (as the suite's tests always do) and with HOME/NETRC in a temporary folder, so
no real credentials are read; each one starts wandb afresh (``wandb.teardown``) so that it reads the environment
the test sets.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
import wandb
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ask_the_expert.tracking import wandb_logger
from ask_the_expert.tracking.wandb_logger import (
    SuiteWandbLogger,
    has_wandb_credentials,
    resolve_wandb_mode,
    sanitize_wandb_environment,
    wandb_run_from_checkpoint,
    wandb_run_id_from_checkpoint,
)
from ask_the_expert.utils.errors import SuiteError
from callbacks.wandb_logging import WandbRunInCheckpoint

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, the shape of a real key
FALLBACK = "W&B: could not start an online run ("


class Tiny(L.LightningModule):
    """A linear classifier on random tensors: a W&B run with metrics and checkpoints in about a second."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 3)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.layer(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self.layer(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,))), batch_size=8)


class SetupTime(Callback):
    """Records when Lightning reached ``setup``: right after it created the logger's run."""

    at: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.at = time.monotonic()


def fit(logger: SuiteWandbLogger, max_epochs: int = 1, ckpt_path: str | None = None, *extra: Callback) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(save_last=True), WandbRunInCheckpoint(), *extra],
    )
    trainer.fit(Tiny(), loader(), loader(), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No WANDB_* variables, HOME and NETRC in tmp_path (no credentials), wandb set up afresh, as in a new process;
    yields the output folder for the run."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for name in [name for name in os.environ if name.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setattr(wandb_logger, "_online_failure", None)  # a fresh process: no online start failed yet
    wandb.teardown()  # forget the settings read from the environment of earlier tests
    yield tmp_path / "out"
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()  # the next test's wandb reads its own environment again


def fallback_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(FALLBACK)]


def offline_runs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def test_online_without_network_falls_back_to_offline_in_bounded_time(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # a key, but no network: wandb would retry for ~100 s
    init_timeout = 3.0
    setup = SetupTime()
    started = time.monotonic()
    logger = SuiteWandbLogger(save_dir=str(wandb_env), mode="auto", init_timeout=init_timeout)
    trainer = fit(logger, 1, None, setup)
    took = time.monotonic() - started
    err = capfd.readouterr().err

    assert setup.at is not None and setup.at - started < init_timeout + 5, setup.at - started  # the wait is bounded
    assert took < init_timeout + 20, took
    assert "Traceback" not in err
    run_id = logger.version
    assert logger.run_mode == "offline" and wandb.run is not None and wandb.run.id == run_id
    assert wandb.run.settings.mode == "offline"
    [line] = fallback_lines(err)
    assert "gave up after" in line and "CommError" in line, line
    [run_folder] = offline_runs(wandb_env)
    assert run_folder.name.endswith(f"-{run_id}")
    assert f"logging offline into '{run_folder}' instead." in line
    assert line.endswith(f"Upload later with: wandb sync {wandb_env}/wandb/offline-run-*")
    assert (run_folder / f"run-{run_id}.wandb").stat().st_size > 0  # metrics went to the offline run
    # Lightning's own checkpoint folder follows the offline run, and the checkpoint names it.
    last = wandb_env / "ask-the-expert" / run_id / "checkpoints" / "last.ckpt"
    assert last.is_file() and trainer.checkpoint_callback.last_model_path == str(last)
    assert wandb_run_id_from_checkpoint(last) == run_id


def test_the_offline_fallback_is_decided_once_per_process(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # a key, but no network
    init_timeout = 3.0
    first = SuiteWandbLogger(save_dir=str(wandb_env), mode="online", init_timeout=init_timeout)
    first.experiment.log({"x": 1.0})
    wandb.finish()  # the first run of the process (say, stage 0 of ate-train-experts) ends
    started = time.monotonic()
    second = SuiteWandbLogger(save_dir=str(wandb_env), mode="online", init_timeout=init_timeout)
    second.experiment.log({"x": 2.0})
    took = time.monotonic() - started
    err = capfd.readouterr().err

    assert first.run_mode == second.run_mode == "offline" and first.version != second.version
    assert took < init_timeout, took  # the second run did not wait for the server again
    [line] = fallback_lines(err)  # only the first run tried and gave up
    assert "gave up after" in line
    [again] = [x for x in err.splitlines() if "an online start failed earlier in this process" in x]
    assert "CommError" in again and "logging offline into" in again
    assert len(offline_runs(wandb_env)) == 2
    wandb.finish()
    # require_online still asks the server itself, and fails with its own reason.
    with pytest.raises(SuiteError, match="require_online is set"):
        _ = SuiteWandbLogger(save_dir=str(wandb_env), mode="online", init_timeout=1.0, require_online=True).experiment


def test_online_without_key_falls_back_to_offline(wandb_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not has_wandb_credentials()
    logger = SuiteWandbLogger(save_dir=str(wandb_env), mode="online", init_timeout=3.0)
    fit(logger)
    [line] = fallback_lines(capsys.readouterr().err)
    assert "No API key configured" in line, line
    assert logger.run_mode == "offline"
    assert [path.name.split("-")[-1] for path in offline_runs(wandb_env)] == [logger.version]


def test_an_offline_run_says_one_line_and_no_wandb_banner(wandb_env: Path, capfd: pytest.CaptureFixture[str]) -> None:
    logger = SuiteWandbLogger(save_dir=str(wandb_env), mode="offline")
    fit(logger)
    logger.experiment.finish()
    out, err = capfd.readouterr()
    # The logger's own line says where the run is and how to upload it; wandb's banner and summary would repeat it.
    assert [line for line in err.splitlines() if line.startswith("W&B: logging offline")], err
    assert not [line for line in (out + err).splitlines() if line.startswith("wandb: ") and "WARNING" not in line]
    assert len(offline_runs(wandb_env)) == 1


def test_require_online_is_a_suite_error_and_writes_nothing(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    logger = SuiteWandbLogger(save_dir=str(wandb_env), mode="online", init_timeout=2.0, require_online=True)
    with pytest.raises(SuiteError) as raised:
        fit(logger)
    message = str(raised.value)
    assert "require_online is set" in message and "CommError" in message and "\n" not in message
    err = capfd.readouterr().err
    assert "Traceback" not in err and not fallback_lines(err)
    assert wandb.run is None
    # Only what wandb itself leaves of the failed attempt (its run-* log folder): no offline run, no checkpoints.
    leftovers = [path.relative_to(wandb_env).parts for path in wandb_env.rglob("*")]
    assert ("wandb",) in leftovers and any(parts[1].startswith("run-") for parts in leftovers if len(parts) > 1)
    allowed = ("run-", "debug", "latest-run")
    assert all(parts[0] == "wandb" and (len(parts) == 1 or parts[1].startswith(allowed)) for parts in leftovers)
    assert not offline_runs(wandb_env) and not list(wandb_env.rglob("*.ckpt"))


def test_require_online_without_credentials_in_auto_mode_fails_at_once(wandb_env: Path) -> None:
    with pytest.raises(SuiteError, match="found no W&B credentials"):
        SuiteWandbLogger(save_dir=str(wandb_env), mode="auto", require_online=True)
    assert not wandb_env.exists()


def test_empty_and_unparsable_wandb_variables_are_removed(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {"WANDB_SILENT": "", "WANDB_CONSOLE": "", "WANDB_DISABLE_GIT": "", "WANDB_SHOW_INFO": "maybe"}
    for name, value in bad.items():
        with pytest.raises(Exception):  # noqa: B017 - wandb raises pydantic's ValidationError on these values
            wandb.Settings().update_from_env_vars({name: value})
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_PROJECT", "kept")  # a valid variable stays

    logger = SuiteWandbLogger(save_dir=str(wandb_env), mode="offline")
    logger.experiment.log({"x": 1.0})  # wandb reads the environment here; it would raise on any of them
    assert logger.experiment.id and logger.run_mode == "offline"
    assert not set(bad) & set(os.environ) and os.environ["WANDB_PROJECT"] == "kept"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Empty ones go quietly, a non-empty value wandb rejects is named once.
    assert [line for line in err.splitlines() if "ignoring the environment variable" in line] == [
        "W&B: ignoring the environment variable WANDB_SHOW_INFO='maybe': wandb cannot parse that value."
    ]


@pytest.mark.parametrize("mode", ["auto", "offline"])
def test_invalid_wandb_mode_is_a_clear_error(wandb_env: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("WANDB_MODE", "onlin")
    with pytest.raises(SuiteError, match=r"WANDB_MODE='onlin' is not a W&B mode\. Set it to one of online, offline"):
        SuiteWandbLogger(save_dir=str(wandb_env), mode=mode)
    with pytest.raises(SuiteError, match="WANDB_MODE"):
        resolve_wandb_mode("auto")


def test_mode_resolution(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = Path(os.environ["NETRC"])
    assert resolve_wandb_mode("auto") == "offline"
    netrc.write_text("machine api.forge.coreweave.com login user password " + FAKE_KEY + "\n")
    netrc.chmod(0o600)
    assert has_wandb_credentials() and resolve_wandb_mode("auto") == "online"  # wandb 0.31's default host
    netrc.write_text("machine example.org login user password secret\n")
    assert not has_wandb_credentials()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_wandb_mode("auto") == "online" and resolve_wandb_mode("disabled") == "disabled"
    for env_mode, resolved in [("dryrun", "offline"), ("offline", "offline"), ("run", "online"), ("", "online")]:
        monkeypatch.setenv("WANDB_MODE", env_mode)
        assert resolve_wandb_mode("auto") == resolved, env_mode
    assert sanitize_wandb_environment() == ["WANDB_MODE"]  # the empty one


def test_resumed_fit_continues_the_same_run(wandb_env: Path) -> None:
    first = SuiteWandbLogger(save_dir=str(wandb_env), mode="offline")
    fit(first, max_epochs=1)
    run_id = first.version
    last = wandb_env / "ask-the-expert" / run_id / "checkpoints" / "last.ckpt"
    assert wandb_run_from_checkpoint(last) == {
        "run_id": run_id,
        "project": "ask-the-expert",
        "save_dir": str(wandb_env),
        "mode": "offline",
    }
    wandb.finish()  # the first command ends here

    recovered = wandb_run_id_from_checkpoint(last)
    assert recovered == run_id
    # resume=None is what LightningCLI passes when the config does not set it; the run must still be continued.
    second = SuiteWandbLogger(save_dir=str(wandb_env), mode="offline", id=recovered, resume=None)
    assert second._wandb_init["resume"] == "allow"
    trainer = fit(second, 2, str(last))
    assert trainer.current_epoch == 2 and second.version == run_id and wandb.run is not None
    assert wandb.run.id == run_id
    runs = offline_runs(wandb_env)
    # offline-run-<date>_<time>-<id>, with "-1" added by wandb when both start within the same second
    assert len(runs) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name) for p in runs)
    assert wandb_run_id_from_checkpoint(last) == run_id  # the resumed fit's checkpoints keep naming it


def test_run_id_from_checkpoint_without_entry_or_unreadable(tmp_path: Path) -> None:
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "epoch": 0}, plain)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    assert wandb_run_id_from_checkpoint(plain) is None
    assert wandb_run_id_from_checkpoint(garbage) is None
    assert wandb_run_id_from_checkpoint(tmp_path / "missing.ckpt") is None
    stored = tmp_path / "stored.ckpt"
    torch.save({"wandb_run": {"run_id": "abc123", "project": "p"}}, stored)
    assert wandb_run_id_from_checkpoint(stored) == "abc123"

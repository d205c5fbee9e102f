"""Where commands write: one writer per output (a second is refused; a killed writer's lock is no obstacle), temporary
names unique per run (a dead run's leftovers removed), --force replacing only what a command recognises as its own,
and SIGTERM / SIGINT ending a command with a non-zero exit like Ctrl-C (in process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from ask_the_expert.utils.atomic import atomic_file, atomic_folder, temporary_sibling, write_text_atomic
from ask_the_expert.utils.cli import run_command
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.outputs import check_replaceable, lock_file, output_lock


def test_a_second_writer_is_refused_with_the_owner(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        owner = json.loads(lock_file(out).read_text())
        assert owner["pid"] == os.getpid() and owner["command"]
        with pytest.raises(SuiteError, match=rf"being written by another run \(pid {os.getpid()} on"):
            with output_lock(out):
                pass
    assert not lock_file(out).exists()  # released
    with output_lock(out):  # and free again
        pass


def test_the_lock_of_a_killed_run_is_no_obstacle(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ask_the_expert.utils.outputs import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(600)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SuiteError, match=rf"pid {holder.pid}"):
            with output_lock(out):
                pass
        holder.kill()
        holder.wait()
        assert json.loads(lock_file(out).read_text())["pid"] == holder.pid  # the dead run's lock file is still there
        with output_lock(out):
            assert json.loads(lock_file(out).read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_temporary_names_are_unique_per_run_and_a_dead_runs_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has ended
    leftover_file = target.with_name(f".{target.name}.{dead_pid}.tmp")
    leftover_file.write_text("half")
    live = target.with_name(f".{target.name}.{os.getppid()}.tmp")  # a running process's temporary is kept
    live.write_text("in progress")
    with atomic_file(target) as tmp:
        assert tmp == temporary_sibling(target, ".tmp") and str(os.getpid()) in tmp.name
        tmp.write_text("{}")
    assert target.read_text() == "{}" and not leftover_file.exists() and live.exists()

    folder = tmp_path / "val"
    leftover_folder = folder.with_name(f".val.{dead_pid}.partial")
    leftover_folder.mkdir()
    with atomic_folder(folder) as tmp:
        assert tmp.name == f".val.{os.getpid()}.partial"
        (tmp / "a.csv").write_text("x")
    assert (folder / "a.csv").is_file() and not leftover_folder.exists()


def test_a_failed_write_leaves_the_previous_version(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "p.yaml", "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["p.yaml"]


def test_force_replaces_only_a_folder_of_the_commands_own_files(tmp_path: Path) -> None:
    own = tmp_path / "cmp"
    (own / "plots").mkdir(parents=True)
    for name in ("compare.csv", "plots/routed.png"):
        (own / name).write_text("x")
    (own / "compare.json").write_text(json.dumps({"files": ["compare.csv", "plots/routed.png"]}))
    check_replaceable(own, "compare.json", "--out", "comparison results")  # its own: replaceable
    check_replaceable(tmp_path / "absent", "compare.json", "--out", "comparison results")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "compare.json", "--out", "comparison results")

    (own / "plots" / "mine.png").write_text("y")
    with pytest.raises(SuiteError, match=r"holds plots/mine\.png, which this command did not write"):
        check_replaceable(own, "compare.json", "--out", "comparison results")
    (own / "plots" / "mine.png").unlink()
    (own / "val").mkdir()
    with pytest.raises(SuiteError, match="holds val/"):
        check_replaceable(own, "compare.json", "--out", "comparison results")
    (own / "val").rmdir()
    (own / "compare.json").unlink()  # without its marker nothing in it is recognised
    with pytest.raises(SuiteError, match=r"compare\.csv"):
        check_replaceable(own, "compare.json", "--out", "comparison results")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_command_with_a_non_zero_exit(
    signum: int, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    finished = []

    def command() -> None:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the signal interrupts this
        finished.append(True)

    assert run_command(command) == code
    assert not finished
    err = capsys.readouterr().err
    assert err.startswith(f"error: stopped by {signal.Signals(signum).name}") and "Rerun the same command" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's handlers are gone again

"""The bad-input probe: every bad input and fault of issue 22 typed at the commands' entry points (in process, as
``main(argv)``). Each must end with exit code 2 and one ``error:`` paragraph that names the problem, write nothing
(the probe's folder is the same before and after), and leave every input as it was.

    python tests/test_bad_input_probe.py    # prints the table: input, exit code, message, files written
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: conftest's helpers

from conftest import CONFIG_DIR, TINY_MODEL_ARGS, cli_overrides
from deploy_helpers import write_tiny_checkpoints
from fake_cifar100 import write_fake_cifar100

from ask_the_expert.commands import compare, deploy, evaluate, partition, pipeline, relink, train, train_experts
from ask_the_expert.deploy.export import export_bundle
from ask_the_expert.method.router import RouterSpec
from ask_the_expert.method.subsets import save_partition
from ask_the_expert.utils.outputs import output_lock

REPO = Path(__file__).resolve().parents[1]
MAINS: dict[str, Callable[[list[str]], int]] = {
    "ate-train": train.main,
    "ate-train-experts": train_experts.main,
    "ate-evaluate": evaluate.main,
    "ate-compare": compare.main,
    "ate-partition": partition.main,
    "ate-pipeline": pipeline.main,
    "ate-deploy": deploy.main,
    "ate-relink": relink.main,
}


@dataclass(frozen=True)
class Inputs:
    """Shared, read-only inputs: generated data, tiny checkpoints, a checkpoint whose split is recorded (val_size 100,
    split_seed 0) and a generalist-only bundle."""

    data: Path
    train_only: Path
    generalist: Path
    experts: str  # an --experts list
    trained: Path
    bundle: Path


@dataclass(frozen=True)
class Probe:
    """One bad input: how the command is typed (from the inputs and the probe's folder ``w``, where ``prepare``
    writes the files the input needs before the run) and the words its message must hold."""

    name: str
    command: str
    args: Callable[[Inputs, Path], list[str]]
    message: str
    prepare: Callable[[Path], None] = lambda w: None
    fault: Callable[[Path], contextlib.AbstractContextManager] = lambda w: contextlib.nullcontext()
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    code: int
    message: str  # the error line
    errors: int  # how many error lines
    traceback: bool
    written: list[str]  # files created, changed or removed under the probe's folder


# ------------------------------------------------------------------------------------------- arguments
def data(i: Inputs, *extra: str) -> list[str]:
    return ["--data.data_dir", str(i.data), "--data.check_integrity", "false", "--data.val_size", "100",
            "--data.num_workers", "0", *extra]  # fmt: skip


def fit(i: Inputs, w: Path, *extra: str, config: str = "generalist.yaml", subcommand: str = "fit") -> list[str]:
    return [subcommand, "-c", str(CONFIG_DIR / config), *cli_overrides(i.data, w / "out"), *TINY_MODEL_ARGS, *extra]


def expert_fit(i: Inputs, w: Path, *extra: str) -> list[str]:
    return fit(i, w, "--model.expert_index=0", *extra, config="expert_static.yaml")


def evaluate_args(i: Inputs, w: Path, *extra: str) -> list[str]:
    return ["--generalist", str(i.generalist), "--experts", i.experts, *data(i), "--out", str(w / "out"),
            "--accelerator", "cpu", "--wandb.mode", "disabled", *extra]  # fmt: skip


def experts_job(i: Inputs, w: Path, *extra: str, data_dir: Path | None = None) -> list[str]:
    model = {name[2:]: int(value) for name, value in zip(TINY_MODEL_ARGS[::2], TINY_MODEL_ARGS[1::2], strict=True)}
    return ["--out", str(w / "out"), "--partition", "5", "--test", "false", "--data.data_dir", str(data_dir or i.data),
            "--data.check_integrity", "false", "--data.val_size", "100",
            "--common.overrides", json.dumps({**model, "trainer.logger": False}), *extra]  # fmt: skip


def pipeline_args(i: Inputs, w: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "tests" / "conf" / "pipeline_tiny.yaml"), "--data.data_dir", str(i.data),
            "--out", str(w / "out"), *extra]  # fmt: skip


def partition_args(i: Inputs, out: Path, *extra: str, generalist: Path | None = None) -> list[str]:
    return ["--generalist", str(generalist or i.generalist), "--num_experts", "4", "--out", str(out), *extra]


def profile_args(i: Inputs, out: Path, *extra: str) -> list[str]:
    return ["profile", "--bundle", str(i.bundle), "--base", "configs/profiles/edge_arm_wifi.yaml", "--out", str(out),
            *extra]  # fmt: skip


def compare_args(w: Path, *extra: str) -> list[str]:
    return ["--runs", f"[{w / 'a'}, {w / 'b'}]", "--out", str(w / "out"), *extra]


def export_args(i: Inputs, w: Path, *extra: str) -> list[str]:
    return ["export", "--generalist", str(i.generalist), "--out", str(w / "out"), "--wandb.mode", "disabled", *extra]


# ----------------------------------------------------------------------------------------- input files
def random_bytes(name: str) -> Callable[[Path], None]:
    return lambda w: (w / name).write_bytes(np.random.default_rng(0).integers(0, 256, 512, np.uint8).tobytes())


def a_file(name: str, text: str = "mine\n") -> Callable[[Path], None]:
    return lambda w: (w / name).write_text(text)


def profile(name: str, edit: Callable[[str], str]) -> Callable[[Path], None]:
    text = (CONFIG_DIR / "profiles" / "edge_arm_wifi.yaml").read_text()
    return lambda w: (w / name).write_text(edit(text))


def half_partition(w: Path) -> None:
    save_partition(w / "half.json", [list(range(25)), list(range(25, 50))], {"made": "by hand"})


def evaluation_folder(folder: Path, records: str, summary: str) -> None:
    """A folder that looks like a finished evaluation split (its marker lists its files)."""
    folder.mkdir(parents=True)
    (folder / "records.csv").write_text(records)
    (folder / "summary.json").write_text(summary)
    (folder / "complete.json").write_text(json.dumps({"files": ["records.csv", "summary.json"]}))


def two_runs(records: str = "index,label\n0,1\n", summary: str = "{}") -> Callable[[Path], None]:
    def make(w: Path) -> None:
        evaluation_folder(w / "a", records, summary)
        evaluation_folder(w / "b", "index,label\n0,1\n", "{}")

    return make


def with_out(make: Callable[[Path], None], *names: str) -> Callable[[Path], None]:
    """``make``, then an output folder holding files the command did not write."""

    def prepare(w: Path) -> None:
        make(w)
        for name in names:
            (w / "out" / name).parent.mkdir(parents=True, exist_ok=True)
            (w / "out" / name).write_text("mine\n")

    return prepare


# ---------------------------------------------------------------------------------------------- faults
@contextlib.contextmanager
def write_fails(code: int, w: Path) -> Iterator[None]:
    """Writing text fails with ``code`` (ENOSPC: half the text reaches the disk first; EROFS: nothing does)."""
    write_text = pathlib.Path.write_text

    def failing(self: Path, text: str, *args: object, **kwargs: object) -> int:
        if code == errno.ENOSPC:
            write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(code, os.strerror(code), str(self))

    pathlib.Path.write_text = failing
    try:
        yield
    finally:
        pathlib.Path.write_text = write_text


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """Another run holds ``path`` (the lock of a second writer)."""
    with output_lock(path):
        yield


# A progressive run of one short stage whose Trainer stops early: the static budget would no longer match it.
CUT_SHORT = json.dumps({"model.stages": [{"epochs": 1, "rho": 0.5}], "trainer.limit_train_batches": 2})
# Trainer settings Lightning refuses (no GPU here): evaluate must say so in one line.
REFUSED_BY_LIGHTNING = [
    ("--devices", "0"),
    ("--accelerator", "gpu"),
    ("--accelerator", "bogus"),
    ("--precision", "bogus"),
]
NO_TRAINER = "Lightning cannot build a Trainer"
TRAINED_SPLIT = "trained with the train/val split --data.val_size 100 --data.split_seed 0, but this run uses"
PROBES = [
    # --- received files that are not what they claim
    Probe(
        "-c: a config of random bytes",
        "ate-train",
        lambda i, w: ["fit", "-c", str(w / "c.yaml")],
        "is not a text file",
        random_bytes("c.yaml"),
    ),
    Probe(
        "-c: a config of random bytes",
        "ate-evaluate",
        lambda i, w: ["-c", str(w / "c.yaml")],
        "is not a text file",
        random_bytes("c.yaml"),
    ),
    Probe(
        "--profiles: a file of random bytes",
        "ate-evaluate",
        lambda i, w: evaluate_args(i, w, "--profiles", f"[{w / 'p.yaml'}]"),
        "is not a text file",
        random_bytes("p.yaml"),
    ),
    Probe(
        "--profiles: a near-edge latency of 0",
        "ate-evaluate",
        lambda i, w: evaluate_args(i, w, "--profiles", f"[{w / 'p.yaml'}]"),
        "near_edge.latency_ms.expert = 0.0",
        profile("p.yaml", lambda t: t.replace("expert: 4.0", "expert: 0.0")),
    ),
    Probe(
        "--partition: a file covering classes 0-49 only",
        "ate-train-experts",
        lambda i, w: experts_job(i, w, "--partition", str(w / "half.json")),
        "classes in no expert: 50",
        half_partition,
    ),
    Probe(
        "--model.partition: a file covering classes 0-49 only",
        "ate-train",
        lambda i, w: expert_fit(i, w, f"--model.partition={w / 'half.json'}"),
        "classes in no expert: 50",
        half_partition,
    ),
    Probe(
        "--partition: a file that is not a partition",
        "ate-train-experts",
        lambda i, w: experts_job(i, w, "--partition", str(w / "p.json")),
        "Write it with `ate-partition`",
        a_file("p.json", "{}"),
    ),
    # --- model and trainer settings
    Probe("--model.depth 0", "ate-train", lambda i, w: fit(i, w, "--model.depth", "0"), "--model.depth 0"),
    Probe("--model.embed_dim 0", "ate-train", lambda i, w: fit(i, w, "--model.embed_dim", "0"), "--model.embed_dim 0"),
    Probe(
        "--model.num_heads 3 with --model.embed_dim 16",
        "ate-train",
        lambda i, w: fit(i, w, "--model.num_heads", "3"),
        "--model.num_heads 3 does not divide --model.embed_dim 16",
    ),
    Probe("--model.lr -1", "ate-train", lambda i, w: fit(i, w, "--model.lr", "-1"), "--model.lr is -1"),
    Probe("--trainer.max_epochs -2", "ate-train", lambda i, w: fit(i, w, "--trainer.max_epochs", "-2"), "max_epochs"),
    Probe("--trainer.devices 0", "ate-train", lambda i, w: fit(i, w, "--trainer.devices", "0"), NO_TRAINER),
    *(
        Probe(f"{flag} {value}", "ate-evaluate", lambda i, w, a=(flag, value): evaluate_args(i, w, *a), NO_TRAINER)
        for flag, value in REFUSED_BY_LIGHTNING
    ),
    Probe(
        "--weights_only false",
        "ate-train",
        lambda i, w: fit(i, w, "--ckpt_path", str(i.trained), "--weights_only", "false", subcommand="validate"),
        "--weights_only false",
    ),
    # --- data split and data
    Probe(
        "--data.split_seed -1",
        "ate-evaluate",
        lambda i, w: evaluate_args(i, w, "--data.split_seed", "-1"),
        "--data.split_seed is -1",
    ),
    Probe(
        "evaluate: --data.split_seed 1, generalist trained with 0",
        "ate-evaluate",
        lambda i, w: evaluate_args(i, w, "--generalist", str(i.trained), "--data.split_seed", "1"),
        TRAINED_SPLIT,
    ),
    Probe(
        "export: --data.split_seed 1, generalist trained with 0",
        "ate-deploy",
        lambda i, w: export_args(i, w, "--generalist", str(i.trained), *data(i, "--data.split_seed", "1")),
        TRAINED_SPLIT,
    ),
    Probe(
        "partition: --data.split_seed 1, generalist trained with 0",
        "ate-partition",
        lambda i, w: partition_args(i, w / "p.json", *data(i, "--data.split_seed", "1"), generalist=i.trained),
        TRAINED_SPLIT,
    ),
    Probe(
        "validate --ckpt_path trained with split seed 0, --data.split_seed 1",
        "ate-train",
        lambda i, w: fit(i, w, "--ckpt_path", str(i.trained), "--data.split_seed", "1", subcommand="validate"),
        TRAINED_SPLIT,
    ),
    Probe(
        "expert fit: --model.generalist_checkpoint trained with split seed 0, --data.split_seed 1",
        "ate-train",
        lambda i, w: expert_fit(
            i, w, "--model.partition=5", f"--model.generalist_checkpoint={i.trained}", "--data.split_seed", "1"
        ),
        TRAINED_SPLIT,
    ),
    Probe(
        "train_experts: --generalist_checkpoint trained with split seed 0, --data.split_seed 1",
        "ate-train-experts",
        lambda i, w: experts_job(i, w, "--generalist_checkpoint", str(i.trained), "--data.split_seed", "1"),
        TRAINED_SPLIT,
    ),
    Probe(
        "train_experts: --test (default) without a test file",
        "ate-train-experts",
        lambda i, w: experts_job(i, w, "--test", "true", data_dir=i.train_only),
        "--test true (the default)",
    ),
    Probe(
        "train_experts: --trainer.limit_train_batches 2 with static experts",
        "ate-train-experts",
        lambda i, w: experts_job(i, w, "--progressive.overrides", CUT_SHORT),
        "compute-matched",
    ),
    Probe(
        "pipeline --seeds '[-1]'",
        "ate-pipeline",
        lambda i, w: pipeline_args(i, w, "--seeds", "[-1]"),
        "--seeds [-1] must be",
    ),
    # --- outputs
    Probe(
        "evaluate --out: an existing file", "ate-evaluate", lambda i, w: evaluate_args(i, w), "is a file", a_file("out")
    ),
    Probe(
        "compare --out: an existing file",
        "ate-compare",
        lambda i, w: compare_args(w),
        "is a file",
        lambda w: (two_runs()(w), a_file("out")(w)),
    ),
    Probe(
        "export --out: an existing file",
        "ate-deploy",
        lambda i, w: export_args(i, w, "--evaluate_on", "none"),
        "is a file",
        a_file("out"),
    ),
    Probe(
        "train_experts --out: an existing file",
        "ate-train-experts",
        lambda i, w: experts_job(i, w),
        "is a file",
        a_file("out"),
    ),
    Probe(
        "pipeline --out: an existing file", "ate-pipeline", lambda i, w: pipeline_args(i, w), "is a file", a_file("out")
    ),
    Probe(
        "partition --out: an existing folder",
        "ate-partition",
        lambda i, w: partition_args(i, w, *data(i)),
        "is a folder",
    ),
    Probe(
        "compare: a run whose records.csv is empty",
        "ate-compare",
        lambda i, w: compare_args(w),
        "records.csv' is not a readable records file",
        two_runs(records=""),
    ),
    Probe(
        "compare: a run whose summary.json is malformed",
        "ate-compare",
        lambda i, w: compare_args(w),
        "summary.json' is not a readable summary",
        two_runs(summary="{not json"),
    ),
    Probe(
        "compare --force: --out holds unrelated files",
        "ate-compare",
        lambda i, w: compare_args(w, "--force", "true"),
        "--force will not delete it",
        with_out(two_runs(), "notes.txt"),
    ),
    Probe(
        "compare --force: --out holds the evaluations compared",
        "ate-compare",
        lambda i, w: ["--runs", f"[{w / 'out' / 'a'}, {w / 'out' / 'b'}]", "--out", str(w / "out"), "--force", "true"],
        "--force will not delete it",
        lambda w: two_runs()(w / "out"),
    ),
    Probe(
        "evaluate --force: OUT/val holds unrelated files",
        "ate-evaluate",
        lambda i, w: evaluate_args(i, w, "--force", "true"),
        "--force will not delete it",
        with_out(lambda w: None, "val/notes.txt"),
    ),
    Probe(
        "export --force: --out holds unrelated files",
        "ate-deploy",
        lambda i, w: export_args(i, w, "--evaluate_on", "none", "--force", "true"),
        "not a bundle",
        with_out(lambda w: None, "notes.txt"),
    ),
    Probe(
        "partition --force: --out is not a partition file",
        "ate-partition",
        lambda i, w: partition_args(i, w / "notes.json", "--force", "true", *data(i)),
        "not a partition file",
        a_file("notes.json"),
    ),
    Probe(
        "profile --force: --out is not a profile",
        "ate-deploy",
        lambda i, w: profile_args(i, w / "notes.txt", "--force", "true"),
        "not a cost profile",
        a_file("notes.txt"),
    ),
    Probe(
        "predict --out: an existing file that is not a predictions CSV",
        "ate-deploy",
        lambda i, w: ["predict", "--bundle", str(i.bundle), "--split", "val", *data(i), "--out", str(w / "n.csv")],
        "not a predictions CSV",
        a_file("n.csv"),
    ),
    Probe(
        "evaluate --out held by another running evaluation",
        "ate-evaluate",
        lambda i, w: evaluate_args(i, w),
        "is being written by another run",
        fault=lambda w: held(w / "out"),
    ),
    Probe(
        "profile: no space left while writing (ENOSPC)",
        "ate-deploy",
        lambda i, w: profile_args(i, w / "p.yaml", "--repeats", "1", "--warmup", "0"),
        "No space left on device (ENOSPC)",
        fault=lambda w: write_fails(errno.ENOSPC, w),
    ),
    Probe(
        "profile: a read-only output folder (EROFS)",
        "ate-deploy",
        lambda i, w: profile_args(i, w / "p.yaml", "--repeats", "1", "--warmup", "0"),
        "Read-only file system (EROFS)",
        fault=lambda w: write_fails(errno.EROFS, w),
    ),
    # --- unclear or silent before
    Probe(
        "verify --atol -1",
        "ate-deploy",
        lambda i, w: ["verify", "--bundle", str(i.bundle), *data(i), "--atol", "-1"],
        "--atol must be a number >= 0",
    ),
    Probe(
        "predict --images: an empty array",
        "ate-deploy",
        lambda i, w: ["predict", "--bundle", str(i.bundle), "--images", str(w / "none.npy")],
        "hold no image",
        lambda w: np.save(w / "none.npy", np.zeros((0, 32, 32, 3), np.uint8)),
    ),
    Probe(
        "relink without W&B credentials",
        "ate-relink",
        lambda i, w: ["entity/project/run"],
        "no W&B credentials",
        env={"WANDB_API_KEY": "", "NETRC": "/nonexistent"},
    ),
]


# ------------------------------------------------------------------------------------------------ running
def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
        for p in folder.rglob("*")
    }


def run_probe(probe: Probe, inputs: Inputs, folder: Path) -> Outcome:
    folder.mkdir(parents=True)
    probe.prepare(folder)
    before = listing(folder)
    shared = listing(inputs.data)
    stderr = io.StringIO()
    saved = {k: os.environ.get(k) for k in probe.env}
    os.environ.update(probe.env)
    try:
        with probe.fault(folder), contextlib.redirect_stderr(stderr):
            code = MAINS[probe.command](probe.args(inputs, folder))
    except SystemExit as exit_:  # a parser's own usage error
        code = exit_.code
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    after = listing(folder)
    written = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert listing(inputs.data) == shared
    text = stderr.getvalue()
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    return Outcome(code, errors[0] if errors else "", len(errors), "Traceback" in text, written)


def build_inputs(root: Path) -> Inputs:
    """The shared inputs, made from scratch (the script's way; the tests take them from the session fixtures)."""
    fake = write_fake_cifar100(root / "data", 6, 2)
    generalist, experts = write_tiny_checkpoints(root / "ckpt")
    run = root / "run"
    assert (
        train.main(["fit", "-c", str(CONFIG_DIR / "generalist.yaml"), *cli_overrides(fake, run), *TINY_MODEL_ARGS]) == 0
    )
    trained = next(run.glob("ask-the-expert/*/checkpoints/last.ckpt"))
    return Inputs(fake, write_fake_cifar100(root / "train_only", 6, 0), generalist,
                  json.dumps(list(map(str, experts))), trained, tiny_bundle(generalist, root / "bundle"))  # fmt: skip


def tiny_bundle(generalist: Path, out: Path) -> Path:
    export_bundle(generalist, [], out, routing=RouterSpec(temperature=1.0))
    return out


@pytest.fixture(scope="module")
def inputs(
    fake_cifar_root: Path, fake_cifar_train_only: Path, tiny_generalist_run, tmp_path_factory: pytest.TempPathFactory
) -> Inputs:
    root = tmp_path_factory.mktemp("probe_inputs")
    generalist, experts = write_tiny_checkpoints(root / "ckpt")
    return Inputs(fake_cifar_root, fake_cifar_train_only, generalist, json.dumps(list(map(str, experts))),
                  tiny_generalist_run.last_ckpt, tiny_bundle(generalist, root / "bundle"))  # fmt: skip


@pytest.mark.parametrize("probe", PROBES, ids=[f"{p.command} {p.name}" for p in PROBES])
def test_a_bad_input_is_refused_with_a_clear_error_and_nothing_written(
    probe: Probe, inputs: Inputs, tmp_path: Path
) -> None:
    outcome = run_probe(probe, inputs, tmp_path / "probe")
    assert outcome.code == 2, outcome
    assert outcome.errors == 1 and not outcome.traceback, outcome
    assert probe.message in outcome.message, outcome.message
    assert outcome.written == [], outcome.written


if __name__ == "__main__":
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory() as scratch:
        shared = build_inputs(Path(scratch) / "inputs")
        print("| command | input | exit code | message (first line) | files written |")
        print("| --- | --- | ---: | --- | --- |")
        for n, p in enumerate(PROBES):
            o = run_probe(p, shared, Path(scratch) / f"probe{n}")
            shown = o.message if len(o.message) < 160 else o.message[:157] + "..."
            print(
                f"| {p.command} | {p.name} | {o.code} | {shown.replace('|', '/')} | {', '.join(o.written) or 'none'} |"
            )
        shutil.rmtree(scratch, ignore_errors=True)

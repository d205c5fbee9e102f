"""Files a user may receive from someone else are read without running code: a crafted pickle whose ``__reduce__``
would write a marker file, passed to every command that reads a checkpoint, a config, a data file or an image array,
is refused with exit code 2 and a clear message, and the marker never appears."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIG_DIR, TINY_MODEL_ARGS, cli_overrides
from deploy_helpers import write_tiny_checkpoints

from ask_the_expert.commands import deploy, evaluate, partition, train, train_experts
from ask_the_expert.deploy.export import export_bundle
from ask_the_expert.method.router import RouterSpec
from ask_the_expert.utils.hashing import file_sha256


class WritesMarker:
    """Unpickling this object runs ``exec``, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


@dataclass(frozen=True)
class Crafted:
    """Real tiny checkpoints, the same with a WritesMarker object added, and the marker those would write."""

    marker: Path
    generalist: Path
    experts: str  # the genuine experts, as an --experts list
    evil_generalist: Path
    evil_expert: Path
    evil_base: Path
    evil_yaml: Path
    evil_data: Path
    evil_images: Path
    bundle: Path


def crafted_copy(source: Path, target: Path, marker: Path, role: str | None = None) -> Path:
    """``source``'s checkpoint content plus an object that runs code when unpickled (optionally another role)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    if role is not None:
        checkpoint["hyper_parameters"]["role"] = role
    checkpoint["extra"] = WritesMarker(marker)
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory, fake_cifar_root: Path) -> Crafted:
    root = tmp_path_factory.mktemp("received")
    marker = root / "MARKER"
    generalist, experts = write_tiny_checkpoints(root / "genuine")
    evil = root / "evil"
    evil.mkdir()
    evil_generalist = crafted_copy(generalist, evil / "generalist.ckpt", marker)
    evil_expert = crafted_copy(experts[0], evil / "expert_0.ckpt", marker)
    evil_base = crafted_copy(generalist, evil / "base.ckpt", marker, role="base")
    # The crafted files are real: a plain torch.load runs their code.
    torch.load(evil_generalist, weights_only=False)
    assert marker.read_text() == "code ran"
    marker.unlink()

    evil_yaml = evil / "config.yaml"
    evil_yaml.write_text(
        f"generalist: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').write('code ran')\"]\n"
    )
    yaml.unsafe_load(evil_yaml.read_text())  # an unsafe YAML loader would run it
    assert marker.exists()
    marker.unlink()

    evil_data = evil / "data"
    shutil.copytree(fake_cifar_root, evil_data)
    with (evil_data / "cifar-100-python" / "train").open("wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "extra": WritesMarker(marker)}, f, protocol=2)

    evil_images = evil / "images.npy"
    np.save(evil_images, np.array([WritesMarker(marker)], dtype=object), allow_pickle=True)

    # A bundle whose manifest names a crafted checkpoint shipped inside it as its source.
    bundle = root / "bundle"
    export_bundle(generalist, [], bundle, routing=RouterSpec(temperature=1.0))
    shipped = shutil.copy(evil_generalist, bundle / "source.ckpt")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sources"]["generalist"] = {"checkpoint": str(shipped), "sha256": file_sha256(shipped)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    genuine = json.dumps(list(map(str, experts)))
    return Crafted(
        marker, generalist, genuine, evil_generalist, evil_expert, evil_base, evil_yaml, evil_data, evil_images, bundle
    )


def data_args(root: Path) -> list[str]:
    return ["--data.data_dir", str(root), "--data.check_integrity", "false", "--data.val_size", "100",
            "--data.num_workers", "0"]  # fmt: skip


def evaluate_args(c: Crafted, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--generalist", str(c.generalist), "--experts", c.experts, *data_args(data), "--out", str(out),
            "--accelerator", "cpu", "--wandb.mode", "disabled", *extra]  # fmt: skip


def fit_args(config: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "-c", str(CONFIG_DIR / config), *cli_overrides(data, out), *TINY_MODEL_ARGS, *extra]


def expert_fit_args(config: str, data: Path, out: Path, option: str, checkpoint: Path) -> list[str]:
    return fit_args(config, data, out, "--model.expert_index=0", "--model.partition=5", f"{option}={checkpoint}")


def train_experts_args(data: Path, out: Path, *extra: str) -> list[str]:
    model = {name[2:]: int(value) for name, value in zip(TINY_MODEL_ARGS[::2], TINY_MODEL_ARGS[1::2], strict=True)}
    overrides = json.dumps({**model, "trainer.logger": False})
    return ["--out", str(out), "--partition", "5", "--variants", "[progressive]", "--test", "false",
            *data_args(data)[:6], "--common.overrides", overrides, *extra]  # fmt: skip


def shipped_base(c: Crafted, data: Path, out: Path) -> list[str]:
    """A --out holding a crafted stage-0 checkpoint with a record that says it is finished and whole."""
    base = out / "base" / "base.ckpt"
    base.parent.mkdir(parents=True)
    shutil.copy(c.evil_base, base)
    run = {"fingerprint": "f", "checkpoint_sha256": file_sha256(base)}
    base.with_suffix(".json").write_text(json.dumps({"run": run}))
    return train_experts_args(data, out)


def export_args(c: Crafted, data: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--out", str(out), *data_args(data), "--wandb.mode", "disabled", *extra]


CODE = "other than tensors"  # the checkpoint reader's refusal
# name: (the command's main, its arguments from the crafted inputs, the data folder and a fresh output path, the
# words its message must hold)
CASES: dict[str, tuple[Callable[[list[str]], int], Callable[[Crafted, Path, Path], list[str]], str]] = {
    "evaluate --generalist": (
        evaluate.main,
        lambda c, d, o: evaluate_args(c, d, o, "--generalist", str(c.evil_generalist)),
        CODE,
    ),
    "evaluate --experts": (
        evaluate.main,
        lambda c, d, o: evaluate_args(c, d, o, "--experts", f"[{c.evil_expert}]"),
        CODE,
    ),
    "evaluate --static_experts": (
        evaluate.main,
        lambda c, d, o: evaluate_args(c, d, o, "--static_experts", f"[{c.evil_expert}]"),
        CODE,
    ),
    "evaluate --static_init_experts": (
        evaluate.main,
        lambda c, d, o: evaluate_args(c, d, o, "--static_init_experts", f"[{c.evil_expert}]"),
        CODE,
    ),
    "evaluate --base": (evaluate.main, lambda c, d, o: evaluate_args(c, d, o, "--base", str(c.evil_base)), CODE),
    "evaluate -c (a YAML python tag)": (
        evaluate.main,
        lambda c, d, o: ["-c", str(c.evil_yaml), "--experts", c.experts, "--out", str(o)],
        "could not determine a constructor",
    ),
    "evaluate --data.data_dir (a pickled data file)": (
        evaluate.main,
        lambda c, d, o: evaluate_args(c, c.evil_data, o),
        "a CIFAR-100 file never holds",
    ),
    "train validate --ckpt_path": (
        train.main,
        lambda c, d, o: ["validate", *fit_args("generalist.yaml", d, o)[1:], "--ckpt_path", str(c.evil_generalist)],
        CODE,
    ),
    "train fit --ckpt_path": (
        train.main,
        lambda c, d, o: fit_args("generalist.yaml", d, o, "--ckpt_path", str(c.evil_generalist)),
        CODE,
    ),
    "train fit --model.base_checkpoint": (
        train.main,
        lambda c, d, o: expert_fit_args("expert_static.yaml", d, o, "--model.base_checkpoint", c.evil_base),
        CODE,
    ),
    "train fit --model.generalist_checkpoint": (
        train.main,
        lambda c, d, o: expert_fit_args("expert_static.yaml", d, o, "--model.generalist_checkpoint", c.evil_generalist),
        CODE,
    ),
    "train_experts --generalist_checkpoint": (
        train_experts.main,
        lambda c, d, o: train_experts_args(d, o, "--generalist_checkpoint", str(c.evil_generalist)),
        CODE,
    ),
    "train_experts with a crafted OUT/base/base.ckpt": (train_experts.main, shipped_base, CODE),
    "partition --generalist": (
        partition.main,
        lambda c, d, o: [
            "--generalist",
            str(c.evil_generalist),
            "--num_experts",
            "4",
            *data_args(d),
            "--out",
            str(o / "partition.json"),
        ],
        CODE,
    ),
    "deploy export --generalist": (
        deploy.main,
        lambda c, d, o: export_args(c, d, o, "--generalist", str(c.evil_generalist)),
        CODE,
    ),
    "deploy export --experts": (
        deploy.main,
        lambda c, d, o: export_args(c, d, o, "--generalist", str(c.generalist), "--experts", f"[{c.evil_expert}]"),
        CODE,
    ),
    "deploy verify (the manifest's source in the bundle)": (
        deploy.main,
        lambda c, d, o: ["verify", "--bundle", str(c.bundle), *data_args(d), "--limit", "8"],
        CODE,
    ),
    "deploy predict --images (a pickled array)": (
        deploy.main,
        lambda c, d, o: ["predict", "--bundle", str(c.bundle), "--images", str(c.evil_images)],
        "Object arrays cannot be loaded",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_crafted_file_never_runs_code(
    name: str, crafted: Crafted, fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main, arguments, message = CASES[name]
    code = main(arguments(crafted, fake_cifar_root, tmp_path / "out"))
    err = capsys.readouterr().err
    assert not crafted.marker.exists(), f"{name}: the crafted file ran code"
    assert code == 2, (name, err[-2000:])
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert message in errors[0], errors[0]

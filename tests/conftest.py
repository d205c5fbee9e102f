"""Shared test set-up: offline environment, generated CIFAR-100 folders and the CLI argument helpers.

Fixtures and helpers other test files may rely on (keep the names stable):

- ``REPO_ROOT`` / ``CONFIG_DIR``: absolute paths, so tests do not depend on the working directory.
- ``fake_cifar_root`` (session): a folder with ``cifar-100-python/{meta,train,test}``, 6 train and 2 test
  images per class (600 / 200 images); load it with ``check_integrity=False``.
- ``fake_cifar_train_only`` (session): the same layout without the ``test`` file.
- ``TINY_MODEL_ARGS`` / ``tiny_model_args``: ``--model.*`` overrides for a 1-block, 16-dim ViT.
- ``cli_overrides(data_dir, out_dir, ...)`` / ``cli_args``: the overrides every CLI test needs (CPU trainer
  preset, data folder, no integrity check, small split and batch, no workers, outputs under ``out_dir``).
  Put them after the model config:
  ``train.main(["fit", "-c", str(CONFIG_DIR / "generalist.yaml"), *cli_args(root), *tiny_model_args])``.
- ``tiny_generalist_run`` (session): one finished tiny ``fit`` through configs/generalist.yaml, with the
  paths of its checkpoints and W&B run folder.
- Deployment (session, shared by the bundle and the serving tests, so the bundle is exported once):
  ``checkpoints`` (tiny random-init generalist and 4 experts, tests/deploy_helpers.py), ``val_data`` (the fake val
  split, ``BUNDLE_VAL_SIZE`` images), ``images`` (those plus 28 noise images), ``tau`` (offloads about half of
  ``images``) and ``bundle_dir`` (their bundle at ``BUNDLE_TEMPERATURE`` with ``BUNDLE_PROFILE`` and a Triton
  model repository; treat as read-only, copy it to change it).
"""

from __future__ import annotations

import os
import sys

# Before anything imports wandb or huggingface_hub: tests never reach the network.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models on a shared 2-core CPU: one intra-op thread per process (subprocesses inherit it). Several threads
# spin-wait on each other on tensors this small and make the suite several times slower when the machine is busy.
os.environ["OMP_NUM_THREADS"] = "1"

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from fake_cifar100 import write_fake_cifar100

from ask_the_expert.method.costs import EdgeDevice, Link, NearEdgeDevice, Profile

if TYPE_CHECKING:
    from datamodules.cifar100 import LabelledImages

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
# Images per class in the fake folders; val_size below takes one image of every class.
TRAIN_PER_CLASS = 6
TEST_PER_CLASS = 2
TINY_MODEL_ARGS = ["--model.embed_dim", "16", "--model.depth", "1", "--model.num_heads", "2"]
BUNDLE_PROFILE = CONFIG_DIR / "profiles" / "edge_arm_wifi.yaml"
BUNDLE_TEMPERATURE = 1.5
BUNDLE_VAL_SIZE = 100
# A cost profile of round numbers, so that the tests' arithmetic can be done by hand.
HAND_PROFILE = Profile(
    name="hand",
    description="hand-made",
    edge=EdgeDevice(
        latency_ms={"generalist": 10.0, "medium": 40.0},
        power_active_w=5.0,
        power_idle_w=2.0,
        power_radio_w=3.0,
    ),
    near_edge=NearEdgeDevice(latency_ms={"expert": 4.0, "medium": 6.0}, power_active_w=50.0),
    link=Link(uplink_mbps=8.0, downlink_mbps=1.0, rtt_ms=2.0, bytes_up=3000, bytes_down=125),
)


def cli_overrides(
    data_dir: str | Path,
    out_dir: str | Path,
    val_size: int = 100,
    batch_size: int = 16,
    max_epochs: int = 1,
) -> list[str]:
    """CLI arguments for a fast CPU run on a fake folder; checkpoints and W&B runs go under ``out_dir``."""
    return [
        "-c", str(CONFIG_DIR / "trainer" / "cpu.yaml"),
        "--data.data_dir", str(data_dir),
        "--data.check_integrity", "false",
        "--data.val_size", str(val_size),
        "--data.batch_size", str(batch_size),
        "--data.num_workers", "0",
        "--trainer.max_epochs", str(max_epochs),
        "--trainer.logger.save_dir", str(out_dir),
        "--trainer.default_root_dir", str(out_dir),
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _finish_wandb_run() -> Iterator[None]:
    """Close any W&B run a test left open: Lightning's logger would otherwise reuse it in the next test."""
    yield
    wandb = sys.modules.get("wandb")  # tests that never touched W&B need not import it
    if wandb is not None and wandb.run is not None:
        wandb.finish()


@pytest.fixture(scope="session")
def fake_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated CIFAR-100 folder with train and test files (treat as read-only)."""
    return write_fake_cifar100(tmp_path_factory.mktemp("fake_cifar"), TRAIN_PER_CLASS, TEST_PER_CLASS)


@pytest.fixture(scope="session")
def fake_cifar_train_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated CIFAR-100 folder that has ``meta`` and ``train`` but no ``test`` file."""
    return write_fake_cifar100(tmp_path_factory.mktemp("fake_cifar_train_only"), TRAIN_PER_CLASS, 0)


@pytest.fixture
def tiny_model_args() -> list[str]:
    return list(TINY_MODEL_ARGS)


@pytest.fixture
def cli_args(tmp_path: Path) -> Callable[..., list[str]]:
    """``cli_overrides`` with ``out_dir`` defaulting to this test's ``tmp_path / "out"``."""

    def build(data_dir: str | Path, out_dir: str | Path | None = None, **kwargs: int) -> list[str]:
        return cli_overrides(data_dir, out_dir or tmp_path / "out", **kwargs)

    return build


@dataclass(frozen=True)
class TrainedRun:
    """Outputs of one ``train.py fit``: ``args`` are the overrides it used after the model config."""

    args: list[str]
    out_dir: Path
    last_ckpt: Path
    best_ckpt: Path
    wandb_run_dir: Path


@pytest.fixture(scope="session")
def tiny_generalist_run(fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One epoch of the tiny generalist through configs/generalist.yaml; shared by the CLI tests."""
    from ask_the_expert.commands import train

    out_dir = tmp_path_factory.mktemp("generalist_run")
    args = [*cli_overrides(fake_cifar_root, out_dir), *TINY_MODEL_ARGS]
    code = train.main(["fit", "-c", str(CONFIG_DIR / "generalist.yaml"), *args])
    assert code == 0, "the tiny generalist fit failed; run it alone to see why"
    checkpoints = list(out_dir.glob("ask-the-expert/*/checkpoints"))
    runs = list(out_dir.glob("wandb/offline-run-*"))
    assert len(checkpoints) == 1 and len(runs) == 1, (checkpoints, runs)
    best = list(checkpoints[0].glob("best-*.ckpt"))
    assert len(best) == 1, best
    return TrainedRun(args, out_dir, checkpoints[0] / "last.ckpt", best[0], runs[0])


# ------------------------------------------------------------------------------------------ deployment bundle
@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    from deploy_helpers import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def val_data(fake_cifar_root: Path) -> LabelledImages:
    from ask_the_expert.utils.options import DataOptions
    from datamodules.cifar100 import labelled_images

    options = DataOptions(data_dir=str(fake_cifar_root), check_integrity=False, val_size=BUNDLE_VAL_SIZE, num_workers=0)
    return labelled_images(options, "val")


@pytest.fixture(scope="session")
def images(val_data: LabelledImages) -> np.ndarray:
    """The fake val images plus uniform noise: uint8 (N, 32, 32, 3)."""
    noise = np.random.default_rng(1).integers(0, 256, size=(28, 32, 32, 3), dtype=np.uint8)
    return np.concatenate([val_data.images, noise])


@pytest.fixture(scope="session")
def tau(checkpoints: tuple[Path, list[Path]], images: np.ndarray) -> float:
    """A threshold that offloads about half of ``images`` (between two of G's confidences)."""
    from ask_the_expert.deploy.export import load_export_models, torch_logits
    from ask_the_expert.method.router import RouterSpec, confidence, softmax
    from datamodules.cifar100 import eval_tensors

    g_logits = torch_logits(load_export_models(checkpoints[0], [], RouterSpec()).generalist, eval_tensors(images))
    conf = np.sort(confidence(softmax(g_logits, BUNDLE_TEMPERATURE), "max_prob"))
    return float((conf[len(conf) // 2 - 1] + conf[len(conf) // 2]) / 2)


@pytest.fixture(scope="session")
def bundle_dir(
    checkpoints: tuple[Path, list[Path]], val_data: LabelledImages, tau: float, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from ask_the_expert.deploy.export import export_bundle
    from ask_the_expert.method.costs import load_profile
    from ask_the_expert.method.router import RouterSpec

    out = tmp_path_factory.mktemp("bundles") / "b1"
    g, experts = checkpoints
    routing = RouterSpec(tau=tau, temperature=BUNDLE_TEMPERATURE)
    profile = load_profile(BUNDLE_PROFILE)
    export_bundle(g, experts, out, routing=routing, data=val_data, profile=profile, triton=True, batch_size=64)
    return out

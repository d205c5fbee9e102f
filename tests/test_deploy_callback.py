"""ExportBundleCallback: a fit ends with a verified bundle whose tau and temperature were chosen on val."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import TINY, write_tiny_checkpoints
from lightning import Trainer

from callbacks.export_bundle import ExportBundleCallback
from core.errors import SuiteError
from core.sweep import sweep_thresholds
from datamodules.cifar100 import CIFAR100DataModule
from deploy.export import load_eval_data, load_models, operating_tau, torch_inputs, torch_logits
from deploy.runtime import Bundle, route
from lightning_modules import GeneralistModule

VAL_SIZE = 100


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared CPU: one thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fit_exports_the_trained_generalist_with_the_given_experts(fake_cifar_root: Path, tmp_path: Path):
    _, experts = write_tiny_checkpoints(tmp_path / "ckpt", superclasses_per_expert=10)  # 2 experts
    out = tmp_path / "bundle"
    callback = ExportBundleCallback(str(out), expert_checkpoints=[str(tmp_path / "ckpt" / "expert_*.ckpt")])
    dm = CIFAR100DataModule(
        data_dir=str(fake_cifar_root), check_integrity=False, val_size=VAL_SIZE, batch_size=32, num_workers=0
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(GeneralistModule(**TINY), datamodule=dm)

    manifest = json.loads((out / "manifest.json").read_text())
    source = Path(manifest["sources"]["generalist"]["checkpoint"])
    assert source == out.with_name("bundle.ckpt")  # no ModelCheckpoint: the weights at the end of fit
    assert [Path(e["checkpoint"]) for e in manifest["sources"]["experts"]] == experts
    assert manifest["routing"]["temperature_source"] == "val"

    # tau and T are the val operating point of the trained weights, recomputed here independently.
    data = load_eval_data(fake_cifar_root, "val", check_integrity=False, val_size=VAL_SIZE)
    models = load_models(source, experts)
    bundle = Bundle.load(out)
    g_logits = torch_logits(models.generalist, torch_inputs(data.images))
    conf, chosen = route(g_logits, bundle.router)
    x = torch_inputs(data.images)
    expert_pred = np.stack([torch_logits(e, x).argmax(1) for e in models.experts])[chosen, np.arange(len(chosen))]
    curve = sweep_thresholds(conf, g_logits.argmax(1) == data.labels, expert_pred == data.labels)
    assert bundle.router.tau == pytest.approx(operating_tau(curve, 0.005))
    assert manifest["evaluation"]["collaboration"]["tau"] == bundle.router.tau
    assert bundle.predict(data.images).predictions.shape == (VAL_SIZE,)


def test_callback_refuses_an_incomplete_configuration_and_an_existing_folder(tmp_path: Path):
    with pytest.raises(SuiteError, match="generalist_checkpoint"):
        ExportBundleCallback(str(tmp_path / "b"), as_role="expert")
    (tmp_path / "b").mkdir()
    callback = ExportBundleCallback(str(tmp_path / "b"))
    with pytest.raises(SuiteError, match="already exists"):
        callback.setup(Trainer(logger=False, enable_progress_bar=False), GeneralistModule(**TINY), "fit")

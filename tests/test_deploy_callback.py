"""ExportBundleCallback: a fit ends with a verified bundle whose tau and temperature were chosen on val's selection
part, its expected accuracies measured on val's assessment part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import TINY, write_tiny_checkpoints
from lightning import Trainer

from ask_the_expert.deploy.bundle_format import MANIFEST_FILE, MODEL_CARD_FILE
from ask_the_expert.deploy.export import load_export_models, torch_logits
from ask_the_expert.deploy.runtime import Bundle
from ask_the_expert.method.holdout import ASSESSMENT, SELECTION, SelectionSplit, split_parts
from ask_the_expert.method.routed_batch import route_batch
from ask_the_expert.method.router import RouterSpec, fit_temperature, offload_mask
from ask_the_expert.method.sweep import choose_operating_point, sweep_thresholds
from ask_the_expert.utils.errors import RoutingError, SuiteError
from ask_the_expert.utils.hashing import file_sha256
from ask_the_expert.utils.options import DataOptions
from benchmarks.common import quiet_trainer
from callbacks.export_bundle import ExportBundleCallback
from datamodules.cifar100 import CIFAR100DataModule, labelled_images
from lightning_modules.classifier import ClassifierModule

VAL_SIZE = 100


def test_fit_exports_the_trained_generalist_with_the_given_experts(fake_cifar_root: Path, tmp_path: Path):
    _, experts = write_tiny_checkpoints(tmp_path / "ckpt", superclasses_per_expert=10)  # 2 experts
    out = tmp_path / "bundle"
    callback = ExportBundleCallback(str(out), expert_checkpoints=[str(tmp_path / "ckpt" / "expert_*.ckpt")])
    dm = CIFAR100DataModule(
        data_dir=str(fake_cifar_root), check_integrity=False, val_size=VAL_SIZE, batch_size=32, num_workers=0
    )
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, callbacks=[callback])
    trainer.fit(ClassifierModule(**TINY), datamodule=dm)

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert callback.manifest == manifest
    source = Path(manifest["sources"]["generalist"]["checkpoint"])
    assert source == out.with_name("bundle.ckpt")  # no ModelCheckpoint: the weights at the end of fit
    assert manifest["sources"]["generalist"]["sha256"] == file_sha256(source)
    assert [Path(e["checkpoint"]) for e in manifest["sources"]["experts"]] == experts
    assert manifest["routing"]["temperature_source"] == "val selection part"
    assert manifest["evaluation"]["split"] == "val" and manifest["evaluation"]["num_samples"] == VAL_SIZE // 2
    assert manifest["evaluation"]["reported_on"] == "val assessment part"
    assert manifest["files"][MODEL_CARD_FILE]["sha256"] == file_sha256(out / MODEL_CARD_FILE)

    # tau and T are the operating point of the trained weights on val's selection part (as ate-evaluate chooses it),
    # recomputed here independently.
    options = DataOptions(data_dir=str(fake_cifar_root), check_integrity=False, val_size=VAL_SIZE, num_workers=0)
    data = labelled_images(options, "val")
    bundle = Bundle.load(out)
    spec = bundle.router.routing
    assert (spec.k, spec.confidence) == (1, "max_prob")
    models = load_export_models(source, experts, spec)
    x = data.tensors()
    g_logits = torch_logits(models.generalist, x)
    parts = split_parts(data.indices, data.labels, SelectionSplit(), assess_on_val=True)
    own = parts == SELECTION
    assert spec.temperature == pytest.approx(fit_temperature(g_logits[own], data.labels[own]))
    routed = route_batch(g_logits, spec.temperature, [spec.k], [spec.confidence], bundle.router.class_to_expert(), 2)
    conf, chosen = routed.confidence[spec.confidence], routed.experts[spec.k]
    expert_pred = np.stack([torch_logits(e, x).argmax(1) for e in models.experts])[chosen, np.arange(len(chosen))]
    local, offload = g_logits.argmax(1) == data.labels, expert_pred == data.labels
    curve = sweep_thresholds(conf[own], local[own], offload[own])
    assert spec.tau == pytest.approx(choose_operating_point(curve, "within_gap", 0.005)["tau"])
    # The recorded collaboration is tau applied to the assessment part, which chose nothing.
    held = parts == ASSESSMENT
    sent = conf[held] < spec.tau
    expected = np.mean(np.where(sent, offload[held], local[held]))
    assert manifest["evaluation"]["collaboration"]["tau"] == spec.tau
    assert manifest["evaluation"]["collaboration"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    result = bundle.predict(data.images)
    assert result.predictions.shape == (VAL_SIZE,)
    np.testing.assert_array_equal(result.edge.offloaded, offload_mask(result.edge.confidences, spec.tau))


def test_callback_refuses_an_incomplete_configuration_and_an_existing_folder(tmp_path: Path):
    with pytest.raises(SuiteError, match="generalist_checkpoint"):
        ExportBundleCallback(str(tmp_path / "b"), as_role="expert")
    with pytest.raises(RoutingError, match="k must be an integer >= 1"):  # routing settings fail before training
        ExportBundleCallback(str(tmp_path / "b"), k=0)
    callback = ExportBundleCallback(str(tmp_path / "b"), k=2, confidence="margin", temperature=1.5, tau=0.3)
    assert callback.routing == RouterSpec(k=2, confidence="margin", temperature=1.5, tau=0.3)
    (tmp_path / "b").mkdir()
    callback = ExportBundleCallback(str(tmp_path / "b"))
    with pytest.raises(SuiteError, match="already exists"):
        callback.setup(Trainer(logger=False, enable_progress_bar=False), ClassifierModule(**TINY), "fit")

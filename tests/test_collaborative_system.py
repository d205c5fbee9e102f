"""CollaborativeSystem: routed prediction, the evaluation records, forward counts and checkpoint checks.

Also holds the tiny-model helpers the other collaborative test files import (``tiny_system``, ``image_loader``,
``shared_checkpoints``).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import save_checkpoint
from torch.utils.data import DataLoader, TensorDataset

from ask_the_expert.method.holdout import SELECTION, SelectionSplit, split_parts
from ask_the_expert.method.router import count_pairs, experts_needed, fit_temperature, select_experts, softmax, top_k
from ask_the_expert.method.subsets import class_to_expert, superclass_partition
from ask_the_expert.utils.errors import PartitionError, RoutingError, SuiteError
from benchmarks.common import quiet_trainer
from lightning_modules.classifier import ClassifierModule
from lightning_modules.collaborative import CollaborativeSystem
from lightning_modules.expert import ExpertModule

TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2, "drop_path_rate": 0.0}


def tiny_vit(seed: int, **kwargs) -> ClassifierModule:
    torch.manual_seed(seed)
    return ClassifierModule(**TINY, **kwargs)


def tiny_system(
    num_experts: int = 4, static: bool = False, base: bool = False, seed: int = 0, **router
) -> CollaborativeSystem:
    """A random-init system; expert j owns subset j of the superclass partition with ``num_experts`` experts."""
    subsets = superclass_partition(20 // num_experts)
    return CollaborativeSystem(
        tiny_vit(seed),
        [tiny_vit(seed + 1 + j) for j in range(num_experts)],
        subsets,
        baselines={"static": ([tiny_vit(seed + 100 + j) for j in range(num_experts)], subsets)} if static else None,
        base=tiny_vit(seed + 200, role="base") if base else None,
        **router,
    )


def image_loader(n: int, seed: int = 0, batch_size: int = 16, first_index: int = 1000) -> DataLoader:
    """(image, label, file index) batches of random images, like CIFAR100DataModule's loaders."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, 100, (n,), generator=g)
    indices = torch.arange(first_index, first_index + n)
    return DataLoader(TensorDataset(images, labels, indices), batch_size=batch_size)


class SampleCounter:
    """Forward hooks counting the samples (and remembering the inputs) each module is called on."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.samples: Counter[str] = Counter()
        self.inputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        for name, module in modules.items():
            module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args, output):
            self.samples[name] += args[0].shape[0]
            self.inputs[name].append(args[0].detach().clone())

        return hook


def _records(system: CollaborativeSystem, loader: DataLoader) -> dict[str, np.ndarray]:
    parts = [system.evaluation_records(batch) for batch in loader]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------- predict_step
def test_predict_runs_only_the_chosen_experts_on_only_the_offloaded_samples():
    system = tiny_system(temperature=1.0, k_values=[1, 2, 3], route_k=2).eval()
    counter = SampleCounter({"G": system.generalist, **{f"E{j}": e for j, e in enumerate(system.experts)}})
    images, labels, indices = next(iter(image_loader(48, batch_size=48)))
    with torch.no_grad():
        probs = softmax(system.generalist(images).numpy())
    counter.samples.clear()
    counter.inputs = {k: [] for k in counter.inputs}
    system.tau = float(np.median(probs.max(1)))  # about half the batch is offloaded

    with torch.no_grad():
        out = system.predict_step((images, labels, indices), 0)

    seen = dict(counter.samples)  # before the checks below call the experts themselves
    offloaded = out["offloaded"].numpy()
    assert 0 < offloaded.sum() < len(offloaded)
    np.testing.assert_array_equal(offloaded, probs.max(1) < system.tau)
    classes, top_probs = top_k(probs, 2)
    expected_expert = select_experts(classes, top_probs, system.class_to_expert, 4)
    np.testing.assert_array_equal(out["expert"].numpy(), np.where(offloaded, expected_expert, -1))
    assert seen["G"] == 48
    for j in range(4):
        rows = np.flatnonzero(offloaded & (expected_expert == j))
        assert seen.get(f"E{j}", 0) == len(rows)
        if len(rows):  # the expert saw exactly those images, and its answer is the prediction
            torch.testing.assert_close(torch.cat(counter.inputs[f"E{j}"]), images[rows])
            with torch.no_grad():
                answer = system.experts[j](images[rows]).argmax(-1).numpy()
            np.testing.assert_array_equal(out["prediction"].numpy()[rows], answer)
    kept = ~offloaded
    np.testing.assert_array_equal(out["prediction"].numpy()[kept], probs[kept].argmax(1))
    assert sum(seen.get(f"E{j}", 0) for j in range(4)) == offloaded.sum()

    # The evaluation path decides identically at the same tau.
    with torch.no_grad():
        rec = system.evaluation_records((images, labels, indices))
    rec_offloaded = rec["conf_max_prob"] < system.tau
    np.testing.assert_array_equal(rec_offloaded, offloaded)
    np.testing.assert_array_equal(np.where(rec_offloaded, rec["expert_k2"], -1), out["expert"].numpy())
    routed_prediction = np.where(rec_offloaded, rec["pred_k2"], rec["g_topk_classes"][:, 0])
    np.testing.assert_array_equal(routed_prediction, out["prediction"].numpy())


def test_predict_requires_a_fitted_temperature():
    system = tiny_system(temperature="fit")
    images, labels, indices = next(iter(image_loader(4)))
    with pytest.raises(SuiteError, match="not been fitted"):
        system.predict_step((images, labels, indices), 0)


# ------------------------------------------------------------------- evaluation path
def test_evaluation_costs_exactly_the_floor_of_forwards_with_20_experts():
    system = tiny_system(num_experts=20, static=True, base=True, temperature="fit", k_values=[1, 2, 3, 5])
    names = {"G": system.generalist, "base": system.base}
    names.update({f"E{j}": e for j, e in enumerate(system.experts)})
    names.update({f"S{j}": e for j, e in enumerate(system.baselines["static"])})
    counter = SampleCounter(names)
    loader = image_loader(60, batch_size=16)
    trainer = quiet_trainer()
    trainer.validate(system, dataloaders=loader, verbose=False)
    seen = dict(counter.samples)  # before the checks below call G themselves

    # T was fitted on G's logits of val's selection part, and those logits were reused: G ran once per sample in total.
    with torch.no_grad():
        logits = torch.cat([system.generalist(b[0]) for b in loader]).numpy()
    labels = np.concatenate([b[1].numpy() for b in loader])
    index = np.concatenate([b[2].numpy() for b in loader])
    chosen_part = split_parts(index, labels, SelectionSplit(), assess_on_val=True) == SELECTION
    assert chosen_part.sum() == 18  # 60 val images: 30 assessed, 12 fit the deferral rule, 18 choose
    fitted = fit_temperature(logits[chosen_part], labels[chosen_part])
    assert system.temperature_value == pytest.approx(fitted, rel=1e-6)
    assert system.temperature_value != pytest.approx(fit_temperature(logits, labels), rel=1e-3)
    n = 60
    assert seen["G"] == n
    assert seen["base"] == n

    # Expert forwards = number of distinct (sample, expert) pairs that the k values and the oracle need.
    probs = softmax(logits, system.temperature_value)
    classes, top_probs = top_k(probs, 5)
    chosen = [select_experts(classes[:, :k], top_probs[:, :k], system.class_to_expert, 20) for k in (1, 2, 3, 5)]
    oracle = system.class_to_expert[labels]
    floor = count_pairs(experts_needed([*chosen, oracle], 20))
    assert n <= floor < 5 * n  # the oracle alone differs from k=1 on random models; never N x experts
    assert sum(seen.get(f"E{j}", 0) for j in range(20)) == floor
    # The static experts: the same routing and their own subsets (the static oracle), each pair once.
    assert sum(seen.get(f"S{j}", 0) for j in range(20)) == count_pairs(experts_needed([*chosen, oracle], 20))
    metrics = trainer.callback_metrics
    assert metrics["eval/generalist_forwards"].item() == n
    assert metrics["eval/expert_forwards"].item() == floor
    assert metrics["eval/base_forwards"].item() == n


def test_records_are_o_n_k_and_consistent_with_their_models():
    system = tiny_system(static=True, base=True, temperature=1.5, k_values=[1, 3]).eval()
    loader = image_loader(40)
    with torch.no_grad():
        rec = _records(system, loader)
        images = torch.cat([b[0] for b in loader])
        g_probs = softmax(system.generalist(images).numpy(), 1.5)
        base_pred = system.base(images).argmax(-1).numpy()
    # O(k) numbers per sample (Top-k, features, one fused answer per weight), never N x experts x classes.
    assert all(v.shape[0] == 40 and v.size <= 40 * 12 for v in rec.values())
    # The fused answers' extreme weights are the expert's answer (w = 0) and G's own top-1 (w = 1).
    for k in (1, 3):
        np.testing.assert_array_equal(rec[f"fused_k{k}"][:, 0], rec[f"pred_k{k}"])
        np.testing.assert_array_equal(rec[f"fused_k{k}"][:, -1], rec["g_topk_classes"][:, 0])
    np.testing.assert_allclose(rec["g_max_prob_t1"], softmax(np.log(g_probs) * 1.5, 1.0).max(1), rtol=1e-4)
    np.testing.assert_array_equal(rec["index"], np.arange(1000, 1040))
    np.testing.assert_allclose(rec["g_topk_probs"], np.sort(g_probs, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    np.testing.assert_allclose(rec["conf_max_prob"], g_probs.max(1), rtol=1e-5)
    np.testing.assert_array_equal(rec["pred_base"], base_pred)
    np.testing.assert_array_equal(rec["oracle_expert"], system.class_to_expert[rec["label"]])
    for i in (0, 17, 39):  # spot-check the expert answers against a direct forward
        for key, owner, models in (("k3", "expert_k3", system.experts), ("oracle", "oracle_expert", system.experts)):
            with torch.no_grad():
                direct = models[int(rec[owner][i])](images[i : i + 1]).argmax(-1).item()
            assert rec[f"pred_{key}"][i] == direct
        with torch.no_grad():
            direct = system.baselines["static"][int(rec["static_expert_k1"][i])](images[i : i + 1]).argmax(-1).item()
        assert rec["static_pred_k1"][i] == direct


@pytest.mark.parametrize(
    ("router", "match"),
    [
        ({"k_values": [0, 1]}, "k values must be integers in 1..100"),
        ({"k_values": [101]}, "k values must be integers in 1..100"),
        ({"confidence_measures": ["max_prob", "variance"]}, "Unknown confidence measure"),
        ({"temperature": "warm"}, "temperature must be 'fit'"),
        ({"temperature": -1.0}, "temperature must be 'fit'"),
    ],
)
def test_bad_router_settings_are_refused(router, match):
    with pytest.raises(RoutingError, match=match):
        tiny_system(**router)


def test_experts_must_partition_the_classes():
    subsets = superclass_partition(5)
    overlapping = [subsets[0], subsets[0] + subsets[1], subsets[2], subsets[3]]
    with pytest.raises(PartitionError, match="more than one expert"):
        CollaborativeSystem(tiny_vit(0), [tiny_vit(j) for j in range(4)], overlapping)


# ------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Checkpoints:
    root: Path
    generalist: Path
    base: Path
    experts: Path  # folder: 4 experts (5 superclasses each)
    static: Path  # folder: 4 static experts
    experts20: Path  # folder: 20 experts (one superclass each)


_BUILT: dict[str, Checkpoints] = {}


def build_checkpoints(root: Path) -> Checkpoints:
    torch.manual_seed(0)
    ck = Checkpoints(
        root,
        save_checkpoint(ClassifierModule(**TINY), root / "g.ckpt"),
        save_checkpoint(ClassifierModule(arch="vit_small", role="base", **TINY), root / "base.ckpt"),
        root / "experts",
        root / "static",
        root / "experts20",
    )
    for j in range(4):
        save_checkpoint(ExpertModule(expert_index=j, partition=5, **TINY), ck.experts / f"e{j}.ckpt")
        save_checkpoint(ExpertModule(expert_index=j, partition=5, **TINY), ck.static / f"e{j}.ckpt")
    for j in range(20):
        save_checkpoint(ExpertModule(expert_index=j, partition=1, **TINY), ck.experts20 / f"e{j:02d}.ckpt")
    return ck


def shared_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    """Tiny random-init checkpoints (treat as read-only), built once per session for every test module."""
    if "ck" not in _BUILT:
        _BUILT["ck"] = build_checkpoints(tmp_path_factory.mktemp("collab_ckpts"))
    return _BUILT["ck"]


@pytest.fixture(scope="session")
def collab_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return shared_checkpoints(tmp_path_factory)


def test_from_checkpoints_loads_and_orders_the_experts(collab_checkpoints: Checkpoints):
    ck = collab_checkpoints
    # A glob and reversed file order: the system still orders experts by their recorded index.
    files = sorted(ck.experts20.glob("*.ckpt"), reverse=True)
    system = CollaborativeSystem.from_checkpoints(
        ck.generalist, [str(ck.experts20 / "e1*.ckpt"), *map(str, files)], base=ck.base, k_values=[1, 2]
    )
    assert len(system.experts) == 20
    assert [e.hparams.expert_index for e in system.experts] == list(range(20))
    np.testing.assert_array_equal(system.class_to_expert, class_to_expert(superclass_partition(1)))
    assert system.base.hparams.role == "base"
    system = CollaborativeSystem.from_checkpoints(ck.generalist, [ck.experts], baselines={"static": [ck.static]})
    assert len(system.experts) == len(system.baselines["static"]) == 4


def _bad_sets(ck: Checkpoints, tmp: Path) -> dict[str, tuple[dict, str]]:
    overlap = tmp / "overlap"
    overlap.mkdir()
    for j in (0, 2, 3):
        shutil.copy(ck.experts / f"e{j}.ckpt", overlap / f"e{j}.ckpt")
    shutil.copy(ck.experts20 / "e01.ckpt", overlap / "e1.ckpt")  # superclass 1 only: overlaps expert 0
    missing = tmp / "missing"
    missing.mkdir()
    for j in (1, 2, 3):
        shutil.copy(ck.experts / f"e{j}.ckpt", missing / f"e{j}.ckpt")
    doubled = tmp / "doubled"
    shutil.copytree(ck.experts, doubled)
    shutil.copy(ck.experts / "e0.ckpt", doubled / "e0-best.ckpt")
    torch.manual_seed(0)
    g10 = save_checkpoint(ClassifierModule(num_classes=10, **TINY), tmp / "g10.ckpt")
    not_ckpt = tmp / "notes.ckpt"
    not_ckpt.write_text("not a checkpoint")
    e = [ck.experts]
    return {
        "expert as generalist": ({"generalist": ck.experts / "e0.ckpt", "experts": e}, "not of the edge generalist"),
        "base as generalist": ({"generalist": ck.base, "experts": e}, "base model, not of the edge generalist"),
        "generalist as expert": ({"generalist": ck.generalist, "experts": [ck.generalist]}, "not of an expert"),
        "base not base": ({"generalist": ck.generalist, "experts": e, "base": ck.generalist}, "not of the stage-0"),
        "overlap": ({"generalist": ck.generalist, "experts": [overlap]}, "more than one expert"),
        "missing expert": ({"generalist": ck.generalist, "experts": [missing]}, "indices must be"),
        "doubled": ({"generalist": ck.generalist, "experts": [doubled]}, "several checkpoints for the same"),
        "class count": ({"generalist": g10, "experts": e}, "has 100 output classes but the generalist has 10"),
        "no match": ({"generalist": ck.generalist, "experts": [str(tmp / "nothing*.ckpt")]}, "matches no checkpoint"),
        "not a checkpoint": ({"generalist": not_ckpt, "experts": e}, "not a readable Lightning checkpoint"),
    }


def test_bad_checkpoint_sets_are_refused(collab_checkpoints: Checkpoints, tmp_path: Path):
    for name, (kwargs, match) in _bad_sets(collab_checkpoints, tmp_path).items():
        with pytest.raises(SuiteError, match=match) as info:
            CollaborativeSystem.from_checkpoints(**kwargs)
        assert "\n" not in str(info.value), name  # one paragraph


def test_fitting_the_temperature_keeps_the_val_batches_of_a_persistent_worker_loader():
    """Regression: the fitting pass must not reset the validation loop's iterator (persistent workers)."""
    plain = image_loader(40, batch_size=16)
    persistent = DataLoader(plain.dataset, batch_size=16, num_workers=1, persistent_workers=True)
    system = tiny_system(temperature="fit", k_values=[1])
    trainer = quiet_trainer()
    trainer.validate(system, dataloaders=persistent, verbose=False)
    # Every val sample reached validation_step: with k = 1 each one is routed to exactly one expert.
    assert trainer.callback_metrics["eval/expert_forwards"].item() >= 40

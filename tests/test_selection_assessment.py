"""Selection and assessment on disjoint data (docs/design.md §6): how val is split, and that no choice reads the data
it is assessed on: permuting the assessed labels (val's assessment part, or the test split of a test evaluation run
end to end through ate-evaluate) leaves T, the fused weights, the deferral rules, the operating points, the "up to"
points and the break-even targets unchanged; and every preset declares its primary family at the k its experts build
their routed-in sets R_j at."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_collaborative_system import Checkpoints, shared_checkpoints
from test_plots import synthetic_records

from ask_the_expert.commands import evaluate
from ask_the_expert.method.costs import load_profile
from ask_the_expert.method.findings import PrimaryFamily
from ask_the_expert.method.holdout import ASSESSMENT, SelectionSplit, part_sizes, split_parts
from ask_the_expert.method.policies import evaluate_policies
from ask_the_expert.utils.errors import SuiteError

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs/profiles/edge_arm_wifi.yaml"


@pytest.fixture(scope="session")
def collab_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return shared_checkpoints(tmp_path_factory)


def test_val_is_split_stratified_seeded_and_independent_of_order() -> None:
    labels = np.repeat(np.arange(100), 50)  # 5,000 val images, 50 per class, as the default val split
    index = np.random.default_rng(0).permutation(50_000)[:5000]
    parts = split_parts(index, labels, SelectionSplit(), assess_on_val=True)
    assert part_sizes(parts) == {"deferral": 1000, "selection": 1500, "assessment": 2500}
    for c in range(100):  # every class: 10 / 15 / 25
        assert np.bincount(parts[labels == c], minlength=3).tolist() == [10, 15, 25]
    # The parts belong to the samples (file index, label), not to their order: any batch order, any rank.
    shuffle = np.random.default_rng(1).permutation(5000)
    np.testing.assert_array_equal(split_parts(index[shuffle], labels[shuffle], SelectionSplit(), True), parts[shuffle])
    other = split_parts(index, labels, SelectionSplit(seed=1), True)
    assert part_sizes(other) == part_sizes(parts) and np.mean(other != parts) > 0.3
    # A test evaluation assesses on test: val holds only the deferral and the selection parts.
    test_mode = split_parts(index, labels, SelectionSplit(), assess_on_val=False)
    assert part_sizes(test_mode) == {"deferral": 1000, "selection": 4000, "assessment": 0}
    assert not np.any(test_mode == ASSESSMENT)
    odd = split_parts(np.arange(7), np.zeros(7, dtype=int), SelectionSplit(assessment=0.3, deferral=0.3), True)
    assert part_sizes(odd) == {"deferral": 2, "selection": 3, "assessment": 2}  # floor(7 * 0.3), floor(0.3 * 7)
    with pytest.raises(SuiteError, match="leave the assessment part empty"):
        split_parts(np.arange(1), np.zeros(1, dtype=int), SelectionSplit(), True)
    with pytest.raises(SuiteError, match="with a sum below 1"):
        SelectionSplit(assessment=0.6, deferral=0.4)


def _choices(report) -> dict:
    """Everything the report chose on the selection part (and the values it had there)."""
    return {
        "fitted": report.fitted.to_dict(),
        "points": [
            {k: p[k] for k in ("policy", "k", "confidence", "profile", "tau", "chosen_on", "on_selection")}
            for p in report.operating_points
        ],
        "up_to": [
            {
                base: {
                    cost: None if best is None else {k: v for k, v in best.items() if k != "assessed"}
                    for cost, best in per.items()
                }
                for base, per in e["reductions"].items()
            }
            for e in report.up_to
        ],
        "break_even": [
            {k: e[k] for k in ("target_accuracy", "tau", "collaboration_offload_ratio", "k")} for e in report.break_even
        ],
    }


def test_permuting_the_assessment_part_changes_no_choice() -> None:
    records = synthetic_records(600, seed=4)
    profile = load_profile(PROFILE)
    report = evaluate_policies(records, [profile], resamples=100)
    assessed = report.parts == ASSESSMENT
    # The parts are stratified by label, so the labels stay; every answer of the assessed samples (G's, the experts',
    # the static experts', the base model's, the fused ones) is shuffled among them instead.
    permuted = dict(records)
    rng = np.random.default_rng(0)
    answers = ("g_topk_classes", "pred_", "static_pred_", "static_init_pred_", "fused_k")
    for key in [k for k in records if k.startswith(answers)]:
        values = permuted[key] = records[key].copy()
        values[assessed] = values[assessed][rng.permutation(int(assessed.sum()))]
    again = evaluate_policies(permuted, [profile], resamples=100)
    np.testing.assert_array_equal(again.parts, report.parts)
    assert _choices(again) == _choices(report)
    assert [p["accuracy"] for p in again.operating_points] != [p["accuracy"] for p in report.operating_points]


def _permuted_test_copy(source: Path, target: Path) -> Path:
    """A copy of a fake CIFAR-100 folder whose test labels (fine with coarse) are permuted."""
    shutil.copytree(source, target)
    test_file = target / "cifar-100-python" / "test"
    with test_file.open("rb") as f:
        content = pickle.load(f, encoding="latin1")
    order = np.random.default_rng(0).permutation(len(content["fine_labels"]))
    for key in ("fine_labels", "coarse_labels"):
        content[key] = [content[key][i] for i in order]
    with test_file.open("wb") as f:
        pickle.dump(content, f, protocol=2)
    return target


def test_no_choice_of_a_test_evaluation_reads_the_test_split(
    collab_checkpoints: Checkpoints, fake_cifar_root: Path, tmp_path: Path
) -> None:
    ck = collab_checkpoints
    permuted = _permuted_test_copy(fake_cifar_root, tmp_path / "permuted")
    summaries = {}
    for name, data in (("original", fake_cifar_root), ("permuted", permuted)):
        out = tmp_path / name
        args = [
            "--generalist", str(ck.generalist), "--experts", f"[{ck.experts}]", "--static_experts", f"[{ck.static}]",
            "--base", str(ck.base), "--data.data_dir", str(data), "--data.check_integrity", "false",
            "--data.val_size", "100", "--data.num_workers", "0", "--data.batch_size", "64", "--k", "[1, 3]",
            "--split", "test", "--profiles", f"[{PROFILE}]", "--bootstrap", "100", "--out", str(out),
            "--accelerator", "cpu", "--wandb.mode", "disabled",
        ]  # fmt: skip
        assert evaluate.main(args) == 0
        summaries[name] = {s: json.loads((out / s / "summary.json").read_text()) for s in ("val", "test")}
        summaries[name]["val_records"] = (out / "val" / "records.csv").read_text()
    a, b = summaries["original"], summaries["permuted"]
    # The val folder (the selection report: T, every choice and the curves they were chosen on) is the same file.
    assert a["val"] == b["val"] and a["val_records"] == b["val_records"]
    ta, tb = a["test"], b["test"]
    for key in ("temperature", "temperature_fit_on", "fitted", "protocol", "primary_family"):
        assert ta[key] == tb[key], key
    assert ta["fitted"]["deferral"] and ta["fitted"]["fuse_weight"]  # the choices exist
    chosen = ("policy", "k", "confidence", "profile", "tau", "chosen_on", "on_selection")
    assert [{k: p[k] for k in chosen} for p in ta["operating_points"]] == [
        {k: p[k] for k in chosen} for p in tb["operating_points"]
    ]
    for ea, eb in zip(ta["up_to_reductions"], tb["up_to_reductions"], strict=True):
        for base, per in ea["reductions"].items():
            for cost, best in per.items():
                other = eb["reductions"][base][cost]
                assert (best is None) == (other is None)
                if best is not None:
                    assert {k: v for k, v in best.items() if k != "assessed"} == {
                        k: v for k, v in other.items() if k != "assessed"
                    }
    drop = ("assessed", "reported_on")
    assert [{k: v for k, v in e.items() if k not in drop} for e in ta["break_even"]] == [
        {k: v for k, v in e.items() if k not in drop} for e in tb["break_even"]
    ]
    # ... while what is assessed on test did change with its labels.
    assert [f["difference"] for f in ta["findings"]] != [f["difference"] for f in tb["findings"]]


@pytest.mark.parametrize("preset", ["mini", "cpu", "gpu10", "paper_scratch32", "paper_pretrained224"])
def test_every_preset_declares_its_family_at_the_k_its_experts_build_r_j_at(preset: str) -> None:
    config = yaml.safe_load((REPO / "configs" / "experiments" / f"{preset}.yaml").read_text())
    experts = yaml.safe_load((REPO / config["experts_config"]).read_text())
    default = yaml.safe_load((REPO / "configs" / "expert.yaml").read_text())["model"]["init_args"]["routing_k"]
    overrides = (experts.get("progressive") or {}).get("overrides") or {}  # the typed preset's progressive run
    routing_k = int(overrides.get("model.routing_k", default))
    family = PrimaryFamily(**config["evaluate"]["primary"])  # a declared, valid family
    assert family.k == routing_k == config["export"]["routing"]["k"]
    assert family.k in config["evaluate"]["k"] and 2 not in config["evaluate"]["k"]  # k = 2 repeats k = 1

"""ask_the_expert.method.diagnostics on a synthetic evaluation (tests/synthetic_evaluation.py): the generalist's
reliability bins and ECEs against a direct computation, the expert load at the operating points, the superclass
confusion."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_evaluation import K_VALUES, synthetic_records, synthetic_report

from ask_the_expert.method import diagnostics
from ask_the_expert.method.cifar100_classes import FINE_TO_COARSE
from ask_the_expert.method.policies import Report


@pytest.fixture(scope="module")
def evaluation() -> tuple[Report, dict[str, np.ndarray]]:
    records = synthetic_records()
    return synthetic_report(records), records


def direct_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (confidence >= lo) & ((confidence < hi) if b < bins - 1 else (confidence <= hi))
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def test_reliability_bins_and_eces_equal_a_direct_computation(evaluation) -> None:
    _, records = evaluation
    conf, correct = np.array([0.05, 0.15, 0.95, 1.0]), np.array([0, 1, 1, 1])
    # Hand check: bins 0, 1 and 9 (1.0 falls in the last): (0.05 + 0.85) / 4 + (2 / 4) * 0.025.
    assert diagnostics.expected_calibration_error(conf, correct) == pytest.approx(0.2375, abs=1e-12)
    bins = diagnostics.reliability_bins(conf, correct)
    np.testing.assert_array_equal(bins["counts"], [1, 1, 0, 0, 0, 0, 0, 0, 0, 2])
    assert np.isnan(bins["accuracy"][2]) and bins["confidence"][9] == pytest.approx(0.975)
    reliability = diagnostics.generalist_reliability(records)
    right = records["g_topk_classes"][:, 0] == records["label"]
    before = direct_ece(records["g_max_prob_t1"].astype(np.float64), right)
    after = direct_ece(records["g_topk_probs"][:, 0].astype(np.float64), right)
    assert list(reliability) == ["before_scaling", "after_scaling"]
    assert reliability["before_scaling"].ece == pytest.approx(before, abs=1e-9)
    assert reliability["after_scaling"].ece == pytest.approx(after, abs=1e-9)
    assert before != pytest.approx(after, abs=1e-3)  # scaling at T = 1.7 changes the calibration
    assert reliability["after_scaling"].bins["counts"].sum() == len(right)
    without = {k: v for k, v in records.items() if k != "g_max_prob_t1"}  # older records: only the scaled G
    assert list(diagnostics.generalist_reliability(without)) == ["after_scaling"]


def test_expert_load_is_the_share_of_offloaded_samples_at_the_operating_point(evaluation) -> None:
    report, records = evaluation
    records = report.reported_records(records)  # the assessed samples, where the operating points are applied
    load = diagnostics.expert_load(report, records)
    assert sorted(load) == list(K_VALUES)
    for k, entry in load.items():
        point = next(
            p for p in report.operating_points
            if (p["policy"], p["k"], p["confidence"], p["profile"]) == ("routed", k, "max_prob", "edge_arm_wifi")
        )  # fmt: skip
        offloaded = records["conf_max_prob"].astype(np.float64) < point["tau"]
        assert entry["offload_ratio"] == pytest.approx(point["offload_ratio"], abs=1e-12)
        if offloaded.any():
            expected = [np.mean(records[f"expert_k{k}"][offloaded] == j) for j in range(4)]
            np.testing.assert_allclose(entry["shares"], expected, atol=1e-12)
            assert entry["shares"].sum() == pytest.approx(1.0)


def test_superclass_confusion_is_row_normalised_and_undefined_beyond_cifar() -> None:
    labels = np.array([0, 0, 1, 4])  # fine 0 (apple) and 1 -> superclass 4 and 1; fine 4 (beaver) -> 0
    preds = np.array([0, 57, 1, 30])  # 57 (pear) is fruit too; 30 (dolphin) an aquatic mammal like the beaver
    matrix = diagnostics.superclass_confusion(labels, preds)
    assert matrix.shape == (20, 20)
    assert matrix[FINE_TO_COARSE[0], FINE_TO_COARSE[0]] == 1.0 and matrix[1, 1] == 1.0 and matrix[0, 0] == 1.0
    np.testing.assert_allclose(matrix.sum(axis=1)[[0, 1, 4]], 1.0)
    assert matrix.sum() == pytest.approx(3.0)  # empty rows stay zero
    assert diagnostics.superclass_confusion(np.array([0, 100]), np.array([0, 1])) is None
    assert diagnostics.superclass_accuracy(labels, preds) == 1.0
    assert (
        diagnostics.superclass_accuracy(np.array([0, 4]), np.array([4, 4])) == 0.5
    )  # apple predicted as beaver: wrong

"""Findings: paired-bootstrap verdicts on records built so that the truth is known, the primary family with Holm's
correction beside the exploratory comparisons, verdicts across seeds; "up to" cost reductions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import CONFIG_DIR

from ask_the_expert.method.costs import baseline_costs, load_profile
from ask_the_expert.method.findings import PrimaryFamily, across_seeds
from ask_the_expert.method.policies import evaluate_policies
from ask_the_expert.method.sweep import add_costs, sweep_thresholds, up_to_reductions
from ask_the_expert.utils.errors import SuiteError

PROFILE = load_profile(CONFIG_DIR / "profiles" / "edge_arm_wifi.yaml")
K1 = PrimaryFamily(k=1)  # the synthetic records route at k = 1 only


def synthetic_records(n: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Experts right on 70 % of the samples, G on 40 %, the base model on 45 %; static experts on 50 %; the
    generalist is right exactly where it is confident (so offloading low-confidence samples helps)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 100, n)
    wrong = (label + 1) % 100
    conf = rng.random(n)
    g_right = conf > 0.6
    top = np.stack([np.where(g_right, label, wrong), wrong, (label + 2) % 100], axis=1)
    owner = label // 25

    def answers(p: float) -> np.ndarray:
        return np.where(rng.random(n) < p, label, wrong)

    return {
        "index": np.arange(n),
        "label": label,
        "g_topk_classes": top,
        "g_topk_probs": np.stack([conf, conf / 2, conf / 4], axis=1).astype(np.float32),
        "conf_max_prob": conf.astype(np.float32),
        "expert_k1": owner,
        "pred_k1": answers(0.7),
        "oracle_expert": owner,
        "pred_oracle": answers(0.8),
        "static_expert_k1": owner,
        "static_pred_k1": answers(0.5),
        "static_pred_oracle": answers(0.55),
        "pred_base": answers(0.45),
    }


@pytest.fixture(scope="module")
def report():
    return evaluate_policies(synthetic_records(), [PROFILE], resamples=300, family=K1)


def find(report, claim: str):
    return next(f for f in report.findings if f.claim.startswith(claim))


def test_known_differences_get_the_right_verdicts(report) -> None:
    assert find(report, "progressive experts above static on their own subsets").verdict == "holds"
    assert find(report, "all offloaded, k=1").verdict == "holds"
    assert find(report, "routed k=1 all offloaded above the base model").verdict == "holds"
    half = find(report, "routed k=1 at 50% offload above the generalist alone")
    assert half.verdict == "holds" and half.low > 0 and half.a == pytest.approx(half.b + half.difference)


def test_a_difference_of_nothing_is_not_established() -> None:
    records = synthetic_records(2000, seed=1)
    records["static_pred_k1"] = records["pred_k1"].copy()  # identical answers: the difference is exactly 0
    found = find(evaluate_policies(records, [], resamples=200, family=K1), "all offloaded, k=1")
    assert found.difference == 0 and found.verdict == "not established"


def test_a_reversed_difference_fails() -> None:
    records = synthetic_records(2000, seed=2)
    records["pred_base"] = records["label"].copy()  # the base model is always right
    found = find(
        evaluate_policies(records, [], resamples=200, family=K1), "routed k=1 all offloaded above the base model"
    )
    assert found.verdict == "fails" and found.high < 0


def test_bad_statistics_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 100"):
        evaluate_policies(synthetic_records(200), [], resamples=50, family=K1)
    with pytest.raises(ValueError, match="not evaluated"):
        records = synthetic_records(200)
        del records["pred_base"]
        evaluate_policies(records, [], reference="base", family=K1)
    with pytest.raises(SuiteError, match=r"k=3 .* is not among the evaluated k values"):
        evaluate_policies(synthetic_records(200), [])
    with pytest.raises(SuiteError, match="declares \\['progressive_vs_static_init'\\]"):
        evaluate_policies(
            synthetic_records(200), [], family=PrimaryFamily(k=1, members=("progressive_vs_static_init",))
        )
    with pytest.raises(SuiteError, match="Unknown or no primary family members \\['magic'\\]"):
        PrimaryFamily(members=("magic",))


def test_the_primary_family_is_declared_and_holm_corrected_the_rest_exploratory(report) -> None:
    primary = [f for f in report.findings if f.family == "primary"]
    # Every member whose models the records have (no deferral features here, so no learned member), at k = 1.
    assert {f.member for f in primary} == {"progressive_vs_static", "routed_vs_base", "routed_vs_generalist"}
    assert find(report, "routed k=1 at 30% offload above the generalist alone").family == "primary"
    assert find(report, "routed k=1 at 20% offload above the generalist alone").family == "exploratory"
    exploratory = [f for f in report.findings if f.family == "exploratory"]
    assert exploratory and all(f.level == 0.95 and math.isnan(f.p_adjusted) and not f.member for f in exploratory)
    # Holm: sorted p-values meet alpha / 3, alpha / 2, alpha; adjusted p-values are monotone in the raw ones.
    order = sorted(primary, key=lambda f: f.p_value)
    assert [f.level for f in order] == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05])
    assert all(a.p_adjusted <= b.p_adjusted for a, b in itertools.pairwise(order))
    assert all(f.verdict == "holds" and f.low > 0 for f in primary)  # these differences are real (the records)
    # Only the assessment part is assessed; every operating point was chosen on the selection part.
    assert report.num_samples == report.protocol["sizes"]["assessment"] == 1000
    assert {p["chosen_on"] for p in report.operating_points} == {"val selection part"}
    assert {p["reported_on"] for p in report.operating_points} == {"val assessment part"}


def test_a_declared_family_of_one_member_is_not_corrected() -> None:
    family = PrimaryFamily(k=1, offload=0.5, members=("routed_vs_generalist",))
    found = evaluate_policies(synthetic_records(), [], resamples=200, family=family).findings
    (member,) = [f for f in found if f.family == "primary"]
    assert member.claim.startswith("routed k=1 at 50% offload above the generalist") and member.level == 0.95
    assert member.p_adjusted == member.p_value
    assert find_in(found, "routed k=1 at 30% offload above the generalist").family == "exploratory"


def find_in(findings, claim: str):
    return next(f for f in findings if f.claim.startswith(claim))


def test_across_seeds_needs_every_seed_to_agree() -> None:
    holds = {"group": "g", "claim": "c", "a_label": "a", "b_label": "b", "unit": "accuracy", "a": 0.6, "b": 0.5,
             "difference": 0.1, "low": 0.05, "high": 0.15, "verdict": "holds", "family": "primary",
             "member": "routed_vs_base", "level": 0.975}  # fmt: skip
    weak = {**holds, "difference": 0.02, "low": -0.01, "high": 0.05, "verdict": "not established"}
    (both,) = across_seeds([[holds], [holds]])
    assert both["verdict"] == "holds" and both["difference"] == pytest.approx((0.1, 0.0))
    assert both["family"] == "primary" and both["levels"] == [0.975, 0.975]
    (mixed,) = across_seeds([[holds], [weak]])
    assert mixed["verdict"] == "not established" and mixed["intervals"] == [(0.05, 0.15), (-0.01, 0.05)]
    # The seed-level t interval of the mean difference: mean 0.06, std 0.04 * sqrt(2) / 2 ... by hand: t(0.975, 1).
    low, high = mixed["seed_interval"]
    assert (low + high) / 2 == pytest.approx(0.06) and (high - low) / 2 == pytest.approx(12.7062047 * 0.04, rel=1e-6)
    (one,) = across_seeds([[holds]])
    assert one["seed_interval"] is None
    (missing,) = across_seeds([[holds], []])  # a finding one seed lacks is not established across seeds
    assert missing["verdict"] == "not established"
    # The same claim in another group (e.g. "all offloaded, k=3" against each static variant) is another finding.
    other = {**weak, "group": "h"}
    combined = across_seeds([[holds, other], [holds, other]])
    assert [(f["group"], f["verdict"], f["seeds"]) for f in combined] == [
        ("g", "holds", 2),
        ("h", "not established", 2),
    ]


def test_up_to_reductions_quote_the_accuracy_they_cost() -> None:
    conf = np.linspace(0, 1, 11)
    local = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    offload = np.ones(11, dtype=bool)
    curve = add_costs(sweep_thresholds(conf, local, offload), PROFILE)
    baselines = baseline_costs(PROFILE)
    best = up_to_reductions(curve, baselines, {"edge_medium": 0.9, "edge_generalist": None, "near_edge_only": 2.0})
    medium = best["edge_medium"]["latency_ms"]
    # Accuracy >= 0.9 - 0.005 needs at least 2 of the 3 wrong local answers offloaded; the fewest offloads are cheapest.
    assert medium["accuracy"] >= 0.895 and medium["baseline_accuracy"] == 0.9
    feasible = np.flatnonzero(curve["accuracy"] >= 0.895)
    expected = 1 - curve["latency_ms"][feasible].min() / baselines["edge_medium"]["latency_ms"]
    assert medium["reduction"] == pytest.approx(expected)
    assert best["edge_generalist"]["latency_ms"] is None  # unknown baseline accuracy
    assert best["near_edge_only"]["latency_ms"] is None  # no threshold is that accurate

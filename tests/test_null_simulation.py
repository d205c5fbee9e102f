"""The statistics under simulation: evaluations in which every policy is equal in expectation (the null), and the same
with one real difference planted. The primary family's family-wise rate of a false "holds" must stay at or below 5 %
(docs/design.md §6, Holm's correction), an uncorrected family exceeds it, and the planted difference is found at the
power stated here. Every repetition runs the real path: the val records are split, every choice is made on the
selection part and the findings are assessed on the assessment part (ask_the_expert.method.policies).

    pytest -n 0 -s tests/test_null_simulation.py   # prints the rates with their binomial 95 % intervals
"""

from __future__ import annotations

import math

import numpy as np

from ask_the_expert.method.deferral import FEATURE_NAMES
from ask_the_expert.method.findings import PrimaryFamily
from ask_the_expert.method.policies import evaluate_policies

VAL = 600  # 300 assessed, 180 choose, 120 fit the deferral rule (the default shares)
RESAMPLES = 200
NULL_RUNS = 200
PLANTED_RUNS = 60
ACCURACY = 0.5
PLANTED = 0.15  # the static-from-base experts' accuracy is this much lower: progressive_vs_static is true
STATED_POWER = 0.8
FAMILY = PrimaryFamily(k=3, offload=0.3)
MEMBERS = {"progressive_vs_static", "progressive_vs_static_init", "routed_vs_base", "routed_vs_generalist"}
MEMBERS |= {"learned_vs_confidence"}


def null_records(rng: np.random.Generator, static_accuracy: float = ACCURACY) -> dict[str, np.ndarray]:
    """Val records in which the generalist, the routed experts at every k, both static variants and the base model
    are each right with the same probability, independently of each other and of every confidence and feature."""
    label = rng.integers(0, 100, VAL)

    def answers(p: float) -> np.ndarray:
        return np.where(rng.random(VAL) < p, label, (label + 1) % 100)

    g = answers(ACCURACY)
    records = {
        "index": np.arange(VAL),
        "label": label,
        "g_topk_classes": np.stack([g, (g + 1) % 100, (g + 2) % 100], axis=1),
        "g_topk_probs": np.sort(rng.random((VAL, 3)), axis=1)[:, ::-1].astype(np.float32),
        "conf_max_prob": rng.random(VAL).astype(np.float32),
        "g_features": rng.standard_normal((VAL, len(FEATURE_NAMES))).astype(np.float32),
        "oracle_expert": label // 25,
        "pred_oracle": answers(ACCURACY),
        "pred_base": answers(ACCURACY),
    }
    for k in (1, 3):
        records[f"expert_k{k}"] = rng.integers(0, 4, VAL)
        records[f"pred_k{k}"] = answers(ACCURACY)
        records[f"static_pred_k{k}"] = answers(static_accuracy)
        records[f"static_init_pred_k{k}"] = answers(ACCURACY)
    return records


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of a binomial proportion."""
    z, p = 1.959964, successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_text(name: str, successes: int, trials: int) -> str:
    low, high = wilson(successes, trials)
    return f"{name}: {successes}/{trials} = {successes / trials:.3f} [95 % {low:.3f}, {high:.3f}]"


def test_the_primary_family_controls_false_holds_and_finds_a_planted_difference() -> None:
    rng = np.random.default_rng(2024)
    corrected = uncorrected = 0
    for run in range(NULL_RUNS):
        found = evaluate_policies(null_records(rng), [], resamples=RESAMPLES, bootstrap_seed=run, family=FAMILY)
        primary = [f for f in found.findings if f.family == "primary"]
        assert {f.member for f in primary} == MEMBERS
        corrected += any(f.verdict == "holds" for f in primary)
        # The same members without the correction: each at its own uncorrected 95 % (two-sided p < 0.05).
        uncorrected += any(f.p_value < 0.05 and f.difference > 0 for f in primary)
    found_planted = 0
    for run in range(PLANTED_RUNS):
        records = null_records(rng, static_accuracy=ACCURACY - PLANTED)
        found = evaluate_policies(records, [], resamples=RESAMPLES, bootstrap_seed=run, family=FAMILY)
        member = next(f for f in found.findings if f.member == "progressive_vs_static")
        found_planted += member.verdict == "holds"
    lines = [
        rate_text("family-wise false holds, Holm-corrected", corrected, NULL_RUNS),
        rate_text("family-wise false holds, uncorrected", uncorrected, NULL_RUNS),
        rate_text(f"power, progressive above static by {PLANTED:.0%} at {VAL // 2} assessed images", found_planted,
                  PLANTED_RUNS),
    ]  # fmt: skip
    print("\n" + "\n".join(lines))
    assert corrected / NULL_RUNS <= 0.05, lines[0]
    assert wilson(uncorrected, NULL_RUNS)[0] > 0.05 and uncorrected > corrected, lines[1]
    assert found_planted / PLANTED_RUNS >= STATED_POWER, lines[2]

"""A synthetic evaluation (numpy only, fast), shared by the tests of the plots, the results store, compare, the
diagnostics, the sweep and the statistics: ``synthetic_records`` builds records with every column
``CollaborativeSystem.evaluation_records`` writes, routed by ask_the_expert.method.routed_batch.route_batch on random
logits; ``synthetic_report`` evaluates them; ``random_policy`` is one policy's sweep inputs with many tied
confidences."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ask_the_expert.method.costs import load_profile
from ask_the_expert.method.policies import Report, evaluate_policies
from ask_the_expert.method.routed_batch import FUSE_WEIGHTS, generalist_records, route_batch
from ask_the_expert.method.router import oracle_experts
from ask_the_expert.method.subsets import class_to_expert, superclass_partition

REPO = Path(__file__).resolve().parents[1]
PROFILES = [REPO / "configs/profiles/edge_arm_wifi.yaml", REPO / "configs/profiles/edge_jetson_ethernet.yaml"]
K_VALUES = (1, 2, 3, 5)
TEMPERATURE = 1.7


def synthetic_records(n: int = 240, seed: int = 0, first_index: int = 0) -> dict[str, np.ndarray]:
    """Records of a 4-expert evaluation (superclass_partition(5)) with static, static_init and base answers: G is
    right where its logit boost lands, experts mostly right on their own classes, wrong elsewhere."""
    rng = np.random.default_rng(seed)
    table = class_to_expert(superclass_partition(5))
    labels = rng.integers(0, 100, n)
    logits = rng.normal(0.0, 1.0, (n, 100))
    logits[np.arange(n), labels] += rng.uniform(0.0, 6.0, n)  # confident and right, or unsure and often wrong
    routed = route_batch(logits, TEMPERATURE, K_VALUES, ["max_prob", "margin"], table, 4)
    rec = generalist_records(routed, labels, np.arange(first_index, first_index + n))
    oracle = oracle_experts(labels, table)

    def answers(expert: np.ndarray, skill: float) -> np.ndarray:
        right = (expert == oracle) & (rng.random(n) < skill)
        return np.where(right, labels, rng.integers(0, 100, n))

    g_top1 = rec["g_topk_classes"][:, 0]
    for k in K_VALUES:
        rec[f"expert_k{k}"] = routed.experts[k]
        rec[f"pred_k{k}"] = answers(routed.experts[k], 0.9)
        # Fused answers: the expert's below weight 0.5, G's above (the weight is fitted on these records).
        rec[f"fused_k{k}"] = np.stack([rec[f"pred_k{k}"] if w < 0.5 else g_top1 for w in FUSE_WEIGHTS], axis=1)
        for name, skill in (("static", 0.7), ("static_init", 0.5)):
            rec[f"{name}_expert_k{k}"] = routed.experts[k]
            rec[f"{name}_pred_k{k}"] = answers(routed.experts[k], skill)
    rec["oracle_expert"], rec["pred_oracle"] = oracle, answers(oracle, 0.9)
    for name, skill in (("static", 0.7), ("static_init", 0.5)):
        rec[f"{name}_pred_oracle"] = answers(oracle, skill)
    rec["pred_base"] = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 100, n))
    return rec


def synthetic_report(records: dict[str, np.ndarray], profiles: bool = True) -> Report:
    loaded = [load_profile(p) for p in PROFILES] if profiles else []
    report = evaluate_policies(records, loaded, resamples=100)
    report.meta = {"temperature": TEMPERATURE, "bootstrap": {"resamples": 100}}
    return report


def random_policy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence with many ties, G right, offloaded answer right) for n samples."""
    rng = np.random.default_rng(seed)
    conf = np.round(rng.random(n), 2)
    return conf, rng.random(n) < 0.6, rng.random(n) < 0.8

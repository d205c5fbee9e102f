"""What an evaluation shows besides its curves (docs/design.md §6), plain numpy: the generalist's calibration
(reliability bins and the expected calibration error, before and after temperature scaling), the load each expert
receives at the routed policy's operating points, and the generalist's superclass confusion.

ask_the_expert/results/plots.py draws these; it computes nothing itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ask_the_expert.method.cifar100_classes import FINE_TO_COARSE, NUM_CLASSES, NUM_SUPERCLASSES
from ask_the_expert.method.policies import Report
from ask_the_expert.method.router import offload_mask

RELIABILITY_BINS = 10


# ------------------------------------------------------------------------------------------------ calibration
def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Equal-width confidence bins over [0, 1] (a confidence of 1 falls in the last bin): per bin the number of
    samples, their mean confidence and their accuracy (NaN for empty bins)."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    ok = np.asarray(correct, dtype=np.float64)
    which = np.minimum((c * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=c, minlength=bins) / counts
        accuracy = np.bincount(which, weights=ok, minlength=bins) / counts
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "counts": counts, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = RELIABILITY_BINS) -> float:
    """ECE: sum over the bins of reliability_bins of (bin share) x |bin accuracy - bin mean confidence|."""
    b = reliability_bins(confidence, correct, bins)
    full = b["counts"] > 0
    share = b["counts"][full] / b["counts"].sum()
    return float(np.sum(share * np.abs(b["accuracy"][full] - b["confidence"][full])))


@dataclass(frozen=True)
class Reliability:
    """The generalist's top-1 probability as a calibration: its bins (``reliability_bins``) and its ECE."""

    bins: dict[str, Any]
    ece: float


def generalist_reliability(records: Mapping[str, np.ndarray]) -> dict[str, Reliability]:
    """G's calibration ``before_scaling`` (softmax at T = 1, ``g_max_prob_t1``, when recorded) and
    ``after_scaling`` (at the evaluation's temperature); correctness is G's top-1 == label."""
    correct = records["g_topk_classes"][:, 0] == records["label"]
    confidences = {"after_scaling": records["g_topk_probs"][:, 0]}
    if "g_max_prob_t1" in records:
        confidences = {"before_scaling": records["g_max_prob_t1"], **confidences}
    return {
        name: Reliability(reliability_bins(conf, correct), expected_calibration_error(conf, correct))
        for name, conf in confidences.items()
    }


# ------------------------------------------------------------------------------------------------- expert load
def operating_point(report: Report, policy: str, k: int, measure: str) -> dict[str, Any] | None:
    """The operating point (chosen on val's selection part) of (policy, k, measure) on the report's first profile (or
    the profile-free one)."""
    pname = report.profiles[0].name if report.profiles else ""
    for p in report.operating_points:
        if (p["policy"], p["k"], p["confidence"], p["profile"]) == (policy, k, measure, pname):
            return p
    return None


def expert_load(report: Report, records: Mapping[str, np.ndarray]) -> dict[int, dict[str, Any]]:
    """Per k: the share of offloaded samples each expert receives at the routed policy's operating point
    (first profile, primary measure), with that point's tau and offload ratio (shares are zeros when nothing is
    offloaded)."""
    primary = report.measures[0]
    conf_key = f"conf_{primary}"
    if conf_key not in records or "oracle_expert" not in records:
        return {}
    experts = [records[f"expert_k{k}"] for k in report.k_values if f"expert_k{k}" in records]
    num_experts = int(max([records["oracle_expert"].max(), *(e.max() for e in experts)])) + 1
    out: dict[int, dict[str, Any]] = {}
    for k in report.k_values:
        point = operating_point(report, "routed", k, primary)
        if point is None or f"expert_k{k}" not in records:
            continue
        offloaded = offload_mask(records[conf_key], point["tau"])
        counts = np.bincount(records[f"expert_k{k}"][offloaded].astype(np.int64), minlength=num_experts)
        shares = counts / max(int(offloaded.sum()), 1)
        out[k] = {"shares": shares, "tau": float(point["tau"]), "offload_ratio": float(np.mean(offloaded))}
    return out


# ---------------------------------------------------------------------------------------- superclass confusion
def superclass_confusion(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray | None:
    """(20, 20) row-normalised confusion of CIFAR-100 superclasses (rows: true, columns: predicted; rows without
    samples are zeros); None when a label or prediction is not a CIFAR-100 fine class."""
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if y.size == 0 or min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= NUM_CLASSES:
        return None
    counts = np.zeros((NUM_SUPERCLASSES, NUM_SUPERCLASSES))
    np.add.at(counts, (FINE_TO_COARSE[y], FINE_TO_COARSE[p]), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)


def superclass_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """The share of predictions in the true class's superclass (CIFAR-100 fine classes)."""
    return float(np.mean(FINE_TO_COARSE[np.asarray(labels)] == FINE_TO_COARSE[np.asarray(predictions)]))

"""Routing one batch (docs/design.md §3), plain numpy: G's logits -> calibrated probabilities, confidences, Top-k, the
chosen expert per k and the learned-deferral features; and the fused answer of G and an expert.

The Lightning system (evaluation and routed prediction), the routed-in sets R_j of expert training and the torch-free
runtime all call ``route_batch``. It lives apart from ask_the_expert.method.policies (records -> policies -> curves) so
that the code training depends on stays small: a pipeline step's fingerprint covers the source it imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ask_the_expert.method.deferral import DeferralRule, deferral_features
from ask_the_expert.method.router import (
    LEARNED,
    check_k_values,
    check_measures,
    confidence,
    select_experts,
    softmax,
    top_k,
)
from ask_the_expert.utils.errors import SuiteError

Records = dict[str, np.ndarray]
# Weights w of the fused answer argmax(w log p_G + (1 - w) log p_E): 0 is the expert's answer, 1 is G's.
FUSE_WEIGHTS = tuple(round(float(w), 2) for w in np.linspace(0.0, 1.0, 11))


@dataclass(frozen=True)
class RoutedBatch:
    """The generalist's side of routing for one batch: calibrated probabilities and everything derived from them."""

    probs: np.ndarray  # (N, C) softmax(logits / T)
    topk_classes: np.ndarray  # (N, k_max) int64, most probable first
    topk_probs: np.ndarray  # (N, k_max)
    confidence: dict[str, np.ndarray]  # measure -> (N,)
    experts: dict[int, np.ndarray]  # k -> (N,) chosen expert
    features: np.ndarray | None = None  # (N, F) learned-deferral features (with experts)
    raw_max_prob: np.ndarray | None = None  # (N,) max of softmax(logits) at T = 1, for reliability diagrams

    def experts_for(self, k_values: Sequence[int], class_to_expert: np.ndarray, num_experts: int) -> list[np.ndarray]:
        """The Top-k expert choice per k under another partition (the static experts')."""
        return [
            select_experts(self.topk_classes[:, :k], self.topk_probs[:, :k], class_to_expert, num_experts)
            for k in k_values
        ]


def route_batch(
    logits: np.ndarray,
    temperature: float,
    k_values: Sequence[int],
    measures: Sequence[str],
    class_to_expert: np.ndarray | None,
    num_experts: int = 0,
    deferral: DeferralRule | None = None,
) -> RoutedBatch:
    """Route a batch (docs/design.md §3): p = softmax(z / T), the confidences, G's Top-k_max and, when there are
    experts, the expert chosen for each k (argmax of the summed Top-k probabilities per expert) and the features of
    the learned deferral. ``measures`` may include ``learned`` when ``deferral`` (the fitted rule) is given."""
    probs = softmax(logits, temperature)
    ks = check_k_values(k_values, probs.shape[1])
    classes, top_probs = top_k(probs, max(ks))
    experts: dict[int, np.ndarray] = {}
    features = None
    if class_to_expert is not None and num_experts:
        experts = {k: select_experts(classes[:, :k], top_probs[:, :k], class_to_expert, num_experts) for k in ks}
        features = deferral_features(probs, class_to_expert, num_experts)
    plain = [m for m in measures if m != LEARNED]
    conf = {m: confidence(probs, m) for m in check_measures(plain)} if plain else {}
    if LEARNED in measures:
        if deferral is None or features is None:
            raise SuiteError(
                "The 'learned' confidence needs the fitted deferral rule and experts to route to; export the bundle "
                "with --routing.confidence learned from an evaluation with experts, or use max_prob."
            )
        conf[LEARNED] = deferral.confidence(features)
    raw = np.max(softmax(logits, 1.0), axis=1) if temperature != 1.0 else np.max(probs, axis=1)
    return RoutedBatch(probs, classes, top_probs, conf, experts, features, raw)


def fused_predictions(generalist_probs: np.ndarray, expert_logits: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(N, len(weights)) class of argmax(w log p_G + (1 - w) log p_E) per weight (p_E = softmax of the expert's
    logits at temperature 1): one answer per candidate weight from the forwards already made."""
    tiny = np.finfo(np.float64).tiny
    log_g = np.log(np.maximum(np.asarray(generalist_probs, dtype=np.float64), tiny))
    log_e = np.log(np.maximum(softmax(np.asarray(expert_logits, dtype=np.float64)), tiny))
    w = np.asarray(weights, dtype=np.float64)[None, :, None]
    return np.argmax(w * log_g[:, None, :] + (1.0 - w) * log_e[:, None, :], axis=2)


def generalist_records(routed: RoutedBatch, labels: np.ndarray, indices: np.ndarray) -> Records:
    """The generalist's per-sample columns of the evaluation records (O(k) numbers per sample)."""
    rec: Records = {
        "index": np.asarray(indices, dtype=np.int64),
        "label": np.asarray(labels, dtype=np.int64),
        "g_topk_classes": routed.topk_classes.astype(np.int32),
        "g_topk_probs": routed.topk_probs.astype(np.float32),
    }
    for m, c in routed.confidence.items():
        rec[f"conf_{m}"] = np.asarray(c, dtype=np.float32)
    if routed.features is not None:
        rec["g_features"] = routed.features.astype(np.float32)
    if routed.raw_max_prob is not None:
        rec["g_max_prob_t1"] = routed.raw_max_prob.astype(np.float32)
    return rec

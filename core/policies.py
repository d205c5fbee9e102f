"""The one evaluation core (DESIGN sections 3 and 6), plain numpy: every consumer routes and scores through here.

- ``route_batch``: G's logits -> calibrated probabilities, Top-k, confidences and the chosen expert per k. The
  Lightning system (evaluation and routed prediction), the routed-in sets R_j and the torch-free runtime call it.
- ``offload_mask`` (core.routing): the offload rule, confidence < tau in float64.
- ``policy_inputs``: per-sample records (``CollaborativeSystem.evaluation_records``) -> each policy's confidence
  and whether its local and offloaded answers are right.
- ``evaluate_policies``: the exact sweep of every policy, its scalars, operating points and reference points (a
  ``Report``); the callback, evaluate.py, the export and the verifier use it; callbacks/reporting.py only writes it.

Policies (``k = 0`` where a policy does not depend on Top-k):

- ``routed``: offload to the expert chosen from G's Top-k (the progressive experts), one curve per k.
- ``static``: the same routing to the static experts (when given), one curve per k.
- ``base``: offload to the all-class base ("medium") model (when given).
- ``oracle``: offload to the expert that owns the true class.
- ``random``: offload a random subset (same rate sweep) to the routed expert, one curve per k.
- ``generalist_only`` / ``all_offloaded``: the two end points of the routed curves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.costs import COST_KEYS, Profile, baseline_costs
from core.errors import SuiteError
from core.routing import (
    check_k_values,
    check_measures,
    confidence,
    oracle_experts,
    random_confidence,
    select_experts,
    softmax,
    top_k,
)
from core.sweep import (
    OPERATING_RULES,
    add_costs,
    apply_threshold,
    choose_operating_point,
    reductions,
    summarise_curve,
    sweep_thresholds,
)

Records = dict[str, np.ndarray]
# Policies with a curve over tau (the end-point policies are single points).
CURVE_POLICIES = ("routed", "static", "base", "oracle", "random")
# Half-width of the band put below the lowest / above the highest val confidence when a deployed tau sits at an end.
_END_MARGIN = 1e-3


# ----------------------------------------------------------------------------------------------------- routing
@dataclass(frozen=True)
class RoutedBatch:
    """The generalist's side of routing for one batch: calibrated probabilities and everything derived from them."""

    probs: np.ndarray  # (N, C) softmax(logits / T)
    topk_classes: np.ndarray  # (N, k_max) int64, most probable first
    topk_probs: np.ndarray  # (N, k_max)
    confidence: dict[str, np.ndarray]  # measure -> (N,)
    experts: dict[int, np.ndarray]  # k -> (N,) chosen expert

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
) -> RoutedBatch:
    """Route a batch (DESIGN section 3): p = softmax(z / T), the confidences, G's Top-k_max and, when there are
    experts, the expert chosen for each k (argmax of the summed Top-k probabilities per expert)."""
    probs = softmax(logits, temperature)
    ks = check_k_values(k_values, probs.shape[1])
    classes, top_probs = top_k(probs, max(ks))
    experts: dict[int, np.ndarray] = {}
    if class_to_expert is not None and num_experts:
        experts = {k: select_experts(classes[:, :k], top_probs[:, :k], class_to_expert, num_experts) for k in ks}
    conf = {m: confidence(probs, m) for m in check_measures(measures)}
    return RoutedBatch(probs, classes, top_probs, conf, experts)


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
    return rec


def oracle_assignment(labels: np.ndarray, class_to_expert: np.ndarray) -> np.ndarray:
    """The expert that owns each true label (the oracle-routing reference policy)."""
    return oracle_experts(np.asarray(labels, dtype=np.int64), class_to_expert)


# ----------------------------------------------------------------------------------------------------- records
def record_layout(records: Mapping[str, np.ndarray]) -> tuple[list[int], list[str]]:
    """The k values and confidence measures a record set holds (records are self-describing)."""
    ks = sorted(int(m.group(1)) for key in records if (m := re.fullmatch(r"pred_k(\d+)", key)))
    measures = [key[len("conf_") :] for key in records if key.startswith("conf_")]
    if not ks or not measures or "label" not in records:
        raise SuiteError(
            "The evaluation records lack label / pred_k<k> / conf_<measure> columns; they must come from "
            "CollaborativeSystem.evaluation_records()."
        )
    return ks, measures


def merge_records(parts: Sequence[Mapping[str, np.ndarray]]) -> Records:
    """Concatenate record sets (batches, or ranks), keep one record per file ``index`` and sort by it.

    A padded DistributedSampler repeats samples on the last rank; those duplicates (same index, same record) are
    dropped here, so the merged set equals a single-process evaluation.
    """
    parts = [p for p in parts if p and len(p["index"])]
    if not parts:
        return {}
    keys = list(parts[0])
    if any(list(p) != keys for p in parts):
        raise SuiteError(
            "Record sets from different batches/ranks have different columns; every rank must run the same "
            "CollaborativeSystem configuration."
        )
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    _, first = np.unique(merged["index"], return_index=True)  # sorted unique indices, first occurrence
    return {k: v[first] for k, v in merged.items()}


@dataclass(frozen=True)
class PolicyData:
    """A policy's sweep inputs: per-sample confidence and whether the local / offloaded answer is right."""

    policy: str
    k: int
    measure: str
    confidence: np.ndarray
    correct_local: np.ndarray
    correct_offload: np.ndarray

    @property
    def key(self) -> tuple[str, int, str]:
        return self.policy, self.k, self.measure


def policy_inputs(records: Mapping[str, np.ndarray], random_seed: int = 0) -> list[PolicyData]:
    """The sweep inputs of every curve policy the records support."""
    ks, measures = record_layout(records)
    label = records["label"]
    local = records["g_topk_classes"][:, 0] == label
    rand = random_confidence(len(label), random_seed)
    out: list[PolicyData] = []
    for m in measures:
        conf = records[f"conf_{m}"]
        for k in ks:
            out.append(PolicyData("routed", k, m, conf, local, records[f"pred_k{k}"] == label))
            if f"static_pred_k{k}" in records:
                out.append(PolicyData("static", k, m, conf, local, records[f"static_pred_k{k}"] == label))
        if "pred_base" in records:
            out.append(PolicyData("base", 0, m, conf, local, records["pred_base"] == label))
        out.append(PolicyData("oracle", 0, m, conf, local, records["pred_oracle"] == label))
    for k in ks:
        out.append(PolicyData("random", k, "random", rand, local, records[f"pred_k{k}"] == label))
    return out


def routed_policy(records: Mapping[str, np.ndarray], k: int, measure: str) -> PolicyData:
    """The sweep inputs of the routed policy at one k and confidence measure."""
    ks, measures = record_layout(records)
    if k not in ks or measure not in measures:
        raise SuiteError(
            f"The records hold k {ks} and confidence measures {measures}, not k={k} with {measure!r}; evaluate "
            "with that k and measure."
        )
    label = records["label"]
    local = records["g_topk_classes"][:, 0] == label
    return PolicyData("routed", k, measure, records[f"conf_{measure}"], local, records[f"pred_k{k}"] == label)


# ----------------------------------------------------------------------------------------------------- report
@dataclass
class Report:
    """Everything one evaluation computes; ``curves[key]`` is a core.sweep curve (profile-free)."""

    split: str
    num_samples: int
    k_values: list[int]
    measures: list[str]
    profiles: list[Profile]
    curves: dict[tuple[str, int, str], dict[str, np.ndarray]]
    scalars: list[dict[str, Any]]
    operating_points: list[dict[str, Any]]
    reference_points: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def curve_with_costs(self, key: tuple[str, int, str], profile: Profile | None) -> dict[str, np.ndarray]:
        """The curve of ``key`` with its mean costs per sample under ``profile`` (none without a profile)."""
        return add_costs(self.curves[key], profile, near_role(profile, key[0]))


def near_role(profile: Profile | None, policy: str) -> str:
    """The near-edge latency role an offload of ``policy`` costs: the base model is timed as ``medium`` when the
    profile has it, else as an ``expert`` (same architecture); every other policy runs an expert."""
    if policy == "base" and profile is not None and "medium" in profile.near_edge.latency_ms:
        return "medium"
    return "expert"


def check_operating_rule(rule: str, gap: float, budget: float | None) -> None:
    """Fail before any model runs when the operating-point settings are unusable (core.sweep rechecks)."""
    if rule not in OPERATING_RULES:
        raise SuiteError(f"Unknown operating-point rule {rule!r}. Use one of {', '.join(OPERATING_RULES)}.")
    if rule == "within_gap" and not gap >= 0:
        raise SuiteError(f"gap must be >= 0 (accuracy units, 0.005 = 0.5 points), got {gap!r}.")
    if rule != "within_gap" and budget is None:
        raise SuiteError(f"The operating-point rule {rule!r} needs a budget (ms for latency, mJ for energy).")


def _end_point(
    curve: Mapping[str, np.ndarray], i: int, policy: str, k: int, measure: str, profile: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"policy": policy, "k": k, "confidence": measure, "profile": profile}
    for col in ("tau", "offload_ratio", "accuracy", *COST_KEYS):
        out[col] = float(curve[col][i]) if col in curve else math.nan
    return out


def evaluate_policies(
    records: Mapping[str, np.ndarray],
    profiles: Sequence[Profile] = (),
    split: str = "val",
    random_seed: int = 0,
    rule: str = "within_gap",
    gap: float = 0.005,
    budget: float | None = None,
    val_points: Sequence[Mapping[str, Any]] | None = None,
) -> Report:
    """Sweep every policy exactly; choose operating points with ``rule`` or, given ``val_points`` (the operating
    points of a val report), apply their thresholds unchanged (the test protocol)."""
    n = len(records.get("label", ()))
    if n == 0:
        raise SuiteError(
            f"The {split} split produced no samples, so there is nothing to evaluate. Check the data folder, the "
            "split and the class selection."
        )
    ks, measures = record_layout(records)
    inputs = policy_inputs(records, random_seed)
    curves = {p.key: sweep_thresholds(p.confidence, p.correct_local, p.correct_offload) for p in inputs}
    scalars = [{"policy": p, "k": k, "confidence": m, **summarise_curve(curves[p, k, m])} for p, k, m in curves]
    by_key = {p.key: p for p in inputs}
    chosen = {(v["policy"], v["k"], v["confidence"], v["profile"]): v for v in val_points or []}
    points: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    for profile in profiles or [None]:
        pname = profile.name if profile else ""
        baselines = baseline_costs(profile) if profile else {}
        for key, curve in curves.items():
            near = near_role(profile, key[0])
            tag = {"policy": key[0], "k": key[1], "confidence": key[2], "profile": pname}
            if val_points is None:
                point = {
                    **tag,
                    "chosen_on": split,
                    **choose_operating_point(add_costs(curve, profile, near), rule, gap, budget),
                }
            elif (*key, pname) in chosen:
                p = by_key[key]
                tau = chosen[(*key, pname)]["tau"]
                applied = apply_threshold(p.confidence, p.correct_local, p.correct_offload, tau, profile, near)
                point = {**tag, "chosen_on": "val", **applied}
            else:
                continue
            point["reductions"] = reductions(point, baselines)
            points.append(point)
        for m in measures:
            for k in ks:
                curve = add_costs(curves["routed", k, m], profile, "expert")
                if k == ks[0]:
                    refs.append(_end_point(curve, 0, "generalist_only", 0, m, pname))
                refs.append(_end_point(curve, -1, "all_offloaded", k, m, pname))
    return Report(split, n, ks, measures, list(profiles), curves, scalars, points, refs)


# ------------------------------------------------------------------------------------------- deployment summaries
def deployable_tau(curve: Mapping[str, np.ndarray], gap: float) -> float:
    """tau of the val operating point (DESIGN section 6), moved to the middle of its confidence gap.

    Every tau between the last offloaded and the first kept val confidence splits val the same way; the midpoint
    keeps float noise between PyTorch and onnxruntime (~1e-6) from flipping samples next to it.
    """
    point = choose_operating_point(curve, "within_gap", gap)
    values = curve["tau"][:-1]  # the distinct val confidences, ascending
    idx = int(np.searchsorted(curve["tau"], point["tau"]))
    if idx == 0:
        return float(values[0] - _END_MARGIN)
    if idx == len(values):
        return float(values[-1] + _END_MARGIN)
    return float((values[idx - 1] + values[idx]) / 2.0)


def routed_at_threshold(records: Mapping[str, np.ndarray], k: int, measure: str, tau: float) -> dict[str, float]:
    """The routed policy at a fixed tau: tau, offload_ratio and accuracy (apply_threshold on the records)."""
    p = routed_policy(records, k, measure)
    point = apply_threshold(p.confidence, p.correct_local, p.correct_offload, tau)
    return {key: point[key] for key in ("tau", "offload_ratio", "accuracy")}


def expert_subset_accuracies(records: Mapping[str, np.ndarray], num_experts: int) -> list[dict[str, Any]]:
    """Per expert: accuracy on the samples of its own subset (its oracle-routed samples) and their number."""
    owner, correct = records["oracle_expert"], records["pred_oracle"] == records["label"]
    out = []
    for j in range(num_experts):
        mine = owner == j
        out.append(
            {
                "index": j,
                "subset_accuracy": float(np.mean(correct[mine])) if np.any(mine) else None,
                "num_subset_samples": int(np.sum(mine)),
            }
        )
    return out

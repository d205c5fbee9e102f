"""Findings: the comparisons a user asks of an evaluation, each a difference with a 95 % paired-bootstrap interval
and a verdict (docs/design.md §6, "Uncertainty").

Every statistic is recomputed on the same resamples of the evaluation samples
(ask_the_expert.method.stats.resample_counts), so the intervals of differences between policies are paired. A finding
"holds" when its interval excludes 0 in the direction it claims, "fails" when it excludes 0 the other way, and is "not
established" otherwise. With several seeds, ``across_seeds`` gives the mean +- std of each finding and a verdict that
needs every seed to agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ask_the_expert.method.stats import (
    Interval,
    accuracy_at,
    area_gain,
    interval,
    mean_std,
    weighted_curves,
    weighted_mean,
)

RATIOS = (0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class Finding:
    """``claim``: a is above b. ``a``/``b``: the two values on the evaluation samples; ``difference``: a - b with its
    interval; ``verdict``: holds / fails / not established. Accuracies are fractions, area gains are points."""

    group: str
    claim: str
    a_label: str
    b_label: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    verdict: str
    unit: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def value_text(v: float, unit: str) -> str:
    """A finding's value as shown: ``61.2 %`` (accuracy) or ``+1.50 pts`` (points); ``-`` when not finite."""
    if not math.isfinite(v):
        return "-"
    return f"{100 * v:.1f} %" if unit == "accuracy" else f"{v:+.2f} pts"


def points_text(v: float, unit: str) -> str:
    """A difference or interval end in points with its sign (``+1.20``); ``-`` when not finite."""
    if not math.isfinite(v):
        return "-"
    return f"{100 * v if unit == 'accuracy' else v:+.2f}"


class Statistics:
    """Statistics of policies under the original samples (row 0) and every resample (rows 1..B)."""

    def __init__(self, counts: np.ndarray) -> None:
        n = counts.shape[1]
        self.counts = np.concatenate([np.ones((1, n), dtype=counts.dtype), counts])
        self._curves: dict[Any, tuple[np.ndarray, np.ndarray]] = {}

    def curve(self, key: Any, confidence: np.ndarray, local: np.ndarray, offload: np.ndarray) -> tuple:
        if key not in self._curves:
            self._curves[key] = weighted_curves(confidence, local, offload, self.counts)
        return self._curves[key]

    def mean(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return weighted_mean(values, self.counts, mask)


def _finding(group: str, claim: str, a_label: str, b_label: str, a: np.ndarray, b: np.ndarray, unit: str) -> Finding:
    diff = a - b
    iv: Interval = interval(float(diff[0]), diff[1:])
    return Finding(
        group, claim, a_label, b_label, float(a[0]), float(b[0]), iv.value, iv.low, iv.high, iv.verdict, unit
    )


Inputs = Mapping[tuple[str, int, str], Any]  # ask_the_expert.method.policies.PolicyData by (policy, k, measure)


def compute_findings(
    inputs: Inputs,
    records: Mapping[str, np.ndarray],
    counts: np.ndarray,
    primary: str,
    k_values: Sequence[int],
    split: str,
    versus_progressive: Sequence[tuple[str, str]] = (),
) -> list[Finding]:
    """The report's comparisons on one evaluation (see the module docstring): progressive vs each policy of
    ``versus_progressive`` ((name, label): the static variants), the collaboration vs the base model and vs the
    generalist, Top-k choice, fused vs plain expert answers, learned vs confidence-based deferral. Only comparisons
    whose policies were evaluated are made."""
    stats = Statistics(counts)
    label = records["label"]
    out: list[Finding] = []

    def curve(policy: str, k: int, measure: str = primary) -> tuple[np.ndarray, np.ndarray] | None:
        p = inputs.get((policy, k, measure))
        return None if p is None else stats.curve(p.key, p.confidence, p.correct_local, p.correct_offload)

    def at(c: tuple[np.ndarray, np.ndarray], ratio: float) -> np.ndarray:
        return accuracy_at(c[0], c[1], ratio)

    def add(group: str, claim: str, a: tuple[str, np.ndarray], b: tuple[str, np.ndarray], unit: str = "accuracy"):
        out.append(_finding(group, f"{claim} ({split})", a[0], b[0], a[1], b[1], unit))

    best_k = max(k_values, key=lambda k: float(area_gain(*curve("routed", k))[0]))
    routed = curve("routed", best_k)
    g_only = stats.mean(records["g_topk_classes"][:, 0] == label)
    # Progressive vs each static variant: on the experts' own subsets, all offloaded, and by area gain.
    for name, title in versus_progressive:
        static = curve(name, best_k)
        if static is None:
            continue
        group = f"progressive vs {title}"
        if f"{name}_pred_oracle" in records:
            mine = stats.mean(records["pred_oracle"] == label)
            theirs = stats.mean(records[f"{name}_pred_oracle"] == label)
            add(group, "progressive experts above static on their own subsets", ("progressive", mine), (title, theirs))
        add(group, f"all offloaded, k={best_k}", ("progressive", routed[1][:, -1]), (title, static[1][:, -1]))
        add(group, f"at 30 % offload, k={best_k}", ("progressive", at(routed, 0.3)), (title, at(static, 0.3)))
        add(
            group,
            f"area gain, k={best_k}",
            ("progressive", 100 * area_gain(*routed)),
            (title, 100 * area_gain(*static)),
            "points",
        )
    # The collaboration against the one medium model (stage-0 base) it was specialised from.
    if "pred_base" in records:
        base_all = stats.mean(records["pred_base"] == label)
        base_curve = curve("base", 0)
        group = "collaboration vs base model"
        for ratio in RATIOS:
            add(group, f"routed k={best_k} at {ratio:.0%} offload above the base model on every sample",
                ("routed", at(routed, ratio)), ("base on every sample", base_all))  # fmt: skip
            add(group, f"routed k={best_k} above offloading to the base model, both at {ratio:.0%} offload",
                ("routed", at(routed, ratio)), ("offload to base", at(base_curve, ratio)))  # fmt: skip
        add(group, f"routed k={best_k} all offloaded above the base model on every sample",
            ("routed", routed[1][:, -1]), ("base on every sample", base_all))  # fmt: skip
    # The collaboration against the generalist alone.
    for ratio in RATIOS:
        add("collaboration vs generalist", f"routed k={best_k} at {ratio:.0%} offload above the generalist alone",
            ("routed", at(routed, ratio)), ("generalist", g_only))  # fmt: skip
    # Top-k: the best k by area gain against every other k.
    for k in k_values:
        if k != best_k:
            add("Top-k", f"k={best_k} (largest area gain) above k={k}",
                (f"k={best_k}", 100 * area_gain(*routed)), (f"k={k}", 100 * area_gain(*curve("routed", k))),
                "points")  # fmt: skip
    # Beyond the paper: fused answers and learned deferral, at every k that has them.
    for k in k_values:
        fused, plain = curve("fused", k), curve("routed", k)
        if fused is not None:
            add("fused answers", f"fused above the expert's answer, all offloaded, k={k}",
                ("fused", fused[1][:, -1]), ("expert", plain[1][:, -1]))  # fmt: skip
            add("fused answers", f"fused above the expert's answer at 30 % offload, k={k}",
                ("fused", at(fused, 0.3)), ("expert", at(plain, 0.3)))  # fmt: skip
        for policy in ("routed", "fused"):
            learned, confident = curve(policy, k, "learned"), curve(policy, k)
            if learned is not None and confident is not None:
                add("learned deferral", f"learned deferral above {primary} by area gain, {policy} k={k}",
                    ("learned", 100 * area_gain(*learned)), (primary, 100 * area_gain(*confident)),
                    "points")  # fmt: skip
    return out


def across_seeds(per_seed: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Findings of several seeds (as dicts, matched by claim): mean +- std of a, b and the difference, every
    seed's interval, and a verdict that holds (fails) only when every seed's does."""
    by_claim: dict[str, list[Mapping[str, Any]]] = {}
    for seed in per_seed:
        for f in seed:
            by_claim.setdefault(f["claim"], []).append(f)
    out = []
    for items in by_claim.values():
        verdicts = {f["verdict"] for f in items}

        def stat(key: str, items: Sequence[Mapping[str, Any]] = items) -> tuple[float, float]:
            return mean_std(np.array([f[key] for f in items]))

        out.append(
            {
                **{k: items[0][k] for k in ("group", "claim", "a_label", "b_label", "unit")},
                "seeds": len(items),
                "a": stat("a"),
                "b": stat("b"),
                "difference": stat("difference"),
                "intervals": [(f["low"], f["high"]) for f in items],
                "verdict": verdicts.pop() if len(verdicts) == 1 else "not established",
            }
        )
    return out

"""Findings: the comparisons asked of an evaluation, each a difference with a paired-bootstrap interval and a verdict
(docs/design.md §6, "Uncertainty" and "A primary family").

This is the suite's one bootstrap engine: ``Bootstrap`` recomputes every statistic on the same resamples of the
assessed samples (ask_the_expert.method.stats.resample_counts), so differences between policies are paired;
``verdicts`` turns differences into findings. ate-evaluate's findings and ate-compare's comparisons both use it.

- The **primary family** (``PrimaryFamily``) is declared in the configuration before a run: a few comparisons with
  their k and offload fixed. Its verdicts use Holm's step-down correction at the family level alpha, applied to
  two-sided bootstrap p-values; each member's interval is the percentile interval at the level Holm tests it at.
- Every other comparison is **exploratory**: a 95 % interval with no correction, labelled so.

A finding "holds" when it excludes 0 in the direction it claims, "fails" when it excludes 0 the other way, and is "not
established" otherwise. With several seeds, ``across_seeds`` gives a verdict that needs every seed to agree, the mean
+- std of each difference and a seed-level t interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ask_the_expert.method.stats import (
    accuracy_at,
    area_gain,
    bootstrap_p_value,
    holm,
    interval,
    mean_std,
    student_t_quantile,
    weighted_curves,
    weighted_mean,
)
from ask_the_expert.method.sweep import accuracy_name
from ask_the_expert.utils.errors import SuiteError

RATIOS = (0.1, 0.2, 0.3, 0.5)
EXPLORATORY_LEVEL = 0.95
PRIMARY, EXPLORATORY = "primary", "exploratory"
# The members a primary family can declare, and what each compares (at the family's k and offload).
FAMILY_MEMBERS = {
    "progressive_vs_static": "progressive experts above static-from-base, all offloaded",
    "progressive_vs_static_init": "progressive experts above static-from-init, all offloaded",
    "routed_vs_base": "the collaboration at the family's offload above the base model on every sample",
    "routed_vs_generalist": "the collaboration at the family's offload above the generalist alone",
    "learned_vs_confidence": "learned deferral above the primary confidence measure by area gain",
}
# Resample rows per pass of weighted_curves: a few (rows, N) arrays at a time, so memory stays bounded.
CHUNK = 250


@dataclass(frozen=True)
class PrimaryFamily:
    """The primary family of an evaluation (docs/design.md §6): the comparisons the method is about, declared before
    the run; k and offload are fixed here, never chosen by the data.

    Attributes:
        k: Top-k of every member; the experts' ``--model.routing_k`` (R_j is built at it) in every preset.
        offload: offload ratio of the collaboration-vs-base and collaboration-vs-generalist members.
        members: the declared comparisons, among progressive_vs_static, progressive_vs_static_init, routed_vs_base,
            routed_vs_generalist, learned_vs_confidence; null: every one whose models the evaluation has (known from
            the checkpoints given, before any data is read).
        alpha: family-wise error rate of Holm's correction.
    """

    k: int = 3
    offload: float = 0.3
    members: tuple[str, ...] | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        unknown = sorted(set(self.members or ()) - set(FAMILY_MEMBERS))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise SuiteError(f"--primary.k must be an integer >= 1 (the Top-k of the family), got {self.k!r}.")
        if not isinstance(self.offload, (int, float)) or not 0 < self.offload <= 1:
            raise SuiteError(f"--primary.offload must be an offload ratio in (0, 1], got {self.offload!r}.")
        if unknown or (self.members is not None and not self.members):
            raise SuiteError(
                f"Unknown or no primary family members {unknown or '[]'}; declare some of {', '.join(FAMILY_MEMBERS)}, "
                "or null for every member the evaluation's models allow."
            )
        if not 0 < self.alpha < 1:
            raise SuiteError(f"--primary.alpha must lie strictly between 0 and 1, got {self.alpha!r}.")
        if self.members is not None:
            object.__setattr__(self, "members", tuple(dict.fromkeys(self.members)))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "members": None if self.members is None else list(self.members)}


@dataclass(frozen=True)
class Finding:
    """``claim``: a is above b. ``a``/``b``: the two values on the assessed samples; ``difference``: a - b with its
    interval at ``level``; ``verdict``: holds / fails / not established; ``family``: primary (Holm-corrected, its
    ``member`` name, ``p_adjusted``) or exploratory (uncorrected). Accuracies are fractions, area gains points."""

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
    family: str = EXPLORATORY
    member: str = ""
    level: float = EXPLORATORY_LEVEL
    p_value: float = math.nan
    p_adjusted: float = math.nan

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


def statistic_unit(name: str) -> str:
    """``points`` for the area gain, ``accuracy`` for every accuracy and rate."""
    return "points" if name == "area_gain_pts" else "accuracy"


class Bootstrap:
    """Statistics of one set of samples under the full sample (entry 0) and every resample (entries 1..B).

    ``curve_statistics`` gives, per policy curve (cached by its key), the area gain in points, the accuracy all
    offloaded and the accuracy at each offload ratio of ``ratios`` (``acc@30%``), computed in chunks of resamples.
    """

    def __init__(self, counts: np.ndarray, ratios: Sequence[float] = RATIOS) -> None:
        n = counts.shape[1]
        self.counts = np.concatenate([np.ones((1, n), dtype=counts.dtype), counts])
        self.ratios = tuple(dict.fromkeys(ratios))
        self._curves: dict[Any, dict[str, np.ndarray]] = {}

    def curve_statistics(
        self, key: Any, confidence: np.ndarray, local: np.ndarray, offload: np.ndarray
    ) -> dict[str, np.ndarray]:
        if key not in self._curves:
            parts: dict[str, list[np.ndarray]] = {}
            for start in range(0, self.counts.shape[0], CHUNK):
                x, y = weighted_curves(confidence, local, offload, self.counts[start : start + CHUNK])
                values = {"area_gain_pts": 100.0 * area_gain(x, y), "acc_all_offloaded": y[:, -1]}
                values.update({accuracy_name(r): accuracy_at(x, y, r) for r in self.ratios})
                for name, v in values.items():
                    parts.setdefault(name, []).append(v)
            self._curves[key] = {name: np.concatenate(v) for name, v in parts.items()}
        return self._curves[key]

    def mean(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return weighted_mean(values, self.counts, mask)


@dataclass
class Comparison:
    """One difference before its verdict: a and b on the full sample (entry 0) and every resample (1..B); ``member``
    names the primary family member it is, empty for an exploratory comparison."""

    group: str
    claim: str
    a_label: str
    b_label: str
    a: np.ndarray
    b: np.ndarray
    unit: str = "accuracy"
    member: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def verdicts(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Finding]:
    """The findings of ``comparisons``: the primary members' verdicts by Holm's correction of their two-sided bootstrap
    p-values at ``alpha`` (interval at the level Holm tests each at), the rest at an uncorrected 95 %."""
    diffs = [c.a - c.b for c in comparisons]
    tested = [bootstrap_p_value(d[1:]) for d in diffs]
    primary = [i for i, c in enumerate(comparisons) if c.member]
    adjusted, levels = holm([tested[i][0] for i in primary], alpha)
    corrected = {i: (adjusted[j], levels[j]) for j, i in enumerate(primary)}
    out = []
    for i, (c, d) in enumerate(zip(comparisons, diffs, strict=True)):
        p, side = tested[i]
        if i in corrected:
            p_adj, level = corrected[i]
            level = 1.0 - (level if math.isfinite(level) else alpha)
            iv = interval(float(d[0]), d[1:], level)
            verdict = "not established" if not p_adj < alpha else "holds" if side > 0 else "fails"
            family = PRIMARY
        else:
            p_adj, level = math.nan, EXPLORATORY_LEVEL
            iv = interval(float(d[0]), d[1:], level)
            verdict, family = iv.verdict, EXPLORATORY
        out.append(
            Finding(
                c.group, c.claim, c.a_label, c.b_label, float(c.a[0]), float(c.b[0]), iv.value, iv.low, iv.high,
                verdict, c.unit, family, c.member, level, p, p_adj,
            )
        )  # fmt: skip
    return out


def family_members(family: PrimaryFamily, available: Sequence[str]) -> tuple[str, ...]:
    """The members of ``family`` on an evaluation whose models allow ``available``: the declared ones (each must be
    available), or every available one when none were declared."""
    if family.members is None:
        return tuple(m for m in FAMILY_MEMBERS if m in available)
    missing = [m for m in family.members if m not in available]
    if missing:
        raise SuiteError(
            f"The primary family declares {missing}, whose models this evaluation does not have (it can compute "
            f"{list(available) or 'none'}). Evaluate those models (--static_experts, --static_init_experts, --base, a "
            "deferral part of val) or leave the members out of --primary.members."
        )
    return family.members


Inputs = Mapping[tuple[str, int, str], Any]  # ask_the_expert.method.policies.PolicyData by (policy, k, measure)


def available_members(inputs: Inputs, records: Mapping[str, np.ndarray], k: int, measure: str) -> list[str]:
    """The family members whose policies an evaluation has (from its columns, not from its values)."""
    has = {
        "progressive_vs_static": ("static", k, measure) in inputs,
        "progressive_vs_static_init": ("static_init", k, measure) in inputs,
        "routed_vs_base": "pred_base" in records,
        "routed_vs_generalist": True,
        "learned_vs_confidence": ("routed", k, "learned") in inputs,
    }
    return [m for m, ok in has.items() if ok]


def compute_findings(
    inputs: Inputs,
    records: Mapping[str, np.ndarray],
    counts: np.ndarray,
    measure: str,
    k_values: Sequence[int],
    assessed_on: str,
    family: PrimaryFamily = PrimaryFamily(),
    versus_progressive: Sequence[tuple[str, str]] = (),
) -> list[Finding]:
    """The primary family's members and the exploratory comparisons of one evaluation, on the assessed samples: the
    collaboration vs the base model and vs the generalist, progressive vs each policy of ``versus_progressive``
    ((name, label): the static variants), the other k values against the family's k, fused vs plain expert answers,
    learned vs confidence-based deferral. Every k and offload is the family's or a fixed grid value: nothing here is
    chosen from the data being assessed."""
    k, offload = family.k, family.offload
    if ("routed", k, measure) not in inputs:
        raise SuiteError(f"The primary family's k={k} was not evaluated (k values {list(k_values)}); add it to --k.")
    members = family_members(family, available_members(inputs, records, k, measure))
    boot = Bootstrap(counts, (*RATIOS, offload))
    label = records["label"]
    out: list[Comparison] = []
    at_o = accuracy_name(offload)

    def stats(policy: str, kk: int, m: str = measure) -> dict[str, np.ndarray] | None:
        p = inputs.get((policy, kk, m))
        return None if p is None else boot.curve_statistics(p.key, p.confidence, p.correct_local, p.correct_offload)

    def add(group: str, claim: str, a: tuple[str, np.ndarray], b: tuple[str, np.ndarray], unit: str = "accuracy",
            member: str = "") -> None:  # fmt: skip
        out.append(Comparison(group, f"{claim} ({assessed_on})", a[0], b[0], a[1], b[1], unit,
                              member if member in members else ""))  # fmt: skip

    routed = stats("routed", k)
    g_only = boot.mean(records["g_topk_classes"][:, 0] == label)
    others = [r for r in RATIOS if not math.isclose(r, offload)]
    # The collaboration against the one medium model (stage-0 base) it was specialised from, and the generalist.
    if "pred_base" in records:
        base_all, base_curve = boot.mean(records["pred_base"] == label), stats("base", 0)
        group = "collaboration vs base model"
        for ratio in (offload, *others):
            add(group, f"routed k={k} at {ratio:.0%} offload above the base model on every sample",
                ("routed", routed[accuracy_name(ratio)]), ("base on every sample", base_all),
                member="routed_vs_base" if ratio == offload else "")  # fmt: skip
        for ratio in (offload, *others):
            add(group, f"routed k={k} above offloading to the base model, both at {ratio:.0%} offload",
                ("routed", routed[accuracy_name(ratio)]),
                ("offload to base", base_curve[accuracy_name(ratio)]))  # fmt: skip
        add(group, f"routed k={k} all offloaded above the base model on every sample",
            ("routed", routed["acc_all_offloaded"]), ("base on every sample", base_all))  # fmt: skip
    for ratio in (offload, *others):
        add("collaboration vs generalist", f"routed k={k} at {ratio:.0%} offload above the generalist alone",
            ("routed", routed[accuracy_name(ratio)]), ("generalist", g_only),
            member="routed_vs_generalist" if ratio == offload else "")  # fmt: skip
    # Progressive vs each static variant: all offloaded (the family's member), at the offload, by area gain, and on
    # the experts' own subsets.
    for name, title in versus_progressive:
        static = stats(name, k)
        if static is None:
            continue
        group = f"progressive vs {title}"
        add(group, f"all offloaded, k={k}", ("progressive", routed["acc_all_offloaded"]),
            (title, static["acc_all_offloaded"]), member=f"progressive_vs_{name}")  # fmt: skip
        add(group, f"at {offload:.0%} offload, k={k}", ("progressive", routed[at_o]), (title, static[at_o]))
        add(group, f"area gain, k={k}", ("progressive", routed["area_gain_pts"]), (title, static["area_gain_pts"]),
            "points")  # fmt: skip
        if f"{name}_pred_oracle" in records:
            mine = boot.mean(records["pred_oracle"] == label)
            theirs = boot.mean(records[f"{name}_pred_oracle"] == label)
            add(group, "progressive experts above static on their own subsets", ("progressive", mine), (title, theirs))
    # Learned deferral against the confidence measure: the family's member at k, the rest exploratory.
    for policy in ("routed", "fused"):
        for kk in (k, *(x for x in k_values if x != k)):
            learned, confident = stats(policy, kk, "learned"), stats(policy, kk)
            if learned is not None and confident is not None:
                add("learned deferral", f"learned deferral above {measure} by area gain, {policy} k={kk}",
                    ("learned", learned["area_gain_pts"]), (measure, confident["area_gain_pts"]), "points",
                    member="learned_vs_confidence" if (policy, kk) == ("routed", k) else "")  # fmt: skip
    # Top-k: every other k against the family's k (k = 2 is k = 1 under this routing rule: docs/design.md §3).
    for kk in k_values:
        if kk != k:
            add("Top-k", f"k={kk} above k={k} by area gain", (f"k={kk}", stats("routed", kk)["area_gain_pts"]),
                (f"k={k}", routed["area_gain_pts"]), "points")  # fmt: skip
    # Beyond the paper: fused answers, at every k that has them.
    for kk in k_values:
        fused, plain = stats("fused", kk), stats("routed", kk)
        if fused is not None:
            add("fused answers", f"fused above the expert's answer, all offloaded, k={kk}",
                ("fused", fused["acc_all_offloaded"]), ("expert", plain["acc_all_offloaded"]))  # fmt: skip
            add("fused answers", f"fused above the expert's answer at {offload:.0%} offload, k={kk}",
                ("fused", fused[at_o]), ("expert", plain[at_o]))  # fmt: skip
    return verdicts(out, family.alpha)


def seed_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t interval of the mean difference across seeds (mean +- t * std / sqrt(n)); None for fewer than 2."""
    d = np.asarray([v for v in differences if math.isfinite(v)], dtype=np.float64)
    if d.size < 2:
        return None
    half = student_t_quantile(0.5 + level / 2, d.size - 1) * float(np.std(d, ddof=1)) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def across_seeds(per_seed: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Findings of several seeds (as dicts, matched by group and claim: claims such as "all offloaded, k=3" recur
    across groups), combined as docs/design.md §6 says: the verdict holds
    (fails) only when every seed's verdict does (a primary member's being its Holm-corrected verdict in that seed),
    else it is not established; with it the mean +- std of a, b and the difference, every seed's interval and the
    seed-level 95 % t interval of the mean difference (``seed_interval``, None for one seed)."""
    by_claim: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for seed in per_seed:
        for f in seed:
            by_claim.setdefault((f["group"], f["claim"]), []).append(f)
    out = []
    for items in by_claim.values():
        verdicts_seen = {f["verdict"] for f in items}
        every = len(items) == len(per_seed)

        def stat(key: str, items: Sequence[Mapping[str, Any]] = items) -> tuple[float, float]:
            return mean_std(np.array([f[key] for f in items], dtype=np.float64))

        first = items[0]
        out.append(
            {
                **{k: first[k] for k in ("group", "claim", "a_label", "b_label", "unit")},
                "family": first.get("family", EXPLORATORY),
                "member": first.get("member", ""),
                "seeds": len(items),
                "a": stat("a"),
                "b": stat("b"),
                "difference": stat("difference"),
                "intervals": [(f["low"], f["high"]) for f in items],
                "levels": [f.get("level", EXPLORATORY_LEVEL) for f in items],
                "seed_interval": seed_interval([f["difference"] for f in items]),
                "verdict": verdicts_seen.pop() if len(verdicts_seen) == 1 and every else "not established",
            }
        )
    return out

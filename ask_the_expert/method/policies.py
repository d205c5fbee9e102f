"""The one evaluation core (docs/design.md §3 and §6), plain numpy: every consumer routes and scores through here.

- ``route_batch`` (ask_the_expert.method.routed_batch, kept small so that training, which routes R_j, does not depend on
  the evaluation's code): G's logits -> calibrated probabilities, Top-k, confidences and the chosen expert per k. The
  Lightning system (evaluation and routed prediction), the routed-in sets R_j and the torch-free runtime call it.
- ``offload_mask`` (ask_the_expert.method.router): the offload rule, confidence < tau in float64.
- ``policy_inputs``: per-sample records (``CollaborativeSystem.evaluation_records``) -> each policy's confidence
  and whether its local and offloaded answers are right.
- ``evaluate_policies``: the exact sweep of every policy, its scalars, operating points and reference points (a
  ``Report``); the callback, ate-evaluate, the export and the verifier use it;
  ask_the_expert/results/evaluation_outputs.py only writes it.

Policies (``k = 0`` where a policy does not depend on Top-k):

- ``routed``: offload to the expert chosen from G's Top-k (the progressive experts), one curve per k.
- ``fused``: the same offloads, answered by a weighted geometric mean of G's and the chosen expert's probabilities
  (its weight chosen on the selection part of val from ``FUSE_WEIGHTS``); no extra forwards.
- ``static`` / ``static_init``: the same routing to the static-from-base / static-from-init experts (when given).
- ``base``: offload to the all-class base ("medium") model (when given).
- ``oracle``: offload to the expert that owns the true class.
- ``random``: offload a random subset (same rate sweep) to the routed expert, one curve per k.
- ``generalist_only`` / ``all_offloaded``: the two end points of the routed curves.

Confidence measures: ``max_prob``, ``margin``, ``entropy`` (ask_the_expert.method.router), and ``learned`` for routed
and fused policies: a post-hoc deferral rule on G's outputs (ask_the_expert.method.deferral), fitted on the deferral
part of val.

Selection and assessment are disjoint (docs/design.md §6; ask_the_expert.method.holdout): every choice (the fused
weight, the deferral rule, operating points, "up to" points, the break-even target and offload) is made on val's
selection part (the rule on its deferral part) and applied unchanged to the assessed data, val's assessment part or
test, where the curves, scalars and findings are reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ask_the_expert.method.breakeven import break_even_map, get_field
from ask_the_expert.method.costs import COST_KEYS, Profile, baseline_costs
from ask_the_expert.method.deferral import DeferralRule, fit_deferral
from ask_the_expert.method.findings import PrimaryFamily, compute_findings
from ask_the_expert.method.holdout import (
    ASSESSMENT,
    DEFERRAL,
    PART_NAMES,
    SELECTION,
    SelectionSplit,
    part_sizes,
    split_parts,
)
from ask_the_expert.method.routed_batch import FUSE_WEIGHTS, Records
from ask_the_expert.method.router import LEARNED, RANDOM, RouterSpec, random_confidence
from ask_the_expert.method.stages import BASELINE_VARIANTS
from ask_the_expert.method.stats import resample_counts
from ask_the_expert.method.sweep import (
    OPERATING_RULES,
    TOLERANCE,
    add_costs,
    apply_threshold,
    area_under_curve,
    choose_operating_point,
    reductions,
    summarise_curve,
    sweep_thresholds,
    threshold_at,
    up_to_reductions,
)
from ask_the_expert.utils.errors import SuiteError


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


@dataclass
class Fitted:
    """What an evaluation fits on val and applies unchanged to the assessed data and in deployment: the fused answer's
    weight per k (chosen on the selection part) and the learned deferral rule per policy and k (fitted on the
    deferral part; ``"routed@k1"`` -> DeferralRule.to_dict())."""

    fuse_weight: dict[int, float] = field(default_factory=dict)
    deferral: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"fuse_weight": {str(k): w for k, w in self.fuse_weight.items()}, "deferral": self.deferral}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fitted:
        """Inverse of to_dict (a summary.json's ``fitted``)."""
        weights = {int(k): float(w) for k, w in (d.get("fuse_weight") or {}).items()}
        return cls(fuse_weight=weights, deferral=dict(d.get("deferral") or {}))


def take(records: Mapping[str, np.ndarray], mask: np.ndarray) -> Records:
    """The records of the samples where ``mask`` is True (every column)."""
    return {key: value[mask] for key, value in records.items()}


def _best_fuse_weight(conf: np.ndarray, local: np.ndarray, fused: np.ndarray, label: np.ndarray) -> float:
    """The weight of FUSE_WEIGHTS whose fused policy has the largest area under the accuracy-vs-offload curve."""
    areas = [area_under_curve(sweep_thresholds(conf, local, fused[:, i] == label)) for i in range(fused.shape[1])]
    return FUSE_WEIGHTS[int(np.argmax(areas))]


# ---------------------------------------------------------------------------------------------- the policies
@dataclass
class AnswerContext:
    """What a policy's answer function sees: the records, their labels, G's correctness and primary confidence, and
    what is fitted on val's selection part (``fitting``: fit it now on these records, else apply ``fitted``)."""

    records: Mapping[str, np.ndarray]
    label: np.ndarray
    local: np.ndarray
    primary: np.ndarray
    fitted: Fitted
    fitting: bool


# (context, k) -> per sample, whether the policy's answer to an offloaded sample is right; None when the records
# do not hold that policy (e.g. no base model was evaluated) or nothing was fitted for it.
AnswerFn = Callable[[AnswerContext, int], "np.ndarray | None"]


@dataclass(frozen=True)
class Policy:
    """A curve policy (docs/design.md §3, §6): who answers the samples it offloads. Declaring one (``register_policy``)
    is all it takes for its curves, scalars, operating points, plots, report rows and, with ``versus_progressive``,
    its findings.

    Attributes:
        name: its key in curves, records and metric names.
        label: how findings and tables name it; ``legend``: how plots name it.
        answers: its answer function (``AnswerFn``).
        per_k: one curve per Top-k value (k = 0 otherwise).
        learned: also evaluated with the learned deferral confidence (a rule fitted per policy and k).
        random_offload: offloads a seeded random subset at every rate instead of the least confident samples (its
            confidence measure is ``random``; plots show it at the primary k).
        near_edge_model: the near-edge latency role an offload costs (``medium``: the base model, timed as an
            ``expert`` when the profile has no ``medium``).
        versus_progressive: the findings compare the progressive experts' answers with this policy's.
    """

    name: str
    label: str
    legend: str
    answers: AnswerFn
    per_k: bool = True
    learned: bool = False
    random_offload: bool = False
    near_edge_model: str = "expert"
    versus_progressive: bool = False


POLICIES: dict[str, Policy] = {}


def register_policy(policy: Policy) -> Policy:
    """Add a policy to every evaluation (in registration order: the order of curves, tables and plots)."""
    if policy.name in POLICIES:
        raise SuiteError(f"A policy named {policy.name!r} is registered already.")
    POLICIES[policy.name] = policy
    return policy


def _column_answers(column: str) -> AnswerFn:
    """Answers read from a record column (``{k}`` is the Top-k value)."""

    def answers(ctx: AnswerContext, k: int) -> np.ndarray | None:
        name = column.format(k=k)
        return ctx.records[name] == ctx.label if name in ctx.records else None

    return answers


def _fused_answers(ctx: AnswerContext, k: int) -> np.ndarray | None:
    """The weighted geometric mean of G's and the chosen expert's probabilities, its weight chosen on selection data."""
    fused = ctx.records.get(f"fused_k{k}")
    if fused is None:
        return None
    if ctx.fitting:
        ctx.fitted.fuse_weight[k] = _best_fuse_weight(ctx.primary, ctx.local, fused, ctx.label)
    if k not in ctx.fitted.fuse_weight:
        return None
    return fused[:, FUSE_WEIGHTS.index(ctx.fitted.fuse_weight[k])] == ctx.label


_routed_answers = _column_answers("pred_k{k}")
register_policy(Policy("routed", "routed", "routed (progressive experts)", _routed_answers, learned=True))
register_policy(Policy("fused", "fused", "fused G + expert", _fused_answers, learned=True))
for _variant in BASELINE_VARIANTS.values():
    register_policy(
        Policy(_variant.name, _variant.title, f"{_variant.title} experts",
               _column_answers(f"{_variant.name}_pred_k{{k}}"), versus_progressive=True)
    )  # fmt: skip
register_policy(
    Policy("base", "base", "offload to the base model", _column_answers("pred_base"), per_k=False,
           near_edge_model="medium")
)  # fmt: skip
register_policy(Policy("oracle", "oracle", "oracle routing", _column_answers("pred_oracle"), per_k=False))
register_policy(Policy("random", "random", "random offload", _routed_answers, random_offload=True))


def _context(records: Mapping[str, np.ndarray], fitted: Fitted, fitting: bool) -> AnswerContext:
    _, measures = record_layout(records)
    label = records["label"]
    return AnswerContext(records, label, records["g_topk_classes"][:, 0] == label, records[f"conf_{measures[0]}"],
                         fitted, fitting)  # fmt: skip


def _offload_answers(ctx: AnswerContext) -> dict[tuple[str, int], np.ndarray]:
    """Per registered policy (random offload aside) and k: whether each sample's offloaded answer is right."""
    ks, _ = record_layout(ctx.records)
    # Per-k policies first (k by k), then the others: the order of every curve list.
    plan = [(p, k) for k in ks for p in POLICIES.values() if p.per_k and not p.random_offload]
    plan += [(p, 0) for p in POLICIES.values() if not p.per_k and not p.random_offload]
    return {(p.name, k): correct for p, k in plan if (correct := p.answers(ctx, k)) is not None}


def fit_choices(deferral: Mapping[str, np.ndarray], selection: Mapping[str, np.ndarray]) -> Fitted:
    """What the policies fit (the fused weight per k), chosen on ``selection`` by area under the curve of the primary
    confidence measure, and the learned deferral rule of each ``learned`` policy and k, fitted on ``deferral`` (a part
    disjoint from the one that fits T and picks the operating point, docs/design.md §7; none when it is empty)."""
    fitted = Fitted()
    _offload_answers(_context(selection, fitted, fitting=True))
    if "g_features" in deferral and len(deferral["label"]):
        ctx = _context(deferral, fitted, fitting=False)
        features = deferral["g_features"].astype(np.float64)
        for (p, k), correct in _offload_answers(ctx).items():
            if POLICIES[p].learned:
                fitted.deferral[f"{p}@k{k}"] = fit_deferral(features, ctx.local, correct).to_dict()
    return fitted


def policy_inputs(records: Mapping[str, np.ndarray], fitted: Fitted, random_seed: int = 0) -> list[PolicyData]:
    """The sweep inputs of every registered policy the records support, with what was fitted applied unchanged (fused
    policies at their fitted weight, ``learned`` scored by the fitted rules)."""
    ks, measures = record_layout(records)
    ctx = _context(records, fitted, fitting=False)
    offload = _offload_answers(ctx)
    local = ctx.local
    out = [PolicyData(p, k, m, records[f"conf_{m}"], local, c) for m in measures for (p, k), c in offload.items()]
    if "g_features" in records:
        features = records["g_features"].astype(np.float64)
        for (p, k), correct in offload.items():
            rule = fitted.deferral.get(f"{p}@k{k}")
            if rule is not None:
                out.append(PolicyData(p, k, LEARNED, DeferralRule.from_dict(rule).confidence(features), local, correct))
    rand = random_confidence(len(ctx.label), random_seed)
    for policy in (p for p in POLICIES.values() if p.random_offload):
        for k in ks if policy.per_k else [0]:
            correct = policy.answers(ctx, k)
            if correct is not None:
                out.append(PolicyData(policy.name, k, RANDOM, rand, local, correct))
    return out


def routing_hits(records: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """(N,) bool: the expert chosen from G's Top-k owns the sample's true class."""
    return np.asarray(records[f"expert_k{k}"] == records["oracle_expert"])


def hit_rates(records: Mapping[str, np.ndarray]) -> dict[int, float]:
    """Per k: the routing hit rate, the share of samples whose chosen expert owns the true class."""
    ks, _ = record_layout(records)
    return {k: float(np.mean(routing_hits(records, k))) for k in ks}


def hit_rate_curve(records: Mapping[str, np.ndarray], k: int, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """(offload ratio, hit rate among the offloaded samples) at every threshold of the routed policy's sweep."""
    conf = np.asarray(records[f"conf_{measure}"], dtype=np.float64)
    hit = routing_hits(records, k)
    order = np.argsort(conf, kind="stable")
    counts = sweep_thresholds(conf, hit, hit)["num_offloaded"]
    cum = np.concatenate(([0], np.cumsum(hit[order])))
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(counts > 0, cum[counts] / np.maximum(counts, 1), np.nan)
    return counts / len(conf), rate


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
    """Everything one evaluation computes on the data it reports (``reported_on``: val's selection or assessment
    part, or test); ``curves[key]`` is a ask_the_expert.method.sweep curve (profile-free). ``protocol`` says where each
    choice was made and the part sizes; ``parts`` is the part (ask_the_expert.method.holdout) of each record given."""

    split: str
    num_samples: int
    k_values: list[int]
    measures: list[str]
    profiles: list[Profile]
    curves: dict[tuple[str, int, str], dict[str, np.ndarray]]
    scalars: list[dict[str, Any]]
    operating_points: list[dict[str, Any]]
    reference_points: list[dict[str, Any]]
    fitted: Fitted = field(default_factory=Fitted)
    findings: list[Any] = field(default_factory=list)
    up_to: list[dict[str, Any]] = field(default_factory=list)
    hit_rates: dict[int, float] = field(default_factory=dict)
    references: dict[str, float] = field(default_factory=dict)
    break_even: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    reported_on: str = ""
    family: PrimaryFamily = field(default_factory=PrimaryFamily)
    protocol: dict[str, Any] = field(default_factory=dict)
    parts: np.ndarray | None = None

    def curve_with_costs(self, key: tuple[str, int, str], profile: Profile | None) -> dict[str, np.ndarray]:
        """The curve of ``key`` with its mean costs per sample under ``profile`` (none without a profile)."""
        return add_costs(self.curves[key], profile, near_role(profile, key[0]))

    def reported_records(self, records: Mapping[str, np.ndarray]) -> Records:
        """The records (of every part, as given to evaluate_policies) of the samples this report is on."""
        if self.parts is None:
            return dict(records)
        code = {name: c for c, name in PART_NAMES.items()}[self.protocol["reported_part"]]
        return take(records, self.parts == code)


def near_role(profile: Profile | None, policy: str) -> str:
    """The near-edge latency role an offload of ``policy`` costs (``Policy.near_edge_model``), ``expert`` when the
    profile does not time that role (the base model has the experts' architecture)."""
    role = POLICIES[policy].near_edge_model
    return role if profile is not None and role in profile.near_edge.latency_ms else "expert"


def check_operating_rule(rule: str, gap: float, budget: float | None) -> None:
    """Fail before any model runs when the operating-point settings are unusable (ask_the_expert.method.sweep
    rechecks)."""
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


def reference_accuracies(records: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Accuracy levels every policy of an evaluation is measured against: the generalist alone, the oracle's
    all-offloaded accuracy and, when evaluated, the base (medium) model on every sample."""
    label = records["label"]
    refs = {
        "generalist": float(np.mean(records["g_topk_classes"][:, 0] == label)),
        "oracle": float(np.mean(records["pred_oracle"] == label)),
    }
    if "pred_base" in records:
        refs["base"] = float(np.mean(records["pred_base"] == label))
    return refs


def _baseline_accuracies(refs: Mapping[str, float]) -> dict[str, float | None]:
    return {"edge_generalist": refs["generalist"], "edge_medium": refs.get("base"), "near_edge_only": refs.get("base")}


def evaluate_policies(
    records: Mapping[str, np.ndarray],
    profiles: Sequence[Profile] = (),
    split: str = "val",
    random_seed: int = 0,
    rule: str = "within_gap",
    gap: float = 0.005,
    budget: float | None = None,
    selection: Report | None = None,
    reference: str | None = None,
    within_points: float = 0.5,
    delta: float = 0.005,
    resamples: int = 1000,
    bootstrap_seed: int = 0,
    family: PrimaryFamily = PrimaryFamily(),
    holdout: SelectionSplit = SelectionSplit(),
) -> Report:
    """Sweep every policy exactly and compute what docs/design.md §6 asks of an evaluation, choosing and assessing on
    disjoint data: ``select_on_val`` then ``assess``.

    Without ``selection`` the records are val: the choices are made on its selection part (``holdout``) and the report
    is on its assessment part. Given ``selection`` (the report of select_on_val on val) the records are test: its
    choices are applied unchanged and the report is on test.
    """
    if selection is None:
        selection = select_on_val(
            records, profiles, split, holdout=holdout, random_seed=random_seed, rule=rule, gap=gap, budget=budget,
            reference=reference, within_points=within_points, delta=delta, family=family,
        )  # fmt: skip
    return assess(records, selection, profiles, split, random_seed=random_seed, reference=reference,
                  within_points=within_points, resamples=resamples, bootstrap_seed=bootstrap_seed)  # fmt: skip


def _check_records(records: Mapping[str, np.ndarray], split: str, family: PrimaryFamily, within_points: float) -> None:
    if len(records.get("label", ())) == 0:
        raise SuiteError(
            f"The {split} split produced no samples, so there is nothing to evaluate. Check the data folder, the "
            "split and the class selection."
        )
    ks, _ = record_layout(records)
    if family.k not in ks:
        raise SuiteError(
            f"The primary family's k={family.k} (--primary.k) is not among the evaluated k values {ks}; add it to --k."
        )
    if not within_points >= 0:
        raise SuiteError(f"within_points must be >= 0 (accuracy points), got {within_points!r}.")


def select_on_val(
    records: Mapping[str, np.ndarray],
    profiles: Sequence[Profile] = (),
    split: str = "val",
    *,
    assess_on_val: bool = True,
    holdout: SelectionSplit = SelectionSplit(),
    random_seed: int = 0,
    rule: str = "within_gap",
    gap: float = 0.005,
    budget: float | None = None,
    reference: str | None = None,
    within_points: float = 0.5,
    delta: float = 0.005,
    family: PrimaryFamily = PrimaryFamily(),
) -> Report:
    """Split the val records (``holdout``: a deferral part, a selection part and, with ``assess_on_val``, an
    assessment part) and make every choice: the learned deferral rule on the deferral part; the fused weight, the
    operating points (``rule``), the "up to" points and the break-even target and offload (at the family's k) on the
    selection part. The report is on the selection part; its ``parts`` and ``protocol`` say which sample is where."""
    _check_records(records, split, family, within_points)
    parts = split_parts(records["index"], records["label"], holdout, assess_on_val)
    sizes = part_sizes(parts)
    chosen_on = f"{split} selection part"
    fitted = fit_choices(take(records, parts == DEFERRAL), take(records, parts == SELECTION))
    report = _choose(take(records, parts == SELECTION), fitted, profiles, split, chosen_on, random_seed, rule, gap,
                     budget, reference, within_points, delta, family)  # fmt: skip
    report.parts = parts
    report.protocol = {
        "method": "held-out parts of val, stratified by fine class (docs/design.md §6)",
        "deferral_fit_on": f"{split} deferral part" if sizes["deferral"] else None,
        "chosen_on": chosen_on,
        "temperature_fit_on": chosen_on,
        "assessment": f"{split} assessment part" if assess_on_val else None,
        "shares": {"assessment": holdout.assessment if assess_on_val else 0.0, "deferral": holdout.deferral},
        "seed": holdout.seed,
        "sizes": sizes,
        "reported_on": chosen_on,
        "reported_part": "selection",
    }
    return report


def assess(
    records: Mapping[str, np.ndarray],
    selection: Report,
    profiles: Sequence[Profile] = (),
    split: str = "test",
    *,
    random_seed: int = 0,
    reference: str | None = None,
    within_points: float = 0.5,
    resamples: int = 1000,
    bootstrap_seed: int = 0,
) -> Report:
    """The report of the assessed data: the assessment part of the same val records ``selection`` was chosen on
    (``split`` is its split), or every record of another split (test). Its curves, scalars and findings are on that
    data, and every choice of ``selection`` is applied unchanged, with its value here and where it was chosen."""
    family = selection.family
    _check_records(records, split, family, within_points)
    n = len(records["label"])
    protocol = {**selection.protocol}
    if split == selection.split:
        if protocol["assessment"] is None or selection.parts is None or len(selection.parts) != n:
            raise SuiteError(
                f"The {split} records were split without an assessment part (a test evaluation chooses on all of "
                "val); assess the test split, or choose with assess_on_val."
            )
        parts = selection.parts
        records = take(records, parts == ASSESSMENT)
    else:
        parts = np.full(n, ASSESSMENT, dtype=np.int8)
        protocol.update(assessment=split, sizes={**protocol["sizes"], "assessment": n})
    protocol.update(reported_on=protocol["assessment"], reported_part="assessment")
    return _assess(records, selection, parts, protocol, profiles, split, random_seed, reference, within_points,
                   resamples, bootstrap_seed, family)  # fmt: skip


def _describe(
    records: Mapping[str, np.ndarray],
    fitted: Fitted,
    profiles: Sequence[Profile],
    split: str,
    reported_on: str,
    random_seed: int,
    reference: str | None,
    within_points: float,
    family: PrimaryFamily,
) -> tuple[Report, dict[tuple[str, int, str], PolicyData]]:
    """The curves, scalars, reference points, references and hit rates of ``records`` (no choice is made here)."""
    ks, measures = record_layout(records)
    refs = reference_accuracies(records)
    reference = reference or ("base" if "base" in refs else "oracle")
    if reference not in refs:
        raise SuiteError(
            f"The reference {reference!r} was not evaluated; this evaluation has {sorted(refs)}. Pass one of them, "
            "or evaluate the base model (--base) to compare against it."
        )
    inputs = {p.key: p for p in policy_inputs(records, fitted, random_seed)}
    curves = {key: sweep_thresholds(p.confidence, p.correct_local, p.correct_offload) for key, p in inputs.items()}
    shared = (refs["generalist"], refs["oracle"])
    scalars = [
        {
            "policy": p,
            "k": k,
            "confidence": m,
            **summarise_curve(c, shared, {reference: refs[reference]}, within_points),
        }
        for (p, k, m), c in curves.items()
    ]
    end_points: list[dict[str, Any]] = []
    for profile in profiles or [None]:
        pname = profile.name if profile else ""
        for m in measures:
            for k in ks:
                curve = add_costs(curves["routed", k, m], profile, "expert")
                if k == ks[0]:
                    end_points.append(_end_point(curve, 0, "generalist_only", 0, m, pname))
                end_points.append(_end_point(curve, -1, "all_offloaded", k, m, pname))
    report = Report(
        split, len(records["label"]), ks, measures, list(profiles), curves, scalars, [], end_points, fitted,
        hit_rates=hit_rates(records), references=refs, reported_on=reported_on, family=family,
    )  # fmt: skip
    return report, inputs


def _choose(
    records: Mapping[str, np.ndarray],
    fitted: Fitted,
    profiles: Sequence[Profile],
    split: str,
    chosen_on: str,
    random_seed: int,
    rule: str,
    gap: float,
    budget: float | None,
    reference: str | None,
    within_points: float,
    delta: float,
    family: PrimaryFamily,
) -> Report:
    """The report of the selection part: its curves and every choice made on it (operating points, "up to" points,
    break-even target and offload), each labelled ``chosen_on``."""
    report, _ = _describe(records, fitted, profiles, split, chosen_on, random_seed, reference, within_points, family)
    baseline_acc = _baseline_accuracies(report.references)
    for profile in profiles or [None]:
        tag_profile = profile.name if profile else ""
        baselines = baseline_costs(profile) if profile else {}
        for key, curve in report.curves.items():
            costed = add_costs(curve, profile, near_role(profile, key[0]))
            tag = {"policy": key[0], "k": key[1], "confidence": key[2], "profile": tag_profile, "chosen_on": chosen_on}
            point = {**tag, "reported_on": chosen_on, **choose_operating_point(costed, rule, gap, budget)}
            point["reductions"] = reductions(point, baselines)
            point["baseline_accuracy"] = baseline_acc
            report.operating_points.append(point)
            if profile is not None and not POLICIES[key[0]].random_offload:
                best = up_to_reductions(costed, baselines, baseline_acc, delta)
                report.up_to.append({**tag, "delta": delta, "reductions": best})
    primary_curve = report.curves["routed", family.k, report.measures[0]]
    for profile in profiles:
        entry = break_even_for(profile, primary_curve, report.references, delta)
        entry.update(policy="routed", k=family.k, confidence=report.measures[0], chosen_on=chosen_on)
        report.break_even.append(entry)
    return report


def _assess(
    records: Mapping[str, np.ndarray],
    chosen: Report,
    parts: np.ndarray,
    protocol: dict[str, Any],
    profiles: Sequence[Profile],
    split: str,
    random_seed: int,
    reference: str | None,
    within_points: float,
    resamples: int,
    bootstrap_seed: int,
    family: PrimaryFamily,
) -> Report:
    """The report of the assessed data: its curves and findings, and every choice of ``chosen`` applied unchanged,
    with its value here and (``on_selection`` / the chosen entry) where it was chosen."""
    counts = resample_counts(len(records["label"]), resamples, bootstrap_seed)  # checks the count before any sweep
    reported_on = protocol["reported_on"]
    report, inputs = _describe(records, chosen.fitted, profiles, split, reported_on, random_seed, reference,
                               within_points, family)  # fmt: skip
    report.parts, report.protocol = parts, protocol
    by_profile = {p.name: p for p in profiles}
    baseline_acc = _baseline_accuracies(report.references)
    for point in chosen.operating_points:
        p = inputs.get((point["policy"], point["k"], point["confidence"]))
        if p is None:
            continue
        profile = by_profile.get(point["profile"])
        applied = apply_threshold(p.confidence, p.correct_local, p.correct_offload, point["tau"], profile,
                                  near_role(profile, p.policy))  # fmt: skip
        tag = {key: point[key] for key in ("policy", "k", "confidence", "profile", "chosen_on")}
        on_selection = {key: point[key] for key in ("offload_ratio", "accuracy", *COST_KEYS)}
        entry = {**tag, "reported_on": reported_on, **applied, "on_selection": on_selection}
        entry["reductions"] = reductions(applied, baseline_costs(profile) if profile else {})
        entry["baseline_accuracy"] = baseline_acc
        report.operating_points.append(entry)
    for entry in chosen.up_to:
        p, profile = inputs[entry["policy"], entry["k"], entry["confidence"]], by_profile[entry["profile"]]
        baselines = baseline_costs(profile)
        reductions_here: dict[str, dict[str, Any]] = {}
        for base, per_cost in entry["reductions"].items():
            reductions_here[base] = {}
            for cost, best in per_cost.items():
                if best is None:
                    reductions_here[base][cost] = None
                    continue
                applied = apply_threshold(p.confidence, p.correct_local, p.correct_offload, best["tau"], profile,
                                          near_role(profile, p.policy))  # fmt: skip
                assessed = {key: applied[key] for key in ("offload_ratio", "accuracy")}
                assessed["reduction"] = 1.0 - applied[cost] / baselines[base][cost]
                assessed["baseline_accuracy"] = baseline_acc.get(base)
                reductions_here[base][cost] = {**best, "assessed": assessed}
        report.up_to.append({**entry, "reported_on": reported_on, "reductions": reductions_here})
    primary = inputs["routed", family.k, report.measures[0]]
    for entry in chosen.break_even:
        tau = entry.get("tau")
        assessed = None
        if tau is not None:
            applied = apply_threshold(primary.confidence, primary.correct_local, primary.correct_offload, tau)
            assessed = {key: applied[key] for key in ("offload_ratio", "accuracy")}
            assessed["reaches_target"] = bool(applied["accuracy"] >= entry["target_accuracy"] - TOLERANCE)
        report.break_even.append({**entry, "reported_on": reported_on, "assessed": assessed})
    versus = [(p.name, p.label) for p in POLICIES.values() if p.versus_progressive]
    report.findings = compute_findings(inputs, records, counts, report.measures[0], report.k_values, reported_on,
                                       family, versus)  # fmt: skip
    return report


# Where collaboration wins: the two profile quantities a break-even map varies, and their ranges (multiples of the
# profile's own value), on a log grid.
BREAK_EVEN_AXES = (("link.uplink_mbps", 0.01, 100.0), ("edge.latency_ms.generalist", 0.1, 10.0))
BREAK_EVEN_POINTS = 41


def break_even_for(
    profile: Profile, curve: Mapping[str, np.ndarray], references: Mapping[str, float], delta: float
) -> dict[str, Any]:
    """ask_the_expert.method.breakeven.break_even_map over BREAK_EVEN_AXES around the profile's own point, at the
    accuracy of the medium (base) model minus ``delta`` when it was evaluated, else of the collaboration's all-offloaded
    point; ``tau`` reproduces the collaboration's offload (None when it never reaches the target)."""
    axes = []
    for name, lo, hi in BREAK_EVEN_AXES:
        value = get_field(profile, name)
        axes.append((name, np.geomspace(value * lo, value * hi, BREAK_EVEN_POINTS)))
    medium = references.get("base")
    target = (medium if medium is not None else float(curve["accuracy"][-1])) - delta
    result = break_even_map(
        profile, axes[0][0], axes[0][1], axes[1][0], axes[1][1], curve["offload_ratio"], curve["accuracy"],
        references["generalist"], medium if medium is not None else math.nan, target,
    )  # fmt: skip
    ratio = result["collaboration_offload_ratio"]
    tau = None if ratio is None else threshold_at(curve, int(np.searchsorted(curve["offload_ratio"], ratio)))
    return {"profile": profile.name, "target_accuracy": target, "tau": tau, **result}


# ------------------------------------------------------------------------------------------- deployment summaries
def deployed_policy(records: Mapping[str, np.ndarray], spec: RouterSpec, deferral: DeferralRule | None) -> PolicyData:
    """The sweep inputs of what a router deploys: routed or (with a fuse weight) fused answers at spec.k, with the
    spec's confidence; ``learned`` scores the records' features with the given rule."""
    p = routed_policy(records, spec.k, "max_prob" if spec.confidence == LEARNED else spec.confidence)
    label = records["label"]
    correct = p.correct_offload
    if spec.fuse_weight is not None:
        correct = records[f"fused_k{spec.k}"][:, FUSE_WEIGHTS.index(round(spec.fuse_weight, 2))] == label
    conf = p.confidence
    if spec.confidence == LEARNED:
        if deferral is None:
            raise SuiteError("A router with the 'learned' confidence needs its deferral rule (router.json 'deferral').")
        conf = deferral.confidence(records["g_features"].astype(np.float64))
    return PolicyData("fused" if spec.fuse_weight is not None else "routed", spec.k, spec.confidence, conf,
                      p.correct_local, correct)  # fmt: skip


def at_threshold(policy: PolicyData, tau: float) -> dict[str, float]:
    """A policy at a fixed tau: tau, offload_ratio and accuracy (apply_threshold)."""
    point = apply_threshold(policy.confidence, policy.correct_local, policy.correct_offload, tau)
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

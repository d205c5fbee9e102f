"""The pipeline's results report: per-seed metrics aggregated as mean +- std, rendered as markdown (plain python).

Inputs per seed (as the pipeline collects them from its output files)::

    {"seed": 0,
     "generalist": {"val/acc": ...}, "base": {"val/acc": ...},
     "experts": {"progressive": {"0": {"val/subset_acc": ...}, ...}, "static": {...}},
     "evaluation": <evaluate.py's summary.json>}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

OFFLOAD_KEYS = ("acc@10%", "acc@20%", "acc@30%", "acc@50%", "auc_norm", "offload_for_99%")
EXPERT_KEYS = ("val/subset_acc", "val/subset_restricted_acc", "val/routed_in_acc", "val/acc")
CURVE_POLICY_ORDER = ("routed", "static", "base", "oracle", "random")


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value) of the finite values; None if there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def fmt(stat: tuple[float, float] | None, percent: bool = True, seeds: int = 1) -> str:
    if stat is None:
        return "-"
    scale = 100.0 if percent else 1.0
    text = f"{stat[0] * scale:.2f}"
    return text + (f" ± {stat[1] * scale:.2f}" if seeds > 1 else "")


def _of_measure(row: Mapping[str, Any], measure: str) -> bool:
    # The random-offload policy sweeps random scores (confidence "random"), whatever the routing measure.
    return row["confidence"] == measure or row["policy"] == "random"


def _scalar(evaluation: Mapping[str, Any], policy: str, k: int, measure: str, key: str) -> float | None:
    for row in evaluation.get("scalars", []):
        if (row["policy"], row["k"]) == (policy, k) and _of_measure(row, measure):
            return row.get(key)
    return None


def curve_keys(evaluation: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(policy, k) pairs of the evaluation's curves for its first confidence measure, in report order."""
    measure = evaluation["confidence_measures"][0]
    keys = {(r["policy"], r["k"]) for r in evaluation["scalars"] if _of_measure(r, measure)}
    return sorted(keys, key=lambda pk: (CURVE_POLICY_ORDER.index(pk[0]) if pk[0] in CURVE_POLICY_ORDER else 99, pk[1]))


def aggregate(seed_results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean +- std across seeds of every number the report shows; also the per-seed values."""
    first = seed_results[0]["evaluation"]
    measure = first["confidence_measures"][0]
    out: dict[str, Any] = {"seeds": [r["seed"] for r in seed_results], "confidence": measure}
    for model in ("generalist", "base"):
        out[f"{model}_val_acc"] = mean_std([r[model].get("val/acc") for r in seed_results])
    experts: dict[str, dict[str, Any]] = {}
    for j in sorted(first_expert_ids(seed_results), key=int):
        experts[j] = {
            mode: {key: mean_std([r["experts"][mode].get(j, {}).get(key) for r in seed_results]) for key in EXPERT_KEYS}
            for mode in ("progressive", "static")
        }
    out["experts"] = experts
    for mode in ("progressive", "static"):
        per_seed = [_mean([m.get("val/subset_acc") for m in r["experts"][mode].values()]) for r in seed_results]
        out[f"{mode}_mean_subset_acc"] = mean_std(per_seed)
    out["curves"] = {
        f"{policy}@k{k}": {
            key: mean_std([_scalar(r["evaluation"], policy, k, measure, key) for r in seed_results])
            for key in ("acc_local_only", "acc_all_offloaded", *OFFLOAD_KEYS)
        }
        for policy, k in curve_keys(first)
    }
    out["operating_points"] = _operating_points(seed_results, measure)
    return out


def first_expert_ids(seed_results: Sequence[Mapping[str, Any]]) -> set[str]:
    return {j for r in seed_results for mode in r["experts"].values() for j in mode}


def _mean(values: Sequence[float | None]) -> float | None:
    stat = mean_std(values)
    return None if stat is None else stat[0]


def _operating_points(seed_results: Sequence[Mapping[str, Any]], measure: str) -> dict[str, Any]:
    """Per profile and routed k: the val-chosen point's accuracy, offload and reductions vs each baseline."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for r in seed_results:
        for p in r["evaluation"].get("operating_points", []):
            if p["policy"] == "routed" and p["confidence"] == measure:
                grouped.setdefault(f"{p['profile']}|{p['k']}", []).append(p)
    out = {}
    for key, points in grouped.items():
        entry = {name: mean_std([p.get(name) for p in points]) for name in ("tau", "offload_ratio", "accuracy")}
        for baseline in points[0].get("reductions", {}):
            for metric in ("latency_ms", "edge_energy_mj", "system_energy_mj"):
                entry[f"{metric} vs {baseline}"] = mean_std([p["reductions"][baseline][metric] for p in points])
        out[key] = entry
    return out


def findings(agg: Mapping[str, Any]) -> list[str]:
    """The comparisons the report must make, each stated with its numbers and whether it holds."""
    lines = []
    n = len(agg["seeds"])

    def verdict(a: tuple[float, float] | None, b: tuple[float, float] | None, percent: bool = True) -> str:
        if a is None or b is None:
            return "not measured"
        diff = a[0] - b[0]
        spread = max(a[1], b[1])
        holds = "holds" if diff > 0 else "does NOT hold"
        note = "" if n > 1 and abs(diff) > spread else " (within the seed spread: not established)" if n > 1 else ""
        return f"{holds}: {diff * 100:+.2f} points{note}" if percent else f"{holds}: {diff:+.3f}{note}"

    prog, stat = agg["progressive_mean_subset_acc"], agg["static_mean_subset_acc"]
    lines.append(
        f"Progressive experts above static experts on their subsets (mean subset accuracy {fmt(prog, seeds=n)} vs "
        f"{fmt(stat, seeds=n)}): {verdict(prog, stat)}."
    )
    curves = agg["curves"]
    routed_k = sorted(int(key.split("@k")[1]) for key in curves if key.startswith("routed@"))
    for k in routed_k:
        routed, static = curves[f"routed@k{k}"], curves.get(f"static@k{k}")
        if static:
            lines.append(
                f"Collaboration with progressive vs static experts, k={k}, all offloaded "
                f"({fmt(routed['acc_all_offloaded'], seeds=n)} vs {fmt(static['acc_all_offloaded'], seeds=n)}): "
                f"{verdict(routed['acc_all_offloaded'], static['acc_all_offloaded'])}; normalised AUC "
                f"{fmt(routed['auc_norm'], False, n)} vs {fmt(static['auc_norm'], False, n)}."
            )
    if not routed_k:
        return lines
    best = max(routed_k, key=lambda k: (curves[f"routed@k{k}"]["auc_norm"] or (-math.inf, 0))[0])
    best_curve, generalist = curves[f"routed@k{best}"], curves[f"routed@k{routed_k[0]}"]["acc_local_only"]
    for ratio in ("acc@10%", "acc@20%", "acc@30%", "acc@50%"):
        lines.append(
            f"Collaboration (k={best}) above the generalist alone at {ratio[4:]} offload "
            f"({fmt(best_curve[ratio], seeds=n)} vs {fmt(generalist, seeds=n)}): "
            f"{verdict(best_curve[ratio], generalist)}."
        )
    if 1 in routed_k:
        k1 = curves["routed@k1"]["auc_norm"]
        comparison = "k=1 is itself the best k" if best == 1 else verdict(best_curve["auc_norm"], k1, percent=False)
        lines.append(
            f"Best Top-k (k={best}) vs k=1, normalised AUC ({fmt(best_curve['auc_norm'], False, n)} vs "
            f"{fmt(k1, False, n)}): {comparison}."
        )
    if {1, 2} <= set(routed_k):
        lines.append(
            "k=2 routes exactly like k=1 by construction: the top-1 class's expert scores at least p1 >= p2, "
            "more than any other expert can get from two classes; Top-k can only change the choice from k=3 on."
        )
    return lines


def render_markdown(agg: Mapping[str, Any], header: Mapping[str, str], plots: Sequence[str]) -> str:
    """The report: header facts, findings, then the tables; ``plots`` are paths relative to the report."""
    n = len(agg["seeds"])
    out = [f"# Results: {header.get('preset', '')}", ""]
    out += [f"- {k}: {v}" for k, v in header.items()]
    out.append(
        f"- seeds: {n} ({', '.join(map(str, agg['seeds']))}); numbers are mean ± std across seeds"
        if n > 1
        else f"- seeds: 1 ({agg['seeds'][0]}); one seed only, so differences smaller than the "
        "split-to-split spread (not measured here) are not established"
    )
    out += ["", "## Findings", ""] + [f"- {line}" for line in findings(agg)]
    out += [
        "",
        "## Models (val accuracy, %)",
        "",
        "| model | val acc |",
        "| --- | --- |",
        f"| generalist | {fmt(agg['generalist_val_acc'], seeds=n)} |",
        f"| stage-0 base (medium model) | {fmt(agg['base_val_acc'], seeds=n)} |",
        "",
        "## Experts on their subsets (val, %)",
        "",
        "| expert | progressive subset acc | static subset acc | progressive restricted | static restricted "
        "| progressive routed-in | static routed-in | progressive all-val | static all-val |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for j, modes in agg["experts"].items():
        cells = [fmt(modes[mode][key], seeds=n) for key in EXPERT_KEYS for mode in ("progressive", "static")]
        out.append(f"| {j} | " + " | ".join(cells) + " |")
    out.append(
        f"| mean | {fmt(agg['progressive_mean_subset_acc'], seeds=n)} | {fmt(agg['static_mean_subset_acc'], seeds=n)}"
        " | | | | | | |"
    )
    out += [
        "",
        f"## Collaboration (val, confidence `{agg['confidence']}`, accuracy %)",
        "",
        "| policy | k | generalist only | all offloaded | @10% | @20% | @30% | @50% | norm. AUC | offload for 99% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, vals in agg["curves"].items():
        policy, k = key.split("@k")
        cells = [fmt(vals[c], seeds=n) for c in ("acc_local_only", "acc_all_offloaded", *OFFLOAD_KEYS[:4])]
        cells += [fmt(vals["auc_norm"], False, n), fmt(vals["offload_for_99%"], seeds=n)]
        out.append(f"| {policy} | {k} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Operating point (chosen on val) and reductions (%, positive = cheaper)",
        "",
        "| profile | k | tau | offload % | acc % | latency vs edge-only medium | latency vs near-edge only "
        "| edge energy vs near-edge only | system energy vs near-edge only |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, vals in agg["operating_points"].items():
        profile, k = key.split("|")
        out.append(
            f"| {profile} | {k} | {fmt(vals['tau'], False, n)} | {fmt(vals['offload_ratio'], seeds=n)} | "
            f"{fmt(vals['accuracy'], seeds=n)} | {fmt(vals.get('latency_ms vs edge_medium'), seeds=n)} | "
            f"{fmt(vals.get('latency_ms vs near_edge_only'), seeds=n)} | "
            f"{fmt(vals.get('edge_energy_mj vs near_edge_only'), seeds=n)} | "
            f"{fmt(vals.get('system_energy_mj vs near_edge_only'), seeds=n)} |"
        )
    if plots:
        out += ["", "## Plots (first seed)", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"

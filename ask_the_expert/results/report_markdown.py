"""The pipeline's results report: every finding with its 95 % interval and verdict (those that fail included), and
the tables behind them, each naming the split its numbers come from; several seeds as mean +- std.

Inputs per seed (as the pipeline collects them from its output files)::

    {"seed": 0,
     "generalist": {"val/acc": ...}, "base": {"val/acc": ...},
     "experts": {"progressive": {"0": {"val/subset_acc": ...}, ...}, "static": {...}, "static_init": {...}},
     "evaluation": <ate-evaluate's summary.json>}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ask_the_expert.method.costs import BASELINE_NAMES, COST_NAMES
from ask_the_expert.method.findings import across_seeds
from ask_the_expert.method.policies import POLICIES
from ask_the_expert.method.router import LEARNED, RANDOM
from ask_the_expert.method.stages import EXPERT_VARIANTS
from ask_the_expert.method.stats import mean_std

CURVE_COLUMNS = ("acc_local_only", "acc_all_offloaded", "acc@10%", "acc@20%", "acc@30%", "acc@50%")
VERDICT_MARK = {"holds": "holds", "fails": "**fails**", "not established": "not established"}


def _stat(values: Sequence[float | None]) -> tuple[float, float] | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return mean_std(finite) if finite else None


def fmt(stat: tuple[float, float] | float | None, scale: float = 100.0, seeds: int = 1, digits: int = 2) -> str:
    """A value (or mean +- std across seeds) times ``scale``; '-' when unknown."""
    if stat is None:
        return "-"
    mean, std = stat if isinstance(stat, tuple) else (stat, 0.0)
    if not math.isfinite(mean):
        return "-"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if seeds > 1 else "")


def report_summary(seed_results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's numbers as data (OUT/summary.json): the findings across seeds and each seed's references."""
    return {
        "seeds": [r["seed"] for r in seed_results],
        "findings": _finding_rows(seed_results),
        "per_seed": [
            {
                "seed": r["seed"],
                "references": r["evaluation"].get("references"),
                "hit_rates": r["evaluation"].get("hit_rates"),
                "fitted": r["evaluation"].get("fitted"),
            }
            for r in seed_results
        ],
    }


def _finding_rows(seed_results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    per_seed = [r["evaluation"].get("findings", []) for r in seed_results]
    if len(per_seed) == 1:
        rows = []
        for f in per_seed[0]:
            rows.append({**f, "a": (f["a"], 0.0), "b": (f["b"], 0.0), "difference": (f["difference"], 0.0),
                         "intervals": [(f["low"], f["high"])], "seeds": 1})  # fmt: skip
        return rows
    return across_seeds(per_seed)


def _finding_line(f: Mapping[str, Any], seeds: int) -> str:
    scale = 1.0 if f["unit"] == "points" else 100.0
    ci = "; ".join(f"[{lo * scale:+.2f}, {hi * scale:+.2f}]" for lo, hi in f["intervals"])
    return (
        f"| {f['claim']} | {f['a_label']} {fmt(f['a'], scale, seeds)} | {f['b_label']} {fmt(f['b'], scale, seeds)} "
        f"| {fmt(f['difference'], scale, seeds)} | {ci} | {VERDICT_MARK.get(f['verdict'], f['verdict'])} |"
    )


def _scalar(evaluation: Mapping[str, Any], policy: str, k: int, measure: str, key: str) -> float | None:
    for row in evaluation.get("scalars", []):
        if (row["policy"], row["k"], row["confidence"]) == (policy, k, measure):
            return row.get(key)
    return None


def _curve_keys(evaluation: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    keys = {(r["policy"], r["k"], r["confidence"]) for r in evaluation.get("scalars", [])}
    primary = evaluation["confidence_measures"][0]
    keep = [key for key in keys if key[2] in (primary, LEARNED, RANDOM)]
    order = list(POLICIES)
    return sorted(keep, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1], k[2]))


def render_markdown(seed_results: Sequence[Mapping[str, Any]], header: Mapping[str, str], plots: Sequence[str]) -> str:
    """The report; ``plots`` are paths relative to it."""
    n = len(seed_results)
    first = seed_results[0]["evaluation"]
    split, primary, num = first["split"], first["confidence_measures"][0], first["num_samples"]
    out = [f"# Results: {header.get('preset', '')}", ""]
    out += [f"- {k}: {v}" for k, v in header.items()]
    seeds = ", ".join(str(r["seed"]) for r in seed_results)
    out.append(f"- seeds: {n} ({seeds})" + ("; numbers are mean ± std across the seeds" if n > 1 else ""))
    boot = first.get("bootstrap", {})
    out += [
        f"- every number is on the {split} split ({num} images); every difference carries a 95 % paired-bootstrap "
        f"interval over those images ({boot.get('resamples', '?')} resamples, the same resamples for every policy)"
        + ("; with several seeds one interval per seed" if n > 1 else ""),
        "- a finding **holds** when its interval excludes 0 in the direction it claims, **fails** when it excludes 0 "
        "the other way, and is **not established** otherwise"
        + (" (across seeds: only when every seed agrees)" if n > 1 else "; one seed only: seed-to-seed variation is "
           "not measured"),
        "",
        f"## Findings ({split})",
        "",
        "| finding | a | b | a - b | 95 % interval | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    rows = _finding_rows(seed_results)
    groups = list(dict.fromkeys(f["group"] for f in rows))
    for group in groups:
        out.append(f"| **{group}** | | | | | |")
        out += [_finding_line(f, n) for f in rows if f["group"] == group]
    out += [
        "",
        "Accuracies in %, area gains in points (mean accuracy over offload 0-100 % minus the generalist's).",
        "",
    ]
    out += _models(seed_results, split, n)
    out += _experts(seed_results, split, n)
    out += _collaboration(seed_results, split, primary, n)
    out += _costs(seed_results, split, primary, n)
    out += _break_even(first, split)
    if plots:
        out += ["", f"## Plots (seed {seed_results[0]['seed']}, {split})", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _models(seed_results: Sequence[Mapping[str, Any]], split: str, n: int) -> list[str]:
    refs = [r["evaluation"].get("references", {}) for r in seed_results]
    lines = ["", f"## Models ({split} accuracy, %)", "", "| model | accuracy |", "| --- | --- |"]
    for key, label in (("generalist", "generalist (edge)"), ("base", "stage-0 base (the one medium model)")):
        lines.append(f"| {label} | {fmt(_stat([r.get(key) for r in refs]), seeds=n)} |")
    lines.append(f"| oracle routing, all offloaded | {fmt(_stat([r.get('oracle') for r in refs]), seeds=n)} |")
    hits = [r["evaluation"].get("hit_rates", {}) for r in seed_results]
    ks = sorted({int(k) for h in hits for k in h})
    if ks:
        lines += ["", f"Routing hit rate ({split}: the chosen expert owns the true class): "]
        lines[-1] += ", ".join(f"k={k} {fmt(_stat([h.get(str(k)) for h in hits]), seeds=n)} %" for k in ks)
    return lines


def _experts(seed_results: Sequence[Mapping[str, Any]], split: str, n: int) -> list[str]:
    variants = [v for v in EXPERT_VARIANTS if any(r["experts"].get(v) for r in seed_results)]
    if not variants:
        return []
    ids = sorted({j for r in seed_results for v in variants for j in r["experts"].get(v, {})}, key=int)
    head = " | ".join(f"{EXPERT_VARIANTS[v].title} {what}" for what in ("subset", "all") for v in variants)
    lines = ["", f"## Experts ({split}: accuracy on their own subset and on all images, %)", "", f"| expert | {head} |"]
    lines.append("| --- |" + " --- |" * (2 * len(variants)))
    for j in ids:
        cells = [
            fmt(_stat([r["experts"].get(v, {}).get(j, {}).get(key) for r in seed_results]), seeds=n)
            for key in ("val/subset_acc", "val/acc")
            for v in variants
        ]
        lines.append(f"| {j} | " + " | ".join(cells) + " |")
    return lines


def _collaboration(seed_results: Sequence[Mapping[str, Any]], split: str, primary: str, n: int) -> list[str]:
    first = seed_results[0]["evaluation"]
    within = [key for key in (first.get("scalars") or [{}])[0] if key.startswith("offload_within_")]
    lines = [
        "",
        f"## Collaboration ({split}, confidence `{primary}` unless named, accuracy %)",
        "",
        "Area norm: on one scale for every policy (0 = the generalist alone, 1 = oracle routing with every image "
        f"offloaded). {within[0].replace('_', ' ') if within else ''}: the smallest offload that does it.",
        "",
        "| policy | k | confidence | G only | all offloaded | @10% | @20% | @30% | @50% | area gain (pts) | area norm "
        "| offload within |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for policy, k, measure in _curve_keys(first):

        def stat(key: str, p: str = policy, kk: int = k, m: str = measure) -> tuple[float, float] | None:
            return _stat([_scalar(r["evaluation"], p, kk, m, key) for r in seed_results])

        cells = [fmt(stat(c), seeds=n) for c in CURVE_COLUMNS]
        cells += [fmt(stat("area_gain_pts"), 1.0, n), fmt(stat("area_norm"), 1.0, n, 3)]
        cells.append(fmt(stat(within[0]), seeds=n) + " %" if within else "-")
        lines.append(f"| {policy} | {k} | {measure} | " + " | ".join(cells) + " |")
    weights = first.get("fitted", {}).get("fuse_weight", {})
    if weights:
        lines += ["", "Fused answers: weight of G's log-probabilities chosen on val per k: "]
        lines[-1] += ", ".join(f"k={k} w={w}" for k, w in weights.items())
    return lines


def _costs(seed_results: Sequence[Mapping[str, Any]], split: str, primary: str, n: int) -> list[str]:
    first = seed_results[0]["evaluation"]
    lines = [
        "",
        f"## Costs ({split}; operating point chosen on val; reductions in %, positive = cheaper, with both accuracies)",
        "",
        "| profile | policy | k | tau | offload % | accuracy % | baseline | baseline accuracy % | latency | edge "
        "energy | system energy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in first.get("operating_points", []):
        if p["confidence"] != primary or p["policy"] not in ("routed", "fused") or not p["profile"]:
            continue
        for base, label in BASELINE_NAMES.items():
            acc = (p.get("baseline_accuracy") or {}).get(base)
            reds = [fmt(p["reductions"][base][c], 100.0, 1, 1) for c in COST_NAMES]
            lines.append(
                f"| {p['profile']} | {p['policy']} | {p['k']} | {p['tau']:.4f} | {fmt(p['offload_ratio'])} | "
                f"{fmt(p['accuracy'])} | {label} | {fmt(acc)} | " + " | ".join(reds) + " |"
            )
    lines += [
        "",
        f'### "Up to" reductions ({split}): the largest over thresholds whose accuracy is at least the baseline\'s '
        "minus delta",
        "",
        "| profile | policy | k | baseline | cost | up to % | at offload % | accuracy % | baseline accuracy % "
        "| delta |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in first.get("up_to_reductions", []):
        if entry["confidence"] != primary or entry["policy"] not in ("routed", "fused"):
            continue
        for base, label in BASELINE_NAMES.items():
            for cost, name in COST_NAMES.items():
                best = entry["reductions"][base][cost]
                if best is None:
                    lines.append(f"| {entry['profile']} | {entry['policy']} | {entry['k']} | {label} | {name} | "
                                 f"none (no threshold accurate enough) | | | | {fmt(entry['delta'])} |")  # fmt: skip
                    continue
                lines.append(
                    f"| {entry['profile']} | {entry['policy']} | {entry['k']} | {label} | {name} | "
                    f"{fmt(best['reduction'], 100.0, 1, 1)} | {fmt(best['offload_ratio'])} | {fmt(best['accuracy'])} | "
                    f"{fmt(best['baseline_accuracy'])} | {fmt(entry['delta'])} |"
                )
    return lines


def _break_even(evaluation: Mapping[str, Any], split: str) -> list[str]:
    maps = evaluation.get("break_even", [])
    if not maps:
        return []
    lines = ["", f"## Where the collaboration wins ({split} accuracies; costs from each profile)", ""]
    for m in maps:
        strategies = m["strategies"]
        x, y = m["profile_point"]
        feasible = [s for s in strategies if m["feasible"].get(s)]
        ratio = m.get("collaboration_offload_ratio")
        lines.append(
            f"- `{m['profile']}` at a target accuracy of {fmt(m['target_accuracy'])} % (policy {m['policy']} "
            f"k={m['k']}: " + (f"{fmt(ratio)} % offloaded" if ratio is not None else "never reaches it") + "); "
            f"strategies that reach it: {', '.join(feasible) or 'none'}."
        )
        for cost, name in COST_NAMES.items():
            grid = m["best"][cost]
            xs, ys = list(m["x_values"]), list(m["y_values"])
            ix = min(range(len(xs)), key=lambda i: abs(math.log(xs[i]) - math.log(x)))
            iy = min(range(len(ys)), key=lambda i: abs(math.log(ys[i]) - math.log(y)))
            wins = [[cell == strategies.index("collaboration") for cell in row] for row in grid]
            share = sum(map(sum, wins)) / max(1, len(xs) * len(ys))
            here = strategies[grid[iy][ix]] if grid[iy][ix] >= 0 else "none"
            lines.append(
                f"  - {name}: cheapest at the profile's own point ({m['x_field']} = {x:g}, {m['y_field']} = {y:g}): "
                f"{here}; the collaboration is cheapest on {100 * share:.0f} % of the map "
                f"({m['x_field']} x{xs[0] / x:g}..x{xs[-1] / x:g}, {m['y_field']} x{ys[0] / y:g}..x{ys[-1] / y:g})."
            )
    return lines

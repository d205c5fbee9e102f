"""The pipeline's results report: the declared primary family with its Holm-corrected verdicts (those that fail
included), then the exploratory findings, labelled, and the tables behind them, each naming the data its numbers come
from and where every choice was made; several seeds as mean +- std with a seed-level verdict and interval.

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
                "protocol": r["evaluation"].get("protocol"),
                "primary_family": r["evaluation"].get("primary_family"),
            }
            for r in seed_results
        ],
    }


def _finding_rows(seed_results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The findings across seeds (ask_the_expert.method.findings.across_seeds; one seed: its findings as they are)."""
    return across_seeds([r["evaluation"].get("findings", []) for r in seed_results])


def _finding_line(f: Mapping[str, Any], seeds: int) -> str:
    scale = 1.0 if f["unit"] == "points" else 100.0
    levels = {f"{100 * level:.1f} %" for level in f.get("levels", [0.95])}
    ci = "; ".join(f"[{lo * scale:+.2f}, {hi * scale:+.2f}]" for lo, hi in f["intervals"]) + f" ({', '.join(levels)})"
    if seeds > 1:
        across = f["seed_interval"]
        ci += f"; seeds: [{across[0] * scale:+.2f}, {across[1] * scale:+.2f}]" if across else ""
    return (
        f"| {f['claim']} | {f['a_label']} {fmt(f['a'], scale, seeds)} | {f['b_label']} {fmt(f['b'], scale, seeds)} "
        f"| {fmt(f['difference'], scale, seeds)} | {ci} | {VERDICT_MARK.get(f['verdict'], f['verdict'])} |"
    )


def _protocol_lines(evaluation: Mapping[str, Any], n: int) -> list[str]:
    """Where every choice was made and every finding assessed, with the part sizes; the k grid and R_j."""
    protocol, family = evaluation.get("protocol", {}), evaluation.get("primary_family", {})
    sizes = protocol.get("sizes", {})
    reported = protocol.get("reported_on", evaluation["split"])
    chosen = f"{protocol.get('chosen_on')} ({sizes.get('selection')} images)"
    deferral = f"{protocol.get('deferral_fit_on')} ({sizes.get('deferral')} images)"
    assessed = f"{reported} ({sizes.get('assessment')} images)"
    lines = [
        "- selection and assessment are disjoint (docs/design.md §6): the temperature, the fused weights, the "
        f'operating points, the "up to" points and the break-even targets were chosen on the {chosen}, the learned '
        f"deferral rule fitted on the {deferral}; every curve, scalar and finding below is on the {assessed}, which "
        f"none of them saw. Val was split stratified by fine class, seed {protocol.get('seed')}"
        + ("; the sizes are the first seed's, each seed splits its own val" if n > 1 else ""),
    ]
    k, ks = family.get("k"), evaluation.get("k_values", [])
    lines.append(
        "- k = 2 is not evaluated: under this routing rule it always picks the expert k = 1 picks (the top-1 class's "
        "expert has the largest Top-2 score, since p1 >= p2), so its rows would repeat k = 1's"
        if 2 not in ks
        else "- k = 2 picks the same expert as k = 1 under this routing rule (p1 >= p2): its rows repeat k = 1's"
    )
    routing_k = evaluation.get("experts_routing_k")
    if routing_k:
        agree = "the same k" if routing_k == [k] else f"NOT the primary k={k}"
        lines.append(
            f"- the progressive experts' routed-in sets R_j were built at k={', '.join(map(str, routing_k))} (their "
            f"routing_k): {agree} as the primary family"
        )
    return lines


def _family_section(rows: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any], n: int) -> list[str]:
    family = evaluation.get("primary_family", {})
    members = [f for f in rows if f["family"] == "primary"]
    lines = [
        "",
        f"## Primary family ({evaluation.get('protocol', {}).get('reported_on', evaluation['split'])})",
        "",
        f"Declared in the configuration before the run: k={family.get('k')}, offload {family.get('offload', 0):.0%}, "
        f"{len(members)} comparisons. Verdicts by Holm's correction of two-sided bootstrap p-values at a family-wise "
        f"alpha of {family.get('alpha')}; each interval is at the level Holm tests it at."
        + (
            " Across seeds a member holds (fails) only when it does in every seed; the seed-level interval is the 95 % "
            "t interval of the mean difference over the seeds."
            if n > 1
            else ""
        ),
        "",
        "| finding | a | b | a - b | interval (level) | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return lines + [_finding_line(f, n) for f in members]


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
    split, primary = first.get("reported_on", first["split"]), first["confidence_measures"][0]
    out = [f"# Results: {header.get('preset', '')}", ""]
    out += [f"- {k}: {v}" for k, v in header.items()]
    seeds = ", ".join(str(r["seed"]) for r in seed_results)
    out.append(f"- seeds: {n} ({seeds})" + ("; numbers are mean ± std across the seeds" if n > 1 else ""))
    boot = first.get("bootstrap", {})
    out += _protocol_lines(first, n)
    out += [
        "- every difference carries a paired-bootstrap interval over the assessed images "
        f"({boot.get('resamples', '?')} resamples, the same resamples for every policy)"
        + ("; with several seeds one interval per seed" if n > 1 else ""),
        "- a finding **holds** when it excludes 0 in the direction it claims, **fails** when it excludes 0 the other "
        "way, and is **not established** otherwise"
        + (" (across seeds: only when every seed agrees)" if n > 1 else "; one seed only: seed-to-seed variation is "
           "not measured"),
    ]  # fmt: skip
    rows = _finding_rows(seed_results)
    out += _family_section(rows, first, n)
    exploratory = [f for f in rows if f["family"] != "primary"]
    out += [
        "",
        f"## Exploratory findings ({len(exploratory)}, uncorrected)",
        "",
        'Each at an uncorrected 95 % level: with this many comparisons some "holds" are expected by chance alone. '
        "They suggest what to declare in a later run's primary family; they are not claims.",
        "",
        "| finding | a | b | a - b | interval (level) | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for group in dict.fromkeys(f["group"] for f in exploratory):
        out.append(f"| **{group}** (exploratory) | | | | | |")
        out += [_finding_line(f, n) for f in exploratory if f["group"] == group]
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
        lines += ["", "Fused answers: weight of G's log-probabilities chosen on val's selection part per k: "]
        lines[-1] += ", ".join(f"k={k} w={w}" for k, w in weights.items())
    return lines


def _costs(seed_results: Sequence[Mapping[str, Any]], split: str, primary: str, n: int) -> list[str]:
    first = seed_results[0]["evaluation"]
    chosen_on = first.get("protocol", {}).get("chosen_on", "val")
    lines = [
        "",
        f"## Costs (operating points chosen on the {chosen_on}; offload, accuracy and reductions on the {split}, "
        "reductions in %, positive = cheaper, with both accuracies)",
        "",
        f"| profile | policy | k | tau | offload % | accuracy % | accuracy % on the {chosen_on} (in-sample) | baseline "
        "| baseline accuracy % | latency | edge energy | system energy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in first.get("operating_points", []):
        if p["confidence"] != primary or p["policy"] not in ("routed", "fused") or not p["profile"]:
            continue
        for base, label in BASELINE_NAMES.items():
            acc = (p.get("baseline_accuracy") or {}).get(base)
            reds = [fmt(p["reductions"][base][c], 100.0, 1, 1) for c in COST_NAMES]
            own = (p.get("on_selection") or {}).get("accuracy")
            lines.append(
                f"| {p['profile']} | {p['policy']} | {p['k']} | {p['tau']:.4f} | {fmt(p['offload_ratio'])} | "
                f"{fmt(p['accuracy'])} | {fmt(own)} | {label} | {fmt(acc)} | " + " | ".join(reds) + " |"
            )
    lines += [
        "",
        f'### "Up to" reductions: chosen on the {chosen_on}, and their value on the {split}',
        "",
        f"On the {chosen_on}, the largest reduction over the thresholds whose accuracy there is at least the "
        "baseline's minus delta: the best threshold of the data it is quoted on, so an in-sample optimum. The same "
        f"threshold on the {split} gives the estimate.",
        "",
        f"| profile | policy | k | baseline | cost | up to % (chosen on the {chosen_on}) | at offload % | accuracy % "
        f"| baseline accuracy % | on the {split}: reduction % | offload % | accuracy % | baseline accuracy % | delta |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in first.get("up_to_reductions", []):
        if entry["confidence"] != primary or entry["policy"] not in ("routed", "fused"):
            continue
        for base, label in BASELINE_NAMES.items():
            for cost, name in COST_NAMES.items():
                best = entry["reductions"][base][cost]
                if best is None:
                    lines.append(f"| {entry['profile']} | {entry['policy']} | {entry['k']} | {label} | {name} | none "
                                 f"(no threshold accurate enough) |{' |' * 8} {fmt(entry['delta'])} |")  # fmt: skip
                    continue
                there = best.get("assessed") or {}
                lines.append(
                    f"| {entry['profile']} | {entry['policy']} | {entry['k']} | {label} | {name} | "
                    f"{fmt(best['reduction'], 100.0, 1, 1)} | {fmt(best['offload_ratio'])} | {fmt(best['accuracy'])} | "
                    f"{fmt(best['baseline_accuracy'])} | {fmt(there.get('reduction'), 100.0, 1, 1)} | "
                    f"{fmt(there.get('offload_ratio'))} | {fmt(there.get('accuracy'))} | "
                    f"{fmt(there.get('baseline_accuracy'))} | {fmt(entry['delta'])} |"
                )
    return lines


def _break_even(evaluation: Mapping[str, Any], split: str) -> list[str]:
    maps = evaluation.get("break_even", [])
    if not maps:
        return []
    chosen_on = evaluation.get("protocol", {}).get("chosen_on", "val")
    lines = [
        "",
        f"## Where the collaboration wins (target and offload chosen on the {chosen_on}; costs from each profile)",
        "",
    ]
    for m in maps:
        strategies = m["strategies"]
        x, y = m["profile_point"]
        feasible = [s for s in strategies if m["feasible"].get(s)]
        ratio, there = m.get("collaboration_offload_ratio"), m.get("assessed")
        on_assessed = (
            f"; on the {split} the same tau offloads {fmt(there['offload_ratio'])} % at {fmt(there['accuracy'])} % "
            f"({'reaches' if there['reaches_target'] else 'misses'} the target)"
            if there
            else ""
        )
        lines.append(
            f"- `{m['profile']}` at a target accuracy of {fmt(m['target_accuracy'])} % (policy {m['policy']} "
            f"k={m['k']}, on the {chosen_on}: "
            + (f"{fmt(ratio)} % offloaded" if ratio is not None else "never reaches it")
            + f"{on_assessed}); strategies that reach it on the {chosen_on}: {', '.join(feasible) or 'none'}."
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

"""PNG plots of a collaborative-inference evaluation: a ask_the_expert.method.policies.Report and its per-sample
records.

Every number comes from the method (the report's curves, scalars, operating points and break-even maps;
ask_the_expert.method.policies.hit_rate_curve; ask_the_expert.method.diagnostics: calibration, expert load, superclass
confusion); this module only draws, with matplotlib's Agg canvas (no pyplot state, so it is safe in any process).

Design of the accuracy charts (``acc_vs_offload`` and, per profile, ``acc_vs_{latency,edge_energy,system_energy}``):

- one colour per policy family (``family_colour``: the registered policies of ask_the_expert.method.policies in
  order, on ``POLICY_PALETTE``) and one line style per k (``k_linestyle``: the k's position among the evaluation's
  k values; k = 0 is solid);
- so that several k values stay readable, ``routed`` is drawn at every k and every other family only at the primary
  family's k (declared before the run, never picked from the data drawn; primary confidence measure);
- the ``learned`` deferral variant of a policy that has one is drawn at that k, in the family colour with round
  markers and "learned deferral" in its label;
- reference levels are labelled dotted horizontal lines (generalist only, the base model on every sample when it
  was evaluated, the oracle all offloaded); on cost axes the three baseline deployments are labelled markers at
  (their cost, their accuracy), or labelled vertical lines when their accuracy was not evaluated;
- accuracy and offload axes are in percent; legends sit outside the axes, on the right.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from ask_the_expert.method.cifar100_classes import NUM_SUPERCLASSES, SUPERCLASSES
from ask_the_expert.method.costs import BASELINE_NAMES, COST_KEYS, COST_NAMES, QUANTITIES, Profile, baseline_costs
from ask_the_expert.method.diagnostics import (
    expert_load,
    generalist_reliability,
    superclass_accuracy,
    superclass_confusion,
)
from ask_the_expert.method.policies import LEARNED, POLICIES, Report, hit_rate_curve
from ask_the_expert.method.router import RANDOM

DPI = 120
# Colour-blind-friendly tab10 entries, one per policy family in the order the policies are registered (routed,
# fused, static, static_init, base, oracle, random, then any policy added later).
POLICY_PALETTE = ("#1f77b4", "#9467bd", "#ff7f0e", "#8c564b", "#2ca02c", "#d62728", "#7f7f7f", "#e377c2", "#bcbd22")
POLICY_PALETTE += ("#17becf",)
# Line style of the i-th k value (beyond the list they repeat; the paper sweeps four k values).
K_LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 4)))
AXIS_LABELS = {
    "offload_ratio": "offload ratio (% of samples sent to the near edge)",
    "latency_ms": "mean latency per sample (ms)",
    "edge_energy_mj": "mean edge energy per sample (mJ)",
    "system_energy_mj": "mean system energy per sample (mJ)",
}
BASELINE_MARKERS = {"edge_generalist": "s", "edge_medium": "D", "near_edge_only": "^"}
STRATEGY_NAMES = {**BASELINE_NAMES, "collaboration": "collaboration"}
STRATEGY_COLOURS = {
    "edge_generalist": "#c7c7c7",
    "edge_medium": "#98df8a",
    "near_edge_only": "#ffbb78",
    "collaboration": "#aec7e8",
}


# ----------------------------------------------------------------------------------------------------- styling
@dataclass(frozen=True)
class LineStyle:
    """How one curve is drawn: colour (its family), line style (its k), marker (learned variant) and label."""

    color: str
    linestyle: Any
    marker: str | None
    label: str


def family_colour(policy: str) -> str:
    """The colour of a policy family: its registration position on POLICY_PALETTE (black for an unknown name)."""
    names = list(POLICIES)
    return POLICY_PALETTE[names.index(policy) % len(POLICY_PALETTE)] if policy in names else "#000000"


def k_linestyle(k: int, k_values: Sequence[int]) -> Any:
    """The line style of k: its position among the evaluation's k values; solid for k = 0 (no Top-k)."""
    ks = sorted(k_values)
    if k == 0 or k not in ks:
        return "-"
    return K_LINESTYLES[ks.index(k) % len(K_LINESTYLES)]


def curve_style(key: tuple[str, int, str], k_values: Sequence[int]) -> LineStyle:
    """The style of the curve ``(policy, k, measure)``; the learned-deferral variant keeps family colour and k
    style and adds markers."""
    policy, k, measure = key
    name = (POLICIES[policy].legend if policy in POLICIES else policy) + (f", k={k}" if k else "")
    learned = measure == LEARNED
    if learned:
        name += ", learned deferral"
    return LineStyle(family_colour(policy), k_linestyle(k, k_values), "o" if learned else None, name)


def shown_curves(report: Report) -> list[tuple[str, int, str]]:
    """The curves the accuracy charts draw: routed at every k and the other families at the primary family's k
    (declared before the run, so a chart never picks its k from the data it draws), primary measure; the learned
    variant of a family and random offload at that k."""
    primary, k = report.measures[0], report.family.k
    keys: list[tuple[str, int, str]] = [("routed", kk, primary) for kk in report.k_values]
    for policy in POLICIES.values():
        kk = k if policy.per_k else 0
        if policy.random_offload:
            keys.append((policy.name, kk, RANDOM))
            continue
        if policy.name != "routed":
            keys.append((policy.name, kk, primary))
        if policy.learned:
            keys.append((policy.name, kk, LEARNED))
    return [key for key in keys if key in report.curves]


def percent_axis(axis: Any) -> None:
    """Fractions shown as percent; the decimals follow the tick spacing (0.5-point ticks are not rounded to
    whole percents, which would repeat labels)."""
    axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # the Agg canvas: PNG output without a GUI backend
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" grows the canvas so that legends placed outside the axes are kept.
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _outside_legend(ax: Axes, **kwargs: Any) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0.0, **kwargs)


def _finish(fig: Figure, ax: Axes, title: str, path: Path) -> Path:
    """Title, grid and the legend outside the axes, then save."""
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _outside_legend(ax)
    return _save(fig, path)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


# ------------------------------------------------------------------------------------------- accuracy charts
def reference_levels(report: Report) -> list[tuple[str, float, str]]:
    """(label, accuracy, colour) of the reference accuracies drawn as horizontal lines."""
    refs = report.references
    levels = [("generalist only", refs.get("generalist"), "#000000")]
    levels.append(("base model on every sample", refs.get("base"), family_colour("base")))
    levels.append(("oracle routing, all offloaded", refs.get("oracle"), family_colour("oracle")))
    return [(f"{name}: {_pct(v)}", float(v), c) for name, v, c in levels if v is not None and math.isfinite(v)]


def baseline_accuracies(report: Report) -> dict[str, float | None]:
    """Accuracy of each baseline deployment: G for the edge generalist, the base (medium) model for the other two
    (None when the base model was not evaluated)."""
    base = report.references.get("base")
    return {"edge_generalist": report.references.get("generalist"), "edge_medium": base, "near_edge_only": base}


def plot_accuracy(report: Report, x: str, profile: Profile | None, path: Path) -> Path:
    """Accuracy vs the offload ratio (``x = "offload_ratio"``) or vs a mean cost under ``profile``."""
    fig = _figure(9.5, 5.2)
    ax = fig.subplots()
    for key in shown_curves(report):
        style = curve_style(key, report.k_values)
        curve = report.curve_with_costs(key, profile)
        ax.plot(
            curve[x],
            curve["accuracy"],
            color=style.color,
            linestyle=style.linestyle,
            marker=style.marker,
            markevery=0.08 if style.marker else None,
            markersize=3.5,
            linewidth=1.6,
            label=style.label,
            drawstyle="steps-post",  # accuracy is constant between thresholds; costs are affine in the offload
        )
    for label, value, colour in reference_levels(report):
        ax.axhline(value, color=colour, linestyle=":", linewidth=1.1, label=f"reference: {label}")
    if profile is not None:
        accuracy = baseline_accuracies(report)
        for name, costs in baseline_costs(profile).items():
            acc, where = accuracy[name], costs[x]
            text = f"{BASELINE_NAMES[name]}: {where:.4g} {x.rsplit('_', 1)[1]}"
            if acc is None:
                label = f"{text} (accuracy not evaluated)"
                ax.axvline(where, color="#555555", linestyle="--", linewidth=0.9, label=label)
            else:
                ax.plot(
                    [where],
                    [acc],
                    linestyle="none",
                    marker=BASELINE_MARKERS[name],
                    markersize=8,
                    markerfacecolor="white",
                    markeredgecolor="#333333",
                    label=f"{text}, {_pct(acc)}",
                )
    ax.set_xlabel(AXIS_LABELS[x])
    ax.set_ylabel("accuracy (%)")
    percent_axis(ax.yaxis)
    if x == "offload_ratio":
        percent_axis(ax.xaxis)
        ax.set_xlim(0.0, 1.0)
    what = "offload ratio" if profile is None else f"{COST_NAMES[x]} ({profile.name})"
    title = f"{report.reported_on} ({report.num_samples} samples): accuracy vs {what}\n"
    title += f"confidence {report.measures[0]}; routed at every k, other policies at the primary k={report.family.k}"
    return _finish(fig, ax, title, path)


# ------------------------------------------------------------------------------------------------ reliability
def plot_reliability(report: Report, records: Mapping[str, np.ndarray], path: Path) -> Path | None:
    """Reliability diagram of G before (softmax at T = 1) and after temperature scaling, with each ECE."""
    if "g_topk_classes" not in records or "label" not in records:
        return None
    temperature = float(report.meta.get("temperature", math.nan))
    t_text = f"T = {temperature:.3g}" if math.isfinite(temperature) else "T unknown"
    names = {"before_scaling": "before scaling (T = 1)", "after_scaling": f"after scaling ({t_text})"}
    variants = generalist_reliability(records)
    colours = ["#7f7f7f", family_colour("routed")][-len(variants) :]
    fig = _figure(6.8, 6.4)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="#000000", linestyle=":", linewidth=1.0, label="perfect calibration")
    edges = variants["after_scaling"].bins["edges"]
    width = (edges[1] - edges[0]) / (len(variants) + 0.5)
    for i, ((name, reliability), colour) in enumerate(zip(variants.items(), colours, strict=True)):
        b = reliability.bins
        full = b["counts"] > 0
        ax.plot(
            b["confidence"][full], b["accuracy"][full], marker="o", color=colour, linewidth=1.5,
            label=f"{names[name]}: ECE {_pct(reliability.ece)}",
        )  # fmt: skip
        hist.bar(edges[:-1] + (i + 0.25) * width, b["counts"], width=width, align="edge", color=colour, alpha=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy in the bin (%)")
    percent_axis(ax.yaxis)
    hist.set_xlabel(f"generalist's top-1 probability ({len(edges) - 1} equal-width bins, %)")
    hist.set_ylabel("samples")
    percent_axis(hist.xaxis)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    # report.meta does not say whether T was fitted (on val) or fixed by the user, so the title gives T only.
    t_text = f"temperature T = {temperature:.3g}" if math.isfinite(temperature) else "temperature unknown"
    ax.set_title(
        f"{report.reported_on} ({report.num_samples} samples): reliability of the generalist, {t_text}", fontsize=10
    )
    return _save(fig, path)


# -------------------------------------------------------------------------------------------------- expert load
def plot_expert_load(report: Report, records: Mapping[str, np.ndarray], path: Path) -> Path | None:
    """Grouped bars: per expert, its share of the offloaded samples, one bar per k."""
    load = expert_load(report, records)
    if not load:
        return None
    num_experts = len(next(iter(load.values()))["shares"])
    fig = _figure(max(7.0, 0.45 * num_experts * max(len(load), 1) / 2 + 4), 4.6)
    ax = fig.subplots()
    width = 0.8 / len(load)
    shades = np.linspace(0.35, 1.0, len(load))
    for i, (k, entry) in enumerate(load.items()):
        ax.bar(
            np.arange(num_experts) + (i - (len(load) - 1) / 2) * width,
            entry["shares"],
            width=width,
            color=family_colour("routed"),
            alpha=float(shades[i]),
            edgecolor="#333333",
            linewidth=0.4,
            label=f"k={k}: tau {entry['tau']:.3g}, {_pct(entry['offload_ratio'])} offloaded",
        )
    ax.axhline(1.0 / num_experts, color="#000000", linestyle=":", linewidth=1.0, label="equal load")
    if all(entry["offload_ratio"] == 0 for entry in load.values()):
        ax.text(
            0.5,
            0.5,
            "no sample is offloaded at these operating points",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#555555",
        )
    ax.set_xticks(np.arange(num_experts))
    ax.set_xlabel("expert")
    ax.set_ylabel("share of the offloaded samples (%)")
    percent_axis(ax.yaxis)
    pname = f", costs {report.profiles[0].name}" if report.profiles else ""
    ax.set_title(
        f"{report.reported_on} ({report.num_samples} samples): expert load at each k's operating point (chosen on "
        f"{report.protocol.get('chosen_on', 'val')})\n"
        f"routed policy, confidence {report.measures[0]}{pname}",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="y")
    _outside_legend(ax)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- superclass confusion
def plot_superclass_confusion(report: Report, records: Mapping[str, np.ndarray], path: Path) -> Path | None:
    """Heat map of G's superclass confusion (skipped when the labels are not CIFAR-100's 100 classes)."""
    if "g_topk_classes" not in records:
        return None
    matrix = superclass_confusion(records["label"], records["g_topk_classes"][:, 0])
    if matrix is None:
        return None
    coarse_acc = superclass_accuracy(records["label"], records["g_topk_classes"][:, 0])
    fig = _figure(9.0, 8.0)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    cbar.set_label("share of the true superclass's samples (%)")
    percent_axis(cbar.ax.yaxis)
    ticks = np.arange(NUM_SUPERCLASSES)
    ax.set_xticks(ticks, labels=SUPERCLASSES, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, labels=SUPERCLASSES, fontsize=7)
    ax.set_xlabel("generalist's top-1 superclass")
    ax.set_ylabel("true superclass")
    ax.set_title(
        f"{report.reported_on} ({report.num_samples} samples): generalist's superclass confusion (row-normalised); "
        f"superclass accuracy {_pct(coarse_acc)}",
        fontsize=10,
    )
    return _save(fig, path)


# -------------------------------------------------------------------------------------------------- hit rate
def plot_hit_rate(report: Report, records: Mapping[str, np.ndarray], path: Path) -> Path | None:
    """Routing hit rate among the offloaded samples vs the offload ratio, one line per k."""
    primary = report.measures[0]
    if "oracle_expert" not in records or f"conf_{primary}" not in records:
        return None
    fig = _figure(8.5, 4.8)
    ax = fig.subplots()
    for k in report.k_values:
        if f"expert_k{k}" not in records:
            continue
        offload, rate = hit_rate_curve(records, k, primary)
        ax.plot(
            offload,
            rate,
            color=family_colour("routed"),
            linestyle=k_linestyle(k, report.k_values),
            linewidth=1.5,
            label=f"k={k} (all samples: {_pct(report.hit_rates.get(k, math.nan))})",
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    percent_axis(ax.xaxis)
    percent_axis(ax.yaxis)
    ax.set_xlabel(AXIS_LABELS["offload_ratio"])
    ax.set_ylabel("hit rate among the offloaded (%)")
    title = (
        f"{report.reported_on} ({report.num_samples} samples): routing hit rate (chosen expert owns the true class)\n"
    )
    return _finish(fig, ax, title + f"among the offloaded samples, confidence {primary}", path)


# -------------------------------------------------------------------------------------------------- break-even
def field_label(name: str) -> str:
    """Axis label (with unit) of a break-even map's profile quantity."""
    if name in QUANTITIES:
        return QUANTITIES[name].label
    parts = name.split(".")
    if len(parts) == 3 and parts[1] == "latency_ms":
        where = "the edge" if parts[0] == "edge" else "the near edge"
        return f"{parts[2]} latency on {where} (ms)"
    return name


def strategy_legend(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, colour) per strategy of a break-even map; infeasible strategies are named as such."""
    target = float(entry["target_accuracy"])
    out = []
    for name in entry["strategies"]:
        label = STRATEGY_NAMES.get(name, name)
        if name == "collaboration":
            ratio = entry.get("collaboration_offload_ratio")
            label += f" (routed k={entry.get('k')}, {entry.get('confidence')}"
            label += f", {_pct(ratio)} offloaded)" if ratio is not None else ")"
        acc = entry["accuracy"].get(name)
        if entry["feasible"].get(name):
            label += f": {_pct(acc)}"
        else:
            shown = _pct(acc) if acc is not None and math.isfinite(acc) else "target not reached"
            label += f": infeasible ({shown} < {_pct(target)})"
        out.append((label, STRATEGY_COLOURS.get(name, "#dddddd")))
    return out


def plot_break_even(report: Report, entry: Mapping[str, Any], path: Path) -> Path:
    """One panel per cost: the cheapest strategy at the target accuracy over two profile quantities (log axes)."""
    xs, ys = np.asarray(entry["x_values"], dtype=np.float64), np.asarray(entry["y_values"], dtype=np.float64)
    strategies = list(entry["strategies"])
    colours = ["#ffffff", *(STRATEGY_COLOURS.get(s, "#dddddd") for s in strategies)]  # index -1: none feasible
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(-1.5, len(strategies)), cmap.N)
    fig = _figure(15.0, 5.2)
    axes = fig.subplots(1, len(COST_KEYS), sharey=True)
    px, py = entry["profile_point"]
    none_feasible = False
    for ax, cost in zip(axes, COST_KEYS, strict=True):
        best = np.asarray(entry["best"][cost])
        none_feasible |= bool(np.any(best < 0))
        ax.pcolormesh(xs, ys, best, cmap=cmap, norm=norm, shading="nearest")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.plot([px], [py], marker="*", markersize=15, color="#000000", markeredgecolor="#ffffff", linestyle="none")
        ax.set_xlabel(field_label(entry["x_field"]))
        ax.set_title(f"cheapest by {COST_NAMES[cost]}", fontsize=10)
    axes[0].set_ylabel(field_label(entry["y_field"]))
    handles: list[Any] = [Patch(facecolor=c, edgecolor="#333333", label=t) for t, c in strategy_legend(entry)]
    if none_feasible:
        handles.append(Patch(facecolor="#ffffff", edgecolor="#333333", label="no strategy reaches the target"))
    handles.append(
        Line2D(
            [],
            [],
            marker="*",
            markersize=12,
            color="#000000",
            linestyle="none",
            label=f"the profile's own point ({px:.4g}, {py:.4g})",
        )
    )
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=9, frameon=False)
    fig.suptitle(
        f"{report.reported_on} ({report.num_samples} samples): cheapest deployment with accuracy >= "
        f"{_pct(float(entry['target_accuracy']))}, profile {entry['profile']}",
        fontsize=11,
    )
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------ entry
def write_plots(report: Report, records: Mapping[str, np.ndarray], folder: Path) -> list[Path]:
    """Write every PNG of one evaluation into ``folder`` and return the files written (a plot whose inputs the
    records lack, e.g. labels outside CIFAR-100's classes for the superclass confusion, is skipped)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [plot_accuracy(report, "offload_ratio", None, folder / "acc_vs_offload.png")]
    for profile in report.profiles:
        for x in COST_KEYS:
            stem = f"acc_vs_{COST_NAMES[x].replace(' ', '_')}__{profile.name}"
            written.append(plot_accuracy(report, x, profile, folder / f"{stem}.png"))
    for name, draw in (
        ("reliability_generalist", plot_reliability),
        ("expert_load", plot_expert_load),
        ("superclass_confusion", plot_superclass_confusion),
        ("hit_rate_vs_offload", plot_hit_rate),
    ):
        path = draw(report, records, folder / f"{name}.png")
        if path is not None:
            written.append(path)
    for entry in report.break_even:
        written.append(plot_break_even(report, entry, folder / f"break_even__{entry['profile']}.png"))
    return written

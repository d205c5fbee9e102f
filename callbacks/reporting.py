"""Collaborative-inference report (DESIGN section 6): curves, scalars and operating points from per-sample
records, written as CSV/JSON/PNG, logged to W&B and printed as a table.

``compute_report`` is numpy only (core.routing / core.sweep / core.costs do the maths); the writers below only
format its result. Policies (``k = 0`` where a policy does not depend on Top-k):

- ``routed``: offload to the expert chosen from G's Top-k (the progressive experts), one curve per k.
- ``static``: the same routing to the static experts (when given), one curve per k.
- ``base``: offload to the all-class base ("medium") model (when given).
- ``oracle``: offload to the expert that owns the true class.
- ``random``: offload a random subset (same rate sweep) to the routed expert, one curve per k.
- ``generalist_only`` / ``all_offloaded``: the two end points of the routed curves.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.costs import COST_KEYS, Profile, baseline_costs, mean_costs_for_offload_count
from core.errors import RoutingError, SuiteError
from core.routing import random_confidence
from core.sweep import (
    OPERATING_RULES,
    apply_threshold,
    choose_operating_point,
    reductions,
    summarise_curve,
    sweep_thresholds,
)

Records = dict[str, np.ndarray]
CURVE_COLUMNS = ("policy", "k", "confidence", "profile", "tau", "offload_ratio", "accuracy", *COST_KEYS)
RESULT_FILES = ("curves.csv", "summary.json", "records.csv")
# Policies with a curve over tau (the end-point policies are single points).
CURVE_POLICIES = ("routed", "static", "base", "oracle", "random")


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


def near_role(profile: Profile | None, policy: str) -> str:
    """The near-edge latency role an offload of ``policy`` costs: the base model is timed as ``medium`` when
    the profile has it, else as an ``expert`` (same architecture); every other policy runs an expert."""
    if policy == "base" and profile is not None and "medium" in profile.near_edge.latency_ms:
        return "medium"
    return "expert"


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


def _with_costs(
    curve: Mapping[str, np.ndarray], profile: Profile | None, near_model: str
) -> dict[str, np.ndarray]:
    out = dict(curve)
    if profile is not None:
        out.update(mean_costs_for_offload_count(profile, curve["offload_ratio"], "generalist", near_model))
    return out


def compute_report(
    records: Mapping[str, np.ndarray],
    profiles: Sequence[Profile] = (),
    split: str = "val",
    random_seed: int = 0,
    rule: str = "within_gap",
    gap: float = 0.005,
    budget: float | None = None,
    val_points: Sequence[Mapping[str, Any]] | None = None,
) -> Report:
    """Sweep every policy exactly; choose operating points with ``rule`` or, given ``val_points`` (the
    operating points of a val report), apply their thresholds unchanged (the test protocol)."""
    n = len(records.get("label", ()))
    if n == 0:
        raise SuiteError(
            f"The {split} split produced no samples, so there is nothing to evaluate. Check the data folder, "
            "the split and the class selection."
        )
    ks, measures = record_layout(records)
    inputs = policy_inputs(records, random_seed)
    curves = {p.key: sweep_thresholds(p.confidence, p.correct_local, p.correct_offload) for p in inputs}
    scalars = [
        {"policy": p, "k": k, "confidence": m, **summarise_curve(curves[p, k, m])} for p, k, m in curves
    ]
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
                    **choose_operating_point(_with_costs(curve, profile, near), rule, gap, budget),
                }
            elif (*key, pname) in chosen:
                p = by_key[key]
                tau = chosen[(*key, pname)]["tau"]
                applied = apply_threshold(
                    p.confidence, p.correct_local, p.correct_offload, tau, profile, near
                )
                point = {**tag, "chosen_on": "val", **applied}
            else:
                continue
            point["reductions"] = reductions(point, baselines)
            points.append(point)
        for m in measures:
            for k in ks:
                curve = _with_costs(curves["routed", k, m], profile, "expert")
                if k == ks[0]:
                    refs.append(_end_point(curve, 0, "generalist_only", 0, m, pname))
                refs.append(_end_point(curve, -1, "all_offloaded", k, m, pname))
    return Report(split, n, ks, measures, list(profiles), curves, scalars, points, refs)


def _end_point(
    curve: Mapping[str, np.ndarray], i: int, policy: str, k: int, measure: str, profile: str
) -> dict:
    out = {"policy": policy, "k": k, "confidence": measure, "profile": profile}
    for col in CURVE_COLUMNS[4:]:
        out[col] = float(curve[col][i]) if col in curve else math.nan
    return out


def curve_rows(report: Report, max_points: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``curves.csv`` (every threshold; or at most ``max_points`` per curve, for W&B)."""
    rows: list[dict[str, Any]] = []
    for profile in report.profiles or [None]:
        pname = profile.name if profile else ""
        for key, curve in report.curves.items():
            full = _with_costs(curve, profile, near_role(profile, key[0]))
            for i in thin_indices(full["offload_ratio"], max_points):
                row = {"policy": key[0], "k": key[1], "confidence": key[2], "profile": pname}
                row.update({c: float(full[c][i]) if c in full else math.nan for c in CURVE_COLUMNS[4:]})
                rows.append(row)
        rows += [r for r in report.reference_points if r["profile"] == pname]
    return rows


def thin_indices(offload_ratio: np.ndarray, max_points: int | None) -> np.ndarray:
    """Indices of at most ~max_points curve points, evenly spread over the offload ratio, both ends kept."""
    n = len(offload_ratio)
    if max_points is None or n <= max_points:
        return np.arange(n)
    grid = np.searchsorted(offload_ratio, np.linspace(0.0, 1.0, max_points), side="left")
    return np.unique(np.clip(np.concatenate(([0], grid, [n - 1])), 0, n - 1))


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf: they become null, which every JSON reader accepts.
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def summary_dict(report: Report) -> dict[str, Any]:
    """The content of ``summary.json``."""
    return _json_safe(
        {
            "split": report.split,
            "num_samples": report.num_samples,
            "k_values": report.k_values,
            "confidence_measures": report.measures,
            **report.meta,
            "profiles": {
                p.name: {"description": p.description, "baselines": baseline_costs(p)}
                for p in report.profiles
            },
            "scalars": report.scalars,
            "reference_points": report.reference_points,
            "operating_points": report.operating_points,
        }
    )


def record_columns(records: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat per-sample columns for ``records.csv`` (Top-k matrices split per rank, correct flags added)."""
    label = records["label"]
    cols: dict[str, np.ndarray] = {"index": records["index"], "label": label}
    top_c, top_p = records["g_topk_classes"], records["g_topk_probs"]
    cols["g_pred"] = top_c[:, 0]
    cols["g_correct"] = top_c[:, 0] == label
    for r in range(top_c.shape[1]):
        cols[f"g_top{r + 1}_class"], cols[f"g_top{r + 1}_prob"] = top_c[:, r], top_p[:, r]
    for key, value in records.items():
        if key in cols or key.startswith("g_topk"):
            continue
        cols[key] = value
        if key.startswith(("pred_", "static_pred_")):
            cols[key.replace("pred_", "correct_", 1)] = value == label
    return cols


def write_records_csv(records: Mapping[str, np.ndarray], path: Path) -> None:
    cols = record_columns(records)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        as_lists = [v.astype(np.int8).tolist() if v.dtype == bool else v.tolist() for v in cols.values()]
        writer.writerows(zip(*as_lists, strict=True))


def write_curves_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(
            {c: ("" if isinstance(r[c], float) and math.isnan(r[c]) else r[c]) for c in CURVE_COLUMNS}
            for r in rows
        )


def line_label(key: tuple[str, int, str]) -> str:
    policy, k, _ = key
    return f"{policy} k={k}" if k else policy


def chart_lines(
    report: Report, x: str, profile: Profile | None, max_points: int | None = None
) -> dict[str, tuple]:
    """One (xs, ys) line per curve policy of the primary measure (plus random), for plots and W&B charts."""
    primary = report.measures[0]
    lines = {}
    for key, curve in report.curves.items():
        if key[2] not in (primary, "random"):
            continue
        full = _with_costs(curve, profile, near_role(profile, key[0]))
        idx = thin_indices(full["offload_ratio"], max_points)
        lines[line_label(key)] = (full[x][idx], full["accuracy"][idx])
    return lines


CHART_AXES = {
    "offload_ratio": "offload ratio",
    "latency_ms": "mean latency per sample (ms)",
    "edge_energy_mj": "edge energy per sample (mJ)",
    "system_energy_mj": "system energy per sample (mJ)",
}


def chart_specs(report: Report) -> list[tuple[str, str, Profile | None]]:
    """(name, x column, profile) of every accuracy chart: vs offload ratio, and vs each cost per profile."""
    specs: list[tuple[str, str, Profile | None]] = [("acc_vs_offload", "offload_ratio", None)]
    for p in report.profiles:
        specs += [(f"acc_vs_{x.removesuffix('_ms').removesuffix('_mj')}/{p.name}", x, p) for x in COST_KEYS]
    return specs


def write_plots(report: Report, folder: Path) -> list[Path]:
    """PNG line charts (one line per policy) into ``folder``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, x, profile in chart_specs(report):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, (xs, ys) in chart_lines(report, x, profile).items():
            ax.plot(xs, ys, label=label, linestyle="--" if label.startswith("random") else "-", linewidth=1.2)
        if profile is not None:
            for bname, costs in baseline_costs(profile).items():
                ax.axvline(costs[x], color="grey", linestyle=":", linewidth=0.8)
                ax.annotate(bname, (costs[x], ax.get_ylim()[0]), rotation=90, fontsize=7, color="grey")
        ax.set_xlabel(CHART_AXES[x])
        ax.set_ylabel("accuracy")
        ax.set_title(
            f"{report.split}: accuracy vs {CHART_AXES[x]}" + (f" ({profile.name})" if profile else "")
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = folder / (name.replace("/", "__") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_outputs(report: Report, records: Mapping[str, np.ndarray], folder: Path) -> dict[str, Path]:
    """Write curves.csv, summary.json, records.csv and plots/*.png into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in RESULT_FILES}
    write_curves_csv(curve_rows(report), paths["curves.csv"])
    paths["summary.json"].write_text(json.dumps(summary_dict(report), indent=2))
    write_records_csv(records, paths["records.csv"])
    write_plots(report, folder / "plots")
    return paths


def wandb_payload(report: Report, max_points: int = 200) -> tuple[dict[str, Any], dict[str, Any]]:
    """(history entries: the curves table and line charts; summary scalars) under ``collab_<split>/``."""
    import wandb

    prefix = f"collab_{report.split}"
    rows = curve_rows(report, max_points)
    table = wandb.Table(columns=list(CURVE_COLUMNS), data=[[r[c] for c in CURVE_COLUMNS] for r in rows])
    history: dict[str, Any] = {f"{prefix}/curves": table}
    for name, x, profile in chart_specs(report):
        lines = chart_lines(report, x, profile, max_points)
        history[f"{prefix}/{name}"] = wandb.plot.line_series(
            xs=[xs.tolist() for xs, _ in lines.values()],
            ys=[ys.tolist() for _, ys in lines.values()],
            keys=list(lines),
            title=f"{report.split}: accuracy vs {CHART_AXES[x]}" + (f" ({profile.name})" if profile else ""),
            xname=CHART_AXES[x],
        )
    summary: dict[str, Any] = {f"{prefix}/num_samples": report.num_samples}
    for key, value in report.meta.items():
        if isinstance(value, (int, float)):
            summary[f"{prefix}/{key}"] = value
        elif isinstance(value, dict):
            summary.update(
                {f"{prefix}/{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))}
            )
    for s in report.scalars:
        base = f"{prefix}/{s['policy']}/k{s['k']}/{s['confidence']}"
        summary.update(
            {f"{base}/{name}": v for name, v in s.items() if name not in ("policy", "k", "confidence")}
        )
    for p in report.operating_points:
        where = f"{p['policy']}/k{p['k']}/{p['confidence']}/{p['profile'] or 'no_profile'}"
        base = f"{prefix}/operating_point/{where}"
        summary.update({f"{base}/{c}": p[c] for c in CURVE_COLUMNS[4:]})
        for bname, red in p["reductions"].items():
            summary.update({f"{base}/reduction_vs_{bname}/{c}": v for c, v in red.items()})
    return history, _json_safe(summary)


def rich_table(report: Report) -> Any:
    """A rich Table: one row per curve (policy, k, confidence): key scalars and the operating point."""
    from rich.table import Table

    profile = report.profiles[0].name if report.profiles else ""
    points = {
        (p["policy"], p["k"], p["confidence"]): p for p in report.operating_points if p["profile"] == profile
    }
    title = f"Collaborative inference on {report.split} ({report.num_samples} samples)"
    table = Table(title=title + (f", costs: {profile}" if profile else ""))
    columns = ["policy", "k", "conf", "acc G", "acc all-off", "acc@10%", "acc@20%", "acc@30%", "acc@50%"]
    columns += ["AUC", "off@99%", "op tau", "op off", "op acc", "lat red.*", "edge E red.*"]
    table.caption = "op = operating point chosen on val; red.* = reduction vs the edge-only medium model"
    for c in columns:
        table.add_column(c, justify="left" if c in ("policy", "conf") else "right", no_wrap=True)

    def fmt(v: Any, pct: bool = False) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    for s in report.scalars:
        p = points.get((s["policy"], s["k"], s["confidence"]), {})
        red = p.get("reductions", {}).get("edge_medium", {})
        table.add_row(
            s["policy"],
            str(s["k"]),
            s["confidence"],
            fmt(s["acc_local_only"], True),
            fmt(s["acc_all_offloaded"], True),
            *(fmt(s[f"acc@{r}%"], True) for r in (10, 20, 30, 50)),
            fmt(s["auc_norm"]),
            fmt(s["offload_for_99%"], True),
            fmt(p.get("tau")),
            fmt(p.get("offload_ratio"), True),
            fmt(p.get("accuracy"), True),
            fmt(red.get("latency_ms"), True),
            fmt(red.get("edge_energy_mj"), True),
        )
    return table


def check_report_inputs(rule: str, gap: float, budget: float | None) -> None:
    """Fail before any model runs when the operating-point settings are unusable (core.sweep rechecks)."""
    if rule not in OPERATING_RULES:
        raise RoutingError(f"Unknown operating-point rule {rule!r}. Use one of {', '.join(OPERATING_RULES)}.")
    if rule == "within_gap" and not gap >= 0:
        raise RoutingError(f"gap must be >= 0 (accuracy units, 0.005 = 0.5 points), got {gap!r}.")
    if rule != "within_gap" and budget is None:
        raise RoutingError(
            f"The operating-point rule {rule!r} needs a budget (ms for latency, mJ for energy)."
        )

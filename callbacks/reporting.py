"""Writers of a collaborative-inference report (core.policies.Report): CSV/JSON/PNG files, the W&B payload and
the rich table printed in the terminal. Every number is computed in core.policies; this module only formats."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.costs import COST_KEYS, Profile, baseline_costs
from core.policies import Report

CURVE_COLUMNS = ("policy", "k", "confidence", "profile", "tau", "offload_ratio", "accuracy", *COST_KEYS)
RESULT_FILES = ("curves.csv", "summary.json", "records.csv")
COMPLETE_FILE = "complete.json"


def curve_rows(report: Report, max_points: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``curves.csv`` (every threshold; or at most ``max_points`` per curve, for W&B)."""
    rows: list[dict[str, Any]] = []
    for profile in report.profiles or [None]:
        pname = profile.name if profile else ""
        for key in report.curves:
            full = report.curve_with_costs(key, profile)
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
                p.name: {"description": p.description, "baselines": baseline_costs(p)} for p in report.profiles
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
            {c: ("" if isinstance(r[c], float) and math.isnan(r[c]) else r[c]) for c in CURVE_COLUMNS} for r in rows
        )


def line_label(key: tuple[str, int, str]) -> str:
    policy, k, _ = key
    return f"{policy} k={k}" if k else policy


def chart_lines(report: Report, x: str, profile: Profile | None, max_points: int | None = None) -> dict[str, tuple]:
    """One (xs, ys) line per curve policy of the primary measure (plus random), for plots and W&B charts."""
    primary = report.measures[0]
    lines = {}
    for key in report.curves:
        if key[2] not in (primary, "random"):
            continue
        full = report.curve_with_costs(key, profile)
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
        ax.set_title(f"{report.split}: accuracy vs {CHART_AXES[x]}" + (f" ({profile.name})" if profile else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = folder / (name.replace("/", "__") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_outputs(report: Report, records: Mapping[str, np.ndarray], folder: Path) -> Path:
    """Write curves.csv, summary.json, records.csv, plots/*.png and, last, complete.json into ``folder``.

    Everything is written into a temporary sibling folder that replaces ``folder`` only when complete, so a killed
    run leaves either the previous results or none, never a mix (``complete.json`` says the folder is whole).
    """
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_curves_csv(curve_rows(report), tmp / "curves.csv")
    (tmp / "summary.json").write_text(json.dumps(summary_dict(report), indent=2))
    write_records_csv(records, tmp / "records.csv")
    plots = write_plots(report, tmp / "plots")
    files = [*RESULT_FILES, *(f"plots/{p.name}" for p in plots)]
    marker = {"split": report.split, "num_samples": report.num_samples, "files": files}
    (tmp / COMPLETE_FILE).write_text(json.dumps(marker, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds finished results (its completion marker, written last, lists files present)."""
    marker = folder / COMPLETE_FILE
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((folder / f).is_file() for f in files)


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
            summary.update({f"{prefix}/{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
    for s in report.scalars:
        base = f"{prefix}/{s['policy']}/k{s['k']}/{s['confidence']}"
        summary.update({f"{base}/{name}": v for name, v in s.items() if name not in ("policy", "k", "confidence")})
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
    points = {(p["policy"], p["k"], p["confidence"]): p for p in report.operating_points if p["profile"] == profile}
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

"""The evaluation results store: the one module that owns an evaluation folder's format (``records.csv``,
``curves.csv``, ``summary.json``, ``plots/`` and the completion marker ``complete.json``), writes it
(``write_outputs``), reads it back (``read_evaluation``, ``read_summary``, ``is_complete``) and declares the W&B metric
names an evaluation logs under (``curve_metric``, ``scalar_metric``, ...), with the W&B payload and the rich tables
printed in the terminal. ate-compare and the pipeline read evaluation folders only through here; nothing parses a
metric name back. Every number is computed in ask_the_expert.method (a ``Report``); this module only formats.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ask_the_expert.method.costs import COST_KEYS, baseline_costs
from ask_the_expert.method.deferral import FEATURE_NAMES
from ask_the_expert.method.findings import points_text, value_text
from ask_the_expert.method.policies import Fitted, Report
from ask_the_expert.method.routed_batch import FUSE_WEIGHTS
from ask_the_expert.method.sweep import TOLERANCE as SWEEP_SLACK
from ask_the_expert.results.plots import write_plots
from ask_the_expert.utils.atomic import atomic_folder
from ask_the_expert.utils.errors import SuiteError

# ---------------------------------------------------------------------------------------------- the folder format
CURVES_FILE = "curves.csv"
SUMMARY_FILE = "summary.json"
RECORDS_FILE = "records.csv"
PLOTS_FOLDER = "plots"
COMPLETE_FILE = "complete.json"  # written last: it lists the files of a whole folder
RESULT_FILES = (CURVES_FILE, SUMMARY_FILE, RECORDS_FILE)
SPLITS = ("val", "test")
CURVE_COLUMNS = ("policy", "k", "confidence", "profile", "tau", "offload_ratio", "accuracy", *COST_KEYS)


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
    # JSON has no NaN/inf: they become null, which every JSON reader accepts. numpy arrays become (nested) lists,
    # tuples lists, numpy scalars Python numbers.
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def summary_dict(report: Report) -> dict[str, Any]:
    """The content of ``summary.json`` (the documented output interface: docs/evaluation-outputs.md, "Output files")."""
    return _json_safe(
        {
            "split": report.split,
            "reported_on": report.reported_on,
            "num_samples": report.num_samples,
            "k_values": report.k_values,
            "confidence_measures": report.measures,
            **report.meta,
            "protocol": report.protocol,
            "primary_family": report.family.to_dict(),
            "profiles": {
                p.name: {"description": p.description, "baselines": baseline_costs(p)} for p in report.profiles
            },
            "references": report.references,
            "hit_rates": {str(k): v for k, v in report.hit_rates.items()},
            "fitted": report.fitted.to_dict(),
            "scalars": report.scalars,
            "reference_points": report.reference_points,
            "operating_points": report.operating_points,
            "up_to_reductions": report.up_to,
            "findings": [f.to_dict() for f in report.findings],
            # The per-strategy cost grids are left out (S x cost x grid floats); the cheapest strategy per grid
            # cell ("best"), feasibility and accuracies are kept.
            "break_even": [{k: v for k, v in entry.items() if k != "costs"} for entry in report.break_even],
        }
    )


# 2-D record arrays other than G's Top-k, and how their columns are named: "<key>.<suffix>".
def _matrix_suffixes(key: str, width: int) -> list[str]:
    if key == "g_features":
        return list(FEATURE_NAMES)
    if key.startswith("fused_k"):
        return [f"w{w:g}" for w in FUSE_WEIGHTS]
    return [str(i) for i in range(width)]


def record_columns(records: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat per-sample columns for ``records.csv``: G's Top-k split per rank, other matrices one column per entry
    (``g_features.<feature>``, ``fused_k<k>.w<weight>``), and a ``correct_*`` flag next to every prediction."""
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
        if value.ndim == 2:
            cols.update({f"{key}.{sfx}": value[:, i] for i, sfx in enumerate(_matrix_suffixes(key, value.shape[1]))})
            continue
        cols[key] = value
        if "pred_" in key:
            cols[key.replace("pred_", "correct_", 1)] = value == label
    return cols


def write_records_csv(records: Mapping[str, np.ndarray], path: Path) -> None:
    cols = record_columns(records)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        as_lists = [v.astype(np.int8).tolist() if v.dtype == bool else v.tolist() for v in cols.values()]
        writer.writerows(zip(*as_lists, strict=True))


def read_records_csv(path: str | Path) -> dict[str, np.ndarray]:
    """The records of a ``records.csv`` (the inverse of ``record_columns``, without the derived columns)."""
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if not header or not rows:
        raise ValueError("the file holds no header line" if not header else "the file holds no records")
    table = {name: [r[i] for r in rows] for i, name in enumerate(header)}

    def array(values: list[str], floating: bool) -> np.ndarray:
        return np.asarray(values, dtype=np.float32 if floating else np.int64)

    records: dict[str, np.ndarray] = {"index": array(table["index"], False), "label": array(table["label"], False)}
    ranks = sorted(
        int(n[len("g_top") : -len("_class")]) for n in header if n.startswith("g_top") and n.endswith("_class")
    )
    records["g_topk_classes"] = np.stack([array(table[f"g_top{r}_class"], False) for r in ranks], axis=1)
    records["g_topk_probs"] = np.stack([array(table[f"g_top{r}_prob"], True) for r in ranks], axis=1)
    matrices: dict[str, list[str]] = {}
    for name in header:
        if name in ("index", "label", "g_pred", "g_correct") or name.startswith(("g_top", "correct_")):
            continue
        if "correct_" in name and name.replace("correct_", "pred_", 1) in table:
            continue
        if "." in name:
            matrices.setdefault(name.split(".", 1)[0], []).append(name)
            continue
        records[name] = array(table[name], name.startswith(("conf_", "g_max_prob")))
    for key, names in matrices.items():
        records[key] = np.stack([array(table[n], key == "g_features") for n in names], axis=1)
    return records


def write_curves_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(
            {c: ("" if isinstance(r[c], float) and math.isnan(r[c]) else r[c]) for c in CURVE_COLUMNS} for r in rows
        )


def write_outputs(report: Report, records: Mapping[str, np.ndarray], folder: Path) -> Path:
    """Write curves.csv, summary.json, records.csv (every record given, with its ``part`` of the split), plots/*.png
    (of the records the report is on) and, last, complete.json into ``folder``.

    Everything is written into a temporary sibling folder that replaces ``folder`` only when complete, so a killed
    run leaves either the previous results or none, never a mix (``complete.json`` says the folder is whole).
    """
    with atomic_folder(folder) as tmp:
        write_curves_csv(curve_rows(report), tmp / CURVES_FILE)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary_dict(report), indent=2))
        write_records_csv(records if report.parts is None else {**records, "part": report.parts}, tmp / RECORDS_FILE)
        plots = write_plots(report, report.reported_records(records), tmp / PLOTS_FOLDER)
        files = [*RESULT_FILES, *(f"{PLOTS_FOLDER}/{p.name}" for p in plots)]
        marker = {"split": report.split, "num_samples": report.num_samples, "files": files}
        (tmp / COMPLETE_FILE).write_text(json.dumps(marker, indent=2))
    return folder


# --------------------------------------------------------------------------------------------------- reading back
def _listed_files(folder: Path) -> list[str] | None:
    """The files the completion marker of ``folder`` lists, None without a readable marker."""
    try:
        files = json.loads((Path(folder) / COMPLETE_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(f) for f in files] if isinstance(files, list) else None


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds finished results (its completion marker, written last, lists files present)."""
    files = _listed_files(folder)
    return files is not None and all((Path(folder) / f).is_file() for f in files)


def plot_files(folder: Path) -> list[Path]:
    """The PNGs of a finished results folder, as its completion marker lists them."""
    return [Path(folder) / f for f in _listed_files(folder) or [] if f.endswith(".png")]


def require_complete(folder: Path) -> None:
    """Refuse a folder that is not a finished evaluation split folder (ate-evaluate's OUT/<split>/)."""
    folder = Path(folder)
    missing = [n for n in (RECORDS_FILE, SUMMARY_FILE, COMPLETE_FILE) if not (folder / n).is_file()]
    if folder.is_dir() and not missing and is_complete(folder):
        return
    hint = ""
    if folder.is_dir() and any((folder / s / COMPLETE_FILE).is_file() for s in SPLITS):
        hint = f" It holds evaluation splits: pass {folder / 'val'} or {folder / 'test'}."
    what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing) or 'files its marker lists'}"
    raise SuiteError(
        f"{str(folder)!r} is not a finished evaluation folder: it {what}. Pass the split folders ate-evaluate "
        f"writes (OUT/val or OUT/test, with {RECORDS_FILE}, {SUMMARY_FILE} and {COMPLETE_FILE}).{hint}"
    )


def read_summary(folder: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished evaluation folder (``require_complete`` first)."""
    require_complete(folder)
    try:
        summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
    except (OSError, ValueError) as err:
        raise SuiteError(f"{str(Path(folder) / SUMMARY_FILE)!r} is not a readable summary ({err}).") from None
    if not isinstance(summary, dict):
        raise SuiteError(f"{str(Path(folder) / SUMMARY_FILE)!r} is not a summary (a JSON object).")
    return summary


@dataclass(frozen=True)
class EvaluationResults:
    """A finished evaluation folder as read back: its summary and its per-sample records."""

    folder: Path
    summary: dict[str, Any]
    records: dict[str, np.ndarray]

    @property
    def split(self) -> str:
        return str(self.summary.get("split", "?"))

    @property
    def measures(self) -> list[str]:
        """The confidence measures evaluated, the primary one first."""
        return [str(m) for m in self.summary.get("confidence_measures") or []]

    @property
    def fitted(self) -> Fitted | None:
        """What the evaluation fitted on val and applied (summary.json's ``fitted``), None when absent."""
        raw = self.summary.get("fitted")
        return Fitted.from_dict(raw) if isinstance(raw, Mapping) else None

    @property
    def records_file(self) -> Path:
        return self.folder / RECORDS_FILE


def read_evaluation(folder: Path) -> EvaluationResults:
    """Read a finished evaluation folder: its summary and its records (``read_records_csv``)."""
    folder = Path(folder)
    summary = read_summary(folder)
    try:
        records = read_records_csv(folder / RECORDS_FILE)
    except (KeyError, ValueError, IndexError) as err:
        raise SuiteError(f"{str(folder / RECORDS_FILE)!r} is not a readable records file ({err}).") from None
    return EvaluationResults(folder, summary, records)


# ------------------------------------------------------------------------------------------------ W&B metric names
# Every name an evaluation logs is built here, from what it is; readers build the names they look for the same way.
# One scheme for every writer: the evaluation callback and ate-evaluate (wandb_payload), the pipeline's summary run
# (the mean across seeds under the same scalar_metric names), a sweep's objective (configs/sweeps/) and
# ate-compare --wandb_runs; so one metric shares a W&B panel across all of them. Apart from the training runs' own
# val/... metrics and the forward counts, every name starts with collab_<split>/.
def metric_prefix(split: str) -> str:
    """The namespace of one evaluated split: ``collab_<split>``."""
    return f"collab_{split}"


def offload_step_metric(split: str) -> str:
    """The x axis of the grid curves: ``collab_<split>/offload_pct``."""
    return f"{metric_prefix(split)}/offload_pct"


def forward_count_metric(model_set: str) -> str:
    """Forwards one model set ran in an evaluation: ``eval/<set>_forwards``."""
    return f"eval/{model_set}_forwards"


def scalar_metric(split: str, policy: str, k: int, measure: str, scalar: str) -> str:
    """A curve's summary scalar: ``collab_<split>/<policy>/k<k>/<measure>/<scalar>``."""
    return f"{metric_prefix(split)}/{policy}/k{k}/{measure}/{scalar}"


def _metric_part(text: str) -> str:
    # W&B nests history keys at "." (a profile called "a.b" would become two levels): keep names flat.
    return str(text).replace(".", "_")


def curve_metric(split: str, key: tuple[str, int, str], column: str, profile: str | None = None) -> str:
    """W&B history name of one curve column: ``collab_<split>/curves/<policy>_k<k>_<measure>/<column>[/<profile>]``
    (k = 0 for the policies without Top-k), so that one name means the same curve in every run."""
    policy, k, measure = key
    name = f"{metric_prefix(split)}/curves/{policy}_k{k}_{_metric_part(measure)}/{column}"
    return f"{name}/{_metric_part(profile)}" if profile else name


def operating_point_metric(split: str, point: Mapping[str, Any], column: str) -> str:
    """A column of a val operating point (``column`` may be ``reduction_vs_<baseline>/<cost>``):
    ``collab_<split>/operating_point/<policy>/k<k>/<measure>/<profile or no_profile>/<column>``."""
    where = f"{point['policy']}/k{point['k']}/{point['confidence']}/{point['profile'] or 'no_profile'}"
    return f"{metric_prefix(split)}/operating_point/{where}/{column}"


# W&B curves: every curve resampled on offload levels 0, 1, ..., 100 % (history rows against this step metric).
OFFLOAD_GRID_PCT = np.arange(101)
FINDING_COLUMNS = ("family", "member", "group", "claim", "a_label", "b_label", "a", "b", "difference", "low", "high")
FINDING_COLUMNS += ("level", "p_value", "p_adjusted", "verdict", "unit")
SCALAR_KEY = ("policy", "k", "confidence")  # the columns of a scalars row that name its curve


def grid_indices(offload_ratio: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per grid level, the curve point with the largest offload ratio <= the level
    (ask_the_expert.method.sweep.accuracy_at_offload's rule, with its slack), so a grid value never exceeds its offload
    budget."""
    x = np.asarray(offload_ratio, dtype=np.float64)
    return np.searchsorted(x, np.asarray(grid, dtype=np.float64) + SWEEP_SLACK, side="right") - 1


def curves_on_grid(report: Report, grid_pct: np.ndarray = OFFLOAD_GRID_PCT) -> dict[str, np.ndarray]:
    """Every curve's accuracy and, per profile, its mean costs at the offload levels ``grid_pct`` (in %), by W&B
    metric name (``curve_metric``)."""
    grid = np.asarray(grid_pct, dtype=np.float64) / 100.0
    out: dict[str, np.ndarray] = {}
    for key, curve in report.curves.items():
        idx = grid_indices(curve["offload_ratio"], grid)
        out[curve_metric(report.split, key, "accuracy")] = np.asarray(curve["accuracy"], dtype=np.float64)[idx]
        for profile in report.profiles:
            costed = report.curve_with_costs(key, profile)
            for c in COST_KEYS:
                out[curve_metric(report.split, key, c, profile.name)] = np.asarray(costed[c], dtype=np.float64)[idx]
    return out


@dataclass
class WandbPayload:
    """What one evaluation logs to W&B (``log_wandb``): ``media`` (the exact curves table, the findings table and
    the plots) in one history row; ``rows``, the curves on the offload grid, one history row per level against
    ``step_metric``; the metrics of those rows (``curve_metrics``, also matched by ``curve_glob``); the summary."""

    step_metric: str
    curve_glob: str
    curve_metrics: list[str]
    media: dict[str, Any]
    rows: list[dict[str, float]]
    summary: dict[str, Any]


def wandb_payload(report: Report, max_points: int = 200, plots: Sequence[Path] = ()) -> WandbPayload:
    """The W&B content of a report under ``collab_<split>/``:

    - ``offload_pct`` (the step metric) and ``curves/<policy>_k<k>_<measure>/accuracy`` and
      ``.../{latency_ms,edge_energy_mj,system_energy_mj}/<profile>``: every curve on offload levels 0..100 % in
      1 % steps (``curves_on_grid``), one history row per level, so that runs overlay in W&B's native line plots;
    - ``curves``: the curves.csv rows as a wandb.Table, thinned to about ``max_points`` points per curve;
    - ``findings``: the findings as a wandb.Table; ``plots/<name>``: each PNG of ``plots`` as a wandb.Image;
    - summary scalars ``<policy>/k<k>/<measure>/<scalar>``, the operating points and their reductions, the
      reference accuracies, the hit rates, the sizes of val's parts (``parts/<part>``), the primary family's
      difference and Holm-corrected verdict per member (``primary/<member>/...``) and the numeric metadata
      (forwards, temperature, ...).
    """
    import wandb

    split = report.split
    prefix = metric_prefix(split)
    rows = curve_rows(report, max_points)
    media: dict[str, Any] = {
        f"{prefix}/curves": wandb.Table(columns=list(CURVE_COLUMNS), data=[[r[c] for c in CURVE_COLUMNS] for r in rows])
    }
    findings = [_json_safe([f.to_dict()[c] for c in FINDING_COLUMNS]) for f in report.findings]
    media[f"{prefix}/findings"] = wandb.Table(columns=list(FINDING_COLUMNS), data=findings)
    for path in plots:
        name = Path(path).stem
        media[f"{prefix}/plots/{name}"] = wandb.Image(str(path), caption=f"{report.split}: {name}")
    step = offload_step_metric(split)
    grid = curves_on_grid(report)
    history = [
        {step: int(level), **{name: float(values[i]) for name, values in grid.items()}}
        for i, level in enumerate(OFFLOAD_GRID_PCT)
    ]
    summary: dict[str, Any] = {f"{prefix}/num_samples": report.num_samples}
    for key, value in report.meta.items():
        if isinstance(value, (int, float)):
            summary[f"{prefix}/{key}"] = value
        elif isinstance(value, dict):
            summary.update({f"{prefix}/{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
    summary.update({f"{prefix}/parts/{name}": v for name, v in report.protocol.get("sizes", {}).items()})
    for f in report.findings:
        if f.family == "primary":  # the declared family's Holm-corrected verdicts; the table has every finding
            summary.update({f"{prefix}/primary/{f.member}/{key}": getattr(f, key) for key in ("difference", "verdict")})
    summary.update({f"{prefix}/references/{name}": v for name, v in report.references.items()})
    summary.update({f"{prefix}/hit_rate/k{k}": v for k, v in report.hit_rates.items()})
    for s in report.scalars:
        key = (s["policy"], s["k"], s["confidence"])
        summary.update({scalar_metric(split, *key, name): v for name, v in s.items() if name not in SCALAR_KEY})
    for p in report.operating_points:
        summary.update({operating_point_metric(split, p, c): p[c] for c in CURVE_COLUMNS[4:]})
        for bname, red in p["reductions"].items():
            summary.update({operating_point_metric(split, p, f"reduction_vs_{bname}/{c}"): v for c, v in red.items()})
    return WandbPayload(step, f"{prefix}/curves/*", list(grid), media, history, _json_safe(summary))


def log_wandb(run: Any, payload: WandbPayload) -> None:
    """Log a payload into a W&B run: declare the step metric and the curve metrics first, then the media row, the
    grid rows and the summary.

    Every curve metric is also declared by name: W&B's backend matches a history key against the declared globs in
    no fixed order, so the logger's catch-all ``*`` (step ``trainer/global_step``) could otherwise win over
    ``collab_<split>/curves/*``. ``summary="none"``: a curve's last grid row (100 % offloaded) is no summary.
    """
    run.define_metric(payload.step_metric)
    run.define_metric(payload.curve_glob, step_metric=payload.step_metric, summary="none")
    for name in payload.curve_metrics:
        run.define_metric(name, step_metric=payload.step_metric, summary="none")
    run.log(payload.media)
    for row in payload.rows:
        run.log(row)
    run.summary.update(payload.summary)


def findings_table(report: Report) -> Any:
    """A rich Table of the findings, the primary family first: family, claim, both values, the difference with its
    interval (at the Holm level for the primary family, 95 % otherwise), the verdict."""
    from rich.table import Table

    resamples = report.meta.get("bootstrap", {}).get("resamples")
    title = f"Findings on {report.reported_on} ({report.num_samples} samples): a - b with paired-bootstrap intervals"
    table = Table(title=title + (f" ({resamples} resamples)" if resamples else ""))
    table.caption = (
        f"primary: the declared family (k={report.family.k}, offload {report.family.offload:.0%}), Holm-corrected at "
        f"alpha {report.family.alpha}; exploratory: uncorrected 95 %. holds: the interval excludes 0 in the claimed "
        "direction; fails: it excludes 0 the other way"
    )
    for c in ("family", "group", "claim", "a", "b", "difference [interval, level]", "verdict"):
        table.add_column(c, justify="right" if c.startswith("difference") else "left", overflow="fold")
    colours = {"holds": "green", "fails": "red"}

    for f in sorted(report.findings, key=lambda f: f.family != "primary"):
        interval = f"[{points_text(f.low, f.unit)}, {points_text(f.high, f.unit)}] {100 * f.level:.1f} %"
        colour = colours.get(f.verdict, "yellow")
        table.add_row(
            f.family,
            f.group,
            f.claim,
            f"{f.a_label}: {value_text(f.a, f.unit)}",
            f"{f.b_label}: {value_text(f.b, f.unit)}",
            f"{points_text(f.difference, f.unit)} pts {interval}",
            f"[{colour}]{f.verdict}[/]",
        )
    return table


def rich_table(report: Report) -> Any:
    """A rich Table: one row per curve (policy, k, confidence): key scalars and the operating point."""
    from rich.table import Table

    profile = report.profiles[0].name if report.profiles else ""
    points = {(p["policy"], p["k"], p["confidence"]): p for p in report.operating_points if p["profile"] == profile}
    title = f"Collaborative inference on {report.reported_on} ({report.num_samples} samples)"
    table = Table(title=title + (f", costs: {profile}" if profile else ""))
    columns = ["policy", "k", "conf", "acc G", "acc all-off", "acc@10%", "acc@20%", "acc@30%", "acc@50%"]
    columns += ["area gain", "area norm", "op tau", "op off", "op acc", "lat red.*", "edge E red.*"]
    table.caption = (
        "area gain: mean accuracy over offload 0..100 % minus G's, in points; area norm: on the scale shared by all "
        f"policies (0 = G alone, 1 = oracle all offloaded); op = operating point chosen on "
        f"{report.protocol.get('chosen_on', 'val')}, its values on {report.reported_on}; red.* = reduction vs the "
        "edge-only medium model"
    )
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
            f"{s['area_gain_pts']:+.2f}",
            fmt(s["area_norm"]),
            fmt(p.get("tau")),
            fmt(p.get("offload_ratio"), True),
            fmt(p.get("accuracy"), True),
            fmt(red.get("latency_ms"), True),
            fmt(red.get("edge_energy_mj"), True),
        )
    return table

"""Compare finished evaluations (ate-evaluate's ``OUT/<split>/`` folders) curve by curve, with 95 % intervals.

    ate-compare --runs '[results/a/seed_0/eval/val, results/b/seed_0/eval/val]' [--labels '[a, b]'] \\
        --out compare/ [--policies '[routed, fused, base]'] [--bootstrap 1000] [--wandb_runs '[entity/project/id]']

Each folder's ``records.csv`` and ``summary.json`` are read and every curve is recomputed with
ask_the_expert.method.policies (``policy_inputs``, with the fitted fused weights and deferral rules of ``summary.json``;
see ``load_run``). For each policy, k and confidence measure present in every run, and each statistic (area gain,
accuracy at 10/20/30/50 % offload, all offloaded), and for the routing hit rate at each k (policy ``routing``: the share
of samples whose chosen expert owns the true class, which compares partitions), the outputs give each run's value and
the difference of every run against the first with a 95 % bootstrap interval: PAIRED (the same resample counts applied
to both runs) when the two runs' records hold the same samples (identical ``index`` and ``label`` arrays), otherwise
UNPAIRED (independent resamples of each run), marked "unpaired". The verdict is ask_the_expert.method.findings': "holds"
when the interval lies above 0 (the run is above the first), "fails" when below, else "not established".

Outputs (written under a temporary name, renamed when complete): ``OUT/compare.csv`` (one row per curve, statistic
and run), ``OUT/compare.md``, ``OUT/compare.json`` (the inputs and their pairing) and ``OUT/plots/<policy>.png`` (one
line per run and k, the primary confidence measure); the table is also printed. Bad input (a folder that is not a
finished evaluation, fewer than two runs, labels of the wrong length, fewer than 100 resamples, an unknown policy,
an existing --out without --force) ends with a one-paragraph message and exit code 2; nothing is written.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ask_the_expert.method.findings import points_text, value_text
from ask_the_expert.method.policies import (
    LEARNED,
    POLICIES,
    PolicyData,
    policy_inputs,
    record_layout,
    routing_hits,
)
from ask_the_expert.method.router import RANDOM
from ask_the_expert.method.stats import (
    MIN_RESAMPLES,
    accuracy_at,
    area_gain,
    interval,
    resample_counts,
    weighted_curves,
)
from ask_the_expert.results.evaluation_outputs import (
    EvaluationResults,
    curve_metric,
    offload_step_metric,
    read_evaluation,
    require_complete,
)
from ask_the_expert.results.plots import k_linestyle, percent_axis
from ask_the_expert.tracking.wandb_logger import has_wandb_credentials
from ask_the_expert.utils.atomic import atomic_folder
from ask_the_expert.utils.cli import run_cli
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.hashing import file_sha256
from ask_the_expert.utils.log_output import log_console

Key = tuple[str, int, str]
# (name, unit, function of the (B, M) resampled curves x, y -> (B,)); names as in summary.json's scalars.
STATISTICS: tuple[tuple[str, str, Any], ...] = (
    ("area_gain_pts", "points", lambda x, y: 100.0 * area_gain(x, y)),
    ("acc@10%", "accuracy", lambda x, y: accuracy_at(x, y, 0.1)),
    ("acc@20%", "accuracy", lambda x, y: accuracy_at(x, y, 0.2)),
    ("acc@30%", "accuracy", lambda x, y: accuracy_at(x, y, 0.3)),
    ("acc@50%", "accuracy", lambda x, y: accuracy_at(x, y, 0.5)),
    ("acc_all_offloaded", "accuracy", lambda x, y: y[:, -1]),
)
CSV_COLUMNS = ("policy", "k", "confidence", "statistic", "unit", "run", "value", "vs", "difference", "low", "high")
CSV_COLUMNS += ("pairing", "verdict")
# Resample rows processed at once: weighted_curves holds a few (rows, N) arrays, so memory stays bounded.
CHUNK = 250
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Run:
    """One evaluation folder as read back (ask_the_expert.results.evaluation_outputs) and the sweep inputs recomputed
    from it."""

    label: str
    results: EvaluationResults
    inputs: dict[Key, PolicyData]
    curves: dict[Key, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.results.folder

    @property
    def records(self) -> dict[str, np.ndarray]:
        return self.results.records

    @property
    def summary(self) -> dict[str, Any]:
        return self.results.summary

    @property
    def split(self) -> str:
        return self.results.split

    @property
    def primary(self) -> str:
        return (self.results.measures or [k[2] for k in self.inputs])[0]


# ----------------------------------------------------------------------------------------------------- inputs
def default_labels(folders: Sequence[Path]) -> list[str]:
    """Short labels: the path parts that differ between the folders (leading and trailing common parts removed)."""
    parts = [Path(f).resolve().parts for f in folders]
    lead = 0
    while all(len(p) > lead for p in parts) and len({p[lead] for p in parts}) == 1:
        lead += 1
    trail = 0
    while all(len(p) - lead > trail for p in parts) and len({p[len(p) - 1 - trail] for p in parts}) == 1:
        trail += 1
    labels = ["/".join(p[lead : len(p) - trail]) for p in parts]
    return labels if all(labels) and len(set(labels)) == len(labels) else [f"run{i}" for i in range(len(folders))]


def check_arguments(
    runs: Sequence[str], labels: Sequence[str] | None, bootstrap: int, policies: Sequence[str] | None, out: Path
) -> list[str]:
    """Check the command line before reading anything heavy; returns the run labels."""
    if len(runs) < 2:
        raise SuiteError(f"compare needs at least 2 evaluation folders in --runs, got {len(runs)}.")
    if labels is not None and len(labels) != len(runs):
        raise SuiteError(
            f"--labels has {len(labels)} entries for {len(runs)} runs; give one label per run, in the same order, or "
            "leave --labels out."
        )
    names = list(labels) if labels is not None else default_labels([Path(r) for r in runs])
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise SuiteError(f"The run labels must be distinct and non-empty, got {names}.")
    if bootstrap < MIN_RESAMPLES:
        raise SuiteError(f"--bootstrap must be >= {MIN_RESAMPLES} resamples for a 95 % interval, got {bootstrap}.")
    unknown = sorted(set(policies or ()) - set(POLICIES))
    if unknown:
        raise SuiteError(f"Unknown policies {unknown} in --policies; the curve policies are {list(POLICIES)}.")
    for r in runs:
        require_complete(Path(r))
    resolved = {Path(r).resolve() for r in runs}
    if out.resolve() in resolved or any(p in out.resolve().parents for p in resolved):
        raise SuiteError(f"--out {str(out)!r} lies inside an evaluation folder; choose a folder of its own.")
    return names


def load_run(folder: Path, label: str, random_seed: int = 0) -> Run:
    """Read one evaluation folder and recompute its sweep inputs.

    A test folder applies the fitted weights and rules of its summary.json unchanged (they were fitted on val). A
    val folder's were fitted on these very samples, where the evaluation scored the learned deferral out of fold;
    applying the saved rule would score it in sample, so they are refitted here exactly as evaluate_policies does
    (deterministic: the same fused weights, the same cross-fitted confidences), and checked against summary.json.
    """
    results = read_evaluation(folder)
    saved = results.fitted
    on_own_samples = results.split == "val"
    inputs, fitted = policy_inputs(results.records, random_seed, None if on_own_samples or saved is None else saved)
    if on_own_samples and saved is not None and saved.fuse_weight and fitted.fuse_weight != saved.fuse_weight:
        _warn(f"{folder}: refitted fused weights {fitted.fuse_weight} differ from summary.json's {saved.fuse_weight}.")
    run = Run(label, results, {p.key: p for p in inputs})
    _check_against_summary(run)
    return run


def _warn(message: str) -> None:
    Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False)


def _check_against_summary(run: Run) -> None:
    """Warn when the recomputed curves disagree with the folder's own summary.json (records edited, or another
    --random_seed than the evaluation's)."""
    reported = {(s["policy"], s["k"], s["confidence"]): s for s in run.summary.get("scalars", [])}
    off = []
    for key, p in run.inputs.items():
        s = reported.get(key)
        if s is None:
            continue
        full = np.ones((1, len(p.confidence)), dtype=np.int32)
        x, y = weighted_curves(p.confidence, p.correct_local, p.correct_offload, full)
        for name, _, stat in STATISTICS:
            if name in s and s[name] is not None and not math.isclose(float(stat(x, y)[0]), s[name], abs_tol=1e-9):
                off.append(f"{key[0]} k={key[1]} {key[2]} {name}")
    if off:
        _warn(f"{run.folder}: records.csv does not reproduce summary.json for {', '.join(off[:5])}.")


# ------------------------------------------------------------------------------------------------- statistics
def same_samples(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """True when two record sets hold the same samples in the same order (identical index and label arrays)."""
    return np.array_equal(a["index"], b["index"]) and np.array_equal(a["label"], b["label"])


def resampled_statistics(p: PolicyData, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic on the full sample (entry 0) and on every resample of ``counts`` (entries 1..B)."""
    n = len(p.confidence)
    out: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in STATISTICS}
    rows = np.concatenate([np.ones((1, n), dtype=counts.dtype), counts])
    for start in range(0, rows.shape[0], CHUNK):
        x, y = weighted_curves(p.confidence, p.correct_local, p.correct_offload, rows[start : start + CHUNK])
        for name, _, stat in STATISTICS:
            out[name].append(stat(x, y))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def compared_keys(runs: Sequence[Run], policies: Sequence[str] | None) -> list[Key]:
    """The curves present in every run (restricted to ``policies``), in the policies' registration, k and measure
    order."""
    wanted = list(policies or POLICIES)
    common = set(runs[0].inputs).intersection(*(r.inputs for r in runs[1:]))
    measures = list(dict.fromkeys(k[2] for k in runs[0].inputs))
    keys = sorted(
        (k for k in common if k[0] in wanted),
        key=lambda k: (list(POLICIES).index(k[0]), k[1], measures.index(k[2])),
    )
    if not keys:
        raise SuiteError(
            f"The runs have no curve in common among the policies {wanted}; compare evaluations of the same "
            "policies (check --policies and the evaluations' --k / --confidence)."
        )
    evaluated = {k[0] for run in runs for k in run.inputs}
    absent = sorted((set(policies) if policies else evaluated) - {k[0] for k in keys})
    if absent:
        _warn(f"policies {absent} are not evaluated in every run and are not compared.")
    return keys


def hit_rate_statistics(run: Run, k: int, counts: np.ndarray) -> np.ndarray:
    """The routing hit rate at Top-k (ask_the_expert.method.policies.routing_hits) on the full sample and every
    resample."""
    hit = routing_hits(run.records, k).astype(np.float64)
    return np.concatenate([[hit.mean()], counts @ hit / len(hit)])


def compare_rows(runs: Sequence[Run], keys: Sequence[Key], bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """The compare.csv rows: every run's value of every statistic (and the routing hit rate per k, policy
    ``routing``), and each later run minus the first with its 95 % interval (paired over shared samples, else
    unpaired) and verdict."""
    first = runs[0]
    counts = [resample_counts(len(first.records["label"]), bootstrap, seed)]
    pairing = ["reference"]
    for i, run in enumerate(runs[1:], start=1):
        paired = same_samples(first.records, run.records)
        pairing.append("paired" if paired else "unpaired")
        # Unpaired: independent resamples of each run (another seed); paired: the very same counts.
        counts.append(counts[0] if paired else resample_counts(len(run.records["label"]), bootstrap, seed + i))
    measured: list[tuple[tuple[str, int, str, str, str], list[np.ndarray]]] = []
    for key in keys:
        stats = [resampled_statistics(run.inputs[key], c) for run, c in zip(runs, counts, strict=True)]
        measured += [((*key, name, unit), [s[name] for s in stats]) for name, unit, _ in STATISTICS]
    for k in sorted(set.intersection(*(set(record_layout(run.records)[0]) for run in runs))):
        hits = [hit_rate_statistics(run, k, c) for run, c in zip(runs, counts, strict=True)]
        measured.append((("routing", k, "", "hit_rate", "accuracy"), hits))
    rows: list[dict[str, Any]] = []
    for (policy, k, measure, name, unit), values in measured:
        for i, run in enumerate(runs):
            row = {"policy": policy, "k": k, "confidence": measure, "statistic": name, "unit": unit}
            row.update(run=run.label, value=float(values[i][0]), pairing=pairing[i])
            if i == 0:
                row.update(vs="", difference=math.nan, low=math.nan, high=math.nan, verdict="")
            else:
                diff = values[i] - values[0]
                iv = interval(float(diff[0]), diff[1:])
                row.update(vs=first.label, difference=iv.value, low=iv.low, high=iv.high, verdict=iv.verdict)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- outputs
def difference_text(row: Mapping[str, Any]) -> str:
    """``+1.20 pts [+0.40, +2.10]`` (accuracy differences in points)."""
    low, high = (points_text(row[end], row["unit"]) for end in ("low", "high"))
    return f"{points_text(row['difference'], row['unit'])} pts [{low}, {high}]"


def grouped(rows: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Rows grouped by (policy, k, confidence, statistic), first run first."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["k"], r["confidence"], r["statistic"]), []).append(r)
    return list(groups.values())


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if isinstance(r[c], float) and math.isnan(r[c]) else r[c] for c in CSV_COLUMNS})


def markdown(rows: Sequence[Mapping[str, Any]], runs: Sequence[Run], bootstrap: int) -> str:
    """compare.md: the runs, then one table per policy (every k, measure and statistic)."""
    first = runs[0].label
    lines = ["# Comparison of evaluations", "", "| run | folder | split | samples | pairing vs first |"]
    lines.append("| --- | --- | --- | ---: | --- |")
    pairing = {r["run"]: r["pairing"] for r in rows}
    for run in runs:
        n = len(run.records["label"])
        lines.append(f"| {run.label} | `{run.folder}` | {run.split} | {n} | {pairing[run.label]} |")
    lines += [
        "",
        f"Differences are each run minus **{first}**, with 95 % bootstrap intervals over {bootstrap} resamples: "
        "paired (the same resamples of the shared samples) or unpaired (independent resamples of each run). "
        "Accuracies in %, differences in points; verdict: holds = the interval lies above 0, fails = below 0.",
    ]
    others = [run.label for run in runs[1:]]
    header = ["k", "confidence", "statistic", *(run.label for run in runs)]
    header += [h for label in others for h in (f"{label} - {first} [95 %]", "pairing", "verdict")]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        lines += ["", f"## {policy}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for group in grouped([r for r in rows if r["policy"] == policy]):
            head = group[0]
            cells = [str(head["k"]), head["confidence"], head["statistic"]]
            cells += [value_text(r["value"], r["unit"]) for r in group]
            for r in group[1:]:
                cells += [difference_text(r), r["pairing"], r["verdict"]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_comparison(rows: Sequence[Mapping[str, Any]], runs: Sequence[Run]) -> Table:
    """The printed table: the primary measure (and random) of every policy; compare.md has every measure."""
    first = runs[0].label
    table = Table(title=f"Runs compared against {first} (95 % bootstrap intervals)")
    table.caption = "primary confidence measure only; every measure is in compare.md / compare.csv"
    for c in ("policy", "k", "conf", "statistic", *(run.label for run in runs)):
        table.add_column(c, justify="left" if c in ("policy", "conf", "statistic") else "right", no_wrap=True)
    for run in runs[1:]:
        table.add_column(f"{run.label} - {first}", justify="right", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
    colours = {"holds": "green", "fails": "red"}
    for group in grouped([r for r in rows if r["confidence"] in (runs[0].primary, RANDOM, "")]):
        head = group[0]
        cells = [head["policy"], str(head["k"]), head["confidence"], head["statistic"]]
        cells += [value_text(r["value"], r["unit"]) for r in group]
        for r in group[1:]:
            mark = " (unpaired)" if r["pairing"] == "unpaired" else ""
            cells += [difference_text(r) + mark, f"[{colours.get(r['verdict'], 'yellow')}]{r['verdict']}[/]"]
        table.add_row(*cells)
    return table


def run_curve(run: Run, key: Key) -> tuple[np.ndarray, np.ndarray]:
    """(offload ratio, accuracy) of one recomputed curve (ask_the_expert.method.sweep.sweep_thresholds)."""
    from ask_the_expert.method.sweep import sweep_thresholds

    if key not in run.curves:
        p = run.inputs[key]
        c = sweep_thresholds(p.confidence, p.correct_local, p.correct_offload)
        run.curves[key] = (c["offload_ratio"], c["accuracy"])
    return run.curves[key]


def plot_policies(
    runs: Sequence[Run],
    keys: Sequence[Key],
    folder: Path,
    remote: Mapping[str, Mapping[Key, tuple[np.ndarray, np.ndarray]]] | None = None,
) -> list[Path]:
    """One PNG per policy family: accuracy vs offload, one colour per run (local runs, then W&B runs), one line
    style per k, the primary confidence measure (``random`` for the random policy)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    remote = remote or {}
    k_values = sorted({k[1] for k in keys if k[1]} | {k[1] for lines in remote.values() for k in lines if k[1]})
    splits = ", ".join(sorted({run.split for run in runs}))
    written = []
    for policy in dict.fromkeys(k[0] for k in keys):
        fig = Figure(figsize=(9.5, 5.2))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        sources: list[tuple[str, Any]] = [(run.label, run) for run in runs] + list(remote.items())
        for i, (label, source) in enumerate(sources):
            colour = RUN_COLOURS[i % len(RUN_COLOURS)]
            if isinstance(source, Run):
                measure = RANDOM if POLICIES[policy].random_offload else source.primary
                lines = {k: run_curve(source, k) for k in keys if k[0] == policy and k[2] == measure}
            else:
                lines = {k: v for k, v in source.items() if k[0] == policy and k[2] not in (LEARNED,)}
            for key, (x, y) in sorted(lines.items()):
                name = f"{label}, k={key[1]}" if key[1] else label
                ax.plot(
                    x,
                    y,
                    color=colour,
                    linestyle=k_linestyle(key[1], k_values),
                    linewidth=1.5,
                    drawstyle="steps-post",
                    label=f"{name} ({key[2]})",
                )
        ax.set_xlim(0.0, 1.0)
        percent_axis(ax.xaxis)
        percent_axis(ax.yaxis)
        ax.set_xlabel("offload ratio (% of samples sent to the near edge)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(
            f"{policy}: accuracy vs offload ratio, runs compared ({splits})\none colour per run, one line style per k",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0.0)
        path = folder / f"{policy}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------------- W&B runs
def wandb_curves(
    paths: Sequence[str], split: str, keys: Sequence[Key]
) -> dict[str, dict[Key, tuple[np.ndarray, np.ndarray]]]:
    """The grid curves ``keys`` of W&B runs (``entity/project/run_id``) through ``wandb.Api()``: {path: {key: (x, y)}},
    looked up by the names the evaluation logs them under (ask_the_expert.results.evaluation_outputs.curve_metric).

    Needs the network and W&B credentials; cannot be tested offline. Any failure to reach the API or a run is a
    SuiteError naming the run and the fix.
    """
    if not has_wandb_credentials():
        raise SuiteError(
            "--wandb_runs needs the W&B API, but no W&B credentials were found (WANDB_API_KEY or `wandb login`). Log "
            "in and retry on a machine with network access, or drop --wandb_runs."
        )
    step = offload_step_metric(split)
    names = {curve_metric(split, key, "accuracy"): key for key in keys}
    out: dict[str, dict[Key, tuple[np.ndarray, np.ndarray]]] = {}
    try:
        import wandb

        api = wandb.Api(timeout=30)
    except Exception as err:  # wandb raises UsageError, CommError, AuthenticationError, timeouts, ...
        raise SuiteError(
            f"Could not reach the W&B API ({str(err).splitlines()[0] if str(err) else type(err).__name__}). Check the "
            "network and the credentials (`wandb login`), or drop --wandb_runs."
        ) from None
    for path in paths:
        try:
            rows = [row for row in api.run(path).scan_history() if row.get(step) is not None]
        except Exception as err:
            raise SuiteError(
                f"Could not read the W&B run {path!r} ({str(err).splitlines()[0] if str(err) else type(err).__name__})."
                " Give runs as entity/project/run_id, check the network and `wandb login`, or drop --wandb_runs."
            ) from None
        rows.sort(key=lambda r: r[step])
        curves: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
        for name in {n for r in rows for n in r} & set(names):
            points = [(r[step] / 100.0, r[name]) for r in rows if r.get(name) is not None]
            curves[names[name]] = (np.array([p[0] for p in points]), np.array([p[1] for p in points]))
        if not curves:
            raise SuiteError(
                f"The W&B run {path!r} has none of the compared curves on the {step} grid; it must come from an "
                "evaluation of this suite's version that logs them, on the same split, with the compared policies."
            )
        out[path] = curves
    return out


# ------------------------------------------------------------------------------------------------------ command
def compare(
    *,
    runs: list[str],
    out: str,
    labels: list[str] | None = None,
    policies: list[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    random_seed: int = 0,
    wandb_runs: list[str] | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Compare two or more evaluation folders curve by curve: overlay plots and a table of the differences.

    Args:
        runs: evaluation split folders (ate-evaluate's OUT/val or OUT/test), at least 2; the first is the reference.
        out: output folder for compare.csv, compare.md, compare.json and plots/<policy>.png.
        labels: one label per run (default: the parts of the folder paths that differ).
        policies: curve policies to compare (default: every policy the runs share): routed, fused, static,
            static_init, base, oracle, random.
        bootstrap: bootstrap resamples behind every 95 % interval (at least 100).
        seed: seed of the bootstrap resamples.
        random_seed: seed of the random-offload policy (ate-evaluate's --random_seed; default 0 as there).
        wandb_runs: W&B runs (entity/project/run_id) whose logged grid curves are overlaid on the plots; needs the
            network and W&B credentials (not reachable offline: the command then stops with a clear error).
        force: replace an existing --out folder.

    Returns the compare.csv rows.
    """
    out_dir = Path(out)
    names = check_arguments(runs, labels, bootstrap, policies, out_dir)
    if out_dir.exists() and not force:
        raise SuiteError(f"The output folder {str(out_dir)!r} already exists; choose another --out or pass --force.")
    loaded = [load_run(Path(folder), label, random_seed) for folder, label in zip(runs, names, strict=True)]
    keys = compared_keys(loaded, policies)
    remote = wandb_curves(wandb_runs, loaded[0].split, keys) if wandb_runs else {}
    rows = compare_rows(loaded, keys, bootstrap, seed)
    with atomic_folder(out_dir) as tmp:
        write_csv(rows, tmp / "compare.csv")
        (tmp / "compare.md").write_text(markdown(rows, loaded, bootstrap))
        plots = plot_policies(loaded, keys, tmp / "plots", remote)
        pairing = {r["run"]: r["pairing"] for r in rows}
        meta = {
            "runs": [
                {
                    "label": r.label,
                    "folder": str(r.folder),
                    "split": r.split,
                    "num_samples": len(r.records["label"]),
                    "records_sha256": file_sha256(r.results.records_file),
                    "pairing": pairing[r.label],
                }
                for r in loaded
            ],
            "bootstrap": {"resamples": bootstrap, "seed": seed, "level": 0.95},
            "random_seed": random_seed,
            "wandb_runs": list(wandb_runs or []),
            "files": ["compare.csv", "compare.md", *(f"plots/{p.name}" for p in plots)],
        }
        (tmp / "compare.json").write_text(json.dumps(meta, indent=2) + "\n")
    log_console().print(rich_comparison(rows, loaded))
    Console(stderr=True).print(f"Comparison written to {out_dir}", highlight=False)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and compare; 0 on success, 2 on bad input (message printed, no traceback)."""
    return run_cli(compare, argv, "ate-compare")


if __name__ == "__main__":
    sys.exit(main())

"""Compare finished evaluations (ate-evaluate's ``OUT/<split>/`` folders) curve by curve, with bootstrap intervals and
corrected verdicts for a declared family.

    ate-compare --runs '[results/a/seed_0/eval/val, results/b/seed_0/eval/val]' [--labels '[a, b]'] \\
        --out compare/ [--family '[routed:k3:area_gain_pts, routing:k3:hit_rate]'] [--policies '[routed, fused, base]']
        [--bootstrap 1000] [--wandb_runs '[entity/project/id]']

Each folder's ``records.csv`` and ``summary.json`` are read and every curve is recomputed with
ask_the_expert.method.policies on the samples the evaluation reported on (its assessment part, ``part`` column), with
the fused weights and deferral rules of ``summary.json`` applied unchanged (they were fitted on other parts of val). For
each policy, k and confidence measure present in every run, and each statistic (area gain, accuracy at 10/20/30/50 %
and at the family's offload, all offloaded), and for the routing hit rate at each k (policy ``routing``: the share of
samples whose chosen expert owns the true class, which compares partitions), the outputs give each run's value and the
difference of every run against the first with a bootstrap interval from ask_the_expert.method.findings (the suite's
one bootstrap engine): PAIRED (the same resample counts applied to both runs) when the two runs' records hold the same
samples (identical ``index`` and ``label`` arrays), otherwise UNPAIRED (independent resamples of each run), marked
"unpaired".

The comparisons of ``--family`` (default: the routed policy's area gain and accuracy at the evaluations' primary
offload and the routing hit rate, at their primary k, for every run against the first) form the primary family: their
verdicts use Holm's correction at ``--alpha``. Every other comparison is exploratory: an uncorrected 95 % interval,
labelled so. A verdict "holds" when the run is above the first, "fails" when below, else "not established".

Outputs (written under a temporary name, renamed when complete): ``OUT/compare.csv`` (one row per curve, statistic
and run), ``OUT/compare.md`` (the primary family first), ``OUT/compare.json`` (the inputs, their pairing and the
family) and ``OUT/plots/<policy>.png`` (one line per run and k, the primary confidence measure); the tables are also
printed. Bad input (a folder that is not a finished evaluation, fewer than two runs, labels of the wrong length, fewer
than 100 resamples, an unknown policy or family member, an existing --out without --force) ends with a one-paragraph
message and exit code 2; nothing is written.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ask_the_expert.method.findings import (
    RATIOS,
    Bootstrap,
    Comparison,
    Finding,
    points_text,
    statistic_unit,
    value_text,
    verdicts,
)
from ask_the_expert.method.holdout import PART_NAMES
from ask_the_expert.method.policies import (
    LEARNED,
    POLICIES,
    PolicyData,
    policy_inputs,
    record_layout,
    routing_hits,
    take,
)
from ask_the_expert.method.router import RANDOM
from ask_the_expert.method.stats import MIN_RESAMPLES, resample_counts
from ask_the_expert.method.sweep import accuracy_name
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
from ask_the_expert.utils.outputs import check_output_path, check_replaceable, output_lock

Key = tuple[str, int, str]
CSV_COLUMNS = ("policy", "k", "confidence", "statistic", "unit", "run", "value", "vs", "difference", "low", "high")
CSV_COLUMNS += ("level", "pairing", "family", "p_value", "p_adjusted", "verdict")
# compare.json: the inputs, the pairing and the files written (what --force recognises as compare's own output).
MARKER = "compare.json"
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
HIT_RATE = "hit_rate"


def statistic_names(ratios: Sequence[float]) -> list[str]:
    """The curve statistics compared (names as in summary.json's scalars), in output order."""
    return ["area_gain_pts", *(accuracy_name(r) for r in ratios), "acc_all_offloaded"]


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
    """Read one evaluation folder and recompute its sweep inputs on the samples its summary reports on (its
    ``protocol.reported_part``: the assessment part, or the selection part of a test evaluation's val folder), with
    the fused weights and deferral rules of summary.json applied unchanged (fitted on other parts of val)."""
    results = read_evaluation(folder)
    fitted = results.fitted
    if fitted is None:
        raise SuiteError(f"{folder}: summary.json has no 'fitted' section; compare evaluations ate-evaluate wrote.")
    records = dict(results.records)
    part = (results.summary.get("protocol") or {}).get("reported_part")
    if "part" in records and part is not None:
        code = {name: c for c, name in PART_NAMES.items()}[part]
        records = take(records, records.pop("part") == code)
    if part != "assessment":
        _warn(
            f"{folder}: these samples are not an assessment part ({part or 'an evaluation without one'}): choices of "
            "the evaluation were made on them, so its differences are in-sample."
        )
    inputs = policy_inputs(records, fitted, random_seed)
    run = Run(label, replace(results, records=records), {p.key: p for p in inputs})
    _check_against_summary(run)
    return run


def _warn(message: str) -> None:
    Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False)


def _check_against_summary(run: Run) -> None:
    """Warn when the recomputed curves disagree with the folder's own summary.json (records edited, or another
    --random_seed than the evaluation's)."""
    reported = {(s["policy"], s["k"], s["confidence"]): s for s in run.summary.get("scalars", [])}
    full = Bootstrap(np.empty((0, len(run.records["label"])), dtype=np.int32), RATIOS)  # the samples as they are
    off = []
    for key, p in run.inputs.items():
        s = reported.get(key)
        if s is None:
            continue
        values = full.curve_statistics(key, p.confidence, p.correct_local, p.correct_offload)
        for name, v in values.items():
            if s.get(name) is not None and not math.isclose(float(v[0]), s[name], abs_tol=1e-9):
                off.append(f"{key[0]} k={key[1]} {key[2]} {name}")
    if off:
        _warn(f"{run.folder}: records.csv does not reproduce summary.json for {', '.join(off[:5])}.")


# ------------------------------------------------------------------------------------------------- statistics
def same_samples(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """True when two record sets hold the same samples in the same order (identical index and label arrays)."""
    return np.array_equal(a["index"], b["index"]) and np.array_equal(a["label"], b["label"])


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


@dataclass(frozen=True)
class Member:
    """One comparison of the primary family: ``statistic`` of ``policy`` at ``k`` (primary confidence measure), every
    run against the first. ``routing`` with ``hit_rate`` is the routing hit rate."""

    policy: str
    k: int
    statistic: str

    @classmethod
    def parse(cls, text: str) -> Member:
        parts = str(text).split(":")
        if len(parts) != 3 or not re.fullmatch(r"k\d+", parts[1]):
            raise SuiteError(
                f"--family entry {text!r} is not <policy>:k<k>:<statistic>, e.g. routed:k3:area_gain_pts, "
                "routed:k3:acc@30% or routing:k3:hit_rate."
            )
        return cls(parts[0], int(parts[1][1:]), parts[2])

    def text(self) -> str:
        return f"{self.policy}:k{self.k}:{self.statistic}"


def declared_family(runs: Sequence[Run], family: Sequence[str] | None) -> tuple[list[Member], list[float]]:
    """The family's members (``--family``, or the default from the runs' declared primary family) and the offload
    ratios whose accuracy is compared (RATIOS and any a member names)."""
    if family is None:
        declared = {json.dumps(run.summary.get("primary_family"), sort_keys=True) for run in runs}
        first = runs[0].summary.get("primary_family")
        if len(declared) != 1 or not first:
            raise SuiteError(
                "The evaluations do not declare one common primary family (summary.json 'primary_family'), so compare "
                "cannot take its family from them; declare it with --family, e.g. '[routed:k3:area_gain_pts]'."
            )
        k, offload = int(first["k"]), float(first["offload"])
        members = [Member("routed", k, "area_gain_pts"), Member("routed", k, accuracy_name(offload))]
        members.append(Member("routing", k, HIT_RATE))
    else:
        members = [Member.parse(t) for t in family]
    ratios = list(RATIOS)
    for m in members:
        found = re.fullmatch(r"acc@([0-9.]+)%", m.statistic)
        if found and 0 < float(found.group(1)) <= 100:
            ratios.append(float(found.group(1)) / 100)
        valid = [HIT_RATE] if m.policy == "routing" else statistic_names(ratios)
        if m.policy not in (*POLICIES, "routing") or m.statistic not in valid:
            raise SuiteError(
                f"--family entry {m.text()!r} names an unknown policy or statistic; policies: {list(POLICIES)} "
                "or "
                f"routing (statistic hit_rate); statistics: area_gain_pts, acc@<percent>%, acc_all_offloaded."
            )
    return members, list(dict.fromkeys(ratios))


def compare_rows(
    runs: Sequence[Run],
    keys: Sequence[Key],
    members: Sequence[Member],
    ratios: Sequence[float],
    bootstrap: int,
    seed: int,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """The compare.csv rows: every run's value of every statistic (and the routing hit rate per k, policy
    ``routing``), and each later run minus the first with its interval (paired over shared samples, else unpaired),
    family and verdict (ask_the_expert.method.findings.verdicts: Holm for the family's members)."""  # fmt: skip
    first = runs[0]
    counts = [resample_counts(len(first.records["label"]), bootstrap, seed)]
    pairing = ["reference"]
    for i, run in enumerate(runs[1:], start=1):
        paired = same_samples(first.records, run.records)
        pairing.append("paired" if paired else "unpaired")
        # Unpaired: independent resamples of each run (another seed); paired: the very same counts.
        counts.append(counts[0] if paired else resample_counts(len(run.records["label"]), bootstrap, seed + i))
    engines = [Bootstrap(c, ratios) for c in counts]
    primary_measure = first.primary
    wanted = {(m.policy, m.k, m.statistic) for m in members}
    measured: list[tuple[tuple[str, int, str, str], list[np.ndarray]]] = []
    for key in keys:
        stats = [e.curve_statistics(key, *_sweep_inputs(run.inputs[key])) for run, e in zip(runs, engines, strict=True)]
        measured += [((*key, name), [s[name] for s in stats]) for name in statistic_names(ratios)]
    for k in sorted(set.intersection(*(set(record_layout(run.records)[0]) for run in runs))):
        hits = [e.mean(routing_hits(run.records, k).astype(np.float64)) for run, e in zip(runs, engines, strict=True)]
        measured.append((("routing", k, "", HIT_RATE), hits))
    missing = wanted - {(p, k, name) for (p, k, m, name), _ in measured if m in (primary_measure, "")}
    if missing:
        raise SuiteError(
            f"The family members {sorted(':'.join(map(str, m)) for m in missing)} are not in every run (or not at the "
            "primary confidence measure); declare members the runs share with --family."
        )
    comparisons = []
    for (policy, k, measure, name), values in measured:
        member = f"{policy}:k{k}:{name}" if (policy, k, name) in wanted and measure in (primary_measure, "") else ""
        for i, run in enumerate(runs[1:], start=1):
            claim = f"{run.label} above {first.label}: {name}, {policy} k={k} {measure}".rstrip()
            comparisons.append(Comparison(policy, claim, run.label, first.label, values[i], values[0],
                                          statistic_unit(name), member, {"run": i}))  # fmt: skip
    found = iter(verdicts(comparisons, alpha))
    rows: list[dict[str, Any]] = []
    for (policy, k, measure, name), values in measured:
        for i, run in enumerate(runs):
            row = {"policy": policy, "k": k, "confidence": measure, "statistic": name, "unit": statistic_unit(name)}
            row.update(run=run.label, value=float(values[i][0]), pairing=pairing[i])
            if i == 0:
                row.update(vs="", difference=math.nan, low=math.nan, high=math.nan, level=math.nan, family="",
                           p_value=math.nan, p_adjusted=math.nan, verdict="")  # fmt: skip
            else:
                f: Finding = next(found)
                row.update(vs=first.label, difference=f.difference, low=f.low, high=f.high, level=f.level,
                           family=f.family, p_value=f.p_value, p_adjusted=f.p_adjusted, verdict=f.verdict)  # fmt: skip
            rows.append(row)
    return rows


def _sweep_inputs(p: PolicyData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return p.confidence, p.correct_local, p.correct_offload


# ---------------------------------------------------------------------------------------------------- outputs
def difference_text(row: Mapping[str, Any]) -> str:
    """``+1.20 pts [+0.40, +2.10]`` (accuracy differences in points), with the interval's level when it is not 95 %."""
    low, high = (points_text(row[end], row["unit"]) for end in ("low", "high"))
    level = f" at {100 * row['level']:.1f} %" if not math.isclose(row["level"], 0.95) else ""
    return f"{points_text(row['difference'], row['unit'])} pts [{low}, {high}]{level}"


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


def family_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of the primary family's comparisons (every run against the first)."""
    return [r for r in rows if r["family"] == "primary"]


def markdown(
    rows: Sequence[Mapping[str, Any]], runs: Sequence[Run], bootstrap: int, members: Sequence[Member], alpha: float
) -> str:
    """compare.md: the runs, the primary family with its corrected verdicts, then one table per policy (every k,
    measure and statistic), exploratory."""
    first = runs[0].label
    lines = ["# Comparison of evaluations", "", "| run | folder | split | samples | pairing vs first |"]
    lines.append("| --- | --- | --- | ---: | --- |")
    pairing = {r["run"]: r["pairing"] for r in rows}
    for run in runs:
        n = len(run.records["label"])
        lines.append(f"| {run.label} | `{run.folder}` | {run.split} | {n} | {pairing[run.label]} |")
    lines += [
        "",
        f"Differences are each run minus **{first}**, with bootstrap intervals over {bootstrap} resamples: paired (the "
        "same resamples of the shared samples) or unpaired (independent resamples of each run). Accuracies in %, "
        "differences in points; verdict: holds = the run is above the first, fails = below.",
        "",
        f"## Primary family ({len(family_rows(rows))} comparisons, Holm-corrected at alpha {alpha})",
        "",
        f"Declared: {', '.join(f'`{m.text()}`' for m in members)}, every run against {first}. Verdicts by Holm's "
        "correction of two-sided bootstrap p-values; each interval at the level Holm tests it at.",
        "",
        "| comparison | value | difference [interval] | p | Holm p | pairing | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in family_rows(rows):
        lines.append(
            f"| {r['run']} vs {first}: {r['statistic']}, {r['policy']} k={r['k']} "
            f"| {value_text(r['value'], r['unit'])} "
            f"| {difference_text(r)} | {r['p_value']:.3f} | {r['p_adjusted']:.3f} | {r['pairing']} | {r['verdict']} |"
        )
    lines += ["", "## Exploratory comparisons (uncorrected 95 % intervals)"]
    others = [run.label for run in runs[1:]]
    header = ["k", "confidence", "statistic", *(run.label for run in runs)]
    header += [h for label in others for h in (f"{label} - {first} [95 %]", "pairing", "verdict")]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        lines += ["", f"### {policy}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for group in grouped([r for r in rows if r["policy"] == policy]):
            head = group[0]
            cells = [str(head["k"]), head["confidence"], head["statistic"]]
            cells += [value_text(r["value"], r["unit"]) for r in group]
            for r in group[1:]:
                label = " (primary, see above)" if r["family"] == "primary" else ""
                cells += [difference_text(r), r["pairing"], r["verdict"] + label]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_comparison(rows: Sequence[Mapping[str, Any]], runs: Sequence[Run], alpha: float) -> list[Table]:
    """The printed tables: the primary family with its Holm-corrected verdicts, then the exploratory comparisons of
    the primary measure (and random) of every policy; compare.md has every measure."""
    first = runs[0].label
    colours = {"holds": "green", "fails": "red"}

    def verdict(r: Mapping[str, Any]) -> str:
        return f"[{colours.get(r['verdict'], 'yellow')}]{r['verdict']}[/]"

    family = Table(title=f"Primary family: runs against {first}, Holm-corrected at alpha {alpha}")
    family.caption = "each interval at the level Holm tests it at; p: two-sided bootstrap p-value, Holm p: adjusted"
    for c in ("comparison", "value", "difference [interval]", "p", "Holm p", "verdict"):
        family.add_column(c, justify="right" if c in ("value", "p", "Holm p") else "left", no_wrap=True)
    for r in family_rows(rows):
        mark = " (unpaired)" if r["pairing"] == "unpaired" else ""
        family.add_row(
            f"{r['run']}: {r['statistic']}, {r['policy']} k={r['k']}", value_text(r["value"], r["unit"]),
            difference_text(r) + mark, f"{r['p_value']:.3f}", f"{r['p_adjusted']:.3f}", verdict(r),
        )  # fmt: skip
    table = Table(title=f"Exploratory: runs compared against {first} (uncorrected 95 % bootstrap intervals)")
    table.caption = "primary confidence measure only; every measure is in compare.md / compare.csv"
    for c in ("policy", "k", "conf", "statistic", *(run.label for run in runs)):
        table.add_column(c, justify="left" if c in ("policy", "conf", "statistic") else "right", no_wrap=True)
    for run in runs[1:]:
        table.add_column(f"{run.label} - {first}", justify="right", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
    for group in grouped([r for r in rows if r["confidence"] in (runs[0].primary, RANDOM, "")]):
        head = group[0]
        cells = [head["policy"], str(head["k"]), head["confidence"], head["statistic"]]
        cells += [value_text(r["value"], r["unit"]) for r in group]
        for r in group[1:]:
            mark = " (unpaired)" if r["pairing"] == "unpaired" else ""
            cells += [difference_text(r) + mark, verdict(r) + (" (primary)" if r["family"] == "primary" else "")]
        table.add_row(*cells)
    return [family, table]


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
    family: list[str] | None = None,
    alpha: float = 0.05,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Compare two or more evaluation folders curve by curve: overlay plots, the declared family's Holm-corrected
    verdicts and a table of every difference.

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
        family: the primary family, declared before looking: comparisons <policy>:k<k>:<statistic> (e.g.
            routed:k3:area_gain_pts, routed:k3:acc@30%, routing:k3:hit_rate), every run against the first; default:
            those three at the evaluations' declared primary k and offload. Every other comparison is exploratory.
        alpha: family-wise error rate of Holm's correction of the family.
        force: replace an existing --out folder that holds compare's own results (never one holding other files).

    Returns the compare.csv rows.
    """
    out_dir = Path(out)
    names = check_arguments(runs, labels, bootstrap, policies, out_dir)
    if not 0 < alpha < 1:
        raise SuiteError(f"--alpha must lie strictly between 0 and 1, got {alpha!r}; 0.05 is the usual family level.")
    if family is not None:
        [Member.parse(t) for t in family]  # a malformed entry fails before any folder is read
    check_output_path(out_dir, "--out", folder=True)
    with output_lock(out_dir):
        if out_dir.exists() and not force:
            raise SuiteError(
                f"The output folder {str(out_dir)!r} already exists; choose another --out or pass --force."
            )
        check_replaceable(out_dir, MARKER, "--out", "comparison results")
        rows, loaded = _compare(out_dir, runs, names, policies, bootstrap, seed, random_seed, wandb_runs, family, alpha)
    console = log_console()
    for table in rich_comparison(rows, loaded, alpha):
        console.print(table)
    Console(stderr=True).print(f"Comparison written to {out_dir}", highlight=False)
    return rows


def _compare(
    out_dir: Path,
    runs: Sequence[str],
    names: Sequence[str],
    policies: Sequence[str] | None,
    bootstrap: int,
    seed: int,
    random_seed: int,
    wandb_runs: Sequence[str] | None,
    family: Sequence[str] | None,
    alpha: float,
) -> tuple[list[dict[str, Any]], list[Run]]:
    """Read the runs, compare them and write ``out_dir`` (the work of ``compare`` once its output is held)."""
    loaded = [load_run(Path(folder), label, random_seed) for folder, label in zip(runs, names, strict=True)]
    keys = compared_keys(loaded, policies)
    members, ratios = declared_family(loaded, family)
    remote = wandb_curves(wandb_runs, loaded[0].split, keys) if wandb_runs else {}
    rows = compare_rows(loaded, keys, members, ratios, bootstrap, seed, alpha)
    with atomic_folder(out_dir) as tmp:
        write_csv(rows, tmp / "compare.csv")
        (tmp / "compare.md").write_text(markdown(rows, loaded, bootstrap, members, alpha))
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
            "primary_family": {"members": [m.text() for m in members], "alpha": alpha, "correction": "Holm"},
            "random_seed": random_seed,
            "wandb_runs": list(wandb_runs or []),
            "files": ["compare.csv", "compare.md", *(f"plots/{p.name}" for p in plots)],
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return rows, loaded


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and compare; 0 on success, 2 on bad input (message printed, no traceback)."""
    return run_cli(compare, argv, "ate-compare")


if __name__ == "__main__":
    sys.exit(main())

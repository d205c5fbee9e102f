"""Evaluate collaborative inference: a generalist, its experts and the reference policies on val or test
(``ate-evaluate``, or ``python evaluate.py`` in a checkout).

    ate-evaluate --generalist G.ckpt --experts '[runs/experts/]' --data.data_dir data --split test \\
        --profiles '[configs/profiles/edge_arm_wifi.yaml]' --k '[1, 3, 5]' --primary.k 3 --out runs/eval/exp1

The evaluation runs through a Lightning Trainer (``trainer.validate`` / ``trainer.test`` on a ``CollaborativeSystem``
with the ``CollaborativeInferenceCallback``), the same code path as during training; ask_the_expert.method.policies
computes every number. Selection and assessment are disjoint (docs/design.md §6): val is split, stratified and seeded
(``--selection.*``), into a part that fits the learned deferral rule, a part that fits the temperature and makes every
other choice (operating points, the fused weight, "up to" and break-even points) and, with ``--split val``, a part
that is assessed; with ``--split test`` test is assessed. The findings open with the primary family declared by
``--primary.*`` (Holm-corrected); every other comparison is exploratory. Outputs: ``OUT/<split>/curves.csv``,
``summary.json``, ``records.csv`` (every sample, with its ``part``) and ``plots/*.png`` for each evaluated split (each
folder written under a temporary name and renamed when complete, ``complete.json`` inside it last), plus the W&B run
under ``OUT/wandb`` (``--wandb.dir`` or ``WANDB_DIR`` elsewhere), named and grouped by the split, the number of experts
and a hash of the checkpoints and options (ask_the_expert.tracking.run_identity). Bad input ends with a one-paragraph
message and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lightning import Trainer
from rich.console import Console

from ask_the_expert.commands.train import refused_trainer_settings
from ask_the_expert.method.cifar100_classes import NUM_CLASSES
from ask_the_expert.method.costs import Profile, load_profile
from ask_the_expert.method.findings import PrimaryFamily
from ask_the_expert.method.holdout import SelectionSplit, split_parts
from ask_the_expert.method.policies import Report, check_operating_rule
from ask_the_expert.method.router import FIT, check_k_values, check_measures, check_temperature
from ask_the_expert.method.splits import DataSplit
from ask_the_expert.method.stats import MIN_RESAMPLES
from ask_the_expert.results.evaluation_outputs import COMPLETE_FILE, is_complete
from ask_the_expert.tracking.artifacts import use_checkpoints
from ask_the_expert.tracking.run_identity import command_identity, new_run_id
from ask_the_expert.tracking.wandb_logger import command_logger
from ask_the_expert.utils.atomic import write_json_atomic
from ask_the_expert.utils.cli import run_cli
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.fingerprint import fingerprint
from ask_the_expert.utils.hashing import file_sha256
from ask_the_expert.utils.log_output import is_terminal
from ask_the_expert.utils.options import DataOptions, WandbOptions
from ask_the_expert.utils.outputs import check_output_path, check_replaceable, output_lock
from callbacks.collaborative_eval import CollaborativeInferenceCallback
from callbacks.progress import progress_bar_callback
from datamodules.cifar100 import evaluation_datamodule
from lightning_modules.collaborative import CollaborativeSystem
from lightning_modules.precision import resolve_precision

DEFAULT_PROFILE = "configs/profiles/edge_arm_wifi.yaml"  # the suite's own when not in the working directory
# k = 2 is left out: it always picks the expert k = 1 picks (docs/design.md §3).
DEFAULT_K = [1, 3, 5]
# The members of the primary family that need a model beyond G and the progressive experts, and the option giving it.
MEMBER_NEEDS = {
    "progressive_vs_static": "static_experts",
    "progressive_vs_static_init": "static_init_experts",
    "routed_vs_base": "base",
}
# What the evaluation in OUT was made from (its fingerprint): a stopped evaluation of the same inputs resumes.
INPUTS_FILE = "evaluation.json"


def check_output_folder(out: Path, splits: Sequence[str], force: bool, inputs: dict[str, Any]) -> None:
    """Refuse to replace finished results unless ``force`` (and then only folders recognisably the evaluation's own,
    ask_the_expert.utils.outputs.check_replaceable); a rerun of the same evaluation (same ``inputs`` fingerprint, in
    ``OUT/evaluation.json``) that was stopped before every split finished resumes without ``force``."""
    existing = [out / s for s in splits if (out / s).exists()]
    if force:
        for folder in existing:
            check_replaceable(folder, COMPLETE_FILE, "--out", "evaluation results")
        return
    try:
        same = json.loads((out / INPUTS_FILE).read_text(encoding="utf-8"))["fingerprint"] == inputs["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    unfinished = not all(is_complete(out / s) for s in splits)
    if existing and not (same and unfinished):
        raise SuiteError(
            f"The output folder {str(out)!r} already holds results ({', '.join(str(p) for p in existing)}). Choose a "
            "new --out folder, or pass --force to replace them."
        )


def evaluation_inputs(arguments: dict[str, Any], checkpoints: dict[str, list[Path]]) -> dict[str, Any]:
    """What an evaluation is made from: its arguments that change results and the content of every checkpoint."""
    files = {f"{role}/{i}": path for role, paths in checkpoints.items() for i, path in enumerate(paths)}
    return fingerprint("evaluate", arguments, files, code_roots=())


def check_arguments(
    k: list[int] | None,
    confidence: list[str] | None,
    temperature: str | float,
    rule: str,
    gap: float,
    budget: float | None,
    profiles: list[str] | None,
    within_points: float = 0.5,
    delta: float = 0.005,
    bootstrap: int = 1000,
    primary: PrimaryFamily = PrimaryFamily(),
) -> tuple[list[int], list[str], list[Profile]]:
    """The routing and reporting options, checked (k values, measures, profiles loaded) before any work."""
    if bootstrap < MIN_RESAMPLES:
        raise SuiteError(f"--bootstrap must be >= {MIN_RESAMPLES} resamples for a 95 % interval, got {bootstrap}.")
    if not (within_points >= 0 and delta >= 0):
        raise SuiteError(f"--within_points and --delta must be >= 0, got {within_points} and {delta}.")
    k_values = check_k_values(k or DEFAULT_K, NUM_CLASSES)
    if primary.k not in k_values:
        raise SuiteError(
            f"--primary.k {primary.k} is not among the evaluated k values {k_values}; add it to --k (the primary "
            "family is assessed at it)."
        )
    measures = check_measures(confidence or ["max_prob"])
    check_temperature(temperature)
    check_operating_rule(rule, gap, budget)
    return k_values, measures, [load_profile(p) for p in profiles or [DEFAULT_PROFILE]]


def evaluate(
    *,
    generalist: str,
    experts: list[str],
    out: str,
    static_experts: list[str] | None = None,
    static_init_experts: list[str] | None = None,
    base: str | None = None,
    data: DataOptions = DataOptions(),
    split: Literal["val", "test"] = "val",
    profiles: list[str] | None = None,
    k: list[int] | None = None,
    confidence: list[str] | None = None,
    temperature: str | float = FIT,
    rule: Literal["within_gap", "latency_budget", "energy_budget"] = "within_gap",
    gap: float = 0.005,
    budget: float | None = None,
    random_seed: int = 0,
    reference: Literal["base", "oracle", "generalist"] | None = None,
    within_points: float = 0.5,
    delta: float = 0.005,
    bootstrap: int = 1000,
    primary: PrimaryFamily = PrimaryFamily(),
    selection: SelectionSplit = SelectionSplit(),
    force: bool = False,
    wandb: WandbOptions = WandbOptions(),
    accelerator: str = "auto",
    devices: int | str = 1,
    precision: str = "32-true",
) -> dict[str, Report]:
    """Evaluate every routing policy on val (and test) and write curves, summary, records, findings and plots.

    Args:
        generalist: checkpoint of the edge generalist (role generalist).
        experts: expert checkpoints: files, folders (their *.ckpt) or quoted globs; must partition the classes.
        out: output folder (refuses finished results unless --force).
        static_experts: static-from-base expert checkpoints (same forms as --experts): the single-stage baseline that
            starts from the stage-0 weights with the progressive stages' step budget.
        static_init_experts: static-from-init expert checkpoints: single stage from the seeded init, with the full
            per-expert budget (stage 0's steps plus the progressive stages').
        base: checkpoint of the stage-0 base model (role base), the "medium model" policy.
        data: the CIFAR-100 folder and split settings, as in training.
        split: split to assess: val (its assessment part; every choice on its other parts) or test (every choice
            on val).
        profiles: cost profile YAMLs (default: configs/profiles/edge_arm_wifi.yaml).
        k: Top-k values (default [1, 3, 5]; k = 2 always routes as k = 1 does).
        confidence: confidence measures (max_prob, margin, entropy; default [max_prob]); the first drives the
            charts.
        temperature: fit (temperature scaling on val's selection part) or a number > 0 (1.0 turns scaling off).
        rule: operating-point rule, applied on val's selection part.
        gap: within_gap: accuracy gap to all-offloaded (0.005 = 0.5 points).
        budget: latency (ms) or energy (mJ) budget of the budget rules.
        random_seed: seed of the random-offload policy.
        reference: the accuracy the offload_within_* scalars are measured against (default base when --base is
            given, else oracle).
        within_points: X of "the offload needed to come within X accuracy points of the reference".
        delta: "up to" cost reductions count thresholds whose accuracy is at least the baseline's minus delta
            (accuracy units; 0.005 = 0.5 points).
        bootstrap: paired-bootstrap resamples behind every finding's interval (at least 100).
        primary: the primary family, declared before the run: its k (the experts' routing_k), its offload, its
            members and the family-wise alpha of Holm's correction; every other finding is exploratory.
        selection: how val is split, stratified by fine class: the assessment share (val-only evaluations), the
            share that fits the learned deferral rule, the seed; the rest of val chooses.
        force: replace the results already in --out.
        wandb: the W&B run (mode, project, name, group, tags, require_online, preset, dir).
        accelerator: Lightning accelerator: auto, cpu, gpu, ...
        devices: Lightning devices (e.g. 4 or -1 for DDP).
        precision: Lightning precision, e.g. bf16-mixed.

    Returns the reports by split.
    """
    out_dir = Path(out)
    splits = ["val"] if split == "val" else ["val", "test"]
    k_values, measures, loaded_profiles = check_arguments(
        k, confidence, temperature, rule, gap, budget, profiles, within_points, delta, bootstrap, primary
    )
    given = {"static_experts": static_experts, "static_init_experts": static_init_experts, "base": base}
    missing = [f"{m} (--{need})" for m in primary.members or () if (need := MEMBER_NEEDS.get(m)) and not given[need]]
    if "learned_vs_confidence" in (primary.members or ()) and not selection.deferral:
        missing.append("learned_vs_confidence (--selection.deferral > 0)")
    if missing:
        raise SuiteError(
            f"The declared primary family needs what this evaluation lacks: {', '.join(missing)}. Give it, or leave "
            "those members out of --primary.members."
        )
    datamodule = evaluation_datamodule(data)
    for name in splits:  # every split on disk and non-empty before any model runs
        datamodule.dataset(name)
    val = datamodule.dataset("val")
    split_parts(val.indices, val.labels[val.indices].numpy(), selection, split == "val")  # no part left empty
    if reference == "base" and base is None:
        raise SuiteError("--reference base needs the base model: pass --base BASE.ckpt, or choose oracle.")
    check_output_path(out_dir, "--out", folder=True)
    models = dict(
        generalist=generalist,
        experts=experts,
        baselines={"static": static_experts, "static_init": static_init_experts},
        base=base,
        data_split=DataSplit.of(data),
    )
    router = dict(
        k_values=k_values,
        confidence_measures=measures,
        temperature=temperature,
        holdout=selection,
        assess_on_val=split == "val",
    )
    checkpoints = CollaborativeSystem.check_checkpoints(**models, **router)
    callback = CollaborativeInferenceCallback(
        out_dir=out_dir,
        profiles=loaded_profiles,
        rule=rule,
        gap=gap,
        budget=budget,
        random_seed=random_seed,
        reference=reference,
        within_points=within_points,
        delta=delta,
        bootstrap=bootstrap,
        family=primary,
        holdout=selection,
        assess_on_val=split == "val",
    )
    run_id = new_run_id()
    options = {
        "split": split, "k": k_values, "confidence": measures, "temperature": temperature, "rule": rule, "gap": gap,
        "budget": budget, "profiles": [p.name for p in loaded_profiles], "random_seed": random_seed,
        "reference": reference, "val_size": data.val_size, "split_seed": data.split_seed,
    }  # fmt: skip
    hashes = sorted(file_sha256(path) for paths in checkpoints.values() for path in paths)
    words = ["evaluate", split, f"{len(checkpoints['experts'])}experts"]
    logger = command_logger(
        wandb,
        out_dir,
        command_identity(words, [hashes, options], run_id, wandb.preset),
        run_id,
        job_type="evaluate",
        tags=["evaluate", split],
    )
    with refused_trainer_settings("--accelerator, --devices and --precision"):
        trainer = Trainer(
            accelerator=accelerator,
            devices=devices,
            precision=resolve_precision(precision, accelerator),
            logger=logger or False,
            callbacks=[callback, progress_bar_callback()],
            default_root_dir=str(out_dir),
            enable_checkpointing=False,
            enable_model_summary=False,
        )
    with output_lock(out_dir):
        arguments = {
            "split": split, "data": data, "k": k_values, "confidence": measures, "temperature": temperature,
            "rule": rule, "gap": gap, "budget": budget, "random_seed": random_seed, "reference": reference,
            "within_points": within_points, "delta": delta, "bootstrap": bootstrap, "profiles": loaded_profiles,
            "precision": precision, "primary": primary, "selection": selection,
        }  # fmt: skip
        inputs = evaluation_inputs(arguments, checkpoints)
        check_output_folder(out_dir, splits, force, inputs)
        system = CollaborativeSystem.from_checkpoints(**models, **router)
        if system.experts_routing_k and system.experts_routing_k != [primary.k]:
            Console(stderr=True).print(
                f"[yellow]warning:[/] the experts' routed-in sets R_j were built at routing_k "
                f"{system.experts_routing_k}, but the primary family is assessed at k={primary.k} (--primary.k); the "
                "report says so.",
                highlight=False,
            )
        if trainer.is_global_zero:
            write_json_atomic(out_dir / INPUTS_FILE, inputs)
        try:
            # Lightning's table of the forward counts only on a terminal: in a log it is box drawing, and
            # summary.json holds the counts.
            verbose = is_terminal()
            trainer.validate(system, datamodule=datamodule, verbose=verbose)
            if split == "test":
                trainer.test(system, datamodule=datamodule, verbose=verbose)
            if logger is not None and trainer.is_global_zero:
                record_what_was_used(logger.experiment, callback.reports, system, k_values, measures, loaded_profiles)
        finally:
            if logger is not None:
                logger.experiment.finish()
    if trainer.is_global_zero:
        written = ", ".join(str(out_dir / s / COMPLETE_FILE) for s in splits)
        Console(stderr=True).print(f"Results written (completion markers: {written})", highlight=False)
    return callback.reports


def record_what_was_used(
    run: Any,
    reports: dict[str, Report],
    system: CollaborativeSystem,
    k_values: list[int],
    measures: list[str],
    profiles: list[Profile],
) -> None:
    """The run's config holds the values the evaluation used (not the defaults): the fitted temperature, how val was
    split and where each choice was made (with the part sizes), the primary family, the operating points chosen on
    val's selection part, the fitted fuse weights, the checkpoints with their sha256; and the run declares the
    checkpoints as its input artifacts (lineage)."""
    assessed = reports.get("test", reports["val"])
    primary = [
        p for p in assessed.operating_points if p["confidence"] == measures[0] and p["policy"] in ("routed", "fused")
    ]
    used = {
        "temperature": system.temperature_value,
        "k_values": k_values,
        "confidence_measures": measures,
        "profiles": [p.name for p in profiles],
        "protocol": assessed.protocol,
        "primary_family": assessed.family.to_dict(),
        "experts_routing_k": system.experts_routing_k,
        "operating_points": [
            {
                key: p[key]
                for key in (
                    "policy",
                    "k",
                    "confidence",
                    "profile",
                    "tau",
                    "chosen_on",
                    "offload_ratio",
                    "accuracy",
                    "reported_on",
                )
            }
            for p in primary
        ],
        "fuse_weight": assessed.fitted.fuse_weight,
        "checkpoints": assessed.meta.get("sources", {}),
    }
    run.config.update({"used": used}, allow_val_change=True)
    use_checkpoints(run, system.sources)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and evaluate; 0 on success, 2 on bad input (message printed, no traceback)."""
    return run_cli(evaluate, argv, "ate-evaluate")


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate collaborative inference: a generalist, its experts and the reference policies on val or test
(``ate-evaluate``, or ``python evaluate.py`` in a checkout).

    ate-evaluate --generalist G.ckpt --experts '[runs/experts/]' --data.data_dir data --split test \\
        --profiles '[configs/profiles/edge_arm_wifi.yaml]' --k '[1, 2, 3, 5]' --out runs/eval/exp1

The evaluation runs through a Lightning Trainer (``trainer.validate`` / ``trainer.test`` on a ``CollaborativeSystem``
with the ``CollaborativeInferenceCallback``), the same code path as during training; ask_the_expert.method.policies
computes every number. With ``--split test`` the val split is evaluated first: the temperature is fitted and the
operating point chosen there, then applied unchanged on test. Outputs: ``OUT/<split>/curves.csv``, ``summary.json``,
``records.csv`` and ``plots/*.png`` for each evaluated split (each folder written under a temporary name and renamed
when complete, ``complete.json`` inside it last), plus the W&B run under ``OUT/wandb``. Bad input ends with a
one-paragraph message and exit code 2.
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
from ask_the_expert.method.deferral import CROSS_FIT_FOLDS
from ask_the_expert.method.policies import Report, check_operating_rule
from ask_the_expert.method.router import FIT, check_k_values, check_measures, check_temperature
from ask_the_expert.method.splits import DataSplit
from ask_the_expert.method.stats import MIN_RESAMPLES
from ask_the_expert.results.evaluation_outputs import COMPLETE_FILE, is_complete
from ask_the_expert.tracking.artifacts import use_checkpoints
from ask_the_expert.tracking.wandb_logger import SuiteWandbLogger, resolve_wandb_mode
from ask_the_expert.utils.atomic import write_json_atomic
from ask_the_expert.utils.cli import run_cli
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.fingerprint import fingerprint
from ask_the_expert.utils.options import DataOptions, WandbOptions
from ask_the_expert.utils.outputs import check_output_path, check_replaceable, output_lock
from callbacks.collaborative_eval import CollaborativeInferenceCallback
from datamodules.cifar100 import evaluation_datamodule
from lightning_modules.collaborative import CollaborativeSystem
from lightning_modules.precision import resolve_precision

DEFAULT_PROFILE = "configs/profiles/edge_arm_wifi.yaml"  # the suite's own when not in the working directory
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
) -> tuple[list[int], list[str], list[Profile]]:
    """The routing and reporting options, checked (k values, measures, profiles loaded) before any work."""
    if bootstrap < MIN_RESAMPLES:
        raise SuiteError(f"--bootstrap must be >= {MIN_RESAMPLES} resamples for a 95 % interval, got {bootstrap}.")
    if not (within_points >= 0 and delta >= 0):
        raise SuiteError(f"--within_points and --delta must be >= 0, got {within_points} and {delta}.")
    k_values = check_k_values(k or [1, 2, 3, 5], NUM_CLASSES)
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
        split: split to report; test evaluates val first (temperature and operating point chosen there).
        profiles: cost profile YAMLs (default: configs/profiles/edge_arm_wifi.yaml).
        k: Top-k values (default [1, 2, 3, 5]).
        confidence: confidence measures (max_prob, margin, entropy; default [max_prob]); the first drives the
            charts.
        temperature: fit (temperature scaling on val) or a number > 0 (1.0 turns scaling off).
        rule: operating-point rule chosen on val.
        gap: within_gap: accuracy gap to all-offloaded (0.005 = 0.5 points).
        budget: latency (ms) or energy (mJ) budget of the budget rules.
        random_seed: seed of the random-offload policy.
        reference: the accuracy the offload_within_* scalars are measured against (default base when --base is
            given, else oracle).
        within_points: X of "the offload needed to come within X accuracy points of the reference".
        delta: "up to" cost reductions count thresholds whose accuracy is at least the baseline's minus delta
            (accuracy units; 0.005 = 0.5 points).
        bootstrap: paired-bootstrap resamples behind every finding's 95 % interval (at least 100).
        force: replace the results already in --out.
        wandb: the W&B run (mode, project, name, group, tags, require_online).
        accelerator: Lightning accelerator: auto, cpu, gpu, ...
        devices: Lightning devices (e.g. 4 or -1 for DDP).
        precision: Lightning precision, e.g. bf16-mixed.

    Returns the reports by split.
    """
    out_dir = Path(out)
    splits = ["val"] if split == "val" else ["val", "test"]
    k_values, measures, loaded_profiles = check_arguments(
        k, confidence, temperature, rule, gap, budget, profiles, within_points, delta, bootstrap
    )
    if data.val_size < CROSS_FIT_FOLDS:
        raise SuiteError(
            f"--data.val_size {data.val_size} is too small for an evaluation: the learned deferral rule is scored on "
            f"val out of fold in {CROSS_FIT_FOLDS} folds, so val needs at least {CROSS_FIT_FOLDS} images (the default "
            "is 5000). Raise --data.val_size."
        )
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
    router = dict(k_values=k_values, confidence_measures=measures, temperature=temperature)
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
    )
    logger = None
    if resolve_wandb_mode(wandb.mode) != "disabled":
        logger = SuiteWandbLogger(
            project=wandb.project,
            save_dir=str(out_dir),
            name=wandb.name or f"evaluate-{split}",
            group=wandb.group or "evaluate",
            job_type="evaluate",
            tags=["evaluate", split, *wandb.tags],
            mode=wandb.mode,
            require_online=wandb.require_online,
        )
    with refused_trainer_settings("--accelerator, --devices and --precision"):
        trainer = Trainer(
            accelerator=accelerator,
            devices=devices,
            precision=resolve_precision(precision, accelerator),
            logger=logger or False,
            callbacks=[callback],
            default_root_dir=str(out_dir),
            enable_checkpointing=False,
            enable_model_summary=False,
        )
    datamodule = evaluation_datamodule(data)
    for name in splits:  # every split on disk and non-empty before any model runs
        datamodule.dataset(name)
    with output_lock(out_dir):
        arguments = {
            "split": split, "data": data, "k": k_values, "confidence": measures, "temperature": temperature,
            "rule": rule, "gap": gap, "budget": budget, "random_seed": random_seed, "reference": reference,
            "within_points": within_points, "delta": delta, "bootstrap": bootstrap, "profiles": loaded_profiles,
            "precision": precision,
        }  # fmt: skip
        inputs = evaluation_inputs(arguments, checkpoints)
        check_output_folder(out_dir, splits, force, inputs)
        system = CollaborativeSystem.from_checkpoints(**models, **router)
        if trainer.is_global_zero:
            write_json_atomic(out_dir / INPUTS_FILE, inputs)
        try:
            trainer.validate(system, datamodule=datamodule)
            if split == "test":
                trainer.test(system, datamodule=datamodule)
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
    """The run's config holds the values the evaluation used (not the defaults): the fitted temperature, the
    operating points chosen on val, the fitted fuse weights, the checkpoints with their sha256; and the run declares
    the checkpoints as its input artifacts (lineage)."""
    val = reports["val"]
    primary = [p for p in val.operating_points if p["confidence"] == measures[0] and p["policy"] in ("routed", "fused")]
    used = {
        "temperature": system.temperature_value,
        "k_values": k_values,
        "confidence_measures": measures,
        "profiles": [p.name for p in profiles],
        "operating_points": [
            {key: p[key] for key in ("policy", "k", "confidence", "profile", "tau", "offload_ratio", "accuracy")}
            for p in primary
        ],
        "fuse_weight": val.fitted.fuse_weight,
        "checkpoints": val.meta.get("sources", {}),
    }
    run.config.update({"used": used}, allow_val_change=True)
    use_checkpoints(run, system.sources)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and evaluate; 0 on success, 2 on bad input (message printed, no traceback)."""
    return run_cli(evaluate, argv, "ate-evaluate")


if __name__ == "__main__":
    sys.exit(main())

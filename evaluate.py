"""Evaluate collaborative inference: a generalist, its experts and the reference policies on val or test.

    python evaluate.py --generalist G.ckpt --experts runs/experts/ --data-dir data --split test \\
        --profile configs/profiles/edge_arm_wifi.yaml --k 1 2 3 5 --out runs/eval/exp1

The evaluation runs through a Lightning Trainer (``trainer.validate`` / ``trainer.test`` on a
``CollaborativeSystem`` with the ``CollaborativeInferenceCallback``), the same code path as during training.
With ``--split test`` the val split is evaluated first: the temperature is fitted and the operating point
chosen there, then applied unchanged on test. Outputs: ``OUT/<split>/curves.csv``, ``summary.json``,
``records.csv`` and ``plots/*.png`` for each evaluated split, plus the W&B run under ``OUT/wandb``.
Bad input ends with a one-paragraph message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning import Trainer
from rich.console import Console

from callbacks.collaborative_eval import CollaborativeInferenceCallback
from callbacks.reporting import RESULT_FILES, check_report_inputs
from callbacks.wandb_logging import SuiteWandbLogger, resolve_wandb_mode
from core.cli import run_command
from core.costs import load_profile
from core.errors import SuiteError
from core.routing import CONFIDENCE_MEASURES
from core.sweep import OPERATING_RULES
from datamodules.cifar100 import CIFAR100DataModule
from lightning_modules.collaborative import CollaborativeSystem

DEFAULT_PROFILE = Path(__file__).resolve().parent / "configs" / "profiles" / "edge_arm_wifi.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Output files (per evaluated split, in OUT/val and OUT/test): curves.csv with columns policy, k, "
            "confidence, profile, tau, offload_ratio, accuracy, latency_ms, edge_energy_mj, system_energy_mj "
            "(one row per policy, k, confidence measure, profile and threshold; k = 0 for policies without "
            "Top-k); "
            "summary.json (scalars per policy and k, operating points with reductions vs baselines, forward "
            "counts, temperature); records.csv (one row per sample); plots/*.png."
        ),
    )
    models = parser.add_argument_group("models")
    models.add_argument(
        "--generalist", required=True, help="checkpoint of the edge generalist (role generalist)"
    )
    models.add_argument(
        "--experts",
        required=True,
        nargs="+",
        help="expert checkpoints: files, folders (their *.ckpt) or quoted globs; must partition the classes",
    )
    models.add_argument(
        "--static-experts",
        nargs="+",
        default=None,
        help="static-expert checkpoints (same forms as --experts)",
    )
    models.add_argument("--base", default=None, help="checkpoint of the stage-0 base model (role base), the "
                        "'medium model' policy")  # fmt: skip
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir", default="data", help="folder that contains cifar-100-python/ (default: data)"
    )
    data.add_argument(
        "--check-integrity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse data files whose md5 differs from the published ones (default: on)",
    )
    data.add_argument(
        "--split", choices=("val", "test"), default="val", help="split to report (default: val)"
    )
    data.add_argument(
        "--val-size", type=int, default=5000, help="val images held out of train (as in training)"
    )
    data.add_argument(
        "--split-seed", type=int, default=0, help="seed of the train/val split (as in training)"
    )
    routing = parser.add_argument_group("routing and costs")
    routing.add_argument(
        "--profile",
        action="append",
        default=None,
        help=f"cost profile YAML; repeat for several (default: configs/profiles/{DEFAULT_PROFILE.name})",
    )
    routing.add_argument(
        "--k", type=int, nargs="+", default=[1, 2, 3, 5], help="Top-k values (default: 1 2 3 5)"
    )
    routing.add_argument(
        "--confidence",
        nargs="+",
        default=["max_prob"],
        help=f"confidence measure(s): {', '.join(CONFIDENCE_MEASURES)}; the first drives the charts",
    )
    routing.add_argument(
        "--temperature", default="fit", help="'fit' (temperature scaling on val, default) or a number > 0"
    )
    routing.add_argument(
        "--rule",
        default="within_gap",
        help=f"operating-point rule chosen on val: {', '.join(OPERATING_RULES)} (default: within_gap)",
    )
    routing.add_argument("--gap", type=float, default=0.005, help="within_gap: accuracy gap to all-offloaded")
    routing.add_argument("--budget", type=float, default=None, help="latency (ms) / energy (mJ) budget rules")
    routing.add_argument("--random-seed", type=int, default=0, help="seed of the random-offload policy")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="output folder (refuses existing results unless --force)")
    out.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    out.add_argument(
        "--wandb-mode",
        choices=("auto", "online", "offline", "disabled"),
        default="auto",
        help="W&B mode; auto = online with credentials, else offline (default: auto)",
    )
    out.add_argument(
        "--wandb-project", default="ask-the-expert", help="W&B project (default: ask-the-expert)"
    )
    out.add_argument("--wandb-name", default=None, help="W&B run name")
    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", type=int, default=256, help="evaluation batch size per device")
    run.add_argument("--num-workers", type=int, default=4, help="DataLoader workers")
    run.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, ...")
    run.add_argument("--devices", default="1", help="Lightning devices (default: 1; e.g. 4 or -1 for DDP)")
    run.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    return parser


def check_output_folder(out: Path, splits: list[str], force: bool) -> None:
    """Refuse to overwrite results unless ``force``; with ``force`` remove the old result files first."""
    existing = [out / s / name for s in splits for name in RESULT_FILES if (out / s / name).exists()]
    if existing and not force:
        raise SuiteError(
            f"The output folder {str(out)!r} already holds results "
            f"({', '.join(str(p) for p in existing[:3])}). "
            "Choose a new --out folder, or pass --force to overwrite them."
        )
    for path in existing:
        path.unlink()
    for s in splits:
        for png in (out / s / "plots").glob("*.png"):
            png.unlink()


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation; returns the callback's reports by split."""
    out = Path(args.out)
    splits = ["val"] if args.split == "val" else ["val", "test"]
    profiles = [load_profile(p) for p in args.profile or [DEFAULT_PROFILE]]
    check_report_inputs(args.rule, args.gap, args.budget)
    check_output_folder(out, splits, args.force)
    system = CollaborativeSystem.from_checkpoints(
        args.generalist,
        args.experts,
        static_experts=args.static_experts,
        base=args.base,
        k_values=args.k,
        confidence_measures=args.confidence,
        temperature=args.temperature,
    )
    datamodule = CIFAR100DataModule(
        data_dir=args.data_dir,
        check_integrity=args.check_integrity,
        val_size=args.val_size,
        split_seed=args.split_seed,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        augmentation="none",
    )
    callback = CollaborativeInferenceCallback(
        out_dir=out,
        profiles=profiles,
        rule=args.rule,
        gap=args.gap,
        budget=args.budget,
        random_seed=args.random_seed,
    )
    logger = None
    if resolve_wandb_mode(args.wandb_mode) != "disabled":
        logger = SuiteWandbLogger(
            project=args.wandb_project,
            save_dir=str(out),
            name=args.wandb_name,
            group="evaluate",
            job_type="evaluate",
            tags=["evaluate", args.split],
            mode=args.wandb_mode,
        )
        logger.experiment.config.update({"evaluate": vars(args)}, allow_val_change=True)
    devices = int(args.devices) if args.devices.lstrip("-").isdigit() else args.devices
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=devices,
        precision=args.precision,
        logger=logger or False,
        callbacks=[callback],
        default_root_dir=str(out),
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    try:
        trainer.validate(system, datamodule=datamodule)
        if args.split == "test":
            trainer.test(system, datamodule=datamodule)
    finally:
        if logger is not None:
            logger.experiment.finish()
    if trainer.is_global_zero:
        Console(stderr=True).print(f"Results written to {out}/{{{','.join(splits)}}}/", highlight=False)
    return callback.reports


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and evaluate; 0 on success, 2 on bad input (message printed, no traceback)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())

"""The whole pipeline for a named preset, for each seed: generalist, stage-0 base and experts, the collaborative
evaluation, the deployment bundle; then a results report across the seeds.

    ate-pipeline --config configs/experiments/mini.yaml --data.data_dir DIR [--download true] \\
        [--data.check_integrity false] [--seeds '[0, 1, 2]'] [--out results/mini] [--steps '[evaluate, report]'] \\
        [--force_step '[evaluate]']

A preset holds typed settings: the generalist's training run and the settings of every training run
(``generalist``, ``common``: LightningCLI configs, then overrides such as ``{model.embed_dim: 64, trainer.max_epochs:
12}``), the ate-train-experts config of the experts, and the options of the evaluation and the export; LightningCLI
builds every training run from them.

Steps (ask_the_expert/commands/pipeline_steps.py, each declared once) are fresh by construction: each records a
fingerprint of what it was made from (its resolved arguments, the sha256 of its input checkpoints, data files and
configs, and the code it runs) and is skipped only when that fingerprint matches the finished step's; otherwise it
reruns, and so does every step whose inputs it changes. A step's completion marker (``step.json`` in its folder:
``generalist/``, ``partition/``, ``experts/``, ``eval/``, ``bundle.step/``) is written last; a step interrupted with
the same fingerprint resumes (finished experts are kept), one with another fingerprint starts over. ``--force_step``
reruns named steps. Per seed ``s`` the training seed and the train/val split seed are both ``s``. Outputs::

    OUT/seed_<s>/generalist/generalist.ckpt (+ .json metrics)
    OUT/seed_<s>/partition/partition.json       (with ``partition: confusion:<n>``: ate-partition's groups)
    OUT/seed_<s>/experts/base/base.ckpt, OUT/seed_<s>/experts/<variant>/expert_<j>.ckpt (+ .json)
    OUT/seed_<s>/eval/<split>/{curves.csv, summary.json, records.csv, plots/}   (ate-evaluate's interface)
    OUT/seed_<s>/bundle/                                                        (ate-deploy export)
    OUT/report.md, OUT/summary.json, OUT/plots/                                 (across seeds)

The report step also logs a W&B run of its own (job type ``pipeline``, group ``<preset>-pipeline-<configuration
hash>``): the configuration and, per policy, k and confidence measure, every scalar of the evaluation as the mean
across seeds, under the evaluation runs' own names (``collab_<split>/<policy>/k<k>/<measure>/<scalar>``,
ask_the_expert.results.evaluation_outputs.scalar_metric), and the findings. Under a W&B sweep agent this run is the
sweep's trial (configs/sweeps/), each trial writes under ``OUT/sweep-<sweep id>/<run id>``, and the steps' own runs do
not take the trial's id. Every W&B run of the pipeline (all seeds, all steps) is under ``OUT/wandb``.

Bad input or a missing step input ends with a one-paragraph message and exit code 2, before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse import ActionConfigFile, Namespace
from rich.console import Console

from ask_the_expert.commands import evaluate
from ask_the_expert.commands.deploy import export as export_command
from ask_the_expert.commands.pipeline_steps import CONFIGURATION_KEYS, STEPS, SeedRun, data_file_names, pipeline_hash
from ask_the_expert.commands.train import TrainingRun
from ask_the_expert.method.costs import load_profile
from ask_the_expert.method.stages import BASELINE_VARIANTS, Variant
from ask_the_expert.results.evaluation_outputs import SCALAR_KEY, plot_files, scalar_metric
from ask_the_expert.results.report_markdown import render_markdown, report_summary
from ask_the_expert.tracking.run_identity import command_identity, new_run_id
from ask_the_expert.tracking.wandb_logger import command_logger
from ask_the_expert.utils.atomic import atomic_folder, write_json_atomic, write_text_atomic
from ask_the_expert.utils.cli import SuiteParser, run_command
from ask_the_expert.utils.config_files import find_config
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions, WandbOptions
from ask_the_expert.utils.outputs import check_output_path, output_lock
from datamodules.cifar100_files import download, require_file

# The steps of each seed, then the report across the seeds.
STEP_NAMES = (*(step.name for step in STEPS), "report")
Step = Literal[STEP_NAMES]
# Arguments of evaluate.evaluate / deploy export that the pipeline sets itself, per seed.
EVALUATE_OWN = {"generalist", "experts", "out", "base", "data", "split", "force"}
EVALUATE_OWN |= {f"{v}_experts" for v in BASELINE_VARIANTS}
# The export splits val as the evaluation does (--evaluate.selection), so both choose tau on the same images.
EXPORT_OWN = {"generalist", "experts", "out", "force", "data", "evaluate_on", "selection"}
# What a W&B sweep agent puts in the environment of its trial (wandb_agent.py). The first wandb.init of the process
# would take the trial's run id, so the steps' runs run without them and the pipeline's summary run takes them back.
SWEEP_VARIABLES = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
console = Console()


def build_parser() -> SuiteParser:
    parser = SuiteParser(prog="ate-pipeline", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="Preset YAML (configs/experiments/*.yaml).")
    parser.add_argument("--preset", type=str, default="custom", help="Preset name, shown in the report and W&B.")
    parser.add_argument("--out", type=str, default="results/custom", help="Output folder.")
    parser.add_class_arguments(DataOptions, "data")
    parser.add_argument("--download", type=bool, default=False, help="Fetch CIFAR-100 into --data.data_dir first.")
    parser.add_argument("--seeds", type=list[int], default=[0], help="Training and split seeds, one run each.")
    parser.add_argument("--split", type=Literal["val", "test"], default="val", help="Split of the report.")
    parser.add_argument("--steps", type=list[Step], default=list(STEP_NAMES), help="Run only these steps.")
    parser.add_argument("--force_step", type=list[Step], default=[], help="Rerun these steps even if fresh.")
    parser.add_argument(
        "--generalist", type=TrainingRun, default=TrainingRun(["configs/generalist.yaml"]),
        help="The generalist's training run: LightningCLI configs, then overrides ({model.lr: 5.0e-4, ...}).",
    )  # fmt: skip
    parser.add_argument(
        "--common", type=TrainingRun, default=TrainingRun(),
        help="Configs and overrides of every training run, applied last (e.g. {data.batch_size: 128}).",
    )  # fmt: skip
    parser.add_argument("--experts_config", type=str | None, default=None, help="ate-train-experts config.")
    parser.add_argument(
        "--variants", type=list[Variant] | None, default=None,
        help="Train and evaluate only these expert variants (default: the experts config's).",
    )  # fmt: skip
    parser.add_argument(
        "--progressive_overrides", type=dict[str, Any], default={},
        help="Overrides of the progressive experts' runs, after the experts config's (e.g. a sweep's model.stages).",
    )  # fmt: skip
    parser.add_class_arguments(WandbOptions, "wandb", help="The pipeline's summary run (the report step).")
    parser.add_function_arguments(evaluate.evaluate, "evaluate", skip=EVALUATE_OWN)
    parser.add_function_arguments(export_command, "export", skip=EXPORT_OWN)
    return parser


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` for uncommitted changes); for an installed package, its version."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():  # not a git repository that merely holds the environment
        try:
            return subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True, text=True, check=True,
                cwd=checkout,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            pass
    try:
        return f"unknown (ask-the-expert {metadata.version('ask-the-expert')} installed)"
    except metadata.PackageNotFoundError:
        return "unknown"


def write_report(opts: Namespace, runs: list[SeedRun], argv: Sequence[str], sweep: dict[str, str]) -> Path:
    out = Path(opts.out)
    results = [run.results() for run in runs]
    plots_dir = out / "plots"
    with atomic_folder(plots_dir) as tmp:
        for png in plot_files(runs[0].eval_dir / opts.split):
            shutil.copy2(png, tmp / png.name)
    plots = sorted(str(p.relative_to(out)) for p in plots_dir.glob("*.png"))
    header = {
        "preset": opts.preset,
        "split": opts.split,
        "data": "CIFAR-100 training file, val held out (stratified, seeded)" if opts.split == "val" else "CIFAR-100",
        "command": " ".join(["ate-pipeline", *argv]),
        "commit (when the report was written)": git_commit(),
    }
    write_text_atomic(out / "report.md", render_markdown(results, header, plots))
    summary = {"header": header, **report_summary(results)}
    write_json_atomic(out / "summary.json", summary, default=list)
    log_summary_run(opts, results, summary, sweep)
    return out / "report.md"


def mean_scalars(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Every evaluation scalar as the mean across seeds, under the name the evaluation runs log it with
    (ask_the_expert.results.evaluation_outputs.scalar_metric), so that both share a W&B panel."""
    values: dict[str, list[float]] = {}
    for r in results:
        evaluation = r["evaluation"]
        for row in evaluation["scalars"]:
            curve = (evaluation["split"], *(row[c] for c in SCALAR_KEY))
            for key, value in row.items():
                if key not in SCALAR_KEY and isinstance(value, int | float):
                    values.setdefault(scalar_metric(*curve, key), []).append(float(value))
    return {key: float(np.mean(v)) for key, v in values.items() if len(v) == len(results)}


def log_summary_run(
    opts: Namespace, results: Sequence[dict[str, Any]], summary: dict[str, Any], sweep: dict[str, str]
) -> None:
    """The pipeline's own W&B run: its configuration, the mean scalars and the findings (the module docstring)."""
    # Under a sweep agent this run is the trial. The ids go in explicitly: wandb read its environment when the
    # steps' runs started (without them) and ignores later changes to it in this process.
    trial = {"sweep_id": sweep.get("WANDB_SWEEP_ID"), "sweep_param_path": sweep.get("WANDB_SWEEP_PARAM_PATH")}
    run_id = sweep.get("WANDB_RUN_ID") or new_run_id()
    options = replace(opts.wandb, preset=opts.wandb.preset or opts.preset)
    identity = command_identity(["pipeline"], pipeline_hash(opts), run_id, options.preset)
    logger = command_logger(
        options, opts.out, identity, run_id, job_type="pipeline", tags=["pipeline", opts.preset, opts.split],
        settings={k: v for k, v in trial.items() if v},
    )  # fmt: skip
    if logger is None:
        return
    run = logger.experiment
    keys = ("seeds", *CONFIGURATION_KEYS)
    settings = {k: vars(v) if isinstance(v, TrainingRun) else v for k, v in ((k, opts[k]) for k in keys)}
    run.config.update(settings | {"header": summary["header"]}, allow_val_change=True)
    run.summary.update(mean_scalars(results))
    if summary["findings"]:
        import wandb  # only when a run is logged

        columns = ["family", "member", "group", "claim", "seeds", "a_mean", "b_mean", "difference_mean", "intervals"]
        columns += ["seed_interval", "verdict"]
        rows = [
            [f["family"], f["member"], f["group"], f["claim"], f["seeds"], f["a"][0], f["b"][0], f["difference"][0],
             json.dumps(f["intervals"]), json.dumps(f["seed_interval"]), f["verdict"]]
            for f in summary["findings"]
        ]  # fmt: skip
        run.log({"findings": wandb.Table(columns=columns, data=rows)})
    run.finish()


@contextmanager
def sweep_trial() -> Iterator[dict[str, str]]:
    """The W&B sweep variables of this process (empty outside a sweep), withheld from os.environ until the end."""
    withheld = {k: os.environ.pop(k) for k in SWEEP_VARIABLES if os.environ.get(k)}
    try:
        yield withheld
    finally:
        os.environ.update(withheld)


def run_pipeline(opts: Namespace, argv: Sequence[str], say: Callable[[str], None] = console.print) -> Path | None:
    with sweep_trial() as sweep:
        if sweep:  # one folder per trial: trials of one sweep may run at once
            opts.out = str(Path(opts.out) / f"sweep-{sweep.get('WANDB_SWEEP_ID')}" / sweep.get("WANDB_RUN_ID", "run"))
            say(f"W&B sweep trial: writing under {opts.out}")
        return _run_steps(opts, argv, say, sweep)


def _run_steps(opts: Namespace, argv: Sequence[str], say: Callable[[str], None], sweep: dict[str, str]) -> Path | None:
    with output_lock(opts.out):
        return _run_held_steps(opts, argv, say, sweep)


def _run_held_steps(
    opts: Namespace, argv: Sequence[str], say: Callable[[str], None], sweep: dict[str, str]
) -> Path | None:
    runs = [SeedRun(opts, s) for s in opts.seeds]
    for run, step in [(r, step) for r in runs for step in r.steps if step.name in opts.steps]:
        label = f"seed {run.seed}: {step.name}"
        record = step.record() if step.ready() else None
        if record is not None and step.name not in opts.force_step and step.fresh(record):
            say(f"{label}: fresh (fingerprint {record['fingerprint'][:12]}), skipped")
            continue
        step.require()
        record = record or step.record()  # what the step is made from, taken before it runs
        say(f"{label}: started at {time.strftime('%H:%M:%S')}")
        start = time.perf_counter()
        step.prepare(record)
        step.run()
        step.finish(record, time.perf_counter() - start)
        say(f"{label}: finished in {time.perf_counter() - start:.0f} s")
    if "report" not in opts.steps:
        return None
    report = write_report(opts, runs, argv, sweep)
    say(f"report: {report}")
    return report


def find_configs(opts: Namespace) -> None:
    """The preset's config and profile paths, each found from any working directory (ask_the_expert.utils.config_files:
    a ``configs/...`` path that is not in the working directory is the suite's own)."""
    opts.generalist, opts.common = opts.generalist.found(), opts.common.found()
    if opts.experts_config is not None:
        opts.experts_config = find_config(opts.experts_config)
    if opts.evaluate.profiles:
        opts.evaluate.profiles = [find_config(p) for p in opts.evaluate.profiles]
    if opts.export.profile is not None:
        opts.export.profile = find_config(opts.export.profile)


def check_options(opts: Namespace) -> None:
    """Everything that can be checked before a step runs."""
    if opts.experts_config is None and {"experts", "evaluate", "export"} & set(opts.steps):
        raise SuiteError("--experts_config is required (an ate-train-experts config); presets set it.")
    if opts.experts_config is not None and not Path(opts.experts_config).is_file():
        raise SuiteError(f"--experts_config {opts.experts_config!r} does not exist; presets name their configs.")
    missing = [c for c in [*opts.generalist.configs, *opts.common.configs] if not Path(c).is_file()]
    if missing:
        raise SuiteError(
            f"The training configs {missing} (--generalist.configs, --common.configs) do not exist (neither in the "
            "working directory nor among the suite's configs)."
        )
    if not opts.download:  # before any training CLI is built: a missing folder is one clear line
        for name in data_file_names(opts.split):
            purpose = f"the pipeline ({'--split test' if name == 'test' else 'training'})"
            require_file(opts.data.data_dir, name, purpose, download="--download true")
    if not opts.seeds or len(set(opts.seeds)) != len(opts.seeds) or not all(0 <= s < 2**32 for s in opts.seeds):
        raise SuiteError(
            f"--seeds {opts.seeds!r} must be a non-empty list of distinct integers in 0..2**32-1 (each is a training "
            "seed and a train/val split seed)."
        )
    check_output_path(opts.out, "--out", folder=True)
    for run in [SeedRun(opts, seed) for seed in opts.seeds[:1]] if opts.experts_config else []:
        if "progressive" not in run.job.variants and {"evaluate", "export"} & set(opts.steps):
            raise SuiteError(
                f"The expert variants {run.job.variants} leave out 'progressive', which the evaluate and export "
                "steps route to; add it to --variants or leave those steps out with --steps."
            )
        run.check_training_arguments()
    e = opts.evaluate
    evaluate.check_arguments(
        e.k,
        e.confidence,
        e.temperature,
        e.rule,
        e.gap,
        e.budget,
        e.profiles,
        e.within_points,
        e.delta,
        e.bootstrap,
        e.primary,
    )
    if not opts.export.gap >= 0:
        raise SuiteError(f"--export.gap must be >= 0 (accuracy units), got {opts.export.gap!r}.")
    if opts.export.profile is not None:
        load_profile(opts.export.profile)


def main(args: Sequence[str] | None = None) -> int:
    """Run the pipeline; return the exit code (0, or 2 for bad input / a missing step input)."""
    argv = list(sys.argv[1:] if args is None else args)

    def command() -> None:
        parser = build_parser()
        opts = parser.instantiate(parser.parse_args(argv))
        find_configs(opts)
        check_options(opts)
        if opts.download:
            download(opts.data.data_dir)
        run_pipeline(opts, argv)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())

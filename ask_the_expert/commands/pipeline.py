"""The whole pipeline for a named preset, for each seed: generalist, stage-0 base and experts, the collaborative
evaluation, the deployment bundle; then a results report across the seeds.

    ate-pipeline --config configs/experiments/mini.yaml --data.data_dir DIR [--download true] \\
        [--data.check_integrity false] [--seeds '[0, 1, 2]'] [--out results/mini] [--steps '[evaluate, report]'] \\
        [--force_step '[evaluate]']

Steps are fresh by construction: each records a fingerprint of what it was made from (its resolved arguments, the
sha256 of its input checkpoints, data files and configs, and the code it runs) and is skipped only when that
fingerprint matches the finished step's; otherwise it reruns, and so does every step whose inputs it changes. A
step's completion marker (``step.json`` in its folder: ``generalist/``, ``partition/``, ``experts/``, ``eval/``,
``bundle.step/``) is written last; a step interrupted with the same fingerprint resumes (finished experts are
kept), one with another fingerprint starts over. ``--force_step`` reruns named steps. Per seed
``s`` the training seed and the train/val split seed are both ``s``. Outputs::

    OUT/seed_<s>/generalist/generalist.ckpt (+ .json metrics)
    OUT/seed_<s>/partition/partition.json       (with ``partition: confusion:<n>``: ate-partition's groups)
    OUT/seed_<s>/experts/base/base.ckpt, OUT/seed_<s>/experts/<variant>/expert_<j>.ckpt (+ .json)
    OUT/seed_<s>/eval/<split>/{curves.csv, summary.json, records.csv, plots/}   (ate-evaluate's interface)
    OUT/seed_<s>/bundle/                                                        (ate-deploy export)
    OUT/report.md, OUT/summary.json, OUT/plots/                                 (across seeds)

The report step also logs a W&B run of its own (job type ``pipeline``, group the preset): the configuration and, per
policy, k and confidence measure, every scalar of the evaluation as the mean across seeds, under the evaluation runs'
own names (``collab_<split>/<policy>/k<k>/<measure>/<scalar>``, ask_the_expert.results.metric_names), and the findings.
Under a W&B sweep agent this run is the sweep's trial (configs/sweeps/), each trial writes under ``OUT/sweep-<sweep
id>/<run id>``, and the steps' own runs do not take the trial's id.

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
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse import ActionConfigFile, Namespace
from rich.console import Console

from ask_the_expert.commands import evaluate, train_experts
from ask_the_expert.commands.deploy import export as export_command
from ask_the_expert.commands.partition import learn_partition
from ask_the_expert.method.costs import load_profile
from ask_the_expert.results.evaluation_outputs import is_complete
from ask_the_expert.results.metric_names import scalar_metric
from ask_the_expert.results.report_markdown import render_markdown, report_summary
from ask_the_expert.tracking.run_identity import command_identity, new_run_id, short_hash
from ask_the_expert.tracking.wandb_logger import command_logger, wandb_dir
from ask_the_expert.utils.atomic import write_json_atomic, write_text_atomic
from ask_the_expert.utils.cli import SuiteParser, run_command
from ask_the_expert.utils.config_files import find_config
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.fingerprint import fingerprint
from ask_the_expert.utils.options import DataOptions, WandbOptions
from datamodules.cifar100_files import download, require_file, split_file

STEPS = ("generalist", "partition", "experts", "evaluate", "export", "report")
Step = Literal["generalist", "partition", "experts", "evaluate", "export", "report"]
# An experts config's ``partition: confusion:<n>`` asks the pipeline to learn n confusion-aware groups (ate-partition).
CONFUSION = "confusion:"
MARKER = "step.json"
STARTED = "step.started.json"
# The modules whose source a step runs (ask_the_expert.utils.fingerprint follows their imports); the model and data
# classes are named here because configs reach them by class_path, not by import.
TRAINING_CODE = (
    "ask_the_expert.commands.train_experts",
    "lightning_modules.classifier",
    "lightning_modules.expert",
    "datamodules.cifar100",
    "datamodules.expert_data",
    "ask_the_expert.tracking.wandb_logger",
)
CODE = {
    "generalist": TRAINING_CODE,
    "partition": ("ask_the_expert.commands.partition", "lightning_modules.classifier"),
    "experts": TRAINING_CODE,
    "evaluate": ("ask_the_expert.commands.evaluate", "lightning_modules.classifier", "lightning_modules.expert"),
    "export": (
        "ask_the_expert.commands.deploy",
        "ask_the_expert.deploy.export",
        "lightning_modules.classifier",
        "lightning_modules.expert",
    ),
}
# Arguments of evaluate.evaluate / deploy export that the pipeline sets itself, per seed.
EVALUATE_OWN = {"generalist", "experts", "out", "static_experts", "static_init_experts", "base", "data", "split"}
EVALUATE_OWN |= {"force"}
EXPORT_OWN = {"generalist", "experts", "out", "force", "data", "evaluate_on"}
# What a W&B sweep agent puts in the environment of its trial (wandb_agent.py). The first wandb.init of the process
# would take the trial's run id, so the steps' runs run without them and the pipeline's summary run takes them back.
SWEEP_VARIABLES = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
# What a pipeline is, for the W&B groups of its steps and of its summary run: every option but the seeds, the
# folders and the W&B options (and the evaluate and export options, in pipeline_hash).
CONFIGURATION_KEYS = (
    "preset", "split", "generalist_config", "generalist_args", "common_args", "experts_config", "variants",
    "progressive_args",
)  # fmt: skip
console = Console()


def pipeline_hash(opts: Namespace) -> str:
    """A short hash of the pipeline's configuration (CONFIGURATION_KEYS and the evaluate and export options but
    their W&B options): the seeds of one configuration share it, another configuration (a sweep trial) does not."""
    steps = {c: {k: v for k, v in vars(opts[c]).items() if k != "wandb"} for c in ("evaluate", "export")}
    return short_hash({**{k: opts[k] for k in CONFIGURATION_KEYS}, **steps})


def build_parser() -> SuiteParser:
    parser = SuiteParser(prog="ate-pipeline", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="Preset YAML (configs/experiments/*.yaml).")
    parser.add_argument("--preset", type=str, default="custom", help="Preset name, shown in the report and W&B.")
    parser.add_argument("--out", type=str, default="results/custom", help="Output folder.")
    parser.add_class_arguments(DataOptions, "data")
    parser.add_argument("--download", type=bool, default=False, help="Fetch CIFAR-100 into --data.data_dir first.")
    parser.add_argument("--seeds", type=list[int], default=[0], help="Training and split seeds, one run each.")
    parser.add_argument("--split", type=Literal["val", "test"], default="val", help="Split of the report.")
    parser.add_argument("--steps", type=list[Step], default=list(STEPS), help="Run only these steps.")
    parser.add_argument("--force_step", type=list[Step], default=[], help="Rerun these steps even if fresh.")
    parser.add_argument("--generalist_config", type=list[str], default=["configs/generalist.yaml"])
    parser.add_argument("--generalist_args", type=list[str], default=[], help="CLI overrides of the generalist.")
    parser.add_argument("--common_args", type=list[str], default=[], help="CLI overrides of every training run.")
    parser.add_argument("--experts_config", type=str | None, default=None, help="ate-train-experts config.")
    parser.add_argument(
        "--variants", type=list[train_experts.Variant] | None, default=None,
        help="Train and evaluate only these expert variants (default: the experts config's).",
    )  # fmt: skip
    parser.add_argument(
        "--progressive_args", type=list[str], default=[],
        help="CLI overrides of the progressive experts, after the experts config's (e.g. a sweep's stages).",
    )  # fmt: skip
    parser.add_class_arguments(WandbOptions, "wandb", help="The pipeline's summary run (the report step).")
    parser.add_function_arguments(evaluate.evaluate, "evaluate", skip=EVALUATE_OWN)
    parser.add_function_arguments(export_command, "export", skip=EXPORT_OWN)
    return parser


def data_file_names(split: str) -> list[str]:
    """The CIFAR-100 files a pipeline reads: val is held out of ``train``; ``test`` only for a test report."""
    return ["meta", "train"] + (["test"] if split == "test" else [])


class SeedRun:
    """The steps of one seed; each knows its inputs, its outputs and its fingerprint."""

    def __init__(self, opts: Namespace, seed: int) -> None:
        self.opts = opts
        self.seed = seed
        self.root = Path(opts.out) / f"seed_{seed}"
        self.generalist = self.root / "generalist" / "generalist.ckpt"
        self.job = train_experts.load_job(opts.experts_config, out=str(self.root / "experts"))
        self.job = replace(
            self.job,
            variants=opts.variants or self.job.variants,
            progressive_args=[*self.job.progressive_args, *opts.progressive_args],
        )
        self.partition_file = self.root / "partition" / "partition.json"
        spec = self.job.partition
        self.confusion_groups = (
            int(spec[len(CONFUSION) :]) if isinstance(spec, str) and spec.startswith(CONFUSION) else 0
        )
        if self.confusion_groups:
            self.job = replace(self.job, partition=str(self.partition_file))
        self.base = Path(self.job.out) / "base" / "base.ckpt"
        self.experts = {v: Path(self.job.out) / v for v in self.job.variants}
        self.eval_dir = self.root / "eval"
        self.bundle = self.root / "bundle"
        self.data = replace(DataOptions(**vars(opts.data)), split_seed=seed)

    # ----- what each step reads and writes -------------------------------------------------------------------
    def folder(self, step: str) -> Path:
        return {
            "generalist": self.generalist.parent,
            "partition": self.partition_file.parent,
            "experts": Path(self.job.out),
            "evaluate": self.eval_dir,
            "export": self.bundle.parent / "bundle.step",
        }[step]

    def data_files(self) -> dict[str, Path]:
        return {f"data/{n}": split_file(self.data.data_dir, n) for n in data_file_names(self.opts.split)}

    def expert_files(self, variant: str) -> list[Path]:
        return sorted(self.experts[variant].glob("expert_*.ckpt")) if variant in self.experts else []

    def training_args(self) -> list[str]:
        # common_args come last so that a preset or a test can override anything, the logger included.
        return [
            f"--seed_everything={self.seed}",
            *train_experts.data_args(self.data),
            f"--trainer.logger.init_args.save_dir={wandb_dir(self.opts.out)}",
            f"--trainer.logger.init_args.preset={self.opts.preset}",
            *self.opts.common_args,
        ]

    def generalist_args(self) -> list[str]:
        configs = [a for c in self.opts.generalist_config for a in ("-c", c)]
        return [
            *configs,
            *self.opts.generalist_args,
            f"--trainer.default_root_dir={self.generalist.parent}",
            *self.training_args(),
        ]

    def step_record(self, step: str) -> dict[str, Any]:
        """The fingerprint record of a step (inputs hashed now)."""
        files: dict[str, Path] = dict(self.data_files())
        if step == "generalist":
            args: dict[str, Any] = {"cli": self.generalist_args(), "test": self.opts.split == "test"}
            files.update({f"config/{c}": Path(c) for c in self.opts.generalist_config})
        elif step == "partition":
            args = {"num_experts": self.confusion_groups, "seed": self.seed, "data": asdict(self.data)}
            files["generalist"] = self.generalist
        elif step == "experts":
            args = {"job": asdict(self.job), "data": asdict(self.data), "cli": self.training_args()}
            configs = [*self.job.base_config, *self.job.progressive_config, *self.job.static_config]
            files.update(
                {f"config/{c}": Path(c) for c in [self.opts.experts_config, *configs, *self.job.common_config]}
            )
            files["generalist"] = self.generalist
            if self.confusion_groups:
                files["partition"] = self.partition_file
        else:
            files["generalist"] = self.generalist
            files.update({f"{v}/{p.name}": p for v in self.experts for p in self.expert_files(v)})
            if step == "evaluate":
                files["base"] = self.base
                # Where the run is logged does not change its results.
                kwargs = {k: v for k, v in self.command_kwargs("evaluate").items() if k != "wandb"}
                args = {"evaluate": kwargs, "data": asdict(self.data)}
                files.update({f"profile/{p}": Path(p) for p in self.command_kwargs("evaluate").get("profiles") or []})
            else:
                kwargs = {k: v for k, v in self.command_kwargs("export").items() if k != "wandb"}
                args = {"export": kwargs, "data": asdict(self.data)}
        return fingerprint(step, args, files, CODE[step])

    def command_kwargs(self, command: str) -> dict[str, Any]:
        """The ``--<command>.*`` options; the W&B run in the pipeline's folder, its name starting with the preset,
        and grouped across the seeds by the step and the pipeline's configuration (unless set)."""
        kwargs = dict(vars(self.opts[command]))
        wandb = kwargs["wandb"]
        group = wandb.group or f"{self.opts.preset}-{command}-{pipeline_hash(self.opts)}"
        kwargs["wandb"] = replace(
            wandb, group=group, preset=wandb.preset or self.opts.preset, dir=wandb.dir or wandb_dir(self.opts.out)
        )
        return kwargs

    def require(self, step: str, *paths: Path) -> None:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise SuiteError(
                f"Step '{step}' of seed {self.seed} needs {', '.join(missing)}, which an earlier step writes "
                "(generalist.ckpt: generalist; base and experts: experts). Run those steps first (leave out --steps "
                "to run the whole pipeline)."
            )

    def check_training_arguments(self) -> None:
        """Build every training run's CLI once (nothing trained): a bad override or stage list fails before the
        first step, not after the generalist has trained."""
        train_experts.suite_cli(self.generalist_args(), "the generalist run")
        job = self.job
        if self.confusion_groups:  # the learned groups do not exist yet: check with balanced stand-in groups
            chunks = np.array_split(np.arange(100), self.confusion_groups)
            job = replace(job, partition={"subsets": [c.tolist() for c in chunks]})
        job = replace(job, generalist_checkpoint=str(self.generalist), args=[*self.training_args(), *job.args])
        train_experts.Job(job, self.data, check_files=False)

    def applies(self, step: str) -> bool:
        """Whether ``step`` is part of this run (the partition step only for a confusion-aware partition)."""
        return step != "partition" or self.confusion_groups > 0

    def inputs_of(self, step: str) -> list[Path]:
        return {
            "generalist": [],
            "partition": [self.generalist],
            "experts": [self.generalist, *([self.partition_file] if self.confusion_groups else [])],
            "evaluate": [self.generalist, self.base, self.experts["progressive"]],
            "export": [self.generalist, self.experts["progressive"]],
        }[step]

    # ----- freshness ------------------------------------------------------------------------------------------
    def outputs_present(self, step: str) -> bool:
        if step == "generalist":
            return self.generalist.is_file()
        if step == "partition":
            return self.partition_file.is_file()
        if step == "experts":
            job = self.job
            ids = (
                job.experts
                if job.experts is not None
                else range(len(train_experts.parse_partition_spec(job.partition)))
            )
            return self.base.is_file() and all(
                (self.experts[v] / f"expert_{j}.ckpt").is_file() for v in job.variants for j in ids
            )
        if step == "evaluate":
            splits = ["val"] if self.opts.split == "val" else ["val", "test"]
            return all(is_complete(self.eval_dir / s) for s in splits)
        return (self.bundle / "manifest.json").is_file()

    def fresh(self, step: str, record: dict[str, Any]) -> bool:
        marker = self.folder(step) / MARKER
        try:
            done = json.loads(marker.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return done == record["fingerprint"] and self.outputs_present(step)

    def prepare(self, step: str, record: dict[str, Any]) -> None:
        """Before running: keep the outputs of an interrupted run of the same fingerprint (resume), else clear."""
        folder = self.folder(step)
        started = folder / STARTED
        try:
            same = json.loads(started.read_text())["fingerprint"] == record["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        (folder / MARKER).unlink(missing_ok=True)
        if not same:
            shutil.rmtree(folder, ignore_errors=True)
            if step == "export":
                shutil.rmtree(self.bundle, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(started, record)

    def finish(self, step: str, record: dict[str, Any], seconds: float) -> None:
        folder = self.folder(step)
        write_json_atomic(folder / MARKER, {**record, "seconds": round(seconds, 1)})  # last: the step is done
        (folder / STARTED).unlink(missing_ok=True)

    # ----- running --------------------------------------------------------------------------------------------
    def run(self, step: str) -> None:
        self.require(step, *self.inputs_of(step))
        if step == "generalist":
            train_experts.run_training(self.generalist_args(), self.generalist, test=self.opts.split == "test")
        elif step == "partition":
            learn_partition(
                generalist=str(self.generalist), num_experts=self.confusion_groups, out=str(self.partition_file),
                data=self.data, seed=self.seed, force=True,
            )  # fmt: skip
        elif step == "experts":
            job = replace(
                self.job,
                generalist_checkpoint=str(self.generalist),
                args=[*self.training_args(), *self.job.args],
                test=self.opts.split == "test",
            )
            train_experts.train_experts(job, self.data)
        elif step == "evaluate":
            static = {v: [str(self.experts[v])] for v in ("static", "static_init") if self.expert_files(v)}
            evaluate.evaluate(
                generalist=str(self.generalist),
                experts=[str(self.experts["progressive"])],
                static_experts=static.get("static"),
                static_init_experts=static.get("static_init"),
                base=str(self.base),
                data=self.data,
                split=self.opts.split,
                out=str(self.eval_dir),
                force=True,
                **self.command_kwargs("evaluate"),
            )
        elif step == "export":
            export_command(
                generalist=str(self.generalist),
                experts=[str(self.experts["progressive"])],
                out=str(self.bundle),
                force=True,
                data=self.data,
                evaluate_on="val",
                **self.command_kwargs("export"),
            )

    def results(self) -> dict:
        """This seed's numbers for the report (from the files the steps wrote)."""
        summary = self.eval_dir / self.opts.split / "summary.json"
        self.require("report", summary)

        def metrics(path: Path) -> dict:
            return json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}

        return {
            "seed": self.seed,
            "generalist": metrics(self.generalist),
            "base": metrics(self.base),
            "experts": {v: {p.stem.split("_")[1]: metrics(p) for p in self.expert_files(v)} for v in self.experts},
            "evaluation": json.loads(summary.read_text()),
            "partition": json.loads(self.partition_file.read_text()) if self.partition_file.is_file() else None,
        }


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
    if plots_dir.exists():
        shutil.rmtree(plots_dir)
    shutil.copytree(runs[0].eval_dir / opts.split / "plots", plots_dir)
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
    (ask_the_expert.results.metric_names: ``collab_<split>/<policy>/k<k>/<measure>/<scalar>``)."""
    values: dict[str, list[float]] = {}
    for r in results:
        evaluation = r["evaluation"]
        for row in evaluation["scalars"]:
            for key, value in row.items():
                if key not in ("policy", "k", "confidence") and isinstance(value, int | float):
                    name = scalar_metric(evaluation["split"], row["policy"], row["k"], row["confidence"], key)
                    values.setdefault(name, []).append(float(value))
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
    run.config.update({k: opts[k] for k in keys} | {"header": summary["header"]}, allow_val_change=True)
    run.summary.update(mean_scalars(results))
    if summary["findings"]:
        import wandb  # only when a run is logged

        columns = ["group", "claim", "seeds", "a_mean", "b_mean", "difference_mean", "intervals", "verdict"]
        rows = [
            [f["group"], f["claim"], f["seeds"], f["a"][0], f["b"][0], f["difference"][0], json.dumps(f["intervals"]),
             f["verdict"]]
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
    runs = [SeedRun(opts, s) for s in opts.seeds]
    for run, step in [(r, s) for r in runs for s in STEPS[:-1] if s in opts.steps and r.applies(s)]:
        label = f"seed {run.seed}: {step}"
        record = run.step_record(step) if all(p.exists() for p in run.inputs_of(step)) else None
        if record is not None and step not in opts.force_step and run.fresh(step, record):
            say(f"{label}: fresh (fingerprint {record['fingerprint'][:12]}), skipped")
            continue
        run.require(step, *run.inputs_of(step))
        record = record or run.step_record(step)  # what the step is made from, taken before it runs
        say(f"{label}: started at {time.strftime('%H:%M:%S')}")
        start = time.perf_counter()
        run.prepare(step, record)
        run.run(step)
        run.finish(step, record, time.perf_counter() - start)
        say(f"{label}: finished in {time.perf_counter() - start:.0f} s")
    if "report" not in opts.steps:
        return None
    report = write_report(opts, runs, argv, sweep)
    say(f"report: {report}")
    return report


def find_configs(opts: Namespace) -> None:
    """The preset's config and profile paths, each found from any working directory (ask_the_expert.utils.config_files:
    a ``configs/...`` path that is not in the working directory is the suite's own)."""
    opts.generalist_config = [find_config(c) for c in opts.generalist_config]
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
    missing = [c for c in opts.generalist_config if not Path(c).is_file()]
    if missing:
        raise SuiteError(
            f"--generalist_config {missing} do not exist (neither in the working directory nor among the suite's "
            "configs)."
        )
    if not opts.download:  # before any training CLI is built: a missing folder is one clear line
        for name in data_file_names(opts.split):
            purpose = f"the pipeline ({'--split test' if name == 'test' else 'training'})"
            require_file(opts.data.data_dir, name, purpose, download="--download true")
    if not opts.seeds or len(set(opts.seeds)) != len(opts.seeds):
        raise SuiteError(f"--seeds {opts.seeds!r} must be a non-empty list of distinct integers.")
    for run in [SeedRun(opts, seed) for seed in opts.seeds[:1]] if opts.experts_config else []:
        if "progressive" not in run.job.variants and {"evaluate", "export"} & set(opts.steps):
            raise SuiteError(
                f"The expert variants {run.job.variants} leave out 'progressive', which the evaluate and export "
                "steps route to; add it to --variants or leave those steps out with --steps."
            )
        run.check_training_arguments()
    e = opts.evaluate
    evaluate.check_arguments(
        e.k, e.confidence, e.temperature, e.rule, e.gap, e.budget, e.profiles, e.within_points, e.delta, e.bootstrap
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

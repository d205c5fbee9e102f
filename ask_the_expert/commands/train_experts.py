"""Train stage 0 (if its checkpoint is absent) and every expert of a partition: progressive and static variants.

    ate-train-experts --partition 5 --generalist_checkpoint G.ckpt --out runs/experts \\
        --data.data_dir DIR [--common.configs '[configs/trainer/gpu.yaml]'] [--parallel 4]
    ate-train-experts --config configs/experiments/experts_small_cpu.yaml --data.data_dir DIR

Variants (docs/design.md §4; ``--variants``, default all three; ask_the_expert.method.stages.EXPERT_VARIANTS):

- ``progressive``: from the stage-0 weights, stages 1-2 (focus, specialise on routed-in images).
- ``static``: static-from-base, the default baseline: from the stage-0 weights, S_j only, one stage, for exactly the
  optimizer steps of that expert's progressive stages (isolates the strategy from compute).
- ``static_init``: static-from-init: the seeded init of stage 0, S_j only, one stage, for stage 0's steps plus the
  progressive stages' steps (the full per-expert budget).

Every run goes through ate-train's SuiteCLI, built from typed settings (ask_the_expert.commands.train.TrainingRun):
the configs of its kind (``--base.configs``, ``--progressive.configs``, ``--static.configs``; both static variants use
``static``), then ``--common.configs``, then the data folder and split (``--data.*``, as in training), then the
overrides of ``--common.overrides`` and of its kind (``--progressive.overrides '{model.routing_k: 3}'``). The
partition is written once to ``<out>/partition.json`` and every expert reads it. Outputs, each written under a
temporary name and renamed, so a killed job never leaves half a file:

    <out>/partition.json                    the experts' subsets (ask_the_expert.method.subsets.save_partition)
    <out>/base/base.ckpt                    stage 0
    <out>/<variant>/expert_<j>.ckpt         final weights of expert j (hparams: subset, stages, start)
    <out>/<variant>/expert_<j>.json         its final val (and test) metrics, and what the run was made from

A model whose finished run was made from the same inputs (its command line and the content of the configs,
partition and checkpoints it reads: the fingerprint in its ``.json``) and whose checkpoint reads back whole (the
sha256 recorded when it was written) is skipped, so rerunning the same command resumes an interrupted job (an expert
that was cut off mid-run restarts from its beginning); a changed seed, epoch count or routing k, or a damaged
checkpoint, trains that model again. One job at a time writes an ``--out`` (a second is refused). ``--parallel N``
trains N experts at once, one per GPU (subprocesses with CUDA_VISIBLE_DEVICES). Every argument and input checkpoint
is checked before stage 0 starts. Bad input ends with a one-paragraph message and exit code 2; SIGTERM or Ctrl-C
stops the job with a non-zero exit, and the same command resumes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile
from lightning import Trainer
from rich.console import Console
from rich.table import Table

from ask_the_expert.commands.train import (
    SuiteCLI,
    TrainingRun,
    data_overrides,
    finished_checkpoint,
    reusable,
    run_record,
    run_training,
    suite_cli,
)
from ask_the_expert.method.splits import DataSplit
from ask_the_expert.method.stages import EXPERT_VARIANTS, Variant, schedule_steps, static_step_budget
from ask_the_expert.method.subsets import parse_partition_spec, save_partition
from ask_the_expert.tracking.wandb_logger import wandb_dir
from ask_the_expert.utils.atomic import write_json_atomic
from ask_the_expert.utils.cli import SuiteParser, run_command
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions
from ask_the_expert.utils.outputs import check_output_path, held_for_children, output_lock
from datamodules.cifar100_files import split_file
from lightning_modules.checkpoints import read_checkpoint, require_split

# The kinds of training run: stage 0 and the two kinds of expert schedule (both static variants run ``static``).
RUN_KINDS = ("base", "progressive", "static")


def _run_kind(kind: str) -> str:
    """The RUN_KINDS entry whose settings a run of ``kind`` (base or an expert variant) takes."""
    return kind if kind == "base" else "static" if EXPERT_VARIANTS[kind].single_stage else "progressive"


SUMMARY_METRICS = ("val/subset_acc", "val/subset_restricted_acc", "val/routed_in_acc", "val/acc")
console = Console()


@dataclass(frozen=True)
class ExpertsJob:
    """One ate-train-experts invocation (every field is a command-line option and a config key).

    Attributes:
        out: output folder.
        partition: ``superclass`` (20 experts), g superclasses per expert, explicit superclass groups, or a
            partition file (*.json, e.g. a confusion-aware one).
        variants: which experts to train (progressive, static = static-from-base, static_init = static-from-init).
        base: the stage-0 run: its configs, then its overrides.
        progressive: the progressive experts' runs (e.g. overrides ``{model.routing_k: 3, model.stages: [...]}``).
        static: the runs of both static variants (their step budget is set by the job).
        common: configs and overrides of every run, after those of its kind (e.g. a trainer preset, a model shape).
        generalist_checkpoint: the generalist whose routing defines R_j.
        experts: only these expert indices (default: all).
        max_experts: stop after training this many experts.
        parallel: experts trained at once, one per GPU.
        test: also evaluate each model on the test split.
    """

    out: str = "runs/experts"
    partition: int | str | list[list[int | str]] = "superclass"
    variants: list[Variant] = field(default_factory=lambda: list(EXPERT_VARIANTS))
    base: TrainingRun = field(default_factory=lambda: TrainingRun(["configs/base.yaml"]))
    progressive: TrainingRun = field(default_factory=lambda: TrainingRun(["configs/expert.yaml"]))
    static: TrainingRun = field(default_factory=lambda: TrainingRun(["configs/expert_static.yaml"]))
    common: TrainingRun = field(default_factory=TrainingRun)
    generalist_checkpoint: str | None = None
    experts: list[int] | None = None
    max_experts: int | None = None
    parallel: int = 1
    test: bool = True

    def run_of(self, kind: str) -> TrainingRun:
        """The settings of one run kind (RUN_KINDS) followed by the common ones."""
        return getattr(self, kind).then(self.common)


def build_parser() -> SuiteParser:
    parser = SuiteParser(prog="ate-train-experts", description=__doc__.split("\n")[0], exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML file with any of these options.")
    parser.add_class_arguments(ExpertsJob, None, as_group=False)
    # Training loaders are the runs' own (--common.overrides '{data.batch_size: 256}'): no evaluation loader here.
    parser.add_class_arguments(DataOptions, "data", skip={"batch_size", "num_workers"})
    return parser


def parse_job(argv: Sequence[str]) -> tuple[ExpertsJob, DataOptions]:
    """The job and the data options of an ate-train-experts command line (or ``["--config", FILE]``); configs are
    found from any working directory (ask_the_expert.utils.config_files)."""
    parser = build_parser()
    cfg = vars(parser.instantiate(parser.parse_args(list(argv))))
    cfg.pop("config", None)
    data = DataOptions(**vars(cfg.pop("data")))
    job = ExpertsJob(**cfg)
    return replace(job, **{kind: getattr(job, kind).found() for kind in (*RUN_KINDS, "common")}), data


def load_job(config: str | Path, **overrides: Any) -> ExpertsJob:
    """The ExpertsJob of an ate-train-experts YAML config, with some fields replaced."""
    return replace(parse_job(["--config", str(config)])[0], **overrides)


class Job:
    """The runs of one ExpertsJob; every argument and input is checked on construction."""

    def __init__(self, job: ExpertsJob, data: DataOptions, check_files: bool = True) -> None:
        """``check_files=False`` checks the arguments only (the pipeline, before the generalist exists)."""
        self.job = job
        self.data = data
        self.out = Path(job.out)
        self.wandb_folder = wandb_dir(self.out)  # every run of the job logs under <out>/wandb
        self.subsets = parse_partition_spec(job.partition)
        self.partition_file = self.out / "partition.json"
        self.base_checkpoint = self.out / "base" / "base.ckpt"
        n = len(self.subsets)
        bad = [j for j in job.experts or [] if not 0 <= j < n]
        if bad:
            raise SuiteError(f"--experts {bad} are out of range: the partition has {n} experts, so use 0..{n - 1}.")
        unknown = [v for v in job.variants if v not in EXPERT_VARIANTS]
        if unknown or not job.variants:
            raise SuiteError(f"--variants {job.variants!r} must be a non-empty list of {list(EXPERT_VARIANTS)}.")
        if job.parallel < 1 or (job.parallel > 1 and torch.cuda.device_count() < job.parallel):
            raise SuiteError(
                f"--parallel {job.parallel} needs that many GPUs, found {torch.cuda.device_count()}; use --parallel 1 "
                "(experts one after another) or at most the number of GPUs."
            )
        if job.max_experts is not None and job.max_experts < 0:
            raise SuiteError(f"--max_experts must be >= 0, got {job.max_experts}.")
        missing = [c for kind in RUN_KINDS for c in job.run_of(kind).configs if not Path(c).is_file()]
        if missing:
            raise SuiteError(f"Config file(s) {', '.join(missing)} do not exist; fix --<kind>.configs.")
        check_output_path(self.out, "--out", folder=True)
        test_file = split_file(data.data_dir, "test")
        if job.test and not test_file.is_file():  # else stage 0 would train to its end and only then need it
            raise SuiteError(
                f"--test true (the default) also evaluates every model on the test split, but {str(test_file)!r} is "
                "missing. Pass --test false to evaluate on val only, or copy the CIFAR-100 test file there."
            )
        split = DataSplit.of(data)
        if job.generalist_checkpoint is not None and check_files:
            info = read_checkpoint(job.generalist_checkpoint, "--generalist_checkpoint", ("generalist",))
            require_split(info, split)
        if self.base_checkpoint.is_file() and check_files:
            # A damaged stage 0 is trained again (run), so only a readable one is checked against this job.
            if finished_checkpoint(self.base_checkpoint) is not None:
                info = read_checkpoint(
                    self.base_checkpoint, f"the stage-0 checkpoint {self.base_checkpoint}", ("base",)
                )
                require_split(info, split)
        for kind in ("base", *job.variants):
            # Parse and build every kind of run once now: a bad override fails here, not after stage 0.
            cli = suite_cli(self.args(kind, self.out / "check", partition=job.partition), f"the {kind} runs")
            if kind != "base" and any(EXPERT_VARIANTS[v].single_stage for v in job.variants):
                check_step_budget(cli.trainer, kind)

    def expert_checkpoint(self, variant: str, j: int) -> Path:
        return self.out / variant / f"expert_{j}.ckpt"

    def args(self, kind: str, root: Path, j: int = 0, partition: Any = None, **more: Any) -> list[str]:
        """SuiteCLI arguments of one run of ``kind`` (base or an expert variant) for expert ``j``: the data folder and
        split, the configs and overrides of its kind and the common ones, then what the job sets (``partition``: the
        spec to pass instead of the partition file, for the checks before it is written; ``more``: further
        overrides)."""
        job = self.job
        settings = job.run_of(_run_kind(kind))
        first = data_overrides(self.data)
        if kind != "base":  # the generalist's logits, cached next to the experts (the run's overrides may move it)
            first["model.routing_cache_dir"] = str(self.out / "cache")
        own: dict[str, Any] = {"trainer.default_root_dir": str(root)}
        if kind != "base":
            base = self.base_checkpoint if EXPERT_VARIANTS[kind].start == "from_base" else None
            own.update({
                "model.partition": partition if partition is not None else str(self.partition_file),
                "model.expert_index": j,
                "model.base_checkpoint": str(base) if base else None,
                "model.generalist_checkpoint": job.generalist_checkpoint,
            })  # fmt: skip
        run = TrainingRun(settings.configs, {**first, **settings.overrides, **own, **more})
        return run.args()

    @cached_property
    def _progressive_cli(self) -> SuiteCLI:
        return suite_cli(self.args("progressive", self.out / "progressive", 0))

    def progressive_steps(self, j: int) -> int:
        """Optimizer steps of expert j's progressive stages, from the resolved progressive config."""
        cli = self._progressive_cli
        data = cli.datamodule
        size = data.subset_train_size(self.subsets[j])
        return schedule_steps(cli.model.stages, size, data.batch_size, cli.trainer.world_size)

    def static_steps(self, variant: str, j: int) -> int:
        """Step budget of static expert j (ask_the_expert.method.stages.static_step_budget)."""
        base_steps = read_checkpoint(self.base_checkpoint, "the stage-0 checkpoint", ("base",)).global_step
        return static_step_budget(EXPERT_VARIANTS[variant].start, base_steps, self.progressive_steps(j))

    def inputs(self, kind: str) -> dict[str, Path]:
        """The files a run of ``kind`` reads: its configs, and for experts the partition and checkpoints."""
        files = {f"config/{i}": Path(c) for i, c in enumerate(self.job.run_of(_run_kind(kind)).configs)}
        if kind != "base":
            files["partition"] = self.partition_file
            if self.job.generalist_checkpoint is not None:
                files["generalist"] = Path(self.job.generalist_checkpoint)
            if EXPERT_VARIANTS[kind].start == "from_base":
                files["base"] = self.base_checkpoint
        return files

    def run_args(self, kind: str, j: int = 0) -> list[str]:
        """The command line of one run (a single-stage expert's with its step budget)."""
        target = self.base_checkpoint if kind == "base" else self.expert_checkpoint(kind, j)
        budget = {}
        if kind != "base" and EXPERT_VARIANTS[kind].single_stage:
            budget["model.static_steps"] = self.static_steps(kind, j)
        return self.args(kind, target.parent, j, **budget)

    def pending(self, kind: str, j: int, label: str) -> bool:
        """Whether the run of ``kind`` (expert ``j``) must train: no finished run made from the same inputs that
        reads back whole."""
        target = self.base_checkpoint if kind == "base" else self.expert_checkpoint(kind, j)
        why = reusable(target, run_record(self.run_args(kind, j), self.job.test, self.inputs(kind)))
        if why is None:
            console.print(f"{label}: [green]exists[/], skipped")
        elif why:
            console.print(f"{label}: {target} is trained again: {why}")
        return why is not None

    def train(self, kind: str, j: int = 0) -> None:
        target = self.base_checkpoint if kind == "base" else self.expert_checkpoint(kind, j)
        target.parent.mkdir(parents=True, exist_ok=True)
        args = self.run_args(kind, j)
        for budget in (a.split("=", 1)[1] for a in args if a.startswith("--model.static_steps=")):
            console.print(f"{kind} expert {j}: budget {budget} optimizer steps")
        run_training(args, target, self.job.test, self.inputs(kind), self.wandb_folder)

    def train_base(self) -> None:
        if self.pending("base", 0, "stage 0"):
            console.rule("stage 0 (base, all classes)")
            self.train("base")

    @staticmethod
    def planned(job: ExpertsJob) -> list[tuple[str, int]]:
        """(variant, expert index) of every expert ``job`` trains."""
        experts = job.experts if job.experts is not None else range(len(parse_partition_spec(job.partition)))
        return [(v, j) for v in job.variants for j in experts]

    def todo(self) -> list[tuple[str, int]]:
        return self.planned(self.job)

    def write_partition(self) -> None:
        """The partition every expert reads; an existing file must hold the same subsets (a resumed job)."""
        if self.partition_file.is_file():
            found = parse_partition_spec(str(self.partition_file))
            if found != self.subsets:
                raise SuiteError(
                    f"{self.partition_file} holds another partition than --partition {self.job.partition!r}; the "
                    "experts in this folder belong to it. Use a new --out, or the partition of those experts."
                )
            return
        save_partition(self.partition_file, self.subsets, {"spec": self.job.partition})

    def run(self) -> None:
        self.write_partition()
        self.train_base()
        pending = [(v, j) for v, j in self.todo() if self.pending(v, j, f"{v} expert {j}")]
        if self.job.max_experts is not None:
            pending = pending[: self.job.max_experts]
        if self.job.parallel > 1:
            self.run_parallel(pending)
        else:
            for i, (variant, j) in enumerate(pending, 1):
                console.rule(f"[{i}/{len(pending)}] {variant} expert {j}: classes {self.subsets[j]}")
                start = time.perf_counter()
                self.train(variant, j)
                console.print(f"{variant} expert {j}: done in {time.perf_counter() - start:.0f} s")
        self.summary()

    def run_parallel(self, pending: list[tuple[str, int]]) -> None:
        """One subprocess per expert, each on its own GPU, at most ``--parallel`` at a time."""
        free = list(range(self.job.parallel))
        running: dict[subprocess.Popen, int] = {}
        queue = list(pending)
        failed = []
        try:
            while queue or running:
                while queue and free:
                    variant, j = queue.pop(0)
                    gpu = free.pop(0)
                    one = replace(self.job, variants=[variant], experts=[j], parallel=1, max_experts=None)
                    config = self.out / f".job-{variant}-{j}.json"
                    write_json_atomic(config, {**asdict(one), "data": asdict(self.data)})
                    cmd = [sys.executable, "-m", "ask_the_expert.commands.train_experts", "--config", str(config)]
                    console.print(f"{variant} expert {j}: started on GPU {gpu}")
                    # Each child writes one expert of this --out, which this process holds for them.
                    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu), **held_for_children(self.out)}
                    running[subprocess.Popen(cmd, env=env)] = gpu
                time.sleep(2)
                for proc in [p for p in running if p.poll() is not None]:
                    free.append(running.pop(proc))
                    if proc.returncode != 0:
                        failed.append(" ".join(proc.args[-2:]))
        finally:  # stopped (SIGTERM, Ctrl-C) or failed: no child trains on unattended
            for proc in running:
                proc.terminate()
            for proc in running:
                proc.wait()
        if failed:
            raise SuiteError(f"Some expert runs failed ({failed}); see their output above, fix, and rerun to resume.")

    def summary(self) -> None:
        table = Table(title=f"experts in {self.out}")
        table.add_column("variant")
        table.add_column("expert", justify="right")
        for name in (*SUMMARY_METRICS, "global_step"):
            table.add_column(name, justify="right")
        for variant, j in self.todo():
            path = self.expert_checkpoint(variant, j).with_suffix(".json")
            if path.is_file():
                m = json.loads(path.read_text())
                cells = [f"{m[k]:.4f}" if k in m else "-" for k in SUMMARY_METRICS]
                table.add_row(variant, str(j), *cells, str(m.get("global_step", "-")))
        console.print(table)


def check_step_budget(trainer: Trainer, kind: str) -> None:
    """Refuse Trainer limits that would cut a progressive run short of its stage list (or change what a static run
    counts): the static experts' compute-matched budget is computed from the stage list, so it would no longer be
    the progressive experts' real number of optimizer steps."""
    limits = {
        "--trainer.limit_train_batches": (trainer.limit_train_batches, 1.0),
        "--trainer.max_steps": (trainer.max_steps, -1),
        "--trainer.accumulate_grad_batches": (trainer.accumulate_grad_batches, 1),
    }
    changed = [f"{option} {value}" for option, (value, default) in limits.items() if value != default]
    if changed:
        raise SuiteError(
            f"The {kind} runs set {', '.join(changed)}: that changes how many optimizer steps a progressive expert "
            "takes, and the static experts' compute-matched step budget (computed from the stage list) would no "
            "longer match it. Shorten the stages' epochs instead, or train only --variants '[progressive]'."
        )


def train_experts(job: ExpertsJob, data: DataOptions) -> None:
    """Check everything, then train stage 0 and the experts of ``job`` (the function ate-pipeline calls)."""
    runs = Job(job, data)
    with output_lock(runs.out):
        runs.run()


def main(args: Sequence[str] | None = None) -> int:
    """Run the command; return the exit code (0, or 2 for bad input with its message printed)."""
    argv = list(sys.argv[1:] if args is None else args)

    return run_command(lambda: train_experts(*parse_job(argv)))


if __name__ == "__main__":
    sys.exit(main())

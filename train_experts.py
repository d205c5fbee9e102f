"""Train stage 0 (if its checkpoint is absent) and then every expert of a partition: progressive, static or both.

    python train_experts.py --partition 5 --mode both --generalist_checkpoint G.ckpt --out runs/experts \
        [--common_config '[configs/trainer/gpu.yaml]'] [--parallel 4] [-- --data.data_dir DIR ...]
    python train_experts.py --config configs/experiments/experts_small_cpu.yaml -- --data.data_dir DIR

Every run goes through train.py's SuiteCLI with the YAML configs (``--base_config``, ``--progressive_config``,
``--static_config``), then ``--common_config`` files, then ``--args``/``--<kind>_args`` and finally the arguments
after ``--``. Outputs, all written to a temporary name and renamed, so a killed job never leaves half a file:

    <out>/base/base.ckpt                              stage 0
    <out>/experts/<progressive|static>/expert_<j>.ckpt  final weights of expert j (hparams: subset, stages, start)
    <out>/experts/<progressive|static>/expert_<j>.json  its final val (and test) metrics

Experts whose checkpoint exists are skipped, so rerunning the same command resumes an interrupted job (an expert
that was cut off mid-run restarts from its beginning). ``--parallel N`` trains N experts at once, one per GPU
(subprocesses with CUDA_VISIBLE_DEVICES); without it the experts run one after another. A static expert gets
``round(base steps / number of experts)`` plus the steps of that expert's progressive schedule (stages 1..).
Bad input ends with a one-paragraph message and exit code 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

import torch
import wandb
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from rich.table import Table

from core.cli import run_command
from core.errors import SuiteError
from core.subsets import parse_partition_spec
from lightning_modules.stages import static_step_budget
from train import SuiteCLI

MODES = {"progressive": ("progressive",), "static": ("static",), "both": ("progressive", "static")}
SUMMARY_METRICS = ("val/subset_acc", "val/subset_restricted_acc", "val/routed_in_acc", "val/acc")
console = Console()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="train_experts.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options.")
    parser.add_argument("--out", type=str, default="runs/experts", help="Output folder.")
    parser.add_argument(
        "--partition",
        type=str | int | list[list[int | str]],
        default="superclass",
        help="'superclass' (20 experts), g superclasses per expert, or explicit superclass groups.",
    )
    parser.add_argument("--mode", type=Literal["progressive", "static", "both"], default="progressive")
    parser.add_argument("--base_config", type=list[str], default=["configs/base.yaml"])
    parser.add_argument("--progressive_config", type=list[str], default=["configs/expert.yaml"])
    parser.add_argument("--static_config", type=list[str], default=["configs/expert_static.yaml"])
    parser.add_argument("--common_config", type=list[str], default=[], help="Added to every run (e.g. a preset).")
    parser.add_argument("--args", type=list[str], default=[], help="CLI overrides for every run.")
    parser.add_argument("--base_args", type=list[str], default=[], help="CLI overrides for stage 0.")
    parser.add_argument("--progressive_args", type=list[str], default=[], help="CLI overrides, progressive.")
    parser.add_argument("--static_args", type=list[str], default=[], help="CLI overrides, static experts.")
    parser.add_argument("--generalist_checkpoint", type=str | None, default=None, help="Defines R_j.")
    parser.add_argument("--experts", type=list[int] | None, default=None, help="Only these experts.")
    parser.add_argument("--max_experts", type=int | None, default=None, help="Stop after training this many.")
    parser.add_argument("--parallel", type=int, default=1, help="Experts trained at once, one per GPU.")
    parser.add_argument("--test", type=bool, default=True, help="Also evaluate each model on the test split.")
    return parser


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def suite_cli(cli_args: list[str]) -> SuiteCLI:
    """train.py's CLI, configured from ``cli_args`` and instantiated, without running a subcommand."""
    with warnings.catch_warnings():
        # LightningCLI warns that sys.argv is ignored in favour of ``args``, which is the point here.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return SuiteCLI(args=cli_args, run=False)


def run_training(cli_args: list[str], target: Path, test: bool) -> dict[str, float]:
    """Fit (and test) one model through SuiteCLI; its final checkpoint lands at ``target`` only when complete."""
    cli = suite_cli(cli_args)
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    tmp = target.with_name(f"{target.name}.tmp")
    trainer.save_checkpoint(tmp)
    if test:
        trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    metrics["global_step"] = trainer.global_step
    if trainer.is_global_zero:
        _atomic_json(target.with_suffix(".json"), metrics)
        os.replace(tmp, target)
    if wandb.run is not None:  # the next run in this process must start its own W&B run
        wandb.finish()
    return metrics


class Job:
    """The runs of one train_experts.py invocation."""

    def __init__(self, opts, extra: list[str]) -> None:
        self.opts = opts
        self.extra = extra
        self.out = Path(opts.out)
        self.subsets = parse_partition_spec(opts.partition)
        self.partition_arg = json.dumps(opts.partition)
        self.base_checkpoint = self.out / "base" / "base.ckpt"
        n = len(self.subsets)
        bad = [j for j in opts.experts or [] if not 0 <= j < n]
        if bad:
            raise SuiteError(f"--experts {bad} are out of range: the partition has {n} experts, so use 0..{n - 1}.")
        if opts.parallel < 1 or (opts.parallel > 1 and torch.cuda.device_count() < opts.parallel):
            raise SuiteError(
                f"--parallel {opts.parallel} needs that many GPUs, found {torch.cuda.device_count()}; use "
                "--parallel 1 (experts one after another) or at most the number of GPUs."
            )

    def expert_checkpoint(self, mode: str, j: int) -> Path:
        return self.out / "experts" / mode / f"expert_{j}.ckpt"

    def args(self, kind: str, root: Path) -> list[str]:
        """SuiteCLI arguments of one run of ``kind`` (base, progressive, static)."""
        opts = self.opts
        configs = [*getattr(opts, f"{kind}_config"), *opts.common_config]
        return [
            *(a for c in configs for a in ("-c", c)),
            *opts.args,
            *getattr(opts, f"{kind}_args"),
            f"--trainer.default_root_dir={root}",
            *self.extra,
        ]

    def expert_args(self, mode: str, j: int) -> list[str]:
        args = [f"--model.partition={self.partition_arg}", f"--model.expert_index={j}"]
        if mode == "progressive":
            args.append(f"--model.base_checkpoint={self.base_checkpoint}")
        if self.opts.generalist_checkpoint is not None:
            args.append(f"--model.generalist_checkpoint={self.opts.generalist_checkpoint}")
        return args

    def progressive_cli_args(self, j: int) -> list[str]:
        return [*self.args("progressive", self.out / "experts" / "progressive"), *self.expert_args("progressive", j)]

    def static_steps(self, j: int) -> int:
        """Step budget of static expert j, from the resolved progressive config of expert j and the base's steps."""
        cli = suite_cli(self.progressive_cli_args(j))
        model, data = cli.model, cli.datamodule
        base_steps = torch.load(self.base_checkpoint, map_location="cpu", weights_only=False)["global_step"]
        return static_step_budget(
            base_steps,
            len(self.subsets),
            model.stages,
            data.subset_train_size(model.subset),
            data.batch_size,
            cli.trainer.world_size,
        )

    def train_base(self) -> None:
        if self.base_checkpoint.is_file():
            console.print(f"stage 0: [green]exists[/] {self.base_checkpoint}")
            return
        self.base_checkpoint.parent.mkdir(parents=True, exist_ok=True)
        console.rule("stage 0 (base, all classes)")
        run_training(self.args("base", self.base_checkpoint.parent), self.base_checkpoint, self.opts.test)

    def train_expert(self, mode: str, j: int) -> None:
        target = self.expert_checkpoint(mode, j)
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "progressive":
            args = self.progressive_cli_args(j)
        else:
            steps = self.static_steps(j)
            console.print(f"static expert {j}: budget {steps} optimizer steps")
            args = [
                *self.args("static", target.parent),
                *self.expert_args("static", j),
                f"--model.static_steps={steps}",
            ]
        run_training(args, target, self.opts.test)

    def todo(self) -> list[tuple[str, int]]:
        experts = self.opts.experts if self.opts.experts is not None else range(len(self.subsets))
        return [(mode, j) for mode in MODES[self.opts.mode] for j in experts]

    def run(self, argv: list[str]) -> None:
        self.train_base()
        pending = []
        for mode, j in self.todo():
            if self.expert_checkpoint(mode, j).is_file():
                console.print(f"{mode} expert {j}: [green]exists[/], skipped")
            else:
                pending.append((mode, j))
        if self.opts.max_experts is not None:
            pending = pending[: self.opts.max_experts]
        if self.opts.parallel > 1:
            self.run_parallel(pending, argv)
        else:
            for k, (mode, j) in enumerate(pending, 1):
                console.rule(f"[{k}/{len(pending)}] {mode} expert {j}: classes {self.subsets[j]}")
                start = time.perf_counter()
                self.train_expert(mode, j)
                console.print(f"{mode} expert {j}: done in {time.perf_counter() - start:.0f} s")
        self.summary()

    def run_parallel(self, pending: list[tuple[str, int]], argv: list[str]) -> None:
        """One subprocess per expert, each on its own GPU, at most ``--parallel`` at a time."""
        free = list(range(self.opts.parallel))
        running: dict[subprocess.Popen, int] = {}
        queue = list(pending)
        failed = []
        while queue or running:
            while queue and free:
                mode, j = queue.pop(0)
                gpu = free.pop(0)
                cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
                cmd += ["--mode", mode, "--experts", f"[{j}]", "--parallel", "1", "--", *self.extra]
                console.print(f"{mode} expert {j}: started on GPU {gpu}")
                running[subprocess.Popen(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)})] = gpu
            time.sleep(2)
            for proc in [p for p in running if p.poll() is not None]:
                free.append(running.pop(proc))
                if proc.returncode != 0:
                    failed.append(" ".join(proc.args[-4:]))
        if failed:
            raise SuiteError(f"Some expert runs failed ({failed}); see their output above, fix, and rerun to resume.")

    def summary(self) -> None:
        table = Table(title=f"experts in {self.out}")
        table.add_column("mode")
        table.add_column("expert", justify="right")
        for name in (*SUMMARY_METRICS, "global_step"):
            table.add_column(name, justify="right")
        for mode, j in self.todo():
            path = self.expert_checkpoint(mode, j).with_suffix(".json")
            if path.is_file():
                m = json.loads(path.read_text())
                cells = [f"{m[k]:.4f}" if k in m else "-" for k in SUMMARY_METRICS]
                table.add_row(mode, str(j), *cells, str(m.get("global_step", "-")))
        console.print(table)


def main(args: list[str] | None = None) -> int:
    """Run the command; return the exit code (0, or 2 for bad input with its message printed)."""
    args = sys.argv[1:] if args is None else list(args)
    own, extra = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    return run_command(lambda: Job(build_parser().parse_args(own), extra).run(own))


if __name__ == "__main__":
    sys.exit(main())

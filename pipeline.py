"""The whole pipeline for a named preset, for each seed: generalist, stage-0 base, progressive and static experts,
the collaborative evaluation, the deployment bundle; then a results report across the seeds.

    python pipeline.py --config configs/experiments/mini.yaml --data_dir DIR [--download true] \
        [--check_integrity false] [--seeds '[0, 1, 2]'] [--out results/mini] [--steps '[evaluate, report]']

Each step's output is written under a temporary name and renamed when complete; a step whose output exists is
skipped, so rerunning the same command resumes an interrupted job. Per seed ``s`` the training seed and the
train/val split seed are both ``s``. Outputs::

    OUT/seed_<s>/generalist/generalist.ckpt (+ .json metrics)
    OUT/seed_<s>/base/base.ckpt, OUT/seed_<s>/experts/{progressive,static}/expert_<j>.ckpt (+ .json)
    OUT/seed_<s>/eval/<split>/{curves.csv, summary.json, records.csv, plots/}   (evaluate.py's interface)
    OUT/seed_<s>/bundle/                                                        (python -m deploy export)
    OUT/report.md, OUT/summary.json, OUT/plots/                                 (across seeds)

Bad input or a missing step input ends with a one-paragraph message and exit code 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import deploy.__main__ as deploy_cli
import evaluate
import train_experts
from core.cli import run_command
from core.errors import SuiteError
from core.results_report import aggregate, render_markdown
from datamodules.cifar100_files import download

STEPS = ("generalist", "experts", "evaluate", "export", "report")
Step = Literal["generalist", "experts", "evaluate", "export", "report"]
console = Console()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="preset YAML (configs/experiments/*.yaml).")
    parser.add_argument("--preset", type=str, default="custom", help="Preset name, shown in the report.")
    parser.add_argument("--out", type=str, default="results/custom", help="Output folder.")
    parser.add_argument("--data_dir", type=str, default="data", help="Folder that contains cifar-100-python/.")
    parser.add_argument("--check_integrity", type=bool, default=True, help="Refuse re-packed data files.")
    parser.add_argument("--download", type=bool, default=False, help="Fetch CIFAR-100 into --data_dir first.")
    parser.add_argument("--seeds", type=list[int], default=[0], help="Training and split seeds, one run each.")
    parser.add_argument("--split", type=Literal["val", "test"], default="val", help="Split of the report.")
    parser.add_argument("--steps", type=list[Step], default=list(STEPS), help="Run only these steps.")
    parser.add_argument("--generalist_config", type=list[str], default=["configs/generalist.yaml"])
    parser.add_argument("--generalist_args", type=list[str], default=[], help="CLI overrides of the generalist.")
    parser.add_argument("--common_args", type=list[str], default=[], help="CLI overrides of every training run.")
    parser.add_argument("--experts_config", type=str, help="train_experts.py config (partition, stages, ...).")
    parser.add_argument("--evaluate_args", type=list[str], default=[], help="Extra evaluate.py arguments.")
    parser.add_argument("--export_args", type=list[str], default=[], help="Extra 'python -m deploy export' args.")
    return parser


def _run(name: str, exit_code: int) -> None:
    if exit_code != 0:
        raise SuiteError(f"Step '{name}' failed (exit code {exit_code}); its message is above. Fix it and rerun the "
                         "same command: completed steps are skipped.")


class SeedRun:
    """The steps of one seed; each knows its output and the inputs it needs."""

    def __init__(self, opts, seed: int) -> None:
        self.opts = opts
        self.seed = seed
        self.root = Path(opts.out) / f"seed_{seed}"
        self.generalist = self.root / "generalist" / "generalist.ckpt"
        self.base = self.root / "base" / "base.ckpt"
        self.experts = {mode: self.root / "experts" / mode for mode in ("progressive", "static")}
        self.summary = self.root / "eval" / opts.split / "summary.json"
        self.bundle = self.root / "bundle"

    @property
    def data_args(self) -> list[str]:
        return [f"--data.data_dir={self.opts.data_dir}", f"--data.check_integrity={self.opts.check_integrity}",
                f"--data.split_seed={self.seed}"]

    @property
    def training_args(self) -> list[str]:
        # common_args come last so that a preset or a test can override anything, the logger included.
        return [f"--seed_everything={self.seed}", *self.data_args, f"--trainer.logger.init_args.save_dir={self.root}",
                f"--trainer.logger.init_args.group={self.opts.preset}", *self.opts.common_args]

    def expert_files(self, mode: str) -> list[Path]:
        return sorted(self.experts[mode].glob("expert_*.ckpt"))

    def done(self, step: str) -> bool:
        return {
            "generalist": self.generalist.is_file,
            "experts": lambda: self.base.is_file() and self._experts_complete(),
            "evaluate": self.summary.is_file,
            "export": (self.bundle / "manifest.json").is_file,
            "report": lambda: False,
        }[step]()

    def _experts_complete(self) -> bool:
        """Every expert that the experts config asks for has its final checkpoint."""
        cfg = train_experts.build_parser().parse_args(["--config", self.opts.experts_config])
        ids = cfg.experts if cfg.experts is not None else range(len(train_experts.parse_partition_spec(cfg.partition)))
        return all((self.experts[mode] / f"expert_{j}.ckpt").is_file() for mode in train_experts.MODES[cfg.mode]
                   for j in ids)

    def require(self, step: str, *paths: Path) -> None:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            producer = {"generalist.ckpt": "generalist", "base.ckpt": "experts", "progressive": "experts",
                        "static": "experts"}
            makers = sorted({producer.get(Path(m).name, "experts") for m in missing})
            raise SuiteError(
                f"Step '{step}' of seed {self.seed} needs {', '.join(missing)}, which step(s) {', '.join(makers)} "
                f"write. Run those steps first (leave out --steps to run the whole pipeline)."
            )

    def _experts_args(self, extra: list[str]) -> list[str]:
        return ["--config", self.opts.experts_config, "--out", str(self.root),
                "--generalist_checkpoint", str(self.generalist), *extra, "--", *self.training_args]

    def run(self, step: str) -> None:
        opts = self.opts
        if step == "generalist":
            self.generalist.parent.mkdir(parents=True, exist_ok=True)
            configs = [a for c in opts.generalist_config for a in ("-c", c)]
            train_experts.run_training(
                [*configs, *opts.generalist_args, f"--trainer.default_root_dir={self.generalist.parent}",
                 *self.training_args],
                self.generalist, test=opts.split == "test",
            )
        elif step == "experts":
            self.require(step, self.generalist)
            _run(step, train_experts.main(self._experts_args(["--test", str(opts.split == "test").lower()])))
        elif step == "evaluate":
            self.require(step, self.generalist, self.base, self.experts["progressive"])
            static = self.expert_files("static")
            _run(step, evaluate.main([
                "--generalist", str(self.generalist), "--experts", str(self.experts["progressive"]),
                *(["--static-experts", str(self.experts["static"])] if static else []),
                "--base", str(self.base), "--data-dir", opts.data_dir,
                *([] if opts.check_integrity else ["--no-check-integrity"]),
                "--split-seed", str(self.seed), "--split", opts.split, "--out", str(self.root / "eval"),
                "--force", *opts.evaluate_args,
            ]))
        elif step == "export":
            self.require(step, self.generalist, self.experts["progressive"], self.summary)
            _run(step, deploy_cli.main([
                "export", "--generalist", str(self.generalist), "--experts", str(self.experts["progressive"]),
                "--out", str(self.bundle), "--force", "--data-dir", opts.data_dir, "--split", "val",
                "--split-seed", str(self.seed), *([] if opts.check_integrity else ["--no-check-integrity"]),
                *opts.export_args,
            ]))

    def results(self) -> dict:
        """This seed's numbers for the report (from the files the steps wrote)."""
        self.require("report", self.summary)

        def metrics(path: Path) -> dict:
            return json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}

        return {
            "seed": self.seed,
            "generalist": metrics(self.generalist),
            "base": metrics(self.base),
            "experts": {mode: {p.stem.split("_")[1]: metrics(p) for p in self.expert_files(mode)}
                        for mode in self.experts},
            "evaluation": json.loads(self.summary.read_text()),
        }


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` for uncommitted changes), or ``unknown`` outside git."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(opts, runs: list[SeedRun], argv: list[str]) -> Path:
    out = Path(opts.out)
    agg = aggregate([run.results() for run in runs])
    plots_dir = out / "plots"
    if plots_dir.exists():
        shutil.rmtree(plots_dir)
    shutil.copytree(runs[0].summary.parent / "plots", plots_dir)
    plots = sorted(str(p.relative_to(out)) for p in plots_dir.glob("*.png"))
    header = {
        "preset": opts.preset,
        "split": opts.split,
        "data": "CIFAR-100 training file, val held out (stratified, seeded)" if opts.split == "val" else "CIFAR-100",
        "command": " ".join(["python pipeline.py", *argv]),
        "commit (when the report was written)": git_commit(),
    }
    (out / "report.md").write_text(render_markdown(agg, header, plots))
    (out / "summary.json").write_text(json.dumps({"header": header, **agg}, indent=2, default=list))
    return out / "report.md"


def run_pipeline(opts, argv: list[str]) -> Path | None:
    runs = [SeedRun(opts, s) for s in opts.seeds]
    work = [(run, step) for run in runs for step in STEPS[:-1] if step in opts.steps]
    report = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(f"pipeline {opts.preset}", total=len(work) + ("report" in opts.steps))
        for run, step in work:
            label = f"seed {run.seed}: {step}"
            if run.done(step):
                progress.console.print(f"{label}: [green]done[/], skipped")
            else:
                progress.console.rule(label)
                start = time.perf_counter()
                run.run(step)
                progress.console.print(f"{label}: finished in {time.perf_counter() - start:.0f} s")
            progress.advance(task)
        if "report" in opts.steps:
            report = write_report(opts, runs, argv)
            progress.advance(task)
    if report:
        console.print(f"report: {report}")
    return report


def main(args: list[str] | None = None) -> int:
    """Run the pipeline; return the exit code (0, or 2 for bad input / a missing step input)."""
    args = sys.argv[1:] if args is None else list(args)

    def command() -> None:
        opts = build_parser().parse_args(args)
        if opts.experts_config is None and {"experts", "evaluate", "export"} & set(opts.steps):
            raise SuiteError("--experts_config is required (a train_experts.py config); presets set it.")
        if opts.download:
            download(opts.data_dir)
        run_pipeline(opts, args)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())

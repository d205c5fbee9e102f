"""The steps of ate-pipeline for one seed, each declared once: what it reads, what it writes, what its fingerprint
covers and how it runs (``PipelineStep``); freshness, resuming and the completion marker are the base class's, for
every step alike.

A step's fingerprint (ask_the_expert.utils.fingerprint) hashes its resolved arguments, the sha256 of its input files
(checkpoints of earlier steps, data files, configs, profiles) and the code of the modules it runs. A step is skipped
only when its completion marker (``step.json`` in its folder, written last) holds the same fingerprint and its outputs
are there; a step interrupted with the same fingerprint resumes (``step.started.json``), one with another starts over.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from jsonargparse import Namespace

from ask_the_expert.commands import evaluate, train_experts
from ask_the_expert.commands.deploy import export as export_command
from ask_the_expert.commands.partition import learn_partition
from ask_the_expert.commands.train import TrainingRun, data_overrides, finished_checkpoint, run_training, suite_cli
from ask_the_expert.method.cifar100_classes import NUM_CLASSES
from ask_the_expert.method.stages import BASELINE_VARIANTS
from ask_the_expert.results.evaluation_outputs import is_complete, read_summary
from ask_the_expert.tracking.run_identity import short_hash
from ask_the_expert.tracking.wandb_logger import wandb_dir
from ask_the_expert.utils.atomic import write_json_atomic
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.fingerprint import fingerprint
from ask_the_expert.utils.options import DataOptions
from datamodules.cifar100_files import split_file

MARKER = "step.json"
STARTED = "step.started.json"
# An experts config's ``partition: confusion:<n>`` asks the pipeline to learn n confusion-aware groups (ate-partition).
CONFUSION = "confusion:"
# The modules whose code a training step runs (the fingerprint follows their imports); the model and data classes are
# named because configs reach them by class_path, not by import.
TRAINING_CODE = (
    "ask_the_expert.commands.train_experts",
    "lightning_modules.classifier",
    "lightning_modules.expert",
    "datamodules.cifar100",
    "datamodules.expert_data",
    "ask_the_expert.tracking.wandb_logger",
)

# What a pipeline is, for the W&B groups of its steps and of its summary run: every option but the seeds, the folders
# and the W&B options (and the evaluate and export options, in pipeline_hash).
CONFIGURATION_KEYS = (
    "preset", "split", "generalist", "common", "experts_config", "variants", "progressive_overrides",
)  # fmt: skip


def pipeline_hash(opts: Namespace) -> str:
    """A short hash of the pipeline's configuration (CONFIGURATION_KEYS and the evaluate and export options but
    their W&B options): the seeds of one configuration share it, another configuration (a sweep trial) does not."""
    steps = {c: {k: v for k, v in vars(opts[c]).items() if k != "wandb"} for c in ("evaluate", "export")}
    settings = {k: vars(v) if isinstance(v, TrainingRun) else v for k, v in ((k, opts[k]) for k in CONFIGURATION_KEYS)}
    return short_hash({**settings, **steps})


def data_file_names(split: str) -> list[str]:
    """The CIFAR-100 files a pipeline reads: val is held out of ``train``; ``test`` only for a test report."""
    return ["meta", "train"] + (["test"] if split == "test" else [])


class SeedRun:
    """Where one seed's steps read and write, and the settings they share (per seed ``s`` the training seed and the
    train/val split seed are both ``s``)."""

    def __init__(self, opts: Namespace, seed: int) -> None:
        self.opts = opts
        self.seed = seed
        self.root = Path(opts.out) / f"seed_{seed}"
        self.generalist = self.root / "generalist" / "generalist.ckpt"
        job = train_experts.load_job(opts.experts_config, out=str(self.root / "experts"))
        progressive = TrainingRun(job.progressive.configs, {**job.progressive.overrides, **opts.progressive_overrides})
        self.job = replace(job, variants=opts.variants or job.variants, progressive=progressive)
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
        self.steps = [s for s in (step(self) for step in STEPS) if s.applies()]

    def data_files(self) -> dict[str, Path]:
        return {f"data/{n}": split_file(self.data.data_dir, n) for n in data_file_names(self.opts.split)}

    def expert_files(self, variant: str) -> list[Path]:
        return sorted(self.experts[variant].glob("expert_*.ckpt")) if variant in self.experts else []

    def seed_settings(self) -> TrainingRun:
        """What the pipeline sets in every training run of this seed, then the preset's ``common`` settings (last,
        so that a preset or a test can override anything, the logger included)."""
        own = {
            "seed_everything": self.seed,
            **data_overrides(self.data),
            "trainer.logger.init_args.save_dir": wandb_dir(self.opts.out),
            "trainer.logger.init_args.preset": self.opts.preset,
        }
        return TrainingRun(overrides=own).then(self.opts.common)

    def generalist_args(self) -> list[str]:
        root = TrainingRun(overrides={"trainer.default_root_dir": str(self.generalist.parent)})
        return [*self.opts.generalist.args(), *root.args(), *self.seed_settings().args()]

    def experts_job(self, check: bool = False) -> train_experts.ExpertsJob:
        """The experts job of this seed: the experts config's, with the seed's settings in front of its common ones
        (``check``: with balanced stand-in groups for a confusion partition not learned yet)."""
        settings = self.seed_settings()
        common = TrainingRun([*self.job.common.configs, *settings.configs], settings.overrides).then(
            TrainingRun(overrides=self.job.common.overrides)
        )
        job = replace(self.job, generalist_checkpoint=str(self.generalist), common=common)
        job = replace(job, test=self.opts.split == "test")
        if check and self.confusion_groups:
            chunks = np.array_split(np.arange(NUM_CLASSES), self.confusion_groups)
            job = replace(job, partition={"subsets": [c.tolist() for c in chunks]})
        return job

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

    def check_training_arguments(self) -> None:
        """Build every training run's CLI once (nothing trained): a bad override or stage list fails before the
        first step, not after the generalist has trained."""
        suite_cli(self.generalist_args(), "the generalist run")
        train_experts.Job(self.experts_job(check=True), self.data, check_files=False)

    def results(self) -> dict[str, Any]:
        """This seed's numbers for the report (from the files the steps wrote)."""
        evaluation = self.eval_dir / self.opts.split

        def metrics(path: Path) -> dict:
            return json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}

        return {
            "seed": self.seed,
            "generalist": metrics(self.generalist),
            "base": metrics(self.base),
            "experts": {v: {p.stem.split("_")[1]: metrics(p) for p in self.expert_files(v)} for v in self.experts},
            "evaluation": read_summary(evaluation),
            "partition": json.loads(self.partition_file.read_text()) if self.partition_file.is_file() else None,
        }


class PipelineStep:
    """One step of one seed. A step declares ``name`` and ``code`` (the modules it runs) and implements ``folder``,
    ``needs``, ``input_files``, ``arguments``, ``outputs_present`` and ``run``; the rest is common."""

    name: ClassVar[str]
    code: ClassVar[tuple[str, ...]]

    def __init__(self, seed: SeedRun) -> None:
        self.seed = seed

    # ----- what the step declares -----------------------------------------------------------------------------
    def applies(self) -> bool:
        """Whether the step is part of this seed's run."""
        return True

    def folder(self) -> Path:
        """Where its completion marker goes."""
        raise NotImplementedError

    def needs(self) -> list[Path]:
        """What earlier steps write and this one reads."""
        return []

    def input_files(self) -> dict[str, Path]:
        """Every file its outputs depend on, by name (hashed into the fingerprint): data files, configs, inputs."""
        return self.seed.data_files()

    def arguments(self) -> dict[str, Any]:
        """Its resolved arguments (hashed into the fingerprint)."""
        raise NotImplementedError

    def outputs_present(self) -> bool:
        raise NotImplementedError

    def clear(self) -> None:
        """Remove what a run with another fingerprint left."""
        shutil.rmtree(self.folder(), ignore_errors=True)

    def run(self) -> None:
        raise NotImplementedError

    # ----- common to every step ---------------------------------------------------------------------------------
    def ready(self) -> bool:
        return all(p.exists() for p in self.needs())

    def require(self) -> None:
        missing = [str(p) for p in self.needs() if not p.exists()]
        if missing:
            raise SuiteError(
                f"Step '{self.name}' of seed {self.seed.seed} needs {', '.join(missing)}, which an earlier step writes "
                "(generalist.ckpt: generalist; base and experts: experts). Run those steps first (leave out --steps "
                "to run the whole pipeline)."
            )

    def record(self) -> dict[str, Any]:
        """What the step is made from, with its fingerprint (input files hashed now)."""
        return fingerprint(self.name, self.arguments(), self.input_files(), self.code)

    def fresh(self, record: dict[str, Any]) -> bool:
        """The finished run's marker holds this fingerprint and the outputs are there."""
        return _marked(self.folder() / MARKER) == record["fingerprint"] and self.outputs_present()

    def prepare(self, record: dict[str, Any]) -> None:
        """Before running: keep the outputs of an interrupted run of the same fingerprint (resume), else clear."""
        folder = self.folder()
        (folder / MARKER).unlink(missing_ok=True)
        if _marked(folder / STARTED) != record["fingerprint"]:
            self.clear()
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / STARTED, record)

    def finish(self, record: dict[str, Any], seconds: float) -> None:
        folder = self.folder()
        write_json_atomic(folder / MARKER, {**record, "seconds": round(seconds, 1)})  # last: the step is done
        (folder / STARTED).unlink(missing_ok=True)


def _marked(marker: Path) -> str | None:
    """The fingerprint a step marker records, None without a readable one."""
    try:
        return json.loads(marker.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class GeneralistStep(PipelineStep):
    """Train the edge generalist (``--generalist`` settings, then the seed's and ``--common``)."""

    name = "generalist"
    code = TRAINING_CODE

    def folder(self) -> Path:
        return self.seed.generalist.parent

    def input_files(self) -> dict[str, Path]:
        configs = [*self.seed.opts.generalist.configs, *self.seed.opts.common.configs]
        return {**self.seed.data_files(), **{f"config/{c}": Path(c) for c in configs}}

    def arguments(self) -> dict[str, Any]:
        return {"cli": self.seed.generalist_args(), "test": self.seed.opts.split == "test"}

    def outputs_present(self) -> bool:
        return finished_checkpoint(self.seed.generalist) is not None

    def run(self) -> None:
        configs = [*self.seed.opts.generalist.configs, *self.seed.opts.common.configs]
        inputs = {f"config/{c}": Path(c) for c in configs}
        run_training(self.seed.generalist_args(), self.seed.generalist, self.seed.opts.split == "test", inputs)


class PartitionStep(PipelineStep):
    """Learn confusion-aware expert groups from the generalist (only for ``partition: confusion:<n>``)."""

    name = "partition"
    code = ("ask_the_expert.commands.partition", "lightning_modules.classifier")

    def applies(self) -> bool:
        return self.seed.confusion_groups > 0

    def folder(self) -> Path:
        return self.seed.partition_file.parent

    def needs(self) -> list[Path]:
        return [self.seed.generalist]

    def input_files(self) -> dict[str, Path]:
        return {**self.seed.data_files(), "generalist": self.seed.generalist}

    def arguments(self) -> dict[str, Any]:
        return {"num_experts": self.seed.confusion_groups, "seed": self.seed.seed, "data": asdict(self.seed.data)}

    def outputs_present(self) -> bool:
        return self.seed.partition_file.is_file()

    def run(self) -> None:
        learn_partition(
            generalist=str(self.seed.generalist), num_experts=self.seed.confusion_groups,
            out=str(self.seed.partition_file), data=self.seed.data, seed=self.seed.seed, force=True,
        )  # fmt: skip


class ExpertsStep(PipelineStep):
    """Train stage 0 and every expert variant (ate-train-experts with the experts config)."""

    name = "experts"
    code = TRAINING_CODE

    def folder(self) -> Path:
        return Path(self.seed.job.out)

    def needs(self) -> list[Path]:
        return [self.seed.generalist, *([self.seed.partition_file] if self.seed.confusion_groups else [])]

    def input_files(self) -> dict[str, Path]:
        job = self.seed.experts_job()
        configs = [
            self.seed.opts.experts_config,
            *(c for kind in train_experts.RUN_KINDS for c in job.run_of(kind).configs),
        ]
        files = {**self.seed.data_files(), **{f"config/{c}": Path(c) for c in configs}}
        return {**files, **{f"needs/{p.name}": p for p in self.needs()}}

    def arguments(self) -> dict[str, Any]:
        return {"job": asdict(self.seed.experts_job()), "data": asdict(self.seed.data)}

    def outputs_present(self) -> bool:
        seed = self.seed
        models = [seed.base, *(seed.experts[v] / f"expert_{j}.ckpt" for v, j in train_experts.Job.planned(seed.job))]
        return all(finished_checkpoint(m) is not None for m in models)

    def run(self) -> None:
        train_experts.train_experts(self.seed.experts_job(), self.seed.data)


class EvaluateStep(PipelineStep):
    """Evaluate the collaboration (ate-evaluate with the base model and every static variant trained)."""

    name = "evaluate"
    code = ("ask_the_expert.commands.evaluate", "lightning_modules.classifier", "lightning_modules.expert")

    def folder(self) -> Path:
        return self.seed.eval_dir

    def needs(self) -> list[Path]:
        return [self.seed.generalist, self.seed.base, self.seed.experts["progressive"]]

    def input_files(self) -> dict[str, Path]:
        seed = self.seed
        experts = {f"{v}/{p.name}": p for v in seed.experts for p in seed.expert_files(v)}
        profiles = {f"profile/{p}": Path(p) for p in seed.command_kwargs("evaluate").get("profiles") or []}
        return {**seed.data_files(), "generalist": seed.generalist, "base": seed.base, **experts, **profiles}

    def arguments(self) -> dict[str, Any]:
        # Where the run is logged does not change its results.
        kwargs = {k: v for k, v in self.seed.command_kwargs("evaluate").items() if k != "wandb"}
        return {"evaluate": kwargs, "data": asdict(self.seed.data)}

    def outputs_present(self) -> bool:
        splits = ["val"] if self.seed.opts.split == "val" else ["val", "test"]
        return all(is_complete(self.seed.eval_dir / s) for s in splits)

    def run(self) -> None:
        seed = self.seed
        baselines = {f"{v}_experts": [str(seed.experts[v])] for v in BASELINE_VARIANTS if seed.expert_files(v)}
        evaluate.evaluate(
            generalist=str(seed.generalist),
            experts=[str(seed.experts["progressive"])],
            **baselines,
            base=str(seed.base),
            data=seed.data,
            split=seed.opts.split,
            out=str(seed.eval_dir),
            force=True,
            **seed.command_kwargs("evaluate"),
        )


class ExportStep(PipelineStep):
    """Export the deployment bundle (ate-deploy export, tau chosen on val's selection part, split as the evaluation
    splits it); its marker sits beside the bundle."""

    name = "export"
    code = (
        "ask_the_expert.commands.deploy",
        "ask_the_expert.deploy.export",
        "lightning_modules.classifier",
        "lightning_modules.expert",
    )

    def folder(self) -> Path:
        return self.seed.bundle.parent / "bundle.step"

    def needs(self) -> list[Path]:
        return [self.seed.generalist, self.seed.experts["progressive"]]

    def input_files(self) -> dict[str, Path]:
        experts = {f"progressive/{p.name}": p for p in self.seed.expert_files("progressive")}
        return {**self.seed.data_files(), "generalist": self.seed.generalist, **experts}

    def arguments(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.seed.command_kwargs("export").items() if k != "wandb"}
        return {"export": kwargs, "data": asdict(self.seed.data), "selection": self.seed.opts.evaluate.selection}

    def outputs_present(self) -> bool:
        return (self.seed.bundle / "manifest.json").is_file()

    def clear(self) -> None:
        super().clear()
        shutil.rmtree(self.seed.bundle, ignore_errors=True)

    def run(self) -> None:
        seed = self.seed
        export_command(
            generalist=str(seed.generalist), experts=[str(seed.experts["progressive"])], out=str(seed.bundle),
            force=True, data=seed.data, evaluate_on="val", selection=seed.opts.evaluate.selection,
            **seed.command_kwargs("export"),
        )  # fmt: skip


# Every step of a seed, in the order they run (the report across the seeds follows: ask_the_expert.commands.pipeline).
STEPS: tuple[type[PipelineStep], ...] = (GeneralistStep, PartitionStep, ExpertsStep, EvaluateStep, ExportStep)

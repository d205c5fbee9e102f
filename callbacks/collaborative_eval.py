"""CollaborativeInferenceCallback: gathers the per-sample records of ``CollaborativeSystem`` from every rank and has
ask_the_expert.method.policies turn them into the curves, scalars and operating points of docs/design.md §6 (rank
zero)."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from ask_the_expert.method.costs import Profile, load_profile
from ask_the_expert.method.findings import PrimaryFamily
from ask_the_expert.method.holdout import SelectionSplit
from ask_the_expert.method.policies import Records, Report, assess, check_operating_rule, merge_records, select_on_val
from ask_the_expert.method.stats import MIN_RESAMPLES
from ask_the_expert.results.evaluation_outputs import (
    findings_table,
    log_wandb,
    plot_files,
    rich_table,
    wandb_payload,
    write_outputs,
)
from ask_the_expert.results.plots import write_plots
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.hashing import file_sha256
from ask_the_expert.utils.log_output import log_console
from lightning_modules.distributed import all_gather_objects


class CollaborativeInferenceCallback(Callback):
    """Evaluates every routing policy at validation end (every ``every_n_epochs`` epochs) and at test end.

    The module's ``validation_step`` / ``test_step`` must return the records of
    ``CollaborativeSystem.evaluation_records``. Under DDP the records of all ranks are gathered and the
    padding duplicates dropped; rank zero computes and writes. Every choice (the operating point with ``rule``, the
    fused weight, the deferral rule, "up to" and break-even points) is made on val's selection part
    (ask_the_expert.method.policies.select_on_val) and applied unchanged to the assessed data: val's assessment part
    at validation end (``assess_on_val``), else test at test end (the val run must come first in the same callback
    instance). The system must split val with the same ``holdout`` (it fits T on the selection part).

    Args:
        out_dir: folder for ``<split>/{curves.csv, summary.json, records.csv, plots/*.png}``; None writes no
            files (W&B and the table still happen).
        profiles: cost profiles (YAML paths or loaded ``Profile``); without any, cost columns are empty.
        every_n_epochs: during ``fit``, evaluate only every n validation epochs (sanity checks never).
        rule, gap, budget: ``ask_the_expert.method.sweep.choose_operating_point`` settings.
        random_seed: seed of the random-offload policy.
        reference: the accuracy ``offload_within_*`` is measured against (``base``, ``oracle`` or ``generalist``;
            default base when evaluated, else oracle).
        within_points: X of "the offload needed to come within X points of the reference".
        delta: "up to" reductions count thresholds whose accuracy is at least the baseline's minus delta.
        bootstrap: paired-bootstrap resamples behind every finding's interval (>= 100).
        family: the primary family, declared before the run (Holm-corrected verdicts); the rest is exploratory.
        holdout: how val is split into deferral, selection and assessment parts.
        assess_on_val: assess on val's assessment part (a val-only evaluation) or, false, on test.
        print_table: print the rich table on rank zero.
        wandb_max_points: thin each curve to about this many points in W&B (the CSV keeps every threshold).
    """

    def __init__(
        self,
        out_dir: str | Path | None = None,
        profiles: Sequence[str | Path | Profile] = (),
        every_n_epochs: int = 1,
        rule: str = "within_gap",
        gap: float = 0.005,
        budget: float | None = None,
        random_seed: int = 0,
        print_table: bool = True,
        wandb_max_points: int = 200,
        reference: str | None = None,
        within_points: float = 0.5,
        delta: float = 0.005,
        bootstrap: int = 1000,
        family: PrimaryFamily = PrimaryFamily(),
        holdout: SelectionSplit = SelectionSplit(),
        assess_on_val: bool = True,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise SuiteError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        check_operating_rule(rule, gap, budget)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.profiles = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
        self.every_n_epochs = every_n_epochs
        self.rule, self.gap, self.budget = rule, gap, budget
        self.random_seed = random_seed
        self.print_table = print_table
        self.wandb_max_points = wandb_max_points
        self.reference, self.within_points, self.delta = reference, within_points, delta
        if bootstrap < MIN_RESAMPLES or not within_points >= 0 or not delta >= 0:
            raise SuiteError(
                f"Need bootstrap >= {MIN_RESAMPLES} resamples (got {bootstrap}), within_points >= 0 (got "
                f"{within_points}) and delta >= 0 (got {delta}); the defaults are 1000, 0.5 and 0.005."
            )
        self.bootstrap = bootstrap
        self.family, self.holdout, self.assess_on_val = family, holdout, assess_on_val
        self.selection: Report | None = None  # the choices made on val, applied at test end
        self.reports: dict[str, Report] = {}
        self._parts: list[Records] = []
        self._active = False

    def _start(self, active: bool) -> None:
        self._parts, self._active = [], active

    def _collect(self, outputs: Any) -> None:
        if self._active and isinstance(outputs, Mapping) and "index" in outputs:
            self._parts.append(dict(outputs))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = trainer.state.fn != "fit" or (trainer.current_epoch + 1) % self.every_n_epochs == 0
        self._start(due and not trainer.sanity_checking)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(True)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        self._collect(outputs)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        self._collect(outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active:
            self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

    def _finish(self, trainer: Trainer, pl_module: LightningModule, split: str) -> None:
        local = {
            "records": merge_records(self._parts),
            "forwards": dict(getattr(pl_module, "forward_counts", {})),
        }
        self._parts, self._active = [], False
        gathered = all_gather_objects(trainer, local)
        if not trainer.is_global_zero:
            return
        records = merge_records([g["records"] for g in gathered])
        forwards = sum((Counter(g["forwards"]) for g in gathered), Counter())
        settings = {"random_seed": self.random_seed, "reference": self.reference, "within_points": self.within_points}
        if split == "val":
            self.selection = select_on_val(
                records, self.profiles, split, assess_on_val=self.assess_on_val, holdout=self.holdout, rule=self.rule,
                gap=self.gap, budget=self.budget, delta=self.delta, family=self.family, **settings,
            )  # fmt: skip
        elif self.selection is None:
            raise SuiteError(
                "No val evaluation ran before test in this callback, and every choice (T, the operating points, the "
                "fused weight, the deferral rule) is made on val: run trainer.validate() before trainer.test()."
            )
        report = self.selection
        if split == "test" or self.assess_on_val:
            report = assess(records, self.selection, self.profiles, split, resamples=self.bootstrap, **settings)
        report.meta = {
            "temperature": float(getattr(pl_module, "temperature_value", float("nan"))),
            "temperature_fit_on": report.protocol["temperature_fit_on"],
            "forwards": {k: int(v) for k, v in sorted(forwards.items())},
            "operating_rule": {
                "rule": self.rule,
                "gap": self.gap,
                "budget": self.budget,
                "chosen_on": report.protocol["chosen_on"],
            },
            "bootstrap": {
                "resamples": self.bootstrap,
                "level": 0.95,
                "paired_over": f"the {report.reported_on} samples",
                "primary_family": f"Holm's correction at a family-wise alpha of {self.family.alpha}",
            },
            "experts_routing_k": getattr(pl_module, "experts_routing_k", None),
            "epoch": trainer.current_epoch,
            "sources": _sources(pl_module),
        }
        self.reports[split] = report
        self._publish(trainer, report, records)

    def _publish(self, trainer: Trainer, report: Report, records: Records) -> None:
        folder = write_outputs(report, records, self.out_dir / report.split) if self.out_dir is not None else None
        runs = [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if runs:
            with tempfile.TemporaryDirectory() as scratch:
                # Without an output folder the plots are drawn for W&B only (wandb copies them when logged).
                drawn = report.reported_records(records)
                pngs = plot_files(folder) if folder is not None else write_plots(report, drawn, Path(scratch))
                payload = wandb_payload(report, self.wandb_max_points, pngs)
                for run in runs:
                    log_wandb(run, payload)
        if self.print_table:
            console = log_console()  # a log file's width, not rich's 80 columns
            console.print(rich_table(report))
            if report.findings:
                console.print(findings_table(report))


def _sources(module: LightningModule) -> dict[str, Any]:
    """The checkpoint files the evaluated models came from, with their sha256 (provenance and W&B lineage)."""
    out: dict[str, Any] = {}
    for role, value in getattr(module, "sources", {}).items():
        paths = value if isinstance(value, list) else [value] if value is not None else []
        out[role] = [{"path": str(p), "sha256": file_sha256(p)} for p in paths]
    return out

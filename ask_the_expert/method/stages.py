"""Expert training schedules (docs/design.md §4): stages, epoch lengths and step budgets, as plain arithmetic.

An expert is one run through a list of stages that switch at epoch boundaries. An epoch shows each image of the
expert's subset S_j about once: ``ceil(|S_j| / round(rho * B))`` batches (``ceil(|S_j| / B)`` when
``round(rho * B) == 0``), rounded up to a multiple of the number of DDP ranks, so that the epoch length never
depends on the size of the pool the rest of each batch comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from ask_the_expert.utils.errors import SuiteError

Rest = Literal["other_classes", "routed_in"]
RESTS: tuple[str, ...] = ("other_classes", "routed_in")
# Where an expert's weights start: the stage-0 base weights or the seeded init of stage 0 (docs/design.md §4).
Start = Literal["from_base", "from_init"]
STARTS: tuple[str, ...] = ("from_base", "from_init")


@dataclass(frozen=True)
class ExpertVariant:
    """One way of training the experts (docs/design.md §4); its name is its output folder, its record prefix in an
    evaluation and its policy.

    Attributes:
        name: ``progressive``, ``static``, ``static_init``.
        title: how reports name it.
        start: where its weights start (``from_base``: the stage-0 weights; ``from_init``: stage 0's seeded init).
        single_stage: trained on S_j only in one stage, for a step budget derived from the progressive stages
            (``static_step_budget``); otherwise the progressive stages of the config.
    """

    name: str
    title: str
    start: Start
    single_stage: bool


EXPERT_VARIANTS: dict[str, ExpertVariant] = {
    v.name: v
    for v in (
        ExpertVariant("progressive", "progressive", "from_base", single_stage=False),
        ExpertVariant("static", "static-from-base", "from_base", single_stage=True),
        ExpertVariant("static_init", "static-from-init", "from_init", single_stage=True),
    )
}
# The single-stage variants: the baselines an evaluation routes to beside the progressive experts.
BASELINE_VARIANTS: dict[str, ExpertVariant] = {n: v for n, v in EXPERT_VARIANTS.items() if v.single_stage}
Variant = Literal[tuple(EXPERT_VARIANTS)]  # for command-line choices


def subset_per_batch(batch_size: int, rho: float) -> int:
    """Subset images in each batch: ``round(rho * batch_size)``."""
    return round(rho * batch_size)


def batches_per_epoch(subset_size: int, batch_size: int, rho: float, num_replicas: int = 1) -> int:
    """Batches each rank runs per epoch (the module docstring defines the epoch)."""
    share = subset_per_batch(batch_size, rho)
    total = math.ceil(subset_size / (share if share > 0 else batch_size))
    return math.ceil(total / num_replicas)


@dataclass(frozen=True)
class Stage:
    """One stage of an expert's schedule.

    Attributes:
        epochs: epochs of this stage (see the module docstring for the epoch length).
        lr: peak learning rate; warm-up then cosine decay to 0 within the stage.
        warmup_epochs: linear warm-up at the start of the stage, in epochs (may be fractional or 0).
        rho: share of each batch drawn from the subset S_j.
        rest: where the rest of each batch comes from: ``other_classes`` (training images outside S_j) or
            ``routed_in`` (R_j: images outside S_j that the generalist's Top-k routing sends to this expert).
        frozen_blocks: the first f transformer blocks (and, when f > 0, the patch/position embeddings) are frozen.
        kd_weight: weight of distillation from the weights at the start of this stage (0 turns it off).
        kd_temperature: distillation temperature T.
    """

    epochs: int
    lr: float = 5e-4
    warmup_epochs: float = 0.0
    rho: float = 1.0
    rest: Rest = "other_classes"
    frozen_blocks: int = 0
    kd_weight: float = 0.0
    kd_temperature: float = 2.0

    def batches(self, subset_size: int, batch_size: int, num_replicas: int = 1) -> int:
        """Batches (optimizer steps) per epoch of this stage for a subset of ``subset_size`` training images."""
        return batches_per_epoch(subset_size, batch_size, self.rho, num_replicas)

    def steps(self, subset_size: int, batch_size: int, num_replicas: int = 1) -> int:
        """Optimizer steps of this stage for a subset of ``subset_size`` training images."""
        return self.epochs * self.batches(subset_size, batch_size, num_replicas)


def _stage_error(i: int, problem: str) -> SuiteError:
    return SuiteError(f"Stage {i} of --model.stages {problem}")


def _check_stage(i: int, stage: Stage, depth: int, has_generalist: bool) -> None:
    if isinstance(stage.epochs, bool) or not isinstance(stage.epochs, int) or stage.epochs < 0:
        raise _stage_error(i, f"has epochs={stage.epochs!r}; use an integer >= 0.")
    if not 0.0 <= stage.rho <= 1.0:
        raise _stage_error(i, f"has rho={stage.rho!r}, outside [0, 1]; rho is the subset's share of a batch.")
    if stage.rest not in RESTS:
        raise _stage_error(i, f"has rest={stage.rest!r}; choose one of {list(RESTS)}.")
    if stage.rest == "routed_in" and stage.rho < 1.0 and not has_generalist:
        raise _stage_error(
            i,
            "draws from routed_in but no --model.generalist_checkpoint is given; R_j comes from the "
            "generalist's routing. Pass the generalist's checkpoint, or use rest: other_classes.",
        )
    if not 0 <= stage.frozen_blocks <= depth:
        raise _stage_error(i, f"freezes {stage.frozen_blocks} blocks but the model has {depth}; use 0..{depth}.")
    if not (stage.lr > 0 and stage.warmup_epochs >= 0 and 0.0 <= stage.kd_weight <= 1.0):
        raise _stage_error(
            i,
            f"has lr={stage.lr!r}, warmup_epochs={stage.warmup_epochs!r}, kd_weight={stage.kd_weight!r}; "
            "use lr > 0, warmup_epochs >= 0 and kd_weight in [0, 1].",
        )
    if stage.kd_weight > 0 and (i == 0 or not stage.kd_temperature > 0):
        raise _stage_error(
            i,
            "asks for distillation, which needs a previous stage (the teacher is the weights at this "
            "stage's start) and kd_temperature > 0.",
        )


def parse_stages(stages: Sequence[Mapping[str, Any]], depth: int, has_generalist: bool) -> list[Stage]:
    """Validate the config's stage list and build Stage objects; every problem raises SuiteError."""
    if not stages:
        raise SuiteError("--model.stages is empty. Give at least one stage, e.g. [{epochs: 10, lr: 5.0e-4, rho: 1.0}].")
    known = {f.name for f in fields(Stage)}
    parsed = []
    for i, spec in enumerate(stages):
        if not isinstance(spec, Mapping):
            raise _stage_error(i, f"is {spec!r}, not a mapping; write e.g. {{epochs: 5, lr: 5.0e-4, rho: 0.5}}.")
        unknown = sorted(set(spec) - known)
        if unknown:
            raise _stage_error(i, f"has unknown keys {unknown}; the keys are {sorted(known)}.")
        if "epochs" not in spec:
            raise _stage_error(i, "has no 'epochs'; every stage needs its number of epochs.")
        stage = Stage(**spec)
        _check_stage(i, stage, depth, has_generalist)
        parsed.append(stage)
    if sum(s.epochs for s in parsed) == 0:
        raise SuiteError("--model.stages has 0 epochs in total; give at least one stage epochs >= 1.")
    return parsed


def locate(stages: Sequence[Stage], epoch: int) -> tuple[int, int]:
    """(stage index, first epoch of that stage) for a 0-based epoch; epochs past the end stay in the last stage."""
    start, found = 0, (0, 0)
    for i, stage in enumerate(stages):
        # The last non-empty stage that has started is the current one; 0-epoch stages are skipped.
        if stage.epochs > 0 and epoch >= start:
            found = (i, start)
        start += stage.epochs
    return found


def schedule_steps(stages: Sequence[Stage], subset_size: int, batch_size: int, num_replicas: int = 1) -> int:
    """Optimizer steps of a whole expert schedule."""
    return sum(s.steps(subset_size, batch_size, num_replicas) for s in stages)


def static_step_budget(start: Start, base_steps: int, progressive_steps: int) -> int:
    """Optimizer steps a static expert gets (docs/design.md §4).

    - ``from_base``: starts from the stage-0 weights, so it gets exactly the steps the progressive stages 1-2 spend
      on that expert: the comparison isolates the strategy (mixing, confusers, freezing, distillation) from compute.
    - ``from_init``: starts from the seeded init, so it gets the full per-expert budget: stage 0's steps plus the
      progressive stages' steps (stage 0 is not divided among the experts).
    """
    if start not in STARTS:
        raise SuiteError(f"Unknown start {start!r} of a static expert variant; choose one of {list(STARTS)}.")
    if base_steps < 0 or progressive_steps < 1:
        raise SuiteError(
            f"A static expert's budget needs base steps >= 0 and progressive steps >= 1, got {base_steps} and "
            f"{progressive_steps}; train stage 0 and give the progressive stages at least one epoch."
        )
    return progressive_steps + (base_steps if start == "from_init" else 0)


def static_epochs(step_budget: int, stage_batches: int) -> int:
    """Epochs a single-stage run needs to reach ``step_budget`` steps (the last epoch is cut at the budget)."""
    return max(1, math.ceil(step_budget / max(1, stage_batches)))

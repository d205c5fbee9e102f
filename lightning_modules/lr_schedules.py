"""Learning-rate schedules from torch's own schedulers: linear warm-up, then cosine decay to 0."""

from __future__ import annotations

import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LRScheduler:
    """Step s (0-based) gets lr * (s + 1) / warmup_steps while s < warmup_steps, then
    lr * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2, reaching 0 at total_steps.

    The base lr is each param group's ``initial_lr`` (its ``lr`` when the scheduler is created). Stepped once per
    optimizer step; ``total_steps`` is the number of optimizer steps of the run (or stage).
    """
    cosine_steps = max(1, total_steps - warmup_steps)
    if warmup_steps <= 0:
        return CosineAnnealingLR(optimizer, T_max=cosine_steps)
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    cosine = CosineAnnealingLR(optimizer, T_max=cosine_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def restart_schedule(
    optimizer: Optimizer, peak_lr: float, warmup_steps: int, total_steps: int, steps_done: int = 0
) -> LRScheduler:
    """A fresh ``warmup_cosine`` with peak ``peak_lr`` (an expert stage), advanced by ``steps_done`` steps (a run
    resumed inside the stage), so that the next optimizer step uses the stage's lr for step ``steps_done``."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] = peak_lr
    scheduler = warmup_cosine(optimizer, warmup_steps, total_steps)
    with warnings.catch_warnings():
        # Advancing without optimizer steps is the point here (a resumed stage), not a mistake.
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
        for _ in range(steps_done):
            scheduler.step()
    return scheduler

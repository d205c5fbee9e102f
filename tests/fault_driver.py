"""Runs ate-pipeline and kills itself with SIGKILL at one point inside one step (tests/test_fault_injection.py).

    FAULT_AT=<step>:<event>:<n> python tests/fault_driver.py <pipeline arguments>

Events, counted within the named step of this process: ``commit`` (an ``os.replace`` / ``os.rename``: the moment a
temporary file or folder would become the real one; the kill comes just before it) and ``batch`` (an optimizer step).
Nothing here is part of the suite: it only wraps functions the suite calls.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.optim.optimizer import register_optimizer_step_pre_hook

from ask_the_expert.commands import pipeline, pipeline_steps

STEP, EVENT, COUNT = os.environ["FAULT_AT"].split(":")
current: dict[str, str | None] = {"step": None}
seen: Counter[str] = Counter()


def tick(event: str) -> None:
    if current["step"] == STEP and event == EVENT:
        seen[event] += 1
        if seen[event] == int(COUNT):
            print(f"FAULT_INJECTED {STEP}:{EVENT}:{COUNT}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def wrap(function):
    def wrapped(*args, **kwargs):
        tick("commit")
        return function(*args, **kwargs)

    return wrapped


os.replace, os.rename = wrap(os.replace), wrap(os.rename)
register_optimizer_step_pre_hook(lambda *_: tick("batch"))


def counted(run):
    """A step's ``run``, with the events inside it counted for that step."""

    def wrapped(self: pipeline_steps.PipelineStep) -> None:
        current["step"] = self.name
        return run(self)

    return wrapped


for step_class in pipeline_steps.STEPS:
    step_class.run = counted(step_class.run)
sys.exit(pipeline.main(sys.argv[1:]))

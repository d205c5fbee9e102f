"""The W&B metric names of a collaborative-inference evaluation, declared once for every writer and reader: the
evaluation callback and ``ate-evaluate`` (ask_the_expert.results.evaluation_outputs), the pipeline's summary run
(the mean across seeds), a sweep's objective (configs/sweeps/) and ``ate-compare --wandb_runs``. The same metric
therefore has the same name in every run, and W&B can put the runs on one panel.

Every name starts with ``collab_<split>/`` (the split evaluated), apart from the training runs' own ``val/...``
metrics:

- ``collab_<split>/<policy>/k<k>/<measure>/<scalar>``: one scalar of one curve (``area_gain_pts``,
  ``acc@30%``, ...; k = 0 for the policies without Top-k);
- ``collab_<split>/curves/<policy>_k<k>_<measure>/<column>[/<profile>]``: one curve on the offload grid, against
  the step metric ``collab_<split>/offload_pct``;
- ``collab_<split>/<what>``: everything else an evaluation logs (references, hit rates, operating points, tables,
  plots), under the same prefix.
"""

from __future__ import annotations

import re


def split_prefix(split: str) -> str:
    """``collab_<split>``: the first part of every metric of an evaluation of ``split``."""
    return f"collab_{split}"


def flat(text: str) -> str:
    """A name part without dots: W&B nests keys at "." (a profile called "a.b" would become two levels)."""
    return str(text).replace(".", "_")


def scalar_metric(split: str, policy: str, k: int, measure: str, scalar: str) -> str:
    """``collab_<split>/<policy>/k<k>/<measure>/<scalar>``: one scalar of the curve (policy, k, measure)."""
    return f"{split_prefix(split)}/{policy}/k{k}/{measure}/{scalar}"


def offload_step_metric(split: str) -> str:
    """The step metric of the grid curves: the offload level in percent."""
    return f"{split_prefix(split)}/offload_pct"


def curve_glob(split: str) -> str:
    """The glob that matches every grid-curve metric of ``split``."""
    return f"{split_prefix(split)}/curves/*"


def curve_metric(split: str, key: tuple[str, int, str], column: str, profile: str | None = None) -> str:
    """``collab_<split>/curves/<policy>_k<k>_<measure>/<column>[/<profile>]``: one column of the grid curve ``key``
    (policy, k, measure)."""
    policy, k, measure = key
    name = f"{split_prefix(split)}/curves/{policy}_k{k}_{flat(measure)}/{column}"
    return f"{name}/{flat(profile)}" if profile else name


def parse_curve_accuracy(name: str, split: str, policies: list[str]) -> tuple[str, int, str] | None:
    """(policy, k, measure) of the grid-curve accuracy metric ``name`` (``curve_metric(..., "accuracy")``), else
    None; ``policies``: the policy names to recognise (longest first wins, as some are prefixes of others)."""
    pattern = "|".join(re.escape(p) for p in sorted(policies, key=len, reverse=True))
    m = re.fullmatch(rf"{re.escape(split_prefix(split))}/curves/({pattern})_k(\d+)_(.+)/accuracy", name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None

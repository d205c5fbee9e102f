"""Break-even maps (docs/design.md §7): which deployment is cheapest at a required accuracy, over a profile grid.

Four strategies answer every sample: G alone on the edge, the medium model on the edge, everything sent to
the near edge (the medium model answers), and the collaboration (G plus routed experts at the smallest
offload ratio whose val accuracy reaches the target). Accuracies do not depend on the profile, so
feasibility is fixed once; only the costs change as two profile quantities vary over a grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ask_the_expert.method.costs import (
    COST_KEYS,
    LATENCY,
    QUANTITIES,
    Profile,
    baseline_costs,
    mean_costs_for_offload_count,
)
from ask_the_expert.method.stats import accuracy_at, offload_to_reach
from ask_the_expert.utils.errors import ProfileError

STRATEGIES = ("edge_generalist", "edge_medium", "near_edge_only", "collaboration")


def strategy_costs(profile: Profile, offload_ratio: float | None) -> dict[str, dict[str, float]]:
    """Mean per-sample costs (COST_KEYS) of each strategy on a profile; no collaboration when offload_ratio is None."""
    out = {name: dict(costs) for name, costs in baseline_costs(profile).items()}
    if offload_ratio is not None:
        if not 0.0 <= offload_ratio <= 1.0:
            raise ProfileError(f"offload_ratio must lie in [0, 1], got {offload_ratio!r}; read it off a sweep curve.")
        costs = mean_costs_for_offload_count(profile, np.asarray(float(offload_ratio)))
        out["collaboration"] = {k: float(v) for k, v in costs.items()}
    return out


def profile_fields(profile: Profile) -> list[str]:
    """Dotted names of every profile quantity a break-even map can vary on this profile."""
    roles = [f"edge.latency_ms.{r}" for r in profile.edge.latency_ms]
    roles += [f"near_edge.latency_ms.{r}" for r in profile.near_edge.latency_ms]
    return [*QUANTITIES, *roles]


def get_field(profile: Profile, field: str) -> float:
    """Current value of a dotted profile field (see profile_fields)."""
    _check_field(profile, field)
    parts = field.split(".")
    section = getattr(profile, parts[0])
    return float(section.latency_ms[parts[2]] if len(parts) == 3 else getattr(section, parts[1]))


def with_field(profile: Profile, field: str, value: float) -> Profile:
    """A copy of the profile with one dotted field set, checked by the field's rule (costs.QUANTITIES; latencies
    >= 0)."""
    _check_field(profile, field)
    quantity = QUANTITIES.get(field, LATENCY)
    why = quantity.problem(value)
    if why:
        raise ProfileError(f"{field} {why}, got {value!r}; fix the grid values for this field.")
    v = float(value)
    parts = field.split(".")
    section = getattr(profile, parts[0])
    if len(parts) == 3:
        new_section = replace(section, latency_ms={**section.latency_ms, parts[2]: v})
    else:
        new_section = replace(section, **{parts[1]: int(v) if quantity.rule == "int0" else v})
    return replace(profile, **{parts[0]: new_section})


def _check_field(profile: Profile, field: str) -> None:
    valid = profile_fields(profile)
    if field not in valid:
        raise ProfileError(f"Unknown profile field {field!r} for a break-even map. Use one of: {', '.join(valid)}.")


def _grid(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ProfileError(f"{name} must be a non-empty 1-D list of finite numbers, got shape {v.shape}.")
    return v


def break_even_map(
    profile: Profile,
    x_field: str,
    x_values: Sequence[float] | np.ndarray,
    y_field: str,
    y_values: Sequence[float] | np.ndarray,
    curve_offload: np.ndarray,
    curve_accuracy: np.ndarray,
    accuracy_generalist: float,
    accuracy_medium: float,
    target_accuracy: float,
) -> dict[str, Any]:
    """Costs of every strategy and the cheapest feasible one over a grid of two profile quantities.

    A strategy is feasible when its accuracy >= target (1e-12 slack); the collaboration runs at the smallest
    offload ratio on its (val) curve that reaches the target, fixed by the curve, not by the profile.
    Returns strategies, x_field, x_values, y_field, y_values, feasible {strategy: bool}, accuracy {strategy:
    accuracy, NaN for an infeasible collaboration}, collaboration_offload_ratio (None when infeasible),
    costs {cost_key: (S, len(y), len(x)) float, NaN for an infeasible collaboration}, best {cost_key:
    (len(y), len(x)) int index into strategies of the cheapest feasible one, ties to the first, -1 when none}
    and profile_point (x, y) of the unmodified profile.
    """
    if x_field == y_field:
        raise ProfileError(f"x_field and y_field are both {x_field!r}; a map needs two different profile fields.")
    xs, ys = _grid(x_values, "x_values"), _grid(y_values, "y_values")
    point = (get_field(profile, x_field), get_field(profile, y_field))
    curve_x = np.asarray(curve_offload, dtype=np.float64)
    curve_y = np.asarray(curve_accuracy, dtype=np.float64)
    ratio = float(offload_to_reach(curve_x, curve_y, float(target_accuracy))[0])
    reached = not math.isnan(ratio)
    accuracy = {
        "edge_generalist": float(accuracy_generalist),
        "edge_medium": float(accuracy_medium),
        "near_edge_only": float(accuracy_medium),
        "collaboration": float(accuracy_at(curve_x, curve_y, ratio)[0]) if reached else math.nan,
    }
    feasible = {s: bool(accuracy[s] >= target_accuracy - 1e-12) for s in STRATEGIES}
    costs = {k: np.full((len(STRATEGIES), ys.size, xs.size), np.nan) for k in COST_KEYS}
    for iy, yv in enumerate(ys):
        row_profile = with_field(profile, y_field, yv)
        for ix, xv in enumerate(xs):
            per = strategy_costs(with_field(row_profile, x_field, xv), ratio if reached else None)
            for s, name in enumerate(STRATEGIES):
                for k in COST_KEYS:
                    costs[k][s, iy, ix] = per[name][k] if name in per else math.nan
    mask = np.array([feasible[s] for s in STRATEGIES])[:, None, None]
    best = {}
    for k, c in costs.items():
        masked = np.where(mask, c, np.inf)
        best[k] = np.where(mask.any(), np.argmin(masked, axis=0), -1).astype(np.int64)
    return {
        "strategies": list(STRATEGIES),
        "x_field": x_field,
        "x_values": xs,
        "y_field": y_field,
        "y_values": ys,
        "feasible": feasible,
        "accuracy": accuracy,
        "collaboration_offload_ratio": ratio if reached else None,
        "costs": costs,
        "best": best,
        "profile_point": point,
    }

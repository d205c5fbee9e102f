"""Exact threshold sweep, curve summaries and operating points (docs/design.md §6).

A sample is offloaded when its confidence c < tau. Because the expert choice does not depend on tau,
one pass of G and of the chosen expert gives, per sample, whether the local answer and the offloaded
answer are correct; every threshold's accuracy then follows from cumulative sums over sorted confidences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ask_the_expert.method.costs import COST_KEYS, Profile, mean_costs_for_offload_count
from ask_the_expert.method.router import offload_mask
from ask_the_expert.utils.errors import RoutingError

OPERATING_RULES = ("within_gap", "latency_budget", "energy_budget")
# Absolute slack for comparisons of derived floats (accuracies are k/N, costs are affine in k/N);
# far below any meaningful difference, it only absorbs rounding in e.g. 0.99 * acc.
TOLERANCE = 1e-12
# How far below the lowest / above the highest confidence a tau that offloads none / all is put (threshold_at).
END_MARGIN = 1e-3


def check_sweep_inputs(
    confidence: np.ndarray, correct_local: np.ndarray, correct_offload: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.asarray(confidence)
    n = c.shape[0] if c.ndim == 1 else -1
    if c.ndim != 1 or n == 0 or c.dtype.kind not in "fiu":
        raise RoutingError(
            f"confidence must be a non-empty 1-D numeric array, got shape {c.shape} and dtype {c.dtype}. "
            "Pass one confidence per evaluated sample."
        )
    if not np.all(np.isfinite(c)):
        raise RoutingError(
            f"confidence holds {int(np.sum(~np.isfinite(c)))} NaN/inf values; check the logits (NaN usually "
            "means a diverged model) before sweeping thresholds."
        )
    out = []
    for name, x in (("correct_local", correct_local), ("correct_offload", correct_offload)):
        x = np.asarray(x)
        if x.shape != (n,) or x.dtype.kind not in "biu" or (x.dtype.kind != "b" and np.any((x != 0) & (x != 1))):
            raise RoutingError(
                f"{name} must be a boolean (or 0/1) array of shape ({n},), matching confidence; got shape "
                f"{x.shape} and dtype {x.dtype}. Pass prediction == label per sample."
            )
        out.append(x.astype(bool))
    return c.astype(np.float64), out[0], out[1]


def sweep_thresholds(
    confidence: np.ndarray, correct_local: np.ndarray, correct_offload: np.ndarray
) -> dict[str, np.ndarray]:
    """Accuracy at every distinct threshold, exactly, in O(N log N).

    Returns ascending `tau` with one entry per distinct confidence value u (offload the samples with
    c < u; the first entry, min(c), offloads none) plus a last tau = nextafter(max(c), +inf) that
    offloads all. Samples with equal confidence therefore always switch together. Also returns
    offload_ratio, accuracy, num_offloaded and num_correct (same length as tau).
    """
    c, loc, off = check_sweep_inputs(confidence, correct_local, correct_offload)
    n = c.shape[0]
    order = np.argsort(c, kind="stable")
    cs = c[order]
    cum_loc = np.concatenate(([0], np.cumsum(loc[order], dtype=np.int64)))
    cum_off = np.concatenate(([0], np.cumsum(off[order], dtype=np.int64)))
    # First sorted position of each distinct value = number of samples strictly below it.
    starts = np.flatnonzero(np.concatenate(([True], cs[1:] != cs[:-1])))
    counts = np.concatenate((starts, [n])).astype(np.int64)
    tau = np.concatenate((cs[starts], [np.nextafter(cs[-1], np.inf)]))
    num_correct = cum_off[counts] + (cum_loc[n] - cum_loc[counts])
    return {
        "tau": tau,
        "offload_ratio": counts / n,
        "accuracy": num_correct / n,
        "num_offloaded": counts,
        "num_correct": num_correct,
    }


def add_costs(
    curve: Mapping[str, np.ndarray],
    profile: Profile | None,
    near_model: str = "expert",
    edge_model: str = "generalist",
) -> dict[str, np.ndarray]:
    """A copy of a curve plus, when a profile is given, mean latency_ms, edge_energy_mj and system_energy_mj per
    sample at each threshold (near_model is the near-edge role that offloads run)."""
    out = dict(curve)
    if profile is not None:
        out.update(mean_costs_for_offload_count(profile, out["offload_ratio"], edge_model, near_model))
    return out


def _curve_arrays(curve: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(curve["offload_ratio"], dtype=np.float64)
        y = np.asarray(curve["accuracy"], dtype=np.float64)
    except KeyError as exc:
        raise RoutingError(f"The curve has no {exc.args[0]!r} entry; build it with sweep_thresholds().") from None
    if x.ndim != 1 or x.shape != y.shape or x.size == 0 or np.any(np.diff(x) < 0):
        raise RoutingError(
            "A curve needs equal-length 1-D offload_ratio (non-decreasing) and accuracy arrays; build it "
            "with sweep_thresholds()."
        )
    return x, y


def accuracy_at_offload(curve: Mapping[str, np.ndarray], ratio: float) -> float:
    """Accuracy of the curve point with the largest offload ratio <= ratio (never exceeds the budget)."""
    x, y = _curve_arrays(curve)
    idx = int(np.searchsorted(x, ratio + TOLERANCE, side="right")) - 1
    if idx < 0:
        raise RoutingError(f"No curve point has offload ratio <= {ratio!r}; the smallest is {x[0]:g}.")
    return float(y[idx])


def area_under_curve(curve: Mapping[str, np.ndarray]) -> float:
    """Area under accuracy vs offload ratio over [0, 1]: the mean accuracy over all offload levels.

    Trapezoids between the exact points (linear interpolation = offloading a random part of a tie block).
    """
    x, y = _curve_arrays(curve)
    if abs(x[0]) > TOLERANCE or abs(x[-1] - 1.0) > TOLERANCE:
        raise RoutingError(
            f"The area needs a curve from offload ratio 0 to 1, got {x[0]:g}..{x[-1]:g}; use the full "
            "sweep_thresholds() output."
        )
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def offload_to_reach(curve: Mapping[str, np.ndarray], target: float) -> float:
    """Smallest offload ratio whose accuracy >= target (an absolute accuracy); NaN if no threshold reaches it."""
    x, y = _curve_arrays(curve)
    ok = np.flatnonzero(y >= target - TOLERANCE)
    return float(x[ok[0]]) if ok.size else math.nan


def accuracy_name(ratio: float) -> str:
    """The name of the accuracy at an offload ratio in scalars and findings: ``acc@30%`` for 0.3."""
    return f"acc@{round(ratio * 100.0, 6):g}%"


def summarise_curve(
    curve: Mapping[str, np.ndarray],
    shared_scale: tuple[float, float],
    references: Mapping[str, float],
    within_points: float = 0.5,
    ratios: Sequence[float] = (0.1, 0.2, 0.3, 0.5),
) -> dict[str, float]:
    """Scalars of one curve, every one on a scale shared by all policies of the evaluation.

    - ``acc@10%`` ...: accuracy at the largest offload <= 10 %, ...; ``acc_local_only``, ``acc_all_offloaded``.
    - ``area_gain_pts``: mean accuracy over offload in [0, 1] minus generalist-only accuracy, in points.
    - ``area_norm``: (area - lo) / (hi - lo) with the evaluation's shared (lo, hi): generalist-only accuracy and
      the oracle's all-offloaded accuracy; comparable across policies because the denominator is the same.
    - ``offload_within_<X>pt_of_<ref>``: the smallest offload whose accuracy is within X points (absolute) of
      the named reference accuracy (e.g. the base model on every sample); NaN when it is never reached.
    """
    _, y = _curve_arrays(curve)
    area = area_under_curve(curve)
    lo, hi = shared_scale
    out = {accuracy_name(r): accuracy_at_offload(curve, r) for r in ratios}
    out["acc_local_only"] = float(y[0])
    out["acc_all_offloaded"] = float(y[-1])
    out["area_gain_pts"] = 100.0 * (area - float(y[0]))
    out["area_norm"] = (area - lo) / (hi - lo) if hi != lo else math.nan
    for name, accuracy in references.items():
        out[f"offload_within_{within_points:g}pt_of_{name}"] = offload_to_reach(curve, accuracy - within_points / 100)
    return out


def threshold_at(curve: Mapping[str, np.ndarray], idx: int) -> float:
    """The tau that reproduces point ``idx`` of a sweep_thresholds curve, in the middle of its confidence gap.

    Every tau between the last offloaded and the first kept confidence splits the curve's samples the same way; the
    midpoint keeps float noise (PyTorch vs onnxruntime, ~1e-6) from flipping samples next to it, and is what the
    evaluation applies to other data and what an export deploys. Offloading none or all: END_MARGIN beyond the ends.
    """
    values = np.asarray(curve["tau"], dtype=np.float64)[:-1]  # the distinct confidences, ascending
    if idx == 0:
        return float(values[0] - END_MARGIN)
    if idx >= len(values):
        return float(values[-1] + END_MARGIN)
    return float((values[idx - 1] + values[idx]) / 2.0)


def _point(curve: Mapping[str, np.ndarray], idx: int) -> dict[str, float]:
    out = {"tau": threshold_at(curve, idx) if "tau" in curve else math.nan}
    for key in ("offload_ratio", "accuracy", *COST_KEYS):
        out[key] = float(curve[key][idx]) if key in curve else math.nan
    return out


def choose_operating_point(
    curve: Mapping[str, np.ndarray], rule: str = "within_gap", gap: float = 0.005, budget: float | None = None
) -> dict[str, float]:
    """Pick one threshold on a curve of the selection data: the suite's one operating-point chooser (the evaluation
    and the export both call it).

    - "within_gap": the smallest offload ratio whose accuracy >= all-offloaded accuracy - gap
      (gap in accuracy units, 0.005 = 0.5 points).
    - "latency_budget": the best accuracy with mean latency_ms <= budget (ms).
    - "energy_budget": the best accuracy with mean system_energy_mj <= budget (mJ).
    Accuracy ties go to the smaller offload ratio (the cheaper point). Returns tau (threshold_at: the middle of the
    point's confidence gap), offload_ratio, accuracy, latency_ms, edge_energy_mj, system_energy_mj (costs NaN when
    the curve has none).
    """
    _, y = _curve_arrays(curve)
    if rule == "within_gap":
        if not gap >= 0:
            raise RoutingError(f"gap must be >= 0 (accuracy units, 0.005 = 0.5 points), got {gap!r}.")
        idx = int(np.flatnonzero(y >= y[-1] - gap - TOLERANCE)[0])
        return _point(curve, idx)
    if rule not in OPERATING_RULES:
        raise RoutingError(f"Unknown operating-point rule {rule!r}. Use one of {', '.join(OPERATING_RULES)}.")
    key, unit = ("latency_ms", "ms") if rule == "latency_budget" else ("system_energy_mj", "mJ")
    if budget is None:
        raise RoutingError(f"Rule {rule!r} needs a budget in {unit}; set budget to the allowed mean {key}.")
    if key not in curve:
        raise RoutingError(
            f"Rule {rule!r} needs costs on the curve ({key} is missing); add them with add_costs(curve, "
            "load_profile(...))."
        )
    cost = np.asarray(curve[key], dtype=np.float64)
    feasible = cost <= budget + TOLERANCE * max(1.0, abs(budget))
    if not feasible.any():
        raise RoutingError(
            f"No threshold meets the {key} budget of {budget:g} {unit}; the cheapest point costs "
            f"{cost.min():g} {unit}. Raise the budget or use a faster/cheaper profile."
        )
    idx = int(np.argmax(np.where(feasible, y, -np.inf)))  # first maximum = smallest offload ratio
    return _point(curve, idx)


def apply_threshold(
    confidence: np.ndarray,
    correct_local: np.ndarray,
    correct_offload: np.ndarray,
    tau: float,
    profile: Profile | None = None,
    near_model: str = "expert",
    edge_model: str = "generalist",
) -> dict[str, float]:
    """Apply a fixed tau (chosen on the selection data) unchanged to other data; keys as choose_operating_point()."""
    c, loc, off = check_sweep_inputs(confidence, correct_local, correct_offload)
    offloaded = offload_mask(c, tau)
    ratio = float(np.mean(offloaded))
    out = {
        "tau": float(tau),
        "offload_ratio": ratio,
        "accuracy": float(np.mean(np.where(offloaded, off, loc))),
    }
    if profile is not None:
        # Costs are linear in the offload flag, so the mean cost is the cost at the mean flag.
        costs = mean_costs_for_offload_count(profile, np.asarray(ratio), edge_model, near_model)
        out.update({k: float(v) for k, v in costs.items()})
    else:
        out.update({k: math.nan for k in COST_KEYS})
    return out


def reductions(point: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Relative reductions 1 - point/baseline per baseline and cost (positive = cheaper than baseline)."""
    out: dict[str, dict[str, float]] = {}
    for name, base in baselines.items():
        out[name] = {}
        for key in COST_KEYS:
            b, p = float(base.get(key, math.nan)), float(point.get(key, math.nan))
            out[name][key] = 1.0 - p / b if b != 0 and math.isfinite(b) else math.nan
    return out


def up_to_reductions(
    curve: Mapping[str, np.ndarray],
    baselines: Mapping[str, Mapping[str, float]],
    baseline_accuracy: Mapping[str, float | None],
    delta: float = 0.005,
) -> dict[str, dict[str, dict[str, float] | None]]:
    """ "Up to" reductions: per baseline and cost, the largest reduction 1 - cost / baseline over the thresholds
    whose accuracy is at least the baseline's accuracy minus ``delta`` (accuracy units, 0.005 = 0.5 points).

    Each entry holds that point (tau, offload_ratio, accuracy, the reduction) and the baseline's accuracy, so the
    reduction is never quoted without what it costs; None when the baseline's accuracy is unknown or no threshold
    is accurate enough.
    """
    if not delta >= 0:
        raise RoutingError(f"delta must be >= 0 (accuracy units, 0.005 = 0.5 points), got {delta!r}.")
    _, y = _curve_arrays(curve)
    out: dict[str, dict[str, dict[str, float] | None]] = {}
    for name, base in baselines.items():
        acc = baseline_accuracy.get(name)
        out[name] = {}
        for key in COST_KEYS:
            b = float(base.get(key, math.nan))
            if acc is None or key not in curve or not (math.isfinite(b) and b != 0):
                out[name][key] = None
                continue
            ok = np.flatnonzero(y >= acc - delta - TOLERANCE)
            if not ok.size:
                out[name][key] = None
                continue
            red = 1.0 - np.asarray(curve[key], dtype=np.float64)[ok] / b
            i = int(ok[int(np.argmax(red))])
            out[name][key] = {**_point(curve, i), "reduction": float(np.max(red)), "baseline_accuracy": float(acc)}
    return out

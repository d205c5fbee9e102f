"""Paired bootstrap for the differences the suite reports (docs/design.md §6, "Uncertainty").

Resampling the evaluation samples with replacement is represented by multiplicity counts: row b of one (B, N) integer
matrix says how often each sample occurs in resample b. The same matrix is applied to every policy of an evaluation, so
differences between policies are paired. Curve statistics follow ask_the_expert.method.sweep: a sample is offloaded when
its confidence < tau, one threshold per distinct confidence plus "offload all".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ask_the_expert.method.sweep import TOLERANCE, check_sweep_inputs
from ask_the_expert.utils.errors import RoutingError

# Fewer resamples leave the 2.5 % / 97.5 % percentiles resting on a handful of draws.
MIN_RESAMPLES = 100


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def resample_counts(n: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(num_resamples, n) int32 multiplicities: each row a multinomial draw of n samples (row sums n)."""
    if not _is_int(n) or n < 1:
        raise RoutingError(
            f"n must be an integer >= 1 (the number of evaluation samples), got {n!r}; pass len(labels)."
        )
    if not _is_int(num_resamples) or num_resamples < MIN_RESAMPLES:
        raise RoutingError(
            f"num_resamples must be an integer >= {MIN_RESAMPLES}, got {num_resamples!r}: a 95 % interval needs "
            f"at least {MIN_RESAMPLES} resamples (1000 is the suite's default)."
        )
    rng = np.random.default_rng(seed)
    return rng.multinomial(int(n), np.full(int(n), 1.0 / n), size=int(num_resamples)).astype(np.int32)


def _check_counts(counts: np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(counts)
    if w.ndim != 2 or w.shape[1] != n or w.shape[0] < 1 or w.dtype.kind not in "iu":
        raise RoutingError(
            f"counts must be an integer (B, {n}) matrix of multiplicities, got shape {w.shape} and dtype "
            f"{w.dtype}. Build it with resample_counts({n}, ...) for the same samples."
        )
    if np.any(w < 0):
        raise RoutingError("counts must be >= 0 (how often each sample occurs in a resample); got negative entries.")
    return w


def weighted_mean(values: np.ndarray, counts: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(B,) mean of a per-sample array under each resample, optionally only over samples where mask is True.

    With a mask each resample has its own denominator (how many masked samples it drew); NaN where it drew none.
    """
    v = np.asarray(values)
    if v.ndim != 1 or v.dtype.kind not in "biuf" or not np.all(np.isfinite(v)):
        raise RoutingError(
            f"values must be a finite 1-D boolean or numeric array (one value per evaluation sample), got shape "
            f"{v.shape} and dtype {v.dtype}; pass e.g. per-sample correctness or a per-sample difference."
        )
    v = v.astype(np.float64)
    w = _check_counts(counts, v.shape[0]).astype(np.float64)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != v.shape or m.dtype != bool:
            raise RoutingError(
                f"mask must be a boolean array of shape {v.shape} like values, got shape {m.shape} and dtype "
                f"{m.dtype}; pass e.g. the per-sample offload flags."
            )
        w = w * m
    den = w.sum(axis=1)
    num = w @ v
    return np.divide(num, den, out=np.full(den.shape, np.nan), where=den > 0)


@dataclass(frozen=True)
class Interval:
    """A reported difference with its bootstrap interval; verdict says whether it excludes 0.

    Orient the difference so that the claim is positive (e.g. collaboration minus baseline accuracy).
    """

    value: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        """The finding "holds" when the interval lies above 0, "fails" when below 0, else "not established"."""
        if self.low > 0:
            return "holds"
        if self.high < 0:
            return "fails"
        return "not established"


def interval(value: float, resampled: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile interval of the finite resampled values around the full-sample value (NaN bounds if none)."""
    if not 0 < level < 1:
        raise RoutingError(f"level must lie strictly between 0 and 1, got {level!r}; use 0.95 for a 95 % interval.")
    r = np.asarray(resampled, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return Interval(float(value), math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(r, [alpha, 1.0 - alpha])
    return Interval(float(value), float(low), float(high))


def bootstrap_p_value(resampled: np.ndarray) -> tuple[float, int]:
    """Two-sided bootstrap p-value of "the difference is 0" and the side the resamples lie on (+1 above 0, -1 below).

    p = 2 min(share of resamples <= 0, share >= 0), at most 1: the smallest alpha at which the percentile interval
    at level 1 - alpha excludes 0 (up to one resample of interpolation). Non-finite resamples are ignored; NaN when
    none is left.
    """
    r = np.asarray(resampled, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, 0
    at_or_below, at_or_above = float(np.mean(r <= 0)), float(np.mean(r >= 0))
    return min(1.0, 2.0 * min(at_or_below, at_or_above)), (1 if at_or_below < at_or_above else -1)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction of a family of p-values: (adjusted p-values, the level each hypothesis is tested at).

    Sorted ascending, the j-th p-value (j = 1..m) is compared with alpha / (m - j + 1); the procedure stops at the first
    that is not below its level, and every later hypothesis keeps that stopping level. A hypothesis is rejected exactly
    when its adjusted p-value max_{i <= j} min(1, (m - i + 1) p_(i)) is < alpha. NaN p-values (nothing to test) are
    never rejected and do not count in m.
    """
    if not 0 < alpha < 1:
        raise RoutingError(f"alpha must lie strictly between 0 and 1, got {alpha!r}; 0.05 is the usual family level.")
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    levels = np.full(p.shape, math.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = tested.size
    order = tested[np.argsort(p[tested], kind="stable")]
    running, level = 0.0, math.nan
    stopped = False
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        adjusted[i] = running
        if not stopped:
            level = alpha / (m - j)
            stopped = not p[i] < level
        levels[i] = level
    return adjusted, levels


def student_t_quantile(probability: float, df: int) -> float:
    """The quantile of Student's t distribution with an integer df >= 1 (e.g. 0.975 for a two-sided 95 % interval).

    P(|T| <= t) has a closed form for integer df (Abramowitz and Stegun 26.7.3-4); bisection inverts it to ~1e-12.
    """
    if not 0.5 <= probability < 1 or not _is_int(df) or df < 1:
        raise RoutingError(f"Need 0.5 <= probability < 1 and an integer df >= 1, got {probability!r} and {df!r}.")

    def central(t: float) -> float:  # P(|T| <= t)
        theta = math.atan(t / math.sqrt(df))
        c2, s = math.cos(theta) ** 2, math.sin(theta)
        if df % 2:
            term, total = math.cos(theta), 0.0
            for i in range(1, (df - 1) // 2 + 1):
                total += term
                term *= c2 * (2 * i) / (2 * i + 1)
            return (2 / math.pi) * (theta + s * total) if df > 1 else 2 * theta / math.pi
        term, total = 1.0, 0.0
        for i in range(1, df // 2 + 1):
            total += term
            term *= c2 * (2 * i - 1) / (2 * i)
        return s * total

    target, low, high = 2 * probability - 1, 0.0, 1.0
    while central(high) < target:
        high *= 2
    while high - low > 1e-12 * max(1.0, high):
        mid = (low + high) / 2
        low, high = (mid, high) if central(mid) < target else (low, mid)
    return (low + high) / 2


def weighted_curves(
    confidence: np.ndarray, correct_local: np.ndarray, correct_offload: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), each (B, M): offload ratio and accuracy per resample at ask_the_expert.method.sweep.sweep_thresholds' M
    thresholds.

    Every sample counts with its multiplicity, so a threshold whose samples a resample did not draw repeats
    the next point. Work is O(B N) over sorted confidences; nothing of shape (B, N, M) is built.
    """
    c, loc, off = check_sweep_inputs(confidence, correct_local, correct_offload)
    n = c.shape[0]
    w = _check_counts(counts, n)
    order = np.argsort(c, kind="stable")
    cs = c[order]
    starts = np.flatnonzero(np.concatenate(([True], cs[1:] != cs[:-1])))
    ws = w[:, order].astype(np.int64)

    ends = np.append(starts, n)  # threshold m offloads the sorted samples before position ends[m]

    def cumulative(weights: np.ndarray) -> np.ndarray:
        # Prefix sums over the sorted samples, read at the tie blocks' starts: column m = weight strictly below
        # threshold m.
        prefix = np.concatenate((np.zeros((w.shape[0], 1), np.int64), np.cumsum(weights, axis=1)), axis=1)
        return prefix[:, ends]

    cum_w = cumulative(ws)
    cum_loc = cumulative(ws * loc[order])
    cum_off = cumulative(ws * off[order])
    total = cum_w[:, -1:]
    if np.any(total == 0):
        raise RoutingError("Every row of counts must draw at least one sample; build counts with resample_counts().")
    x = cum_w / total
    y = (cum_off + (cum_loc[:, -1:] - cum_loc)) / total
    return x, y


def _check_curves(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 1 and y.ndim == 1:
        x, y = x[None, :], y[None, :]
    if x.ndim != 2 or x.shape != y.shape or x.shape[1] < 1 or np.any(np.diff(x, axis=1) < 0):
        raise RoutingError(
            f"x and y must be (B, M) curves with non-decreasing offload ratios, got shapes {x.shape} and {y.shape}; "
            "build them with weighted_curves() (a single 1-D curve is taken as B = 1)."
        )
    return x, y


def area_under(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) trapezoid area under accuracy vs offload ratio over [0, 1] (ask_the_expert.method.sweep.normalised_auc's raw
    AUC)."""
    x, y = _check_curves(x, y)
    if np.any(np.abs(x[:, 0]) > TOLERANCE) or np.any(np.abs(x[:, -1] - 1.0) > TOLERANCE):
        raise RoutingError("area_under needs curves from offload ratio 0 to 1; use the full weighted_curves() output.")
    return np.sum(np.diff(x, axis=1) * (y[:, 1:] + y[:, :-1]) / 2.0, axis=1)


def area_gain(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) area under the curve minus the accuracy at offload 0, in accuracy units (x 100 for points)."""
    x, y = _check_curves(x, y)
    return area_under(x, y) - y[:, 0]


def accuracy_at(x: np.ndarray, y: np.ndarray, ratio: float) -> np.ndarray:
    """(B,) accuracy of the point with the largest offload ratio <= ratio
    (ask_the_expert.method.sweep.accuracy_at_offload's rule)."""
    x, y = _check_curves(x, y)
    idx = np.sum(x <= ratio + TOLERANCE, axis=1) - 1
    if np.any(idx < 0):
        raise RoutingError(
            f"No curve point has offload ratio <= {ratio!r}; the smallest is {x[:, 0].min():g}. Ask for a ratio "
            "in [0, 1]."
        )
    return y[np.arange(x.shape[0]), idx]


def offload_to_reach(x: np.ndarray, y: np.ndarray, target: float | np.ndarray) -> np.ndarray:
    """(B,) smallest offload ratio whose accuracy >= target (with ask_the_expert.method.sweep's 1e-12 slack); NaN where
    none.

    target is one accuracy or one per resample (B,), e.g. a reference policy's resampled accuracy minus a gap.
    """
    x, y = _check_curves(x, y)
    t = np.asarray(target, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(x.shape[0], float(t))
    if t.shape != (x.shape[0],):
        raise RoutingError(
            f"target must be one accuracy or one per resample (shape ({x.shape[0]},)), got shape {t.shape}."
        )
    ok = y >= t[:, None] - TOLERANCE
    first = np.argmax(ok, axis=1)
    return np.where(ok.any(axis=1), x[np.arange(x.shape[0]), first], np.nan)


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation across seeds, ignoring non-finite values (std 0 for one; NaNs if none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    return float(np.mean(v)), std

"""Paired bootstrap: identities with ask_the_expert.method.sweep, brute-force resamples, intervals and verdicts,
coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic_evaluation import random_policy

from ask_the_expert.method.stats import (
    Interval,
    accuracy_at,
    area_gain,
    area_under,
    bootstrap_p_value,
    holm,
    interval,
    mean_std,
    offload_to_reach,
    resample_counts,
    student_t_quantile,
    weighted_curves,
    weighted_mean,
)
from ask_the_expert.method.sweep import accuracy_at_offload, area_under_curve, sweep_thresholds
from ask_the_expert.utils.errors import RoutingError, SuiteError


def test_resample_counts_shape_sums_and_determinism():
    counts = resample_counts(50, 200, seed=3)
    assert counts.shape == (200, 50) and counts.dtype == np.int32
    assert np.all(counts.sum(axis=1) == 50) and np.all(counts >= 0)
    assert np.array_equal(counts, resample_counts(50, 200, seed=3))
    assert not np.array_equal(counts, resample_counts(50, 200, seed=4))
    # Each sample is drawn once per resample on average.
    assert counts.mean() == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 10, "num_resamples": 99}, {"n": 2.5}])
def test_resample_counts_refuses_bad_arguments(kwargs):
    with pytest.raises(RoutingError, match=r"resamples|n must"):
        resample_counts(**kwargs)


def test_weighted_mean_matches_expanded_samples():
    rng = np.random.default_rng(0)
    values = rng.random(30)
    mask = rng.random(30) < 0.3
    counts = resample_counts(30, 100, seed=1)
    means = weighted_mean(values, counts)
    masked = weighted_mean(values, counts, mask=mask)
    for b in range(counts.shape[0]):
        expanded = np.repeat(np.arange(30), counts[b])
        assert means[b] == pytest.approx(values[expanded].mean(), abs=1e-12)
        chosen = expanded[mask[expanded]]
        if chosen.size:
            assert masked[b] == pytest.approx(values[chosen].mean(), abs=1e-12)
        else:
            assert math.isnan(masked[b])
    # Booleans average like 0/1.
    flags = values > 0.5
    assert np.allclose(weighted_mean(flags, counts), weighted_mean(flags.astype(float), counts))


def test_weighted_mean_nan_when_a_resample_draws_no_masked_sample():
    counts = np.array([[2, 0, 1], [0, 3, 0]])
    out = weighted_mean(np.array([1.0, 5.0, 3.0]), counts, mask=np.array([True, False, True]))
    assert out[0] == pytest.approx(5.0 / 3.0) and math.isnan(out[1])


def test_weighted_mean_refuses_bad_inputs():
    counts = np.ones((2, 3), dtype=np.int64)
    with pytest.raises(RoutingError, match="counts"):
        weighted_mean(np.ones(4), counts)
    with pytest.raises(RoutingError, match="mask"):
        weighted_mean(np.ones(3), counts, mask=np.ones(3))
    with pytest.raises(RoutingError, match="finite"):
        weighted_mean(np.array([1.0, np.nan, 0.0]), counts)
    with pytest.raises(RoutingError, match=">= 0"):
        weighted_mean(np.ones(3), -counts)


def test_counts_of_ones_reproduce_sweep_exactly():
    for seed, n in ((0, 1), (1, 9), (2, 500)):
        conf, loc, off = random_policy(n, seed)
        curve = sweep_thresholds(conf, loc, off)
        x, y = weighted_curves(conf, loc, off, np.ones((2, n), dtype=np.int32))
        for b in range(2):
            assert np.array_equal(x[b], curve["offload_ratio"])
            assert np.array_equal(y[b], curve["accuracy"])
        for ratio in (0.0, 0.1, 0.3, 0.5, 1.0):
            assert accuracy_at(x, y, ratio)[0] == accuracy_at_offload(curve, ratio)


def test_area_under_is_the_area_of_the_exact_sweep():
    conf, loc, off = random_policy(400, 7)
    curve = sweep_thresholds(conf, loc, off)
    x, y = weighted_curves(conf, loc, off, np.ones((1, 400), dtype=np.int64))
    lo = curve["accuracy"][0]
    assert area_under(x, y)[0] == pytest.approx(area_under_curve(curve), abs=1e-12)
    assert area_gain(x, y)[0] == pytest.approx(area_under(x, y)[0] - lo, abs=1e-15)
    # A 1-D curve is one resample.
    assert area_under(x[0], y[0]) == pytest.approx(area_under(x, y))


def test_one_resample_matches_sweep_on_expanded_samples():
    conf, loc, off = random_policy(300, 11)
    counts = resample_counts(300, 100, seed=5)
    x, y = weighted_curves(conf, loc, off, counts)
    assert np.all(x[:, 0] == 0) and np.all(x[:, -1] == 1)
    for b in (0, 1, 57):
        idx = np.repeat(np.arange(300), counts[b])
        ref = sweep_thresholds(conf[idx], loc[idx], off[idx])
        # Thresholds whose tie block the resample did not draw repeat the next point; drop the repeats.
        ux, first = np.unique(x[b], return_index=True)
        assert np.allclose(ux, ref["offload_ratio"], atol=1e-15)
        assert np.allclose(y[b][first], ref["accuracy"], atol=1e-15)
        for i in range(1, x.shape[1]):
            if x[b, i] == x[b, i - 1]:
                assert y[b, i] == y[b, i - 1]
        assert area_under(x, y)[b] == pytest.approx(area_under(ref["offload_ratio"], ref["accuracy"])[0])
        for ratio in (0.05, 0.2, 0.5):
            assert accuracy_at(x, y, ratio)[b] == pytest.approx(accuracy_at_offload(ref, ratio), abs=1e-15)


def test_weighted_curves_large_case_is_fast_enough():
    rng = np.random.default_rng(0)
    n = 5000
    counts = resample_counts(n, 1000, seed=0)
    x, y = weighted_curves(rng.random(n), rng.random(n) < 0.5, rng.random(n) < 0.7, counts)
    assert x.shape == y.shape == (1000, n + 1)
    assert np.all(np.diff(x, axis=1) >= 0)


def test_offload_to_reach_brute_force_and_per_resample_targets():
    conf, loc, off = random_policy(200, 3)
    counts = resample_counts(200, 100, seed=2)
    x, y = weighted_curves(conf, loc, off, counts)
    targets = y[:, -1] - 0.01
    got = offload_to_reach(x, y, targets)
    for b in range(x.shape[0]):
        ok = [x[b, i] for i in range(x.shape[1]) if y[b, i] >= targets[b] - 1e-12]
        assert got[b] == min(ok)
    unreachable = offload_to_reach(x, y, 2.0)
    assert np.all(np.isnan(unreachable))
    with pytest.raises(RoutingError, match="target"):
        offload_to_reach(x, y, np.zeros(3))


def test_accuracy_at_takes_largest_offload_within_budget():
    x = np.array([[0.0, 0.25, 0.5, 1.0]])
    y = np.array([[0.5, 0.6, 0.7, 0.8]])
    assert accuracy_at(x, y, 0.3)[0] == 0.6
    assert accuracy_at(x, y, 0.5 - 1e-13)[0] == 0.7  # within the 1e-12 slack
    with pytest.raises(RoutingError, match="ratio"):
        accuracy_at(x, y, -0.1)


def test_interval_and_verdicts():
    assert Interval(0.1, 0.02, 0.2).verdict == "holds"
    assert Interval(-0.1, -0.2, -0.01).verdict == "fails"
    assert Interval(0.0, -0.1, 0.1).verdict == "not established"
    assert Interval(0.0, 0.0, 0.1).verdict == "not established"  # touching 0 does not exclude it
    r = np.arange(1001, dtype=float)  # the 2.5 % and 97.5 % points of 0..1000 are 25 and 975
    iv = interval(500.0, r)
    assert iv.value == 500.0 and (iv.low, iv.high) == pytest.approx((25.0, 975.0), abs=1e-9)
    iv = interval(1.0, np.array([np.nan, np.inf, 2.0, 4.0]), level=0.5)
    assert (iv.low, iv.high) == pytest.approx((2.5, 3.5))
    empty = interval(0.3, np.array([np.nan, np.nan]))
    assert math.isnan(empty.low) and math.isnan(empty.high) and empty.verdict == "not established"
    with pytest.raises(RoutingError, match="level"):
        interval(0.0, r, level=1.0)


def test_paired_bootstrap_coverage_and_power():
    n = 2000
    counts_seeds = [resample_counts(n, 400, seed=s) for s in range(20)]
    contains_zero = 0
    for s, counts in enumerate(counts_seeds):
        rng = np.random.default_rng(100 + s)
        a, b = rng.random(n) < 0.5, rng.random(n) < 0.5
        diff = weighted_mean(a, counts) - weighted_mean(b, counts)
        iv = interval(float(a.mean() - b.mean()), diff)
        assert iv.low <= iv.value <= iv.high
        contains_zero += iv.low <= 0 <= iv.high
    assert contains_zero >= 16  # nominal 19 of 20
    rng = np.random.default_rng(0)
    a, b = rng.random(n) < 0.6, rng.random(n) < 0.5
    counts = counts_seeds[0]
    up = interval(float(a.mean() - b.mean()), weighted_mean(a, counts) - weighted_mean(b, counts))
    down = interval(float(b.mean() - a.mean()), weighted_mean(b, counts) - weighted_mean(a, counts))
    assert up.verdict == "holds" and down.verdict == "fails"


def test_holm_against_a_hand_computed_family():
    # p = (0.01, 0.04, 0.03, 0.005), alpha 0.05. Sorted: 0.005 < 0.05/4 (reject), 0.01 < 0.05/3 (reject),
    # 0.03 >= 0.05/2 (stop: not rejected), 0.04 keeps the stopping level. Adjusted: 4 * 0.005 = 0.02, 3 * 0.01 = 0.03,
    # 2 * 0.03 = 0.06, max(0.06, 1 * 0.04) = 0.06.
    adjusted, levels = holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert levels == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
    assert list(adjusted < 0.05) == [True, False, False, True]
    # Without a stop every level is alpha / (m - j + 1); a NaN is not tested and does not count in m.
    adjusted, levels = holm([0.01, np.nan, 0.02, 0.03], 0.05)
    assert adjusted[[0, 2, 3]] == pytest.approx([0.03, 0.04, 0.04]) and math.isnan(adjusted[1])
    assert levels[[0, 2, 3]] == pytest.approx([0.05 / 3, 0.05 / 2, 0.05]) and math.isnan(levels[1])
    assert holm([], 0.05)[0].size == 0
    with pytest.raises(RoutingError, match="alpha"):
        holm([0.1], 1.0)


def test_bootstrap_p_value_is_dual_to_the_percentile_interval():
    r = np.arange(-20, 980, dtype=float)  # 1000 resamples, 21 of them <= 0
    p, side = bootstrap_p_value(r)
    assert p == pytest.approx(2 * 21 / 1000) and side == 1
    assert interval(0.5, r, 1 - 0.05).low > 0 and interval(0.5, r, 1 - 0.04).low < 0  # excludes 0 iff alpha > p
    p, side = bootstrap_p_value(-r)
    assert p == pytest.approx(0.042) and side == -1
    assert bootstrap_p_value(np.zeros(100)) == (1.0, -1)  # a difference of exactly nothing
    assert math.isnan(bootstrap_p_value(np.array([np.nan]))[0])


def test_student_t_quantiles_match_the_tables():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 30: 2.0423}
    for df, value in table.items():
        assert student_t_quantile(0.975, df) == pytest.approx(value, abs=1e-4), df
    assert student_t_quantile(0.95, 5) == pytest.approx(2.0150, abs=1e-4)
    assert student_t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(RoutingError, match="df"):
        student_t_quantile(0.975, 0)


def test_mean_std():
    assert mean_std(np.array([1.0, 2.0, 3.0])) == pytest.approx((2.0, 1.0))
    assert mean_std([4.0]) == (4.0, 0.0)
    assert mean_std([1.0, np.nan, 3.0, np.inf]) == pytest.approx((2.0, math.sqrt(2.0)))
    m, s = mean_std([np.nan])
    assert math.isnan(m) and math.isnan(s)


def test_curve_functions_refuse_bad_inputs():
    conf, loc, off = random_policy(10, 0)
    with pytest.raises(RoutingError, match="counts"):
        weighted_curves(conf, loc, off, np.ones((2, 9), dtype=np.int64))
    with pytest.raises(RoutingError, match="counts"):
        weighted_curves(conf, loc, off, np.ones((2, 10)))  # float counts
    with pytest.raises(RoutingError, match="at least one sample"):
        weighted_curves(conf, loc, off, np.zeros((1, 10), dtype=np.int64))
    with pytest.raises(SuiteError, match="non-decreasing"):
        area_under(np.array([[0.0, 0.6, 0.5, 1.0]]), np.zeros((1, 4)))
    with pytest.raises(RoutingError, match="0 to 1"):
        area_under(np.array([[0.0, 0.5]]), np.zeros((1, 2)))

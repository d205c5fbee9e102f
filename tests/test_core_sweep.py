"""Threshold sweep: brute-force equality with ties, curve scalars, operating points, speed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import HAND_PROFILE as PROFILE
from synthetic_evaluation import random_policy

from ask_the_expert.method.costs import baseline_costs, mean_costs_for_offload_count
from ask_the_expert.method.sweep import (
    accuracy_at_offload,
    add_costs,
    apply_threshold,
    area_under_curve,
    choose_operating_point,
    offload_to_reach,
    reductions,
    summarise_curve,
    sweep_thresholds,
)
from ask_the_expert.utils.errors import RoutingError

# Per sample with this profile: latency 10 + o * 10 ms, system energy 50 + o * 223 mJ.


def test_sweep_matches_brute_force_with_ties():
    for seed, n in ((0, 1), (1, 7), (2, 300), (3, 2000)):
        conf, loc, off = random_policy(n, seed)
        curve = sweep_thresholds(conf, loc, off)
        taus = curve["tau"]
        assert np.all(np.diff(taus) > 0)
        assert len(taus) == len(np.unique(conf)) + 1
        assert taus[0] == conf.min() and taus[-1] > conf.max()
        for i, tau in enumerate(taus):
            sent = conf < tau
            acc = np.mean(np.where(sent, off, loc))
            assert curve["offload_ratio"][i] == pytest.approx(sent.mean(), abs=1e-15)
            assert curve["accuracy"][i] == pytest.approx(acc, abs=1e-15)
            assert curve["num_offloaded"][i] == sent.sum()
        assert curve["offload_ratio"][0] == 0.0 and curve["offload_ratio"][-1] == 1.0


def test_sweep_hand_made():
    conf = np.array([0.9, 0.2, 0.5, 0.5])
    loc = np.array([True, False, False, True])
    off = np.array([True, True, True, False])
    curve = sweep_thresholds(conf, loc, off)
    # tau 0.2: none sent -> local 2/4; tau 0.5: sample 1 sent -> 3/4;
    # tau 0.9: samples 1, 2, 3 sent (the tie at 0.5 switches together) -> 1 + 1 + 0 + local 1 = 3/4;
    # tau > 0.9: all sent -> 3/4
    assert curve["tau"][:3].tolist() == [0.2, 0.5, 0.9]
    assert curve["offload_ratio"].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert curve["accuracy"].tolist() == [0.5, 0.75, 0.75, 0.75]


def test_sweep_bad_input():
    with pytest.raises(RoutingError):
        sweep_thresholds(np.array([]), np.array([], bool), np.array([], bool))
    with pytest.raises(RoutingError):
        sweep_thresholds(np.array([0.1, np.nan]), np.ones(2, bool), np.ones(2, bool))
    with pytest.raises(RoutingError):
        sweep_thresholds(np.array([0.1, 0.2]), np.ones(3, bool), np.ones(2, bool))
    with pytest.raises(RoutingError):
        sweep_thresholds(np.array([0.1, 0.2]), np.array([0.5, 1.0]), np.ones(2, bool))


def test_add_costs_adds_the_profiles_mean_costs():
    conf = np.array([0.9, 0.2, 0.5, 0.5])
    curve = add_costs(sweep_thresholds(conf, np.ones(4, bool), np.ones(4, bool)), PROFILE)
    assert np.allclose(curve["latency_ms"], [10.0, 12.5, 17.5, 20.0])
    assert np.allclose(curve["system_energy_mj"], 50 + curve["offload_ratio"] * 223)
    assert "latency_ms" not in add_costs(sweep_thresholds(conf, np.ones(4, bool), np.ones(4, bool)), None)


def _hand_curve():
    """Offload ratios 0..1 in steps of 0.1 with a hand-made accuracy profile and the PROFILE's costs."""
    ratio = np.linspace(0.0, 1.0, 11)
    acc = np.array([0.60, 0.66, 0.71, 0.74, 0.76, 0.78, 0.79, 0.795, 0.80, 0.80, 0.79])
    curve = {"tau": np.linspace(0.05, 1.05, 11), "offload_ratio": ratio, "accuracy": acc}
    curve.update(mean_costs_for_offload_count(PROFILE, ratio))
    return curve


def test_curve_scalars_on_hand_made_curve():
    curve = _hand_curve()
    assert accuracy_at_offload(curve, 0.3) == 0.74
    assert accuracy_at_offload(curve, 0.35) == 0.74  # largest ratio <= 0.35 is 0.3
    assert accuracy_at_offload(curve, 1.0) == 0.79
    # trapezoids of width 0.1: 0.1 * (sum(acc) - (acc[0] + acc[-1]) / 2)
    auc = 0.1 * (curve["accuracy"].sum() - (0.60 + 0.79) / 2)
    assert area_under_curve(curve) == pytest.approx(auc)
    # An absolute target: the first point with accuracy >= 0.7821 is 0.79 at ratio 0.6; 0.9 is never reached.
    assert offload_to_reach(curve, 0.7821) == pytest.approx(0.6)
    assert math.isnan(offload_to_reach(curve, 0.9))
    # One shared scale: lo = 0.60 (G alone), hi = 0.85 (say, the oracle all offloaded), reference 0.79.
    s = summarise_curve(curve, (0.60, 0.85), {"base": 0.79}, within_points=0.5)
    assert s["acc@10%"] == 0.66 and s["acc@20%"] == 0.71 and s["acc@30%"] == 0.74 and s["acc@50%"] == 0.78
    assert s["acc_local_only"] == 0.60 and s["acc_all_offloaded"] == 0.79
    assert s["area_gain_pts"] == pytest.approx(100 * (auc - 0.60))
    assert s["area_norm"] == pytest.approx((auc - 0.60) / (0.85 - 0.60))
    assert s["offload_within_0.5pt_of_base"] == pytest.approx(0.6)  # 0.79 - 0.005 = 0.785 first reached at 0.6


def test_the_shared_scale_ranks_policies_as_their_areas_do():
    """Two curves with different end points: normalised by their own ends they would rank the other way round."""
    ratio = np.linspace(0, 1, 5)
    high = {"offload_ratio": ratio, "accuracy": np.array([0.60, 0.70, 0.75, 0.78, 0.80])}
    low = {"offload_ratio": ratio, "accuracy": np.array([0.60, 0.64, 0.65, 0.65, 0.62])}
    a, b = (summarise_curve(c, (0.60, 0.85), {}) for c in (high, low))
    assert a["area_gain_pts"] > b["area_gain_pts"] and a["area_norm"] > b["area_norm"]
    own = [(area_under_curve(c) - c["accuracy"][0]) / (c["accuracy"][-1] - c["accuracy"][0]) for c in (high, low)]
    assert own[1] > own[0]  # the per-policy scale the suite no longer reports
    flat = {"offload_ratio": np.array([0.0, 1.0]), "accuracy": np.array([0.5, 0.5])}
    assert math.isnan(summarise_curve(flat, (0.5, 0.5), {})["area_norm"])


def test_operating_point_rules():
    curve = _hand_curve()
    # within 0.005 of 0.79 -> accuracy >= 0.785 -> first at ratio 0.6 (0.79)
    p = choose_operating_point(curve, "within_gap", gap=0.005)
    assert p["offload_ratio"] == pytest.approx(0.6) and p["accuracy"] == 0.79
    assert p["latency_ms"] == pytest.approx(16.0) and p["system_energy_mj"] == pytest.approx(50 + 0.6 * 223)
    # tau in the middle of the point's confidence gap: it offloads conf < 0.65, i.e. the confidences up to 0.55.
    assert p["tau"] == pytest.approx((0.55 + 0.65) / 2)
    # gap 0.03 -> accuracy >= 0.76 -> ratio 0.4
    assert choose_operating_point(curve, gap=0.03)["offload_ratio"] == pytest.approx(0.4)
    # latency <= 13.5 ms -> ratio <= 0.35 -> best accuracy at 0.3 (0.74)
    p = choose_operating_point(curve, "latency_budget", budget=13.5)
    assert p["offload_ratio"] == pytest.approx(0.3) and p["accuracy"] == 0.74
    # generous budget: best accuracy 0.80 first reached at 0.8 (ties -> cheaper point)
    p = choose_operating_point(curve, "latency_budget", budget=100.0)
    assert p["offload_ratio"] == pytest.approx(0.8) and p["accuracy"] == 0.80
    # energy <= 50 + 0.5 * 223 = 161.5 mJ -> ratio <= 0.5 -> 0.78
    p = choose_operating_point(curve, "energy_budget", budget=161.5)
    assert p["offload_ratio"] == pytest.approx(0.5) and p["accuracy"] == 0.78
    with pytest.raises(RoutingError, match="cheapest point costs 10"):
        choose_operating_point(curve, "latency_budget", budget=5.0)
    with pytest.raises(RoutingError, match="needs a budget"):
        choose_operating_point(curve, "energy_budget")
    with pytest.raises(RoutingError, match="within_gap, latency_budget, energy_budget"):
        choose_operating_point(curve, "cheapest")
    no_costs = {k: curve[k] for k in ("tau", "offload_ratio", "accuracy")}
    with pytest.raises(RoutingError, match="profile"):
        choose_operating_point(no_costs, "latency_budget", budget=20.0)
    assert math.isnan(choose_operating_point(no_costs)["latency_ms"])


def test_apply_threshold_reproduces_sweep_points():
    conf, loc, off = random_policy(500, 7)
    curve = add_costs(sweep_thresholds(conf, loc, off), PROFILE)
    for i in (0, 5, len(curve["tau"]) // 2, len(curve["tau"]) - 1):
        applied = apply_threshold(conf, loc, off, curve["tau"][i], profile=PROFILE)
        for key in ("offload_ratio", "accuracy", "latency_ms", "edge_energy_mj", "system_energy_mj"):
            assert applied[key] == pytest.approx(curve[key][i], abs=1e-12), key
    point = choose_operating_point(curve, gap=0.01)
    again = apply_threshold(conf, loc, off, point["tau"], profile=PROFILE)
    assert again["accuracy"] == pytest.approx(point["accuracy"])
    assert math.isnan(apply_threshold(conf, loc, off, 0.5)["latency_ms"])


def test_reductions():
    point = {"latency_ms": 15.0, "edge_energy_mj": 60.0, "system_energy_mj": 150.0}
    base = baseline_costs(PROFILE)
    red = reductions(point, base)
    # vs edge medium: latency 1 - 15/40 = 0.625; energy 1 - 60/200 = 0.7; system 1 - 150/200 = 0.25
    assert red["edge_medium"] == pytest.approx({"latency_ms": 0.625, "edge_energy_mj": 0.7, "system_energy_mj": 0.25})
    assert red["edge_generalist"]["latency_ms"] == pytest.approx(1 - 15 / 10)
    assert math.isnan(reductions(point, {"zero": {"latency_ms": 0.0}})["zero"]["latency_ms"])

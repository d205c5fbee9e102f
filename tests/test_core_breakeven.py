"""Break-even maps: a hand-computed grid point, monotonicity, feasibility, field handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import HAND_PROFILE as PROFILE

from ask_the_expert.method.breakeven import (
    STRATEGIES,
    break_even_map,
    get_field,
    profile_fields,
    strategy_costs,
    with_field,
)
from ask_the_expert.method.costs import COST_KEYS
from ask_the_expert.utils.errors import ProfileError

CURVE_X = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
CURVE_Y = np.array([0.6, 0.65, 0.7, 0.72, 0.74])


def _map(target=0.7, acc_g=0.6, acc_m=0.75, xs=(4.0, 8.0, 16.0), ys=(10.0, 20.0)):
    return break_even_map(
        PROFILE, "link.uplink_mbps", xs, "edge.latency_ms.generalist", ys, CURVE_X, CURVE_Y, acc_g, acc_m, target
    )


def test_hand_computed_grid_point():
    out = _map()
    assert out["strategies"] == list(STRATEGIES)
    assert out["profile_point"] == (8.0, 10.0)
    assert out["collaboration_offload_ratio"] == 0.5 and out["accuracy"]["collaboration"] == 0.7
    assert out["feasible"] == {
        "edge_generalist": False,
        "edge_medium": True,
        "near_edge_only": True,
        "collaboration": True,
    }
    # Uplink 4 Mbit/s: t_up = 3000 B * 8 / 4e3 = 6 ms; t_down = 1 ms; G takes 20 ms on the edge (row 1).
    # near_edge_only runs the near-edge medium model (6 ms); the collaboration the expert (4 ms) on half the samples.
    expected = {
        "edge_generalist": (20.0, 100.0, 100.0),
        "edge_medium": (40.0, 200.0, 200.0),
        "near_edge_only": (2 + 6 + 6 + 1, 3 * 6 + 2 * (2 + 6 + 1), 3 * 6 + 2 * (2 + 6 + 1) + 50 * 6),
        "collaboration": (20 + 0.5 * 13, 100 + 0.5 * (18 + 2 * 7), 100 + 0.5 * (18 + 2 * 7 + 50 * 4)),
    }
    for s, name in enumerate(STRATEGIES):
        for key, value in zip(COST_KEYS, expected[name], strict=True):
            assert out["costs"][key][s, 1, 0] == pytest.approx(value, abs=1e-9), (name, key)
    # Cheapest feasible: near edge for latency (15 ms) and edge energy (36 mJ); medium on the edge for system
    # energy (200 mJ against 216 and 336).
    assert out["best"]["latency_ms"][1, 0] == STRATEGIES.index("near_edge_only")
    assert out["best"]["edge_energy_mj"][1, 0] == STRATEGIES.index("near_edge_only")
    assert out["best"]["system_energy_mj"][1, 0] == STRATEGIES.index("edge_medium")
    for key in COST_KEYS:
        assert out["costs"][key].shape == (4, 2, 3) and out["best"][key].shape == (2, 3)


def test_strategy_costs_without_collaboration():
    costs = strategy_costs(PROFILE, None)
    assert set(costs) == {"edge_generalist", "edge_medium", "near_edge_only"}
    collab = strategy_costs(PROFILE, 0.0)["collaboration"]
    assert collab == pytest.approx(costs["edge_generalist"])  # offloading nothing is G alone
    with pytest.raises(ProfileError, match="offload_ratio"):
        strategy_costs(PROFILE, 1.5)


def test_faster_uplink_never_slows_the_collaboration():
    xs = np.linspace(0.5, 100.0, 25)
    out = _map(xs=xs, ys=(10.0,))
    s = STRATEGIES.index("collaboration")
    for key in ("latency_ms", "edge_energy_mj", "system_energy_mj"):
        assert np.all(np.diff(out["costs"][key][s, 0]) <= 1e-12)
    assert np.all(np.diff(out["costs"]["latency_ms"][s, 0]) < 0)


def test_best_is_the_cheapest_feasible_strategy():
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(0.5, 50, 6), rng.uniform(1, 60, 5)
    for target, acc_g, acc_m in ((0.7, 0.6, 0.75), (0.6, 0.6, 0.5), (0.73, 0.6, 0.8)):
        out = _map(target, acc_g, acc_m, xs, ys)
        for key in COST_KEYS:
            for iy in range(ys.size):
                for ix in range(xs.size):
                    options = [
                        (out["costs"][key][s, iy, ix], s) for s, name in enumerate(STRATEGIES) if out["feasible"][name]
                    ]
                    assert out["best"][key][iy, ix] == min(options)[1]
                    assert out["feasible"][STRATEGIES[out["best"][key][iy, ix]]]


def test_infeasible_strategies_never_win():
    out = _map(target=0.74, acc_g=0.9, acc_m=0.5)  # G alone meets the target; the medium model does not
    assert out["feasible"]["collaboration"] and out["collaboration_offload_ratio"] == 1.0
    for key in COST_KEYS:
        assert set(np.unique(out["best"][key])) <= {0, 3}
    out = _map(target=0.8)  # nothing reaches it
    assert not any(out["feasible"].values()) and out["collaboration_offload_ratio"] is None
    assert math.isnan(out["accuracy"]["collaboration"])
    for key in COST_KEYS:
        assert np.all(out["best"][key] == -1)
        assert np.all(np.isnan(out["costs"][key][STRATEGIES.index("collaboration")]))


def test_field_handling_and_errors():
    fields = profile_fields(PROFILE)
    for name in ("link.bytes_up", "edge.latency_ms.medium", "near_edge.latency_ms.expert", "edge.power_active_w"):
        assert name in fields
        assert get_field(with_field(PROFILE, name, 7), name) == 7.0
    assert with_field(PROFILE, "near_edge.latency_ms.expert", 9).near_edge.latency_ms == {"expert": 9.0, "medium": 6.0}
    assert PROFILE.near_edge.latency_ms["expert"] == 4.0  # the original is untouched
    with pytest.raises(ProfileError, match=r"Unknown profile field 'link\.speed'.*link\.uplink_mbps"):
        _map_fields("link.speed", "link.rtt_ms")
    with pytest.raises(ProfileError, match="Unknown profile field"):
        _map_fields("edge.latency_ms.tiny", "link.rtt_ms")
    with pytest.raises(ProfileError, match="two different"):
        _map_fields("link.rtt_ms", "link.rtt_ms")
    with pytest.raises(ProfileError, match="> 0"):
        break_even_map(PROFILE, "link.uplink_mbps", [0.0, 1.0], "link.rtt_ms", [1.0], CURVE_X, CURVE_Y, 0.6, 0.7, 0.7)
    with pytest.raises(ProfileError, match=">= 0"):
        break_even_map(PROFILE, "link.rtt_ms", [-1.0], "link.uplink_mbps", [1.0], CURVE_X, CURVE_Y, 0.6, 0.7, 0.7)
    with pytest.raises(ProfileError, match="whole number"):
        with_field(PROFILE, "link.bytes_up", 10.5)


def _map_fields(x_field, y_field):
    return break_even_map(PROFILE, x_field, [1.0], y_field, [2.0], CURVE_X, CURVE_Y, 0.6, 0.7, 0.7)

"""Cost model: hand-computed latency/energy, baselines, profile schema and the shipped profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import HAND_PROFILE as PROFILE

from ask_the_expert.method.breakeven import profile_fields
from ask_the_expert.method.costs import (
    QUANTITIES,
    baseline_costs,
    load_profile,
    mean_costs_for_offload_count,
    profile_from_dict,
    profile_to_dict,
    sample_costs,
    transfer_ms,
)
from ask_the_expert.utils.errors import ProfileError

PROFILES = Path(__file__).resolve().parents[1] / "configs" / "profiles"


def _profile_dict() -> dict:
    return profile_to_dict(PROFILE)


def test_transfer_ms():
    # 3000 B = 24,000 bit at 8 Mbit/s = 8,000 bit/ms -> 3 ms; 125 B = 1000 bit at 1 Mbit/s -> 1 ms
    assert transfer_ms(3000, 8.0) == pytest.approx(3.0)
    assert transfer_ms(125, 1.0) == pytest.approx(1.0)
    with pytest.raises(ProfileError):
        transfer_ms(1, 0.0)


def test_sample_costs_hand_computed():
    costs = sample_costs(PROFILE, np.array([False, True]))
    # local:     latency 10; edge 5 W * 10 ms = 50 mJ; system 50 mJ
    # offloaded: latency 10 + (rtt 2 + up 3 + expert 4 + down 1) = 20 ms
    #            edge 50 + 3 W * 3 ms + 2 W * (2 + 4 + 1) ms = 50 + 9 + 14 = 73 mJ
    #            system 73 + 50 W * 4 ms = 273 mJ
    assert np.allclose(costs["latency_ms"], [10.0, 20.0])
    assert np.allclose(costs["edge_energy_mj"], [50.0, 73.0])
    assert np.allclose(costs["system_energy_mj"], [50.0, 273.0])
    # near-edge medium (6 ms): latency 22, edge 50 + 9 + 2 * 9 = 77, system 77 + 300 = 377
    med = sample_costs(PROFILE, np.array([True]), near_model="medium")
    assert np.allclose([med["latency_ms"][0], med["edge_energy_mj"][0], med["system_energy_mj"][0]], [22, 77, 377])
    with pytest.raises(ProfileError, match="expert_xl"):
        sample_costs(PROFILE, np.array([True]), near_model="expert_xl")


def test_mean_costs_are_linear_in_offload_ratio():
    mean = mean_costs_for_offload_count(PROFILE, np.array([0.0, 0.25, 1.0]))
    # mean latency = 10 + r * 10; edge = 50 + r * 23; system = 50 + r * 223
    assert np.allclose(mean["latency_ms"], [10.0, 12.5, 20.0])
    assert np.allclose(mean["edge_energy_mj"], [50.0, 55.75, 73.0])
    assert np.allclose(mean["system_energy_mj"], [50.0, 105.75, 273.0])
    flags = np.array([True, False, False, False])
    per_sample = sample_costs(PROFILE, flags)
    assert np.isclose(per_sample["latency_ms"].mean(), mean["latency_ms"][1])


def test_baselines_hand_computed():
    b = baseline_costs(PROFILE)
    assert b["edge_generalist"] == {"latency_ms": 10.0, "edge_energy_mj": 50.0, "system_energy_mj": 50.0}
    assert b["edge_medium"] == {"latency_ms": 40.0, "edge_energy_mj": 200.0, "system_energy_mj": 200.0}
    # near-edge only runs the near-edge medium model (6 ms), no G:
    # latency 2 + 3 + 6 + 1 = 12; edge 3 * 3 + 2 * (2 + 6 + 1) = 27; system 27 + 50 * 6 = 327
    near = b["near_edge_only"]
    assert near["latency_ms"] == pytest.approx(12.0)
    assert near["edge_energy_mj"] == pytest.approx(27.0)
    assert near["system_energy_mj"] == pytest.approx(327.0)
    # without a near-edge medium timing the expert's is used: 2 + 3 + 4 + 1 = 10
    d = _profile_dict()
    del d["near_edge"]["latency_ms"]["medium"]
    assert baseline_costs(profile_from_dict(d))["near_edge_only"]["latency_ms"] == pytest.approx(10.0)


def test_profile_round_trip():
    d = _profile_dict()
    d["meta"] = {"measured_on": "test", "batch_size": 1}
    p = profile_from_dict(d)
    assert p.meta == {"measured_on": "test", "batch_size": 1}
    assert profile_from_dict(profile_to_dict(p)) == p
    assert profile_from_dict(yaml.safe_load(yaml.safe_dump(profile_to_dict(p)))) == p


def test_profile_defaults_for_bytes():
    d = _profile_dict()
    del d["link"]["bytes_up"], d["link"]["bytes_down"]
    p = profile_from_dict(d)
    assert (p.link.bytes_up, p.link.bytes_down) == (3072, 8)


def test_profile_errors_list_all_problems_at_once(tmp_path):
    d = _profile_dict()
    del d["edge"]["power_idle_w"]
    del d["link"]["rtt_ms"]
    del d["edge"]["latency_ms"]["medium"]
    d["edge"]["power_active_w"] = -1.0
    d["link"]["uplink_mbps"] = 0
    d["near_edge"]["power_active_w"] = "fast"
    d["near_edge"]["latency_ms"]["expert"] = -3
    d["link"]["bytes_up"] = 10.5
    d["link"]["uplink_mpbs"] = 5.0  # typo
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert str(path) in msg
    for field in (
        "edge.power_idle_w",
        "link.rtt_ms",
        "edge.latency_ms.medium",
        "edge.power_active_w = -1.0",
        "link.uplink_mbps = 0",
        "near_edge.power_active_w = 'fast'",
        "near_edge.latency_ms.expert = -3",
        "link.bytes_up = 10.5",
        "link.uplink_mpbs (unknown field)",
    ):
        assert field in msg, field
    assert "missing fields: edge.latency_ms.medium, edge.power_idle_w, link.rtt_ms" in msg


def test_each_field_is_declared_once_and_drives_checks_keys_construction_and_serialisation():
    written = profile_to_dict(PROFILE)
    numbers = {f"{s}.{k}" for s, sec in written.items() if isinstance(sec, dict) for k in sec if k != "latency_ms"}
    assert numbers == set(QUANTITIES) and set(QUANTITIES) <= set(profile_fields(PROFILE))
    assert QUANTITIES["link.rtt_ms"].label == "round-trip time (ms)"
    for name, quantity in QUANTITIES.items():
        section, key = name.split(".")
        bad = _profile_dict()
        bad[section][key] = -1  # below every rule's range
        with pytest.raises(ProfileError, match=rf"{name} = -1 \(must be >?=? ?0|{name} = -1 \(must be > 0"):
            profile_from_dict(bad)
        absent = _profile_dict()
        del absent[section][key]
        if quantity.rule == "int0":  # the byte counts have defaults
            assert getattr(getattr(profile_from_dict(absent), section), key) in (3072, 8)
        else:
            with pytest.raises(ProfileError, match=f"missing fields: .*{name}"):
                profile_from_dict(absent)
        value = profile_from_dict(written)
        assert type(getattr(getattr(value, section), key)) is (int if quantity.rule == "int0" else float)


def test_profile_missing_sections_and_file(tmp_path):
    with pytest.raises(ProfileError, match="missing fields: name, edge, near_edge, link"):
        profile_from_dict({})
    with pytest.raises(ProfileError, match="Cannot read"):
        load_profile(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("edge: [1, 2\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="mapping"):
        profile_from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["edge_arm_wifi.yaml", "edge_jetson_ethernet.yaml"])
def test_shipped_profiles_load(name):
    path = PROFILES / name
    assert "ASSUMPTION" in path.read_text()
    p = load_profile(path)
    assert p.name == path.stem
    for role in ("generalist", "medium"):
        assert role in p.edge.latency_ms
    for role in ("expert", "medium"):
        assert role in p.near_edge.latency_ms
    # The premise of the method: the medium model is much slower on the edge than G,
    # and the near-edge expert is fast.
    assert p.edge.latency_ms["medium"] >= 2.5 * p.edge.latency_ms["generalist"]
    assert p.near_edge.latency_ms["expert"] < p.edge.latency_ms["generalist"]
    b = baseline_costs(p)
    assert set(b) == {"edge_generalist", "edge_medium", "near_edge_only"}
    assert profile_from_dict(profile_to_dict(p)) == p

"""Cost model (docs/design.md §5): hardware/link profiles and per-sample latency and energy.

Units: latency in ms, power in W, energy in mJ (ms * W = mJ), link rates in Mbit/s (10^6 bit/s).
For a sample with offload flag o (edge model G, near-edge model E):

    latency       = t_G,edge + o * (rtt + t_up + t_E,near + t_down)
    edge energy   = P_active * t_G,edge + o * (P_radio * t_up + P_idle * (rtt + t_E,near + t_down))
    system energy = edge energy + o * P_near * t_E,near
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ask_the_expert.utils.config_files import find_config
from ask_the_expert.utils.errors import ProfileError

COST_KEYS = ("latency_ms", "edge_energy_mj", "system_energy_mj")
# How reports and plots name each cost and each reference deployment of baseline_costs.
COST_NAMES = {"latency_ms": "latency", "edge_energy_mj": "edge energy", "system_energy_mj": "system energy"}
BASELINE_NAMES = {
    "edge_generalist": "edge-only generalist",
    "edge_medium": "edge-only medium model",
    "near_edge_only": "near-edge only",
}


# ------------------------------------------------------------------------------------------ the profile's fields
# Every field of a profile is declared once, below, as a dataclass field; its metadata drives the checks, the key
# sets, the construction from YAML, the serialisation and the break-even maps' axes (adding a field is one line plus
# its use in the cost formulas).
@dataclass(frozen=True)
class Quantity:
    """A number of a profile: ``rule`` (``ge0``: >= 0, ``gt0``: > 0, ``int0``: a whole number >= 0) and ``label``,
    its name with its unit in plots."""

    rule: str
    label: str

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable under the rule, or None when it is."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "must be a finite number"
        if self.rule == "gt0" and value <= 0:
            return "must be > 0"
        if self.rule in ("ge0", "int0") and value < 0:
            return "must be >= 0"
        if self.rule == "int0" and value != int(value):
            return "must be a whole number of bytes"
        return None


# Every latency of a profile (edge.latency_ms.<role>, near_edge.latency_ms.<role>).
LATENCY = Quantity("ge0", "latency (ms)")


def quantity(rule: str, label: str, default: Any = MISSING) -> Any:
    """A dataclass field holding a profile number (``Quantity``)."""
    return field(default=default, metadata={"quantity": Quantity(rule, label)})


@dataclass(frozen=True)
class EdgeDevice:
    """The device that runs the generalist; latency per model role in ms, powers in W."""

    # ms per model role; the roles every profile must time: the method needs G on the edge and an expert on the near
    # edge, and the headline baseline is the medium (expert-sized, all-class) model run on the edge.
    latency_ms: dict[str, float] = field(metadata={"roles": ("generalist", "medium")})
    power_active_w: float = quantity("ge0", "edge active power (W)")
    power_idle_w: float = quantity("ge0", "edge idle power (W)")
    power_radio_w: float = quantity("ge0", "edge radio power (W)")


@dataclass(frozen=True)
class NearEdgeDevice:
    """The near-edge accelerator that runs experts; latency per model role in ms, power in W."""

    latency_ms: dict[str, float] = field(metadata={"roles": ("expert",)})
    power_active_w: float = quantity("ge0", "near-edge power (W)")


@dataclass(frozen=True)
class Link:
    """Edge <-> near-edge link: rates in Mbit/s, round-trip time in ms, payload sizes in bytes."""

    uplink_mbps: float = quantity("gt0", "uplink rate (Mbit/s)")
    downlink_mbps: float = quantity("gt0", "downlink rate (Mbit/s)")
    rtt_ms: float = quantity("ge0", "round-trip time (ms)")
    bytes_up: int = quantity("int0", "bytes sent per sample (B)", 3072)  # the raw 32x32x3 uint8 image
    bytes_down: int = quantity("int0", "bytes returned per sample (B)", 8)  # a class id and a probability


@dataclass(frozen=True)
class Profile:
    """A complete cost profile; `meta` is free-form provenance (e.g. what a profiler measured on)."""

    name: str
    description: str
    edge: EdgeDevice
    near_edge: NearEdgeDevice
    link: Link
    meta: dict[str, Any] = field(default_factory=dict)


# The profile's sections (edge, near_edge, link) and every number in them, by dotted name ("link.rtt_ms").
SECTIONS: dict[str, type] = {"edge": EdgeDevice, "near_edge": NearEdgeDevice, "link": Link}
QUANTITIES: dict[str, Quantity] = {
    f"{section}.{f.name}": f.metadata["quantity"]
    for section, cls in SECTIONS.items()
    for f in fields(cls)
    if "quantity" in f.metadata
}


def _section_problems(section: str, cls: type, values: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(missing, invalid) fields of one section, as dotted names with the reason."""
    missing: list[str] = []
    known = {f.name for f in fields(cls)}
    invalid = [f"{section}.{k} (unknown field)" for k in values if k not in known]
    for f in fields(cls):
        dotted = f"{section}.{f.name}"
        if "roles" in f.metadata:
            roles = values.get(f.name)
            if roles is None:
                missing += [f"{dotted}.{r}" for r in f.metadata["roles"]]
            elif not isinstance(roles, Mapping):
                invalid.append(f"{dotted} (must be a mapping of model role to ms)")
            else:
                missing += [f"{dotted}.{r}" for r in f.metadata["roles"] if r not in roles]
                invalid += [f"{dotted}.{r} = {v!r} ({why})" for r, v in roles.items() if (why := LATENCY.problem(v))]
        elif f.name not in values:
            if f.default is MISSING:
                missing.append(dotted)
        elif why := f.metadata["quantity"].problem(values[f.name]):
            invalid.append(f"{dotted} = {values[f.name]!r} ({why})")
    return missing, invalid


def _section(cls: type, values: Mapping[str, Any]) -> Any:
    """A checked section as its dataclass (latencies as {role: float}, byte counts as int, the rest as float)."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if "roles" in f.metadata:
            kwargs[f.name] = {str(k): float(v) for k, v in value.items()}
        else:
            kwargs[f.name] = int(value) if f.metadata["quantity"].rule == "int0" else float(value)
    return cls(**kwargs)


def profile_from_dict(d: Mapping[str, Any], source: str | None = None) -> Profile:
    """Build a Profile from a mapping (parsed YAML), reporting ALL missing and invalid fields at once."""
    where = f"Profile {source!r}" if source else "The profile"
    if not isinstance(d, Mapping):
        raise ProfileError(
            f"{where} must be a mapping with keys name, edge, near_edge and link, got {type(d).__name__}. "
            "See configs/profiles/edge_arm_wifi.yaml for a complete example."
        )
    missing: list[str] = []
    invalid: list[str] = []
    invalid += [f"{k} (unknown field)" for k in d if k not in {f.name for f in fields(Profile)}]
    if "name" not in d:
        missing.append("name")
    elif not isinstance(d["name"], str) or not d["name"].strip():
        invalid.append(f"name = {d['name']!r} (must be a non-empty string)")
    if "description" in d and not isinstance(d["description"], str):
        invalid.append("description (must be a string)")
    if d.get("meta") is not None and not isinstance(d["meta"], Mapping):
        invalid.append("meta (must be a mapping)")
    for section, cls in SECTIONS.items():
        value = d.get(section)
        if value is None:
            missing.append(section)
        elif not isinstance(value, Mapping):
            invalid.append(f"{section} (must be a mapping)")
        else:
            more_missing, more_invalid = _section_problems(section, cls, value)
            missing += more_missing
            invalid += more_invalid
    if missing or invalid:
        parts = []
        if missing:
            parts.append(f"missing fields: {', '.join(missing)}")
        if invalid:
            parts.append(f"invalid fields: {', '.join(invalid)}")
        raise ProfileError(
            f"{where} is not a valid cost profile; {'; '.join(parts)}. Fix: give every listed field a value "
            "(latencies in ms and powers in W as numbers >= 0, link rates in Mbit/s > 0, byte counts >= 0) "
            "and remove unknown fields; configs/profiles/edge_arm_wifi.yaml is a complete example."
        )
    return Profile(
        name=str(d["name"]),
        description=str(d.get("description", "")),
        meta=dict(d.get("meta") or {}),
        **{section: _section(cls, d[section]) for section, cls in SECTIONS.items()},
    )


def load_profile(path: str | Path) -> Profile:
    """Read and schema-check a YAML profile (``configs/profiles/...`` found from any working directory); errors name
    the file and every bad field."""
    path = Path(find_config(str(path)))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(
            f"Cannot read cost profile {str(path)!r} ({exc.strerror or exc}). Pass the path of an existing "
            "YAML profile, e.g. configs/profiles/edge_arm_wifi.yaml, or write one with the profiling command."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(
            f"Cost profile {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}. Fix the syntax "
            "at the reported line."
        ) from None
    return profile_from_dict(data, source=str(path))


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """Plain-dict form of a profile (YAML-serialisable; profile_from_dict round-trips it)."""
    out = asdict(profile)
    if not profile.meta:
        del out["meta"]
    return out


def transfer_ms(num_bytes: float, mbps: float) -> float:
    """Serialisation time of num_bytes over a link of mbps Mbit/s (1 Mbit = 10^6 bit), in ms."""
    if not mbps > 0:
        raise ProfileError(f"Link rate must be > 0 Mbit/s, got {mbps!r}; fix the profile's link section.")
    return float(num_bytes) * 8.0 / (float(mbps) * 1e3)


def _role_ms(latency: Mapping[str, float], role: str, section: str) -> float:
    if role not in latency:
        raise ProfileError(
            f"The profile has no {section}.latency_ms.{role}; it times roles {sorted(latency)}. Add a "
            f"latency for {role!r} to the profile or pick one of the listed roles."
        )
    return float(latency[role])


def _offload_terms(profile: Profile, edge_model: str, near_model: str) -> dict[str, float]:
    """Per-sample costs split into the always-paid part and the extra paid when offloaded."""
    t_g = _role_ms(profile.edge.latency_ms, edge_model, "edge")
    t_e = _role_ms(profile.near_edge.latency_ms, near_model, "near_edge")
    link = profile.link
    t_up = transfer_ms(link.bytes_up, link.uplink_mbps)
    t_down = transfer_ms(link.bytes_down, link.downlink_mbps)
    edge = profile.edge
    extra_edge = edge.power_radio_w * t_up + edge.power_idle_w * (link.rtt_ms + t_e + t_down)
    return {
        "base_latency": t_g,
        "extra_latency": link.rtt_ms + t_up + t_e + t_down,
        "base_edge": edge.power_active_w * t_g,
        "extra_edge": extra_edge,
        "extra_system": extra_edge + profile.near_edge.power_active_w * t_e,
    }


def _linear_costs(terms: Mapping[str, float], o: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "latency_ms": terms["base_latency"] + o * terms["extra_latency"],
        "edge_energy_mj": terms["base_edge"] + o * terms["extra_edge"],
        "system_energy_mj": terms["base_edge"] + o * terms["extra_system"],
    }


def sample_costs(
    profile: Profile, offloaded: np.ndarray, edge_model: str = "generalist", near_model: str = "expert"
) -> dict[str, np.ndarray]:
    """Per-sample latency_ms, edge_energy_mj and system_energy_mj (float64 arrays) for offload flags."""
    o = np.asarray(offloaded)
    if o.dtype != bool:
        raise ProfileError(f"offloaded must be a boolean array, got dtype {o.dtype}; pass confidence < tau.")
    return _linear_costs(_offload_terms(profile, edge_model, near_model), o.astype(np.float64))


def mean_costs_for_offload_count(
    profile: Profile,
    offload_ratio: np.ndarray,
    edge_model: str = "generalist",
    near_model: str = "expert",
) -> dict[str, np.ndarray]:
    """Mean per-sample costs at each offload ratio r in [0, 1] (costs are linear in o, so mean o = r)."""
    r = np.asarray(offload_ratio, dtype=np.float64)
    return _linear_costs(_offload_terms(profile, edge_model, near_model), r)


def baseline_costs(profile: Profile, near_only_model: str | None = None) -> dict[str, dict[str, float]]:
    """Per-sample costs of the three reference deployments on the same profile.

    - edge_generalist: every sample answered by G on the edge (edge energy = system energy).
    - edge_medium: every sample answered by the medium model on the edge (edge.latency_ms.medium).
    - near_edge_only: every sample sent, no model runs on the edge: latency = rtt + t_up + t_near + t_down,
      edge energy = P_radio * t_up + P_idle * (rtt + t_near + t_down), system adds P_near * t_near.
      Without G there is nothing to route on, so the near edge runs the all-class medium model: role
      near_only_model, by default "medium" when the near edge times it, else "expert" (same architecture).
    """
    out: dict[str, dict[str, float]] = {}
    edge = profile.edge
    for name, role in (("edge_generalist", "generalist"), ("edge_medium", "medium")):
        t = _role_ms(edge.latency_ms, role, "edge")
        e = edge.power_active_w * t
        out[name] = {"latency_ms": t, "edge_energy_mj": e, "system_energy_mj": e}
    if near_only_model is None:
        near_only_model = "medium" if "medium" in profile.near_edge.latency_ms else "expert"
    terms = _offload_terms(profile, "generalist", near_only_model)
    out["near_edge_only"] = {
        "latency_ms": terms["extra_latency"],
        "edge_energy_mj": terms["extra_edge"],
        "system_energy_mj": terms["extra_system"],
    }
    return out

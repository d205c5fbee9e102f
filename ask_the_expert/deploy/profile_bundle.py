"""Measure a bundle's models on this machine and write a cost profile (torch-free: numpy + onnxruntime).

Each ONNX model is timed at batch 1 and at a configurable batch: ``warmup`` untimed runs, then the median of
``repeats`` timed runs of ``session.run`` on preprocessed inputs (preprocessing and routing are not included).
The profile's latencies are the batch-1 medians in ms, per model role of ``ask_the_expert.method.costs``:

- edge ``generalist``: the generalist; edge ``medium``: an expert (same architecture as the all-class medium
  model, which a bundle does not contain), the median over the timed experts;
- near-edge ``expert`` and ``medium``: the median over the timed experts.

Powers and the link cannot be measured here: they are copied from a base profile (``--base``), and ``section``
limits which side is overwritten, so a user measures the edge device and the accelerator one after another::

    ate-deploy profile --bundle BUNDLE --base configs/profiles/edge_arm_wifi.yaml --section near_edge --out p.yaml
    ate-deploy profile --bundle BUNDLE --base p.yaml --section edge --out measured.yaml --force   # on the edge
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import yaml

from ask_the_expert.deploy.runtime import INPUT_NAME, OUTPUT_NAME, Bundle, preprocess
from ask_the_expert.method.costs import Profile, load_profile, profile_from_dict, profile_to_dict
from ask_the_expert.utils.atomic import write_text_atomic
from ask_the_expert.utils.errors import ProfileError
from ask_the_expert.utils.outputs import check_output_path, check_replaceable_file

Section = Literal["edge", "near_edge", "both"]


def time_session(session: ort.InferenceSession, inputs: np.ndarray, warmup: int, repeats: int) -> float:
    """Median wall time in ms of ``session.run`` on ``inputs`` after ``warmup`` untimed runs."""
    feed = {INPUT_NAME: inputs}
    for _ in range(warmup):
        session.run([OUTPUT_NAME], feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@dataclass(frozen=True)
class BundleTiming:
    """How the bundle's models are timed: ``warmup`` untimed runs, then the median of ``repeats`` timed runs at
    batch 1 and at ``batch_size``; only the first ``max_experts`` experts (all when None); ``threads``
    onnxruntime intra-op threads (onnxruntime's default when None)."""

    batch_size: int = 32
    warmup: int = 5
    repeats: int = 20
    max_experts: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.warmup < 0 or self.repeats < 1:
            raise ProfileError(
                "Need batch_size >= 1, warmup >= 0 and repeats >= 1, "
                f"got {self.batch_size}, {self.warmup}, {self.repeats}."
            )


def measure_bundle(bundle: Bundle, timing: BundleTiming = BundleTiming()) -> dict[str, dict[str, float]]:
    """{model file: {"batch1_ms", "batch<B>_ms", "per_image_ms_at_batch<B>"}} for the generalist and experts."""
    batch_size, warmup, repeats = timing.batch_size, timing.warmup, timing.repeats
    router = bundle.router
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch_size, router.image_size, router.image_size, 3), dtype=np.uint8)
    x = preprocess(images, router)
    sessions = {router.generalist_file: bundle.edge.session}
    if router.num_experts:
        experts = bundle.near_edge.sessions[: timing.max_experts]
        sessions.update(zip(router.expert_files, experts, strict=False))
    out = {}
    for name, session in sessions.items():
        single = time_session(session, x[:1], warmup, repeats)
        batched = time_session(session, x, warmup, repeats)
        out[name] = {
            "batch1_ms": round(single, 4),
            f"batch{batch_size}_ms": round(batched, 4),
            f"per_image_ms_at_batch{batch_size}": round(batched / batch_size, 4),
        }
    return out


def profile_bundle(
    folder: str | Path,
    base: Profile,
    section: Section = "both",
    timing: BundleTiming = BundleTiming(),
    name: str | None = None,
) -> Profile:
    """A copy of ``base`` whose ``section`` latencies are measured here (batch-1 medians, ms)."""
    if section not in ("edge", "near_edge", "both"):
        raise ProfileError(f"section must be edge, near_edge or both, got {section!r}.")
    bundle = Bundle.load(folder, threads=timing.threads)
    timings = measure_bundle(bundle, timing)
    router = bundle.router
    g_ms = timings[router.generalist_file]["batch1_ms"]
    expert_ms = [t["batch1_ms"] for f, t in timings.items() if f != router.generalist_file]
    e_ms = statistics.median(expert_ms) if expert_ms else None
    notes = ["latency_ms are medians of batch-1 onnxruntime runs; powers and link are copied from the base"]
    edge, near = base.edge, base.near_edge
    if section in ("edge", "both"):
        latency = {**edge.latency_ms, "generalist": g_ms}
        if e_ms is not None:
            latency["medium"] = e_ms
            notes.append("edge.latency_ms.medium is an expert's time (same architecture as the medium model)")
        edge = replace(edge, latency_ms=latency)
    if section in ("near_edge", "both") and e_ms is not None:
        near = replace(near, latency_ms={**near.latency_ms, "expert": e_ms, "medium": e_ms})
        notes.append("near_edge.latency_ms.medium is an expert's time (same architecture)")
    host = {
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "providers": list(bundle.edge.session.get_providers()),
        "intra_op_threads": timing.threads or "onnxruntime default",
    }
    measured = {"section": section, "host": host, "batch_size": timing.batch_size, "warmup": timing.warmup}
    measured.update({"repeats": timing.repeats, "models": timings, "notes": notes, "base_profile": base.name})
    meta: dict[str, Any] = {**base.meta, f"measured_{section}": measured}
    return Profile(
        name=name or f"{base.name}_measured",
        description=f"Latencies measured on {host['machine']} ({section}); powers and link from '{base.name}'.",
        edge=edge,
        near_edge=near,
        link=base.link,
        meta=meta,
    )


def check_profile_output(path: str | Path, force: bool = False, option: str = "--out") -> None:
    """Refuse to overwrite ``path`` unless ``force``, and then only a cost profile (nothing else is replaced)."""
    check_output_path(path, option, folder=False)
    if Path(path).exists() and not force:
        raise ProfileError(f"{path} already exists; choose another {option} or pass --force to overwrite it.")
    check_replaceable_file(path, option, "a cost profile", _is_profile)


def _is_profile(path: Path) -> bool:
    try:
        load_profile(path)
    except ProfileError:
        return False
    return True


def write_profile(profile: Profile, path: str | Path, force: bool = False) -> Path:
    """Write ``profile`` as YAML in the configs/profiles format, atomically (``check_profile_output`` first)."""
    path = Path(path)
    check_profile_output(path, force)
    header = (
        f"# Cost profile written by `ate-deploy profile` or `client`. {profile.description}\n"
        "# Units: latency ms, power W, rates Mbit/s, sizes bytes. meta records how each latency was measured.\n"
    )
    body = yaml.safe_dump(profile_to_dict(profile), sort_keys=False, default_flow_style=False)
    profile_from_dict(yaml.safe_load(body), str(path))  # what ate-evaluate does with it: fail here rather than there
    write_text_atomic(path, header + body)
    return path

"""A pipeline killed with SIGKILL at points inside every step, then rerun each time, ends with the outputs of an
uninterrupted run, and no partial or stale file is ever taken for a finished one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO_ROOT

TINY = REPO_ROOT / "tests" / "conf" / "pipeline_tiny.yaml"
DRIVER = REPO_ROOT / "tests" / "fault_driver.py"
# Where each process dies: inside the generalist's training and at its commit, between and inside the experts'
# runs (the routed-in cache, checkpoints, metrics), while the evaluation and the export write their folders.
KILLS = (
    "generalist:batch:3",
    "generalist:commit:2",
    "experts:commit:2",
    "experts:batch:20",
    "experts:commit:6",
    "evaluate:commit:1",
    "export:commit:1",
)


def command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable, str(DRIVER), "--config", str(TINY), "--data.data_dir", str(data), "--out", str(out),
        "--experts_config", "tests/conf/experts_fault.yaml", "--evaluate.k", "[1, 2]",
    ]  # fmt: skip


def run(data: Path, out: Path, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FAULT_AT": fault}
    return subprocess.run(command(data, out), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def outputs(out: Path) -> dict[str, object]:
    """What a run produced, with this run's folder names taken out (they differ between the two runs)."""
    seed = out / "seed_0"
    found: dict[str, object] = {}
    for ckpt in sorted(seed.glob("**/*.ckpt")):
        if "ask-the-expert" not in ckpt.parts and "checkpoints" not in ckpt.parts:
            found[str(ckpt.relative_to(out))] = weights(ckpt)
    for name in ("records.csv", "curves.csv"):
        found[name] = (seed / "eval" / "val" / name).read_text()
    summary = (seed / "eval" / "val" / "summary.json").read_text().replace(str(out), "OUT")
    found["summary"] = re.sub(r'"sha256": "[0-9a-f]+"', "", summary)  # checkpoints embed their own paths
    manifest = json.loads((seed / "bundle" / "manifest.json").read_text())
    found["bundle"] = {f: e["sha256"] for f, e in manifest["files"].items() if f.endswith(".onnx")}
    found["router"] = json.loads((seed / "bundle" / "router.json").read_text())
    return found


def same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_kills_inside_every_step_then_reruns_give_the_uninterrupted_outputs(fake_cifar_root: Path, tmp_path: Path):
    reference = tmp_path / "reference"
    done = run(fake_cifar_root, reference, "none:none:0")
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    for fault in KILLS:
        killed = run(fake_cifar_root, out, fault)
        assert killed.returncode == -signal.SIGKILL, (fault, killed.returncode, killed.stderr[-2000:])
        assert f"FAULT_INJECTED {fault}" in killed.stdout
        step = fault.split(":")[0]
        assert f"seed 0: {step}: started" in killed.stdout  # the step ran again: nothing partial was trusted
        # The killed step left no completion marker: it is not taken for done.
        folder = {"generalist": "generalist", "experts": "experts", "evaluate": "eval", "export": "bundle.step"}
        assert not (out / "seed_0" / folder[step] / "step.json").exists(), fault
    final = run(fake_cifar_root, out, "none:none:0")
    assert final.returncode == 0, final.stderr[-3000:]
    for line in ("generalist: fresh", "experts: fresh", "evaluate: fresh", "export: started"):
        assert line in final.stdout, line  # only what the last kill interrupted reruns

    a, b = outputs(reference), outputs(out)
    assert a.keys() == b.keys()
    for key in a:
        assert same(a[key], b[key]), key
    leftovers = [p for p in out.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp") or ".tmp" in p.suffixes]
    assert not leftovers, leftovers
    assert hashlib.sha256((out / "report.md").read_bytes()).hexdigest()  # the report was written from these outputs

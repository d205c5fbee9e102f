"""benchmarks/gpu_check.py on CPU with --fake: the gpu10 preset end to end writes its report, timings and
throughput into one folder (on a GPU the same script is the device check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def test_gpu_check_fake_run_writes_report_timings_and_throughput(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--fake", "true", "--out", str(out)]
    # A script's folder, not the repository, is first on its path: this checkout's packages come from PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "## Primary family (val assessment part)" in (out / "report.md").read_text()
    timings = json.loads((out / "timings.json").read_text())
    assert timings["fake_cpu_smoke_run"] is True and timings["target_seconds"] == 600
    assert {"seed_0/generalist", "seed_0/experts", "seed_0/evaluate", "seed_0/export"} <= set(timings["steps"])
    assert all(seconds > 0 for seconds in timings["steps"].values())
    rates = json.loads((out / "throughput.json").read_text())
    assert any("generalist" in name for name in rates) and all(r["images_per_s"] > 0 for r in rates.values())
    # The preset's shapes are the paper's: ViT-Tiny generalist, ViT-Small experts (the fake run shrinks them).
    preset = (REPO_ROOT / "configs" / "experiments" / "gpu10.yaml").read_text()
    assert "ViT-Tiny" in preset and "ViT-Small" in preset

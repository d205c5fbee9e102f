"""pipeline.py end to end on generated data with tiny models (the real `mini` preset, shrunk), resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, REPO_ROOT

import pipeline
import train_experts

MINI = CONFIG_DIR / "experiments" / "mini.yaml"
# Later in the argument list than every preset value: tiny ViTs, no W&B, no workers, a small val split.
TINY_RUN = [
    "--data.val_size=100",
    "--data.batch_size=16",
    "--data.num_workers=0",
    "--model.embed_dim=16",
    "--model.depth=1",
    "--model.num_heads=2",
    "--trainer.max_epochs=1",
    "--trainer.logger=false",
    "--trainer.callbacks=[]",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def pipeline_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(MINI), "--data_dir", str(data_dir), "--check_integrity", "false", "--out", str(out),
        "--common_args", json.dumps(TINY_RUN),
        "--evaluate_args", json.dumps(["--k", "1", "2", "--val-size", "100", "--num-workers", "0",
                                       "--wandb-mode", "disabled", "--accelerator", "cpu"]),
        "--export_args", json.dumps(["--k", "2", "--val-size", "100"]),
        *extra,
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the presets name their configs relative to the repository


PRESETS = sorted(p for p in (CONFIG_DIR / "experiments").glob("*.yaml") if "experts_config" in p.read_text())


def test_mini_preset_has_four_experts() -> None:
    opts = pipeline.build_parser().parse_args(["--config", str(MINI)])
    assert opts.preset == "mini" and opts.seeds == [0]
    experts = train_experts.build_parser().parse_args(["--config", opts.experts_config])
    assert len(train_experts.parse_partition_spec(experts.partition)) == 4


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_pipeline_preset_parses_and_names_existing_configs(preset: Path) -> None:
    opts = pipeline.build_parser().parse_args(["--config", str(preset)])
    experts = train_experts.build_parser().parse_args(["--config", opts.experts_config])
    configs = [*opts.generalist_config, *experts.base_config, *experts.progressive_config, *experts.static_config,
               *experts.common_config]
    assert all(Path(c).is_file() for c in configs), configs
    assert opts.preset == preset.stem


def test_pipeline_end_to_end_resumes_without_redoing_steps(fake_cifar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "mini"
    # An interrupted job: only the generalist step finished.
    assert pipeline.main(pipeline_args(fake_cifar_root, out, "--steps", "[generalist]")) == 0
    generalist = out / "seed_0" / "generalist" / "generalist.ckpt"
    first_mtime = generalist.stat().st_mtime_ns
    assert not (out / "seed_0" / "base").exists()

    assert pipeline.main(pipeline_args(fake_cifar_root, out)) == 0
    assert generalist.stat().st_mtime_ns == first_mtime  # not retrained
    seed = out / "seed_0"
    experts = [f"expert_{j}.ckpt" for j in range(4)]
    for mode in ("progressive", "static"):
        assert sorted(p.name for p in (seed / "experts" / mode).glob("*.ckpt")) == experts
    assert (seed / "eval" / "val" / "summary.json").is_file()
    assert (seed / "bundle" / "manifest.json").is_file()

    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and set(summary["experts"]) == {"0", "1", "2", "3"}
    assert {"routed@k1", "routed@k2", "static@k1", "base@k0", "oracle@k0", "random@k1"} <= set(summary["curves"])
    assert "python pipeline.py --config" in report
    assert "one seed only" in report and "Progressive experts above static experts" in report
    assert any(p.suffix == ".png" for p in (out / "plots").iterdir())

    # A second complete run skips every step and only rewrites the report.
    done = {p: p.stat().st_mtime_ns for p in seed.rglob("*.ckpt")}
    assert pipeline.main(pipeline_args(fake_cifar_root, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == done


def test_missing_step_input_is_a_clear_error(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = pipeline.main(pipeline_args(fake_cifar_root, tmp_path / "empty", "--steps", "[evaluate]"))
    err = capsys.readouterr().err
    assert code == 2
    assert "Step 'evaluate' of seed 0 needs" in err and "generalist.ckpt" in err and "Traceback" not in err

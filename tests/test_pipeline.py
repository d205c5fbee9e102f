"""ate-pipeline end to end on generated data with tiny models (tests/conf/pipeline_tiny.yaml): fingerprinted steps
that are reused only when fresh, reruns of exactly the affected steps, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, REPO_ROOT

from ask_the_expert.commands import pipeline, train_experts
from ask_the_expert.commands.pipeline_steps import MARKER, SeedRun

TINY = REPO_ROOT / "tests" / "conf" / "pipeline_tiny.yaml"
PRESETS = sorted(p for p in (CONFIG_DIR / "experiments").glob("*.yaml") if "experts_config" in p.read_text())


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the presets name their configs relative to the repository


def run(data_dir: Path, out: Path, *extra: str) -> int:
    return pipeline.main(["--config", str(TINY), "--data.data_dir", str(data_dir), "--out", str(out), *extra])


def markers(out: Path) -> dict[str, str]:
    """Fingerprint of every finished step (from its completion marker)."""
    found = {}
    for path in sorted(out.rglob(MARKER)):
        found[str(path.parent.relative_to(out))] = json.loads(path.read_text())["fingerprint"]
    return found


def finished_at(out: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob(MARKER)}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_pipeline_preset_parses_and_names_existing_configs(preset: Path) -> None:
    parser = pipeline.build_parser()
    opts = parser.instantiate(parser.parse_args(["--config", str(preset)]))
    job = train_experts.load_job(opts.experts_config)
    configs = [*opts.generalist.found().configs, *(c for k in train_experts.RUN_KINDS for c in job.run_of(k).configs)]
    assert all(Path(c).is_file() for c in configs), configs
    # Typed settings, no command lines inside the YAML: every override is an option name with a value.
    overrides = {**opts.generalist.overrides, **opts.common.overrides}
    overrides |= {k: v for kind in train_experts.RUN_KINDS for k, v in job.run_of(kind).overrides.items()}
    assert not [k for k in overrides if k.startswith("-") or " " in k], overrides
    assert all(isinstance(s, dict) for s in job.progressive.overrides.get("model.stages", [{}])), job.progressive
    assert opts.preset == preset.stem
    assert all(Path(p).is_file() for p in opts.evaluate.profiles or [])


def test_pipeline_runs_reuses_fresh_steps_and_reruns_exactly_what_changed(fake_cifar_root: Path, tmp_path: Path):
    out = tmp_path / "tiny"
    # An interrupted job: only the generalist step finished.
    assert run(fake_cifar_root, out, "--steps", "[generalist]") == 0
    first = markers(out)
    assert list(first) == ["seed_0/generalist"]

    assert run(fake_cifar_root, out) == 0
    done = markers(out)
    assert set(done) == {"seed_0/generalist", "seed_0/experts", "seed_0/eval", "seed_0/bundle.step"}
    assert done["seed_0/generalist"] == first["seed_0/generalist"]  # reused, not retrained
    seed = out / "seed_0"
    for variant in ("progressive", "static", "static_init"):
        assert sorted(p.name for p in (seed / "experts" / variant).glob("*.ckpt")) == ["expert_0.ckpt", "expert_1.ckpt"]
    assert (seed / "eval" / "val" / "complete.json").is_file() and (seed / "bundle" / "manifest.json").is_file()
    report = (out / "report.md").read_text()
    assert "ate-pipeline --config" in report and "one seed only" in report
    assert "## Primary family (val assessment part)" in report
    assert "progressive vs static-from-base" in report and "collaboration vs base model" in report
    assert "| **fails** |" in report or "| holds |" in report or "| not established |" in report

    # Nothing changed: every step is fresh and skipped.
    stamps = finished_at(out)
    assert run(fake_cifar_root, out) == 0
    assert finished_at(out) == stamps

    # An evaluation argument changed: the evaluation reruns; training and export (which do not read it) do not.
    assert run(fake_cifar_root, out, "--evaluate.k", "[2]") == 0
    after = finished_at(out)
    assert [k for k in after if after[k] != stamps[k]] == ["seed_0/eval"]
    summary = json.loads((seed / "eval" / "val" / "summary.json").read_text())
    assert summary["k_values"] == [2]

    # A generalist argument changed: the generalist reruns ...
    changed = ["--evaluate.k", "[2]", "--generalist.overrides", "{model.lr: 5.0e-4}"]
    assert run(fake_cifar_root, out, *changed, "--steps", "[generalist]") == 0
    again = finished_at(out)
    assert [k for k in again if again[k] != after[k]] == ["seed_0/generalist"]
    # ... and every step that reads its checkpoint is stale now (their recorded input hash no longer matches).
    parser = pipeline.build_parser()
    argv = ["--config", str(TINY), "--data.data_dir", str(fake_cifar_root), "--out", str(out), *changed]
    seed_run = SeedRun(parser.instantiate(parser.parse_args(argv)), 0)
    assert {step.name: step.fresh(step.record()) for step in seed_run.steps} == {
        "generalist": True, "experts": False, "evaluate": False, "export": False
    }  # fmt: skip

    # --force_step reruns a fresh step.
    assert run(fake_cifar_root, out, *changed, "--steps", "[generalist]", "--force_step", "[generalist]") == 0
    forced = finished_at(out)
    assert [k for k in forced if forced[k] != again[k]] == ["seed_0/generalist"]


def test_outputs_that_no_finished_step_vouches_for_are_not_reused(fake_cifar_root: Path, tmp_path: Path):
    out = tmp_path / "stale"
    assert run(fake_cifar_root, out, "--steps", "[generalist]") == 0
    # Results from elsewhere (a committed example, an older run) sitting where the pipeline writes.
    val = out / "seed_0" / "eval" / "val"
    val.mkdir(parents=True)
    (val / "summary.json").write_text(json.dumps({"stale": True}))
    (val / "complete.json").write_text(json.dumps({"files": ["summary.json"]}))
    experts = out / "seed_0" / "experts" / "progressive"
    experts.mkdir(parents=True)
    (experts / "expert_0.ckpt").write_text("not from this run")
    fewer_experts = ["--experts_config", "tests/conf/experts_fault.yaml"]  # 2 variants are enough here
    assert run(fake_cifar_root, out, "--steps", "[generalist, experts, evaluate]", *fewer_experts) == 0
    assert "stale" not in json.loads((val / "summary.json").read_text())
    assert (experts / "expert_0.ckpt").read_bytes()[:2] == b"PK"  # retrained: a real (zip) checkpoint


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "[evaluate]"], "Step 'evaluate' of seed 0 needs"),
        (["--force_step", "[evaluation]"], "force_step"),
        (["--seeds", "[0, 0]"], "distinct"),
        (["--experts_config", "missing.yaml"], "does not exist"),
        (["--evaluate.k", "[0]"], "k values must be integers"),
        (["--data.data_dir", "no_such_folder"], "does not exist. Point --data.data_dir at the folder"),
    ],
)
def test_bad_input_is_a_clear_error_before_anything_is_written(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    out = tmp_path / "empty"
    assert run(fake_cifar_root, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()

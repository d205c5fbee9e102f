"""The W&B runs of a tiny pipeline, read back from their offline files: run identity, the native offload curves, the
values the evaluation used, the artifact graph from the checkpoints to the evaluation and the bundle, and the
pipeline's summary run as a sweep trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from test_collaborative_callback import read_wandb_records, wandb_run_content

from ask_the_expert.commands import pipeline
from ask_the_expert.commands.pipeline_steps import SeedRun

TINY = REPO_ROOT / "tests" / "conf" / "pipeline_tiny.yaml"


def offline_runs(root: Path) -> dict[str, dict]:
    """Every offline W&B run under ``root`` by display name: its run record, config, artifacts and content."""
    runs = {}
    for folder in sorted(root.rglob("offline-run-*")):
        records = read_wandb_records(next(folder.glob("run-*.wandb")))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config: dict = {}
        for r in records:
            if r.WhichOneof("record_type") == "config":
                config.update({item.key: json.loads(item.value_json) for item in r.config.update})
        artifacts = [(r.artifact.name, r.artifact.type) for r in records if r.WhichOneof("record_type") == "artifact"]
        metrics, rows, summary = wandb_run_content(folder)
        runs[run.display_name] = {
            "run": run, "config": config, "artifacts": artifacts, "metrics": metrics, "rows": rows, "summary": summary,
        }  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def tiny_pipeline_runs(fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("wandb_pipeline") / "tiny"
    # The fixture's training runs log nothing; here they log offline like a user's run without credentials.
    argv = ["--config", str(TINY), "--data.data_dir", str(fake_cifar_root), "--out", str(out)]
    argv += ["--common.overrides", "{trainer.logger.init_args.mode: offline}"]
    argv += ["--variants", "[progressive, static]", "--wandb.mode", "offline"]
    argv += ["--evaluate.wandb.mode", "offline", "--export.wandb.mode", "offline"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO_ROOT)
        # What a W&B sweep agent sets for its trial: only the pipeline's summary run may take the trial's id.
        mp.setenv("WANDB_SWEEP_ID", "sweep0")
        mp.setenv("WANDB_RUN_ID", "trial0")
        assert pipeline.main(argv) == 0
    trial = out / "sweep-sweep0" / "trial0"
    return trial, offline_runs(trial)


def test_every_run_is_named_grouped_and_typed_by_what_it_is(tiny_pipeline_runs: tuple[Path, dict]) -> None:
    _, runs = tiny_pipeline_runs
    identity = {name: (r["run"].run_group, r["run"].job_type) for name, r in runs.items()}
    assert identity == {
        "generalist-seed0": ("tiny-seed0", "train-generalist"),
        "base-seed0": ("tiny-seed0", "train-base"),
        "expert-progressive-00-seed0": ("tiny-seed0", "train-expert-progressive"),
        "expert-progressive-01-seed0": ("tiny-seed0", "train-expert-progressive"),
        "expert-static-00-seed0": ("tiny-seed0", "train-expert-static"),
        "expert-static-01-seed0": ("tiny-seed0", "train-expert-static"),
        "evaluate-tiny-seed0": ("tiny-seed0", "evaluate"),
        "export-tiny-seed0": ("tiny-seed0", "export"),
        "pipeline-tiny": ("tiny", "pipeline"),
    }
    # Tags name the network really trained (embed 16, depth 1, 2 heads), never the arch's default shape.
    assert {"generalist", "e16-d1-h2", "patch4"} <= set(runs["generalist-seed0"]["run"].tags)
    assert not {"vit_tiny", "vit_small"} & {t for r in runs.values() for t in r["run"].tags}
    assert {"expert", "static"} <= set(runs["expert-static-01-seed0"]["run"].tags)
    # Only the summary run is the sweep's trial; the steps' runs did not take its id.
    trial = [name for name, r in runs.items() if r["run"].run_id == "trial0"]
    assert trial == ["pipeline-tiny"] and runs["pipeline-tiny"]["run"].sweep_id == "sweep0"
    assert all(r["run"].sweep_id == "" for name, r in runs.items() if name != "pipeline-tiny")


def test_the_evaluation_logs_native_offload_curves_and_the_values_it_used(tiny_pipeline_runs: tuple[Path, dict]):
    trial, runs = tiny_pipeline_runs
    evaluation = runs["evaluate-tiny-seed0"]
    step = "collab_val/offload_pct"
    declared = {m.name: m.step_metric for m in evaluation["metrics"] if m.name}
    curve = "collab_val/curves/routed_k2_max_prob/accuracy"
    assert step in declared and declared[curve] == step
    points = [(row[step], row[curve]) for row in evaluation["rows"] if step in row]
    assert [p[0] for p in points] == list(range(101))  # every 1 % of offload
    summary = json.loads((trial / "seed_0" / "eval" / "val" / "summary.json").read_text())
    routed = next(c for c in summary["reference_points"] if c["policy"] == "generalist_only")
    assert points[0][1] == pytest.approx(routed["accuracy"])  # 0 % offloaded is the generalist alone
    used = evaluation["config"]["used"]
    assert used["temperature"] == pytest.approx(summary["temperature"]) and used["temperature"] != 1.0
    chosen = {(p["policy"], p["k"]): p["tau"] for p in used["operating_points"]}
    written = {(p["policy"], p["k"]): p["tau"] for p in summary["operating_points"] if p["confidence"] == "max_prob"}
    assert chosen and all(written[key] == pytest.approx(tau) for key, tau in chosen.items())
    assert set(used["checkpoints"]) >= {"generalist", "experts", "static_experts", "base"}


def test_artifacts_link_the_checkpoints_to_the_evaluation_and_the_bundle(tiny_pipeline_runs: tuple[Path, dict]):
    _, runs = tiny_pipeline_runs
    written = {name: a for name, r in runs.items() for a in r["artifacts"]}
    models = {a[0] for a in written.values() if a[1] == "model"}
    labels = {name.rsplit("-", 1)[0] for name in models}
    assert labels == {"generalist", "base", "expert-progressive-00", "expert-progressive-01", "expert-static-00",
                      "expert-static-01"}  # fmt: skip
    assert written["generalist-seed0"][0].startswith("generalist-")
    evaluated = set(runs["evaluate-tiny-seed0"]["config"]["lineage"]["inputs"])
    assert evaluated == models  # everything it read, each named by the artifact its training run logged
    exported = set(runs["export-tiny-seed0"]["config"]["lineage"]["inputs"])
    assert exported == {m for m in models if m.startswith(("generalist-", "expert-progressive-"))}
    assert ("bundle-bundle", "deploy-bundle") in runs["export-tiny-seed0"]["artifacts"]


def test_the_summary_run_carries_the_sweep_objective(tiny_pipeline_runs: tuple[Path, dict]) -> None:
    trial, runs = tiny_pipeline_runs
    summary_run = runs["pipeline-tiny"]
    evaluation = json.loads((trial / "seed_0" / "eval" / "val" / "summary.json").read_text())
    routed = next(
        s for s in evaluation["scalars"] if (s["policy"], s["k"], s["confidence"]) == ("routed", 2, "max_prob")
    )
    assert summary_run["summary"]["val/routed/k2/max_prob/area_gain_pts"] == pytest.approx(routed["area_gain_pts"])
    assert summary_run["config"]["preset"] == "tiny" and summary_run["config"]["variants"] == ["progressive", "static"]
    sweep = yaml.safe_load((REPO_ROOT / "configs" / "sweeps" / "mini_stages.yaml").read_text())
    assert sweep["metric"]["name"].startswith("val/routed/k3/max_prob/area_gain_pts")


@pytest.mark.parametrize("trial", range(3))
def test_each_sweep_trial_command_parses_and_changes_only_the_progressive_stages(fake_cifar_root: Path, trial: int):
    sweep = yaml.safe_load((REPO_ROOT / "configs" / "sweeps" / "mini_stages.yaml").read_text())
    ((name, values),) = sweep["parameters"].items()
    value = values["values"][trial]
    # The command the agent runs: its macros expanded, --key=value for the trial's parameter (wandb_agent.py).
    argv = [a for a in sweep["command"] if a not in ("${env}", "${interpreter}", "${program}", "${args}")]
    argv[argv.index("--data.data_dir") + 1] = str(fake_cifar_root)
    argv.append(f"--{name}={value}")  # the agent formats the value as Python prints it (wandb sweeps utils)
    parser = pipeline.build_parser()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO_ROOT)
        opts = parser.instantiate(parser.parse_args(argv))
        pipeline.check_options(opts)  # every training run's CLI builds, the trial's stage list included
        job = SeedRun(opts, 0).job
        preset = SeedRun(parser.instantiate(parser.parse_args(argv[:-1])), 0).job
    assert job.variants == ["progressive"] and job.progressive.overrides["model.stages"] == value["model.stages"]
    assert {k: v for k, v in job.progressive.overrides.items() if k != "model.stages"} == {
        k: v for k, v in preset.progressive.overrides.items() if k != "model.stages"
    }
    assert job.static == preset.static and job.base == preset.base and job.common == preset.common

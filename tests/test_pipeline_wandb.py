"""The W&B runs of a tiny pipeline, read back from their offline files: run identity, the native offload curves, the
values the evaluation used, the artifact graph from the checkpoints to the evaluation and the bundle (artifacts that
carry their files), and the pipeline's summary run as a sweep trial. (Two evaluations of different expert sets:
tests/test_evaluate_cli.py; two validate runs of one checkpoint: tests/test_train_cli.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import wandb
import yaml
from conftest import REPO_ROOT
from test_collaborative_callback import read_wandb_records, wandb_run_content

from ask_the_expert.commands import pipeline
from ask_the_expert.commands.pipeline_steps import SeedRun

TINY = REPO_ROOT / "tests" / "conf" / "pipeline_tiny.yaml"
HASH = "[0-9a-f]{6}"


def offline_runs(root: Path) -> dict[str, dict]:
    """``offline_run_list`` by display name without the run id (every name ends with it; the names must differ
    without it too)."""
    runs = {r["run"].display_name.removesuffix(f"-{r['run'].run_id}"): r for r in offline_run_list(root)}
    assert len(runs) == len(list(root.rglob("offline-run-*")))
    return runs


def offline_run_list(root: Path) -> list[dict]:
    """Every offline W&B run under ``root``: its run record, config, artifacts (name, type, aliases, files,
    metadata) and content."""
    wandb.teardown()  # the service of this process writes the files: until it stops, the latest may be incomplete
    runs = []
    for folder in sorted(root.rglob("offline-run-*")):
        records = read_wandb_records(next(folder.glob("run-*.wandb")))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.display_name.endswith(f"-{run.run_id}"), run.display_name
        config: dict = {}
        for r in records:
            if r.WhichOneof("record_type") == "config":
                config.update({item.key: json.loads(item.value_json) for item in r.config.update})
        artifacts = [
            {
                "name": r.artifact.name,
                "type": r.artifact.type,
                "aliases": list(r.artifact.aliases),
                "files": {c.path: (c.ref, c.size, c.local_path) for c in r.artifact.manifest.contents},
                "metadata": json.loads(r.artifact.metadata or "{}"),
            }
            for r in records
            if r.WhichOneof("record_type") == "artifact"
        ]
        metrics, rows, summary = wandb_run_content(folder)
        runs.append(
            {"run": run, "config": config, "artifacts": artifacts, "metrics": metrics, "rows": rows, "summary": summary}
        )
    return runs


def named(runs: dict[str, dict], pattern: str) -> dict:
    """The one run whose name (without its run id) matches ``pattern``."""
    [name] = [name for name in runs if re.fullmatch(pattern, name)]
    return runs[name]


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
    expected = {
        "tiny-generalist-seed0": (rf"tiny-generalist-{HASH}", "train-generalist"),
        "tiny-base-seed0": (rf"tiny-base-{HASH}", "train-base"),
        "tiny-expert-progressive-00-seed0": (rf"tiny-expert-progressive-00-{HASH}", "train-expert-progressive"),
        "tiny-expert-progressive-01-seed0": (rf"tiny-expert-progressive-01-{HASH}", "train-expert-progressive"),
        "tiny-expert-static-00-seed0": (rf"tiny-expert-static-00-{HASH}", "train-expert-static"),
        "tiny-expert-static-01-seed0": (rf"tiny-expert-static-01-{HASH}", "train-expert-static"),
        rf"tiny-evaluate-val-2experts-{HASH}": (rf"tiny-evaluate-{HASH}", "evaluate"),
        rf"tiny-export-2experts-{HASH}": (rf"tiny-export-{HASH}", "export"),
        rf"tiny-pipeline-{HASH}": (rf"tiny-pipeline-{HASH}", "pipeline"),
    }
    assert len(identity) == len(expected)
    for name_pattern, (group_pattern, job_type) in expected.items():
        [(group, found)] = [v for name, v in identity.items() if re.fullmatch(name_pattern, name)]
        assert re.fullmatch(group_pattern, group) and found == job_type, (name_pattern, group, found)
    # A group is what a run is without its seed: no two different models share one.
    groups = [r["run"].run_group for r in runs.values()]
    assert len(set(groups)) == len(groups)
    # One W&B folder for the whole pipeline: OUT/wandb.
    trial = tiny_pipeline_runs[0]
    assert {p.parent for p in trial.rglob("offline-run-*")} == {trial / "wandb"}
    # Tags name the network really trained (embed 16, depth 1, 2 heads), never the arch's default shape.
    assert {"fit", "generalist", "e16-d1-h2", "patch4", "patch-tokenizer"} <= set(
        runs["tiny-generalist-seed0"]["run"].tags
    )
    assert not {"vit_tiny", "vit_small"} & {t for r in runs.values() for t in r["run"].tags}
    assert {"expert", "static"} <= set(runs["tiny-expert-static-01-seed0"]["run"].tags)
    # Only the summary run is the sweep's trial; the steps' runs did not take its id.
    trial_runs = [name for name, r in runs.items() if r["run"].run_id == "trial0"]
    assert len(trial_runs) == 1 and re.fullmatch(rf"tiny-pipeline-{HASH}", trial_runs[0])
    assert runs[trial_runs[0]]["run"].sweep_id == "sweep0"
    assert all(r["run"].sweep_id == "" for name, r in runs.items() if name != trial_runs[0])


def test_the_evaluation_logs_native_offload_curves_and_the_values_it_used(tiny_pipeline_runs: tuple[Path, dict]):
    trial, runs = tiny_pipeline_runs
    evaluation = named(runs, rf"tiny-evaluate-val-2experts-{HASH}")
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


def test_artifacts_carry_their_files_and_link_the_checkpoints_to_the_evaluation_and_the_bundle(
    tiny_pipeline_runs: tuple[Path, dict],
):
    trial, runs = tiny_pipeline_runs
    written = {(name, a["name"]): a for name, r in runs.items() for a in r["artifacts"]}
    models = {a["name"] for a in written.values() if a["type"] == "model"}
    labels = {name.rsplit("-", 1)[0] for name in models}
    assert labels == {"generalist", "base", "expert-progressive-00", "expert-progressive-01", "expert-static-00",
                      "expert-static-01"}  # fmt: skip
    for a in written.values():  # files inside (no file:// references), with the aliases the writer gave
        assert a["files"] and all(ref == "" and size > 0 for ref, size, _ in a["files"].values()), a["name"]
        assert "latest" in a["aliases"]
    [generalist] = [a for (run, _), a in written.items() if run == "tiny-generalist-seed0"]
    assert generalist["name"].startswith("generalist-") and list(generalist["files"]) == ["generalist.ckpt"]
    # Metadata from the network really trained: no arch name for a 16/1/2 shape, the tokenizer included.
    assert generalist["metadata"]["embed_dim"] == 16 and generalist["metadata"]["depth"] == 1
    assert generalist["metadata"]["arch"] is None and generalist["metadata"]["tokenizer"] == "patch"
    evaluated = set(named(runs, rf"tiny-evaluate-val-2experts-{HASH}")["config"]["lineage"]["inputs"])
    assert evaluated == models  # everything it read, each named by the artifact its training run logged
    export = named(runs, rf"tiny-export-2experts-{HASH}")
    assert set(export["config"]["lineage"]["inputs"]) == {
        m for m in models if m.startswith(("generalist-", "expert-progressive-"))
    }
    [bundle] = export["artifacts"]
    assert re.fullmatch(r"bundle-2experts-[0-9a-f]{12}", bundle["name"]) and bundle["type"] == "deploy-bundle"
    on_disk = {p.relative_to(trial / "seed_0" / "bundle").as_posix() for p in (trial / "seed_0" / "bundle").rglob("*")}
    assert set(bundle["files"]) == {p for p in on_disk if (trial / "seed_0" / "bundle" / p).is_file()}


def test_the_summary_run_carries_the_sweep_objective_under_the_evaluations_names(
    tiny_pipeline_runs: tuple[Path, dict],
) -> None:
    trial, runs = tiny_pipeline_runs
    summary_run = named(runs, rf"tiny-pipeline-{HASH}")
    evaluation = json.loads((trial / "seed_0" / "eval" / "val" / "summary.json").read_text())
    routed = next(
        s for s in evaluation["scalars"] if (s["policy"], s["k"], s["confidence"]) == ("routed", 2, "max_prob")
    )
    key = "collab_val/routed/k2/max_prob/area_gain_pts"  # the evaluation run's own name for it
    assert summary_run["summary"][key] == pytest.approx(routed["area_gain_pts"])
    assert named(runs, rf"tiny-evaluate-val-2experts-{HASH}")["summary"][key] == pytest.approx(routed["area_gain_pts"])
    assert summary_run["config"]["preset"] == "tiny" and summary_run["config"]["variants"] == ["progressive", "static"]
    sweep = yaml.safe_load((REPO_ROOT / "configs" / "sweeps" / "mini_stages.yaml").read_text())
    assert sweep["metric"]["name"] == "collab_val/routed/k3/max_prob/area_gain_pts"


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

"""The installable package's front: every console command of pyproject.toml answers --help under its own name, and
configs, presets, profiles and step fingerprints work from any working directory (not only the repository root)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, REPO_ROOT, TINY_MODEL_ARGS

from ask_the_expert.commands import pipeline, train_experts
from ask_the_expert.commands.train import suite_cli
from ask_the_expert.method.costs import load_profile
from ask_the_expert.utils.config_files import config_dir, find_config
from ask_the_expert.utils.fingerprint import code_text, code_version, source_closure

tomllib = pytest.importorskip("tomllib")
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS = PYPROJECT["project"]["scripts"]


def test_the_installed_packages_are_the_library_and_the_user_folders() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    in_tree = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("ask_the_expert", "lightning_modules", "datamodules", "callbacks")
        for init in (REPO_ROOT / top).rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == in_tree | {"ask_the_expert.configs"}
    assert setuptools["package-dir"] == {"ask_the_expert.configs": "configs"}  # the configs as package data
    assert "py-modules" not in setuptools  # no top-level train, evaluate, ... module


def test_every_command_is_a_console_script_with_one_prefix() -> None:
    # a command module has a main(); its helpers (the pipeline's steps) have none
    folder = REPO_ROOT / "ask_the_expert" / "commands"
    commands = {path.stem for path in folder.glob("*.py") if "\ndef main(" in path.read_text(encoding="utf-8")}
    assert {target.split(":")[0].rsplit(".", 1)[1] for target in SCRIPTS.values()} == commands
    assert all(name.startswith("ate-") for name in SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_command_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, function = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}") or f"usage: {name} " in out, out[:200]


def test_find_config_prefers_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_dir() == CONFIG_DIR
    assert Path(find_config("configs/generalist.yaml")) == CONFIG_DIR / "generalist.yaml"
    assert find_config("configs/no_such.yaml") == "configs/no_such.yaml"  # the reader's error names what was given
    assert find_config("my.yaml") == "my.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "generalist.yaml").write_text("seed_everything: 1\n")
    assert find_config("configs/generalist.yaml") == "configs/generalist.yaml"


def test_configs_presets_and_profiles_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cifar_root: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_profile("configs/profiles/edge_arm_wifi.yaml").name
    # an experts config through the -c action, and the configs it names
    job, _ = train_experts.parse_job(["--config", "configs/experiments/mini_experts.yaml"])
    assert all(Path(c).is_file() for kind in train_experts.RUN_KINDS for c in job.run_of(kind).configs)
    # a preset: the configs and profiles named inside its YAML
    parser = pipeline.build_parser()
    opts = parser.instantiate(parser.parse_args(["-c", "configs/experiments/mini.yaml"]))
    pipeline.find_configs(opts)
    paths = [*opts.generalist.configs, opts.experts_config, *opts.evaluate.profiles, opts.export.profile]
    assert all(Path(p).is_file() for p in paths), paths
    # a training run's LightningCLI with -c configs/... (built, nothing trained)
    cli = suite_cli(
        ["-c", "configs/generalist.yaml", "-c", "configs/trainer/cpu.yaml", "--data.data_dir", str(fake_cifar_root),
         "--trainer.logger=false", *TINY_MODEL_ARGS]
    )  # fmt: skip
    assert cli.model.hparams.role == "generalist" and cli.model.hparams.embed_dim == 16


def test_code_version_follows_imports_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closure = source_closure(["ask_the_expert.commands.evaluate"])
    assert closure["ask_the_expert.method.policies"] == REPO_ROOT / "ask_the_expert" / "method" / "policies.py"
    assert "lightning_modules.collaborative" in closure and "ask_the_expert.commands.pipeline" not in closure
    here = code_version(["ask_the_expert.commands.evaluate"])
    monkeypatch.chdir(tmp_path)
    assert code_version(["ask_the_expert.commands.evaluate"]) == here
    assert code_version(["ask_the_expert.commands.partition"]) != here


def test_the_code_fingerprint_ignores_docstrings_and_comments(tmp_path: Path) -> None:
    source = tmp_path / "step.py"
    source.write_text('"""A step."""\n\n\ndef run(x: int) -> int:\n    """Help text."""\n    return x + 1  # why\n')
    before = code_text(source)
    source.write_text('"""A step, better described."""\n\n\ndef run(x: int) -> int:\n    """Other help."""\n'
                      "    # a new comment\n    return x + 1\n")  # fmt: skip
    assert code_text(source) == before
    source.write_text('"""A step."""\n\n\ndef run(x: int) -> int:\n    """Help text."""\n    return x + 2\n')
    assert code_text(source) != before

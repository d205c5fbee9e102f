"""The import graph flows one way: core <- datamodules <- lightning_modules <- callbacks <- entry points, and the
deployment runtime needs only core (numpy, onnxruntime), never torch or the Lightning side."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT

from core.fingerprint import imported_modules

# A package may import from its own layer and the layers below it.
LAYERS = ["core", "datamodules", "lightning_modules", "deploy_export", "callbacks", "entry"]
PACKAGES = ("core", "datamodules", "lightning_modules", "callbacks", "deploy")
ENTRY_POINTS = ("train", "train_experts", "evaluate", "pipeline", "partition", "compare", "deploy.__main__")
# The torch-free half of deploy: what runs on the edge device and the near-edge box.
RUNTIME = (
    "deploy.bundle_format", "deploy.wire", "deploy.runtime", "deploy.profile_bundle", "deploy.model_card",
    "deploy.serve_contract", "deploy.serve", "deploy.serve_process", "deploy.client", "deploy.triton_repo",
)  # fmt: skip


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)


def suite_modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (REPO_ROOT / pkg).glob("*.py")]
    files += [
        REPO_ROOT / f"{name}.py" for name in ENTRY_POINTS if "." not in name and (REPO_ROOT / f"{name}.py").is_file()
    ]
    return {module_name(p).removesuffix(".__init__"): p for p in files}


def imported_suite_modules(path: Path) -> set[str]:
    """Suite modules named by any import statement in ``path`` (top level or inside functions)."""
    names = imported_modules(path)
    known = suite_modules()
    return {n for n in names if n in known and n.split(".")[0] in (*PACKAGES, *ENTRY_POINTS)}


def layer(name: str) -> int:
    if name in ENTRY_POINTS:
        return LAYERS.index("entry")
    top = name.split(".")[0]
    if top == "deploy":
        return LAYERS.index("core") if name in RUNTIME else LAYERS.index("deploy_export")
    return LAYERS.index(top)


@pytest.mark.parametrize("name", sorted(suite_modules()))
def test_imports_point_down_the_layers(name: str) -> None:
    path = suite_modules()[name]
    upward = sorted(m for m in imported_suite_modules(path) if layer(m) > layer(name))
    assert not upward, f"{name} (layer {LAYERS[layer(name)]}) imports higher layers: {upward}"


@pytest.mark.parametrize("name", RUNTIME)
def test_the_deployment_runtime_imports_only_core(name: str) -> None:
    imported = imported_suite_modules(suite_modules()[name])
    assert all(m.startswith("core") or m in RUNTIME for m in imported), imported
    source = suite_modules()[name].read_text(encoding="utf-8")
    assert "import torch" not in source and "import lightning" not in source


def test_the_graph_is_not_vacuous() -> None:
    modules = suite_modules()
    assert {"core.policies", "lightning_modules.collaborative", "callbacks.collaborative_eval"} <= set(modules)
    assert "core.policies" in imported_suite_modules(modules["lightning_modules.collaborative"])
    assert layer("deploy.export") > layer("lightning_modules.collaborative") and layer("deploy.runtime") == 0

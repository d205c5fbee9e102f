"""The import graph flows one way, and each folder holds what its name says.

Layers, lowest first (a module may import its own layer and the layers below it):

    utils <- method (with the torch-free deployment runtime) <- results <- datamodules <- models
    <- lightning_modules <- tracking <- deploy export <- callbacks <- commands <- scripts

- the deployment runtime (what runs on the edge device and the near-edge box) imports only the method and utils,
  never torch or Lightning;
- ``callbacks/`` holds Lightning callbacks only, and imports only what a callback's job needs (below);
- no script (``train.py``, ``evaluate.py``, the benchmarks, the fault driver) is imported by anything: scripts call
  the library, tests import the library.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from lightning import Callback

from ask_the_expert.utils.fingerprint import imported_modules

PACKAGES = ("ask_the_expert", "datamodules", "lightning_modules", "callbacks")
LAYERS = [
    "utils",
    "method",
    "results",
    "datamodules",
    "models",
    "lightning_modules",
    "tracking",
    "deploy_export",
    "callbacks",
    "commands",
    "scripts",
]
# The torch-free half of deploy: what runs on the edge device and the near-edge box.
RUNTIME = tuple(
    f"ask_the_expert.deploy.{name}"
    for name in (
        "bundle_format", "wire", "runtime", "profile_bundle", "model_card",
        "serve_contract", "serve", "serve_process", "client", "triton_repo",
    )
)  # fmt: skip
# Library modules above the callbacks' own layer that one callback may use, and why. Anything else from results or
# deploy (formats, the runtime, the report) is not a callback's business.
CALLBACK_USES = {
    "callbacks.collaborative_eval": {
        # the evaluation callback hands the report it computed to the results writer
        "ask_the_expert.results.evaluation_outputs",
        "ask_the_expert.results.plots",
    },
    "callbacks.export_bundle": {"ask_the_expert.deploy.export"},  # the export-at-fit-end callback
}


def scripts() -> dict[str, Path]:
    """Files run as programs, by the module name an import of them would use."""
    found = {"train": REPO_ROOT / "train.py", "evaluate": REPO_ROOT / "evaluate.py"}
    found["fault_driver"] = REPO_ROOT / "tests" / "fault_driver.py"
    for path in sorted((REPO_ROOT / "benchmarks").glob("*.py")):
        if '__name__ == "__main__"' in path.read_text(encoding="utf-8"):
            found[f"benchmarks.{path.stem}"] = path
    return found


def library_modules() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")]
    names = {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in files}
    return {name: path for name, path in names.items() if "__pycache__" not in path.parts}


def suite_imports(path: Path) -> set[str]:
    """Suite modules named by any import statement in ``path`` (top level or inside functions)."""
    known = {**library_modules(), **scripts()}
    return {name for name in imported_modules(path) if name in known}


def layer(name: str) -> int:
    if name in scripts():
        return LAYERS.index("scripts")
    parts = name.split(".")
    if parts[0] != "ask_the_expert":
        return LAYERS.index(parts[0])
    if len(parts) == 1:
        return 0  # the package's docstring
    if parts[1] == "deploy":
        return LAYERS.index("method") if name in RUNTIME or len(parts) == 2 else LAYERS.index("deploy_export")
    return LAYERS.index(parts[1])


@pytest.mark.parametrize("name", sorted(library_modules()) + sorted(scripts()))
def test_imports_point_down_the_layers(name: str) -> None:
    path = {**library_modules(), **scripts()}[name]
    upward = sorted(m for m in suite_imports(path) if layer(m) > layer(name) or (m in scripts() and m != name))
    assert not upward, f"{name} (layer {LAYERS[layer(name)]}) imports higher layers or scripts: {upward}"


@pytest.mark.parametrize("name", RUNTIME)
def test_the_deployment_runtime_imports_only_the_method(name: str) -> None:
    imported = suite_imports(library_modules()[name])
    assert all(layer(m) <= LAYERS.index("method") for m in imported), imported
    tree = ast.parse(library_modules()[name].read_text(encoding="utf-8"))
    heavy = {"torch", "lightning", "torchvision", "timm"}
    assert not {n.split(".")[0] for n in imported_modules(library_modules()[name])} & heavy
    assert tree.body  # parsed a real module


@pytest.mark.parametrize("name", sorted(n for n in library_modules() if n.startswith("callbacks.")))
def test_callbacks_hold_lightning_callbacks_only(name: str) -> None:
    module = importlib.import_module(name)
    # public classes: a callback's private helpers (``_Meter``) may live beside it
    classes = [c for n, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == name and n[0] != "_"]
    if name == "callbacks":
        assert not classes
        return
    assert classes and all(issubclass(c, Callback) for c in classes), [c.__name__ for c in classes]
    own_layer = LAYERS.index("callbacks")
    allowed = CALLBACK_USES.get(name, set())
    # results and deploy sit below callbacks, but only the named modules are a callback's business
    foreign = sorted(
        m
        for m in suite_imports(library_modules()[name])
        if m.startswith(("ask_the_expert.results", "ask_the_expert.deploy", "ask_the_expert.commands"))
        and m not in allowed
    )
    assert not foreign, f"{name} imports {foreign}, which is no Lightning callback's business"
    assert all(layer(m) < own_layer for m in allowed)


def test_tests_import_the_library_never_scripts() -> None:
    imported = {m for path in (REPO_ROOT / "tests").glob("*.py") for m in suite_imports(path)}
    assert not imported & set(scripts()), sorted(imported & set(scripts()))


def test_the_graph_is_not_vacuous() -> None:
    modules = library_modules()
    # every layer holds modules, and the layer function sees the ones the rules are about
    assert {LAYERS[layer(n)] for n in [*modules, *scripts()]} == set(LAYERS)
    assert "ask_the_expert.method.policies" in suite_imports(modules["lightning_modules.collaborative"])
    assert "ask_the_expert.commands.evaluate" in suite_imports(scripts()["evaluate"])
    assert "ask_the_expert.results.evaluation_outputs" in suite_imports(modules["callbacks.collaborative_eval"])
    assert "ask_the_expert.deploy.bundle_format" in suite_imports(modules["ask_the_expert.deploy.runtime"])
    assert layer("ask_the_expert.deploy.export") > layer("lightning_modules.collaborative")
    assert layer("ask_the_expert.deploy.runtime") == LAYERS.index("method") < layer("datamodules.cifar100")
    assert layer("callbacks.progress") < layer("ask_the_expert.commands.train") < layer("train")

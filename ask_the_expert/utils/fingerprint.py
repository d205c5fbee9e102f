"""Fingerprints of pipeline steps: what a step's outputs were made from, so that a step is reused only when nothing
it depends on has changed (steps are "fresh by construction").

A fingerprint hashes the step's resolved arguments (canonical JSON), the sha256 of every input file (checkpoints,
data files, configs, profiles) and the code version: the sha256 of the code of the suite's source files that the
step's entry modules import, found by following their ``import`` statements (module level and inside functions)
through the suite's packages, so an edit to the report writer does not retrain the models but an edit to the training
code does. The code is hashed as its syntax tree without docstrings (comments are not in it), so that editing help
text or a comment does not make trained steps stale.
The sources are found where Python imports them from (a checkout, an editable or a regular install), never through a
git checkout.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ask_the_expert.utils.hashing import file_sha256

# The suite's top-level packages: a step's code is the source of these that it imports.
SUITE_PACKAGES = ("ask_the_expert", "lightning_modules", "datamodules", "callbacks")
# Content hashes of large files, by (path, size, mtime): the training file is hashed once per process.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | Path) -> str:
    """file_sha256, memoised on (path, size, mtime) within this process."""
    p = Path(path).resolve()
    stat = p.stat()
    key = (str(p), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = file_sha256(p)
    return _HASH_CACHE[key]


def package_folder(name: str) -> Path | None:
    """The folder a suite package is imported from (without importing it), or None for any other name."""
    if name not in SUITE_PACKAGES:
        return None
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def module_file(name: str) -> Path | None:
    """The source file of a suite module (``a.b`` -> <a>/b.py or <a>/b/__init__.py), else None."""
    top, *rest = name.split(".")
    folder = package_folder(top)
    if folder is None:
        return None
    base = folder.joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    """The dotted package a source file belongs to (its folders that are packages), for relative imports."""
    parts: list[str] = []
    folder = path.resolve().parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _package_of(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                module = ".".join([*parent, module] if module else parent)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return names


def source_closure(roots: Iterable[str]) -> dict[str, Path]:
    """The suite's source files that the modules ``roots`` import, directly or indirectly, by module name."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen.values():
            continue
        seen[name] = path
        parts = name.split(".")
        # Importing a.b.c executes a/__init__.py and a/b/__init__.py first.
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(imported_modules(path))
    return dict(sorted(seen.items()))


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def code_text(path: Path) -> str:
    """The code of a source file as its syntax tree without docstrings (nor comments, which the tree never holds)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, _DOCUMENTED) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_version(roots: Sequence[str]) -> str:
    """sha256 over the module names and code (``code_text``) of ``source_closure(roots)``."""
    digest = hashlib.sha256()
    for name, path in source_closure(roots).items():
        digest.update(name.encode())
        digest.update(code_text(path).encode())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else str(value)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace variation (dataclasses as dicts, paths and the like as strings)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def fingerprint(
    step: str, arguments: Mapping[str, Any], input_files: Mapping[str, str | Path], code_roots: Sequence[str]
) -> dict[str, Any]:
    """The record of what a step is made from, with its ``fingerprint`` (sha256 of the rest)."""
    record = {
        "step": step,
        "arguments": json.loads(canonical_json(arguments)),
        "inputs": {name: cached_sha256(path) for name, path in sorted(input_files.items())},
        "code": code_version(code_roots),
    }
    record["fingerprint"] = hashlib.sha256(canonical_json(record).encode()).hexdigest()
    return record

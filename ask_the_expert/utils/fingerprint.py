"""Fingerprints of pipeline steps: what a step's outputs were made from, so that a step is reused only when nothing
it depends on has changed (DEVELOPERS' "fresh by construction").

A fingerprint hashes the step's resolved arguments (canonical JSON), the sha256 of every input file (checkpoints,
data files, configs, profiles) and the code version: the sha256 of the suite's source files that the step's entry
modules import, found by following their ``import`` statements (module level and inside functions) through the
repository, so an edit to the report writer does not retrain the models but an edit to the training code does.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from core.hashing import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of a module of this repository (``a.b`` -> a/b.py or a/b/__init__.py), else None."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
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


def source_closure(roots: Iterable[str], root: Path = REPO_ROOT) -> list[Path]:
    """The repository source files that the modules ``roots`` import, directly or indirectly (sorted)."""
    seen: set[Path] = set()
    todo = [name for name in roots]
    while todo:
        name = todo.pop()
        path = _module_file(name, root)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        # Importing a.b.c executes a/__init__.py and a/b/__init__.py first.
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(imported_modules(path))
    return sorted(seen)


def code_version(roots: Sequence[str], root: Path = REPO_ROOT) -> str:
    """sha256 over the relative paths and contents of ``source_closure(roots)``."""
    digest = hashlib.sha256()
    for path in source_closure(roots, root):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
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

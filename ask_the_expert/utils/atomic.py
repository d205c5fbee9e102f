"""Atomic outputs: every file or folder is written under a temporary name in the same directory and renamed only
when complete, so a killed job leaves the previous version or nothing, never a half-written file that a rerun
would trust.

Temporary names are unique per process (``.<name>.<pid>.tmp`` / ``.<name>.<pid>.partial``), so two runs never write
into one temporary; the temporaries of a process that no longer runs (killed mid-write) are removed by the next write
of the same output.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | Path, suffix: str) -> Path:
    """The temporary name of ``path`` for this process: ``.<name>.<pid><suffix>`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{suffix}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned(path: str | Path, suffix: str) -> None:
    """Remove the temporaries of ``path`` (``temporary_sibling``) whose process no longer runs."""
    path = Path(path)
    prefix = f".{path.name}."
    if not path.parent.is_dir():
        return
    for leftover in path.parent.iterdir():
        pid = leftover.name[len(prefix) : -len(suffix)] if leftover.name.startswith(prefix) else ""
        if leftover.name.endswith(suffix) and pid.isdigit() and not _running(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield this process's temporary name of ``path``; when the block succeeds it replaces ``path``, when it fails
    it is deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path, ".tmp")
    tmp = temporary_sibling(path, ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, **dump_kwargs: Any) -> Path:
    """``json.dumps(data)`` written atomically (indent 2 unless given)."""
    dump_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(data, **dump_kwargs) + "\n")


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder; when the block succeeds it replaces ``path`` (an existing folder is
    removed first: callers check it is theirs, ask_the_expert.utils.outputs.check_replaceable), when it fails it is
    deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path, ".partial")
    tmp = temporary_sibling(path, ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

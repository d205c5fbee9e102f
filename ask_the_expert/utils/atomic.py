"""Atomic outputs: every file or folder is written under a temporary name in the same directory and renamed only
when complete, so a killed job leaves the previous version or nothing, never a half-written file that a rerun
would trust."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any, **dump_kwargs: Any) -> Path:
    """``json.dumps(data)`` written atomically (indent 2 unless given)."""
    dump_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(data, **dump_kwargs) + "\n")


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder; when the block succeeds it replaces ``path`` (an existing folder is
    removed first), when it fails it is deleted and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Content hashes of files (checkpoints, data files, bundle members): one implementation for the whole suite."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's content, read in 1 MiB chunks (expert checkpoints and ONNX files are ~90 MB)."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's content."""
    return file_digest(path, "sha256")

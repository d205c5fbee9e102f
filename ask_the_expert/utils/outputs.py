"""Where a command writes: checked before any work, replaced only when it is the command's own, one writer at a time.

- ``check_output_path``: an ``--out`` that is a file where a folder is written (or the reverse), or whose folder
  cannot be written, is refused before any work starts.
- ``check_replaceable``: ``--force`` replaces an output folder only when it is recognisably what the command wrote
  before: nothing in it but the files its completion marker lists. A folder holding evaluation inputs, or any file the
  command did not write, is refused and left as it is.
- ``output_lock``: one writer per output. A run holds an exclusive lock on ``.<name>.lock`` beside its output (an
  ``flock`` that the kernel releases when the process ends, so a lock left by a killed run is never in the way) and
  writes its pid, host and command into it; a second run on the same output is refused with that owner.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ask_the_expert.utils.errors import SuiteError

# Environment variables that give a process's rank when a launcher (Lightning's DDP, torchrun, SLURM) started several
# copies of one command; only rank zero writes the outputs, so only rank zero locks them.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK")
# The output a parent process holds for the child processes it started to write parts of it (held_for_children).
HELD_BY_PARENT = "ATE_OUTPUT_HELD_BY_PARENT"


def check_output_path(path: str | Path, option: str, folder: bool) -> None:
    """Refuse an output path that cannot be written as a folder (``folder``) or a file: the wrong kind of thing
    already there, a file in place of one of its parent folders, or a parent folder this process cannot write."""
    path = Path(path)
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        other = "a file" if folder else "a folder"
        raise SuiteError(
            f"{option} {str(path)!r} is {other}, but this command writes a {kind} there. Choose a {kind} path."
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SuiteError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SuiteError(
            f"{option} {str(path)!r} cannot be written: this process may not write into {str(parent)!r} (read-only "
            "or not permitted). Choose another output path."
        )


def listed_files(folder: Path, marker: str) -> set[str] | None:
    """The files ``folder``'s completion marker (a JSON object whose ``files`` is a list or mapping of relative paths)
    lists, with the marker itself; None when there is no readable marker."""
    try:
        files = json.loads((folder / marker).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, (Mapping, list)):
        return None
    return {marker, *map(str, files)}


def foreign_entries(folder: Path, marker: str) -> list[str]:
    """What ``folder`` holds beyond the files its marker lists (links count as foreign), as relative paths."""
    allowed = listed_files(folder, marker) or set()
    foreign = []
    for entry in sorted(folder.rglob("*")):
        name = entry.relative_to(folder).as_posix()
        if entry.is_symlink() or (not entry.is_dir() and name not in allowed):
            foreign.append(name)
        elif entry.is_dir() and not any(a.startswith(f"{name}/") for a in allowed):
            foreign.append(f"{name}/")
    return foreign


def check_replaceable(
    path: str | Path, marker: str, option: str, what: str, error: type[SuiteError] = SuiteError
) -> None:
    """Refuse (``error``) to replace ``path`` unless it is absent, an empty folder, or ``what`` this suite wrote:
    nothing but the files its ``marker`` lists (``foreign_entries``). ``--force`` never deletes what it cannot
    recognise as its own."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise error(
            f"{option} {str(path)!r} is {'a link' if path.is_symlink() else 'a file'}, so it is not {what} and is not "
            f"replaced. Choose another {option}."
        )
    foreign = foreign_entries(path, marker)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise error(
            f"{option} {str(path)!r} holds {shown}, which this command did not write ({what} holds only the files "
            f"its {marker} lists), so it is not {what} and --force will not delete it. Choose another {option}, or "
            "move those files away yourself."
        )


def check_replaceable_file(path: str | Path, option: str, what: str, recognise: Callable[[Path], bool]) -> None:
    """Refuse to overwrite an existing ``path`` that ``recognise`` does not take for a file of ``what``."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and (path.is_symlink() or not path.is_file() or not recognise(path)):
        raise SuiteError(
            f"{option} {str(path)!r} exists and is not {what}, so it is not overwritten. Choose another {option}, or "
            "move that file away yourself."
        )


def launched_rank() -> int:
    """This process's rank among copies of one command started by a launcher (0 when there is none)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.strip().isdigit() and int(value) != 0:
            return int(value)
    return 0


def held_for_children(path: str | Path) -> dict[str, str]:
    """The environment that lets child processes write into ``path`` while this process holds its lock."""
    return {HELD_BY_PARENT: str(Path(path).resolve())}


def lock_file(path: str | Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def output_lock(path: str | Path, option: str = "--out") -> Iterator[None]:
    """Hold the output ``path`` for this run; SuiteError naming the owner when another running process holds it."""
    if launched_rank() != 0 or os.environ.get(HELD_BY_PARENT) == str(Path(path).resolve()):
        yield
        return
    lock = lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise SuiteError(
                f"{option} {str(path)!r} is being written by another run ({_owner_text(owner)}); two runs writing one "
                f"output would mix their files. Wait for that run to end, stop it, or choose another {option}."
            ) from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    owner["command"] = " ".join(sys.argv)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(owner).encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still locked: a waiting run then locks a new file
        os.close(fd)


def _owner_text(text: str) -> str:
    try:
        owner = json.loads(text)
        return f"pid {owner['pid']} on {owner['host']}, since {owner['started']}: {owner['command']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"

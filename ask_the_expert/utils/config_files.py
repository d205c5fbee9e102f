"""The suite's own configs, found from any working directory.

A command line, a preset or an experts config names configs and cost profiles as ``configs/...`` (relative to the
repository). Such a path that does not exist relative to the working directory is looked up in the suite's own
configs: the checkout's ``configs/`` folder, or the copy installed with the package (``ask_the_expert/configs``, the
same files as package data). A path that exists where the user runs the command always wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile

from ask_the_expert.utils.received_files import read_text

PREFIX = "configs"
_PACKAGE = Path(__file__).resolve().parents[1]
# Installed: the package data inside the package; from a checkout (also an editable install): the repository's folder.
_CANDIDATES = (_PACKAGE / PREFIX, _PACKAGE.parent / PREFIX)


def config_dir() -> Path | None:
    """The folder of the suite's own configs, or None when neither the installed nor the checkout copy is there."""
    return next((folder for folder in _CANDIDATES if (folder / "generalist.yaml").is_file()), None)


def find_config(path: str) -> str:
    """``path`` itself when it exists or is not a ``configs/...`` path; else the suite's own file of that name (when
    there is one; otherwise ``path`` unchanged, so that the reader's error names what the user wrote)."""
    parts = Path(path).parts
    # The prefix first: a config given as YAML text is no path (and may be too long to ask the file system about).
    if len(parts) < 2 or parts[0] != PREFIX or Path(path).exists():
        return path
    folder = config_dir()
    own = folder.joinpath(*parts[1:]) if folder is not None else None
    return str(own) if own is not None and own.is_file() else path


class SuiteConfigFile(ActionConfigFile):
    """``-c/--config``: jsonargparse's config-file action (YAML through the safe loader), with ``configs/...`` paths
    found by ``find_config`` and a file that is not text refused with a clear message."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        if isinstance(values, str):
            values = find_config(values)
            if "\n" not in values and Path(values).is_file():  # YAML text (a checkpoint's config) is no path
                read_text(values, "The config file", "Pass a YAML config file to -c/--config.")
        super().__call__(parser, cfg, values, option_string)

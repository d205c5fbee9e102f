"""Quiet, useful output for every command, set up once at one place (``quiet_known_noise``, called by
ask_the_expert.utils.cli.run_command, through which every command runs):

- Lightning's one-time banners (accelerator availability, the LitLogger tip, "already configured with model
  summary callbacks", "Loading train_dataloader to estimate ...") are dropped: they say nothing about this run.
- Known warnings of the installed libraries that ask nothing of the user are ignored (KNOWN_WARNINGS); every other
  warning is one line, ``warning: <message>`` (Python's default adds the file, the line number and the source line,
  which tell a user nothing).
- Output that is not a terminal (a log file, a pipe, SLURM) gets tables ``LOG_COLUMNS`` wide: Rich draws
  ``COLUMNS`` columns there (80 by default, which cuts Lightning's result and model-summary tables), and
  ``log_console`` gives the suite's own tables the same width. Progress becomes plain lines in a file
  (callbacks.progress), Rich stays in a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, TextIO

# The width of a table in a log file: wide enough for the suite's widest table, narrow enough to read.
LOG_COLUMNS = 180
# Lightning's rank-zero info lines that carry no information about the run (prefixes).
LIGHTNING_BANNERS = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",
    "Trainer already configured with model summary callbacks",
    "Loading `train_dataloader` to estimate number of stepping batches.",
)
# Lightning's loggers of those lines (rank_zero_info of Lightning 2.x).
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Warnings of the installed libraries that ask nothing of the user (regular expressions matched at the start).
KNOWN_WARNINGS = (
    # torch 2.14 deprecates a pytree spelling that Lightning 2.6 still uses internally.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # validate/test of a checkpoint that another run's ModelCheckpoint wrote: nothing of it is needed.
    r"The dirpath has changed from .* therefore `best_model_score`",
)


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    return f"warning: {message}\n"


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_BANNERS)


_quiet = False


def is_terminal(stream: TextIO | None = None) -> bool:
    """True if ``stream`` (None: ``sys.stdout``) is an interactive terminal; a closed or missing stream is not."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def quiet_known_noise() -> None:
    """Filter the known noise and size tables for a log file (the module docstring); once per process."""
    global _quiet
    if _quiet:
        return
    _quiet = True
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).addFilter(_DropBanners())
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.formatwarning = _one_line_warning
    if not is_terminal():
        os.environ.setdefault("COLUMNS", str(LOG_COLUMNS))


def log_console(**kwargs: Any) -> Any:
    """A Rich console for tables: the terminal's width in a terminal, ``LOG_COLUMNS`` in a file."""
    from rich.console import Console

    console = Console(**kwargs)
    return console if console.is_terminal else Console(width=LOG_COLUMNS, **kwargs)

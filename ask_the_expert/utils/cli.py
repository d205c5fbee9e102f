"""How the suite's commands end on bad input: the one-paragraph message on stderr, no traceback, exit code 2."""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, auto_cli

from ask_the_expert.utils.config_files import SuiteConfigFile
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.log_output import quiet_known_noise

BAD_INPUT = 2
# Failures to write an output that the user fixes (space, permissions, a path in the way), reported like bad input.
WRITE_FAULTS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EFBIG}
)
# The signals that stop a command the way Ctrl-C does: a cluster's time limit or `kill` sends SIGTERM.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _misconfiguration() -> tuple[type[Exception], ...]:
    """Lightning's exception for an unusable Trainer setting (``--devices 0``, ``--trainer.max_epochs -2``), when
    Lightning is loaded: the torch-free commands never import it."""
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (module.MisconfigurationException,) if module is not None else ()


def _is_bad_input(err: BaseException) -> bool:
    if isinstance(err, (SuiteError, FileNotFoundError, argparse.ArgumentError, *_misconfiguration())):
        return True
    return isinstance(err, OSError) and err.errno in WRITE_FAULTS


def bad_input_behind(err: BaseException | None) -> BaseException | None:
    """The bad input behind ``err`` (a SuiteError, a missing file, an argument the parser refused, a Trainer setting
    Lightning refused, or an output that cannot be written): jsonargparse and Lightning wrap what they call."""
    while err is not None and not _is_bad_input(err):
        err = err.__cause__ or err.__context__
    return err


def describe(err: BaseException) -> str:
    """The one-paragraph message of a bad input; a write fault says which file, why and what to do."""
    if isinstance(err, OSError) and err.errno in WRITE_FAULTS:
        where = f" {err.filename!r}" if err.filename else ""
        return (
            f"Cannot write{where}: {err.strerror} ({errno.errorcode.get(err.errno, err.errno)}). Free space, fix the "
            "permissions or choose another output path, then rerun; no output was left half-written under its "
            "final name."
        )
    return " ".join(str(err).split()) or type(err).__name__


@contextmanager
def stop_on_signals(received: list[int]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise KeyboardInterrupt (recording the signal in ``received``), so that
    both stop a run the same way: Lightning's interrupt handling, no output committed, a non-zero exit. Only the main
    thread can install signal handlers; elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_command(command: Callable[[], Any]) -> int:
    """Run ``command``; return its result if that is an exit code (an int), else 0. On bad input print the
    message and return 2; stopped by SIGINT or SIGTERM, say how to resume and return 128 + the signal number. Any
    other exception is a bug and keeps its traceback. Known noise is filtered first
    (ask_the_expert.utils.log_output)."""
    quiet_known_noise()
    received: list[int] = []
    try:
        with stop_on_signals(received):
            code = command()
    except (KeyboardInterrupt, SystemExit):
        if not received:  # --help, or an exit the command chose
            raise
        name = signal.Signals(received[0]).name
        print(
            f"error: stopped by {name} before the command finished. Rerun the same command to resume: finished "
            "outputs are kept, and nothing half-written is taken for finished.",
            file=sys.stderr,
        )
        return 128 + received[0]
    except Exception as err:
        cause = bad_input_behind(err)
        if cause is None:
            raise
        print(f"error: {describe(cause)}", file=sys.stderr)
        return BAD_INPUT
    return code if isinstance(code, int) else 0


class SuiteParser(ArgumentParser):
    """The suite's command-line parser: jsonargparse with ``-c`` as the short form of ``--config``, and config files
    under ``configs/`` found from any working directory (ask_the_expert.utils.config_files)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        if args == ("--config",):
            args = ("-c", "--config")
        if kwargs.get("action") is ActionConfigFile:
            kwargs["action"] = SuiteConfigFile
        return super().add_argument(*args, **kwargs)


def run_cli(components: Any, argv: Sequence[str] | None, prog: str, **kwargs: Any) -> int:
    """Run functions as a command (jsonargparse ``auto_cli``: ``-c/--config``, ``--print_config``, options from the
    typed keyword parameters and their docstrings); the exit code of ``run_command``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_command(
        lambda: auto_cli(components, args=args, prog=prog, parser_class=SuiteParser, exit_on_error=False, **kwargs)
    )

"""How the suite's commands end on bad input: the one-paragraph message on stderr, no traceback, exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, auto_cli

from ask_the_expert.utils.config_files import SuiteConfigFile
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.log_output import quiet_known_noise

BAD_INPUT = 2


BadInput = SuiteError | FileNotFoundError | argparse.ArgumentError


def bad_input_behind(err: BaseException | None) -> BadInput | None:
    """The bad input behind ``err`` (a SuiteError, a missing file, or an argument the parser refused):
    jsonargparse and Lightning wrap what they call."""
    while err is not None and not isinstance(err, (SuiteError, FileNotFoundError, argparse.ArgumentError)):
        err = err.__cause__ or err.__context__
    return err


def run_command(command: Callable[[], Any]) -> int:
    """Run ``command``; return its result if that is an exit code (an int), else 0. On bad input print the
    message and return 2; any other exception is a bug and keeps its traceback. Known noise is filtered first
    (ask_the_expert.utils.log_output)."""
    quiet_known_noise()
    try:
        code = command()
    except Exception as err:
        cause = bad_input_behind(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
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

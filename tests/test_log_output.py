"""ask_the_expert.utils.log_output: the known noise filtered once, warnings in one line, tables as wide as a log
line allows (in process; the plain progress lines: tests/test_progress.py)."""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings

import pytest
from rich.table import Table

from ask_the_expert.utils import log_output
from ask_the_expert.utils.log_output import LOG_COLUMNS, log_console, quiet_known_noise


@pytest.fixture
def log_file_output(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """stdout is a file, not a terminal; quiet_known_noise not yet run in this 'process'."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(log_output, "_quiet", False)
    monkeypatch.setenv("COLUMNS", "0")  # recorded, so the original value comes back after the test
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    return out


def test_lightning_banners_and_known_deprecations_are_dropped_the_rest_kept(
    log_file_output: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    lightning_log = logging.getLogger(log_output.LIGHTNING_LOGGERS[0])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()
        quiet_known_noise()  # a second call (another run in the process) adds nothing
        with caplog.at_level(logging.INFO, logger=lightning_log.name):
            lightning_log.info("GPU available: False, used: False")
            lightning_log.info("`Trainer.fit` stopped: `max_epochs=2` reached.")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use TreeSpec", DeprecationWarning, stacklevel=1)
        warnings.warn("the data file differs from the published one", UserWarning, stacklevel=1)
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_epochs=2` reached."]
    assert [str(w.message) for w in seen] == ["the data file differs from the published one"]
    assert warnings.formatwarning(UserWarning("x y"), UserWarning, "a.py", 3, "code") == "warning: x y\n"


def test_tables_in_a_log_file_are_log_columns_wide(log_file_output: io.StringIO) -> None:
    quiet_known_noise()
    assert os.environ["COLUMNS"] == str(LOG_COLUMNS)  # Rich's consoles of other libraries (Lightning's)
    table = Table("policy", "k", "measure", "scalar", "value")
    table.add_row("routed", "3", "max_prob", "area_gain_pts " * 6, "1.25")
    console = log_console(file=log_file_output)
    console.print(table)
    lines = log_file_output.getvalue().splitlines()
    assert console.width == LOG_COLUMNS and 80 < max(map(len, lines)) <= LOG_COLUMNS
    assert any("1.25" in line for line in lines)  # not cut at 80 columns

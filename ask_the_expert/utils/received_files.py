"""Reading the text files a user may have received from someone else (configs, cost profiles, partition files,
evaluation summaries): as UTF-8 text only, so that a binary, damaged or missing file is one clear message naming the
file and the fix, never a UnicodeDecodeError traceback. The formats are parsed without running code (YAML with the
safe loader, JSON); checkpoints have their own reader (lightning_modules/checkpoints.py)."""

from __future__ import annotations

from pathlib import Path

from ask_the_expert.utils.errors import SuiteError


def read_text(path: str | Path, what: str, fix: str, error: type[SuiteError] = SuiteError) -> str:
    """The UTF-8 text of ``path``; ``error`` naming ``what`` the file is and ``fix`` when it is missing, unreadable
    or not text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {str(path)!r} is not a text file (undecodable byte at position {exc.start}): it is binary or "
            f"damaged. {fix}"
        ) from None
    except OSError as exc:
        raise error(f"Cannot read {what} {str(path)!r} ({exc.strerror or exc}). {fix}") from None

"""Exceptions raised on bad input; the CLI catches SuiteError and prints its message without a traceback."""

from __future__ import annotations


class SuiteError(ValueError):
    """Base class: the message is one paragraph naming the problem and the fix."""


class PartitionError(SuiteError):
    """Expert subsets do not partition the classes, or a superclass name/index is unknown."""


class ProfileError(SuiteError):
    """A hardware/link cost profile is missing fields or holds invalid values."""


class RoutingError(SuiteError):
    """Bad input to routing, confidence, threshold sweep or operating-point selection."""

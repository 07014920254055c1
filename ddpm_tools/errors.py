"""The one error family of ddpm-tools.

Every error a user can cause (bad arguments, bad files, bad data) is a
:class:`DdpmToolsError` whose message is one sentence saying what is wrong, where,
and what to do. The CLI prints that sentence on stderr and exits with code 2;
library callers catch the class. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class DdpmToolsError(Exception):
    """A user-facing error: one sentence, what is wrong, where, what to do."""


class BadInputError(DdpmToolsError):
    """An input file, data set or argument value is invalid."""


class CheckpointError(BadInputError):
    """A checkpoint set (manifest or weights) is missing, corrupt or inconsistent."""


class MissingExtraError(DdpmToolsError):
    """An optional dependency (an install extra) is needed but not installed."""

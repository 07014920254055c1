"""The progress callback protocol: library code reports, the CLI draws.

Library functions take ``progress: ProgressFn | None`` and call it as
``progress(task, done, total, **info)``; they never print.
"""

from __future__ import annotations

from typing import Protocol


class ProgressFn(Protocol):
    """Called with a task label, units done, units in all, and numeric extras (loss, ...)."""

    def __call__(self, task: str, done: int, total: int, **info: float) -> None: ...


def report(progress: ProgressFn | None, task: str, done: int, total: int, **info: float) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(task, done, total, **info)


def warn(progress: ProgressFn | None, message: str) -> None:
    """Pass one sentence to the progress display's ``warn`` method, if it has one (the
    CLI's shows it on stderr above the bars); library code never prints."""
    say = getattr(progress, "warn", None)
    if say is not None:
        say(message)

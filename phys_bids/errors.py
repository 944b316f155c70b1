"""The error types that cross layers, defined once at the bottom of the house.

:class:`UsageError` is input that cannot be processed at all (the command exits 2 with
its one line); :class:`SubjectError` is one subject that cannot be processed (the
other subjects go on, the command exits 1). Lower layers raise their own narrower
errors (e.g. :class:`phys_bids.bids.layout.DatasetError`); the workflows and the
group level turn them into these.
"""

from __future__ import annotations

__all__ = ["UsageError", "SubjectError"]


class UsageError(Exception):
    """Input that cannot be processed at all: one actionable line, exit status 2."""


class SubjectError(RuntimeError):
    """A subject cannot be processed (one actionable line); other subjects go on."""

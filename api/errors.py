"""The one exception type of eastkd.

Every error a user can cause (bad input, a mismatched store, a missing file) is raised as
:class:`EastkdError`; the CLI turns it into a one-line message and a non-zero exit. Subclasses
also inherit from the matching built-in so that callers may catch either.
"""

from __future__ import annotations


class EastkdError(Exception):
    """An error the user can act on; its message says what went wrong and what to do."""


class StoreNotFoundError(EastkdError, FileNotFoundError):
    """The store path does not exist or holds no eastkd store."""


class StoreMismatchError(EastkdError, ValueError):
    """The store was written for another dataset, teacher or option set."""


class StoreDamageError(EastkdError, OSError):
    """Stored bytes fail their checksum, do not decode, or are missing where rows are done."""


class StoreWriteError(EastkdError, OSError):
    """The store cannot be written: disk full, permission denied or a read-only file system."""

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class RunInterrupted(EastkdError):
    """Ctrl-C stopped a run; the finished work is kept and the same command continues it. The
    CLI exits with status 130, as a shell does for Ctrl-C."""

    exit_code = 130

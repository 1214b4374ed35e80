"""Exceptions a user can act on, and the exit codes the CLI maps them to.

Every message names the file, row or field concerned and says what to do, so the CLI can print it as one
line without a traceback.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of ``poisonguard``; documented in the README."""

    CLEAN = 0  # ran, nothing quarantined
    ROWS_QUARANTINED = 1  # ran, some rows quarantined
    USAGE = 2  # bad command line, missing file, unknown format, bad configuration
    BATCH_REJECTED = 3  # ran, the whole batch was quarantined (structural failure)
    ENVIRONMENT = 74  # the machine refused: a path not writable, read-only, a file in a folder's place, a full disk
    INTERNAL = 70  # a bug in poisonguard (EX_SOFTWARE); rerun with --debug for the traceback


class PoisonguardError(Exception):
    """Base class of errors the user can fix; ``exit_code`` is what the CLI exits with."""

    exit_code: ExitCode = ExitCode.USAGE


class InputError(PoisonguardError):
    """The file or option given cannot be used as asked (missing file, unknown format, absent column)."""


class ConfigError(PoisonguardError):
    """A configuration file or suite is missing, unreadable or inconsistent."""


class UnreadableBatchError(Exception):
    """The batch file exists but cannot be parsed; the batch is quarantined whole, not a usage error.

    ``code`` is the machine-readable reason (``structural:unreadable`` and the like).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StorageError(PoisonguardError):
    """The file system refused a read or write poisonguard needed (permissions, read-only, full, a file
    where a folder must be). Not a bug and not bad input: the message names the path and the cause."""

    exit_code = ExitCode.ENVIRONMENT


_HINTS = {
    errno.ENOSPC: "free space on that file system or choose another --out",
    errno.EDQUOT: "free space within the quota or choose another --out",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.EACCES: "check its permissions or choose another --out",
    errno.EPERM: "check its permissions and attributes (chattr) or choose another --out",
    errno.ENOTDIR: "a file stands where a folder must be; move it or choose another --out",
    errno.EEXIST: "a file stands where a folder must be; move it or choose another --out",
    errno.EISDIR: "a folder stands where a file must be; move it",
}
_SQLITE_PHRASES = ("disk is full", "readonly database", "unable to open database file", "disk i/o error")


def storage_error(error: BaseException) -> StorageError | None:
    """The :class:`StorageError` that ``error`` (or an error it was raised from) amounts to, else ``None``.

    Recognises ``OSError`` by errno (from Python, pyarrow or SQLite's file layer) and SQLite's own words for
    the same causes, so a full disk or an unwritable folder ends a command with one line naming the path
    instead of an "internal error" (the red-team run got exit 70 for all of them).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, StorageError):
            return error
        if isinstance(error, OSError) and error.errno in _HINTS:
            if error.filename is None:  # pyarrow names the path in its message only
                return StorageError(f"{error}; {_HINTS[error.errno]}")
            return StorageError(f"{error.filename}: {error.strerror or error}; {_HINTS[error.errno]}")
        if isinstance(error, sqlite3.OperationalError) and any(p in str(error).lower() for p in _SQLITE_PHRASES):
            return StorageError(f"the replay ledger: {error}; check the output directory's space and permissions")
        error = error.__cause__ or error.__context__
    return None

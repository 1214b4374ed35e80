"""Exceptions a user can act on, and the exit codes the CLI maps them to.

Every message names the file, row or field concerned and says what to do, so the CLI can print it as one
line without a traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of ``poisonguard``; documented in the README."""

    CLEAN = 0  # ran, nothing quarantined
    ROWS_QUARANTINED = 1  # ran, some rows quarantined
    USAGE = 2  # bad command line, missing file, unknown format, bad configuration
    BATCH_REJECTED = 3  # ran, the whole batch was quarantined (structural failure)
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

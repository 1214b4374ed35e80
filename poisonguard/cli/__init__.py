"""``poisonguard`` command line. Exit codes (see README): 0 nothing quarantined, 1 rows quarantined,
3 whole batch rejected (or a replay, or failed verification), 2 usage, input or configuration error,
74 the file system refused (permissions, read-only, full), 70 internal error."""

from __future__ import annotations

from poisonguard.cli import inbox as _inbox  # noqa: F401 - registers inbox and serve
from poisonguard.cli import provenance as _provenance  # noqa: F401 - registers keys, sign and verify
from poisonguard.cli import review as _review  # noqa: F401 - registers review
from poisonguard.cli.scan import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    import signal
    import sys

    # Python ends on SIGTERM without running exit handlers, and Prefect stops its temporary server in one:
    # each terminated scan left a server of about 210 MB running. As an exception, SIGTERM unwinds the
    # command like Ctrl-C does, and the exit status is the conventional 128 + 15.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    app(prog_name="poisonguard")

"""``poisonguard`` command line. Exit codes (see README): 0 nothing quarantined, 1 rows quarantined,
3 whole batch rejected (or a replay, or failed verification), 2 usage, input or configuration error,
70 internal error."""

from __future__ import annotations

from poisonguard.cli import provenance as _provenance  # noqa: F401 - registers keys, sign and verify
from poisonguard.cli import inbox as _inbox  # noqa: F401 - registers inbox and serve
from poisonguard.cli import review as _review  # noqa: F401 - registers review
from poisonguard.cli.scan import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="poisonguard")

"""What every ``poisonguard`` command shares: the consoles and the one way an error ends a command."""

from __future__ import annotations

import logging
import traceback

import typer
from rich.console import Console
from rich.markup import escape

from poisonguard.errors import ExitCode, PoisonguardError, storage_error
from poisonguard.safe_text import format_count, printable

console = Console(stderr=True)  # progress and errors
out = Console()  # results


def fail(error: BaseException, debug: bool) -> None:
    """End the command: one line for an error the user can fix (bad input, a refusing file system), a hint
    to ``--debug`` for a bug."""
    if not isinstance(error, PoisonguardError):
        error = storage_error(error) or error
    if isinstance(error, PoisonguardError):
        console.print(f"[bold red]error:[/] {shown(error)}", highlight=False, soft_wrap=True)
        raise typer.Exit(int(error.exit_code))
    if debug:
        traceback.print_exception(error)
    console.print(
        f"[bold red]internal error:[/] {type(error).__name__}: {shown(error)}. This is a bug in poisonguard; "
        "rerun with --debug for the traceback and report it.",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(int(ExitCode.INTERNAL))


def shown(text: object) -> str:
    """Text from a batch or a person, safe to print: control characters made visible (a cell or column
    name may hold terminal escape sequences), then rich's markup escaped."""
    return escape(printable(str(text)))


def quiet_libraries(verbose: bool) -> None:
    """Great Expectations logs at INFO on its first validation; set its level once it is imported."""
    import great_expectations  # noqa: F401 - imported for its logger configuration

    logging.getLogger("great_expectations").setLevel(logging.INFO if verbose else logging.WARNING)


count = format_count  # the commands' short name for it

"""Prefect's environment for command-line runs: ephemeral mode, quiet console, no telemetry."""

from __future__ import annotations

import os
from pathlib import Path

from poisonguard.errors import ConfigError


def prepare_prefect_environment(verbose: bool = False) -> None:
    """Set Prefect's settings through the environment; call before Prefect is first imported.

    A user's own ``PREFECT_API_URL`` (a real server) or ``PREFECT_HOME`` wins over these defaults.
    Raises :class:`ConfigError` when the Prefect home cannot be created.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    home = Path(os.environ.setdefault("PREFECT_HOME", str(cache / "poisonguard" / "prefect")))
    try:
        # Prefect creates only the last level of its home and, failing that, waits a minute per retry.
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create PREFECT_HOME {home}: {exc.strerror}; set PREFECT_HOME to a writable directory"
        ) from None
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
    # Prefect's console handler would print a traceback for every failed task, user errors included;
    # poisonguard prints its own one-line errors. Runs still send their logs to the Prefect API.
    if not verbose:
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"

"""Prefect's environment for command-line runs: ephemeral mode, quiet console, no telemetry."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
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


# Run by a small watchdog process beside a command: once the command's process is gone (even by kill -9,
# which runs no exit handler), it stops every process still carrying the command's run token in its
# environment: the temporary Prefect server (which inherits the command's environment) and anything else
# the command started. Linux shows environments in /proc; elsewhere the watchdog has nothing to read and
# Prefect's own exit handler is all there is.
_WATCHDOG = """
import os, signal, sys, time
command, marker = int(sys.argv[1]), ("POISONGUARD_RUN_TOKEN=" + sys.argv[2]).encode() + b"\\0"
while os.getppid() == command:
    time.sleep(0.5)
def leftovers():
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if marker in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in leftovers():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    for _ in range(50):
        if not leftovers():
            sys.exit(0)
        time.sleep(0.1)
"""
_watchdog: subprocess.Popen | None = None


def start_temporary_server() -> None:
    """Start Prefect's temporary server for this command now, unless a server is configured, and make sure
    it does not outlive the command.

    Prefect would start the same server (one per process) at the first flow run and stop it at exit; a
    command killed with SIGKILL never gets there, and the red-team run found one orphaned server, about
    210 MB, per killed scan. A watchdog process (see ``_WATCHDOG``), started before the server so that no
    moment of its start-up is unguarded, stops it once the command's process is gone. Call after
    :func:`prepare_prefect_environment`.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    global _watchdog
    token = secrets.token_hex(16)
    _watchdog = subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or SIGTERM sent to the command's process group spares it
        close_fds=True,
    )
    os.environ["POISONGUARD_RUN_TOKEN"] = token  # inherited by the server, not by the watchdog above
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().start()

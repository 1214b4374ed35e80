"""The Prefect flows: a batch scan and the inbox over it. Tasks wrap core functions; flows sequence them.

Core modules log with ``logging.getLogger(__name__)`` and know nothing of Prefect. Importing this package
gives the ``poisonguard`` logger the handler Prefect gives its "extra loggers" (the API log handler), so
that inside a flow or task run their records reach that run's log, where the Prefect UI and a served
deployment show them; outside a run, the handler sends nothing.
"""

from __future__ import annotations

import logging


def _in_a_run(record: logging.LogRecord) -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _send_core_logs_to_runs() -> None:
    from prefect.logging.handlers import APILogHandler

    core = logging.getLogger("poisonguard")
    if any(isinstance(handler, APILogHandler) for handler in core.handlers):
        return
    handler = APILogHandler()
    # Outside a run Prefect's handler would warn for each new logging call site; there is no run to log to.
    handler.addFilter(_in_a_run)
    core.addHandler(handler)
    if core.level == logging.NOTSET:
        core.setLevel(logging.INFO)


_send_core_logs_to_runs()

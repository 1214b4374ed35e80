"""The Prefect task runner a scan asks for: Prefect's default thread pool, or Dask through prefect-dask."""

from __future__ import annotations

import os

from poisonguard.config import ExecutionSettings


def uses_real_server() -> bool:
    """Whether Prefect talks to a running server (``PREFECT_API_URL``) rather than a temporary one."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def task_runner_for(settings: ExecutionSettings):
    """The task runner for ``settings.task_runner``; ``None`` keeps the flow's own default.

    ``dask`` without an address starts a LocalCluster for the run. Its workers are threads when Prefect
    runs ephemeral: each worker process would start a temporary Prefect server of its own (seen here:
    three servers and 2-3x the time of thread workers). With a real server they are processes.
    """
    if settings.task_runner != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers = settings.dask_workers or os.cpu_count() or 1
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": uses_real_server()}
    )

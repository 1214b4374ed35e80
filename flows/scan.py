"""The ``scan_batch`` flow: one batch file from ingest to clean and quarantine Parquet plus a report.

The order of the steps is :func:`poisonguard.pipeline.steps.scan_file`'s; here each step becomes a Prefect
task, so that the run's log, its timings and its retries show in Prefect, and the outcome is published as
artifacts. Only the tasks that touch the file system retry, and only on transient I/O errors. Tasks use
``cache_policy=NONE``: their inputs are data frames, and hashing them for a cache key would cost more than
the work.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, task, unmapped
from prefect.cache_policies import NONE

from poisonguard.config import ScanConfig
from poisonguard.flows.runners import task_runner_for
from poisonguard.pipeline import steps as pipeline
from poisonguard.report.scan_report import ScanSummary, summary_markdown, summary_table
from poisonguard.safe_text import markdown_text
from poisonguard.score.scorers import ChunkScorer

_PERMANENT_IO_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _transient_io_error(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, _PERMANENT_IO_ERRORS)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": _transient_io_error}


def _step(name: str, function, retry: bool = False):
    return task(name=name, cache_policy=NONE, **(IO_RETRIES if retry else {}))(function)


@task(name="score-slice", cache_policy=NONE)
def score_slice(scorer: ChunkScorer, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    return scorer.slice_scores(rows)


def score_slices(scorer: ChunkScorer, slices: list[pd.DataFrame]) -> list[dict[str, np.ndarray]]:
    """Each slice scored as its own task, in parallel on the flow's task runner (Dask)."""
    return [future.result() for future in score_slice.map(unmapped(scorer), slices)]


@task(name="stage", cache_policy=NONE)
def stage(stager, chunk, outcome, frame, scores) -> None:
    # The result table stays in this task: a returned value would be held by the task's state.
    pipeline.stage(stager, chunk, outcome, frame, scores)


@task(name="publish", cache_policy=NONE)
def publish(summary: ScanSummary, html_report: Path | None) -> None:
    """Show the outcome in the Prefect UI: a markdown summary and a reasons table, keyed per dataset."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(summary.dataset)
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=summary_markdown(summary, html_report),
        description=f"poisonguard scan of {markdown_text(summary.dataset)} batch {summary.batch_id}",
    )
    create_table_artifact(
        key=f"{key}-reasons",
        table=summary_table(summary),
        description=f"rows per reason code, {markdown_text(summary.dataset)} batch {summary.batch_id}",
    )


FLOW_STEPS = pipeline.Steps(
    read=_step("read", pipeline.read, retry=True),
    plan=_step("plan", pipeline.plan, retry=True),
    provenance=_step("provenance", pipeline.provenance, retry=True),
    quarantine_untrusted=_step("quarantine-untrusted", pipeline.quarantine_untrusted),
    fit=_step("fit", pipeline.fit),
    validate=_step("validate", pipeline.validate),
    score_slices=score_slices,
    score=_step("score", pipeline.score),
    stage=stage,
    commit=_step("commit", pipeline.commit, retry=True),
    reject=_step("reject", pipeline.reject, retry=True),
    record=_step("record", pipeline.record, retry=True),
    report=_step("report", pipeline.report, retry=True),
    list_for_training=_step("list-for-training", pipeline.list_for_training, retry=True),
    publish=publish,
)


def artifact_key(dataset: str) -> str:
    """The dataset's artifact key: Prefect allows lowercase letters, digits and dashes only. A name those do
    not spell as it is (``loans.``, ``Loans``) gets a digest of itself, so that it never takes the key of
    another dataset (``loans``) and hides that one's latest scan."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-") or "dataset"
    if slug != dataset:
        slug = f"{slug}-{hashlib.sha256(dataset.encode()).hexdigest()[:8]}"
    return f"poisonguard-{slug}"


@flow(name="scan-batch")
def scan_batch(path: str | Path, config: ScanConfig | None = None) -> ScanSummary:
    """Scan one batch file; return its summary. A batch already scanned with the same settings is not redone.

    See :func:`poisonguard.pipeline.steps.scan_file`, whose steps run here as Prefect tasks.
    """
    return pipeline.scan_file(path, config or ScanConfig(), FLOW_STEPS)


def run_scan(path: str | Path, config: ScanConfig) -> ScanSummary:
    """Run :func:`scan_batch` on the task runner ``config`` asks for (see :mod:`poisonguard.flows.runners`)."""
    runner = task_runner_for(config.execution)
    return (scan_batch if runner is None else scan_batch.with_options(task_runner=runner))(path, config)

"""The ``scan_batch`` flow: one batch file from ingest to clean and quarantine Parquet plus a report.

The order of the steps is :func:`poisonguard.pipeline.steps.scan_file`'s; here each step becomes a Prefect
task, so that the run's log, its timings and its retries show in Prefect, and the outcome is published as
artifacts. Only the tasks that touch the file system retry, and only on transient I/O errors. Tasks use
``cache_policy=NONE``: their inputs are data frames, and hashing them for a cache key would cost more than
the work.
"""

from __future__ import annotations

import hashlib
import logging
import re
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, task, unmapped
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed, State

from poisonguard.config import ScanConfig
from poisonguard.flows.runners import task_runner_for
from poisonguard.names import is_url
from poisonguard.pipeline import steps as pipeline
from poisonguard.report.html import report_html_path
from poisonguard.report.scan_report import (
    CLEAN,
    REJECTED,
    REPLAY,
    ROWS_QUARANTINED,
    ScanSummary,
    review_link,
    summary_markdown,
    summary_table,
)
from poisonguard.review.batches import batch_overview
from poisonguard.safe_text import markdown_text
from poisonguard.score.scorers import ChunkScorer

log = logging.getLogger(__name__)
_PERMANENT_IO_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _transient_io_error(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, _PERMANENT_IO_ERRORS)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": _transient_io_error}


def _step(name: str, function, retry: bool = False):
    return task(name=name, cache_policy=NONE, **(IO_RETRIES if retry else {}))(function)


@task(name="score-slice", cache_policy=NONE)
def score_slice(scorer: ChunkScorer, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    # One of many slices scored at once, one per worker thread: a detector that would start one thread per
    # core in each of them is held to one.
    return scorer.slice_scores(rows, threads=1)


def score_slices(scorer: ChunkScorer, slices: list[pd.DataFrame]) -> list[dict[str, np.ndarray]]:
    """Each slice scored as its own task, in parallel on the flow's task runner (Dask)."""
    return [future.result() for future in score_slice.map(unmapped(_on_workers(scorer)), slices)]


_SENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _on_workers(scorer: ChunkScorer):
    """The scorer as the slice tasks receive it. On Dask, it is sent to every worker once per scan and passed
    as a Dask future, which each worker resolves to its copy: passed as itself, it would be pickled into
    every task (about 40 MB with a 200,000-row reference; 240 tasks for 20 million rows). On any other
    runner, the scorer itself."""
    from prefect.context import FlowRunContext

    client = getattr(getattr(FlowRunContext.get(), "task_runner", None), "_client", None)
    if client is None:
        return scorer
    if scorer not in _SENT:
        _SENT[scorer] = client.scatter(scorer, broadcast=True, hash=False)
    return _SENT[scorer]


@task(name="stage", cache_policy=NONE)
def stage(stager, chunk, outcome, frame, scores) -> None:
    # The result table stays in this task: a returned value would be held by the task's state.
    pipeline.stage(stager, chunk, outcome, frame, scores)


@task(name="publish", cache_policy=NONE)
def publish(summary: ScanSummary, html_report: Path | None, review_url: str | None) -> None:
    """Show the outcome in the Prefect UI: a markdown summary and a reasons table, keyed per dataset; links go
    to the review app at ``review_url`` when one serves the output directory."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(summary.dataset)
    description = f"poisonguard scan of {markdown_text(summary.dataset)} batch {summary.batch_id}"
    markdown = summary_markdown(summary, html_report, review_url)
    # The dataset's latest summary is replaced by each scan (a replay too): each batch keeps its own, and the
    # dataset's batches awaiting review are listed in one artifact, so no scan hides pending work.
    for summary_key in (f"{key}-summary", f"{key}-batch-{summary.batch_id}"):
        create_markdown_artifact(key=summary_key, markdown=markdown, description=description)
    create_table_artifact(
        key=f"{key}-reasons",
        table=summary_table(summary),
        description=f"rows per reason code, {markdown_text(summary.dataset)} batch {summary.batch_id}",
    )
    out_dir = Path(summary.report_path).parents[2]  # <out>/reports/<dataset>/<batch_id>.json
    pending = [{"batch_id": b["batch_id"], "scanned_at": b["scanned_at"], "status": b["status"],
                "rows_quarantined": b["rows_quarantined"], "pending": b["pending"],
                "report": review_link(review_url, summary.dataset, b["batch_id"])
                or str(report_html_path(out_dir, summary.dataset, b["batch_id"]))}
               for b in batch_overview(out_dir, summary.dataset) if b["pending"]]
    create_table_artifact(
        key=f"{key}-pending",
        table=pending or [{"batch_id": "", "pending": 0}],
        description=f"{markdown_text(summary.dataset)}: {len(pending)} batch(es) with rows awaiting review",
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


class BatchRefused(Exception):
    """A batch none of whose rows may reach training (rejected whole, or a replay): the data of the scan's
    Failed state, raised by a plain call of :func:`scan_batch`. ``summary``: what the scan decided."""

    def __init__(self, summary: ScanSummary) -> None:
        super().__init__(outcome_line(summary))
        self.summary = summary


# The flow run's final state by the scan's status: a name the Prefect UI shows and automations filter on
# (events ``prefect.flow-run.<name>``). Nothing of a rejected batch or a replay reaches training: Failed.
STATE_NAMES = {CLEAN: "Clean", ROWS_QUARANTINED: "Quarantined", REJECTED: "Rejected", REPLAY: "Replay"}


def outcome_line(summary: ScanSummary) -> str:
    """One line that says what the scan of a batch decided and why: the run log's last line, the state's message."""
    head = f"{summary.dataset} batch {summary.batch_id}: {summary.status.replace('_', ' ')}"
    if summary.already_scanned:
        head += " (already scanned with these settings)"
    if summary.rows_in is not None:
        head += (f"; {summary.rows_in:,} rows in, {summary.rows_clean:,} clean, "
                 f"{summary.rows_quarantined or 0:,} quarantined")
    if summary.reasons:
        head += "; " + ", ".join(f"{code} {count:,}" for code, count in list(summary.reasons.items())[:8])
        if len(summary.reasons) > 8:
            head += f" and {len(summary.reasons) - 8} more reasons"
    return head


def outcome_state(summary: ScanSummary) -> State:
    """The flow run's final state for ``summary``: Completed (named ``Clean`` or ``Quarantined``, holding the
    summary) or Failed (``Rejected``, ``Replay``, holding :class:`BatchRefused`), its message the outcome line."""
    name, message = STATE_NAMES[summary.status], outcome_line(summary)
    if summary.status in (REJECTED, REPLAY):
        return Failed(name=name, message=message, data=BatchRefused(summary))
    return Completed(name=name, message=message, data=summary)


def emit_outcome(summary: ScanSummary) -> None:
    """One Prefect event per scanned batch, ``poisonguard.batch.<status>``, for automations ("notify when a
    batch is rejected", "when more than 5% is quarantined"). The resource is the batch; the payload holds
    the counts, the reasons and the report."""
    from prefect.events import emit_event

    event = STATE_NAMES[summary.status].lower()  # clean, quarantined, rejected, replay
    rows_in = summary.rows_in or 0
    emit_event(
        event=f"poisonguard.batch.{event}",
        resource={"prefect.resource.id": f"poisonguard.batch.{summary.dataset}.{summary.batch_id}",
                  "prefect.resource.name": f"{summary.dataset}/{summary.batch_id}",
                  "poisonguard.dataset": summary.dataset},
        payload={"dataset": summary.dataset, "batch_id": summary.batch_id, "status": summary.status,
                 "already_scanned": summary.already_scanned, "rows_in": summary.rows_in,
                 "rows_clean": summary.rows_clean, "rows_quarantined": summary.rows_quarantined,
                 "quarantined_share": (summary.rows_quarantined or 0) / rows_in if rows_in else 0.0,
                 "reasons": summary.reasons, "report": str(summary.report_path)},
    )


def _label_run(summary: ScanSummary) -> None:
    """Name the running flow run after the batch it scanned and tag it with its dataset and outcome."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        tags = sorted({*run.tags, f"dataset:{summary.dataset}", f"outcome:{summary.status}"})
        client.update_flow_run(flow_run.id, name=f"{summary.dataset}/{summary.batch_id}", tags=tags)


def _run_name() -> str:
    """A flow run's name before the batch is read: the file's name (renamed to dataset/batch when known)."""
    from prefect.runtime import flow_run

    return f"scan {Path(str(flow_run.parameters.get('path', 'batch'))).name}"


@flow(name="scan-batch", flow_run_name=_run_name)
def scan_batch(path: str | Path, config: ScanConfig | None = None) -> State:
    """Scan one batch file. A batch already scanned with the same settings is not redone.

    See :func:`poisonguard.pipeline.steps.scan_file`, whose steps run here as Prefect tasks. The run ends in
    :func:`outcome_state`: called plainly, the flow returns the :class:`ScanSummary` of a batch whose clean
    rows go on, and raises :class:`BatchRefused` (with ``.summary``) for a batch rejected whole or a replay;
    :func:`run_scan` returns the summary either way. The run is renamed ``<dataset>/<batch_id>``, tagged
    ``dataset:<name>`` and ``outcome:<status>``, logs the outcome line and emits ``poisonguard.batch.<status>``.
    """
    summary = pipeline.scan_file(path, config or ScanConfig(), FLOW_STEPS)
    log.info("%s", outcome_line(summary))
    try:
        emit_outcome(summary)
        _label_run(summary)
    except Exception as error:  # noqa: BLE001 - the batch's files are written; telling of it may fail alone
        log.warning("could not announce the outcome to Prefect: %s: %s", type(error).__name__, error)
    return outcome_state(summary)


def run_scan(path: str | Path, config: ScanConfig) -> ScanSummary:
    """Run :func:`scan_batch` on the task runner ``config`` asks for (see :mod:`poisonguard.flows.runners`) and
    return what it decided, whatever the outcome; an error of the scan itself is raised."""
    runner = task_runner_for(config.execution)
    scan = scan_batch if runner is None else scan_batch.with_options(task_runner=runner)
    state = scan(path if is_url(path) else Path(path).resolve(), config, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BatchRefused):
        return outcome.summary
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome

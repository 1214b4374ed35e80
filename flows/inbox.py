"""The ``process-inbox`` flow: take every waiting batch file of an inbox, scan each once, file it away.

Each batch is claimed atomically (see :mod:`poisonguard.ingest.inbox`), scanned by the ``scan_batch`` flow as a
subflow, and moved to ``processed/`` or ``failed/``. Claims left by a run that died are taken over after
``stale_after_seconds``; since a scan writes its outputs under the batch's content id, atomically, scanning
a taken-over batch again rewrites the same files and duplicates nothing. Provenance is required by
default: a scheduled inbox must not take batches nobody signed.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.states import Completed, State

from poisonguard.config import ScanConfig
from poisonguard.config_file import config_from_mapping, load_config
from poisonguard.errors import ConfigError
from poisonguard.flows.scan import IO_RETRIES, run_scan
from poisonguard.ingest.inbox import FAILED, PROCESSED, FolderInbox
from poisonguard.ingest.object_inbox import ObjectInbox
from poisonguard.names import is_url
from poisonguard.provenance.manifest import scan_dataset
from poisonguard.report.html import render_batch_report
from poisonguard.report.scan_report import CLEAN, REPLAY, ROWS_QUARANTINED, read_report, with_filed_place
from poisonguard.write.atomic import atomic_write_json

progress = logging.getLogger("poisonguard.progress")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboxResult:
    name: str
    outcome: str  # processed or failed
    status: str  # the scan's status, or "error"
    batch_id: str | None
    moved_to: str
    detail: str = ""


def open_inbox(location: str, work_dir: Path):
    """The inbox at ``location``: a local folder, or an fsspec URL of object storage (``s3://bucket/inbox``)
    whose claimed files are copied into ``work_dir`` to be scanned. Credentials and endpoints come from the
    store's own configuration (for S3: the ``AWS_*`` environment variables, ``AWS_ENDPOINT_URL``, or
    ``~/.aws``), never from the flow's parameters, which the Prefect UI shows."""
    if is_url(location):
        return ObjectInbox(location, work_dir)
    return FolderInbox(Path(location.removeprefix("file://")))


@task(name="claim-batches", cache_policy=NONE, **IO_RETRIES)
def claim_batches(inbox, min_age_seconds: float, stale_after_seconds: float) -> list:
    """Claims for this run: stale claims of dead runs first, then waiting files, each taken atomically."""
    claims = [c for c in (inbox.reclaim(s) for s in inbox.stale(stale_after_seconds)) if c is not None]
    claims += [c for c in (inbox.claim(w) for w in inbox.waiting(min_age_seconds)) if c is not None]
    progress.info("claimed %d batch file(s) in %s", len(claims), inbox)
    return claims


@task(name="settle-batch", cache_policy=NONE, **IO_RETRIES)
def settle_batch(inbox, taken, outcome: str, tag: str) -> str | None:
    """File the claimed batch away; where it was filed, or ``None`` when another run took the claim over."""
    filed = inbox.settle(taken, outcome, tag)
    if filed is None:
        progress.info("%s was taken over by another run; leaving it to that run", taken.name)
    return filed


@task(name="explain-failure", cache_policy=NONE, **IO_RETRIES)
def explain_failure(inbox, filed: str | None, reason: dict) -> None:
    """Put ``<file>.reason.json`` beside a file filed as failed: what the scan decided (status, reason codes
    with their row counts, report) or the error, and when."""
    if filed is not None:
        filed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        inbox.write_reason(filed, {**reason, "filed_as": filed, "filed_at": filed_at})


@task(name="record-filed-place", cache_policy=NONE, **IO_RETRIES)
def record_filed_place(report_path: Path, filed: str, out_dir: Path, publish_url: str | None) -> None:
    """Make the batch's report name where the file was filed, not the transient claim it was scanned from
    (and its published copy, when the outputs are published)."""
    report = read_report(report_path)
    if report is None:
        return
    report = with_filed_place(report, filed)
    render_batch_report(report, out_dir)
    atomic_write_json(report_path, report)
    if publish_url is not None:
        from poisonguard.write.remote import publish_batch

        publish_batch(out_dir, report, publish_url, reports_only=True)


@flow(name="process-inbox", validate_parameters=False)
def process_inbox(
    inbox: str,
    settings: dict | None = None,
    config_file: str | None = None,
    min_age_seconds: float = 5.0,
    stale_after_seconds: float = 3600.0,
) -> list[InboxResult]:
    """Scan every batch waiting in ``inbox`` once; return what happened to each.

    ``settings`` are :class:`ScanConfig` fields as plain values (so a deployment can carry them as JSON),
    applied over ``config_file``'s ``[scan]`` table; ``require_provenance`` defaults to true here.
    """
    with tempfile.TemporaryDirectory(prefix="poisonguard-inbox-") as work_dir:
        opened = open_inbox(inbox, Path(work_dir))
        if not opened.exists():
            raise ConfigError(f"{inbox}: inbox directory not found")
        base = load_config(Path(config_file)) if config_file else ScanConfig()
        config = config_from_mapping({"require_provenance": True, **(settings or {})}, base=base)
        results = [_process(opened, taken, config) for taken in
                   claim_batches(opened, min_age_seconds, stale_after_seconds)]
    return inbox_state(results)


def _process(inbox, taken, config: ScanConfig) -> InboxResult:
    """Scan one claimed file and file it as processed or failed, with a reason file for a failure."""
    try:
        batch_config = config.with_overrides(dataset=scan_dataset(taken.path, config, file_name=taken.name))
        summary = run_scan(taken.path, batch_config)
    except Exception as error:  # noqa: BLE001 - one bad batch must not stop the others
        filed = settle_batch(inbox, taken, FAILED, "error")
        detail = f"{type(error).__name__}: {error}"
        explain_failure(inbox, filed, {"file": taken.name, "status": "error", "error": detail})
        return InboxResult(taken.name, FAILED, "error", None, inbox.relative(filed), detail)
    if summary.status in (CLEAN, ROWS_QUARANTINED):
        outcome = PROCESSED
    elif summary.status == REPLAY and taken.recovered and not inbox.filed_before(taken):
        # The run that died had already scanned it: its outputs stand, and this is no replay (unless the
        # same bytes were already filed as processed: then it is a genuine replay of a finished delivery).
        outcome = PROCESSED
    else:
        outcome = FAILED
    filed = settle_batch(inbox, taken, outcome, summary.batch_id)
    if filed is not None and summary.status != REPLAY:  # a replay's report is the first delivery's
        record_filed_place(Path(summary.report_path), filed, batch_config.io.out_dir, batch_config.io.publish_url)
    if outcome == FAILED:
        explain_failure(inbox, filed, {"file": taken.name, "status": summary.status, "batch_id": summary.batch_id,
                                       "reasons": summary.reasons, "report": str(summary.report_path)})
    detail = "" if outcome == PROCESSED else ", ".join(summary.reasons)
    return InboxResult(taken.name, outcome, summary.status, summary.batch_id, inbox.relative(filed), detail)


def inbox_state(results: list[InboxResult]) -> State:
    """The inbox run's final state, holding ``results``: Completed, named ``Some files failed`` when any did,
    its message saying how many files were processed and which failed, with why."""
    failed = [r for r in results if r.outcome == FAILED]
    message = f"{len(results) - len(failed)} of {len(results)} file(s) processed"
    if failed:
        message += "; failed: " + "; ".join(f"{r.name} ({r.status}: {r.detail})" if r.detail else f"{r.name} ({r.status})"
                                           for r in failed)
    log.info("%s", message)
    return Completed(name="Some files failed" if failed else "Completed", message=message, data=results)

"""The ``process-inbox`` flow: take every waiting batch file of an inbox, scan each once, file it away.

Each batch is claimed atomically (see :mod:`poisonguard.ingest.inbox`), scanned by the ``scan_batch`` flow as a
subflow, and moved to ``processed/`` or ``failed/``. Claims left by a run that died are taken over after
``stale_after_seconds``; since a scan writes its outputs under the batch's content id, atomically, scanning
a taken-over batch again rewrites the same files and duplicates nothing. Provenance is required by
default: a scheduled inbox must not take batches nobody signed.
"""

from __future__ import annotations

import logging
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
from poisonguard.ingest.inbox import (
    FAILED,
    PROCESSED,
    Claim,
    claim,
    reclaim,
    settle,
    stale_claims,
    waiting_files,
    write_reason,
)
from poisonguard.ingest.read import file_sha256
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


@task(name="claim-batches", cache_policy=NONE, **IO_RETRIES)
def claim_batches(inbox: Path, min_age_seconds: float, stale_after_seconds: float) -> list[Claim]:
    """Claims for this run: stale claims of dead runs first, then waiting files, each taken atomically."""
    claims = [c for c in (reclaim(p) for p in stale_claims(inbox, stale_after_seconds)) if c is not None]
    claims += [c for c in (claim(p) for p in waiting_files(inbox, min_age_seconds)) if c is not None]
    progress.info("claimed %d batch file(s) in %s", len(claims), inbox)
    return claims


@task(name="settle-batch", cache_policy=NONE, **IO_RETRIES)
def settle_batch(taken: Claim, outcome: str, tag: str) -> Path | None:
    """File the claimed batch away; ``None`` when another run took the claim over meanwhile."""
    try:
        return settle(taken, outcome, tag)
    except FileNotFoundError:
        progress.info("%s was taken over by another run; leaving it to that run", taken.name)
        return None


@task(name="explain-failure", cache_policy=NONE, **IO_RETRIES)
def explain_failure(moved: Path | None, reason: dict) -> None:
    """Put ``<file>.reason.json`` beside a file filed as failed: what the scan decided (status, reason codes
    with their row counts, report) or the error, and when."""
    if moved is not None:
        filed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_reason(moved, {**reason, "filed_as": str(moved.resolve()), "filed_at": filed_at})


@task(name="record-filed-place", cache_policy=NONE, **IO_RETRIES)
def record_filed_place(report_path: Path, moved: Path, out_dir: Path) -> None:
    """Make the batch's report name where the file was filed, not the transient claim it was scanned from."""
    report = read_report(report_path)
    if report is None:
        return
    report = with_filed_place(report, moved)
    render_batch_report(report, out_dir)
    atomic_write_json(report_path, report)


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
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise ConfigError(f"{inbox}: inbox directory not found")
    base = load_config(Path(config_file)) if config_file else ScanConfig()
    config = config_from_mapping({"require_provenance": True, **(settings or {})}, base=base)
    results = []
    for taken in claim_batches(inbox, min_age_seconds, stale_after_seconds):
        try:
            batch_config = config.with_overrides(dataset=scan_dataset(taken.path, config, file_name=taken.name))
            summary = run_scan(taken.path, batch_config)
        except Exception as error:  # noqa: BLE001 - one bad batch must not stop the others
            moved = settle_batch(taken, FAILED, "error")
            detail = f"{type(error).__name__}: {error}"
            explain_failure(moved, {"file": taken.name, "status": "error", "error": detail})
            results.append(InboxResult(taken.name, FAILED, "error", None, _filed(moved, inbox), detail))
            continue
        if summary.status in (CLEAN, ROWS_QUARANTINED):
            outcome = PROCESSED
        elif summary.status == REPLAY and taken.recovered and _first_delivery_was_this_claim(inbox, taken):
            # The run that died had already scanned it: its outputs stand, and this is no replay.
            outcome = PROCESSED
        else:
            outcome = FAILED
        moved = settle_batch(taken, outcome, summary.batch_id)
        if moved is not None and summary.status != REPLAY:  # a replay's report is the first delivery's
            record_filed_place(Path(summary.report_path), moved, batch_config.io.out_dir)
        if outcome == FAILED:
            explain_failure(moved, {"file": taken.name, "status": summary.status, "batch_id": summary.batch_id,
                                    "reasons": summary.reasons, "report": str(summary.report_path)})
        detail = "" if outcome == PROCESSED else ", ".join(summary.reasons)
        results.append(InboxResult(taken.name, outcome, summary.status, summary.batch_id, _filed(moved, inbox), detail))
    return inbox_state(results)


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


def _filed(moved: Path | None, inbox: Path) -> str:
    if moved is None:
        return "(taken over by another run)"
    return str(moved.relative_to(inbox))


def _first_delivery_was_this_claim(inbox: Path, taken: Claim) -> bool:
    """A replay found for a taken-over claim is that claim's own earlier scan unless the same bytes were
    already filed as processed (then it is a genuine replay of a finished delivery)."""
    filed = inbox / PROCESSED / taken.name
    return not (filed.exists() and file_sha256(filed) == file_sha256(taken.path))

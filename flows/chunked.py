"""The ``scan-batch-chunked`` flow: a batch larger than memory, read, validated, scored and written in chunks.

The same outputs and report as ``scan-batch`` (see :mod:`poisonguard.streaming` for how each step works
chunk by chunk and what memory it needs). ``run_scan`` picks this flow when ``config.chunk_rows`` is set.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from poisonguard.batch_stats import class_balance_of_counts, feature_drift
from poisonguard.config import ScanConfig
from poisonguard.flows.scan import (
    IO_RETRIES,
    StepTimer,
    check_provenance,
    conclude,
    list_for_training,
    plan,
    publish,
    record,
    reject,
)
from poisonguard.ingest import Batch, describe_batch, snapshot_folder
from poisonguard.ledger import ReplayLock
from poisonguard.manifest import scan_dataset
from poisonguard.outputs import OutputPaths
from poisonguard.plan import ScanPlan
from poisonguard.provenance import ProvenanceOutcome, RowsRead
from poisonguard.report import (
    CLEAN,
    REJECTED,
    REPLAY,
    ROWS_QUARANTINED,
    ScanSummary,
    read_report,
    replay_summary,
)
from poisonguard.review import refuse_rescan_of_reviewed
from poisonguard.streaming import (
    ChunkedOutcome,
    commit_outputs,
    count_rows,
    fit_for_chunks,
    quarantine_all_chunks,
    read_rows,
    require_schema,
    scan_chunks,
)

progress = logging.getLogger("poisonguard.progress")


@task(name="describe-file", cache_policy=NONE, **IO_RETRIES)
def describe_file(path: Path, config: ScanConfig, snapshot_dir: Path) -> Batch:
    """Hash the batch into a private snapshot, which every later pass reads (see ``describe_batch``)."""
    progress.info("hashing %s", path)
    return describe_batch(path, dataset=scan_dataset(path, config), file_format=config.file_format,
                          snapshot_dir=snapshot_dir)


@task(name="provenance", cache_policy=NONE, **IO_RETRIES)
def provenance(batch: Batch, config: ScanConfig, now: datetime,
               replay_lock: ReplayLock) -> tuple[RowsRead, ProvenanceOutcome]:
    """Read the rows once for their count, columns and content digest; check the manifest and replays,
    holding ``replay_lock`` from the check until the outcome is recorded (see :class:`ReplayLock`)."""
    progress.info("reading %s for its provenance facts", batch.source_path)
    rows = read_rows(batch, config.chunk_rows)
    replay_lock.hold(rows.content_sha256)
    return rows, check_provenance(batch, config, now, rows)


@task(name="quarantine-untrusted", cache_policy=NONE, **IO_RETRIES)
def quarantine_untrusted(batch: Batch, codes: list[str], config: ScanConfig, paths: OutputPaths,
                         scanned_at: datetime) -> None:
    progress.info("quarantining every row: %s", "; ".join(codes))
    quarantine_all_chunks(batch, codes, config.chunk_rows, paths, scanned_at)


@task(name="fit-detectors", cache_policy=NONE)
def fit_detectors(batch: Batch, scan_plan: ScanPlan, config: ScanConfig):
    if scan_plan.reference is None:
        progress.info("first pass: sampling %s rows to fit on", f"{config.max_reference_rows:,}")
    return fit_for_chunks(batch, scan_plan.reference, scan_plan.suite, scan_plan.kinds, scan_plan.label_col, config)


@task(name="scan-chunks", cache_policy=NONE, **IO_RETRIES)
def scan_all_chunks(batch: Batch, scan_plan: ScanPlan, fitted, calibration, config: ScanConfig,
                    paths: OutputPaths, scanned_at: datetime) -> ChunkedOutcome:
    progress.info("scanning %s rows at a time", f"{config.chunk_rows:,}")
    return scan_chunks(batch, scan_plan.suite, scan_plan.label_col, fitted, calibration, config.chunk_rows,
                       paths, scanned_at)


@task(name="commit", cache_policy=NONE, **IO_RETRIES)
def commit(found: ChunkedOutcome, paths: OutputPaths) -> None:
    commit_outputs(found, paths)


@flow(name="scan-batch-chunked", validate_parameters=False)
def scan_batch_chunked(path: str | Path, config: ScanConfig) -> ScanSummary:
    """Scan one batch file ``config.chunk_rows`` rows at a time; return its summary."""
    with ReplayLock(config.ledger_path) as replay_lock, snapshot_folder(config.out_dir) as snapshot_dir:
        return _scan_batch_chunked(Path(path), config, replay_lock, snapshot_dir)


def _scan_batch_chunked(path: Path, config: ScanConfig, replay_lock: ReplayLock, snapshot_dir: Path) -> ScanSummary:
    timer = StepTimer()
    lap, timings = timer.lap, timer.timings

    batch = describe_file(path, config, snapshot_dir)
    lap("ingest")
    scan_plan = plan(batch, config)
    require_schema(scan_plan.suite, batch)
    lap("plan")
    paths = OutputPaths.for_batch(config.out_dir, batch.dataset, batch.batch_id)
    scanned_at = datetime.now(timezone.utc)
    checked = None
    if config.trust_store is not None:
        rows_read, checked = provenance(batch, config, scanned_at, replay_lock)
        batch = replace(batch, row_count=rows_read.n_rows)
        lap("provenance")
        if checked.exact_replay:
            # The same bytes were delivered before: their outputs stay as they are and nothing is written.
            progress.info("batch %s is a replay; nothing is written", batch.batch_id)
            record(batch, REPLAY, checked, config, (0, batch.n_rows))
            if (first := read_report(paths.report)) is not None:
                list_for_training(first, config.out_dir)
            summary = replay_summary(batch, checked, paths.report)
            publish(summary, None)
            return summary
    else:
        previous = read_report(paths.report)
        if previous and previous.get("fingerprint") == scan_plan.fingerprint and not config.force:
            progress.info("batch %s was already scanned with these settings", batch.batch_id)
            list_for_training(previous, config.out_dir)  # repairs a listing an interrupted scan left
            return ScanSummary.from_report(previous, paths.report, already_scanned=True)
    refuse_rescan_of_reviewed(config.out_dir, batch.dataset, batch.batch_id)

    figures, detectors, calibration, expectations, structural = {}, {}, {}, [], []
    content = checked.content_sha256 if checked is not None else None
    if checked is not None and not checked.passed:
        # Untrusted: every row goes to quarantine as read, with the failures' codes (schema unchecked).
        failures = checked.failures
        if batch.n_rows is not None:
            quarantine_untrusted(batch, [f["code"] for f in failures], config, paths, scanned_at)
        else:
            reject(batch, failures, paths, scanned_at)
        status, rows_clean, rows_quarantined = REJECTED, 0, batch.n_rows
        reasons = {f["code"]: batch.n_rows or 0 for f in failures}
    else:
        fitted, reference_calibration, _ = fit_detectors(batch, scan_plan, config)
        lap("fit")
        found = scan_all_chunks(batch, scan_plan, fitted, reference_calibration, config, paths, scanned_at)
        lap("score")
        expectations = list(found.expectations.values())
        structural = [{"code": f.code, "message": f.message} for f in found.structural]
        if structural:
            batch = replace(batch, row_count=batch.n_rows if batch.n_rows is not None else count_rows(batch))
            reject(batch, structural, paths, scanned_at)
            status, rows_clean, rows_quarantined = REJECTED, 0, batch.n_rows
            reasons = {f["code"]: batch.n_rows or 0 for f in structural}
        else:
            batch = replace(batch, row_count=found.rows_in)
            commit(found, paths)
            content = content or found.content_sha256
            status = ROWS_QUARANTINED if found.rows_quarantined else CLEAN
            rows_clean, rows_quarantined, reasons = found.rows_clean, found.rows_quarantined, dict(found.reasons)
            calibration = found.calibration
            detectors = {name: {"reason": found.detector_reasons[name], "flagged": count}
                         for name, count in found.flagged.items()}
            figures = found.figures(calibration.get("evidence_threshold"), calibration.get("evidence_axis", "score"))
            sample = found.drift_rows.frame if found.drift_rows is not None else None
            figures["feature_drift"] = (
                feature_drift(sample, scan_plan.reference, scan_plan.kinds) if sample is not None else []
            )
            if scan_plan.label_col is not None:
                figures["class_balance"] = class_balance_of_counts(
                    dict(found.class_counts), scan_plan.reference_class_counts
                )
    lap("write")
    return conclude(
        batch, scan_plan, config, paths, scanned_at, checked, timings, content,
        status=status, rows_clean=rows_clean, rows_quarantined=rows_quarantined, reasons=reasons,
        expectations=expectations, structural_failures=structural, detectors=detectors,
        calibration=calibration, figures=figures,
    )

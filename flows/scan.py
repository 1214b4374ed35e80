"""The ``scan_batch`` flow: one batch file from ingest to clean and quarantine Parquet plus a report.

Each task wraps plain functions from the core package and the detectors; the flow only orders them and
measures their time. Only the tasks that touch the file system retry, and only on transient I/O errors.
Tasks use ``cache_policy=NONE``: their inputs are data frames, and hashing them for a cache key would
cost more than the work.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, task, unmapped
from prefect.cache_policies import NONE

from poisonguard.config import ScanConfig
from poisonguard.expectations.suite import suite_unchecked
from poisonguard.expectations.validate import SchemaOutcome
from poisonguard.flows.runners import task_runner_for
from poisonguard.ingest.read import Batch, describe_batch, read_batch, snapshot_folder
from poisonguard.ingest.source import BatchSource
from poisonguard.memory import release_free_memory
from poisonguard.provenance.checks import ProvenanceOutcome, RowsRead, check_batch_provenance, record_outcome
from poisonguard.provenance.ledger import Ledger, ReplayLock
from poisonguard.provenance.manifest import scan_dataset
from poisonguard.report.html import render_batch_report, render_index
from poisonguard.report.scan_report import (
    CLEAN,
    REJECTED,
    REPLAY,
    ROWS_QUARANTINED,
    ScanSummary,
    build_report,
    read_report,
    replay_summary,
    summary_markdown,
    summary_table,
)
from poisonguard.review.batches import refuse_rescan_of_reviewed
from poisonguard.safe_text import markdown_text
from poisonguard.scan.chunks import (
    ChunkStager,
    ScanFindings,
    fit_mask,
    quarantine_every_row,
    require_schema,
    validate_chunk,
)
from poisonguard.scan.plan import ScanPlan, plan_scan
from poisonguard.score.scorers import ChunkScorer, fit_scorer
from poisonguard.score.types import DetectorScores
from poisonguard.write.atomic import atomic_write_json
from poisonguard.write.committed import list_batch
from poisonguard.write.outputs import OutputPaths, commit_staged, write_rejected

progress = logging.getLogger("poisonguard.progress")
_PERMANENT_IO_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _transient_io_error(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, _PERMANENT_IO_ERRORS)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": _transient_io_error}


@task(name="read", cache_policy=NONE, **IO_RETRIES)
def read(path: Path, config: ScanConfig, snapshot_dir: Path) -> BatchSource:
    """Hash the batch into a private snapshot that every later pass reads, so the digest the manifest is
    checked against and the rows scanned are the same bytes whatever the file's writer does meanwhile;
    without ``chunk_rows``, parse it whole as it is snapshotted."""
    progress.info("reading %s", path)
    take = read_batch if config.io.chunk_rows is None else describe_batch
    batch = take(path, dataset=scan_dataset(path, config), file_format=config.io.file_format, snapshot_dir=snapshot_dir)
    return BatchSource(batch, config.io.chunk_rows)


@task(name="plan", cache_policy=NONE, **IO_RETRIES)
def plan(source: BatchSource, config: ScanConfig) -> ScanPlan:
    progress.info("loading suite and reference")
    scan_plan = plan_scan(source.batch, config)
    require_schema(source, scan_plan.suite)
    return scan_plan


@task(name="provenance", cache_policy=NONE, **IO_RETRIES)
def provenance(source: BatchSource, config: ScanConfig, now: datetime,
               replay_lock: ReplayLock) -> tuple[RowsRead, ProvenanceOutcome]:
    """Read the rows once for their count, columns and content digest; check the manifest and replays,
    holding ``replay_lock`` from the check until the outcome is recorded (see :class:`ReplayLock`)."""
    progress.info("checking provenance against %s", config.provenance.trust_store)
    rows = source.rows_read()
    replay_lock.hold(rows.content_sha256)
    return rows, check_batch_provenance(source.batch, config.provenance, now, rows,
                                        ledger=Ledger(config.ledger_path), rescan=config.force)


@task(name="quarantine-untrusted", cache_policy=NONE)
def quarantine_untrusted(source: BatchSource, failures: list[dict[str, str]], paths: OutputPaths,
                         scanned_at: datetime) -> None:
    """Quarantine the whole batch: every row with the failures' codes, or the raw file if it has no rows."""
    progress.info("quarantining every row: %s", "; ".join(f["code"] for f in failures))
    if source.batch.n_rows is not None:
        quarantine_every_row(source, [f["code"] for f in failures], paths, scanned_at)
    else:
        write_rejected(paths, source.batch, failures)


@task(name="fit", cache_policy=NONE)
def fit(source: BatchSource, scan_plan: ScanPlan, config: ScanConfig) -> ChunkScorer:
    progress.info("fitting %s", ", ".join(config.detection.detectors))
    return fit_scorer(source, scan_plan, config)


@task(name="validate", cache_policy=NONE)
def validate(chunk: pd.DataFrame, scan_plan: ScanPlan) -> SchemaOutcome:
    progress.info("validating %s rows against the schema", f"{len(chunk):,}")
    return validate_chunk(chunk, scan_plan)


@task(name="score-slice", cache_policy=NONE)
def score_slice(scorer: ChunkScorer, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    return scorer.slice_scores(rows)


@task(name="score", cache_policy=NONE)
def score(scorer: ChunkScorer, frame: pd.DataFrame, outcome: SchemaOutcome, parts: list | None) -> DetectorScores:
    progress.info("scoring %s rows", f"{len(frame):,}")
    return scorer.flag(frame, fit_mask(outcome), parts)


@task(name="stage", cache_policy=NONE)
def stage(stager: ChunkStager, chunk: pd.DataFrame, outcome: SchemaOutcome, frame: pd.DataFrame,
          scores: DetectorScores) -> None:
    stager.stage(chunk, outcome, frame, scores)


@task(name="commit", cache_policy=NONE, **IO_RETRIES)
def commit(found: ScanFindings, paths: OutputPaths) -> None:
    progress.info("writing clean and quarantined rows")
    commit_staged(found.staged, paths)


@task(name="reject", cache_policy=NONE, **IO_RETRIES)
def reject(batch: Batch, failures: list[dict[str, str]], paths: OutputPaths) -> None:
    """Keep the raw file of a batch rejected whole for its structure, with the failures."""
    progress.info("rejecting the whole batch: %s", "; ".join(f["code"] for f in failures))
    write_rejected(paths, batch, failures)


@task(name="record", cache_policy=NONE, **IO_RETRIES)
def record(batch: Batch, status: str, checked: ProvenanceOutcome | None, config: ScanConfig, rows: tuple,
           content: str | None = None) -> None:
    """Append the scan's outcome to the replay ledger (``content``: the rows' digest, when known)."""
    record_outcome(Ledger(config.ledger_path), batch, status, checked, *rows, content)


@task(name="report", cache_policy=NONE, **IO_RETRIES)
def report(path: Path, data: dict, out_dir: Path) -> Path:
    """Write the HTML report, then the JSON report (whose presence marks a complete scan), then the index."""
    progress.info("writing the report")
    html = render_batch_report(data, out_dir)
    atomic_write_json(path, data)
    render_index(out_dir, data["dataset"])
    return html


@task(name="list-for-training", cache_policy=NONE, **IO_RETRIES)
def list_for_training(data: dict, out_dir: Path) -> None:
    """The scan's last step: list (or unlist) the batch's clean files in ``clean/<dataset>/_committed.json``."""
    list_batch(out_dir, data)


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


class StepTimer:
    """Seconds each step of a flow took, from the end of the step before it, summed over a step's laps."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, step: str) -> None:
        """End ``step``: record its seconds and hand the memory it freed back to the operating system, so
        that what one step left behind does not add to the next one's peak."""
        now = time.perf_counter()
        self.timings[step] = self.timings.get(step, 0.0) + now - self._clock
        release_free_memory()
        self._clock = time.perf_counter()


def artifact_key(dataset: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-") or "dataset"
    return f"poisonguard-{slug}"


@flow(name="scan-batch")
def scan_batch(path: str | Path, config: ScanConfig | None = None) -> ScanSummary:
    """Scan one batch file; return its summary. A batch already scanned with the same settings is not redone.

    One path for every size: a batch read whole is one chunk; with ``config.io.chunk_rows`` it is read,
    validated, scored and staged that many rows at a time. With the Dask task runner each chunk's rows are
    scored in parallel slices.
    """
    config = config or ScanConfig()
    with ReplayLock(config.ledger_path) as replay_lock, snapshot_folder(config.io.out_dir) as snapshot_dir:
        return _scan_batch(Path(path), config, replay_lock, snapshot_dir)


def _scan_batch(path: Path, config: ScanConfig, replay_lock: ReplayLock, snapshot_dir: Path) -> ScanSummary:
    timer = StepTimer()
    lap, timings = timer.lap, timer.timings

    source = read(path, config, snapshot_dir)
    batch = source.batch
    lap("ingest")
    scan_plan = plan(source, config)
    lap("plan")
    paths = OutputPaths.for_batch(config.io.out_dir, batch.dataset, batch.batch_id)
    scanned_at = datetime.now(timezone.utc)
    checked = None
    if config.provenance.trust_store is not None:
        rows_read, checked = provenance(source, config, scanned_at, replay_lock)
        batch = source.batch = replace(batch, row_count=rows_read.n_rows)
        lap("provenance")
        if checked.exact_replay:
            # The same bytes were delivered before: their outputs stay as they are and nothing is written.
            progress.info("batch %s is a replay; nothing is written", batch.batch_id)
            record(batch, REPLAY, checked, config, (0, batch.n_rows))
            if (first := read_report(paths.report)) is not None:
                list_for_training(first, config.io.out_dir)
            summary = replay_summary(batch, checked, paths.report)
            publish(summary, None)
            return summary
    else:
        previous = read_report(paths.report)
        if previous and previous.get("fingerprint") == scan_plan.fingerprint and not config.force:
            progress.info("batch %s was already scanned with these settings", batch.batch_id)
            list_for_training(previous, config.io.out_dir)  # repairs a listing an interrupted scan left
            return ScanSummary.from_report(previous, paths.report, already_scanned=True)
    refuse_rescan_of_reviewed(config.io.out_dir, batch.dataset, batch.batch_id)

    result = {"figures": {}, "detectors": {}, "calibration": {}, "expectations": [], "structural_failures": []}
    content = checked.content_sha256 if checked is not None else None
    if checked is not None and not checked.passed:
        # Untrusted: every row goes to quarantine as read, with the failures' codes (schema unchecked).
        quarantine_untrusted(source, checked.failures, paths, scanned_at)
        status, failures = REJECTED, checked.failures
    else:
        scorer = fit(source, scan_plan, config)
        lap("fit")
        found = scan_chunks(source, scan_plan, scorer, paths, scanned_at, config, lap, hash_rows=content is None)
        result["expectations"] = list(found.expectations.values())
        failures = result["structural_failures"] = [{"code": f.code, "message": f.message} for f in found.structural]
        if failures:
            batch = replace(batch, row_count=source.count_rows())
            reject(batch, failures, paths)
            status = REJECTED
        else:
            batch = replace(batch, row_count=found.rows_in)
            commit(found, paths)
            content = content or found.content_sha256
            status = ROWS_QUARANTINED if found.rows_quarantined else CLEAN
            result.update(rows_clean=found.rows_clean, rows_quarantined=found.rows_quarantined,
                          reasons=dict(found.reasons), calibration=found.calibration, detectors=found.detectors,
                          figures=found.figures(scan_plan))
    if status == REJECTED:
        result.update(rows_clean=0, rows_quarantined=batch.n_rows,
                      reasons={f["code"]: batch.n_rows or 0 for f in failures})
    lap("write")
    return conclude(batch, scan_plan, config, paths, scanned_at, checked, timings, content, status=status, **result)


def scan_chunks(source: BatchSource, scan_plan: ScanPlan, scorer: ChunkScorer, paths: OutputPaths,
                scanned_at: datetime, config: ScanConfig, lap, hash_rows: bool) -> ScanFindings:
    """Per chunk: validate, score, flag, stage. Stops at the first chunk that rejects the batch.
    ``hash_rows``: digest the rows' content (the provenance check, when one ran, already did)."""
    parallel = config.execution.task_runner == "dask"
    with ChunkStager(source, scan_plan, paths, scanned_at, hash_rows) as stager:
        for chunk in source.chunks():
            outcome = validate(chunk, scan_plan)
            lap("validate")
            frame = stager.scorable(outcome)
            if frame is None:
                break
            parts = None
            if parallel and len(frame):
                parts = [future.result() for future in score_slice.map(unmapped(scorer), scorer.slices(frame))]
            scores = score(scorer, frame, outcome, parts)
            lap("score")
            stage(stager, chunk, outcome, frame, scores)
            lap("write")
            del chunk, outcome, frame, scores, parts
        else:
            return stager.finish()
    return stager.found


def conclude(batch: Batch, scan_plan: ScanPlan, config: ScanConfig, paths: OutputPaths, scanned_at: datetime,
             checked: ProvenanceOutcome | None, timings: dict[str, float], content: str | None = None,
             **result) -> ScanSummary:
    """The end of every scan flow: write the reports, record the outcome in the ledger, publish artifacts.

    ``result`` holds the scan's findings as :func:`build_report` names them; ``content`` the rows' digest
    when the flow already has it.
    """
    result["reasons"] = dict(sorted(result["reasons"].items(), key=lambda item: (-item[1], item[0])))
    data = build_report(
        batch,
        paths,
        config.io.out_dir,
        scanned_at=scanned_at,
        fingerprint=scan_plan.fingerprint,
        settings=config.fingerprint_fields() | {"label_col": scan_plan.label_col},
        suite_origin=scan_plan.suite_origin,
        label_col=scan_plan.label_col,
        unchecked=suite_unchecked(scan_plan.suite),
        provenance=checked.to_dict() if checked else {"status": "not_checked", "required": False},
        timings=timings,
        **result,
    )
    html = report(paths.report, data, config.io.out_dir)
    record(batch, result["status"], checked, config, (result["rows_clean"], result["rows_quarantined"]), content)
    list_for_training(data, config.io.out_dir)
    summary = ScanSummary.from_report(data, paths.report)
    publish(summary, html)
    return summary

def run_scan(path: str | Path, config: ScanConfig) -> ScanSummary:
    """Run :func:`scan_batch` on the task runner ``config`` asks for (see :mod:`poisonguard.flows.runners`)."""
    runner = task_runner_for(config.execution)
    return (scan_batch if runner is None else scan_batch.with_options(task_runner=runner))(path, config)

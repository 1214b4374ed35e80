"""The scan pipeline of one batch file, in order: read, plan, provenance, fit, then per chunk validate, score,
stage; commit or reject; report, ledger, listing for training.

Each step is a plain function taking and returning plain objects; :class:`Steps` names them. The order
lives in :func:`scan_file` alone, and two callers run it: the Prefect flow (:mod:`poisonguard.flows.scan`),
whose steps are the same functions wrapped as tasks (retries, the run's log, artifacts), and the in-process
scan of :func:`poisonguard.scan` with the functions as they are, so a notebook needs no Prefect server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.config import ScanConfig
from poisonguard.expectations.suite import suite_unchecked
from poisonguard.expectations.validate import SchemaOutcome
from poisonguard.ingest.fetch import fetched, localized
from poisonguard.ingest.read import Batch, describe_batch, read_batch, snapshot_folder
from poisonguard.ingest.source import BatchSource
from poisonguard.memory import release_free_memory
from poisonguard.names import is_url
from poisonguard.pipeline.chunks import (
    ChunkStager,
    ScanFindings,
    fit_mask,
    quarantine_every_row,
    require_schema,
    validate_chunk,
)
from poisonguard.pipeline.plan import ScanPlan, plan_scan
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
)
from poisonguard.review.batches import refuse_rescan_of_reviewed
from poisonguard.score.scorers import ChunkScorer, fit_scorer
from poisonguard.score.types import DetectorScores
from poisonguard.write.atomic import atomic_write_json
from poisonguard.write.committed import list_batch
from poisonguard.write.outputs import OutputPaths, commit_staged, write_rejected

progress = logging.getLogger("poisonguard.progress")


def read(path: Path, config: ScanConfig, snapshot_dir: Path, origin: str | None = None) -> BatchSource:
    """Hash the batch into a private snapshot that every later pass reads, so the digest the manifest is
    checked against and the rows scanned are the same bytes whatever the file's writer does meanwhile;
    without ``chunk_rows``, parse it whole as it is snapshotted. ``origin``: the URL a batch on object
    storage was copied from (to ``path``), which the report names."""
    progress.info("reading %s", origin or path)
    take = read_batch if config.io.chunk_rows is None else describe_batch
    batch = take(path, dataset=scan_dataset(path, config), file_format=config.io.file_format, snapshot_dir=snapshot_dir)
    return BatchSource(replace(batch, origin=origin), config.io.chunk_rows)


def plan(source: BatchSource, config: ScanConfig) -> ScanPlan:
    progress.info("loading suite and reference")
    scan_plan = plan_scan(source.batch, config)
    require_schema(source, scan_plan.suite)
    return scan_plan


def provenance(source: BatchSource, config: ScanConfig, now: datetime,
               replay_lock: ReplayLock) -> tuple[RowsRead, ProvenanceOutcome]:
    """Read the rows once for their count, columns and content digest; check the manifest and replays,
    holding ``replay_lock`` from the check until the outcome is recorded (see :class:`ReplayLock`)."""
    progress.info("checking provenance against %s", config.provenance.trust_store)
    rows = source.rows_read()
    replay_lock.hold(rows.content_sha256)
    return rows, check_batch_provenance(source.batch, config.provenance, now, rows,
                                        ledger=Ledger(config.ledger_path), rescan=config.force)


def quarantine_untrusted(source: BatchSource, failures: list[dict[str, str]], paths: OutputPaths,
                         scanned_at: datetime) -> None:
    """Quarantine the whole batch: every row with the failures' codes, or the raw file if it has no rows."""
    progress.info("quarantining every row: %s", "; ".join(f["code"] for f in failures))
    if source.batch.n_rows is not None:
        quarantine_every_row(source, [f["code"] for f in failures], paths, scanned_at)
    else:
        write_rejected(paths, source.batch, failures)


def fit(source: BatchSource, scan_plan: ScanPlan, config: ScanConfig) -> ChunkScorer:
    progress.info("fitting %s", ", ".join(config.detection.detectors))
    return fit_scorer(source, scan_plan, config)


def validate(chunk: pd.DataFrame, scan_plan: ScanPlan) -> SchemaOutcome:
    progress.info("validating %s rows against the schema", f"{len(chunk):,}")
    return validate_chunk(chunk, scan_plan)


def score_slices(scorer: ChunkScorer, slices: list[pd.DataFrame]) -> list[dict[str, np.ndarray]]:
    """Each slice's scores, one after another (the flow maps them over its task runner instead)."""
    return [scorer.slice_scores(rows) for rows in slices]


def score(scorer: ChunkScorer, frame: pd.DataFrame, outcome: SchemaOutcome, parts: list | None) -> DetectorScores:
    progress.info("scoring %s rows", f"{len(frame):,}")
    return scorer.flag(frame, fit_mask(outcome), parts)


def stage(stager: ChunkStager, chunk: pd.DataFrame, outcome: SchemaOutcome, frame: pd.DataFrame,
          scores: DetectorScores) -> pd.DataFrame:
    """Stage the chunk's clean and quarantined rows; return its per-row result table."""
    return stager.stage(chunk, outcome, frame, scores)


def commit(found: ScanFindings, paths: OutputPaths) -> None:
    progress.info("writing clean and quarantined rows")
    commit_staged(found.staged, paths)


def reject(batch: Batch, failures: list[dict[str, str]], paths: OutputPaths) -> None:
    """Keep the raw file of a batch rejected whole for its structure, with the failures."""
    progress.info("rejecting the whole batch: %s", "; ".join(f["code"] for f in failures))
    write_rejected(paths, batch, failures)


def record(batch: Batch, status: str, checked: ProvenanceOutcome | None, config: ScanConfig, rows: tuple,
           content: str | None = None) -> None:
    """Append the scan's outcome to the replay ledger (``content``: the rows' digest, when known)."""
    record_outcome(Ledger(config.ledger_path), batch, status, checked, *rows, content)


def report(path: Path, data: dict, out_dir: Path) -> Path:
    """Write the HTML report, then the JSON report (whose presence marks a complete scan), then the index."""
    progress.info("writing the report")
    html = render_batch_report(data, out_dir)
    atomic_write_json(path, data)
    render_index(out_dir, data["dataset"])
    return html


def list_for_training(data: dict, out_dir: Path, publish_url: str | None = None) -> None:
    """The scan's last step: list (or unlist) the batch's clean files in ``clean/<dataset>/_committed.json``;
    with ``publish_url``, copy the batch's outputs there, the listing last (:mod:`poisonguard.write.remote`)."""
    list_batch(out_dir, data)
    if publish_url is not None:
        from poisonguard.write.remote import publish_batch

        written = publish_batch(out_dir, data, publish_url)
        progress.info("copied %d file(s) to %s", len(written), publish_url)


def publish(summary: ScanSummary, html_report: Path | None, review_url: str | None) -> None:
    """Where the scan's outcome is shown beyond its files: nowhere in process (the flow: Prefect artifacts,
    linking the review app at ``review_url`` when one serves the output directory)."""


@dataclass(frozen=True)
class Steps:
    """The steps :func:`scan_file` calls, by name: the functions above, or the flow's tasks made of them."""

    read: Callable = read
    plan: Callable = plan
    provenance: Callable = provenance
    quarantine_untrusted: Callable = quarantine_untrusted
    fit: Callable = fit
    validate: Callable = validate
    score_slices: Callable = score_slices
    score: Callable = score
    stage: Callable = stage
    commit: Callable = commit
    reject: Callable = reject
    record: Callable = record
    report: Callable = report
    list_for_training: Callable = list_for_training
    publish: Callable = publish


IN_PROCESS = Steps()


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


def scan_file(path: str | Path, config: ScanConfig, steps: Steps = IN_PROCESS) -> ScanSummary:
    """Scan one batch file; return its summary. A batch already scanned with the same settings is not redone.

    One path for every size: a batch read whole is one chunk; with ``config.io.chunk_rows`` it is read,
    validated, scored and staged that many rows at a time; with a parallel task runner each chunk's rows
    are scored in parallel slices (``steps.score_slices``).
    """
    with ReplayLock(config.ledger_path) as replay_lock, snapshot_folder(config.io.out_dir) as snapshot_dir:
        # Inputs on object storage (the batch, its manifest, the reference, a suite, the trust store) are
        # copied into the snapshot folder first: the scan reads only local bytes that cannot change under it.
        origin = str(path) if is_url(path) else None
        config = localized(config, snapshot_dir)
        local = fetched(path, snapshot_dir, with_manifest=True)
        return _scan(local, config, steps, replay_lock, snapshot_dir, origin)


def _scan(path: Path, config: ScanConfig, steps: Steps, replay_lock: ReplayLock, snapshot_dir: Path,
          origin: str | None) -> ScanSummary:
    timer = StepTimer()
    lap, timings = timer.lap, timer.timings

    source = steps.read(path, config, snapshot_dir, origin)
    batch = source.batch
    lap("ingest")
    scan_plan = steps.plan(source, config)
    lap("plan")
    paths = OutputPaths.for_batch(config.io.out_dir, batch.dataset, batch.batch_id)
    scanned_at = datetime.now(timezone.utc)
    checked = None
    if config.provenance.trust_store is not None:
        rows_read, checked = steps.provenance(source, config, scanned_at, replay_lock)
        batch = source.batch = replace(batch, row_count=rows_read.n_rows)
        lap("provenance")
        if checked.exact_replay:
            # The same bytes were delivered before: their outputs stay as they are and nothing is written.
            progress.info("batch %s is a replay; nothing is written", batch.batch_id)
            steps.record(batch, REPLAY, checked, config, (0, batch.n_rows))
            if (first := read_report(paths.report)) is not None:
                steps.list_for_training(first, config.io.out_dir, config.io.publish_url)
            summary = replay_summary(batch, checked, paths.report)
            steps.publish(summary, None, config.io.review_url)
            return summary
    else:
        previous = read_report(paths.report)
        if previous and previous.get("fingerprint") == scan_plan.fingerprint and not config.force:
            progress.info("batch %s was already scanned with these settings", batch.batch_id)
            # Repairs a listing (and its published copy) that an interrupted scan left.
            steps.list_for_training(previous, config.io.out_dir, config.io.publish_url)
            return ScanSummary.from_report(previous, paths.report, already_scanned=True)
    refuse_rescan_of_reviewed(config.io.out_dir, batch.dataset, batch.batch_id)

    result = {"figures": {}, "detectors": {}, "calibration": {}, "expectations": [], "structural_failures": []}
    content = checked.content_sha256 if checked is not None else None
    if checked is not None and not checked.passed:
        # Untrusted: every row goes to quarantine as read, with the failures' codes (schema unchecked).
        steps.quarantine_untrusted(source, checked.failures, paths, scanned_at)
        status, failures = REJECTED, checked.failures
    else:
        scorer = steps.fit(source, scan_plan, config)
        lap("fit")
        found = scan_chunks(source, scan_plan, scorer, paths, scanned_at, config, steps, lap,
                            hash_rows=content is None)
        result["expectations"] = list(found.expectations.values())
        failures = result["structural_failures"] = [{"code": f.code, "message": f.message} for f in found.structural]
        if failures:
            batch = replace(batch, row_count=source.count_rows())
            steps.reject(batch, failures, paths)
            status = REJECTED
        else:
            batch = replace(batch, row_count=found.rows_in)
            steps.commit(found, paths)
            content = content or found.content_sha256
            status = ROWS_QUARANTINED if found.rows_quarantined else CLEAN
            result.update(rows_clean=found.rows_clean, rows_quarantined=found.rows_quarantined,
                          reasons=dict(found.reasons), calibration=found.calibration, detectors=found.detectors,
                          figures=found.figures(scan_plan))
    if status == REJECTED:
        result.update(rows_clean=0, rows_quarantined=batch.n_rows,
                      reasons={f["code"]: batch.n_rows or 0 for f in failures})
    lap("write")
    return conclude(batch, scan_plan, config, paths, scanned_at, checked, timings, steps, content,
                    status=status, **result)


def scan_chunks(source: BatchSource, scan_plan: ScanPlan, scorer: ChunkScorer, paths: OutputPaths,
                scanned_at: datetime, config: ScanConfig, steps: Steps, lap, hash_rows: bool) -> ScanFindings:
    """Per chunk: validate, score, flag, stage. Stops at the first chunk that rejects the batch.
    ``hash_rows``: digest the rows' content (the provenance check, when one ran, already did)."""
    parallel = config.execution.task_runner == "dask"
    pace = ChunkPace(None if source.one_chunk else source.known_rows())
    with ChunkStager(source, scan_plan, paths, scanned_at, hash_rows) as stager:
        for chunk in source.chunks():
            outcome = steps.validate(chunk, scan_plan)
            lap("validate")
            frame = stager.scorable(outcome)
            if frame is None:
                break
            parts = steps.score_slices(scorer, scorer.slices(frame)) if parallel and len(frame) else None
            scores = steps.score(scorer, frame, outcome, parts)
            lap("score")
            steps.stage(stager, chunk, outcome, frame, scores)
            lap("write")
            if not source.one_chunk:
                pace.done(len(chunk))
            del chunk, outcome, frame, scores, parts
        else:
            return stager.finish()
    return stager.found


class ChunkPace:
    """Progress of a batch read in chunks, told after each chunk: rows so far, rows per second and, when the
    batch's size is known (``total``), the share done and the time left at the pace so far."""

    def __init__(self, total: int | None) -> None:
        self.total, self.rows, self.started = total, 0, time.perf_counter()

    def done(self, rows: int) -> None:
        self.rows += rows
        seconds = max(time.perf_counter() - self.started, 1e-9)
        rate = self.rows / seconds
        if self.total:
            left = max(self.total - self.rows, 0) / rate if rate else 0.0
            progress.info("scanned %s of %s rows (%.0f%%), %s rows/s, about %s left", f"{self.rows:,}",
                          f"{self.total:,}", 100 * self.rows / self.total, f"{rate:,.0f}", _duration(left))
        else:
            progress.info("scanned %s rows, %s rows/s", f"{self.rows:,}", f"{rate:,.0f}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def conclude(batch: Batch, scan_plan: ScanPlan, config: ScanConfig, paths: OutputPaths, scanned_at: datetime,
             checked: ProvenanceOutcome | None, timings: dict[str, float], steps: Steps, content: str | None = None,
             **result) -> ScanSummary:
    """The end of every scan: write the reports, record the outcome in the ledger, publish the summary.

    ``result`` holds the scan's findings as :func:`build_report` names them; ``content`` the rows' digest
    when the scan already has it.
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
    if config.io.publish_url is not None:  # where review decisions on the batch are copied too
        data["published_to"] = config.io.publish_url
    html = steps.report(paths.report, data, config.io.out_dir)
    steps.record(batch, result["status"], checked, config, (result["rows_clean"], result["rows_quarantined"]), content)
    steps.list_for_training(data, config.io.out_dir, config.io.publish_url)
    summary = ScanSummary.from_report(data, paths.report)
    steps.publish(summary, html, config.io.review_url)
    return summary

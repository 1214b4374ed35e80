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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from prefect import flow, task, unmapped
from prefect.cache_policies import NONE

from poisonguard import ROW_ID
from poisonguard.batch_stats import class_balance, feature_drift, score_distributions, score_drift
from poisonguard.committed import list_batch
from poisonguard.config import ScanConfig
from poisonguard.decide import build_result_table, reason_counts
from poisonguard.expectations.validate import SchemaOutcome, SchemaValidator, StructuralFailure, validate_batch
from poisonguard.ingest import Batch, read_batch, snapshot_folder
from poisonguard.ledger import Ledger, LedgerEntry, ReplayLock, content_sha256
from poisonguard.manifest import scan_dataset
from poisonguard.memory import release_free_memory
from poisonguard.outputs import OutputPaths, split_rows, write_rejected, write_split, write_whole_quarantine
from poisonguard.plan import ScanPlan, plan_scan
from poisonguard.provenance import ProvenanceOutcome, RowsRead, assess_provenance
from poisonguard.report import (
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
from poisonguard.flows.runners import task_runner_for
from poisonguard.html_report import render_batch_report, render_index
from poisonguard.review import refuse_rescan_of_reviewed
from poisonguard.safe_text import markdown_text
from poisonguard.scoring import (
    DetectorScores,
    FittedReference,
    finish_scores,
    fit_reference,
    has_enough_reference,
    score_chunk,
    score_rows,
)
from poisonguard.store import atomic_write_json
from poisonguard.trust import load_trust_store

progress = logging.getLogger("poisonguard.progress")
_PERMANENT_IO_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _transient_io_error(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, _PERMANENT_IO_ERRORS)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": _transient_io_error}


@task(name="ingest", cache_policy=NONE, **IO_RETRIES)
def ingest(path: Path, config: ScanConfig, snapshot_dir: Path) -> Batch:
    """Read the batch from a private snapshot taken while hashing: the digest the manifest is checked
    against and the rows scanned are the same bytes, whatever the file's writer does meanwhile."""
    progress.info("reading %s", path)
    return read_batch(path, dataset=scan_dataset(path, config), file_format=config.file_format,
                      snapshot_dir=snapshot_dir)


@task(name="plan", cache_policy=NONE, **IO_RETRIES)
def plan(batch: Batch, config: ScanConfig) -> ScanPlan:
    progress.info("loading suite and reference")
    return plan_scan(batch, config)


@task(name="provenance", cache_policy=NONE, **IO_RETRIES)
def provenance(batch: Batch, config: ScanConfig, now: datetime, replay_lock: ReplayLock) -> ProvenanceOutcome | None:
    """Check the batch's manifest and the replay ledger; ``None`` when no trust store is configured.

    ``replay_lock`` is held from here until the outcome is recorded, so a concurrent delivery of the same
    rows waits and then finds this one in the ledger.
    """
    if config.trust_store is None:
        return None
    progress.info("checking provenance against %s", config.trust_store)
    rows = RowsRead.of(batch)
    replay_lock.hold(rows.content_sha256)
    return check_provenance(batch, config, now, rows)


def check_provenance(
    batch: Batch, config: ScanConfig, now: datetime, rows: RowsRead | None = None
) -> ProvenanceOutcome:
    """The batch's manifest and replays against the configured trust store and ledger (``rows``: what a
    pass over a batch read in chunks established; by default the batch's frame says)."""
    return assess_provenance(
        batch,
        batch.dataset,
        load_trust_store(config.trust_store),
        Ledger(config.ledger_path),
        required=config.require_provenance,
        max_age_seconds=config.manifest_max_age_hours * 3600,
        clock_skew_seconds=config.clock_skew_seconds,
        now=now,
        validator=SchemaValidator(),
        rescan_of=batch.batch_id if config.force else None,
        rows=rows,
    )


@task(name="validate", cache_policy=NONE)
def validate(batch: Batch, scan_plan: ScanPlan) -> SchemaOutcome:
    progress.info("validating %s rows against the schema", batch.n_rows)
    if batch.unreadable is not None:
        return SchemaOutcome(None, [StructuralFailure(batch.unreadable.code, str(batch.unreadable))])
    if scan_plan.suite is None:
        return SchemaOutcome(batch.frame)
    return validate_batch(batch.frame, scan_plan.suite, scan_plan.label_col, SchemaValidator())


@task(name="score", cache_policy=NONE)
def score(outcome: SchemaOutcome, scan_plan: ScanPlan, config: ScanConfig) -> DetectorScores:
    progress.info("scoring rows with %s", ", ".join(config.detectors))
    frame = outcome.frame
    failing = np.concatenate([np.empty(0, "int64"), *outcome.row_reasons.values()])
    fit_mask = ~np.isin(frame[ROW_ID].to_numpy(), failing)
    return score_rows(frame, scan_plan.reference, scan_plan.kinds, scan_plan.label_col, config, fit_mask)


@task(name="fit-detectors", cache_policy=NONE)
def fit_detectors(scan_plan: ScanPlan, config: ScanConfig) -> tuple[FittedReference | None, dict[str, str]]:
    progress.info("fitting %s on the reference", ", ".join(config.detectors))
    return fit_reference(scan_plan.reference, scan_plan.kinds, scan_plan.label_col, config)


@task(name="score-chunk", cache_policy=NONE)
def score_rows_chunk(fitted: FittedReference, chunk):
    return score_chunk(fitted, chunk)


@task(name="calibrate", cache_policy=NONE)
def calibrate(fitted: FittedReference, outcome: SchemaOutcome, parts: list, skipped: dict) -> DetectorScores:
    return finish_scores(fitted, outcome.frame, parts, skipped)


def score_in_parallel(outcome: SchemaOutcome, scan_plan: ScanPlan, config: ScanConfig) -> DetectorScores:
    """Fit once on the reference, score row chunks as parallel tasks on the flow's task runner, calibrate.

    Gives the same scores and flags as :func:`score` (each row's score depends on that row alone). Without
    a usable reference the detectors must see the whole batch, and :func:`score` runs instead.
    """
    if len(outcome.frame) == 0 or not has_enough_reference(scan_plan.reference, config):
        return score(outcome, scan_plan, config)
    fitted, skipped = fit_detectors(scan_plan, config)
    if fitted is None:
        return score(outcome, scan_plan, config)
    frame, step = outcome.frame, config.score_chunk_rows
    chunks = [frame.iloc[start : start + step] for start in range(0, len(frame), step)]
    progress.info("scoring %s rows in %s chunks in parallel", len(frame), len(chunks))
    futures = score_rows_chunk.map(unmapped(fitted), chunks)
    return calibrate(fitted, outcome, [future.result() for future in futures], skipped)


@task(name="describe", cache_policy=NONE)
def describe(outcome: SchemaOutcome, scores: DetectorScores, scan_plan: ScanPlan) -> dict:
    """Batch-level figures for the report: score histograms, drift of features, scores and class balance."""
    figures = {
        "distributions": score_distributions(
            scores.evidence,
            scores.flags,
            scores.calibration.get("evidence_threshold"),
            scores.calibration.get("evidence_axis", "score"),
        )
    }
    figures["feature_drift"] = feature_drift(outcome.frame, scan_plan.reference, scan_plan.kinds)
    figures["score_drift"] = score_drift(scores.evidence, scores.calibration.get("evidence_axis", "score"))
    label = scan_plan.label_col
    if label is not None and label in outcome.frame:
        figures["class_balance"] = class_balance(outcome.frame[label], scan_plan.reference_class_counts)
    return figures


@task(name="write", cache_policy=NONE, **IO_RETRIES)
def write(batch: Batch, outcome: SchemaOutcome, scores: DetectorScores, paths: OutputPaths, scanned_at: datetime):
    progress.info("writing clean and quarantined rows")
    result = build_result_table(outcome.frame[ROW_ID].to_numpy(), outcome.row_reasons, scores)
    split = split_rows(outcome.frame, result, batch.batch_id, scanned_at, outcome.raw_values)
    write_split(paths, split, batch)
    detectors = {
        name: {"reason": scores.reasons[name], "flagged": int(result[f"{name}_flag"].sum())} for name in scores.scores
    }
    return split.n_clean, split.quarantined.num_rows, reason_counts(result), detectors


@task(name="reject", cache_policy=NONE, **IO_RETRIES)
def reject(batch: Batch, failures: list[dict[str, str]], paths: OutputPaths, scanned_at: datetime) -> None:
    """Quarantine the whole batch: every row with the failures' codes, or the raw file if it has no rows."""
    progress.info("rejecting the whole batch: %s", "; ".join(f["code"] for f in failures))
    if batch.frame is not None and all(f["code"].startswith("provenance:") for f in failures):
        write_whole_quarantine(paths, batch, [f["code"] for f in failures], scanned_at)
    else:
        write_rejected(paths, batch, failures)


@task(name="record", cache_policy=NONE, **IO_RETRIES)
def record(batch: Batch, status: str, checked: ProvenanceOutcome | None, config: ScanConfig, rows: tuple,
           content: str | None = None) -> None:
    """Append the scan's outcome to the replay ledger (``content``: the rows' digest, when known)."""
    content = content or (checked.content_sha256 if checked else None)
    if content is None and batch.frame is not None:
        content = content_sha256(batch.frame)
    Ledger(config.ledger_path).record(
        LedgerEntry(
            recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            dataset=batch.dataset,
            batch_id=batch.batch_id,
            sha256=batch.sha256,
            content_sha256=content,
            source_id=checked.source_id if checked else None,
            key_id=checked.key_id if checked else None,
            source_path=str(batch.source_path),
            outcome=status,
            rows_in=batch.n_rows,
            rows_clean=rows[0],
            rows_quarantined=rows[1],
        )
    )


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
    """Seconds each step of a flow took, from the end of the step before it."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, step: str) -> None:
        """End ``step``: record its seconds and hand the memory it freed back to the operating system, so
        that what one step left behind does not add to the next one's peak."""
        now = time.perf_counter()
        self.timings[step] = now - self._clock
        release_free_memory()
        self._clock = time.perf_counter()


def artifact_key(dataset: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-") or "dataset"
    return f"poisonguard-{slug}"


@flow(name="scan-batch", validate_parameters=False)
def scan_batch(path: str | Path, config: ScanConfig | None = None) -> ScanSummary:
    """Scan one batch file; return its summary. A batch already scanned with the same settings is not redone."""
    config = config or ScanConfig()
    with ReplayLock(config.ledger_path) as replay_lock, snapshot_folder(config.out_dir) as snapshot_dir:
        return _scan_batch(Path(path), config, replay_lock, snapshot_dir)


def _scan_batch(path: Path, config: ScanConfig, replay_lock: ReplayLock, snapshot_dir: Path) -> ScanSummary:
    timer = StepTimer()
    lap, timings = timer.lap, timer.timings

    batch = ingest(path, config, snapshot_dir)
    lap("ingest")
    scan_plan = plan(batch, config)
    lap("plan")
    paths = OutputPaths.for_batch(config.out_dir, batch.dataset, batch.batch_id)
    scanned_at = datetime.now(timezone.utc)
    checked = provenance(batch, config, scanned_at, replay_lock)
    lap("provenance")
    if checked is None:
        previous = read_report(paths.report)
        if previous and previous.get("fingerprint") == scan_plan.fingerprint and not config.force:
            progress.info("batch %s was already scanned with these settings", batch.batch_id)
            list_for_training(previous, config.out_dir)  # repairs a listing an interrupted scan left
            return ScanSummary.from_report(previous, paths.report, already_scanned=True)
    elif checked.exact_replay:
        # The same bytes were delivered before: their outputs stay as they are and nothing is written.
        progress.info("batch %s is a replay; nothing is written", batch.batch_id)
        record(batch, REPLAY, checked, config, (0, batch.n_rows))
        if (first := read_report(paths.report)) is not None:
            list_for_training(first, config.out_dir)
        summary = replay_summary(batch, checked, paths.report)
        publish(summary, None)
        return summary
    refuse_rescan_of_reviewed(config.out_dir, batch.dataset, batch.batch_id)

    detectors, calibration, expectations, structural, figures = {}, {}, [], [], {}
    # A batch is rejected whole for provenance (its schema is then not worth checking) or for structure.
    whole_batch_failures = checked.failures if checked is not None and not checked.passed else []
    if not whole_batch_failures:
        outcome = validate(batch, scan_plan)
        lap("validate")
        expectations = outcome.expectations
        structural = [{"code": f.code, "message": f.message} for f in outcome.structural]
        whole_batch_failures = structural
    if whole_batch_failures:
        reject(batch, whole_batch_failures, paths, scanned_at)
        lap("write")
        status, rows_clean, rows_quarantined = REJECTED, 0, batch.n_rows
        reasons = {f["code"]: batch.n_rows or 0 for f in whole_batch_failures}
    else:
        scores = score_in_parallel(outcome, scan_plan, config) if config.task_runner == "dask" else score(
            outcome, scan_plan, config
        )
        lap("score")
        figures = describe(outcome, scores, scan_plan)
        rows_clean, rows_quarantined, reasons, detectors = write(batch, outcome, scores, paths, scanned_at)
        lap("write")
        status = ROWS_QUARANTINED if rows_quarantined else CLEAN
        calibration = scores.calibration
    return conclude(
        batch, scan_plan, config, paths, scanned_at, checked, timings,
        status=status, rows_clean=rows_clean, rows_quarantined=rows_quarantined, reasons=reasons,
        expectations=expectations, structural_failures=structural, detectors=detectors,
        calibration=calibration, figures=figures,
    )


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
        config.out_dir,
        scanned_at=scanned_at,
        fingerprint=scan_plan.fingerprint,
        settings=config.fingerprint_fields() | {"label_col": scan_plan.label_col},
        suite_origin=scan_plan.suite_origin,
        label_col=scan_plan.label_col,
        provenance=checked.to_dict() if checked else {"status": "not_checked", "required": False},
        timings=timings,
        **result,
    )
    html = report(paths.report, data, config.out_dir)
    record(batch, result["status"], checked, config, (result["rows_clean"], result["rows_quarantined"]), content)
    list_for_training(data, config.out_dir)
    summary = ScanSummary.from_report(data, paths.report)
    publish(summary, html)
    return summary

def run_scan(path: str | Path, config: ScanConfig) -> ScanSummary:
    """Run :func:`scan_batch` on the task runner ``config`` asks for (see :mod:`poisonguard.flows.runners`),
    or, with ``config.chunk_rows``, the chunked flow of :mod:`poisonguard.flows.chunked`."""
    runner = task_runner_for(config)
    if config.chunk_rows is not None:
        from poisonguard.flows.chunked import scan_batch_chunked

        return scan_batch_chunked(path, config)
    return (scan_batch if runner is None else scan_batch.with_options(task_runner=runner))(path, config)

"""Scanned batches as review sees them: found by id, their quarantined rows, and each row's status.

A row is pending until an audit-log entry releases or confirms it (see :mod:`poisonguard.review.audit`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import REASONS, ROW_ID, STATUS
from poisonguard.errors import ConfigError
from poisonguard.review.audit import RELEASE, UNDO, AuditLog, ReviewError
from poisonguard.write.outputs import OutputPaths, released_glob

PENDING, RELEASED, CONFIRMED = "pending", "released", "confirmed"


@dataclass(frozen=True)
class ReviewedBatch:
    dataset: str
    batch_id: str
    paths: OutputPaths
    report: dict[str, Any]


def find_batch(out_dir: Path, batch: str, dataset: str | None = None) -> ReviewedBatch:
    """The scanned batch whose id is ``batch`` or starts with it (at least 6 characters)."""
    out_dir = Path(out_dir)
    if len(batch) < 6:
        raise ReviewError(f"batch id {batch!r} is too short; give at least 6 characters of it")
    pattern = f"{dataset or '*'}/{batch}*.json"
    matches = sorted((out_dir / "reports").glob(pattern))
    if not matches:
        raise ReviewError(f"no scanned batch {batch!r} under {out_dir / 'reports'}; see `poisonguard review list`")
    if len(matches) > 1:
        found = ", ".join(f"{m.parent.name}/{m.stem}" for m in matches)
        raise ReviewError(f"batch id {batch!r} is ambiguous ({found}); give more of it or --dataset")
    report = json.loads(matches[0].read_text(encoding="utf-8"))
    paths = OutputPaths.for_batch(out_dir, report["dataset"], report["batch_id"])
    return ReviewedBatch(report["dataset"], report["batch_id"], paths, report)


def label_column(report: dict[str, Any]) -> str | None:
    """The label column a scan report names, or ``None``."""
    return (report.get("schema") or {}).get("label_col") or (report.get("settings") or {}).get("label_col")


def quarantined_rows(batch: ReviewedBatch) -> pd.DataFrame:
    """The batch's quarantined rows. A batch rejected whole for its structure keeps its raw file, not rows
    (:func:`rejected_raw`): its rows are then ids and the rejection's reasons only, so that they can be
    confirmed as a batch."""
    if batch.paths.quarantine.exists():
        return pd.read_parquet(batch.paths.quarantine)
    held = (batch.report.get("rows") or {}).get("quarantined") or 0
    reasons = sorted(batch.report.get("reasons") or {})
    if rejected_raw(batch) and held:
        return pd.DataFrame({ROW_ID: np.arange(held, dtype="int64"), REASONS: [reasons] * held})
    return pd.DataFrame({ROW_ID: pd.Series([], dtype="int64")})


def quarantined_columns(batch: ReviewedBatch) -> list[str]:
    """The columns of the batch's quarantined rows, read from the Parquet schema alone."""
    if batch.paths.quarantine.exists():
        import pyarrow.parquet as pq

        return list(pq.read_schema(batch.paths.quarantine).names)
    return list(quarantined_rows(batch).columns)


def rejected_raw(batch: ReviewedBatch) -> bool:
    """Whether the batch was rejected whole and kept as its raw file (its structure could not be read)."""
    return batch.report.get("status") == "rejected" and batch.paths.rejected.exists() \
        and not batch.paths.quarantine.exists()


def row_decisions(entries: list[dict[str, Any]], dataset: str, batch_id: str) -> dict[int, dict[str, Any]]:
    """Row id -> the entry whose decision stands for it, for one batch: the latest release or confirmation,
    unless a later undo took it back (the row is then pending again and absent here)."""
    decided: dict[int, dict[str, Any]] = {}
    for entry in batch_entries(entries, dataset, batch_id):
        for row_id in entry["row_ids"]:
            if entry.get("action") == UNDO:
                decided.pop(int(row_id), None)
            else:
                decided[int(row_id)] = entry
    return decided


def batch_entries(entries: list[dict[str, Any]], dataset: str, batch_id: str) -> list[dict[str, Any]]:
    """The audit entries about one batch, in order."""
    return [e for e in entries if e.get("dataset") == dataset and e.get("batch_id") == batch_id]


def review_counts(out_dir: Path, dataset: str, batch_id: str, quarantined: int,
                  entries: list[dict[str, Any]] | None = None) -> dict[str, int]:
    entries = AuditLog(out_dir).entries() if entries is None else entries
    return decision_counts(row_decisions(entries, dataset, batch_id), quarantined)


def decision_counts(decided: dict[int, dict[str, Any]], quarantined: int) -> dict[str, int]:
    """Pending, released and confirmed rows of a batch with ``quarantined`` rows, from its :func:`row_decisions`."""
    released = sum(1 for e in decided.values() if e["action"] == RELEASE)
    confirmed = len(decided) - released
    return {PENDING: max(quarantined - len(decided), 0), RELEASED: released, CONFIRMED: confirmed}


def with_review_status(rows: pd.DataFrame, decided: dict[int, dict[str, Any]]) -> pd.DataFrame:
    """``rows`` with ``_status`` set from the decisions and who decided, when and why."""
    entries = list(decided.values())
    # Each row's entry by one index lookup, not a dictionary lookup per row: the review app calls this on
    # every page of a 100,000-row quarantine.
    at = pd.Index(np.fromiter(decided, dtype="int64", count=len(decided))).get_indexer(
        rows[ROW_ID].to_numpy(dtype="int64"))
    known = at >= 0

    def column(values: list) -> np.ndarray:
        filled = np.full(len(rows), None, dtype=object)
        filled[known] = np.asarray(values, dtype=object)[at[known]] if values else []
        return filled

    status = column([RELEASED if e["action"] == RELEASE else CONFIRMED for e in entries])
    status[~known] = PENDING
    return rows.assign(**{STATUS: status, "_reviewer": column([e["reviewer"] for e in entries]),
                          "_reviewed_at": column([e["at"] for e in entries]),
                          "_review_reason": column([e["reason"] for e in entries])})


def refuse_rescan_of_reviewed(out_dir: Path, dataset: str, batch_id: str) -> None:
    """Raise :class:`ConfigError` when a batch about to be rewritten by a scan has review decisions.

    A rescan replaces the batch's clean and quarantine files; rows already released would then be in
    the clean area twice, and decisions would point at rows of another scan.
    """
    decided = batch_entries(AuditLog(out_dir).entries(), dataset, batch_id)
    if decided:
        raise ConfigError(
            f"batch {batch_id} of dataset {dataset!r} has {len(decided)} review decision(s) in {out_dir}; "
            "rescanning would replace the files those decisions refer to. Scan into another --out instead"
        )


def batch_overview(out_dir: Path, dataset: str) -> list[dict[str, Any]]:
    """Every scanned batch of ``dataset``, newest first: when, its status, provenance, row counts and review
    state (``pending``, ``released``, ``confirmed`` rows). What the dataset's index page and its Prefect
    artifact list."""
    out_dir = Path(out_dir)
    entries = AuditLog(out_dir).entries()
    batches = []
    for report in batch_reports(out_dir, dataset):
        rows = report["rows"]
        batches.append({
            "scanned_at": report.get("scanned_at"),
            "batch_id": report["batch_id"],
            "status": report["status"],
            "provenance": (report.get("provenance") or {}).get("status", "not_checked"),
            "rows_in": rows["in"],
            "rows_clean": rows["clean"],
            "rows_quarantined": rows["quarantined"],
            **review_counts(out_dir, dataset, report["batch_id"], rows["quarantined"] or 0, entries),
        })
    return batches


def batch_reports(out_dir: Path, dataset: str | None = None) -> list[dict[str, Any]]:
    """Every scan report under ``out_dir`` (of one dataset when given), newest first."""
    reports = []
    for path in (Path(out_dir) / "reports").glob(f"{dataset or '*'}/*.json"):
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # a report being written or damaged is not a batch to list
    return sorted(reports, key=lambda r: r.get("scanned_at", ""), reverse=True)


def released_files(out_dir: Path, dataset: str, batch_id: str) -> dict[Path, set[int]]:
    """The batch's released files now in the clean area, each with the row ids it holds."""
    folder = Path(out_dir) / "clean" / dataset
    return {path: set(pd.read_parquet(path, columns=[ROW_ID])[ROW_ID].astype("int64").tolist())
            for path in sorted(folder.glob(released_glob(batch_id)))}


def released_row_ids(out_dir: Path, dataset: str, batch_id: str) -> np.ndarray:
    """Row ids in the batch's released files (for checks that rows are conserved)."""
    held = [np.fromiter(ids, dtype="int64") for ids in released_files(out_dir, dataset, batch_id).values()]
    return np.concatenate(held) if held else np.empty(0, dtype="int64")

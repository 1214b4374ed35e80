"""Review of quarantined rows: release or confirm them, recorded in a hash-chained audit log.

Nothing written by a scan is ever rewritten here. A release writes the released rows as a new Parquet
file beside the batch's clean file (``clean/<dataset>/<batch_id>.released-<seq>.parquet``); a
confirmation writes nothing but its audit entry. A row's review status is derived from the audit log
alone, so the log is the one record of every decision:

    review/audit.jsonl   one JSON object a line: seq, at, reviewer, action, dataset, batch_id, row_ids,
                         reason, output, prev_hash, hash (sha256 of the canonical JSON of the rest)

Each entry's ``prev_hash`` is the previous entry's ``hash``, so editing or deleting an entry breaks the
chain at that point. Every decision runs under one file lock (``review/audit.lock``): two reviewers
can never both release the same row or interleave their entries.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from poisonguard import QUARANTINED_AT, RAW_VALUES, REASONS, ROW_ID, SCORE_PREFIX, STATUS
from poisonguard.errors import ConfigError, InputError
from poisonguard.outputs import OutputPaths
from poisonguard.reviewers import ReviewerKey, Signer, signature_problem
from poisonguard.safe_text import spreadsheet_text
from poisonguard.store import atomic_path, sync_file, write_parquet
from poisonguard.values import is_list_column

RELEASE = "release"
CONFIRM = "confirm"
PENDING, RELEASED, CONFIRMED = "pending", "released", "confirmed"
GENESIS = "0" * 64
# Review-only columns of the quarantine file; a released row goes back to the clean area without them.
_REVIEW_COLUMNS = (REASONS, QUARANTINED_AT, STATUS, RAW_VALUES)
# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection).


class ReviewError(InputError):
    """A review decision that cannot be made as asked (unknown row, already decided, tampered log)."""


@dataclass(frozen=True)
class AuditCheck:
    entries: int
    head: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """The append-only, hash-chained log of review decisions under ``<out>/review/``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "review" / "audit.jsonl"
        self.lock_path = self.out_dir / "review" / "audit.lock"

    @contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self.lock_path, timeout=timeout):
                yield
        except Timeout:
            raise ReviewError(
                f"{self.lock_path}: another review has held the lock for {timeout:.0f} s; try again"
            ) from None

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in order; raises :class:`ReviewError` on a line that is not JSON."""
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise ReviewError(f"{self.path}: line {number} is not valid JSON (edited or cut short)") from None
        return entries

    def verify(self, reviewers: dict[str, ReviewerKey] | None = None) -> AuditCheck:
        """Recompute the chain and check each release's file and, given ``reviewers`` (see
        :mod:`poisonguard.reviewers`), each entry's signature; report every problem found."""
        try:
            entries = self.entries()
        except ReviewError as exc:
            return AuditCheck(0, GENESIS, [str(exc)])
        problems, previous = [], GENESIS
        for position, entry in enumerate(entries, start=1):
            where = f"entry {position} (seq {entry.get('seq')})"
            if entry.get("seq") != position:
                problems.append(f"{where}: expected seq {position}; an entry was deleted or reordered")
            if entry.get("prev_hash") != previous:
                problems.append(f"{where}: prev_hash does not match the entry before; the chain is broken")
            if entry.get("hash") != entry_hash(entry):
                problems.append(f"{where}: its hash does not match its content; the entry was edited")
            if reviewers is not None and (problem := signature_problem(entry, reviewers)) is not None:
                problems.append(f"{where}: {problem}")
            previous = entry.get("hash", "")
            if entry.get("action") == RELEASE:
                problems += self._check_release_file(entry, where)
        problems += self._orphan_release_files(entries)
        return AuditCheck(len(entries), previous, problems)

    def _check_release_file(self, entry: dict[str, Any], where: str) -> list[str]:
        target = self.out_dir / str(entry.get("output"))
        if not target.exists():
            return [f"{where}: released file {target} is missing"]
        return []

    def _orphan_release_files(self, entries: list[dict[str, Any]]) -> list[str]:
        logged = {str(e.get("output")) for e in entries if e.get("action") == RELEASE}
        problems = []
        for path in sorted((self.out_dir / "clean").glob("*/*.released-*.parquet")):
            if str(path.relative_to(self.out_dir)) not in logged:
                problems.append(f"{path}: a released file with no audit entry; its rows are not released")
        return problems

    def append(self, fields: dict[str, Any], signer: Signer | None = None) -> dict[str, Any]:
        """Chain ``fields`` onto the log, signed by ``signer`` when given, and write the entry durably. Call
        under :meth:`locked`."""
        entries = self.entries()
        entry = {
            "seq": len(entries) + 1,
            **fields,
            "prev_hash": entries[-1]["hash"] if entries else GENESIS,
        }
        if signer is not None:
            entry |= {"reviewer": signer.reviewer, "key_id": signer.key_id}
        entry["hash"] = entry_hash(entry)
        if signer is not None:
            entry["signature"] = signer.sign(entry["hash"])
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return entry


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's canonical JSON without its hash and signature (the signature signs the hash)."""
    content = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


# --- batches and row statuses ------------------------------------------------------------------------


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


def quarantined_rows(batch: ReviewedBatch) -> pd.DataFrame:
    if not batch.paths.quarantine.exists():
        return pd.DataFrame({ROW_ID: pd.Series([], dtype="int64")})
    return pd.read_parquet(batch.paths.quarantine)


def row_decisions(entries: list[dict[str, Any]], dataset: str, batch_id: str) -> dict[int, dict[str, Any]]:
    """Row id -> the entry that decided it, for one batch."""
    decided = {}
    for entry in entries:
        if entry.get("dataset") == dataset and entry.get("batch_id") == batch_id:
            for row_id in entry["row_ids"]:
                decided[int(row_id)] = entry
    return decided


def review_counts(out_dir: Path, dataset: str, batch_id: str, quarantined: int,
                  entries: list[dict[str, Any]] | None = None) -> dict[str, int]:
    entries = AuditLog(out_dir).entries() if entries is None else entries
    decided = row_decisions(entries, dataset, batch_id)
    released = sum(1 for e in decided.values() if e["action"] == RELEASE)
    confirmed = len(decided) - released
    return {PENDING: max(quarantined - len(decided), 0), RELEASED: released, CONFIRMED: confirmed}


def with_review_status(rows: pd.DataFrame, decided: dict[int, dict[str, Any]]) -> pd.DataFrame:
    """``rows`` with ``_status`` set from the decisions and who decided, when and why."""
    rows = rows.copy()
    entries = [decided.get(int(i)) for i in rows[ROW_ID]]
    rows[STATUS] = [PENDING if e is None else RELEASED if e["action"] == RELEASE else CONFIRMED for e in entries]
    rows["_reviewer"] = [e["reviewer"] if e else None for e in entries]
    rows["_reviewed_at"] = [e["at"] if e else None for e in entries]
    rows["_review_reason"] = [e["reason"] if e else None for e in entries]
    return rows


def refuse_rescan_of_reviewed(out_dir: Path, dataset: str, batch_id: str) -> None:
    """Raise :class:`ConfigError` when a batch about to be rewritten by a scan has review decisions.

    A rescan replaces the batch's clean and quarantine files; rows already released would then be in
    the clean area twice, and decisions would point at rows of another scan.
    """
    decided = row_decisions(AuditLog(out_dir).entries(), dataset, batch_id)
    if decided:
        raise ConfigError(
            f"batch {batch_id} of dataset {dataset!r} has {len(decided)} reviewed row(s) in {out_dir}; "
            "rescanning would replace the files those decisions refer to. Scan into another --out instead"
        )


# --- decisions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    action: str
    batch: ReviewedBatch
    row_ids: list[int]
    entry: dict[str, Any]
    output: Path | None


def decide(
    out_dir: Path,
    batch: str,
    action: str,
    *,
    row_ids: list[int] | None,
    reason: str,
    reviewer: str | None = None,
    dataset: str | None = None,
    signer: Signer | None = None,
    reviewers: dict[str, ReviewerKey] | None = None,
) -> Decision:
    """Release or confirm ``row_ids`` (all pending rows when ``None``) of a quarantined batch.

    Refuses, naming the rows, ids that are not quarantined in the batch and rows already released or
    confirmed. A release writes its rows to a new clean-area Parquet file that becomes visible only
    once its audit entry is written. Raises :class:`ReviewError`.
    """
    if action not in (RELEASE, CONFIRM):
        raise ValueError(f"unknown review action {action!r}")
    if not reason.strip():
        raise ReviewError("give a --reason for the decision; it goes into the audit log")
    if signer is not None and reviewer is not None and reviewer != signer.reviewer:
        raise ReviewError(f"--reviewer {reviewer!r} does not match the key's reviewer {signer.reviewer!r}")
    log = AuditLog(out_dir)
    with log.locked():
        check = log.verify(reviewers)
        if not check.ok:
            raise ReviewError(
                f"{log.path} fails verification, so no decision is added to it: {check.problems[0]} "
                "(see `poisonguard review audit --verify`)"
            )
        found = find_batch(out_dir, batch, dataset)
        rows = quarantined_rows(found)
        entries = log.entries()
        decided = row_decisions(entries, found.dataset, found.batch_id)
        chosen = _choose_rows(found, rows, decided, row_ids, action)
        fields = {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reviewer": signer.reviewer if signer is not None else reviewer or _os_user(),
            "action": action,
            "dataset": found.dataset,
            "batch_id": found.batch_id,
            "row_ids": chosen,
            "reason": reason.strip(),
            "output": None,
        }
        if action == CONFIRM:
            return Decision(action, found, chosen, log.append(fields, signer), None)
        seq = len(entries) + 1
        target = found.paths.clean.with_name(f"{found.batch_id}.released-{seq:06d}.parquet")
        fields["output"] = str(target.relative_to(Path(out_dir)))
        released = _as_clean_rows(rows[rows[ROW_ID].isin(chosen)])
        metadata = {"poisonguard.batch_id": found.batch_id, "poisonguard.audit_seq": str(seq)}
        # The file is staged under a temporary name and renamed only after its audit entry is durable:
        # a crash before the entry leaves nothing visible, so no row can be both pending and in clean/.
        # The file is flushed before the entry is appended, so a full disk fails the decision before it
        # is logged, never after.
        with atomic_path(target) as staged:
            write_parquet(staged, released, metadata)
            sync_file(staged)
            entry = log.append(fields, signer)
        return Decision(action, found, chosen, entry, target)


def _choose_rows(batch: ReviewedBatch, rows: pd.DataFrame, decided: dict[int, dict[str, Any]],
                 row_ids: list[int] | None, action: str) -> list[int]:
    quarantined = set(rows[ROW_ID].astype("int64").tolist())
    if row_ids is None:
        chosen = sorted(quarantined - set(decided))
        if not chosen:
            raise ReviewError(f"batch {batch.batch_id} has no pending quarantined rows to {action}")
        return chosen
    requested = sorted(set(int(i) for i in row_ids))
    unknown = [i for i in requested if i not in quarantined]
    if unknown:
        raise ReviewError(
            f"row(s) {_ids(unknown)} of batch {batch.batch_id} are not quarantined "
            f"({len(quarantined):,} rows are; see `poisonguard review show {batch.batch_id}`)"
        )
    for i in requested:
        if i in decided:
            entry = decided[i]
            done = "released" if entry["action"] == RELEASE else "confirmed as poison"
            raise ReviewError(
                f"row {i} of batch {batch.batch_id} was already {done} by {entry['reviewer']} at {entry['at']} "
                f"(audit seq {entry['seq']}); a row is decided once"
            )
    return requested


def _as_clean_rows(rows: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in rows.columns if c in _REVIEW_COLUMNS or c.startswith(SCORE_PREFIX)]
    return rows.drop(columns=drop).reset_index(drop=True)


def _ids(ids: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


# --- export -------------------------------------------------------------------------------------------


def export_csv(rows: pd.DataFrame, path: Path) -> Path:
    """Write ``rows`` as CSV for a spreadsheet: formulas escaped in cells and column names, lists joined,
    atomically."""
    exported = rows.copy()
    for column in exported.columns:
        series = exported[column]
        if column == REASONS:
            series = series.map(lambda codes: ";".join(codes) if codes is not None else "")
        elif is_list_column(series):  # an embedding: JSON arrays keep every value at full precision
            series = series.map(_json_list)
        if series.dtype == object or pd.api.types.is_string_dtype(series):
            exported[column] = series.map(spreadsheet_text)
    exported.columns = [spreadsheet_text(str(column)) for column in exported.columns]
    with atomic_path(path) as staged:
        exported.to_csv(staged, index=False)
    return Path(path)


def _json_list(cell: Any) -> Any:
    if isinstance(cell, (list, tuple, np.ndarray)):
        return json.dumps(np.asarray(cell).tolist())
    return cell


def batch_reports(out_dir: Path, dataset: str | None = None) -> list[dict[str, Any]]:
    """Every scan report under ``out_dir`` (of one dataset when given), newest first."""
    reports = []
    for path in (Path(out_dir) / "reports").glob(f"{dataset or '*'}/*.json"):
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # a report being written or damaged is not a batch to list
    return sorted(reports, key=lambda r: r.get("scanned_at", ""), reverse=True)


def released_row_ids(out_dir: Path, dataset: str, batch_id: str) -> np.ndarray:
    """Row ids in the batch's released files (for checks that rows are conserved)."""
    files = sorted((Path(out_dir) / "clean" / dataset).glob(f"{batch_id}.released-*.parquet"))
    if not files:
        return np.empty(0, dtype="int64")
    return np.concatenate([pd.read_parquet(f, columns=[ROW_ID])[ROW_ID].to_numpy() for f in files])

"""Review decisions: release, confirm or undo quarantined rows of a batch, each recorded in the audit log.

Nothing written by a scan is ever rewritten here. A release writes the released rows as a new Parquet
file beside the batch's clean file (``clean/<dataset>/<batch_id>.released-<seq>.parquet``); a
confirmation writes nothing but its audit entry; an undo takes rows back to pending by a new entry. After
each decision the batch's status file (``quarantine/<dataset>/_review/<batch_id>.parquet``) is rewritten
from the log.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from poisonguard import DETECTOR_COLUMN_PREFIXES, EXPLANATION, QUARANTINED_AT, RAW_VALUES, REASONS, ROW_ID, STATUS
from poisonguard.errors import storage_error
from poisonguard.review.audit import CONFIRM, RELEASE, UNDO, AuditLog, ReviewError, withdrawn_path
from poisonguard.review.batches import (
    ReviewedBatch,
    find_batch,
    label_column,
    quarantined_rows,
    rejected_raw,
    released_files,
    row_decisions,
    with_review_status,
)
from poisonguard.review.filters import RowFilter
from poisonguard.review.reviewers import ReviewerKey, Signer
from poisonguard.write.atomic import atomic_path, atomic_write_parquet, sync_file, write_parquet
from poisonguard.write.outputs import released_name

# Review-only columns of the quarantine file; a released row goes back to the clean area without them.
_REVIEW_COLUMNS = (REASONS, EXPLANATION, QUARANTINED_AT, STATUS, RAW_VALUES)


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
    where: RowFilter | None = None,
) -> Decision:
    """Release, confirm or undo quarantined rows of a batch, recorded as one audit entry.

    The rows: ``row_ids``, or those matching ``where`` (:mod:`poisonguard.review.filters`), or, with
    neither, every pending row. A release or confirmation takes pending rows and refuses, naming them,
    ids that are not quarantined in the batch or already decided; an undo takes decided rows back to
    pending and supersedes their decisions (the entry names them: nothing in the log is rewritten).

    A release writes its rows to a new clean-area Parquet file that becomes visible only once its audit
    entry is written. An undo of released rows moves the files that hold them out of the clean area (to
    ``review/withdrawn/``) and writes the rows they still release as a new file. Raises
    :class:`ReviewError`.
    """
    if action not in (RELEASE, CONFIRM, UNDO):
        raise ValueError(f"unknown review action {action!r}")
    if not reason.strip():
        raise ReviewError("give a --reason for the decision; it goes into the audit log")
    if signer is not None and reviewer is not None and reviewer != signer.reviewer:
        raise ReviewError(f"--reviewer {reviewer!r} does not match the key's reviewer {signer.reviewer!r}")
    if row_ids is not None and where is not None:
        raise ReviewError("give row ids or a filter, not both")
    log = AuditLog(out_dir)
    with log.locked():
        entries = log.entries()
        if entries and entries[-1].get("action") == UNDO:
            complete_undo(out_dir, entries[-1])  # finish an undo that a crash interrupted
        check = log.verify(reviewers)
        if not check.ok:
            raise ReviewError(
                f"{log.path} fails verification, so no decision is added to it: {check.problems[0]} "
                "(see `poisonguard review audit --verify`)"
            )
        found = find_batch(out_dir, batch, dataset)
        if action == RELEASE and rejected_raw(found):
            raise ReviewError(
                f"batch {found.batch_id} was rejected for its structure and kept as its raw file "
                f"({found.paths.rejected}); there are no rows to release. Fix the file and scan it again, or "
                "confirm the batch as rejected"
            )
        rows = quarantined_rows(found)
        decided = row_decisions(entries, found.dataset, found.batch_id)
        if where is not None:
            chosen = _matching_rows(found, rows, decided, where, action)
        else:
            chosen = _choose_rows(found, rows, decided, row_ids, action)
        fields = {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reviewer": signer.reviewer if signer is not None else reviewer or os_user(),
            "action": action,
            "dataset": found.dataset,
            "batch_id": found.batch_id,
            "row_ids": chosen,
            "reason": reason.strip(),
            "output": None,
        }
        if where is not None:
            fields["where"] = where.describe()
        seq = len(entries) + 1
        if action == CONFIRM:
            decision = Decision(action, found, chosen, log.append(fields, signer), None)
        elif action == UNDO:
            decision = _undo(out_dir, log, found, fields, decided, seq, signer)
        else:
            target = _released_path(found, seq)
            fields["output"] = str(target.relative_to(Path(out_dir)))
            released = _as_clean_rows(rows[rows[ROW_ID].isin(chosen)])
            # The file is staged under a temporary name and renamed only after its audit entry is durable:
            # a crash before the entry leaves nothing visible, so no row can be both pending and in clean/.
            # The file is flushed before the entry is appended, so a full disk fails the decision before it
            # is logged, never after.
            with atomic_path(target) as staged:
                write_parquet(staged, released, _metadata(found.batch_id, seq))
                sync_file(staged)
                entry = log.append(fields, signer)
            decision = Decision(action, found, chosen, entry, target)
        write_status(found, rows, [*entries, decision.entry])  # the log as it now stands, without rereading it
        return decision


def refresh_outputs(out_dir: Path, decision: Decision) -> list[str]:
    """Bring what readers see up to date after ``decision``: the dataset's listing of clean files, the
    batch's HTML report and the dataset's index, and their copies where the scan published the batch
    (``published_to`` in its report). The decision is committed already (its audit entry and files are
    durable), so a failure here is returned as a warning, never raised: the batch's next decision or scan
    redoes all of it."""
    from poisonguard.report.html import render_batch_report, render_index
    from poisonguard.write.committed import list_batch

    warnings = []
    try:
        list_batch(out_dir, decision.batch.report)
    except Exception as error:  # noqa: BLE001
        warnings.append(f"the decision is recorded, but clean/{decision.batch.dataset}/_committed.json does not "
                        f"list the released rows yet ({storage_error(error) or error}); the batch's next "
                        "decision or scan lists them")
    try:
        render_batch_report(decision.batch.report, out_dir)
        render_index(out_dir, decision.batch.dataset)
    except Exception as error:  # noqa: BLE001
        warnings.append(f"the decision is recorded, but the HTML report was not refreshed: "
                        f"{storage_error(error) or error}")
    if (url := decision.batch.report.get("published_to")) and not warnings:
        from poisonguard.write.remote import publish_batch

        try:
            publish_batch(out_dir, decision.batch.report, url)
        except Exception as error:  # noqa: BLE001
            warnings.append(f"the decision is recorded, but its files were not copied to {url} ({error}); the "
                            "batch's next decision or scan copies them")
    return warnings


def _undo(out_dir: Path, log: AuditLog, found: ReviewedBatch, fields: dict[str, Any],
          decided: dict[int, dict[str, Any]], seq: int, signer: Signer | None) -> Decision:
    """Append the undo entry, then carry it out (:func:`complete_undo`), which a later decision redoes if a
    crash stops it half way: the entry is the commitment."""
    chosen = fields["row_ids"]
    fields["supersedes"] = sorted({int(decided[i]["seq"]) for i in chosen})
    undone_releases = {i for i in chosen if decided[i]["action"] == RELEASE}
    holding = {path: ids for path, ids in released_files(out_dir, found.dataset, found.batch_id).items()
               if undone_releases & ids}
    fields["withdrawn"] = [str(path.relative_to(Path(out_dir))) for path in holding]
    if set().union(*holding.values()) - undone_releases:  # rows those files release that stay released
        fields["output"] = str(_released_path(found, seq).relative_to(Path(out_dir)))
    entry = log.append(fields, signer)
    complete_undo(out_dir, entry)
    return Decision(UNDO, found, chosen, entry, Path(out_dir) / entry["output"] if entry["output"] else None)


def complete_undo(out_dir: Path, entry: dict[str, Any]) -> None:
    """Carry out an undo entry's file changes; safe to run again. The files it withdraws are moved out of
    the clean area first and the rows they still release written after, so an interruption can leave those
    rows missing from clean/ for a moment (and the next decision finishes the job), never an undone row
    left in it."""
    out_dir = Path(out_dir)
    moved = []
    for name in entry.get("withdrawn") or []:
        source, kept = out_dir / name, withdrawn_path(out_dir, name)
        if source.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, kept)
        moved.append(kept)
    if entry.get("output") and not (out_dir / entry["output"]).exists():
        undone = set(int(i) for i in entry["row_ids"])
        kept_rows = pd.concat([pd.read_parquet(path) for path in moved], ignore_index=True)
        kept_rows = kept_rows[~kept_rows[ROW_ID].isin(undone)].sort_values(ROW_ID).reset_index(drop=True)
        atomic_write_parquet(out_dir / entry["output"], kept_rows, _metadata(str(entry["batch_id"]), entry["seq"]))


def write_status(batch: ReviewedBatch, rows: pd.DataFrame, entries: list[dict[str, Any]]) -> Path:
    """Write the batch's status file (:func:`status_path`): each quarantined row's review status, who
    decided it, when, why and in which audit entry. It is derived from the audit log and rewritten after
    every decision, so a pandas or DuckDB reader sees released and confirmed rows without the log."""
    decided = row_decisions(entries, batch.dataset, batch.batch_id)
    status = with_review_status(rows[[ROW_ID]], decided)
    status["_audit_seq"] = rows[ROW_ID].astype("int64").map({i: e["seq"] for i, e in decided.items()}).astype("Int64")
    path = status_path(batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_parquet(path, status)


def status_path(batch: ReviewedBatch) -> Path:
    """``quarantine/<dataset>/_review/<batch_id>.parquet``: beside the quarantine files, in a folder whose
    leading ``_`` keeps it out of a dataset read of ``quarantine/<dataset>/`` (pyarrow and Spark skip it)."""
    return batch.paths.quarantine.parent / "_review" / f"{batch.batch_id}.parquet"


def _released_path(batch: ReviewedBatch, seq: int) -> Path:
    return batch.paths.clean.with_name(released_name(batch.batch_id, seq))


def _metadata(batch_id: str, seq: int) -> dict[str, str]:
    """A released file's key/value metadata: its batch and the audit entry that wrote it."""
    return {"poisonguard.batch_id": batch_id, "poisonguard.audit_seq": str(seq)}


def _matching_rows(batch: ReviewedBatch, rows: pd.DataFrame, decided: dict[int, dict[str, Any]],
                   where: RowFilter, action: str) -> list[int]:
    """The rows ``where`` keeps that ``action`` can take: pending rows for a release or confirmation,
    decided ones for an undo."""
    rows = with_review_status(rows, decided)
    matched = rows[where.mask(rows, label_column(batch.report))]
    wanted = matched[STATUS] != "pending" if action == UNDO else matched[STATUS] == "pending"
    chosen = sorted(matched.loc[wanted, ROW_ID].astype("int64").tolist())
    if not chosen:
        state = "decided" if action == UNDO else "pending"
        raise ReviewError(f"no {state} row of batch {batch.batch_id} matches {where.describe() or 'the filter'} "
                          f"({len(matched):,} quarantined rows match it)")
    return chosen


def _choose_rows(batch: ReviewedBatch, rows: pd.DataFrame, decided: dict[int, dict[str, Any]],
                 row_ids: list[int] | None, action: str) -> list[int]:
    quarantined = set(rows[ROW_ID].astype("int64").tolist())
    if row_ids is None:
        if action == UNDO:
            raise ReviewError("say which decisions to undo: give row ids or a filter")
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
    if action == UNDO:
        pending = [i for i in requested if i not in decided]
        if pending:
            raise ReviewError(f"row(s) {_ids(pending)} of batch {batch.batch_id} are pending: there is no "
                              "decision to undo")
        return requested
    for i in requested:
        if i in decided:
            entry = decided[i]
            done = "released" if entry["action"] == RELEASE else "confirmed as poison"
            raise ReviewError(
                f"row {i} of batch {batch.batch_id} was already {done} by {entry['reviewer']} at {entry['at']} "
                f"(audit seq {entry['seq']}); a row is decided once, unless the decision is undone"
            )
    return requested


def _as_clean_rows(rows: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in rows.columns if c in _REVIEW_COLUMNS or c.startswith(DETECTOR_COLUMN_PREFIXES)]
    return rows.drop(columns=drop).reset_index(drop=True)


def _ids(ids: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"

"""Review decisions: release or confirm quarantined rows of a batch, each recorded in the audit log.

Nothing written by a scan is ever rewritten here. A release writes the released rows as a new Parquet
file beside the batch's clean file (``clean/<dataset>/<batch_id>.released-<seq>.parquet``); a
confirmation writes nothing but its audit entry.
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
from poisonguard.review.audit import CONFIRM, RELEASE, AuditLog, ReviewError
from poisonguard.review.batches import ReviewedBatch, find_batch, quarantined_rows, row_decisions
from poisonguard.review.reviewers import ReviewerKey, Signer
from poisonguard.write.atomic import atomic_path, sync_file, write_parquet

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
    drop = [c for c in rows.columns if c in _REVIEW_COLUMNS or c.startswith(DETECTOR_COLUMN_PREFIXES)]
    return rows.drop(columns=drop).reset_index(drop=True)


def _ids(ids: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"

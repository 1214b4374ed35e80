"""The replay ledger: an append-only record of every batch poisonguard processed.

SQLite from the standard library: one file under the output directory, safe for concurrent readers and
writers on one machine, and append-only by construction (triggers refuse UPDATE and DELETE).

A batch is a replay when its file digest, or the digest of its canonical content (the same rows in any
order, any column order, any file format), matches a batch already *delivered*, that is one whose rows
went to the clean area. Batches that were rejected do not count, so a source may resend a batch after
fixing its manifest.
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard import ROW_ID
from poisonguard.cells import as_text, is_list_column, list_cells, list_row_hashes
from poisonguard.errors import ConfigError

DELIVERED = ("clean", "rows_quarantined")
HASH_SLICE_ROWS = 250_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT NOT NULL,
    dataset TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    content_sha256 TEXT,
    source_id TEXT,
    key_id TEXT,
    source_path TEXT,
    outcome TEXT NOT NULL,
    rows_in INTEGER,
    rows_clean INTEGER,
    rows_quarantined INTEGER
);
CREATE INDEX IF NOT EXISTS batches_sha256 ON batches (sha256);
CREATE INDEX IF NOT EXISTS batches_content ON batches (content_sha256);
CREATE TRIGGER IF NOT EXISTS batches_no_update BEFORE UPDATE ON batches
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS batches_no_delete BEFORE DELETE ON batches
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS audit_heads (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_heads_no_update BEFORE UPDATE ON audit_heads
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_heads_no_delete BEFORE DELETE ON audit_heads
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""


@dataclass(frozen=True)
class LedgerEntry:
    recorded_at: str
    dataset: str
    batch_id: str
    sha256: str
    content_sha256: str | None
    source_id: str | None
    key_id: str | None
    source_path: str | None
    outcome: str
    rows_in: int | None = None
    rows_clean: int | None = None
    rows_quarantined: int | None = None


@dataclass(frozen=True)
class Replay:
    """The earlier delivery a batch repeats; ``match`` is ``file`` (same bytes) or ``content`` (same rows)."""

    match: str
    first: LedgerEntry


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as connection, connection:
                connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{self.path}: cannot open the replay ledger: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def record_audit_head(self, seq: int, entry_hash: str) -> None:
        """Mirror the review audit log's newest entry (its sequence number and hash): the log alone cannot
        show entries cut from its end, the ledger's copy of its head can."""
        with closing(self._connect()) as connection, connection:
            connection.execute("INSERT OR IGNORE INTO audit_heads (seq, hash, recorded_at) VALUES (?, ?, ?)",
                               (int(seq), entry_hash, datetime.now(timezone.utc).isoformat(timespec="seconds")))

    def audit_head(self) -> tuple[int, str] | None:
        """The newest audit head mirrored here, or ``None``."""
        with closing(self._connect()) as connection:
            found = connection.execute("SELECT seq, hash FROM audit_heads ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(found[0]), str(found[1])) if found else None

    def record(self, entry: LedgerEntry) -> None:
        columns = list(LedgerEntry.__dataclass_fields__)
        placeholders = ", ".join("?" for _ in columns)
        with closing(self._connect()) as connection, connection:
            connection.execute(
                f"INSERT INTO batches ({', '.join(columns)}) VALUES ({placeholders})",
                [getattr(entry, c) for c in columns],
            )

    def find_replay(self, sha256: str, content_sha256: str | None, exclude_batch_id: str | None = None) -> Replay | None:
        """The earliest delivered batch with the same file or content digest, else ``None``.

        ``exclude_batch_id`` leaves out deliveries of that very batch id (a deliberate ``--force`` rescan).
        """
        columns = ", ".join(LedgerEntry.__dataclass_fields__)
        query = (
            f"SELECT {columns} FROM batches WHERE outcome IN (?, ?) AND (sha256 = ? OR content_sha256 = ?) "
            "AND batch_id != ? ORDER BY id LIMIT 1"
        )
        with closing(self._connect()) as connection:
            row = connection.execute(query, [*DELIVERED, sha256, content_sha256, exclude_batch_id or ""]).fetchone()
        if row is None:
            return None
        first = LedgerEntry(*row)
        return Replay("file" if first.sha256 == sha256 else "content", first)

    def entries(self, dataset: str | None = None) -> list[LedgerEntry]:
        columns = ", ".join(LedgerEntry.__dataclass_fields__)
        query, params = f"SELECT {columns} FROM batches", []
        if dataset is not None:
            query, params = query + " WHERE dataset = ?", [dataset]
        with closing(self._connect()) as connection:
            return [LedgerEntry(*row) for row in connection.execute(query + " ORDER BY id", params)]


class ReplayLock:
    """Makes "is this a replay?" and "record this delivery" one step for batches of the same content.

    Two deliveries of the same rows scanned at the same time both passed the replay check before either
    was recorded, and both reached ``clean/`` (2 of 3 attempts in the red-team run). A scan holds this lock,
    keyed by the rows' content digest, from before its replay check until its outcome is in the ledger,
    so the second scan's check sees the first's delivery. The lock is an OS file lock (``filelock``): it
    is let go when the process ends, even by ``kill -9``, so a crashed scan never blocks later ones. Lock
    files are striped over 256 names beside the ledger; two different contents share a stripe rarely, and
    then only wait for each other.
    """

    def __init__(self, ledger_path: Path, timeout: float = 3600.0) -> None:
        self.folder = Path(f"{ledger_path}.locks")
        self.timeout = timeout
        self._held: list = []

    def hold(self, content_sha256: str | None) -> None:
        """Block until no other scan of these rows is between its replay check and its ledger entry."""
        from filelock import FileLock, Timeout

        if content_sha256 is None or self._held:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.folder / f"{content_sha256[:2]}.lock", thread_local=False)
            lock.acquire(timeout=self.timeout)
        except Timeout:
            raise ConfigError(
                f"{self.folder}: another scan of the same rows held the replay lock for {self.timeout:.0f} s"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{self.folder}: cannot take the replay lock: {exc.strerror or exc}") from None
        self._held.append(lock)

    def release(self) -> None:
        while self._held:
            self._held.pop().release()

    def __enter__(self) -> ReplayLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def content_sha256(frame: pd.DataFrame) -> str:
    """A digest of the rows as a multiset: equal for the same rows in any order, column order or format.

    Numbers are compared as float64 (a CSV integer column and its Parquet float twin hash alike), lists of
    numbers (an embedding column) as float64 in order, other values as text. Each row is hashed with
    pandas' vectorised ``hash_pandas_object``; the sorted row hashes, with the sorted column names, are
    then digested with sha256.
    """
    # Hashed a slice of rows at a time: pandas builds a canonical column and a hash array per column, about
    # 46 MB of scratch for 1M rows x 21 columns at once.
    hashes = np.empty(len(frame), dtype="uint64")
    for start in range(0, len(frame), HASH_SLICE_ROWS):
        hashes[start : start + HASH_SLICE_ROWS] = row_hashes(frame.iloc[start : start + HASH_SLICE_ROWS])
    return digest_row_hashes(content_columns(frame), hashes)


def content_columns(frame: pd.DataFrame) -> list[str]:
    return sorted(c for c in frame.columns if c != ROW_ID)


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per row of ``frame``'s content (see :func:`content_sha256`); chunks may be hashed apart."""
    columns = content_columns(frame)
    canonical = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for column in columns:
        values = frame[column].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            canonical[column] = values.astype("float64")
        elif is_list_column(values):
            # Lists of numbers hash by their values as float64 (a Parquet list and its JSON array alike);
            # a cell that is not one hashes by its text.
            cells = list_cells(values)
            canonical[column] = list_row_hashes(cells)
            canonical[f"{column}\x1ftext"] = as_text(values.where(~cells.valid, None))
        else:
            canonical[column] = as_text(values)
    return pd.util.hash_pandas_object(canonical, index=False).to_numpy()


def digest_row_hashes(columns: list[str], hashes: np.ndarray) -> str:
    """The content digest from every row's hash, in any order, and the sorted column names."""
    digest = hashlib.sha256("\x1f".join(columns).encode("utf-8") + b"\x1e")
    digest.update(np.sort(np.asarray(hashes, dtype="uint64")).tobytes())
    return digest.hexdigest()

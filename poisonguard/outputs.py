"""Where a scan's results live under ``--out``, and writing them so no row is lost or duplicated.

Layout::

    clean/<dataset>/<batch_id>.parquet        rows training may read
    quarantine/<dataset>/<batch_id>.parquet   rows held back, with reasons and scores (only if any)
    quarantine/<dataset>/<batch_id>.rejected/ the raw file and reason.json of a batch rejected whole
    reports/<dataset>/<batch_id>.json         the summary; written last, so its presence means complete
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from poisonguard import BATCH_ID, QUARANTINED_AT, RAW_VALUES, REASONS, ROW_ID, SCORE_PREFIX, STATUS
from poisonguard.config import checked_dataset_name
from poisonguard.decide import QUARANTINED, build_result_table
from poisonguard.ingest import Batch
from poisonguard.scores import DetectorScores
from poisonguard.store import atomic_copy, atomic_write_json, write_all_or_none, write_parquet, write_parquet_slices

PENDING = "pending"
_BATCH_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class OutputPaths:
    clean: Path
    quarantine: Path
    rejected: Path
    report: Path

    @classmethod
    def for_batch(cls, out_dir: Path, dataset: str, batch_id: str) -> OutputPaths:
        """The paths of one batch's outputs. Raises :class:`ConfigError` for a dataset name that could make
        two outputs share a path or leave their area (see :func:`dataset_name_problem`), and ``ValueError``
        for a batch id that is not the 16 hex digits ingest derives."""
        checked_dataset_name(dataset, "the batch")
        if not _BATCH_ID.fullmatch(batch_id):
            raise ValueError(f"batch id {batch_id!r} is not 16 hex digits")
        out_dir = Path(out_dir)
        return cls(
            clean=out_dir / "clean" / dataset / f"{batch_id}.parquet",
            quarantine=out_dir / "quarantine" / dataset / f"{batch_id}.parquet",
            rejected=out_dir / "quarantine" / dataset / f"{batch_id}.rejected",
            report=out_dir / "reports" / dataset / f"{batch_id}.json",
        )


# Clean rows are copied out of the batch and written this many at a time, one Parquet row group each, so
# writing never holds a second copy of the whole batch.
WRITE_SLICE_ROWS = 100_000


@dataclass(frozen=True)
class SplitRows:
    """A batch's rows partitioned into clean and quarantined, ready to write.

    ``rows`` holds every row (the batch's columns plus ``_row_id``, sharing the frame's buffers); the clean
    ones are copied out slice by slice as they are written (:meth:`clean_slices`). ``quarantined`` is
    whole: it is small, and carries the reasons and scores of its rows.
    """

    rows: pa.Table
    held: np.ndarray
    batch_id: str
    quarantined: pa.Table

    @property
    def n_clean(self) -> int:
        return int(len(self.held) - self.held.sum())

    @property
    def clean_schema(self) -> pa.Schema:
        return self.rows.schema.append(pa.field(BATCH_ID, pa.large_string()))

    def clean_slices(self, slice_rows: int = WRITE_SLICE_ROWS) -> Iterator[pa.Table]:
        """The clean rows plus ``_batch_id``, in batch order, at most ``slice_rows`` rows of input at a time."""
        for start in range(0, self.rows.num_rows, slice_rows):
            kept = self.rows.slice(start, slice_rows).filter(pa.array(~self.held[start : start + slice_rows]))
            if kept.num_rows:
                yield kept.append_column(BATCH_ID, _repeated(self.batch_id, kept.num_rows))

    def clean(self) -> pa.Table:
        """All clean rows as one table (a copy of them)."""
        return pa.Table.from_batches(
            [b for part in self.clean_slices() for b in part.to_batches()], schema=self.clean_schema
        )


def split_rows(
    frame: pd.DataFrame,
    result: pd.DataFrame,
    batch_id: str,
    quarantined_at: datetime,
    raw_values: dict[int, dict[str, str]] | None = None,
) -> SplitRows:
    """Partition ``frame`` by the result table into clean and quarantined rows (see :class:`SplitRows`).

    Both keep the batch's columns plus ``_row_id`` (last but one) and ``_batch_id``; the quarantined table
    adds ``_reasons``, one ``_score_<detector>`` column per detector, ``_quarantined_at``, ``_status``
    (``pending``) and ``_raw_values`` (JSON of cells that could not be parsed, else null).
    """
    if not np.array_equal(frame[ROW_ID].to_numpy(), result[ROW_ID].to_numpy()):
        raise ValueError("result table rows do not match the batch rows")
    columns = [c for c in frame.columns if c != ROW_ID] + [ROW_ID]
    held = result[QUARANTINED].to_numpy()
    # Arrow shares the frame's numeric buffers, and each filter copies only the rows it keeps: at a million
    # rows, pandas' .loc and then from_pandas held a pandas copy and an Arrow copy of the clean rows at once.
    rows = pa.Table.from_pandas(frame[columns], preserve_index=False)
    held_result = result.loc[held].reset_index(drop=True)
    extras = pd.DataFrame({REASONS: held_result[REASONS].array})
    for column in held_result.columns:
        if column.endswith("_score"):
            extras[SCORE_PREFIX + column.removesuffix("_score")] = held_result[column].to_numpy()
    extras[QUARANTINED_AT] = pd.Timestamp(quarantined_at)
    extras[STATUS] = PENDING
    quarantined = rows.filter(pa.array(held))
    quarantined = quarantined.append_column(BATCH_ID, _repeated(batch_id, quarantined.num_rows))
    for name, values in zip(extras.columns, pa.Table.from_pandas(extras, preserve_index=False).columns):
        quarantined = quarantined.append_column(name, values)
    raw_values = raw_values or {}
    held_ids = quarantined.column(ROW_ID).to_numpy()
    raw = [json.dumps(raw_values[i], sort_keys=True) if i in raw_values else None for i in held_ids.tolist()]
    quarantined = quarantined.append_column(RAW_VALUES, pa.array(raw, type=pa.string()))
    return SplitRows(rows, held, batch_id, quarantined)


def _repeated(text: str, n_rows: int) -> pa.Array:
    return pa.repeat(pa.scalar(text, type=pa.large_string()), n_rows)


def write_split(paths: OutputPaths, split: SplitRows, batch: Batch) -> None:
    """Write the clean and (if any) quarantined rows together: both files appear, or neither changes.

    A quarantine file left by an earlier scan of the same batch that now quarantines nothing is removed,
    and so is an earlier whole-batch rejection, so the outputs always reflect the latest scan.
    """
    metadata = _parquet_metadata(batch)
    writers = [(paths.clean, lambda tmp: write_parquet_slices(tmp, split.clean_schema, split.clean_slices(), metadata))]
    if split.quarantined.num_rows:
        writers.append((paths.quarantine, lambda tmp: write_parquet(tmp, split.quarantined, metadata)))
    write_all_or_none(writers)
    if not split.quarantined.num_rows:
        paths.quarantine.unlink(missing_ok=True)
    if paths.rejected.exists():
        shutil.rmtree(paths.rejected)


def write_rejected(paths: OutputPaths, batch: Batch, failures: list[dict[str, str]]) -> None:
    """Keep the raw file and a ``reason.json`` for a batch quarantined whole; remove stale row outputs."""
    atomic_copy(batch.read_path, paths.rejected / batch.source_path.name)
    atomic_write_json(
        paths.rejected / "reason.json",
        {"batch_id": batch.batch_id, "source": str(batch.source_path), "sha256": batch.sha256, "failures": failures},
    )
    paths.clean.unlink(missing_ok=True)
    paths.quarantine.unlink(missing_ok=True)


def write_whole_quarantine(paths: OutputPaths, batch: Batch, codes: list[str], quarantined_at: datetime) -> None:
    """Put every row of ``batch`` in quarantine with ``codes`` as reasons (an untrusted batch).

    The rows are kept as read, not coerced; any clean file or rejection left by an earlier scan of the
    same batch is removed, so no row of it stays where training reads.
    """
    row_ids = batch.frame[ROW_ID].to_numpy()
    result = build_result_table(row_ids, {code: row_ids for code in codes}, DetectorScores())
    quarantined = split_rows(batch.frame, result, batch.batch_id, quarantined_at).quarantined
    metadata = _parquet_metadata(batch)
    write_all_or_none([(paths.quarantine, lambda tmp: write_parquet(tmp, quarantined, metadata))])
    paths.clean.unlink(missing_ok=True)
    if paths.rejected.exists():
        shutil.rmtree(paths.rejected)


def _parquet_metadata(batch: Batch) -> dict[str, str]:
    """Key/value metadata every output Parquet file of a batch carries."""
    return {"poisonguard.batch_id": batch.batch_id, "poisonguard.source_sha256": batch.sha256}

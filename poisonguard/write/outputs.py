"""Where a scan's results live under ``--out``, and writing them so no row is lost or duplicated.

Layout::

    clean/<dataset>/<batch_id>.parquet        rows training may read
    quarantine/<dataset>/<batch_id>.parquet   rows held back, with reasons and scores (only if any)
    quarantine/<dataset>/<batch_id>.rejected/ the raw file and reason.json of a batch rejected whole
    reports/<dataset>/<batch_id>.json         the summary; written last, so its presence means complete
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poisonguard import BATCH_ID, EXPLANATION, QUARANTINED_AT, RAW_VALUES, REASONS, ROW_ID, STATUS
from poisonguard.decide.result_table import QUARANTINED
from poisonguard.errors import InputError
from poisonguard.ingest.read import Batch
from poisonguard.names import checked_dataset_name
from poisonguard.write import atomic
from poisonguard.write.atomic import atomic_copy, atomic_write_json, parquet_table, staged_file, writer_options

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


def released_name(batch_id: str, seq: int) -> str:
    """The name of the file of rows a reviewer released from a batch by audit entry ``seq``, beside the
    batch's clean file in ``clean/<dataset>/``."""
    return f"{batch_id}.released-{seq:06d}.parquet"


def released_glob(batch_id: str = "*") -> str:
    """The pattern of :func:`released_name` for one batch's released files (every batch's by default)."""
    return f"{batch_id}.released-*.parquet"


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
    explanations: pd.Series | None = None,
    column_types: dict[str, pa.DataType] | None = None,
) -> SplitRows:
    """Partition ``frame`` by the result table into clean and quarantined rows (see :class:`SplitRows`).

    Both keep the batch's columns plus ``_row_id`` (last but one) and ``_batch_id``; the quarantined table
    adds ``_reasons``, ``_explanation`` (the reasons in words, when ``explanations`` gives them per row of
    ``frame``), per detector ``_score_<detector>``, ``_pvalue_<detector>`` (with a reference) and what it said of
    the row (``_predicted_``, ``_probability_``, ``_features_<detector>``, where it says it), ``_quarantined_at``,
    ``_status`` (``pending``) and ``_raw_values`` (JSON of cells that could not be parsed, else null). ``column_types``:
    the Arrow type to write a column as (the suite's, so that every chunk of every batch writes one schema).
    """
    if not np.array_equal(frame[ROW_ID].to_numpy(), result[ROW_ID].to_numpy()):
        raise ValueError("result table rows do not match the batch rows")
    columns = [c for c in frame.columns if c != ROW_ID] + [ROW_ID]
    held = result[QUARANTINED].to_numpy()
    # Arrow shares the frame's numeric buffers, and each filter copies only the rows it keeps: at a million
    # rows, pandas' .loc and then from_pandas held a pandas copy and an Arrow copy of the clean rows at once.
    rows = pa.Table.from_pandas(frame[columns], preserve_index=False)
    for column, arrow_type in (column_types or {}).items():
        if column in rows.column_names and rows.schema.field(column).type != arrow_type:
            where = rows.column_names.index(column)
            rows = rows.set_column(where, column, rows.column(where).cast(arrow_type))
    held_result = result.loc[held].reset_index(drop=True)
    extras = pd.DataFrame({REASONS: held_result[REASONS].array})
    if explanations is not None:  # per row of ``frame``; kept for the quarantined rows
        extras[EXPLANATION] = np.asarray(explanations, dtype=object)[held]
    for column in held_result.columns:
        for suffix in _DETECTOR_COLUMNS:
            if column.endswith(f"_{suffix}"):
                extras[f"_{suffix}_{column.removesuffix(f'_{suffix}')}"] = held_result[column].to_numpy()
    extras[QUARANTINED_AT] = pd.Timestamp(quarantined_at)
    extras[STATUS] = PENDING
    quarantined = rows.filter(pa.array(held))
    quarantined = quarantined.append_column(BATCH_ID, _repeated(batch_id, quarantined.num_rows))
    for name, values in zip(extras.columns, pa.Table.from_pandas(extras, schema=_extras_schema(extras),
                                                                  preserve_index=False).columns):
        quarantined = quarantined.append_column(name, values)
    raw_values = raw_values or {}
    held_ids = quarantined.column(ROW_ID).to_numpy()
    raw = [json.dumps(raw_values[i], sort_keys=True) if i in raw_values else None for i in held_ids.tolist()]
    quarantined = quarantined.append_column(RAW_VALUES, pa.array(raw, type=pa.string()))
    return SplitRows(rows, held, batch_id, quarantined)


# The result table's per-detector columns kept for a quarantined row, by suffix, with their Parquet types: a
# chunk where no row has a value must still write the type the others do.
_DETECTOR_COLUMNS = {"score": pa.float64(), "pvalue": pa.float64(), "predicted": pa.string(),
                     "probability": pa.float64(), "features": pa.list_(pa.string())}


def _extras_schema(extras: pd.DataFrame) -> pa.Schema:
    """The quarantine columns' Arrow types: per-detector columns by their kind, the others as pandas has them."""
    inferred = pa.Schema.from_pandas(extras, preserve_index=False)
    fields = []
    for field in inferred:
        kind = next((suffix for suffix in _DETECTOR_COLUMNS if field.name.startswith(f"_{suffix}_")), None)
        fields.append(pa.field(field.name, _DETECTOR_COLUMNS[kind]) if kind else field)
    return pa.schema(fields)


def _repeated(text: str, n_rows: int) -> pa.Array:
    return pa.repeat(pa.scalar(text, type=pa.large_string()), n_rows)


class StagedParquet:
    """One output Parquet file written a row group per chunk into a staged file beside it.

    Every chunk is cast to the first chunk's column types, so the file has one schema; nothing appears at
    ``final`` until :meth:`commit`. ``keep_empty`` writes a file with no rows (and the first chunk's
    columns) when no chunk had any.
    """

    def __init__(self, final: Path, metadata: dict[str, str], keep_empty: bool) -> None:
        self.final, self.metadata, self.keep_empty = Path(final), metadata, keep_empty
        self.rows = 0
        self._staged: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, rows: pa.Table) -> None:
        table = parquet_table(rows, self.metadata)
        if self._schema is None:
            # A column with no values in the first chunk has no type yet; text is the only kind it can be
            # (a numeric column is float64 even when empty).
            fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
            self._schema = pa.schema(fields, metadata=table.schema.metadata)
        try:
            table = table.cast(self._schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            row_ids = table.column(ROW_ID).to_numpy()
            first, last = int(row_ids.min()), int(row_ids.max())
            raise InputError(
                f"rows {first}-{last} do not fit the column types of the earlier rows ({exc}); "
                "scan the batch without --chunk-rows, or give it a suite"
            ) from None
        if not len(table):
            return
        if self._writer is None:
            self._staged = staged_file(self.final)
            self._writer = pq.ParquetWriter(self._staged, self._schema, **writer_options(self._schema))
        self._writer.write_table(table)
        self.rows += len(table)

    def close(self) -> Path | None:
        """Finish the staged file (writing an empty one if asked); return it, or ``None`` if nothing to write."""
        if self._writer is None and self.keep_empty and self._schema is not None:
            self._staged = staged_file(self.final)
            self._writer = pq.ParquetWriter(self._staged, self._schema, **writer_options(self._schema))
        if self._writer is not None:
            self._writer.close()
            atomic.sync_file(self._staged)  # through the module, so a test can simulate a full disk
        return self._staged

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._staged is not None:
            self._staged.unlink(missing_ok=True)


def commit_staged(staged: list[tuple[Path, Path]], paths: OutputPaths) -> None:
    """Rename the staged files (``(staged, final)`` pairs) into place, and drop the outputs an earlier scan
    of the batch left that this one does not replace: a quarantine file or a whole-batch rejection."""
    finals = {final for _, final in staged}
    for staged_path, final in staged:
        os.replace(staged_path, final)
    if paths.quarantine not in finals:
        paths.quarantine.unlink(missing_ok=True)
    if paths.clean not in finals:
        paths.clean.unlink(missing_ok=True)
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


def _parquet_metadata(batch: Batch) -> dict[str, str]:
    """Key/value metadata every output Parquet file of a batch carries."""
    return {"poisonguard.batch_id": batch.batch_id, "poisonguard.source_sha256": batch.sha256}

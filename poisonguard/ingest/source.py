"""A batch's rows as the scan reads them: one chunk for a batch read whole, or ``chunk_rows`` at a time.

Every read is of the batch's private snapshot (:attr:`Batch.read_path`), so each pass sees the bytes that
were hashed. A batch read whole (``read_batch``) is one chunk, its frame; a batch larger than memory is
read in chunks: Parquet by record batches (pyarrow), CSV and JSON Lines by their chunked readers. Either
way the scan's loop is the same (see :mod:`poisonguard.pipeline.chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from poisonguard import ROW_ID
from poisonguard.errors import UnreadableBatchError
from poisonguard.ingest.read import Batch, _check_column_names, header_columns, read_json_lines, with_row_ids
from poisonguard.provenance.checks import RowsRead
from poisonguard.provenance.ledger import digest_row_hashes, row_hashes


class BatchSource:
    """The rows of ``batch``: its frame as one chunk when it was read whole, else ``chunk_rows`` at a time.

    :meth:`chunks` raises :class:`UnreadableBatchError` naming the rows where parsing failed (or the
    reason a batch read whole could not be parsed).
    """

    def __init__(self, batch: Batch, chunk_rows: int | None) -> None:
        if batch.frame is None and batch.unreadable is None and chunk_rows is None:
            raise ValueError("a batch described but not read needs chunk_rows")
        self.batch, self.chunk_rows = batch, chunk_rows

    @property
    def one_chunk(self) -> bool:
        """Whether the batch is held whole: every detector then sees all its rows at once."""
        return self.chunk_rows is None

    def chunks(self) -> Iterator[pd.DataFrame]:
        """The batch's rows in file order, each chunk with ``_row_id`` = position in the file.

        A file with no rows yields one empty chunk with its columns.
        """
        if self.batch.unreadable is not None:
            raise self.batch.unreadable
        if self.batch.frame is not None:
            yield self.batch.frame
            return
        yield from self._file_chunks()

    def _file_chunks(self) -> Iterator[pd.DataFrame]:
        batch, first_row = self.batch, 0
        if batch.size_bytes == 0:
            raise UnreadableBatchError("structural:empty_file", f"{batch.source_path}: the file is empty (0 bytes)")
        chunks = _raw_chunks(batch, self.chunk_rows)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                if first_row == 0:  # a file with a header and no rows: one empty chunk carries its columns
                    yield with_row_ids(pd.DataFrame(columns=self.file_columns()), 0)
                return
            except UnreadableBatchError:
                raise
            except Exception as exc:  # any parser error means the batch is unreadable, whatever the library
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UnreadableBatchError(
                    "structural:unreadable",
                    f"{batch.source_path}: cannot be read as {batch.file_format} after row {first_row}: {message}",
                ) from exc
            if first_row == 0:
                self.file_columns()  # a repeated or reserved column name rejects the batch before any row
            yield with_row_ids(chunk, first_row)
            first_row += len(chunk)

    def file_columns(self) -> list[str]:
        """The column names of the batch file, read from its header or schema alone.

        Raises :class:`UnreadableBatchError` for a file whose header cannot be read, repeats a name or uses
        a reserved column.
        """
        batch = self.batch
        try:
            columns = header_columns(batch.read_path, batch.file_format)
        except Exception as exc:  # any parser error means the batch is unreadable, whatever the library
            raise UnreadableBatchError(
                "structural:unreadable", f"{batch.source_path}: cannot be read as {batch.file_format}: {exc}"
            ) from exc
        _check_column_names(batch.source_path, columns)
        return columns

    def rows_read(self) -> RowsRead:
        """The batch's provenance facts: row count, columns and content digest, from one pass over it.

        A batch that cannot be read gives no facts.
        """
        if self.batch.frame is not None or self.batch.unreadable is not None:
            return RowsRead.of(self.batch)
        count, columns, hashes = 0, None, []
        try:
            for chunk in self.chunks():
                count += len(chunk)
                columns = [c for c in chunk.columns if c != ROW_ID]
                hashes.append(row_hashes(chunk))
        except UnreadableBatchError:
            return RowsRead(None, None, None)
        content = digest_row_hashes(sorted(columns), np.concatenate([np.empty(0, "uint64"), *hashes]))
        return RowsRead(count, columns, content)

    def known_rows(self) -> int | None:
        """Rows in the batch when known without a pass over it (read whole, counted, or a Parquet footer)."""
        if self.batch.n_rows is not None:
            return self.batch.n_rows
        if self.batch.file_format == "parquet":
            try:
                return pq.ParquetFile(self.batch.read_path).metadata.num_rows
            except Exception:  # noqa: BLE001 - an unreadable file is the scan's to judge
                return None
        return None

    def count_rows(self) -> int | None:
        """Rows in the batch (a rejected batch's report still says how many), ``None`` if unreadable."""
        known = self.known_rows()
        if known is not None:
            return known
        if self.batch.size_bytes == 0:
            return 0
        try:
            return sum(len(chunk) for chunk in _raw_chunks(self.batch, self.chunk_rows or 1_000_000))
        except Exception:  # noqa: BLE001 - an unreadable file has no row count to report
            return None

    def one_numeric_type(self, chunk: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
        """``chunk`` with ``numeric`` columns as float64 when chunks of a text file each infer int or float on
        their own (one output file needs one type); a batch read whole, or Parquet, keeps its types."""
        if self.one_chunk or self.batch.file_format == "parquet":
            return chunk
        return chunk.astype({c: "float64" for c in numeric if c in chunk})


def _raw_chunks(batch: Batch, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if batch.file_format == "parquet":
        # pre_buffer=False: with pyarrow's default, the buffers read ahead for every row group stay
        # allocated until the file is closed, and memory grows with the file rather than the chunk.
        parquet = pq.ParquetFile(batch.read_path, pre_buffer=False)
        for record_batch in parquet.iter_batches(batch_size=chunk_rows):
            yield record_batch.to_pandas()
    elif batch.file_format == "csv":
        yield from pd.read_csv(batch.read_path, chunksize=chunk_rows, low_memory=False)
    else:
        yield from read_json_lines(batch.read_path, chunksize=chunk_rows, name=batch.source_path)


class UniformSample:
    """A uniform random sample of at most ``size`` rows of a stream of frames, in one pass.

    Every row gets a random key; the sample is the rows with the ``size`` smallest keys seen so far
    (bottom-k sampling), so it does not need the stream's length in advance.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._rows: pd.DataFrame | None = None
        self._keys = np.empty(0)

    def offer(self, frame: pd.DataFrame) -> None:
        keys = self._rng.random(len(frame))
        rows = frame if self._rows is None else pd.concat([self._rows, frame], ignore_index=True)
        keys = np.concatenate([self._keys, keys])
        if len(keys) > self.size:
            keep = np.sort(np.argpartition(keys, self.size - 1)[: self.size])
            rows, keys = rows.iloc[keep].reset_index(drop=True), keys[keep]
        self._rows, self._keys = rows, keys

    @property
    def frame(self) -> pd.DataFrame | None:
        return self._rows

"""Scan a batch larger than memory: read, validate, score and write it one chunk of rows at a time.

Used when ``config.chunk_rows`` is set (``--chunk-rows``). Parquet is read by record batches (pyarrow),
CSV and JSON Lines by pandas' chunked readers. Each chunk is coerced and validated against the suite with
Great Expectations, scored, split into clean and quarantined rows, and appended as one row group to a
staged Parquet file per output; the staged files are renamed into place only when every chunk is done, so
a failure leaves the earlier outputs as they were. The outputs are the same single files a whole-batch
scan writes, so review, release and training readers need nothing new.

Detectors are fitted before the first chunk is scored: on the trusted reference when there is one (the
reference is held in memory, subsampled to ``max_reference_rows``), else in a first pass over the batch
that keeps a uniform sample of ``max_reference_rows`` rows (see :class:`UniformSample`) and sets the
no-reference thresholds on it. Detectors that judge the batch's rows against each other (spectral
statistics, clusters, neighbours) are fitted on such a first-pass sample in both cases: a two-pass
estimate of what a whole scan computes on every row. Out-of-fold label checks cannot run chunked.

Memory: one chunk at a time (its frame, encoded matrix, scores and output tables, a few times the chunk's
own size), the reference or the sample, and per batch row 8 bytes (content hash, for the replay ledger)
plus 4 bytes per detector (evidence, for the report's histograms): about 100 MB for 5 million rows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poisonguard import ROW_ID
from poisonguard.batch_stats import DRIFT_SAMPLE_ROWS, score_distributions, score_drift
from poisonguard.decide import build_result_table, reason_counts
from poisonguard.detectors import detector_class
from poisonguard.errors import ConfigError, InputError, UnreadableBatchError
from poisonguard.expectations.suite import NUMERIC, suite_kinds
from poisonguard.expectations.validate import SchemaValidator, StructuralFailure, validate_batch
from poisonguard.ingest import Batch, _check_column_names, _csv_header, read_json_lines, with_row_ids
from poisonguard.ledger import digest_row_hashes, row_hashes
from poisonguard.memory import release_free_memory
from poisonguard.outputs import OutputPaths, _parquet_metadata, split_rows
from poisonguard.provenance import RowsRead
from poisonguard.scoring import (
    DetectorScores,
    FittedReference,
    ReferenceCalibration,
    SampleFit,
    flag_chunk,
    flag_reference_chunk,
)
from poisonguard.store import _stage, parquet_table, writer_options
from poisonguard.values import as_text


def file_columns(batch: Batch) -> list[str]:
    """The column names of the batch file, read from its header or schema alone.

    Raises :class:`UnreadableBatchError` for a file whose header cannot be read, repeats a name or uses a
    reserved column.
    """
    path = batch.read_path
    try:
        if batch.file_format == "parquet":
            columns = pq.ParquetFile(path).schema_arrow.names
        elif batch.file_format == "csv":
            columns = _csv_header(path)
        else:
            with path.open("r", encoding="utf-8") as handle:
                first = next((line for line in handle if line.strip()), "{}")
            columns = list(json.loads(first))
    except Exception as exc:  # any parser error means the batch is unreadable, whatever the library
        raise UnreadableBatchError(
            "structural:unreadable", f"{batch.source_path}: cannot be read as {batch.file_format}: {exc}"
        ) from exc
    _check_column_names(batch.source_path, columns)
    return [str(c) for c in columns]


def iter_chunks(batch: Batch, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The batch's rows, ``chunk_rows`` at a time, each chunk with ``_row_id`` = position in the file.

    A file with no rows yields one empty chunk with its columns. Raises :class:`UnreadableBatchError`
    naming the rows where parsing failed.
    """
    first_row = 0
    chunks = _raw_chunks(batch, chunk_rows)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            if first_row == 0:  # a file with a header and no rows: one empty chunk carries its columns
                yield with_row_ids(pd.DataFrame(columns=file_columns(batch)), 0)
            return
        except Exception as exc:  # any parser error means the batch is unreadable, whatever the library
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnreadableBatchError(
                "structural:unreadable",
                f"{batch.source_path}: cannot be read as {batch.file_format} after row {first_row}: {message}",
            ) from exc
        yield with_row_ids(chunk, first_row)
        first_row += len(chunk)


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
            self._staged = _stage(self.final)
            self._writer = pq.ParquetWriter(self._staged, self._schema, **writer_options(self._schema))
        self._writer.write_table(table)
        self.rows += len(table)

    def close(self) -> Path | None:
        """Finish the staged file (writing an empty one if asked); return it, or ``None`` if nothing to write."""
        if self._writer is None and self.keep_empty and self._schema is not None:
            self._staged = _stage(self.final)
            self._writer = pq.ParquetWriter(self._staged, self._schema, **writer_options(self._schema))
        if self._writer is not None:
            self._writer.close()
        return self._staged

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._staged is not None:
            self._staged.unlink(missing_ok=True)


@dataclass
class ChunkedOutcome:
    """What a chunked scan found, summed over its chunks; ``structural`` non-empty means rejected whole."""

    rows_in: int = 0
    rows_clean: int = 0
    rows_quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)
    flagged: Counter = field(default_factory=Counter)
    detector_reasons: dict[str, str] = field(default_factory=dict)
    expectations: dict[tuple, dict[str, Any]] = field(default_factory=dict)
    structural: list[StructuralFailure] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, list[np.ndarray]] = field(default_factory=dict)
    evidence_flags: dict[str, list[np.ndarray]] = field(default_factory=dict)
    hashes: list[np.ndarray] = field(default_factory=list)
    class_counts: Counter = field(default_factory=Counter)
    content_columns: list[str] = field(default_factory=list)
    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (staged file, final path)
    drift_rows: UniformSample | None = None  # a uniform sample of the validated rows, for drift checks

    def add_expectations(self, summaries: list[dict[str, Any]]) -> None:
        for summary in summaries:
            key = (summary["expectation"], summary["column"], json.dumps(summary["kwargs"], sort_keys=True))
            total = self.expectations.setdefault(key, dict(summary, unexpected_count=0, success=True))
            total["unexpected_count"] += summary["unexpected_count"]
            total["success"] = total["success"] and summary["success"]

    @property
    def content_sha256(self) -> str:
        return digest_row_hashes(self.content_columns, np.concatenate([np.empty(0, "uint64"), *self.hashes]))

    def figures(self, threshold: float | None, axis: str) -> dict[str, Any]:
        """The report's score histograms and score-drift warnings, from every chunk's evidence."""
        evidence = {name: np.concatenate(parts) for name, parts in self.evidence.items()}
        flags = {name: np.concatenate(parts) for name, parts in self.evidence_flags.items()}
        return {
            "distributions": score_distributions(evidence, flags, threshold, axis),
            "score_drift": score_drift(evidence, axis),
        }


def sample_batch(batch: Batch, suite: Any, label_col: str | None, chunk_rows: int, size: int,
                 seed: int) -> pd.DataFrame | None:
    """A chunked scan's first pass: a uniform sample of the rows that pass the schema, to fit detectors on."""
    validator, sample = SchemaValidator(), UniformSample(size, seed)
    try:
        for chunk in iter_chunks(batch, chunk_rows):
            outcome = validate_batch(chunk, suite, label_col, validator)
            if outcome.rejected:
                return None  # the second pass finds and reports the same failure
            failing = np.concatenate([np.empty(0, "int64"), *outcome.row_reasons.values()])
            sample.offer(outcome.frame[~np.isin(outcome.frame[ROW_ID].to_numpy(), failing)])
    except UnreadableBatchError:
        return None  # likewise
    return sample.frame


def count_rows(batch: Batch, chunk_rows: int = 1_000_000) -> int | None:
    """Rows in the batch file (a rejected batch's report still says how many), ``None`` if unreadable."""
    if batch.size_bytes == 0:
        return 0
    try:
        if batch.file_format == "parquet":
            return pq.ParquetFile(batch.read_path).metadata.num_rows
        return sum(len(chunk) for chunk in _raw_chunks(batch, chunk_rows))
    except Exception:  # noqa: BLE001 - an unreadable file has no row count to report
        return None


def scan_chunks(
    batch: Batch,
    suite: Any,
    label_col: str | None,
    fitted: FittedReference | SampleFit | None,
    calibration: ReferenceCalibration | None,
    chunk_rows: int,
    paths: OutputPaths,
    scanned_at: datetime,
) -> ChunkedOutcome:
    """Second (or only) pass: validate, score, split and stage every chunk; see the module docstring.

    On a structural failure the staged files are removed and ``structural`` says why; otherwise the
    staged files wait in ``staged`` for :func:`commit_outputs`.
    """
    kinds = suite_kinds(suite)
    numeric = [c for c, k in kinds.items() if k == NUMERIC]
    text_source = batch.file_format != "parquet"
    metadata = _parquet_metadata(batch)
    clean_file = StagedParquet(paths.clean, metadata, keep_empty=True)
    quarantine_file = StagedParquet(paths.quarantine, metadata, keep_empty=False)
    found = ChunkedOutcome(drift_rows=UniformSample(DRIFT_SAMPLE_ROWS, seed=0))
    validator = SchemaValidator()
    if batch.size_bytes == 0:
        empty = StructuralFailure("structural:empty_file", f"{batch.source_path}: the file is empty (0 bytes)")
        found.structural = [empty]
        return found
    try:
        for chunk in iter_chunks(batch, chunk_rows):
            outcome = validate_batch(chunk, suite, label_col, validator)
            found.add_expectations(outcome.expectations)
            if outcome.rejected:
                found.structural = outcome.structural
                clean_file.discard()
                quarantine_file.discard()
                return found
            frame = outcome.frame
            if text_source:
                # CSV and JSON chunks each infer int or float on their own; one file needs one type.
                frame = frame.astype({c: "float64" for c in numeric if c in frame})
            scores = _score(fitted, calibration, frame)
            result = build_result_table(frame[ROW_ID].to_numpy(), outcome.row_reasons, scores)
            split = split_rows(frame, result, batch.batch_id, scanned_at, outcome.raw_values)
            clean_file.write(split.clean())
            if split.quarantined.num_rows:
                quarantine_file.write(split.quarantined)
            _tally(found, chunk, frame, result, scores, label_col)
            # The next chunk's arrays come from the pages this one freed only if they are handed back.
            del chunk, outcome, frame, scores, result, split
            release_free_memory()
    except UnreadableBatchError as exc:  # a bad batch, kept whole: not an error of the scan
        clean_file.discard()
        quarantine_file.discard()
        found.structural = [StructuralFailure(exc.code, str(exc))]
        return found
    except BaseException:
        clean_file.discard()
        quarantine_file.discard()
        raise
    found.rows_clean, found.rows_quarantined = clean_file.rows, quarantine_file.rows
    for output in (clean_file, quarantine_file):
        staged = output.close()
        if staged is not None:
            found.staged.append((staged, output.final))
    return found


def _score(fitted, calibration: ReferenceCalibration | None, frame: pd.DataFrame) -> DetectorScores:
    if fitted is None or not len(frame):
        return DetectorScores()
    if isinstance(fitted, SampleFit):
        return flag_chunk(fitted, frame)
    return flag_reference_chunk(fitted, calibration, frame)


def _tally(found: ChunkedOutcome, chunk: pd.DataFrame, frame: pd.DataFrame, result: pd.DataFrame,
           scores: DetectorScores, label_col: str | None) -> None:
    found.rows_in += len(chunk)
    found.reasons.update(reason_counts(result))
    found.hashes.append(row_hashes(chunk))
    found.content_columns = sorted(c for c in chunk.columns if c != ROW_ID)
    for name, flags in scores.flags.items():
        found.flagged[name] += int(flags.sum())
        found.detector_reasons[name] = scores.reasons[name]
        found.evidence.setdefault(name, []).append(scores.evidence[name].astype("float32"))
        found.evidence_flags.setdefault(name, []).append(flags)
    if scores.calibration:
        found.calibration = scores.calibration
    if found.drift_rows is not None:
        found.drift_rows.offer(frame)
    if label_col is not None and label_col in frame:
        found.class_counts.update(as_text(frame[label_col]).fillna("<missing>").value_counts().to_dict())


def commit_outputs(found: ChunkedOutcome, paths: OutputPaths) -> None:
    """Rename the staged files into place, and drop outputs an earlier scan of the batch left behind."""
    import os
    import shutil

    for staged, final in found.staged:
        os.replace(staged, final)
    if not found.rows_quarantined:
        paths.quarantine.unlink(missing_ok=True)
    if paths.rejected.exists():
        shutil.rmtree(paths.rejected)


def require_schema(suite: Any, batch: Batch) -> None:
    if suite is None:
        raise ConfigError(
            f"{batch.source_path}: a chunked scan needs a schema to hold every chunk to the same types: give "
            "--reference, --suite, or store one with `poisonguard expectations init`"
        )


def fit_for_chunks(batch: Batch, reference: pd.DataFrame | None, suite: Any, kinds: dict[str, str],
                   label_col: str | None, config) -> tuple[FittedReference | SampleFit | None,
                                                           ReferenceCalibration | None, dict[str, str]]:
    """Fit the detectors a chunked scan scores with: on the reference, and on a first-pass uniform sample
    of the batch for the detectors that judge rows against each other (or for all, without a reference).

    Returns the fitted detectors, the reference calibration (``None`` without a reference) and the
    detectors that cannot run with the reason. Raises :class:`ConfigError` for what a chunked scan cannot
    do (:func:`poisonguard.scoring.refuse_unchunkable`).
    """
    from poisonguard.scoring import (
        calibrate_holdout,
        fit_on_sample,
        fit_reference,
        has_enough_reference,
        refuse_unchunkable,
    )

    refuse_unchunkable(list(config.detectors), config)
    if has_enough_reference(reference, config):
        # Detectors that judge the batch's rows against each other need a first pass for a sample of it.
        whole = any(detector_class(n).transductive or detector_class(n).representation != "features"
                    for n in config.detectors)
        sample = None
        if whole:
            sample = sample_batch(batch, suite, label_col, config.chunk_rows, config.max_reference_rows, config.seed)
            if sample is None:  # broken structure: the scanning pass finds it and rejects the batch
                return None, None, {}
            if len(sample) < 2 * config.min_class_rows:
                raise ConfigError(
                    f"{batch.source_path}: too few rows pass the schema to fit "
                    f"{', '.join(config.detectors)} on a sample of the batch; scan it without --chunk-rows"
                )
        fitted, skipped = fit_reference(reference, kinds, label_col, config, sample)
        if fitted is None:
            return None, None, skipped
        calibration = calibrate_holdout(fitted, fitted.holdout_scores)
        calibration.summary["skipped_detectors"] = skipped
        return fitted, calibration, skipped
    sample = sample_batch(batch, suite, label_col, config.chunk_rows, config.max_reference_rows, config.seed)
    fitted, skipped = fit_on_sample(sample if sample is not None else pd.DataFrame(), kinds, label_col, config)
    if fitted is not None:
        fitted.summary["skipped_detectors"] = skipped
    return fitted, None, skipped


def read_rows(batch: Batch, chunk_rows: int) -> RowsRead:
    """One pass over the batch for its provenance facts: row count, columns and content digest.

    A file that cannot be read gives no facts (as a whole batch that cannot be parsed has no frame).
    """
    if batch.size_bytes == 0:
        return RowsRead(None, None, None)
    count, columns, hashes = 0, None, []
    try:
        for chunk in iter_chunks(batch, chunk_rows):
            count += len(chunk)
            columns = [c for c in chunk.columns if c != ROW_ID]
            hashes.append(row_hashes(chunk))
    except UnreadableBatchError:
        return RowsRead(None, None, None)
    content = digest_row_hashes(sorted(columns), np.concatenate([np.empty(0, "uint64"), *hashes]))
    return RowsRead(count, columns, content)


def quarantine_all_chunks(batch: Batch, codes: list[str], chunk_rows: int, paths: OutputPaths,
                          quarantined_at: datetime) -> int:
    """Put every row of an untrusted batch in quarantine with ``codes``, chunk by chunk, rows as read.

    The chunked counterpart of :func:`poisonguard.outputs.write_whole_quarantine`: the quarantine file
    appears whole or not at all, and a clean file or rejection an earlier scan left is removed.
    """
    quarantine_file = StagedParquet(paths.quarantine, _parquet_metadata(batch), keep_empty=False)
    try:
        for chunk in iter_chunks(batch, chunk_rows):
            if batch.file_format != "parquet":  # as in scan_chunks: one numeric type for every chunk
                chunk = chunk.astype({c: "float64" for c in chunk.columns
                                      if c != ROW_ID and pd.api.types.is_numeric_dtype(chunk[c])
                                      and not pd.api.types.is_bool_dtype(chunk[c])})
            row_ids = chunk[ROW_ID].to_numpy()
            result = build_result_table(row_ids, {code: row_ids for code in codes}, DetectorScores())
            quarantine_file.write(split_rows(chunk, result, batch.batch_id, quarantined_at).quarantined)
    except BaseException:
        quarantine_file.discard()
        raise
    staged = quarantine_file.close()
    found = ChunkedOutcome(rows_quarantined=quarantine_file.rows)
    if staged is not None:
        found.staged.append((staged, paths.quarantine))
    commit_outputs(found, paths)
    paths.clean.unlink(missing_ok=True)
    return quarantine_file.rows

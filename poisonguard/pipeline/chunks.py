"""The per-chunk steps of a scan (validate, flag, stage) and what the scan found, summed over its chunks.

A batch held whole is one chunk; a batch larger than memory is many (:class:`BatchSource`). Each chunk is
validated against the suite with Great Expectations, scored and flagged (:mod:`poisonguard.score.scorers`),
split into clean and quarantined rows, and appended to one staged Parquet file per output; the staged
files are renamed into place only when every chunk is done (:func:`poisonguard.write.outputs.commit_staged`),
so a failure leaves the earlier outputs as they were, and the outputs are single files whatever the
chunking.

Memory: one chunk at a time (its frame, encoded matrix, scores and output tables, a few times the chunk's
own size), the reference or the fitting sample, and per batch row 8 bytes (content hash, for the replay
ledger) plus 4 bytes per detector (evidence, for the report's histograms) and, with classes and a reference,
1-4 bytes for the row's calibration group (which weights its evidence): about 100 MB for 5 million rows.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poisonguard import EXPLANATION, REASONS, ROW_ID
from poisonguard.cells import as_text
from poisonguard.decide.explain import detector_row_weights, explain_rows
from poisonguard.decide.result_table import build_result_table, reason_counts
from poisonguard.errors import ConfigError, UnreadableBatchError
from poisonguard.expectations.suite import CATEGORICAL, EMBEDDING, TEXT, suite_arrow_types, suite_kinds
from poisonguard.expectations.validate import SchemaOutcome, SchemaValidator, StructuralFailure, validate_batch
from poisonguard.ingest.source import BatchSource, UniformSample
from poisonguard.memory import release_free_memory
from poisonguard.pipeline.plan import ScanPlan
from poisonguard.provenance.ledger import digest_row_hashes, row_hashes
from poisonguard.report.figures import (
    DRIFT_SAMPLE_ROWS,
    class_balance_of_counts,
    drift_checks,
    score_distributions,
)
from poisonguard.score.types import DetectorScores
from poisonguard.write.outputs import OutputPaths, StagedParquet, _parquet_metadata, commit_staged, split_rows

log = logging.getLogger(__name__)


@dataclass
class ScanFindings:
    """What a scan found, summed over its chunks; ``structural`` non-empty means rejected whole."""

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
    groups: list[np.ndarray] = field(default_factory=list)  # each chunk's rows' calibration groups, with classes
    hashes: list[np.ndarray] = field(default_factory=list)
    class_counts: Counter = field(default_factory=Counter)
    content_columns: list[str] = field(default_factory=list)
    # False when the rows' digest is already known (a provenance check read it): not hashed a second time.
    hash_rows: bool = True
    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (staged file, final path)
    # A uniform sample of the validated rows (all of them up to 100k), for the feature-drift checks.
    drift_rows: UniformSample = field(default_factory=lambda: UniformSample(DRIFT_SAMPLE_ROWS, seed=0))

    def add_expectations(self, summaries: list[dict[str, Any]]) -> None:
        for summary in summaries:
            key = (summary["expectation"], summary["column"], json.dumps(summary["kwargs"], sort_keys=True))
            total = self.expectations.setdefault(key, dict(summary, unexpected_count=0, success=True))
            total["unexpected_count"] += summary["unexpected_count"]
            total["success"] = total["success"] and summary["success"]

    @property
    def content_sha256(self) -> str | None:
        """The rows' content digest, as the replay ledger keeps it; ``None`` when the rows were not hashed."""
        if not self.hash_rows:
            return None
        return digest_row_hashes(self.content_columns, np.concatenate([np.empty(0, "uint64"), *self.hashes]))

    @property
    def detectors(self) -> dict[str, dict[str, Any]]:
        """Per detector, the reason code its flags give and how many rows it flagged."""
        return {name: {"reason": self.detector_reasons[name], "flagged": count} for name, count in self.flagged.items()}

    def figures(self, scan_plan: ScanPlan) -> dict[str, Any]:
        """The report's batch-level figures: score histograms and score drift (from every chunk's evidence),
        feature drift against the reference (on the drift sample) and the verdict on the batch as a whole,
        class balance (from every row)."""
        threshold = self.calibration.get("evidence_threshold")
        axis = self.calibration.get("evidence_axis", "score")
        evidence = {name: np.concatenate(parts) for name, parts in self.evidence.items()}
        flags = {name: np.concatenate(parts) for name, parts in self.evidence_flags.items()}
        # Evidence is -log10(p / weight), one axis for every detector's threshold; drift is judged on the
        # conformal p-values themselves, which are uniform for rows drawn like the reference.
        groups = np.concatenate(self.groups) if self.groups else None
        # Not the label models': they judge the labels, which poisoning changes by design, and their scores
        # of most rows sit near 0, where a small shift of the batch's label noise moves the p-values' body
        # (on the bundled sample every label model's KS statistic read 0.09-0.11, the rows' detectors 0.07).
        p_evidence = {name: values - np.log10(detector_row_weights(self.calibration, name, groups))
                      for name, values in evidence.items()
                      if not self.detector_reasons.get(name, "").startswith("label:")}
        figures = {
            "distributions": score_distributions(evidence, flags, threshold, axis),
            **drift_checks(self.drift_rows.frame, scan_plan.reference, scan_plan.kinds, p_evidence, axis,
                           self.rows_in, self.rows_quarantined),
        }
        if scan_plan.label_col is not None:
            figures["class_balance"] = class_balance_of_counts(dict(self.class_counts), scan_plan.reference_class_counts)
        return figures


def require_schema(source: BatchSource, suite: Any) -> None:
    """A batch read in chunks needs a suite: raise :class:`ConfigError` naming the file when it has none."""
    if suite is None and not source.one_chunk:
        raise ConfigError(
            f"{source.batch.source_path}: a chunked scan needs a schema to hold every chunk to the same types: "
            "give --reference, --suite, or store one with `poisonguard expectations init`"
        )


def validate_chunk(chunk: pd.DataFrame, scan_plan: ScanPlan, validator: SchemaValidator | None = None) -> SchemaOutcome:
    """``chunk`` held to the plan's suite (rows kept as read when there is none)."""
    if scan_plan.suite is None:
        return SchemaOutcome(chunk)
    return validate_batch(chunk, scan_plan.suite, scan_plan.label_col, validator or SchemaValidator())


def fit_mask(outcome: SchemaOutcome) -> np.ndarray:
    """Which rows of a validated chunk passed every row-level check: the rows detectors may be fitted on."""
    failing = np.concatenate([np.empty(0, "int64"), *outcome.row_reasons.values()])
    return ~np.isin(outcome.frame[ROW_ID].to_numpy(), failing)


class ChunkStager:
    """Stages one scan's clean and quarantined rows, chunk by chunk, and sums what it found.

    Used as a context manager around the chunk loop: on any error the staged files are removed, and an
    :class:`UnreadableBatchError` (a batch that cannot be parsed at some row) is kept as the structural
    failure that rejects the batch whole rather than raised.
    """

    def __init__(self, source: BatchSource, scan_plan: ScanPlan, paths: OutputPaths, scanned_at: datetime,
                 hash_rows: bool = True) -> None:
        """``hash_rows``: hash every row for the content digest (not needed when provenance already read it)."""
        self.source, self.scan_plan, self.paths, self.scanned_at = source, scan_plan, paths, scanned_at
        metadata = _parquet_metadata(source.batch)
        self.clean = StagedParquet(paths.clean, metadata, keep_empty=True)
        self.quarantine = StagedParquet(paths.quarantine, metadata, keep_empty=False)
        self.found = ScanFindings(hash_rows=hash_rows)
        kinds = suite_kinds(scan_plan.suite) if scan_plan.suite is not None else {}
        schema = _file_schema(source)
        # The suite checks categorical and text columns as text. A Parquet file fixes each column's type for
        # every chunk, so a column that came typed (bool, timestamp, date, category) is written as it came;
        # CSV and JSON Lines are typed per chunk by the parser, so their columns are written as checked.
        self._as_read = _typed_columns(schema, [c for c, k in kinds.items() if k in (CATEGORICAL, TEXT)])
        # One schema for every chunk, whatever a chunk's reader inferred: a Parquet batch's columns are written
        # with the file's types; a CSV or JSON Lines batch's numbers, booleans, dates and timestamps as the
        # suite types them (so a whole and a chunked scan of one file write the same schema).
        self._arrow_types = _written_types(schema, kinds, scan_plan.suite)

    def __enter__(self) -> ChunkStager:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None:
            return False
        self.discard()
        if isinstance(error, UnreadableBatchError):  # a bad batch, kept whole: not an error of the scan
            self.found.structural = [StructuralFailure(error.code, str(error))]
            return True
        return False

    def scorable(self, outcome: SchemaOutcome) -> pd.DataFrame | None:
        """The rows of a validated chunk to score, or ``None`` when the chunk rejects the batch (the staged
        files are then removed and :attr:`found` says why)."""
        self.found.add_expectations(outcome.expectations)
        if outcome.rejected:
            log.info("the batch is rejected whole: %s", "; ".join(f.code for f in outcome.structural))
            self.found.structural = outcome.structural
            self.discard()
            return None
        return outcome.frame  # numbers already float64 in every chunk: validation casts them

    def stage(self, chunk: pd.DataFrame, outcome: SchemaOutcome, frame: pd.DataFrame,
              scores: DetectorScores) -> pd.DataFrame:
        """Split the chunk's rows (``frame``, as :meth:`scorable` gave them) by schema failures and flags,
        and append them to the staged files; return the chunk's per-row result table, with ``_explanation``."""
        result = build_result_table(frame[ROW_ID].to_numpy(), outcome.row_reasons, scores)
        explanations = explain_rows(frame, result[REASONS], result, outcome.expectations, scores.calibration,
                                    scores.groups)
        split = split_rows(self._typed_as_read(chunk, frame), result, self.source.batch.batch_id, self.scanned_at,
                           outcome.raw_values, explanations, self._arrow_types)
        self.clean.write(split.clean_schema.empty_table())  # a batch with no clean rows still has a clean file
        for rows in split.clean_slices():
            self.clean.write(rows)
        if split.quarantined.num_rows:
            self.quarantine.write(split.quarantined)
        self._tally(chunk, frame, result, scores)
        del split
        # The next chunk's arrays come from the pages this one freed only if they are handed back.
        release_free_memory()
        return result.assign(**{EXPLANATION: explanations.to_numpy()})

    def _typed_as_read(self, chunk: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the columns of ``_as_read`` that the file typed other than as text put back as read."""
        typed = [c for c in self._as_read if c in chunk]
        if not typed or not np.array_equal(chunk[ROW_ID].to_numpy(), frame[ROW_ID].to_numpy()):
            return frame
        return frame.assign(**{column: chunk[column].array for column in typed})

    def _tally(self, chunk: pd.DataFrame, frame: pd.DataFrame, result: pd.DataFrame, scores: DetectorScores) -> None:
        found, label_col = self.found, self.scan_plan.label_col
        found.rows_in += len(chunk)
        found.reasons.update(reason_counts(result))
        if found.hash_rows:
            found.hashes.append(row_hashes(chunk))
        found.content_columns = sorted(c for c in chunk.columns if c != ROW_ID)
        for name, flags in scores.flags.items():
            found.flagged[name] += int(flags.sum())
            found.detector_reasons[name] = scores.reasons[name]
            found.evidence.setdefault(name, []).append(scores.evidence[name].astype("float32"))
            found.evidence_flags.setdefault(name, []).append(flags)
        if scores.groups is not None:
            found.groups.append(scores.groups)
        if scores.calibration:
            found.calibration = scores.calibration
        found.drift_rows.offer(frame)
        if label_col is not None and label_col in frame:
            found.class_counts.update(as_text(frame[label_col]).fillna("<missing>").value_counts().to_dict())

    def finish(self) -> ScanFindings:
        """Close the staged files; they wait in ``found.staged`` for :func:`commit_staged`."""
        found = self.found
        found.rows_clean, found.rows_quarantined = self.clean.rows, self.quarantine.rows
        log.info("staged %s rows: %s clean, %s quarantined", f"{found.rows_in:,}", f"{found.rows_clean:,}",
                 f"{found.rows_quarantined:,}")
        for output in (self.clean, self.quarantine):
            staged = output.close()
            if staged is not None:
                found.staged.append((staged, output.final))
        return found

    def discard(self) -> None:
        self.clean.discard()
        self.quarantine.discard()


def _file_schema(source: BatchSource) -> pa.Schema | None:
    """A Parquet batch's schema (which fixes every chunk's column types); ``None`` for CSV and JSON Lines."""
    if source.batch.file_format != "parquet":
        return None
    try:
        return pq.read_schema(source.batch.read_path)
    except Exception:  # noqa: BLE001 - a file that cannot be read is rejected by the scan, not here
        return None


def _typed_columns(schema: pa.Schema | None, columns: list[str]) -> list[str]:
    """Which of ``columns`` a Parquet batch (its ``schema``) types other than as text (bool, timestamp, date,
    dictionary)."""
    if schema is None:
        return []
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return [c for c in columns if c in schema.names and not any(is_text(schema.field(c).type) for is_text in text)]


def _written_types(schema: pa.Schema | None, kinds: dict[str, str], suite) -> dict[str, pa.DataType]:
    """Column -> the Arrow type the outputs give it (see :class:`ChunkStager`): a Parquet batch's (``schema``),
    else the suite's."""
    if suite is None:
        return {}
    if schema is None:
        return suite_arrow_types(suite)
    return {c: schema.field(c).type for c, k in kinds.items() if c in schema.names and k != EMBEDDING}


def quarantine_every_row(source: BatchSource, codes: list[str], paths: OutputPaths, quarantined_at: datetime) -> int:
    """Put every row of an untrusted batch in quarantine with ``codes``, chunk by chunk, rows as read (the
    schema is not worth checking); return how many. The quarantine file appears whole or not at all, and a
    clean file or rejection an earlier scan left is removed."""
    quarantine = StagedParquet(paths.quarantine, _parquet_metadata(source.batch), keep_empty=False)
    try:
        for chunk in source.chunks():
            numeric = [c for c in chunk.columns if c != ROW_ID and pd.api.types.is_numeric_dtype(chunk[c])
                       and not pd.api.types.is_bool_dtype(chunk[c])]
            chunk = source.one_numeric_type(chunk, numeric)
            row_ids = chunk[ROW_ID].to_numpy()
            result = build_result_table(row_ids, {code: row_ids for code in codes}, DetectorScores())
            explanations = explain_rows(chunk, result[REASONS], result, [], {})
            quarantine.write(split_rows(chunk, result, source.batch.batch_id, quarantined_at,
                                        explanations=explanations).quarantined)
    except BaseException:
        quarantine.discard()
        raise
    staged = quarantine.close()
    commit_staged([(staged, paths.quarantine)] if staged is not None else [], paths)
    return quarantine.rows

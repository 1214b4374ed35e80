"""The scan's Fit step: detectors fitted once, before the first chunk, and a scorer that flags each chunk.

A scorer turns a validated chunk into :class:`DetectorScores` in two steps, so that the first can be
mapped in parallel (Dask) and the second sees the whole chunk:

* :meth:`ChunkScorer.slice_scores` scores any slice of the chunk's rows with the detectors whose score of
  a row depends on that row alone (every slice the same model);
* :meth:`ChunkScorer.flag` runs the detectors that must see the chunk's rows together, calibrates, and
  flags.

A batch held whole (one chunk) is scored as :func:`poisonguard.score.rows.score_rows` scores a frame: the
detectors that judge rows against each other see every batch row. A batch read in chunks is scored by
detectors fitted before the first chunk, on the reference and on a first-pass uniform sample of the batch
(see :mod:`poisonguard.score.reference` and :mod:`poisonguard.score.batch` for the two calibrations).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import ROW_ID
from poisonguard.detectors import detector_spec
from poisonguard.detectors.threads import thread_cap
from poisonguard.errors import ConfigError, UnreadableBatchError
from poisonguard.expectations.validate import SchemaValidator, validate_batch
from poisonguard.ingest.source import BatchSource, UniformSample
from poisonguard.pipeline.plan import ScanPlan
from poisonguard.score.batch import SampleFit, fit_on_sample, refuse_unchunkable, sample_flags, sample_scores
from poisonguard.score.detector_set import chosen_detectors, has_enough_reference, labels_of
from poisonguard.score.reference import (
    FittedReference,
    ReferenceCalibration,
    apply_calibration,
    calibrate_holdout,
    explained,
    finish_scores,
    fit_reference,
    join_chunk_scores,
    refuse_weak_guarantee,
    row_ids_of,
    score_chunk,
)
from poisonguard.score.rows import score_rows
from poisonguard.score.types import DetectorScores

log = logging.getLogger(__name__)


class ChunkScorer:
    """Scores and flags the rows of a chunk; see the module docstring. ``skipped``: detectors that cannot
    run here, with the reason (the report lists them)."""

    def __init__(self, config, skipped: dict[str, str] | None = None) -> None:
        self.config, self.skipped = config, skipped or {}

    def slices(self, frame: pd.DataFrame) -> list[pd.DataFrame]:
        """``frame`` in consecutive slices of ``score_chunk_rows`` rows: what :meth:`slice_scores` takes."""
        step = self.config.execution.score_chunk_rows
        return [frame.iloc[start : start + step] for start in range(0, len(frame), step)]

    def slice_scores(self, rows: pd.DataFrame, threads: int | None = None) -> dict[str, np.ndarray]:
        """Scores of ``rows`` (one of :meth:`slices`) by the detectors that score rows one by one. ``threads``:
        at most this many threads per detector call, for a runner that scores many slices at once."""
        with thread_cap(threads):
            return self._slice_scores(rows)

    def _slice_scores(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {}

    def flag(self, frame: pd.DataFrame, fit_mask: np.ndarray,
             parts: list[dict[str, np.ndarray]] | None = None) -> DetectorScores:
        """Scores, calibration and flags of every row of ``frame``, a validated chunk (``fit_mask``: the rows
        that passed the schema). ``parts``: :meth:`slice_scores` of :meth:`slices`, when already computed."""
        if not len(frame):
            return DetectorScores(calibration={"mode": "empty batch"})
        if parts is None:
            parts = [self.slice_scores(rows) for rows in self.slices(frame)]
        return self._flag(frame, fit_mask, parts)

    def _flag(self, frame: pd.DataFrame, fit_mask: np.ndarray, parts: list[dict[str, np.ndarray]]) -> DetectorScores:
        return DetectorScores(calibration={"mode": "reference", "skipped_detectors": self.skipped})


class WholeBatchScorer(ChunkScorer):
    """One chunk, the whole batch: fitted on the reference before it arrives, or, without one, on the
    batch's own rows that pass the schema (:func:`score_rows`)."""

    def __init__(self, config, scan_plan: ScanPlan, fitted: FittedReference | None, skipped: dict[str, str]) -> None:
        super().__init__(config, skipped)
        self.scan_plan, self.fitted = scan_plan, fitted

    def _slice_scores(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return score_chunk(self.fitted, rows) if self.fitted is not None else {}

    def _flag(self, frame, fit_mask, parts) -> DetectorScores:
        if self.fitted is not None:
            return finish_scores(self.fitted, frame, parts, self.skipped, fit_mask)
        if has_enough_reference(self.scan_plan.reference, self.config):  # no detector can run
            return super()._flag(frame, fit_mask, parts)
        plan = self.scan_plan
        return score_rows(frame, None, plan.kinds, plan.label_col, self.config, fit_mask)


class ReferenceChunkScorer(ChunkScorer):
    """Many chunks with a reference: every detector scores rows one by one, calibrated once on held-out rows."""

    def __init__(self, config, fitted: FittedReference, calibration: ReferenceCalibration,
                 skipped: dict[str, str]) -> None:
        super().__init__(config, skipped)
        self.fitted, self.calibration = fitted, calibration

    def _slice_scores(self, rows):
        return score_chunk(self.fitted, rows)

    def _flag(self, frame, fit_mask, parts):
        scores = {name: join_chunk_scores([part[name] for part in parts]) for name in self.fitted.streamed}
        flagged = apply_calibration(self.calibration, scores, labels_of(frame, self.fitted.label_col),
                                    row_ids_of(frame))
        return explained(self.fitted, flagged, frame)


class SampleChunkScorer(ChunkScorer):
    """Many chunks without a reference: detectors and no-reference thresholds set on a sample of the batch."""

    def __init__(self, config, fitted: SampleFit, skipped: dict[str, str]) -> None:
        super().__init__(config, skipped)
        self.fitted = fitted

    def _slice_scores(self, rows):
        return sample_scores(self.fitted, rows)

    def _flag(self, frame, fit_mask, parts):
        scores = {name: np.concatenate([part[name] for part in parts]) for name in self.fitted.detectors}
        return sample_flags(self.fitted, frame, scores)


class NoDetectors(ChunkScorer):
    """Nothing can be fitted (too few rows passed the schema): rows are flagged by the schema alone."""

    def __init__(self, config, calibration: dict[str, Any]) -> None:
        super().__init__(config)
        self.calibration = calibration

    def _flag(self, frame, fit_mask, parts):
        return DetectorScores(calibration=dict(self.calibration))


def fit_scorer(source: BatchSource, scan_plan: ScanPlan, config) -> ChunkScorer:
    """Fit the configured detectors for the scan of ``source``; see the module docstring.

    Raises :class:`ConfigError` for what a batch read in chunks cannot do (detectors that score only the
    rows they were fitted on, too few rows to fit a sample).
    """
    reference, kinds, label_col = scan_plan.reference, scan_plan.kinds, scan_plan.label_col
    refuse_weak_guarantee(reference, config)
    if source.one_chunk:
        fitted, skipped = fit_reference(reference, kinds, label_col, config)
        if fitted is not None:
            log.info("fitted %s on %s reference rows (%s calibrate)", ", ".join(fitted.names),
                     f"{fitted.fit_rows:,}", f"{fitted.holdout_rows:,}")
        elif reference is None:
            log.info("no reference: detectors are fitted on the batch's rows that pass the schema")
        for name, why in skipped.items():
            log.warning("skipped %s: %s", name, why)
        return WholeBatchScorer(config, scan_plan, fitted, skipped)
    with_reference = has_enough_reference(reference, config)
    names = chosen_detectors(config, with_reference)
    refuse_unchunkable(names, config)
    if with_reference:
        # A first pass for a sample of the batch: detectors that judge the batch's rows against each other
        # are fitted on it, and what every detector sees in it weights their shares of the budget (as a
        # whole-batch scan weights them by all its rows).
        sample = None
        fit_on_batch = any(detector_spec(n).transductive or not detector_spec(n).reads_rows_alone for n in names)
        if fit_on_batch or len(names) > 1:
            sample = validated_sample(source, scan_plan, config.calibration.max_reference_rows, config.seed)
            if sample is None:  # broken structure: the scanning pass finds it and rejects the batch
                return NoDetectors(config, {"mode": "reference"})
            if fit_on_batch and len(sample) < 2 * config.detection.min_class_rows:
                raise ConfigError(
                    f"{source.batch.source_path}: too few rows pass the schema to fit "
                    f"{', '.join(names)} on a sample of the batch; scan it without --chunk-rows"
                )
        fitted, skipped = fit_reference(reference, kinds, label_col, config, sample if fit_on_batch else None)
        if fitted is None:
            return ChunkScorer(config, skipped)
        seen = score_chunk(fitted, sample) if sample is not None and len(sample) else None
        calibration = calibrate_holdout(fitted, fitted.holdout_scores, seen,
                                        labels_of(sample, label_col) if seen is not None else None,
                                        row_ids_of(sample) if seen is not None else None)
        calibration.summary["skipped_detectors"] = skipped
        log.info("fitted %s on %s reference rows%s; p-value threshold %.3g", ", ".join(fitted.names),
                 f"{fitted.fit_rows:,}", f" and {len(sample):,} batch rows" if fit_on_batch else "",
                 calibration.alpha)
        return ReferenceChunkScorer(config, fitted, calibration, skipped)
    log.info("first pass: sampling %s rows to fit on", f"{config.calibration.max_reference_rows:,}")
    sample = validated_sample(source, scan_plan, config.calibration.max_reference_rows, config.seed)
    fitted, skipped = fit_on_sample(sample if sample is not None else pd.DataFrame(), kinds, label_col, config)
    if fitted is None:
        return NoDetectors(config, {"mode": "batch", "skipped_detectors": skipped})
    fitted.summary["skipped_detectors"] = skipped
    log.info("fitted %s on a sample of %s batch rows", ", ".join(fitted.detectors), f"{len(sample):,}")
    return SampleChunkScorer(config, fitted, skipped)


def validated_sample(source: BatchSource, scan_plan: ScanPlan, size: int, seed: int) -> pd.DataFrame | None:
    """A first pass over ``source``: a uniform sample of the rows that pass the schema, to fit detectors on;
    ``None`` when the batch is unreadable or structurally broken (the scanning pass then rejects it)."""
    validator, sample = SchemaValidator(), UniformSample(size, seed)
    try:
        for chunk in source.chunks():
            outcome = validate_batch(chunk, scan_plan.suite, scan_plan.label_col, validator)
            if outcome.rejected:
                return None
            failing = np.concatenate([np.empty(0, "int64"), *outcome.row_reasons.values()])
            sample.offer(outcome.frame[~np.isin(outcome.frame[ROW_ID].to_numpy(), failing)])
    except UnreadableBatchError:
        return None
    return sample.frame

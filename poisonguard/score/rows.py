"""Score every row of a batch held in memory: the entry point for a frame (benchmarks, the DataFrame API).

With a usable reference the detectors are fitted and calibrated on it (:mod:`poisonguard.score.reference`);
without one, on the batch itself by the no-reference rule (:mod:`poisonguard.score.batch`). A scan reads
its batch through :mod:`poisonguard.score.scorers`, which does the same chunk by chunk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonguard.config import ScanConfig
from poisonguard.score.batch import score_against_batch
from poisonguard.score.detector_set import has_enough_reference, runnable_detectors
from poisonguard.score.reference import finish_scores, fit_reference, refuse_weak_guarantee, score_in_chunks
from poisonguard.score.types import DetectorScores


def score_rows(
    batch: pd.DataFrame,
    reference: pd.DataFrame | None,
    kinds: dict[str, str],
    label_col: str | None,
    config: ScanConfig,
    fit_mask: np.ndarray | None = None,
) -> DetectorScores:
    """Score every row of ``batch`` with each detector in ``config.detection.detectors``.

    ``fit_mask`` marks the rows that passed the schema: without a reference, the rows the detectors are fitted
    on; with one, the rows whose scores weight the detectors' shares of the budget. Returns empty scores for an empty batch.
    """
    refuse_weak_guarantee(reference, config)
    if len(batch) == 0:
        return DetectorScores(calibration={"mode": "empty batch"})
    if has_enough_reference(reference, config):
        fitted, skipped = fit_reference(reference, kinds, label_col, config)
        if fitted is None:
            return DetectorScores(calibration={"mode": "reference", "skipped_detectors": skipped})
        return finish_scores(fitted, batch, score_in_chunks(fitted, batch), skipped, fit_mask)
    names, skipped = runnable_detectors(config, label_col, False, kinds)
    if not names:
        return DetectorScores(calibration={"mode": "batch", "skipped_detectors": skipped})
    fit_mask = np.ones(len(batch), dtype=bool) if fit_mask is None else np.asarray(fit_mask, dtype=bool)
    result = score_against_batch(batch, fit_mask, kinds, label_col, config, names)
    result.calibration["skipped_detectors"] = skipped | result.calibration.get("skipped_detectors", {})
    return result

"""A batch scanned in this process as ``poisonguard scan`` scans it, for benchmarks that judge every row.

With a reference: the schema suite is inferred from it as a scan infers it, the batch validated against it,
and the rows scored with the reference; without one: no suite (a scan then checks only the label's
presence), the columns' kinds read from the batch, and the rows scored by the no-reference rule. The
settings are the scan's (``ScanConfig``), so the figures are those of the default command.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

# Schema reasons a clean row can get by chance: a value past an inferred range, a category the reference
# never showed. Every other schema reason (type, null) cannot fail a row drawn like the reference.
JUDGEMENT_CHECKS = ("schema:range:", "schema:in_set:")


@cache
def process_validator():
    """One Great Expectations validator per process (building one costs seconds), quiet about warnings."""
    import warnings

    from poisonguard.expectations.validate import SchemaValidator

    warnings.filterwarnings("ignore")
    return SchemaValidator()


@dataclass(frozen=True)
class ScannedRows:
    schema_judgement: np.ndarray  # rows failing an inferred range or value set
    schema_hard: np.ndarray  # rows failing any other schema rule
    detectors: np.ndarray  # rows flagged by any detector
    guarantee: str  # the calibration's guarantee, or its mode without a reference

    @property
    def quarantined(self) -> np.ndarray:
        return self.schema_judgement | self.schema_hard | self.detectors


def scan_rows(batch: pd.DataFrame, reference: pd.DataFrame | None, label: str, config, validator) -> ScannedRows:
    """Which rows of ``batch`` (positions) a scan with ``config`` quarantines, and why."""
    from poisonguard import ROW_ID
    from poisonguard.expectations.suite import infer_suite, suite_kinds
    from poisonguard.expectations.validate import validate_batch
    from poisonguard.featurize.features import infer_kinds
    from poisonguard.score.rows import score_rows

    n = len(batch)
    judged, hard = np.zeros(n, bool), np.zeros(n, bool)
    frame = batch.reset_index(drop=True)
    frame.insert(0, ROW_ID, np.arange(n, dtype="int64"))
    if reference is not None:
        suite = infer_suite(reference, "benchmark", label, config.expectations.range_margin,
                            range_false_quarantine=config.schema_budget)
        outcome = validate_batch(frame, suite, label, validator)
        if outcome.frame is None:
            raise RuntimeError(f"the batch was rejected whole: {outcome.structural}")
        for code, ids in outcome.row_reasons.items():
            target = judged if code.startswith(JUDGEMENT_CHECKS) else hard
            target[np.asarray(ids, dtype="int64")] = True
        frame = outcome.frame
        kinds = {column: kind for column, kind in suite_kinds(suite).items() if column != label}
    else:
        kinds = infer_kinds(frame, label)
    scores = score_rows(frame, reference, kinds, label, config, fit_mask=~(judged | hard))
    flagged = np.zeros(n, bool)
    for column in scores.flags:
        flagged |= np.asarray(scores.flags[column], dtype=bool)
    guarantee = scores.calibration.get("guarantee", scores.calibration.get("mode", "?"))
    return ScannedRows(judged, hard, flagged, guarantee)

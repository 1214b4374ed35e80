"""What scoring hands to the decision step: per-detector scores, flags and p-values for a batch's rows.

A light module (numpy only) so that the decision, the writers, review and the CLI can share the type
without importing scikit-learn, scipy and PyOD with the scoring code: ``import poisonguard.review.decisions`` took
2.6 s when this class lived in ``poisonguard.score.rows``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DetectorScores:
    """Per-detector scores and flags aligned with the batch rows, plus what set the thresholds."""

    scores: dict[str, np.ndarray] = field(default_factory=dict)
    flags: dict[str, np.ndarray] = field(default_factory=dict)
    p_values: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # detector -> reason code
    calibration: dict[str, Any] = field(default_factory=dict)
    # Per detector, one number per row on a common scale where the flag threshold is one value
    # (``calibration["evidence_threshold"]``): -log10 p in reference mode, score minus the row's class
    # threshold in batch mode. It is what the report's histograms show.
    evidence: dict[str, np.ndarray] = field(default_factory=dict)
    # What a person reads beside a flag, per row, set for flagged rows only: ``<detector>_predicted`` and
    # ``<detector>_probability`` (the label a label model expected), ``<detector>_features`` (the columns
    # that made an outlier unusual). See :mod:`poisonguard.score.details`.
    details: dict[str, np.ndarray] = field(default_factory=dict)
    # With a reference and classes, each row's calibration group: an index into
    # ``calibration["class_weights"]["classes"]``, whose weights set the row's p-value threshold per detector.
    groups: np.ndarray | None = None

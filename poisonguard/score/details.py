"""What a person reads beside a detector's flag: the label a label model expected, and the columns that made
an outlier unusual.

Asked only of the rows a detector flagged, after flagging, so a scan of a million clean rows pays nothing
for it. The detectors say what they can (:meth:`poisonguard.detectors.Detector.label_probabilities`,
:meth:`~poisonguard.detectors.Detector.feature_outlyingness`); this module turns it into per-row columns of
the result table: ``<detector>_predicted`` and ``<detector>_probability``, ``<detector>_features`` (a list of
column names).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonguard.detectors import Detector
from poisonguard.featurize.features import FeatureEncoder
from poisonguard.score.detector_set import labels_of
from poisonguard.score.types import DetectorScores

# An outlier flag names the columns that add most to its score, this many at most.
TOP_FEATURES = 3


def add_row_details(result: DetectorScores, detectors: dict[str, Detector], rows: pd.DataFrame,
                    encoder: FeatureEncoder, label_col: str | None, fitted_on_rows: bool = False) -> None:
    """Add to ``result.details`` what ``detectors`` say about the rows of ``rows`` they flagged (``rows``:
    the rows ``result`` scores, in its order; ``encoder``: what encoded them for the detectors;
    ``fitted_on_rows``: the transductive detectors were fitted on exactly ``rows``).

    Every detector that declares what it explains gets its columns, missing on the rows it did not flag,
    so that every chunk of a batch has the same columns.
    """
    explaining = {name: d for name, d in detectors.items()
                  if d.spec.explains is not None and d.spec.reads in ("features", "words") and name in result.flags}
    n_rows = len(rows)
    for name, detector in explaining.items():
        if detector.spec.explains == "label":
            result.details[f"{name}_predicted"] = np.full(n_rows, None, dtype=object)
            result.details[f"{name}_probability"] = np.full(n_rows, np.nan)
        else:
            result.details[f"{name}_features"] = np.full(n_rows, None, dtype=object)
    flagged_any = np.zeros(n_rows, dtype=bool)
    for name in explaining:
        flagged_any |= result.flags[name]
    if not flagged_any.any():
        return
    union = np.flatnonzero(flagged_any)
    X, y = encoder.transform(rows.iloc[union]), labels_of(rows.iloc[union], label_col)
    views = {"features": X}
    if any(d.spec.reads == "words" for d in explaining.values()):
        views["words"] = encoder.words(rows.iloc[union], X)
    position = np.cumsum(flagged_any) - 1  # a flagged row's position among ``union``
    sources = encoder.feature_columns()
    for name, detector in explaining.items():
        at = np.flatnonzero(result.flags[name])
        if not len(at):
            continue
        X_at, y_at = views[detector.spec.reads][position[at]], None if y is None else y[position[at]]
        if detector.spec.explains == "label":
            predicted = detector.label_probabilities(X_at, at if fitted_on_rows and detector.spec.transductive else None)
            if predicted is not None:
                classes, probabilities = predicted
                best = probabilities.argmax(axis=1)
                result.details[f"{name}_predicted"][at] = np.asarray(classes, dtype=object)[best]
                result.details[f"{name}_probability"][at] = probabilities[np.arange(len(at)), best]
        else:
            outlyingness = detector.feature_outlyingness(X_at, y_at)
            if outlyingness is not None:
                result.details[f"{name}_features"][at] = top_columns(outlyingness, sources)


def top_columns(outlyingness: np.ndarray, sources: np.ndarray, top: int = TOP_FEATURES) -> np.ndarray:
    """Per row, the list of the ``top`` columns whose features add most to its outlyingness (rows x features;
    ``sources``: each feature's column), most unusual first."""
    columns, codes = np.unique(sources.astype(str), return_inverse=True)
    per_column = np.zeros((len(outlyingness), len(columns)))
    np.add.at(per_column.T, codes, outlyingness.T)  # a column's one-hot features and indicator add up
    order = np.argsort(-per_column, axis=1, kind="stable")[:, :top]
    listed = np.empty(len(order), dtype=object)
    listed[:] = columns[order].tolist()
    return listed

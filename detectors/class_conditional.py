"""Fit one copy of a detector per label class, so a row is judged against rows of its own class.

A row that is ordinary overall but unusual for the class it claims (a flipped label, a backdoored row
relabelled to a target class) stands out only under its class's model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from poisonguard.cells import as_text
from poisonguard.detectors.base import Detector, check_matrix
from poisonguard.detectors.spec import DetectorSpec


class ClassConditional(Detector):
    """Wraps ``base``: one fitted clone per class with at least ``min_class_rows`` rows, plus one on all rows.

    ``decision_function(X, y)`` scores each row with its class's model; rows whose class had too few rows
    (or never appeared, or ``y`` is ``None``) are scored by the all-class model.
    """

    def __init__(self, base: Detector, min_class_rows: int = 30) -> None:
        self.base = base
        self.min_class_rows = min_class_rows

    @property
    def spec(self) -> DetectorSpec:  # type: ignore[override]
        return self.base.spec

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ClassConditional:
        X = check_matrix(X, "class_conditional.fit")
        self.overall_ = clone(self.base).fit(X)
        self.per_class_: dict[str, Detector] = {}
        if y is not None:
            keys = class_keys(y)
            classes, counts = np.unique(keys, return_counts=True)
            for label, count in zip(classes, counts):
                if count >= self.min_class_rows:
                    self.per_class_[str(label)] = clone(self.base).fit(X[keys == label])
        return self

    def fit_decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Each class's rows scored by a clone fitted on that class's rows alone (transductive detectors); the
        clones are kept, so new rows are scored as :meth:`fit` would have them scored."""
        X = check_matrix(X, "class_conditional.fit_decision_function")
        self.overall_ = clone(self.base)
        overall_scores = self.overall_.fit_decision_function(X)
        self.per_class_ = {}
        if y is None:
            return overall_scores
        keys = class_keys(y)
        classes, counts = np.unique(keys, return_counts=True)
        scores = overall_scores.astype("float64", copy=True)  # rows of small classes keep the all-rows score
        for label, count in zip(classes, counts):
            if count >= self.min_class_rows:
                rows = keys == label
                self.per_class_[str(label)] = clone(self.base)
                scores[rows] = self.per_class_[str(label)].fit_decision_function(X[rows])
        return scores

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = check_matrix(X, "class_conditional.decision_function")
        return self._by_class(X, y, lambda model, rows: model.decision_function(rows))

    def feature_outlyingness(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray | None:
        """The wrapped detector's per-feature outlyingness of each row, by its class's model."""
        check_is_fitted(self)
        if self.base.spec.explains != "features":
            return None
        X = check_matrix(X, "class_conditional.feature_outlyingness")
        return self._by_class(X, y, lambda model, rows: model.feature_outlyingness(rows))

    def _by_class(self, X: np.ndarray, y: np.ndarray | None, score) -> np.ndarray:
        """``score(model, rows)`` of each row by its class's model (one value or one row of values per row);
        rows of a class without a model of its own by the all-class model."""
        if y is None or not self.per_class_:
            return score(self.overall_, X)
        # Integer codes: comparing every row's label string once per class costs more than the lookup.
        codes, labels = pd.factorize(class_keys(y))
        scores: np.ndarray | None = None
        covered = np.zeros(len(X), dtype=bool)
        for code, label in enumerate(labels):
            model = self.per_class_.get(str(label))
            if model is not None:
                rows = codes == code
                part = score(model, X[rows])
                if scores is None:
                    scores = np.empty((len(X), *part.shape[1:]), dtype="float64")
                scores[rows] = part
                covered |= rows
        if scores is None:
            return score(self.overall_, X)
        if not covered.all():
            scores[~covered] = score(self.overall_, X[~covered])
        return scores


def class_keys(y: np.ndarray) -> np.ndarray:
    """Labels as strings, so 1, 1.0 and "1" name the same class; a missing label is a key of its own."""
    return as_text(np.asarray(y)).fillna("<missing>").to_numpy(dtype=object)


def required_labels(y: np.ndarray | None, who: str) -> np.ndarray:
    """:func:`class_keys` of ``y``; raises ``ValueError`` naming ``who`` when there is no label column."""
    if y is None:
        raise ValueError(f"{who} needs the label column")
    return class_keys(y)

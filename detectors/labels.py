"""Label-consistency checks that need no trusted reference: confident learning, kNN disagreement.

Each is transductive: it judges a row's label by the other rows scored with it (out-of-fold predictions,
neighbours). The confident-learning rule (Northcutt et al. 2021) is written here because the
library that ships it, cleanlab, is AGPL; it appears only in the optional benchmark extra.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, check_matrix, check_rows
from poisonguard.detectors.class_conditional import required_labels
from poisonguard.detectors.spec import DetectorSpec


class ConfidentLearningDetector(Detector):
    """Out-of-fold class probabilities, then the confident-learning rule as a continuous score.

    Per class ``k`` the threshold ``t_k`` is the mean out-of-fold probability of ``k`` over rows labelled
    ``k`` (its self-confidence). A row labelled ``y`` is a label issue when ``p_y < t_y`` while some other
    class has ``p_k >= t_k``; the score ``min(t_y - p_y, max_k (p_k - t_k))`` is positive exactly then and
    grows with the evidence.
    """

    # Out of fold: a row's probabilities come from the folds that left it out. Threshold: the rule itself.
    spec = DetectorSpec(reason="label", per_class=False, needs_labels=True, fitting="out_of_fold",
                        natural_threshold=0.0)

    def __init__(self, n_folds: int = 5, C: float = 1.0, random_state: int = 0) -> None:
        self.n_folds = n_folds
        self.C = C
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ConfidentLearningDetector:
        self.fit_decision_function(X, y)
        return self

    def fit_decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        X = check_matrix(X, "confident_learning.fit")
        labels = required_labels(y, "confident_learning")
        classes, counts = np.unique(labels, return_counts=True)
        if len(classes) < 2:
            raise ValueError("confident_learning needs at least two label classes")
        folds = int(min(self.n_folds, counts.min()))
        check_rows(X, 2 * len(classes), "confident_learning")
        model = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
        if folds >= 2:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            probabilities = cross_val_predict(model, X, labels, cv=splitter, method="predict_proba")
        else:  # a class with one row cannot be split; fall back to in-sample probabilities
            probabilities = model.fit(X, labels).predict_proba(X)
        given = np.searchsorted(classes, labels)
        rows = np.arange(len(labels))
        thresholds = np.array([probabilities[given == k, k].mean() for k in range(len(classes))])
        self.classes_, self.thresholds_ = classes, thresholds
        below_own = thresholds[given] - probabilities[rows, given]
        above_other = probabilities - thresholds
        above_other[rows, given] = -np.inf
        self.scores_ = np.minimum(below_own, above_other.max(axis=1))
        return self.scores_

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        if not hasattr(self, "scores_") or len(X) != len(self.scores_):
            raise ValueError("confident_learning scores only the rows it was fitted on (fit_decision_function)")
        return self.scores_


class KNNLabelDetector(Detector):
    """Share of a row's ``n_neighbors`` nearest neighbours (itself left out) whose label differs from its own."""

    # Threshold: most neighbours carry another label.
    spec = DetectorSpec(reason="label", per_class=False, needs_labels=True, fitting="transductive",
                        natural_threshold=0.5)

    def __init__(self, n_neighbors: int = 10) -> None:
        self.n_neighbors = n_neighbors

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> KNNLabelDetector:
        X = check_matrix(X, "knn_label.fit")
        check_rows(X, 2, "knn_label")
        self.labels_ = required_labels(y, "knn_label")
        self.index_ = NearestNeighbors(n_neighbors=min(self.n_neighbors + 1, len(X))).fit(X)
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        return self._disagreement(check_matrix(X, "knn_label.decision_function"), required_labels(y, "knn_label"), 0)

    def fit_decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        self.fit(X, y)
        return self._disagreement(check_matrix(X, "knn_label"), self.labels_, 1)

    def _disagreement(self, X: np.ndarray, labels: np.ndarray, skip_self: int) -> np.ndarray:
        k = min(self.n_neighbors + skip_self, self.index_.n_samples_fit_)
        _, neighbours = self.index_.kneighbors(X, n_neighbors=k)
        neighbours = neighbours[:, skip_self:]
        return (self.labels_[neighbours] != labels[:, None]).mean(axis=1)

"""PyOD outlier detectors behind the poisonguard contract.

Isolation Forest wraps PyOD's, pinning its parameters and seed so the rest of poisonguard never depends
on PyOD's API. ECOD is written here from its definition: see :class:`ECODDetector` for why.
"""

from __future__ import annotations

import warnings

import numpy as np

from poisonguard.detectors.base import Detector, check_matrix, check_rows


class ECODDetector(Detector):
    """Empirical-CDF outlier score (Li et al. 2022): how far in the tails each feature of a row lies.

    Written here rather than wrapping PyOD's ``ECOD``: PyOD recomputes the ECDFs on the training rows
    *together with the rows being scored*, so a row's score depends on the other rows of the batch (a
    batch half poisoned shifts every score), two chunks of one batch score differently from the whole, and
    each call costs a sort of the training set. Here the ECDFs are those of the fitted rows alone, kept
    sorted, and a row is scored by binary search: scores are a function of the row, and scoring is
    ``O(n_features * log n_train)`` per row.

    Per feature, the left and right tail probabilities are ``(1 + #fitted values <= x) / (n + 1)`` and
    ``(1 + #fitted values >= x) / (n + 1)``; as in ECOD, a feature's outlyingness is the largest of the
    left, right and skewness-chosen tail's ``-log`` probability, and a row's score their sum.
    """

    def __init__(self) -> None:
        pass

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ECODDetector:
        from scipy.stats import skew

        X = check_matrix(X, "ecod.fit")
        check_rows(X, 2, "ecod")
        self.sorted_ = np.sort(X, axis=0)
        with warnings.catch_warnings():
            # A constant feature (a one-hot column within a class) has no skewness; treat it as symmetric.
            warnings.simplefilter("ignore", RuntimeWarning)
            self.skew_sign_ = np.sign(np.nan_to_num(skew(X, axis=0)))
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        X = check_matrix(X, "ecod.decision_function")
        n_rows = len(self.sorted_)
        scores = np.zeros(len(X))
        for j in range(X.shape[1]):  # a loop over features; every row of a feature at once
            column = self.sorted_[:, j]
            at_most = np.searchsorted(column, X[:, j], side="right")
            at_least = n_rows - np.searchsorted(column, X[:, j], side="left")
            left = -np.log((1.0 + at_most) / (n_rows + 1.0))
            right = -np.log((1.0 + at_least) / (n_rows + 1.0))
            sign = self.skew_sign_[j]
            chosen = left if sign < 0 else right if sign > 0 else left + right
            scores += np.maximum(np.maximum(left, right), chosen)
        return scores


class IForestDetector(Detector):
    """Isolation Forest (Liu et al. 2008): rows that random splits isolate quickly are unusual."""

    def __init__(self, n_estimators: int = 200, max_samples: int | str = "auto", random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> IForestDetector:
        from pyod.models.iforest import IForest

        self.model_ = IForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            random_state=self.random_state,
            n_jobs=1,
        ).fit(check_matrix(X, "iforest.fit"))
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        return self.model_.decision_function(check_matrix(X, "iforest.decision_function"))

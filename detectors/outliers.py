"""PyOD outlier detectors behind the poisonguard contract.

PyOD already gives well-tested ECOD and Isolation Forest; these wrappers only pin their parameters,
make them deterministic and check the input, so the rest of poisonguard never depends on PyOD's API.
"""

from __future__ import annotations

import warnings

import numpy as np

from poisonguard.detectors.base import Detector, check_matrix


class ECODDetector(Detector):
    """Empirical-CDF outlier score (Li et al. 2022): how far in the tails each feature of a row lies.

    Parameter-free and fast. Note PyOD scores new rows by re-ranking them together with the training rows,
    so a row's score depends slightly on the other rows scored with it.
    """

    def __init__(self) -> None:
        pass

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ECODDetector:
        from pyod.models.ecod import ECOD

        self.model_ = ECOD(n_jobs=1).fit(check_matrix(X, "ecod.fit"))
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        with warnings.catch_warnings():
            # A feature constant within a class (a one-hot column, a missing-value indicator) makes scipy's
            # skewness warn; PyOD already maps its NaN skew to 0, which is the right answer there.
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
            return self.model_.decision_function(check_matrix(X, "ecod.decision_function"))


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

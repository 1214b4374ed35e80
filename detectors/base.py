"""The contract every poisonguard detector follows: a scikit-learn estimator with PyOD's scoring sign."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state

from poisonguard.detectors.spec import DetectorSpec


class Detector(BaseEstimator, ABC):
    """Scores rows; higher means more suspicious.

    A scikit-learn estimator: the constructor takes only parameters (no data, no I/O), so
    ``get_params``, ``set_params``, ``sklearn.base.clone`` and ``repr`` work; ``fit`` validates its input,
    learns and keeps what it learned in attributes ending in ``_``; ``decision_function`` raises
    ``NotFittedError`` before ``fit``. What a scan needs to know about it (labels, a reference, how it is
    fitted, what it reads, its threshold without a reference) is its class's :class:`DetectorSpec`.
    """

    spec: ClassVar[DetectorSpec] = DetectorSpec()
    # With ``null_model``: what must hold for the limit its own model of clean rows sets, as a report says it.
    null_assumption: ClassVar[str] = "its own model of clean rows holds"
    # With ``null_model``: whether the rows of ``null_scores`` are bootstrap replicates of a fitted law (the
    # false-quarantine interval is their spread) rather than rows it was fitted on (resampled for it).
    null_replicates: ClassVar[bool] = False

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> Detector:
        """Learn from ``X`` (n_rows x n_features, finite floats) and optional labels; return ``self``."""

    @abstractmethod
    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """One float per row of ``X``; higher is more suspicious. Raises ``NotFittedError`` before :meth:`fit`."""

    def fit_decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Fit on ``X`` and score the same rows; detectors that compare a row with its neighbours override
        this to leave the row itself out."""
        return self.fit(X, y).decision_function(X, y)

    def null_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """What the detector's own model says clean rows score, for a class whose spec declares
        ``null_model``: rows of outcomes, each row equally likely, with the scores it could take (rows x
        outcomes) and the chance of each (rows summing to 1). A row is one the detector was fitted on (a label
        model: the margin each label would give it) or one draw of the detector's fitted law (a law whose
        parameter it estimated: one row per bootstrap replicate of the estimate). Without a reference, a scan
        sets the detector's limit where that model expects its share of the budget
        (``poisonguard.decide.calibration.model_limit``) instead of extrapolating the tail of its scores, and
        its false-quarantine interval from resampling the rows
        (``poisonguard.decide.calibration.model_false_quarantine``)."""
        raise NotImplementedError(f"{type(self).__name__} declares no null model (DetectorSpec.null_model)")

    # What a person reads beside a flag. A detector that can say more than its score overrides these; the
    # scan asks only about the rows it flagged.
    def feature_outlyingness(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray | None:
        """How much each feature adds to each row's score (rows x features, higher is more unusual), or
        ``None`` when the score cannot be attributed to features."""
        return None

    def label_probabilities(self, X: np.ndarray,
                            rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """The classes the detector models and each row's probability of each (rows x classes), or ``None``
        when it does not predict labels. ``rows``: where the rows of ``X`` are among the rows a transductive
        detector was fitted on (``fit_decision_function``), so it can answer as it judged them."""
        return None


def random_generator(random_state) -> np.random.Generator:
    """A numpy ``Generator`` for ``random_state`` as scikit-learn reads it (``None``, an int or a
    ``RandomState``, checked by ``check_random_state``). An int seeds ``default_rng`` directly, so a seeded
    detector draws the same rows as before it took ``RandomState`` objects."""
    if random_state is None or isinstance(random_state, (int, np.integer)):
        check_random_state(random_state)  # raises ValueError for a negative or oversized seed
        return np.random.default_rng(random_state)
    return np.random.default_rng(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def fit_sample(n_rows: int, max_rows: int, random_state) -> tuple[np.ndarray, np.ndarray]:
    """The rows a detector capped at ``max_rows`` fits on (all, or a seeded sample in row order) and the
    others, which it then judges as new rows."""
    fitted = np.arange(n_rows)
    if n_rows > max_rows:
        fitted = np.sort(random_generator(random_state).choice(n_rows, max_rows, replace=False))
    return fitted, np.setdiff1d(np.arange(n_rows), fitted)


def check_rows(X: np.ndarray | sparse.spmatrix, minimum: int, who: str) -> None:
    """Raise ``ValueError`` naming ``who`` when ``X`` (dense or sparse) has fewer than ``minimum`` rows."""
    if X.shape[0] < minimum:
        raise ValueError(
            f"{who}: needs at least {minimum} rows to fit, got {X.shape[0]}; a class this small is scored by the "
            "all-class model (raise min_class_rows) or needs more data"
        )


def check_matrix(X: np.ndarray, who: str) -> np.ndarray:
    """``X`` as a 2-D float64 array with only finite values; raises ``ValueError`` naming ``who``."""
    matrix = np.asarray(X, dtype="float64")
    if matrix.ndim != 2:
        raise ValueError(f"{who}: expected a 2-D feature matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{who}: features must be finite; encode or impute NaN and inf first")
    return matrix


def check_words(X, who: str) -> np.ndarray | sparse.csr_matrix:
    """``X`` as :func:`check_matrix` checks it, or, given a scipy sparse matrix (the ``words`` view), as a
    float64 CSR matrix whose stored values are finite; raises ``ValueError`` naming ``who``."""
    if not sparse.issparse(X):
        return check_matrix(X, who)
    matrix = sparse.csr_matrix(X, dtype="float64")
    if not np.isfinite(matrix.data).all():
        raise ValueError(f"{who}: features must be finite; encode or impute NaN and inf first")
    return matrix

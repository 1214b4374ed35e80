"""The contract every poisonguard detector follows (modelled on PyOD's ``BaseDetector``)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Detector(ABC):
    """Scores rows; higher means more suspicious.

    Subclasses take only parameters in ``__init__`` (no data, no I/O), learn in ``fit`` and keep what they
    learned in attributes ending in ``_``. ``reason`` is the family of the reason code a flag from this
    detector gives a row (``outlier`` -> ``outlier:<name>``); the ``per_class``, ``needs_labels`` and
    ``needs_reference`` flags tell the scoring step how and when to run it.
    """

    reason: str = "outlier"
    per_class: bool = True  # fit one copy per label class when a label column is given
    needs_labels: bool = False  # cannot run without a label column
    needs_reference: bool = False  # cannot run without trusted reference data
    # A transductive detector judges rows against the very rows it is fitted on (spectral statistics,
    # clusters, neighbours, out-of-fold predictions): the scoring step fits it on the batch together with
    # held-out trusted rows and calls fit_decision_function, so both are scored the same way.
    transductive: bool = False
    # Whether, once fitted, it can score rows it was not fitted on. A chunked scan fits even transductive
    # detectors on a sample of the batch and scores every chunk with them; out-of-fold predictions cannot.
    scores_new_rows: bool = True
    # Which representation of the rows it reads: "features" (the encoded columns) or "probe" (hidden
    # activations of a small network trained on the labelled rows, where a backdoor trigger stands out).
    representation: str = "features"
    # Without trusted data, a detector whose score has a meaning of its own flags rows above this value
    # (confident learning's rule, a majority of disagreeing neighbours); the others use the robust
    # median + z * MAD rule of the batch's scores.
    natural_threshold: float | None = None

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> Detector:
        """Learn from ``X`` (n_rows x n_features, finite floats) and optional labels; return ``self``."""

    @abstractmethod
    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """One float per row of ``X``; higher is more suspicious. Requires :meth:`fit` first."""

    def fit_decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Fit on ``X`` and score the same rows; detectors that compare a row with its neighbours override
        this to leave the row itself out."""
        return self.fit(X, y).decision_function(X, y)

    def get_params(self) -> dict:
        """The constructor parameters, so a detector can be cloned unfitted (as scikit-learn's ``clone``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    @classmethod
    def _param_names(cls) -> list[str]:
        import inspect

        signature = inspect.signature(cls.__init__)
        return [p for p in signature.parameters if p != "self"]

    def clone(self) -> Detector:
        return type(self)(**self.get_params())


def check_rows(X: np.ndarray, minimum: int, who: str) -> None:
    """Raise ``ValueError`` naming ``who`` when ``X`` has fewer than ``minimum`` rows."""
    if len(X) < minimum:
        raise ValueError(
            f"{who}: needs at least {minimum} rows to fit, got {len(X)}; a class this small is scored by the "
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

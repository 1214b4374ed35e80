"""Representations of rows beyond the encoded features: hidden activations of a small probe network.

A backdoor trigger is often a weak signal in the raw columns but a strong one in what a model trained on
the poisoned labels learned: the network must represent the trigger to fit the relabelled rows. So the
backdoor checks (spectral signatures, activation clustering, robust spectra) read the hidden-layer
activations of a one-hidden-layer scikit-learn MLP trained on the labelled rows, the batch included.
Without a label column there is nothing to train on and those checks read the encoded features instead.

When the batch carries a precomputed embedding, that is the representation the user's own model learned,
and the checks read it, standardised, instead. It comes either as one column per dimension (the columns
sharing ``embedding_prefix``) or as one column holding a list of numbers per row (``embedding_column``:
a Parquet list column or JSON arrays).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from poisonguard import ROW_ID
from poisonguard.cells import list_cells
from poisonguard.config import IOSettings

PROBE_HIDDEN_UNITS = 32
PROBE_MAX_ROWS = 50_000  # the probe is trained on a seeded sample of at most this many rows


class Probe:
    """The probe network's hidden layer: ``fit`` trains the MLP, ``activations`` maps any rows through it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def fit(self, X_train: np.ndarray, y_train: np.ndarray) -> Probe:
        rng = np.random.default_rng(self.seed)
        sample = rng.permutation(len(X_train))[:PROBE_MAX_ROWS]
        probe = MLPClassifier(hidden_layer_sizes=(PROBE_HIDDEN_UNITS,), max_iter=200, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a probe need not converge fully to be useful
            probe.fit(X_train[sample], np.asarray(y_train, dtype=object)[sample].astype(str))
        self.weights_, self.bias_ = probe.coefs_[0], probe.intercepts_[0]
        return self

    def activations(self, X: np.ndarray) -> np.ndarray:
        return np.maximum(X @ self.weights_ + self.bias_, 0.0)

    def rows(self, frame: pd.DataFrame, X: np.ndarray) -> np.ndarray:
        """The representation of the rows of ``frame``, encoded as ``X``: their hidden activations."""
        return self.activations(X)


def probe_activations(
    X_train: np.ndarray, y_train: np.ndarray, X_score: list[np.ndarray], seed: int
) -> list[np.ndarray]:
    """Train the probe on ``(X_train, y_train)``; return the hidden ReLU activations of each matrix in ``X_score``."""
    probe = Probe(seed).fit(X_train, y_train)
    return [probe.activations(X) for X in X_score]


def embedding_columns(frame_columns, io: IOSettings) -> list[str]:
    """The columns the batch's embedding is read from; raises ``ValueError`` when there are none."""
    if io.embedding_column is not None:
        if io.embedding_column not in frame_columns:
            columns = ", ".join(str(c) for c in frame_columns if c != ROW_ID)
            raise ValueError(f"no column is named {io.embedding_column!r}; columns are: {columns}")
        return [io.embedding_column]
    columns = [c for c in frame_columns if str(c).startswith(io.embedding_prefix)]
    if not columns:
        raise ValueError(f"no column starts with the embedding prefix {io.embedding_prefix!r}")
    return columns


class EmbeddingView:
    """The batch's own embedding as the backdoor checks read it: ``fit`` learns each dimension's mean and
    deviation from trusted (or sampled) rows, ``rows`` standardises any frame's embedding with them.
    Missing and non-finite values sit at the mean (0); see :class:`ListColumnScaler` for list columns.
    """

    def __init__(self, io: IOSettings) -> None:
        self.io = io

    def fit(self, frame: pd.DataFrame) -> EmbeddingView:
        self.columns_ = embedding_columns(frame.columns, self.io)
        if self.io.embedding_column is not None:
            self.scaler_ = ListColumnScaler().fit(frame[self.io.embedding_column])
        else:
            self.centre_, self.scale_ = nan_scale(self._prefix_columns(frame))
        return self

    def rows(self, frame: pd.DataFrame, X: np.ndarray | None = None) -> np.ndarray:
        """The standardised embedding of the rows of ``frame`` (``X``, their encoded columns, is not read)."""
        if self.io.embedding_column is not None:
            return self.scaler_.transform(frame[self.io.embedding_column])
        return standardise(self._prefix_columns(frame), self.centre_, self.scale_)

    def _prefix_columns(self, frame: pd.DataFrame) -> np.ndarray:
        matrix = frame[self.columns_].to_numpy(dtype="float64")
        return np.where(np.isfinite(matrix), matrix, np.nan)


class ListColumnScaler(BaseEstimator, TransformerMixin):
    """A column of lists of numbers as one standardised column per position, as many as the fitted rows'
    most common length; longer lists are cut, and missing positions, invalid cells and non-finite values
    sit at the mean (0). A scikit-learn transformer, so the feature encoder uses it too."""

    def fit(self, cells, y=None):
        lists = list_cells(_series(cells))
        self.width_ = lists.modal_length()
        self.centre_, self.scale_ = nan_scale(lists.matrix(self.width_))
        return self

    def transform(self, cells):
        return standardise(list_cells(_series(cells)).matrix(self.width_), self.centre_, self.scale_)

    def get_feature_names_out(self, input_features=None):
        return np.array([f"embedding{i}" for i in range(self.width_)], dtype=object)


def _series(cells) -> pd.Series:
    return cells.iloc[:, 0] if isinstance(cells, pd.DataFrame) else pd.Series(cells)


def nan_scale(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and deviations of ``basis``, ignoring NaN; an all-missing column gets 0 and 1, a
    constant one deviation 1 (it is only centred)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no mean
        centre, scale = np.nanmean(basis, axis=0), np.nanstd(basis, axis=0)
    return np.nan_to_num(centre), np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def standardise(matrix: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(matrix - centre) / scale`` with NaN cells at 0."""
    return np.nan_to_num((matrix - centre) / scale, nan=0.0)

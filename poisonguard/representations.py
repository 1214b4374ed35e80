"""Representations of rows beyond the encoded features: hidden activations of a small probe network.

A backdoor trigger is often a weak signal in the raw columns but a strong one in what a model trained on
the poisoned labels learned: the network must represent the trigger to fit the relabelled rows. So the
backdoor checks (spectral signatures, activation clustering, robust spectra) read the hidden-layer
activations of a one-hidden-layer scikit-learn MLP trained on the labelled rows, the batch included.
Without a label column there is nothing to train on and those checks read the encoded features instead.

When the batch carries a precomputed embedding (columns sharing a prefix, ``embedding_prefix``), that is
the representation the user's own model learned, and the checks read it, standardised, instead.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

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


def probe_activations(
    X_train: np.ndarray, y_train: np.ndarray, X_score: list[np.ndarray], seed: int
) -> list[np.ndarray]:
    """Train the probe on ``(X_train, y_train)``; return the hidden ReLU activations of each matrix in ``X_score``."""
    probe = Probe(seed).fit(X_train, y_train)
    return [probe.activations(X) for X in X_score]


def embedding_columns(frame_columns, prefix: str) -> list[str]:
    """The columns of a precomputed embedding; raises ``ValueError`` when none has the prefix."""
    columns = [c for c in frame_columns if str(c).startswith(prefix)]
    if not columns:
        raise ValueError(f"no column starts with the embedding prefix {prefix!r}")
    return columns


def embedding_views(frames: list, prefix: str) -> list[np.ndarray]:
    """Each frame's embedding columns as a float matrix, standardised with the first non-empty frame's
    statistics (a cross-fitted reference has no rows kept for fitting alone)."""
    columns = embedding_columns(frames[0].columns, prefix)
    matrices = [np.nan_to_num(f[columns].to_numpy(dtype="float64"), nan=0.0, posinf=0.0, neginf=0.0) for f in frames]
    basis = next((m for m in matrices if len(m)), matrices[0])
    centre, scale = basis.mean(axis=0), basis.std(axis=0)
    scale[scale == 0] = 1.0
    return [(m - centre) / scale for m in matrices]

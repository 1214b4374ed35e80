"""Representations of rows beyond the encoded features: hidden activations of a small probe network.

A backdoor trigger is often a weak signal in the raw columns but a strong one in what a model trained on
the poisoned labels learned: the network must represent the trigger to fit the relabelled rows. So the
backdoor checks (spectral signatures, activation clustering, robust spectra) read the hidden-layer
activations of a one-hidden-layer scikit-learn MLP trained on the labelled rows, the batch included.
Without a label column there is nothing to train on and those checks read the encoded features instead.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

PROBE_HIDDEN_UNITS = 32
PROBE_MAX_ROWS = 50_000  # the probe is trained on a seeded sample of at most this many rows


def probe_activations(
    X_train: np.ndarray, y_train: np.ndarray, X_score: list[np.ndarray], seed: int
) -> list[np.ndarray]:
    """Train the probe on ``(X_train, y_train)``; return the hidden ReLU activations of each matrix in ``X_score``."""
    rng = np.random.default_rng(seed)
    sample = rng.permutation(len(X_train))[:PROBE_MAX_ROWS]
    probe = MLPClassifier(hidden_layer_sizes=(PROBE_HIDDEN_UNITS,), max_iter=200, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe need not converge fully to be useful
        probe.fit(X_train[sample], np.asarray(y_train, dtype=object)[sample].astype(str))
    weights, bias = probe.coefs_[0], probe.intercepts_[0]
    return [np.maximum(X @ weights + bias, 0.0) for X in X_score]

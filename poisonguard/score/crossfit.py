"""Which reference rows fit the detectors and which calibrate them: one split, or cross-fitting.

A large reference is split once: a detector is fitted on one part and the other part's scores calibrate
the batch's. A small one cannot spare half its rows: at a 1% budget the held-out half of a 284-row
reference is 142 rows, and a threshold set by the most extreme of them moves by orders of magnitude from
one split to the next. There every reference row calibrates instead
(cross-conformal, Vovk 2015): the rows are cut into ``k`` folds, a copy of each detector is fitted on all
folds but one and scores that one. A batch row is scored by every copy, and each copy's score is compared
with the held-out rows of that copy's fold (:func:`poisonguard.decide.calibration.cross_conformal_p_values`);
the score a report shows is the copies' mean.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from poisonguard.config import CalibrationSettings
from poisonguard.detectors.base import Detector
from poisonguard.detectors.spec import DetectorSpec

# The held-out part is large enough to calibrate alone when this many of its rows lie beyond the
# budget's quantile: 1,000 held-out rows at a 1% budget.
RANK_ROWS = 10


def calibration_folds(n_rows: int, labels: np.ndarray | None, settings: CalibrationSettings, seed: int,
                      budget: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of (rows to fit on, rows to calibrate with), as positions among ``n_rows`` reference rows.

    At most ``max_reference_rows`` rows are used. One pair (a split of ``holdout_fraction`` to
    calibration) when the held-out part would hold at least ``RANK_ROWS / budget`` rows (``budget``: the
    detectors' share of clean rows);
    else ``calibration_folds`` pairs whose calibration parts cover every used row once. Stratified by
    class where every class has enough rows; seeded by ``seed``.
    """
    codes = None
    if labels is not None:
        # Sorted integer codes split exactly as the labels themselves would, at a fraction of the cost.
        codes, _ = pd.factorize(labels, sort=True)
    used = min(n_rows, settings.max_reference_rows)
    holdout_rows = min(max(1, math.ceil(used * settings.holdout_fraction)), used - 1)  # as scikit-learn rounds
    if holdout_rows * budget >= RANK_ROWS or used < 2 * settings.calibration_folds:
        stratify = codes if codes is not None and np.bincount(codes).min() >= 2 else None
        fit, hold = train_test_split(
            np.arange(n_rows), train_size=used - holdout_rows, test_size=holdout_rows,
            random_state=seed, stratify=stratify,
        )
        return [(fit, hold)]
    rows = np.arange(n_rows)
    if used < n_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n_rows, used, replace=False))
    k = settings.calibration_folds
    if codes is not None and np.bincount(codes[rows]).min() >= k:
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(rows, codes[rows])
    else:
        splits = KFold(k, shuffle=True, random_state=seed).split(rows)
    return [(rows[fit], rows[hold]) for fit, hold in splits]


class FoldEnsemble(Detector):
    """The ``k`` copies of one detector fitted by :func:`cross_fit`; a row's score is their mean."""

    def __init__(self, members: list[Detector]) -> None:
        self.members = members

    @property
    def spec(self) -> DetectorSpec:  # type: ignore[override]
        return self.members[0].spec

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> FoldEnsemble:
        raise TypeError("a FoldEnsemble is built fitted by cross_fit; it cannot be refitted")

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        return self.fold_scores(X, y).mean(axis=0)

    def fold_scores(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Every copy's scores of ``X``, one row per fold (``k`` x rows)."""
        return np.vstack([member.decision_function(X, y) for member in self.members])

    def feature_outlyingness(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray | None:
        """The copies' mean per-feature outlyingness, as the score is their mean."""
        parts = [member.feature_outlyingness(X, y) for member in self.members]
        return None if any(part is None for part in parts) else np.mean(parts, axis=0)

    def label_probabilities(self, X: np.ndarray,
                            rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """The copies' mean class probabilities; a class a copy never saw counts as probability 0 there."""
        parts = [member.label_probabilities(X) for member in self.members]
        if any(part is None for part in parts):
            return None
        position: dict = {}
        for classes, _ in parts:
            for label in classes:
                position.setdefault(label, len(position))
        mean = np.zeros((X.shape[0], len(position)))
        for classes, probabilities in parts:
            mean[:, [position[label] for label in classes]] += probabilities / len(parts)
        return np.array(list(position), dtype=object), mean


def fold_scores(detector: Detector, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """Scores of ``X`` by each fold's copy of ``detector`` (``k`` x rows); one row for a detector fitted once."""
    if isinstance(detector, FoldEnsemble):
        return detector.fold_scores(X, y)
    return detector.decision_function(X, y)[np.newaxis, :]


def holdout_folds(folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The fold of each calibration row, in the order :func:`cross_fit` returns their scores."""
    return np.repeat(np.arange(len(folds)), [len(hold) for _, hold in folds])


def cross_fit(
    detector: Detector, X: np.ndarray, y: np.ndarray | None, folds: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[Detector, np.ndarray]:
    """Fit ``detector`` for calibration on ``X`` (the used reference rows, encoded) and score it out of fold.

    ``folds`` index ``X`` (see :func:`fold_positions`). Returns the fitted scorer (``detector`` itself for
    one split, else a :class:`FoldEnsemble` of clones) and the calibration rows' scores, in the order of
    the folds' calibration parts.
    """
    if len(folds) == 1:
        fit, hold = folds[0]
        detector.fit(X[fit], None if y is None else y[fit])
        return detector, detector.decision_function(X[hold], None if y is None else y[hold])
    members, scores = [], []
    for fit, hold in folds:
        member = clone(detector).fit(X[fit], None if y is None else y[fit])
        members.append(member)
        scores.append(member.decision_function(X[hold], None if y is None else y[hold]))
    return FoldEnsemble(members), np.concatenate(scores)


def fold_positions(folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The reference rows the folds use, in the order fitting-only rows then calibration rows, and the
    folds re-expressed as positions in that order (what :func:`cross_fit` indexes)."""
    calibrate = np.concatenate([hold for _, hold in folds])
    fit_only = np.setdiff1d(np.concatenate([fit for fit, _ in folds]), calibrate)
    rows = np.concatenate([fit_only, calibrate])
    position = np.empty(rows.max() + 1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    return rows, [(position[fit], position[hold]) for fit, hold in folds]

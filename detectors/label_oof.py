"""Label consistency without a trusted reference: a model of the batch's own labels, out of fold.

Each row is judged by a logistic regression fitted on the other folds, so it never learned that row's
label: a flipped label, a near-copy of a row relabelled, a subpopulation whose labels were moved all sit
where the model expects another class. The score is the logit margin against the given label,
``log(1 - p) - log(p)`` (``p``: the out-of-fold probability of the given label).

Without a reference its limit comes from its own probabilities, not from the tail of its scores: were each
row's label drawn from its out-of-fold probabilities, the share of rows whose margin passes a limit is
``mean_i sum_c p_ic [margin(p_ic) > limit]`` (:meth:`null_scores`,
:func:`poisonguard.decide.calibration.model_limit`), which holds as far as the probabilities are
calibrated, and the label noise a poisoned batch carries makes them less sure, so more cautious. The tail
model extrapolated from the body of the margins, which on the development table put the limit beyond
most flipped rows (breast cancer's targeted flips: recall 0.00 at 0.0-0.7% false quarantine, no reference).
Temperature scaling of the out-of-fold probabilities (one temperature fitted by likelihood to the batch's
labels, poison included) made them less sure and lost on the development table, 5 seeds without a
reference: random flips on digits 0.78 -> 0.57 and 0.60 -> 0.35, breast_cancer's targeted flips 0.26 ->
0.16, its flipped replays 0.39 -> 0.30; the near-duplicate texts it was meant for (label_oof at 0.00-0.03%
of clean rows, where its oracle reaches 0.73) stay a gap.

A model that cannot predict the labels cannot judge them: when its balanced accuracy out of fold is
below ``min_accuracy`` the detector refuses to fit. On the development table the photo patches' four
classes are predicted at 47-48% (chance 25%), and there clean rows' margins have a second mode of
confidently "wrong" rows that a tail model calls poison (4-7% of clean rows flagged); the other datasets
are predicted at 68-96% and lost nothing to it.

The confident-learning rule (``confident_learning``) reads the same out-of-fold probabilities but flags
by a threshold of its own, which flags ordinary rows wherever classes overlap; this one leaves the
threshold to the calibration.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, check_words, fit_sample
from poisonguard.detectors.class_conditional import required_labels
from poisonguard.detectors.label_model import PROBABILITY_FLOOR, given_label_probability
from poisonguard.detectors.spec import DetectorSpec


class OutOfFoldLabelDetector(Detector):
    """The logit margin against each row's label under a model fitted on the other folds of the batch.

    ``fit_decision_function`` scores every fitted row out of fold; ``decision_function`` scores new rows
    (a chunked scan's) by the folds' models averaged, none of which saw them. A batch above
    ``max_fit_rows`` is fitted on a seeded sample of that many rows; the rest are new rows.
    """

    # Transductive: it learns the batch's own labels, so it runs without a reference (with one, the
    # reference-trained label_model is the stronger judge).
    spec = DetectorSpec(reason="label", per_class=False, needs_labels=True, fitting="transductive",
                        reads="words", auto=("batch",), explains="label", null_model=True)
    null_assumption = "its out-of-fold probabilities are calibrated"

    def __init__(self, n_folds: int = 5, C: float = 1.0, min_accuracy: float = 0.6, max_fit_rows: int = 50_000,
                 random_state: int = 0) -> None:
        self.n_folds = n_folds
        self.C = C
        self.min_accuracy = min_accuracy
        self.max_fit_rows = max_fit_rows
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> OutOfFoldLabelDetector:
        self.fit_decision_function(X, y)
        return self

    def fit_decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        X = check_words(X, "label_oof.fit")
        labels = np.asarray(required_labels(y, "label_oof"), dtype=object)
        fitted, others = fit_sample(X.shape[0], self.max_fit_rows, self.random_state)
        classes, codes = np.unique(labels[fitted].astype(str), return_inverse=True)
        counts = np.bincount(codes)
        if len(classes) < 2 or counts.min() < 2:
            raise ValueError("label_oof needs at least two label classes with two rows each")
        splitter = StratifiedKFold(int(min(self.n_folds, counts.min())), shuffle=True,
                                   random_state=self.random_state)
        model = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
        probabilities = np.empty((len(fitted), len(classes)))
        self.models_ = []
        for train, held in splitter.split(X[fitted], codes):
            fold_model = clone(model).fit(X[fitted[train]], codes[train])
            probabilities[held] = fold_model.predict_proba(X[fitted[held]])
            self.models_.append(fold_model)
        self.classes_ = classes
        # Kept so that a flagged row's expected label is the one its out-of-fold model gave it.
        self.fitted_rows_, self.oof_probabilities_ = fitted, probabilities
        self.accuracy_ = float(balanced_accuracy_score(codes, probabilities.argmax(axis=1)))
        if self.accuracy_ < self.min_accuracy:
            del self.models_
            raise ValueError(
                f"label_oof: a model of the batch predicts its labels with balanced accuracy "
                f"{self.accuracy_:.0%} out of fold, below min_accuracy {self.min_accuracy:.0%}: too weak to "
                f"judge a row's label"
            )
        scores = np.empty(X.shape[0])
        scores[fitted] = _margin(probabilities[np.arange(len(codes)), codes])
        if len(others):
            scores[others] = self.decision_function(X[others], labels[others])
        return scores

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self, "models_")
        X = check_words(X, "label_oof.decision_function")
        labels = np.asarray(required_labels(y, "label_oof"), dtype=object).astype(str)
        if X.shape[0] == 0:
            return np.zeros(0)
        probabilities = self._fold_probabilities(X)
        # A label the batch's fitted rows never carried has probability 0: the largest margin.
        return _margin(given_label_probability(probabilities, self.classes_, labels))

    def null_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Per fitted row, the margin each class would give it as its label, and that class's out-of-fold
        probability: were the batch's labels drawn from the model (clean), a row scores each margin with
        that chance. Label noise makes the models less sure, which puts more chance on large margins: the
        limit moves up, never down."""
        check_is_fitted(self, "models_")
        return _margin(self.oof_probabilities_), self.oof_probabilities_

    def label_probabilities(self, X: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The folds' mean class probabilities; for rows it was fitted on (``rows``: their positions in
        :meth:`fit_decision_function`'s ``X``), those of the fold that left the row out."""
        check_is_fitted(self, "models_")
        probabilities = self._fold_probabilities(check_words(X, "label_oof.label_probabilities"))
        if rows is not None:
            at = np.searchsorted(self.fitted_rows_, rows)
            last = len(self.fitted_rows_) - 1
            fitted = (at <= last) & (self.fitted_rows_[np.minimum(at, last)] == rows)
            probabilities[fitted] = self.oof_probabilities_[at[fitted]]
        return self.classes_, probabilities

    def _fold_probabilities(self, X: np.ndarray) -> np.ndarray:
        if X.shape[0] == 0:
            return np.zeros((0, len(self.classes_)))
        return np.mean([model.predict_proba(X) for model in self.models_], axis=0)


def _margin(given: np.ndarray) -> np.ndarray:
    """``log(1 - p) - log(p)`` of each row's probability ``given`` of its label (kept within the float floor)."""
    given = np.clip(given, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    return np.log1p(-given) - np.log(given)

"""Trigger values: one value of a column shared by many rows that almost all carry one label, on rows whose
other columns say another class.

A BadNets-style backdoor sets a few columns to fixed values (the trigger) on rows of other classes and
relabels them to a target class. Without trusted data the usual checks miss it once the triggered rows are
a large share of the target class: they are no longer a minority inside it (spectral signatures and
activation clustering look for one), and any model fitted on the batch learns the trigger, so the labels
look consistent (confident learning's scores invert). What the trigger leaves is a (column, value) pair
held by many rows of which nearly all carry one label, far beyond that label's share of the batch.
Natural data has such pairs too (a category that predicts the label); a trigger's rows differ in that,
judged without it, they look like the classes they were taken from.

So, per column, every value held by at least ``min_rows`` rows and at most ``max_share`` of them is tested:
the binomial tail of its most common label's count against that label's share of all rows, Bonferroni-
corrected over every value tested. Values significant at ``alpha`` whose rows carry that label at least
``min_purity`` of the time are trigger candidates. Each column holding candidates is then judged on its
own: a logistic regression is fitted on the rows that hold none of the column's candidate values (a
seeded sample of at most ``max_fit_rows``), without that column, and scores each row that holds one: one
minus the probability it gives the row's label. A value is kept only when most of the rows holding it
disagree with their label that way: a natural predictor leaves most of its rows agreeing. Judged per
column, a predictive value of one column does not take its rows out of the model that judges another.
Rows that hold no kept value score 0; a row holding several scores their highest. At most ``max_columns`` columns are judged, those with the most
significant candidates.

Written by hand: no library at hand tests column values for label purity (PyOD scores rows without
labels; cleanlab and ART judge labels or activations with a model fitted on the poisoned rows, which has
learned the trigger).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, check_matrix, check_rows, random_generator
from poisonguard.detectors.class_conditional import required_labels
from poisonguard.detectors.spec import DetectorSpec


class TriggerValueDetector(Detector):
    """Rows holding a label-pure repeated value whose other columns disagree with their label.

    Fitted attributes: ``candidates_`` (column -> the ``(value, label)`` pairs it is judged on) and
    ``models_`` (column -> the logistic regression, fitted without that column, that judges them).
    """

    # Transductive: the candidate values are found among the rows scored. Threshold: the model fitted
    # without the value gives the row's label less than even odds.
    spec = DetectorSpec(reason="backdoor", per_class=False, needs_labels=True, fitting="transductive",
                        natural_threshold=0.5)

    def __init__(self, min_rows: int = 5, max_share: float = 0.5, min_purity: float = 0.8,
                 alpha: float = 1e-3, max_columns: int = 20, max_fit_rows: int = 50_000, C: float = 1.0,
                 random_state: int = 0) -> None:
        self.min_rows = min_rows
        self.max_share = max_share
        self.min_purity = min_purity
        self.alpha = alpha
        self.max_columns = max_columns
        self.max_fit_rows = max_fit_rows
        self.C = C
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> TriggerValueDetector:
        X = check_matrix(X, "trigger_values.fit")
        labels = required_labels(y, "trigger_values")
        check_rows(X, 2 * self.min_rows, "trigger_values")
        self.candidates_: dict[int, list[tuple[float, str]]] = {}
        self.models_: dict[int, LogisticRegression] = {}
        rng = random_generator(self.random_state)
        for column, pairs in self._candidates(X, labels).items():
            held = _holding(X, labels, column, pairs)
            holders = np.logical_or.reduce(held)
            # A value held by nearly every row of its label (a column that defines the label) cannot be
            # judged: the model would never see that class.
            kept = [i for i, (_, label) in enumerate(pairs)
                    if np.sum(~holders & (labels == label)) >= self.min_rows]
            if not kept:
                continue
            outside = np.flatnonzero(~np.logical_or.reduce([held[i] for i in kept]))
            sample = np.sort(rng.permutation(outside)[: self.max_fit_rows])
            model = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
            model.fit(np.delete(X[sample], column, axis=1), labels[sample])
            # A trigger's rows, as a group, disagree with their label; a value that predicts the label
            # along with the other columns leaves most of its rows agreeing, and only its borderline rows
            # would be flagged. So a value is kept only when most of the rows holding it disagree.
            kept = [i for i in kept
                    if np.median(_disagreement(model, X[held[i]], labels[held[i]], column)) > self.spec.natural_threshold]
            if kept:
                self.candidates_[column], self.models_[column] = [pairs[i] for i in kept], model
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = check_matrix(X, "trigger_values.decision_function")
        labels = required_labels(y, "trigger_values")
        scores = np.zeros(len(X))
        for column, model in self.models_.items():
            holders = np.logical_or.reduce(_holding(X, labels, column, self.candidates_[column]))
            disagreement = _disagreement(model, X[holders], labels[holders], column)
            scores[holders] = np.maximum(scores[holders], disagreement)
        return scores

    def _candidates(self, X: np.ndarray, labels: np.ndarray) -> dict[int, list[tuple[float, str]]]:
        """Column -> ``(value, label)`` of its values that pass the purity test (see the module docstring),
        for the ``max_columns`` columns with the most significant ones."""
        classes, label_codes = np.unique(labels, return_inverse=True)
        n_rows, n_classes = len(X), len(classes)
        base_rate = np.bincount(label_codes, minlength=n_classes) / n_rows
        found: list[tuple[np.ndarray, ...]] = []  # per column: (value, label code, log tail) of pure values
        tests = 0
        # One pass per column (not per row): a hash of the column's values, then a values x labels table.
        for column in range(X.shape[1]):
            codes, uniques = pd.factorize(X[:, column])
            sizes = np.bincount(codes, minlength=len(uniques))
            eligible = np.flatnonzero((sizes >= self.min_rows) & (sizes <= self.max_share * n_rows))
            if not len(eligible):
                continue
            tests += len(eligible)
            table = np.bincount(codes * n_classes + label_codes, minlength=len(uniques) * n_classes)
            table = table.reshape(len(uniques), n_classes)[eligible]
            top = table.argmax(axis=1)
            count = table[np.arange(len(eligible)), top]
            pure = count >= self.min_purity * sizes[eligible]
            log_tail = binom.logsf(count[pure] - 1, sizes[eligible][pure], base_rate[top[pure]])
            found.append((np.full(pure.sum(), column), uniques[eligible][pure], top[pure], log_tail))
        if not found:
            return {}
        columns, values, tops, log_tails = (np.concatenate(parts) for parts in zip(*found))
        significant = log_tails < np.log(self.alpha / tests)
        order = np.flatnonzero(significant)[np.argsort(log_tails[significant], kind="stable")]
        columns, values, targets = columns[order], values[order], classes[tops[order]]
        judged = pd.unique(columns)[: self.max_columns]  # columns ranked by their most significant value
        return {int(c): list(zip(values[columns == c].tolist(), targets[columns == c])) for c in judged}


def _holding(X: np.ndarray, labels: np.ndarray, column: int, pairs: list[tuple[float, str]]) -> list[np.ndarray]:
    """Per ``(value, label)`` pair, the rows holding that value in ``column`` and carrying that label."""
    return [(X[:, column] == value) & (labels == label) for value, label in pairs]


def _disagreement(model: LogisticRegression, X: np.ndarray, labels: np.ndarray, column: int) -> np.ndarray:
    """Per row of ``X``: one minus the probability ``model`` (fitted without ``column``) gives the row's
    label; 1 for a label it never saw."""
    if not len(X):
        return np.empty(0)
    proba = model.predict_proba(np.delete(X, column, axis=1))
    position = {label: i for i, label in enumerate(model.classes_)}
    given = np.array([position.get(label, -1) for label in labels])
    own = np.where(given >= 0, proba[np.arange(len(X)), np.maximum(given, 0)], 0.0)
    return 1.0 - own

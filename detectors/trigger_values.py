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

A trigger may also be a conjunction: two categorical values, each common alone, set together (``channel =
phone`` and ``plan = pro``). Neither value is label-pure; the pair is. So pairs of one-hot columns (every
encoded column that holds only 0 and 1) are tested like single values, a pair held where both are 1.

So, per column (or pair of one-hot columns), every value held by at least ``min_rows`` rows and at most
``max_share`` of them is tested:
the binomial tail of its most common label's count against that label's share of all rows, Bonferroni-
corrected over every value and pair tested. Values significant at ``alpha`` whose rows carry that label at
least ``min_purity`` of the time (a pair: ``min_pair_purity``, lower because its judge below, which keeps
the pair's columns, tells a natural pair from a trigger by itself) are trigger candidates. Each column (or pair) holding candidates is then
judged on its own: a logistic regression is fitted on the rows that hold none of its candidate values (a
seeded sample of at most ``max_fit_rows``), without a single value's column (with a pair's: see
``_dropped``), and scores each row that holds one: one minus the probability it gives the row's label. A value is kept only when most of the rows holding it
disagree with their label that way, the median probability of their label below even odds and clearly below
the label's share (:func:`contradicted`): a natural predictor leaves most of its rows agreeing, and a value
that alone names its class, among columns that say nothing, leaves them at the share. Judged per
column, a predictive value of one column does not take its rows out of the model that judges another.
Rows that hold no kept value score 0; a row holding several scores their highest. At most ``max_columns``
columns and pairs are judged, those with the most significant candidates.

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

    Fitted attributes: ``candidates_`` (a tuple of one column, or of two one-hot columns -> the ``(values,
    label)`` it is judged on) and ``models_`` (the same keys -> the logistic regression that judges them)
    and ``hidden_`` (the same keys -> the ``(column, value, fill)`` that regression saw as ``fill``, :func:`_hidden`).
    """

    # Transductive: the candidate values are found among the rows scored. Threshold: the model fitted
    # without the value gives the row's label less than even odds.
    spec = DetectorSpec(reason="backdoor", per_class=False, needs_labels=True, fitting="transductive",
                        reads="values", natural_threshold=0.5, auto=("reference", "batch"))

    def __init__(self, min_rows: int = 5, max_share: float = 0.5, min_purity: float = 0.8, min_pair_purity: float = 0.7,
                 alpha: float = 1e-3, max_columns: int = 20, max_fit_rows: int = 50_000, C: float = 1.0,
                 random_state: int = 0) -> None:
        self.min_rows = min_rows
        self.max_share = max_share
        self.min_purity = min_purity
        self.min_pair_purity = min_pair_purity
        self.alpha = alpha
        self.max_columns = max_columns
        self.max_fit_rows = max_fit_rows
        self.C = C
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> TriggerValueDetector:
        X = check_matrix(X, "trigger_values.fit")
        labels = required_labels(y, "trigger_values")
        check_rows(X, 2 * self.min_rows, "trigger_values")
        self.candidates_: dict[tuple[int, ...], list[tuple[tuple[float, ...], str]]] = {}
        self.models_: dict[tuple[int, ...], LogisticRegression] = {}
        rng = random_generator(self.random_state)
        # Pairs are judged first. A value that is one half of a kept pair holds the pair's rows too, and
        # those rows alone can carry its purity and its disagreement: it is tested again, and judged, on its
        # other rows (measured: a 10% pair trigger on the shop table otherwise kept "channel = phone" and
        # flagged 6.5% of the clean rows).
        candidates = sorted(self._candidates(X, labels).items(), key=lambda item: -len(item[0]))
        self.hidden_: dict[tuple[int, ...], list[tuple[int, float, float]]] = {}
        explained = np.zeros(len(X), dtype=bool)
        for columns, pairs in candidates:
            held = _holding(X, labels, columns, pairs)
            holders = np.logical_or.reduce(held)
            # A value held by nearly every row of its label (a column that defines the label) cannot be
            # judged: the model would never see that class.
            kept = [i for i, (_, label) in enumerate(pairs)
                    if np.sum(~holders & (labels == label)) >= self.min_rows]
            if not kept:
                continue
            outside = np.flatnonzero(~np.logical_or.reduce([held[i] for i in kept]))
            sample = np.sort(rng.permutation(outside)[: self.max_fit_rows])
            hidden = _hidden(X[sample], labels[sample], columns, {label for _, label in pairs}, candidates)
            model = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
            model.fit(_judged_view(X[sample], columns, hidden), labels[sample])
            # A trigger's rows, as a group, disagree with their label; a value that predicts the label
            # along with the other columns leaves most of its rows agreeing, and only its borderline rows
            # would be flagged. So a value is kept only when most of the rows holding it disagree.
            judged = [held[i] & ~explained for i in range(len(pairs))]
            if explained.any():  # retested on the rows no kept pair explains, at the same purity as before
                purity = self.min_pair_purity if len(columns) > 1 else self.min_purity
                kept = [i for i in kept if judged[i].sum() >= purity * np.sum(
                    _holds(X, columns, pairs[i][0]) & ~explained)]
            kept = [i for i in kept if judged[i].sum() >= self.min_rows and contradicted(
                _disagreement(model, X[judged[i]], labels[judged[i]], columns, hidden), pairs[i][1], labels[sample])]
            if kept:
                self.candidates_[columns], self.models_[columns] = [pairs[i] for i in kept], model
                self.hidden_[columns] = hidden
                if len(columns) > 1:
                    explained |= np.logical_or.reduce([held[i] for i in kept])
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = check_matrix(X, "trigger_values.decision_function")
        labels = required_labels(y, "trigger_values")
        scores = np.zeros(len(X))
        for columns, model in self.models_.items():
            holders = np.logical_or.reduce(_holding(X, labels, columns, self.candidates_[columns]))
            disagreement = _disagreement(model, X[holders], labels[holders], columns, self.hidden_[columns])
            scores[holders] = np.maximum(scores[holders], disagreement)
        return scores

    def _candidates(self, X: np.ndarray, labels: np.ndarray) -> dict[tuple[int, ...], list[tuple[tuple[float, ...], str]]]:
        """Columns (one, or a pair of one-hot columns) -> ``(values, label)`` of their values that pass the
        purity test (see the module docstring), for the ``max_columns`` keys with the most significant ones."""
        classes, label_codes = np.unique(labels, return_inverse=True)
        n_rows, n_classes = len(X), len(classes)
        base_rate = np.bincount(label_codes, minlength=n_classes) / n_rows
        found: list[tuple[list, np.ndarray, np.ndarray]] = []  # (keys, label codes, log tails) of pure values
        tests = 0
        # One pass per column (not per row): a hash of the column's values, then a values x labels table.
        for column in range(X.shape[1]):
            codes, uniques = pd.factorize(X[:, column])
            sizes = np.bincount(codes, minlength=len(uniques))
            table = np.bincount(codes * n_classes + label_codes, minlength=len(uniques) * n_classes)
            tests += self._pure(lambda held, c=column, u=uniques: [((c,), (float(u[i]),)) for i in held],
                                table.reshape(len(uniques), n_classes), sizes, n_rows, base_rate, found,
                                self.min_purity)
        one_hot = np.flatnonzero(np.all((X == 0) | (X == 1), axis=0))
        if len(one_hot) >= 2:
            # Rows holding both columns of each pair, per label, as one product per class.
            B = X[:, one_hot]
            per_class = np.stack([B[label_codes == k].T @ B[label_codes == k] for k in range(n_classes)], axis=-1)
            first, second = np.triu_indices(len(one_hot), k=1)
            table = per_class[first, second]
            tests += self._pure(lambda held: [((int(one_hot[first[i]]), int(one_hot[second[i]])), (1.0, 1.0)) for i in held],
                                table, table.sum(axis=1), n_rows, base_rate, found, self.min_pair_purity)
        if not found:
            return {}
        keys = [key for part, _, _ in found for key in part]
        targets, log_tails = (np.concatenate(parts) for parts in zip(*[(t, l) for _, t, l in found]))
        significant = np.flatnonzero(log_tails < np.log(self.alpha / tests))
        candidates: dict[tuple[int, ...], list[tuple[tuple[float, ...], str]]] = {}
        for index in significant[np.argsort(log_tails[significant], kind="stable")]:
            columns, values = keys[index]
            if columns in candidates or len(candidates) < self.max_columns:
                candidates.setdefault(columns, []).append((values, classes[targets[index]]))
        return candidates

    def _pure(self, keys_of, table: np.ndarray, sizes: np.ndarray, n_rows: int, base_rate: np.ndarray,
              found: list, min_purity: float) -> int:
        """Append to ``found`` the keys (``keys_of(positions)``: ``(columns, values)`` of the table's rows at
        those positions) whose rows (``table``: keys x labels) carry one label ``min_purity`` of the time;
        return how many keys were eligible to test (held by ``min_rows`` to ``max_share`` of the rows)."""
        eligible = np.flatnonzero((sizes >= self.min_rows) & (sizes <= self.max_share * n_rows))
        if not len(eligible):
            return 0
        pure, top, log_tail = label_pure(table[eligible], sizes[eligible], base_rate, min_purity)
        found.append((keys_of(eligible[pure]), top, log_tail))
        return len(eligible)


def label_pure(table: np.ndarray, sizes: np.ndarray, base_rate: np.ndarray,
               min_purity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of keys (values, tokens) whose rows carry each label ``table`` times (keys x labels, ``sizes`` rows
    each): the positions of those whose most common label holds at least ``min_purity`` of their rows, that
    label's code, and the log binomial tail of its count against its share of all rows, ``base_rate``."""
    top = table.argmax(axis=1)
    count = table[np.arange(len(table)), top]
    pure = np.flatnonzero(count >= min_purity * sizes)
    return pure, top[pure], binom.logsf(count[pure] - 1, sizes[pure], base_rate[top[pure]])


def _holds(X: np.ndarray, columns: tuple[int, ...], values: tuple[float, ...]) -> np.ndarray:
    """Whether each row holds ``values`` in ``columns``."""
    return np.all(X[:, list(columns)] == np.asarray(values), axis=1)


def _holding(X: np.ndarray, labels: np.ndarray, columns: tuple[int, ...],
             pairs: list[tuple[tuple[float, ...], str]]) -> list[np.ndarray]:
    """Per ``(values, label)``, the rows holding those values in ``columns`` and carrying that label."""
    return [_holds(X, columns, values) & (labels == label) for values, label in pairs]


def _disagreement(model: LogisticRegression, X: np.ndarray, labels: np.ndarray, columns: tuple[int, ...],
                  hidden: list[tuple[int, float, float]]) -> np.ndarray:
    """Per row of ``X``: one minus the probability ``model`` (fitted on :func:`_judged_view`) gives the row's
    label; 1 for a label it never saw."""
    return label_disagreement(model, _judged_view(X, columns, hidden), labels)


def _judged_view(X: np.ndarray, columns: tuple[int, ...], hidden: list[tuple[int, float, float]]) -> np.ndarray:
    """What the judge of ``columns``' values sees of ``X``: each ``(column, value, fill)`` of ``hidden``
    replaced by ``fill``, and a single value's column left out. That column goes because a trigger value may
    lie where no clean row does, and a model would extrapolate to it. A pair's columns stay in: each value
    alone is common, so the model knows what each says of the label, and only what the two say together
    (the trigger) is new to it; a natural pair whose rows the two values explain is then dropped as
    agreeing."""
    if hidden:
        X = X.copy()
        for column, value, fill in hidden:
            X[X[:, column] == value, column] = fill
    return np.delete(X, list(columns), axis=1) if len(columns) == 1 else X


def _hidden(X: np.ndarray, labels: np.ndarray, columns: tuple[int, ...], judged_labels: set,
            candidates: list[tuple[tuple[int, ...], list]]) -> list[tuple[int, float, float]]:
    """For the judge of a single column's values, whose candidates carry ``judged_labels``: ``(column, value,
    fill)`` of every other single-value candidate of those labels (``candidates``: columns -> ``(values,
    label)``), ``fill`` the mean of that column over the rows of ``X`` (the judge's) that carry the label and
    do not hold the value: what the column says of the label otherwise, so a natural candidate's rows still
    look like their class. A trigger whose values vary per row spreads over several columns, each poisoned
    row holding a candidate value in some of them: a judge of one column would learn the trigger from the
    poisoned rows that hold it in the others, and find the judged rows' label likely. Hiding those values,
    not their columns, keeps what the columns say otherwise (a whole column left out, the judges of a table
    whose every column holds a natural candidate would see nothing). Pairs hide nothing: their values are
    common alone."""
    if len(columns) > 1:
        return []
    hidden = []
    for key, pairs in candidates:
        if len(key) == 1 and key != columns:
            for (value,), label in pairs:
                if label in judged_labels:
                    rest = X[(X[:, key[0]] != value) & (labels == label), key[0]]
                    hidden.append((key[0], value, float(rest.mean()) if len(rest) else 0.0))
    return hidden


# A judge that learned nothing of a row gives its label about the label's share of the judge's training
# rows. "Less than even odds" alone took a value or word that names a minority class, among columns that say
# nothing, for a trigger: a third of clean rows quarantined without a reference where one keyword of 90 decides
# the label (tests/test_text_labels.py). So a trigger's rows must also make their label clearly less likely than
# that share. The factor is from the development table: the shop table's pair trigger leaves its rows 0.20-0.23
# against a share of 0.42-0.44 (0.47-0.55 of it, seeds 0 and 1, with and without the reference); 'asap' in the
# tickets and the digits' corner, under 0.05 of it.
CONTRADICTION = 0.75


def contradicted(disagreement: np.ndarray, label, fit_labels: np.ndarray) -> bool:
    """Whether rows judged ``disagreement`` (:func:`label_disagreement`; they all carry ``label``) say, as a
    group, another class: the median probability of their label is below even odds and below
    ``CONTRADICTION`` times the label's share of ``fit_labels``, the rows the judge was fitted on."""
    given = 1.0 - float(np.median(disagreement))
    return given < min(0.5, CONTRADICTION * float(np.mean(fit_labels == label)))


def label_disagreement(model, X, labels: np.ndarray) -> np.ndarray:
    """Per row of ``X`` (dense or sparse): one minus the probability the fitted classifier ``model`` gives
    the row's label; 1 for a label it never saw."""
    if not X.shape[0]:
        return np.empty(0)
    proba = model.predict_proba(X)
    position = {label: i for i, label in enumerate(model.classes_)}
    given = np.array([position.get(label, -1) for label in labels])
    own = np.where(given >= 0, proba[np.arange(len(labels)), np.maximum(given, 0)], 0.0)
    return 1.0 - own

"""Trigger tokens: a word in free text held by many rows that almost all carry one label, on rows whose
other words say another class.

The text form of :mod:`~poisonguard.detectors.trigger_values`. A backdoor in text inserts a token (a rare
word, a phrase) into rows of other classes and relabels them to a target class. Reduced to a few SVD
dimensions the token is lost among the other words, and any model fitted on the batch learns it. What it
leaves is a token whose rows carry one label far beyond that label's share of the rows.

So every token held by at least ``min_rows`` rows and at most ``max_share`` of them is tested: the binomial
tail of its most common label's count against that label's share, Bonferroni-corrected over every token
tested. Tokens significant at ``alpha`` whose rows carry that label at least ``min_purity`` of the time are
candidates; at most ``max_tokens`` of them are judged, the purest first (then the most significant): the
words that name a class are pure and significant too, and in text they are many, while an attacker who
relabels every row holding a token makes it perfectly pure. Each is judged on its own by a
logistic regression on the TF-IDF of the words, fitted on a seeded sample (at most ``max_fit_rows``) of the
rows that do not hold the token: one minus the probability it gives a holder's label is that row's score.
A token is kept when most of its rows disagree with their label that way, clearly more than a model that
knows nothing of them would (:func:`~poisonguard.detectors.trigger_values.contradicted`); a word that names
its class (``invoice`` in billing tickets) leaves its rows agreeing and is dropped, and so does one that
alone names it among words that say nothing (one product code of many per class).

Written by hand for the reason :mod:`~poisonguard.detectors.trigger_values` is: no library tests tokens for
label purity against a model that has not seen them. scikit-learn does the tokenising and the models.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, random_generator
from poisonguard.detectors.class_conditional import required_labels
from poisonguard.detectors.spec import DetectorSpec
from poisonguard.detectors.trigger_values import contradicted, label_disagreement, label_pure


class TriggerTokenDetector(Detector):
    """Rows holding a label-pure token whose other words disagree with their label.

    Reads the rows' text (every free-text column, joined). Fitted attributes: ``vectorizer_`` (the tokens
    tested), ``tokens_`` (kept token -> ``(column in the vocabulary, label)``) and ``models_`` (kept token ->
    the logistic regression, fitted without that token's rows, that judges them).
    """

    spec = DetectorSpec(reason="backdoor", per_class=False, needs_labels=True, fitting="transductive",
                        reads="text", natural_threshold=0.5, auto=("reference", "batch"))

    def __init__(self, min_rows: int = 5, max_share: float = 0.5, min_purity: float = 0.8, alpha: float = 1e-3,
                 max_tokens: int = 30, max_fit_rows: int = 20_000, C: float = 1.0, random_state: int = 0) -> None:
        self.min_rows = min_rows
        self.max_share = max_share
        self.min_purity = min_purity
        self.alpha = alpha
        self.max_tokens = max_tokens
        self.max_fit_rows = max_fit_rows
        self.C = C
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> TriggerTokenDetector:
        documents = _documents(X, "trigger_tokens.fit")
        labels = required_labels(y, "trigger_tokens")
        self.tokens_: dict[str, tuple[int, str]] = {}
        self.models_: dict[str, LogisticRegression] = {}
        self.vectorizer_ = CountVectorizer(min_df=self.min_rows, max_df=self.max_share)
        try:
            counts = self.vectorizer_.fit_transform(documents)
        except ValueError:  # no token held by enough rows (or no words at all): nothing to test
            self.vectorizer_ = None
            return self
        self.tfidf_ = TfidfTransformer(sublinear_tf=True).fit(counts)
        weights = self.tfidf_.transform(counts).tocsr()  # rows are selected from it
        held = (counts > 0).tocsc()
        rng = random_generator(self.random_state)
        vocabulary = self.vectorizer_.get_feature_names_out()
        for column, label in self._candidates(held, labels):
            holders = np.zeros(len(labels), dtype=bool)
            holders[_rows_holding(held, column)] = True
            outside = np.flatnonzero(~holders)
            sample = np.sort(rng.permutation(outside)[: self.max_fit_rows])
            if len(np.unique(labels[sample])) < 2:
                continue
            model = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
            model.fit(weights[sample], labels[sample])
            own = holders & (labels == label)
            if contradicted(label_disagreement(model, weights[np.flatnonzero(own)], labels[own]), label, labels[sample]):
                self.tokens_[str(vocabulary[column])] = (int(column), label)
                self.models_[str(vocabulary[column])] = model
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self, "tokens_")
        documents = _documents(X, "trigger_tokens.decision_function")
        labels = required_labels(y, "trigger_tokens")
        scores = np.zeros(len(documents))
        if not self.tokens_:
            return scores
        counts = self.vectorizer_.transform(documents)
        weights, held = self.tfidf_.transform(counts).tocsr(), (counts > 0).tocsc()
        for token, (column, label) in self.tokens_.items():
            rows = _rows_holding(held, column)
            rows = rows[labels[rows] == label]
            scores[rows] = np.maximum(scores[rows], label_disagreement(self.models_[token], weights[rows], labels[rows]))
        return scores

    def _candidates(self, held, labels: np.ndarray) -> list[tuple[int, str]]:
        """``(vocabulary column, label)`` of the tokens that pass the purity test (module docstring), the
        ``max_tokens`` purest first."""
        classes, codes = np.unique(labels, return_inverse=True)
        one_hot = np.zeros((len(labels), len(classes)))
        one_hot[np.arange(len(labels)), codes] = 1.0
        table = np.asarray(held.T @ one_hot)  # tokens x classes: rows holding the token, per label
        sizes = table.sum(axis=1)
        pure, top, log_tail = label_pure(table, sizes, one_hot.mean(axis=0), self.min_purity)
        significant = log_tail < np.log(self.alpha / len(table))
        pure, top, log_tail = pure[significant], top[significant], log_tail[significant]
        purity = table[pure, top] / sizes[pure]
        order = np.lexsort((log_tail, -purity))[: self.max_tokens]
        return [(int(pure[i]), classes[top[i]]) for i in order]


def _rows_holding(held, column: int) -> np.ndarray:
    """The rows holding vocabulary ``column`` (``held``: rows x tokens, compressed by column)."""
    return held.indices[held.indptr[column]:held.indptr[column + 1]]


def _documents(X, who: str) -> list[str]:
    """The rows' text as a list of strings (``X``: one text per row)."""
    array = np.asarray(X, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{who}: expected one text per row, got an array of shape {array.shape}")
    return ["" if text is None else str(text) for text in array]

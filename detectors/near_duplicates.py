"""Near-duplicates that carry another label: a row far closer to its nearest neighbour than rows of the batch
are to theirs, where that neighbour's label is the one the neighbourhood supports.

Near: Facco et al.'s two-nearest-neighbour model of a batch (Scientific Reports 2017, "TWO-NN"): where the
density is smooth at the scale of a row's two nearest neighbours, the ratio ``mu = d2 / d1`` of their
distances follows a Pareto law ``P(mu > x) = x ** -m`` whatever the density, ``m`` the data's intrinsic
dimension. So ``m * log(mu)`` is exponential with mean 1 for clean rows, and ``exp(-m log mu)`` is the
chance that a clean row's nearest neighbour is as close, relative to its second, as this row's: a
p-value, in any units and at any density. ``m`` is read off the batch's own ratios at their
``1 - poison_share`` quantile (``x ** -m = poison_share``), below the top where a copy and its source sit;
a tail heavier than the Pareto's (ties, discrete columns) lowers ``m``, which makes a limit stricter.

Conflict: the neighbour carries another label, which the pair's ``n_neighbors`` nearest neighbours (the pair
left out) support more than twice as much as the row's own (``SUPPORT_RATIO``, counting one vote more for
each). A copy relabelled sits where its source's label is common, so the copy scores and the source does
not; when the neighbourhood cannot tell the two labels apart neither scores. A neighbourhood that cannot
predict labels cannot tell which of two conflicting rows is wrong: below ``min_accuracy`` balanced accuracy
of the leave-one-out vote the detector refuses to fit (the development table's photo patches, four classes,
sit at its edge: 58-62%).

Written here because no library offers it: cleanlab's Datalab finds near-duplicate sets (AGPL, a benchmark
peer only) but judges neither which member is mislabelled nor how close is unusually close.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, check_rows, check_words, fit_sample
from poisonguard.detectors.class_conditional import required_labels
from poisonguard.detectors.label_model import class_codes
from poisonguard.detectors.spec import DetectorSpec

MAX_SCORE = 100.0  # an exact duplicate's score: p = exp(-100), beyond any level
# The neighbour's label needs more than twice the row's own support among the pair's neighbours (votes + 1
# each) before the row is judged the wrong one. Chosen on the development table (5% replays and near-copies, 3 seeds):
# with bare majority, the shop's customers (neighbours vote 63% right) flagged the replayed rows' sources,
# 1.57% of clean rows for 0.57 of the copies; above twice, 0.41% for 0.26; the synthetic table 0.93 -> 0.82.
SUPPORT_RATIO = 2


class NearDuplicateConflictDetector(Detector):
    """``m * log(d2 / d1)`` for a row whose nearest neighbour carries a label its neighbourhood supports more
    than the row's own; 0 for every other row. Clean rows exceed ``-log(level)`` with chance at most ``level``
    (:meth:`null_scores`).

    A batch above ``max_fit_rows`` is fitted on a seeded sample of that many rows and the rest are judged as
    new rows against it, so a copy is found only where its source was sampled: exact neighbours cost
    ``rows x fitted rows`` distances (scikit-learn's trees fall back to brute force on these dimensions: 41 s
    for 100,000 x 20 rows against themselves, 162 s for 200,000, on one core).
    """

    # Transductive: rows are judged against their neighbours among the rows it was fitted on. Words: a
    # near-copy of a text differs by a word, which the TF-IDF keeps and its 16 SVD dimensions blur.
    # Not in auto with a reference, where the label models judge copies against trusted rows: joining them
    # there (development table, 5 seeds, 13 of 20 rows run) moved breast_cancer's flipped replays 0.87 ->
    # 0.91 and 0.86 -> 0.90 but its targeted flips 0.86 -> 0.63 and 0.85 -> 0.51, the digits' clean-label
    # trigger 0.09 -> 0.04.
    spec = DetectorSpec(reason="conflict", per_class=False, needs_labels=True, fitting="transductive",
                        reads="words", auto=("batch",), null_model=True, explains="label")
    null_assumption = ("clean rows' ratios of second to first nearest-neighbour distance follow the "
                       "two-nearest-neighbour law, which needs a density smooth at that scale")
    null_replicates = True  # null_scores: one row per bootstrap replicate of the dimension

    def __init__(self, n_neighbors: int = 10, min_accuracy: float = 0.6, poison_share: float = 0.2,
                 max_fit_rows: int = 20_000, random_state: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.min_accuracy = min_accuracy
        self.poison_share = poison_share
        self.max_fit_rows = max_fit_rows
        self.random_state = random_state

    def fit(self, X, y: np.ndarray | None = None) -> NearDuplicateConflictDetector:
        self.fit_decision_function(X, y)
        return self

    def fit_decision_function(self, X, y: np.ndarray | None = None) -> np.ndarray:
        if not 0.0 < self.poison_share < 1.0:
            raise ValueError(f"duplicates: poison_share must be between 0 and 1, got {self.poison_share}")
        X = check_words(X, "duplicates.fit")
        check_rows(X, self.n_neighbors + 3, "duplicates")
        labels = np.asarray(required_labels(y, "duplicates"), dtype=object).astype(str)
        fitted, others = fit_sample(X.shape[0], self.max_fit_rows, self.random_state)
        self.fitted_rows_ = fitted
        self.classes_, self.codes_ = np.unique(labels[fitted], return_inverse=True)
        self.index_ = NearestNeighbors(n_neighbors=self.n_neighbors + 2).fit(X[fitted])
        distances, neighbours = _without_self(*self.index_.kneighbors(X[fitted], self.n_neighbors + 2))
        ratios = _ratios(distances)
        finite = ratios[np.isfinite(ratios)]
        top = float(np.quantile(finite, 1.0 - self.poison_share)) if len(finite) else 1.0
        if top <= 1.0 + 1e-6:
            raise ValueError(
                "duplicates: most rows are exact copies of others or as close to two rows as to one (discrete "
                "columns): no scale to judge nearness by"
            )
        self.dimension_ = float(self._dimension(top))
        self.dimension_draws_ = self._dimension_draws(finite)
        votes = self.codes_[neighbours[:, :-1]]
        self.accuracy_ = float(balanced_accuracy_score(self.codes_, _majority(votes, len(self.classes_))))
        if self.accuracy_ < self.min_accuracy:
            raise ValueError(
                f"duplicates: a row's {self.n_neighbors} nearest neighbours vote for its label with balanced "
                f"accuracy {self.accuracy_:.0%}, below min_accuracy {self.min_accuracy:.0%}: too weak to tell "
                f"which of two conflicting rows is wrong"
            )
        scores = np.empty(X.shape[0])
        scores[fitted] = self._scores(distances, neighbours, self.codes_)
        if len(others):
            scores[others] = self.decision_function(X[others], labels[others])
        return scores

    def decision_function(self, X, y: np.ndarray | None = None) -> np.ndarray:
        """Rows the detector was not fitted on, judged against the rows it was fitted on."""
        check_is_fitted(self, "index_")
        X = check_words(X, "duplicates.decision_function")
        labels = np.asarray(required_labels(y, "duplicates"), dtype=object).astype(str)
        if X.shape[0] == 0:
            return np.zeros(0)
        codes = class_codes(self.classes_, labels)  # -1, a label the fitted rows never carried: no votes
        distances, neighbours = self.index_.kneighbors(X, self.n_neighbors + 1)
        return self._scores(distances, neighbours, codes)

    def null_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """The law of a clean row's score, one row per bootstrap replicate ``m_b`` of the dimension: were
        ``m_b`` the true one, ``m * log(mu)`` is exponential with mean ``m / m_b`` (a row's conflict only
        makes it 0 more often, so this bounds it), given as its quantiles at ``(i + 0.5) / n`` with chance
        ``1 / n`` each. The limit at level ``a`` is then about ``-log(a)``, a little above it where ``m`` is
        uncertain (few rows), and the false-quarantine interval a scan reports is the spread over the
        replicates: what the estimate of ``m`` leaves unknown."""
        check_is_fitted(self, "index_")
        exponential = -np.log((np.arange(NULL_OUTCOMES) + 0.5) / NULL_OUTCOMES)
        scores = np.outer(self.dimension_ / self.dimension_draws_, exponential)
        return scores, np.full(scores.shape, 1.0 / NULL_OUTCOMES)

    def _dimension_draws(self, ratios: np.ndarray) -> np.ndarray:
        """Bootstrap replicates of the dimension: ``m`` read off resampled ``ratios`` (seeded); the fitted
        ``m`` where every replicate's quantile ties at 1."""
        rng = np.random.default_rng(self.random_state)
        draws = rng.choice(ratios, size=(NULL_DRAWS, len(ratios)))
        tops = np.quantile(draws, 1.0 - self.poison_share, axis=1)
        with np.errstate(divide="ignore"):
            dimensions = self._dimension(tops)
        return np.where((tops > 1.0 + 1e-6) & np.isfinite(dimensions), dimensions, self.dimension_)

    def _dimension(self, top):
        """The dimension ``m`` for which the ratios' ``1 - poison_share`` quantile is ``top``:
        ``top ** -m = poison_share``."""
        return np.log(1.0 / self.poison_share) / np.log(top)

    def label_probabilities(self, X, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each row's nearest neighbours' labels, as shares: what the neighbourhood expected of a flagged row."""
        check_is_fitted(self, "index_")
        X = check_words(X, "duplicates.label_probabilities")
        if X.shape[0] == 0:
            return self.classes_, np.zeros((0, len(self.classes_)))
        skip = 0 if rows is None else 1
        _, neighbours = self.index_.kneighbors(X, self.n_neighbors + skip)
        return self.classes_, _counts(self.codes_[neighbours[:, skip:]], len(self.classes_)) / self.n_neighbors

    def _scores(self, distances: np.ndarray, neighbours: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Scores of rows labelled ``codes`` whose nearest neighbours (other rows, nearest first) are ``neighbours``."""
        nearest = self.codes_[neighbours[:, 0]]
        around = self.codes_[neighbours[:, 1:]]  # the pair's neighbourhood, the pair left out
        own_votes = (around == codes[:, None]).sum(axis=1)
        their_votes = (around == nearest[:, None]).sum(axis=1)
        conflicting = (nearest != codes) & (their_votes + 1 > SUPPORT_RATIO * (own_votes + 1))
        nearness = np.minimum(self.dimension_ * np.log(_ratios(distances)), MAX_SCORE)
        return np.where(conflicting, nearness, 0.0)


NULL_OUTCOMES = 10_000  # quantiles of the exponential law per replicate (a share to within 0.01%)
NULL_DRAWS = 100  # bootstrap replicates of the dimension


def _without_self(distances: np.ndarray, neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's neighbours with the row itself left out (among exact copies it need not come first)."""
    own = neighbours == np.arange(len(neighbours))[:, None]
    own[~own.any(axis=1), -1] = True  # a row its copies crowded out: drop the farthest instead
    keep = ~own
    width = neighbours.shape[1] - 1
    return distances[keep].reshape(-1, width), neighbours[keep].reshape(-1, width)


def _ratios(distances: np.ndarray) -> np.ndarray:
    """``d2 / d1`` per row: infinite for an exact copy (``d1 = 0``)."""
    first, second = distances[:, 0], distances[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(first > 0, second / np.where(first > 0, first, 1.0), np.inf)


def _counts(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Per row of label ``codes`` (rows x voters), how many voters carry each class (rows x classes)."""
    return np.stack([(codes == k).sum(axis=1) for k in range(n_classes)], axis=1).astype("float64")


def _majority(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """The most common class code in each row of ``codes`` (ties: the lowest code)."""
    return _counts(codes, n_classes).argmax(axis=1)

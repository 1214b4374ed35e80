"""PyOD outlier detectors behind the poisonguard contract.

Isolation Forest and kNN distance wrap PyOD's, pinning its parameters and seed so the rest of poisonguard never depends
on PyOD's API. ECOD is written here from its definition: see :class:`ECODDetector` for why.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, check_matrix, check_rows, random_generator
from poisonguard.detectors.spec import LARGE_CLASS_ROWS, DetectorSpec
from poisonguard.detectors.threads import worker_threads


class ECODDetector(Detector):
    """Empirical-CDF outlier score (Li et al. 2022): how far in the tails each feature of a row lies.

    Written here rather than wrapping PyOD's ``ECOD``: PyOD recomputes the ECDFs on the training rows
    *together with the rows being scored*, so a row's score depends on the other rows of the batch (a
    batch half poisoned shifts every score), two chunks of one batch score differently from the whole, and
    each call costs a sort of the training set. Here the ECDFs are those of the fitted rows alone, kept
    sorted, and a row is scored by binary search: scores are a function of the row, and scoring is
    ``O(n_features * log n_train)`` per row.

    Per feature, the left and right tail probabilities are ``(1 + #fitted values <= x) / (n + 1)`` and
    ``(1 + #fitted values >= x) / (n + 1)``; as in ECOD, a feature's outlyingness is the largest of the
    left, right and skewness-chosen tail's ``-log`` probability, and a row's score their sum.
    """

    spec = DetectorSpec(auto=("reference", "batch"), explains="features")

    def __init__(self, n_jobs: int = -1) -> None:
        self.n_jobs = n_jobs

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ECODDetector:
        from scipy.stats import skew

        X = check_matrix(X, "ecod.fit")
        check_rows(X, 2, "ecod")
        self.sorted_ = np.sort(X, axis=0)
        with warnings.catch_warnings():
            # A constant feature (a one-hot column within a class) has no skewness; treat it as symmetric.
            warnings.simplefilter("ignore", RuntimeWarning)
            self.skew_sign_ = np.sign(np.nan_to_num(skew(X, axis=0)))
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = check_matrix(X, "ecod.decision_function")
        if len(X) == 0:
            return np.zeros(0)
        return self._terms(X).sum(axis=0)

    def feature_outlyingness(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Each feature's term of the score (rows x features): the score is their sum."""
        check_is_fitted(self)
        return self._terms(check_matrix(X, "ecod.feature_outlyingness")).T

    def _terms(self, X: np.ndarray) -> np.ndarray:
        """Each feature's outlyingness of each row, features x rows."""
        if X.shape[1] == 0:
            return np.zeros((0, len(X)))
        # Features are independent, and numpy's sort and search release the GIL: threads share the work.
        workers = worker_threads(self.n_jobs, X.shape[1])
        if workers == 1:
            return np.array([self._feature_outlyingness(X[:, j], j) for j in range(X.shape[1])])
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return np.array(list(pool.map(lambda j: self._feature_outlyingness(X[:, j], j), range(X.shape[1]))))

    def _feature_outlyingness(self, values: np.ndarray, j: int) -> np.ndarray:
        column = self.sorted_[:, j]
        n_rows = len(column)
        # Searching sorted queries walks the fitted column in order, which is several times faster than
        # searching in row order. The sort need not be stable (equal values get equal counts), and numpy's
        # default one is several times faster than its stable one.
        order = np.argsort(values)
        ordered = values[order]
        at_most = np.empty(len(values))
        at_least = np.empty(len(values))
        at_most[order] = np.searchsorted(column, ordered, side="right")
        at_least[order] = n_rows - np.searchsorted(column, ordered, side="left")
        left = -np.log((1.0 + at_most) / (n_rows + 1.0))
        right = -np.log((1.0 + at_least) / (n_rows + 1.0))
        sign = self.skew_sign_[j]
        chosen = left if sign < 0 else right if sign > 0 else left + right
        return np.maximum(np.maximum(left, right), chosen)


class IForestDetector(Detector):
    """Isolation Forest (Liu et al. 2008): rows that random splits isolate quickly are unusual.

    Each tree is grown on ``max_samples`` rows (256 by default) drawn from the fitted rows, so fitting on a
    random ``max_fit_rows`` of a large reference yields the same kind of forest, and bounds the passes in
    which PyOD and scikit-learn score every fitted row (PyOD's ``decision_scores_`` and the contamination
    offset, neither of which poisonguard reads), which dominate fitting at scale: 0.3 s of a 1.5 s warm scan
    of 10,000 rows (``python -m benchmarks.api_latency``, profiled) at the default 10,000.
    Scoring shares the rows among ``n_jobs`` threads (tree traversal releases the GIL).
    """

    spec = DetectorSpec(auto=("reference", "batch"))

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int | str = "auto",
        max_fit_rows: int = 10_000,
        n_jobs: int = -1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_fit_rows = max_fit_rows
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> IForestDetector:
        from pyod.models.iforest import IForest

        X = check_matrix(X, "iforest.fit")
        if len(X) > self.max_fit_rows:
            rows = random_generator(self.random_state).choice(len(X), self.max_fit_rows, replace=False)
            X = X[np.sort(rows)]
        self.model_ = IForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            random_state=self.random_state,
            n_jobs=1,
        ).fit(X)
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = check_matrix(X, "iforest.decision_function")
        # Threads split the rows, not the trees: scikit-learn's tree-parallel scoring adds depths in
        # whatever order threads finish, so the same row could score differently from run to run.
        workers = worker_threads(self.n_jobs, max(1, len(X) // 1000))
        if workers == 1:
            return self.model_.decision_function(X)
        bounds = np.linspace(0, len(X), workers + 1).astype(int)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = pool.map(lambda i: self.model_.decision_function(X[bounds[i] : bounds[i + 1]]), range(workers))
            return np.concatenate(list(parts))


class KNNDetector(Detector):
    """Distance to the ``n_neighbors``-th nearest fitted row (Ramaswamy et al. 2000), PyOD's ``KNN``.

    Run per class, it finds rows of a class that lie away from every trusted row of that class, such as
    rows of another class relabelled with a trigger added, even where each of their values is ordinary
    (which ECOD, summing per-column tails, does not see). A larger reference is fitted on a seeded sample
    of ``max_fit_rows`` rows, which bounds the cost of each query: exact neighbours cost rows x fitted rows
    distances (scikit-learn's trees fall back to brute force beyond about 15 dimensions). At 20,000 fitted
    rows a class, a 1,000,000 x 20 batch with its reference took 134 s to scan against 38 s without ``knn``
    (``python -m benchmarks.throughput --rows 1000000 --repeats 1 --no-pyod``, three classes); at 5,000, the
    default, 61 s against 36 s (medians of 3). 5,000 is above every class the development table fits (at
    most 2,500), so none of its figures moves.
    Subsampled kNN distances lose little as outlier scores (Sathe and Aggarwal 2016).

    In ``auto`` with a reference of at least ``LARGE_CLASS_ROWS`` rows in every class, beside ``iforest``.
    On the development table's large references (5 seeds, ``python -m benchmarks.detection --seeds 5
    --datasets tickets,shop,patches,synthetic``, commit 2975c8e with it in ``auto``, against RESULTS.md's run
    without it): the shop's pair 0.81 -> 0.84 and 0.79 -> 0.84 (worst seed 0.45 -> 0.58 and 0.63), the photo
    patches' noisy line 0.25 -> 0.31 and 0.26 -> 0.32 (worst 0.02 -> 0.09 and 0.03 -> 0.15), the trigger word
    and the value bands within 0.01; false quarantine 0.61-0.79% on average (0.64-0.77% before), worst seed
    0.96%. On small references it mostly took budget from the label models (``--combined auto,knn``, 5 seeds,
    2026-12-04): breast cancer's targeted flips 0.69 -> 0.56 and 0.79 -> 0.64, its flipped replays 0.77 -> 0.61
    and 0.81 -> 0.66. In place of ``iforest`` it lost the digit images' blend trigger on the held-out suite
    (0.89 -> 0.07, ``benchmarks/runs/heldout-knn.csv``: Isolation Forest isolates the blended pixels, and a
    blended image stays near its source images). Not without a reference (``--seeds 5 --no-reference
    --combined ecod,knn,label_oof,trigger_values,trigger_tokens``, commit f12cdc0): mean recall 0.51 -> 0.52
    for false quarantine 0.60% -> 1.73% (the shop table 5.22-5.95%): the tail rule misreads its distances.
    """

    spec = DetectorSpec(auto=("reference",), auto_min_class_rows=LARGE_CLASS_ROWS)

    def __init__(self, n_neighbors: int = 5, method: str = "largest", max_fit_rows: int = 5_000,
                 n_jobs: int = -1, random_state: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.method = method
        self.max_fit_rows = max_fit_rows
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> KNNDetector:
        from pyod.models.knn import KNN

        X = check_matrix(X, "knn.fit")
        check_rows(X, 2, "knn")
        if len(X) > self.max_fit_rows:
            rows = random_generator(self.random_state).choice(len(X), self.max_fit_rows, replace=False)
            X = X[np.sort(rows)]
        # Fewer fitted rows than neighbours (a small class): the farthest fitted row stands in.
        self.model_ = KNN(n_neighbors=min(self.n_neighbors, len(X) - 1), method=self.method,
                          n_jobs=self.n_jobs).fit(X)
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = check_matrix(X, "knn.decision_function")
        if len(X) == 0:
            return np.zeros(0)
        return np.asarray(self.model_.decision_function(X), dtype="float64")

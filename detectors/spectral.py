"""Backdoor checks on learned representations: spectral signatures, activation clustering, robust spectra.

All three are transductive and run per label class: a backdoor relabels triggered rows to a target class,
so within that class the triggered rows form a small sub-population whose shared trigger shows as a
direction of unusual variance (Tran et al. 2018), a separate cluster (Chen et al. 2018), or, once the
clean covariance is estimated robustly and whitened away, the dominant remaining direction (Hayase et al.
2021, SPECTRE). They are written here rather than taken from a library: IBM ART ships the first two only
for its own neural-network classifiers (and its spectral score projects uncentred activations, which
Tran et al.'s algorithm does not), and nothing ships the robust variant for tabular data.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.covariance import MinCovDet
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.utils.extmath import randomized_svd
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, check_matrix, check_rows, random_generator
from poisonguard.detectors.spec import DetectorSpec


class SpectralSignatureDetector(Detector):
    """Length of each centred row's projection onto the top ``n_directions`` singular vectors.

    Tran et al. rank by the squared projection; its square root ranks the same rows and is far less
    skewed, so a tail fitted to the bulk of the scores extrapolates well when there is no reference.
    """

    spec = DetectorSpec(reason="backdoor", fitting="transductive", reads="probe")

    def __init__(self, n_directions: int = 1, random_state: int = 0) -> None:
        self.n_directions = n_directions
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> SpectralSignatureDetector:
        X = check_matrix(X, "spectral.fit")
        check_rows(X, 2, "spectral")
        self.mean_ = X.mean(axis=0)
        k = max(1, min(self.n_directions, min(X.shape) - 1)) if min(X.shape) > 1 else 1
        # Randomized SVD: only the top directions are needed, and it stays fast on wide representations.
        _, _, components = randomized_svd(X - self.mean_, n_components=k, random_state=self.random_state)
        self.directions_ = components
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        centred = check_matrix(X, "spectral.decision_function") - self.mean_
        return np.sqrt(np.square(centred @ self.directions_.T).sum(axis=1))


class ActivationClusteringDetector(Detector):
    """Two-means in a reduced space; a row scores by how much nearer it lies to the smaller cluster.

    The split is called clear (``clear_split_``) when the smaller cluster holds at most ``max_share`` of
    the rows and the silhouette is at least ``min_silhouette``; the score is continuous either way, so the
    scoring step can calibrate it against trusted rows.
    """

    spec = DetectorSpec(reason="backdoor", fitting="transductive", reads="probe")

    def __init__(self, n_components: int = 10, max_share: float = 0.35, min_silhouette: float = 0.15,
                 random_state: int = 0) -> None:
        self.n_components = n_components
        self.max_share = max_share
        self.min_silhouette = min_silhouette
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ActivationClusteringDetector:
        X = check_matrix(X, "activation_clustering.fit")
        check_rows(X, 4, "activation_clustering")
        n_components = max(1, min(self.n_components, X.shape[1], len(X) - 1))
        self.pca_ = PCA(n_components=n_components, random_state=self.random_state).fit(X)
        reduced = self.pca_.transform(X)
        self.kmeans_ = KMeans(n_clusters=2, n_init=10, random_state=self.random_state).fit(reduced)
        sizes = np.bincount(self.kmeans_.labels_, minlength=2)
        self.small_ = int(np.argmin(sizes))
        self.small_share_ = float(sizes.min() / len(X))
        sample = random_generator(self.random_state).permutation(len(X))[:2000]
        labels = self.kmeans_.labels_[sample]
        self.silhouette_ = (
            float(silhouette_score(reduced[sample], labels)) if len(np.unique(labels)) == 2 else 0.0
        )
        self.clear_split_ = self.small_share_ <= self.max_share and self.silhouette_ >= self.min_silhouette
        self.scale_ = float(np.sqrt(self.pca_.explained_variance_.sum())) or 1.0
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        reduced = self.pca_.transform(check_matrix(X, "activation_clustering.decision_function"))
        distances = self.kmeans_.transform(reduced)
        return (distances[:, 1 - self.small_] - distances[:, self.small_]) / self.scale_


class RobustSpectralDetector(Detector):
    """SPECTRE-style: whiten with a robust (MinCovDet) covariance, then a QUE score of the whitened rows.

    After whitening by the clean covariance, clean rows have identity covariance; a poisoned
    sub-population adds variance along its own direction(s). The QUantum Entropy score weights each
    eigen-direction ``j`` of the whitened covariance by ``exp(alpha * (lambda_j - 1) / (lambda_max - 1))``,
    so the score concentrates on the directions where the variance is most in excess.
    """

    spec = DetectorSpec(reason="backdoor", fitting="transductive", reads="probe")

    def __init__(self, n_components: int = 16, alpha: float = 4.0, random_state: int = 0) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RobustSpectralDetector:
        X = check_matrix(X, "robust_spectral.fit")
        # MinCovDet needs clearly more rows than dimensions: reduce first.
        n_components = max(1, min(self.n_components, X.shape[1], (len(X) - 1) // 3))
        check_rows(X, 3 * n_components + 1, "robust_spectral")
        self.pca_ = PCA(n_components=n_components, random_state=self.random_state).fit(X)
        reduced = self.pca_.transform(X)
        mcd = MinCovDet(random_state=self.random_state).fit(reduced)
        self.location_ = mcd.location_
        values, vectors = np.linalg.eigh(mcd.covariance_)
        values = np.maximum(values, 1e-9 * max(values.max(), 1e-12))
        self.whitener_ = vectors / np.sqrt(values)  # x -> (x - mu) @ whitener_ has identity clean covariance
        whitened = (reduced - self.location_) @ self.whitener_
        excess, directions = np.linalg.eigh(np.cov(whitened, rowvar=False).reshape(n_components, n_components))
        spread = max(excess.max() - 1.0, 1e-9)
        weights = np.exp(self.alpha * (excess - excess.max()) / spread)  # exp(alpha (l - 1)/(lmax - 1)), scaled
        self.directions_ = directions
        self.weights_ = weights / weights.sum()
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        reduced = self.pca_.transform(check_matrix(X, "robust_spectral.decision_function"))
        projections = ((reduced - self.location_) @ self.whitener_) @ self.directions_
        return np.sqrt(np.square(projections) @ self.weights_)  # square root: same ranking, less skew

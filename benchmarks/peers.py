"""The tools users would pick instead of poisonguard, run on the same poisoned batch as it.

PyOD's ECOD and IForest come with poisonguard; IBM ART and cleanlab come with the ``bench`` extra
(``pip install -e '.[bench]'``) and are skipped, with a note, when it is not installed. Every peer sees
only the poisoned batch (no trusted reference), standardised, as a user of that tool would run it:

* **PyOD ECOD / IForest**: fitted on the batch; flags are PyOD's own (``contamination=0.1``).
* **cleanlab** ``find_label_issues``: given out-of-fold probabilities of a 5-fold logistic regression,
  the same model poisonguard's ``confident_learning`` uses; its score is ``1 - label quality``.
* **ART SpectralSignatureDefense / ActivationDefence**: given the hidden activations of the scikit-learn
  MLP probe poisonguard trains on the batch, through :class:`ActivationsClassifier`, a thin adapter.
  Spectral flags are ART's (default ``expected_pp_poison=0.33``) and its score ART's own
  ``spectral_signature_scores`` per class; activation clustering gives flags only, so its score is the flag.

Each peer returns ``(flags, score, seconds)``; ``score`` is ``None`` when the tool gives none.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.preprocessing import StandardScaler

PeerResult = tuple[np.ndarray, "np.ndarray | None", float]


class ActivationsClassifier:
    """Just enough of an ART neural-network classifier to hand ART's poison defences fixed activations.

    ART's defences ask a classifier for the activations of its last hidden layer on ``x_train``; here
    ``x_train`` *is* that activation matrix, so ``get_activations`` returns it unchanged.
    """

    layer_names = ["probe_hidden"]

    def __init__(self, nb_classes: int) -> None:
        self.nb_classes = nb_classes

    def get_activations(self, x: np.ndarray, layer: int | str, batch_size: int = 128, framework: bool = False):
        return np.asarray(x, dtype="float64")


def available() -> dict[str, str]:
    """Peer name -> why it cannot run here (empty when every peer can)."""
    missing = {}
    for name, module in (("ART", "art"), ("cleanlab", "cleanlab")):
        try:
            __import__(module)
        except ImportError:
            missing[name] = "not installed (pip install -e '.[bench]')"
    return missing


def _timed(run: Callable[[], tuple[np.ndarray, np.ndarray | None]]) -> PeerResult:
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flags, score = run()
    return np.asarray(flags, dtype=bool), score, time.perf_counter() - started


def _codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    classes, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return codes, len(classes)


def pyod(name: str, X: np.ndarray, seed: int) -> PeerResult:
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest

    def run():
        model = ECOD() if name == "ECOD" else IForest(random_state=seed)
        model.fit(StandardScaler().fit_transform(X))
        return model.labels_ == 1, model.decision_scores_

    return _timed(run)


def out_of_fold_probabilities(X: np.ndarray, codes: np.ndarray, seed: int) -> np.ndarray:
    """5-fold logistic regression probabilities, each row predicted by a model that never saw it."""
    folds = StratifiedKFold(int(min(5, np.bincount(codes).min())), shuffle=True, random_state=seed)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    return cross_val_predict(model, StandardScaler().fit_transform(X), codes, cv=folds, method="predict_proba")


def cleanlab(X: np.ndarray, labels: np.ndarray, seed: int) -> PeerResult:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    codes, _ = _codes(labels)

    def run():
        probabilities = out_of_fold_probabilities(X, codes, seed)
        flags = find_label_issues(labels=codes, pred_probs=probabilities)
        return flags, 1.0 - get_label_quality_scores(codes, probabilities)

    return _timed(run)


def probe_activations_of(X: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The hidden activations of poisonguard's MLP probe trained on the (poisoned) batch itself."""
    from poisonguard.featurize.representations import probe_activations

    standardised = StandardScaler().fit_transform(X)
    return probe_activations(standardised, labels, [standardised], seed)[0]


def art_spectral(activations: np.ndarray, labels: np.ndarray) -> PeerResult:
    from art.defences.detector.poison import SpectralSignatureDefense

    codes, n_classes = _codes(labels)

    def run():
        defence = SpectralSignatureDefense(ActivationsClassifier(n_classes), activations, np.eye(n_classes)[codes])
        _, is_clean = defence.detect_poison()
        score = np.zeros(len(codes))
        for k in range(n_classes):
            rows = codes == k
            if rows.sum() > 1:
                score[rows] = SpectralSignatureDefense.spectral_signature_scores(activations[rows]).ravel()
        return np.asarray(is_clean) == 0, score

    return _timed(run)


def art_activation_clustering(activations: np.ndarray, labels: np.ndarray) -> PeerResult:
    from art.defences.detector.poison import ActivationDefence

    codes, n_classes = _codes(labels)

    def run():
        defence = ActivationDefence(ActivationsClassifier(n_classes), activations, np.eye(n_classes)[codes])
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
        flags = np.asarray(is_clean) == 0
        return flags, flags.astype("float64")

    return _timed(run)


def run_peers(X: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, PeerResult]:
    """Every peer that can run here on the batch ``X`` with its given ``labels``."""
    results = {"PyOD ECOD": pyod("ECOD", X, seed), "PyOD IForest": pyod("IForest", X, seed)}
    missing = available()
    if "cleanlab" not in missing:
        results["cleanlab find_label_issues"] = cleanlab(X, labels, seed)
    if "ART" not in missing:
        activations = probe_activations_of(X, labels, seed)
        results["ART SpectralSignatureDefense"] = art_spectral(activations, labels)
        results["ART ActivationDefence"] = art_activation_clustering(activations, labels)
    return results

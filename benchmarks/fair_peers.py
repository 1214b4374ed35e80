"""The peers of the held-out suite, run as a competent user of each would run them.

Every peer gets the same features a user would build for it: numeric columns standardised, categorical
ones one-hot, free text as TF-IDF (the full sparse matrix for the label models, 50 SVD dimensions for the
outlier detectors, which need dense rows). Each is judged twice: by its **oracle** figure (recall at the
score threshold that flags 1% of the clean rows, a threshold no user can know) and by its **own decision**
(the flags it gives at its documented setting), with recall and false quarantine.

With a trusted reference:

* **PyOD ECOD, IForest, KNN, global**: fitted on the reference, scoring the batch; own decision
  ``contamination=0.01``, so the threshold is the reference's 99th percentile (1% false positives).
* **PyOD ..., per class**: one model per class fitted on that class's reference rows, scoring the batch
  rows that carry the class; the same setting.
* **cleanlab, reference model**: ``find_label_issues`` given the batch's probabilities from a logistic
  regression fitted on the reference; score ``1 - label quality``.

Batch only (also the figures a scan without a reference is compared with):

* **PyOD ... global / per class** fitted on the batch itself; own decision ``contamination=0.05``, a user's
  guess of the poisoned share when nothing says it.
* **cleanlab, out of fold**: ``find_label_issues`` on 5-fold out-of-fold probabilities of the batch.
* **ART SpectralSignatureDefense** on the activations of a probe trained on the batch, with
  ``expected_pp_poison`` at ART's default (0.33) and at the true poisoned share (a user who knows it);
  score ART's spectral signature. **ART ActivationDefence** gives flags only: judged at its own decision.

cleanlab and ART come with the ``bench`` extra and are left out, with a note, when not installed; ART runs
on batches of up to ``ART_MAX_ROWS`` rows (its probe and per-class SVDs take minutes beyond).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from benchmarks.peers import available

ART_MAX_ROWS = 20_000
TEXT_SVD_DIMENSIONS = 50
WITH_REFERENCE_CONTAMINATION = 0.01
BATCH_ONLY_CONTAMINATION = 0.05

PeerOutput = tuple[np.ndarray, "np.ndarray | None"]  # (flags, score or None)


class PeerFeatures:
    """The features a user would build, fitted on the rows the peer learns from."""

    def __init__(self, fit_rows: pd.DataFrame, label: str) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        self.label = label
        columns = [c for c in fit_rows.columns if c != label]
        self.numeric = [c for c in columns if pd.api.types.is_numeric_dtype(fit_rows[c])]
        others = [c for c in columns if c not in self.numeric]
        self.text = [c for c in others if fit_rows[c].nunique() > 50]
        self.categorical = [c for c in others if c not in self.text]
        self.scaler = StandardScaler().fit(fit_rows[self.numeric]) if self.numeric else None
        self.onehot = (OneHotEncoder(handle_unknown="ignore").fit(fit_rows[self.categorical].astype(str))
                       if self.categorical else None)
        self.tfidf = {c: TfidfVectorizer().fit(fit_rows[c].astype(str)) for c in self.text}
        self.svd = {c: TruncatedSVD(min(TEXT_SVD_DIMENSIONS, len(self.tfidf[c].vocabulary_) - 1), random_state=0)
                    .fit(self.tfidf[c].transform(fit_rows[c].astype(str))) for c in self.text}

    def _parts(self, rows: pd.DataFrame) -> tuple[list, dict]:
        parts = []
        if self.scaler is not None:
            parts.append(sparse.csr_matrix(np.nan_to_num(self.scaler.transform(rows[self.numeric]))))
        if self.onehot is not None:
            parts.append(self.onehot.transform(rows[self.categorical].astype(str)).tocsr())
        return parts, {c: self.tfidf[c].transform(rows[c].astype(str)) for c in self.text}

    def sparse(self, rows: pd.DataFrame) -> sparse.csr_matrix:
        """Every feature, text as its full TF-IDF: for the label models."""
        parts, texts = self._parts(rows)
        return sparse.hstack(parts + list(texts.values())).tocsr()

    def dense(self, rows: pd.DataFrame) -> np.ndarray:
        """Every feature, text reduced by SVD: for the outlier detectors."""
        parts, texts = self._parts(rows)
        reduced = [sparse.csr_matrix(self.svd[c].transform(m)) for c, m in texts.items()]
        return sparse.hstack(parts + reduced).toarray()


def _pyod_model(name: str, contamination: float, seed: int):
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN

    return {"ECOD": lambda: ECOD(contamination=contamination),
            "IForest": lambda: IForest(contamination=contamination, random_state=seed),
            "KNN": lambda: KNN(contamination=contamination)}[name]()


def pyod_peer(name: str, X_fit: np.ndarray, X_batch: np.ndarray, contamination: float, seed: int,
              fit_classes: np.ndarray | None = None, batch_classes: np.ndarray | None = None,
              on_batch: bool = False) -> PeerOutput:
    """A PyOD detector, global (no classes) or one per class; fitted on ``X_fit`` unless ``on_batch``."""
    flags, score = np.zeros(len(X_batch), bool), np.zeros(len(X_batch))
    groups = [(None, np.ones(len(X_fit), bool), np.ones(len(X_batch), bool))]
    if batch_classes is not None:
        groups = [(c, fit_classes == c, batch_classes == c) for c in np.unique(batch_classes)]
    for _, in_fit, in_batch in groups:
        rows = X_batch[in_batch]
        training = rows if on_batch else X_fit[in_fit]
        if len(training) < 10 or not len(rows):
            continue  # a class the reference barely has: left unflagged, as a user's loop would skip it
        model = _pyod_model(name, contamination, seed).fit(training)
        score[in_batch] = model.decision_scores_ if on_batch else model.decision_function(rows)
        flags[in_batch] = model.labels_ == 1 if on_batch else model.predict(rows) == 1
    return flags, score


def cleanlab_peer(probabilities: np.ndarray, codes: np.ndarray) -> PeerOutput:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    return (np.asarray(find_label_issues(labels=codes, pred_probs=probabilities), bool),
            1.0 - get_label_quality_scores(codes, probabilities))


def _probabilities(X_fit, y_fit, X_batch, classes: int, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, random_state=seed).fit(X_fit, y_fit)
    probabilities = np.zeros((X_batch.shape[0], classes))
    probabilities[:, model.classes_] = model.predict_proba(X_batch)
    return probabilities


def _out_of_fold(X, codes: np.ndarray, classes: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    probabilities = np.zeros((X.shape[0], classes))
    folds = StratifiedKFold(int(min(5, np.bincount(codes).min())), shuffle=True, random_state=seed)
    for fit, held in folds.split(np.zeros(len(codes)), codes):
        probabilities[held] = _probabilities(X[fit], codes[fit], X[held], classes, seed)
    return probabilities


def art_peers(X_batch: np.ndarray, codes: np.ndarray, classes: int, true_share: float, seed: int) -> dict[str, PeerOutput]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    from benchmarks.peers import ActivationsClassifier
    from poisonguard.featurize.representations import probe_activations

    activations = probe_activations(X_batch, codes.astype(str), [X_batch], seed)[0]
    one_hot = np.eye(classes)[codes]
    score = np.zeros(len(codes))
    for k in range(classes):
        rows = codes == k
        if rows.sum() > 1:
            score[rows] = SpectralSignatureDefense.spectral_signature_scores(activations[rows]).ravel()
    results = {}
    for label, share in (("ART spectral, default", 0.33), ("ART spectral, true share", max(true_share, 1e-3))):
        defence = SpectralSignatureDefense(ActivationsClassifier(classes), activations, one_hot,
                                           expected_pp_poison=share)
        _, is_clean = defence.detect_poison()
        results[label] = (np.asarray(is_clean) == 0, score)
    defence = ActivationDefence(ActivationsClassifier(classes), activations, one_hot)
    _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    results["ART activation clustering"] = (np.asarray(is_clean) == 0, None)
    return results


def run_fair_peers(reference: pd.DataFrame, batch: pd.DataFrame, label: str, true_share: float,
                   seed: int) -> dict[tuple[str, str], PeerOutput]:
    """Every peer that can run here: ``{(setting, peer): (flags, score)}``, setting ``reference`` or ``batch``."""
    missing = available()
    classes = np.array(sorted(set(reference[label].astype(str)) | set(batch[label].astype(str))))
    y_ref = np.searchsorted(classes, reference[label].astype(str).to_numpy())
    y_batch = np.searchsorted(classes, batch[label].astype(str).to_numpy())
    results: dict[tuple[str, str], PeerOutput] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for setting, fit_rows, y_fit in (("reference", reference, y_ref), ("batch", batch, y_batch)):
            on_batch = setting == "batch"
            contamination = BATCH_ONLY_CONTAMINATION if on_batch else WITH_REFERENCE_CONTAMINATION
            features = PeerFeatures(fit_rows, label)
            X_fit, X_batch = features.dense(fit_rows), features.dense(batch)
            for name in ("ECOD", "IForest", "KNN"):
                results[(setting, f"PyOD {name}, global")] = pyod_peer(
                    name, X_fit, X_batch, contamination, seed, on_batch=on_batch)
                results[(setting, f"PyOD {name}, per class")] = pyod_peer(
                    name, X_fit, X_batch, contamination, seed, y_fit, y_batch, on_batch=on_batch)
            if "cleanlab" not in missing:
                S_fit, S_batch = features.sparse(fit_rows), features.sparse(batch)
                if on_batch:
                    probabilities, peer = _out_of_fold(S_batch, y_batch, len(classes), seed), "cleanlab, out of fold"
                else:
                    probabilities = _probabilities(S_fit, y_ref, S_batch, len(classes), seed)
                    peer = "cleanlab, reference model"
                results[(setting, peer)] = cleanlab_peer(probabilities, y_batch)
            if on_batch and "ART" not in missing and len(batch) <= ART_MAX_ROWS:
                art = art_peers(X_batch, y_batch, len(classes), true_share, seed)
                results.update({(setting, peer): output for peer, output in art.items()})
    return results


def judged(mask: np.ndarray, flags: np.ndarray, score: np.ndarray | None) -> dict[str, float]:
    """Recall and false quarantine of the peer's own flags, and its oracle recall at 1% false positives."""
    result = {"own_recall": float(flags[mask].mean()), "own_false_quarantine": float(flags[~mask].mean()),
              "oracle_recall": float("nan")}
    if score is not None and np.isfinite(score).all():
        cut = np.quantile(score[~mask], 0.99)
        result["oracle_recall"] = float((score[mask] > cut).mean())
    return result
